"""The access guard sits in front of aiohttp's server, and the daemon checks that it does."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from failoverd.api.drain import RequestTracker
from failoverd.api.service import SERVICE


async def test_the_guard_is_the_servers_entry_point_and_is_checked(start_daemon: Any) -> None:
    d = await start_daemon('[providers.p]\nkind = "simulated"\n[models."p/m"]\nprovider = "p"\n'
                           '[routing]\nprimary = "p/m"\n')
    tracker = d.sup.tracker
    app = web.Application()
    app[SERVICE] = d.sup.service
    # an application the tracker was not installed on is served without the guard: detected
    bare = web.AppRunner(app)
    await bare.setup()
    try:
        assert not tracker.guards(bare.server)
        assert not RequestTracker().guards(bare.server)
    finally:
        await bare.cleanup()
    guarded_app = web.Application()
    guarded_app[SERVICE] = d.sup.service
    other = RequestTracker()
    other.install(guarded_app)
    runner = web.AppRunner(guarded_app)
    await runner.setup()
    try:
        assert other.guards(runner.server)
        assert not tracker.guards(runner.server)  # another tracker's entry point
    finally:
        await runner.cleanup()
    assert not other.guards(None)
