"""timeouts.py on uvloop, whose millisecond timers may fire just before their deadline."""

from __future__ import annotations

import asyncio

import pytest

from failoverd import timeouts

uvloop = pytest.importorskip("uvloop")


def test_one_wake_up_per_expiry_on_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    # a timer that fired early used to find nothing due, re-arm for the same instant and spin
    # through dozens of loop turns until loop.time() reached the deadline
    fired = 0
    fire = timeouts._Timers._fire

    def counting(self: timeouts._Timers) -> None:
        nonlocal fired
        fired += 1
        fire(self)

    monkeypatch.setattr(timeouts._Timers, "_fire", counting)

    async def main() -> int:
        expired = 0
        for delay in (0.0105, 0.0101, 0.0333, 0.0007, 0.02):
            with pytest.raises(TimeoutError):
                with timeouts.timeout(delay):
                    await asyncio.sleep(1)
            expired += 1
        return expired

    assert uvloop.run(main()) == 5
    assert fired <= 6, fired
