"""Review of the Dec 7 request-path changes: what the tests of the day missed.

Real daemon in-process, fake upstreams on loopback, real clients.
"""

from __future__ import annotations

import asyncio
from typing import Any

from failoverd.timeouts import timeout_at
from tests.helpers import HELLO, pair_config


async def test_no_deadline_expires_before_it_is_reached() -> None:
    # timeouts.py's one timer, firing for one deadline, also expired every other deadline due
    # within the next millisecond: asyncio.timeout never expires before its deadline (on
    # asyncio's loop), and the router relies on that (a timeout at the request's deadline
    # leaves no time; one before it leaves some, and the router fails over)
    loop = asyncio.get_running_loop()
    early: list[float] = []

    async def wait(when: float) -> None:
        try:
            with timeout_at(when):
                await asyncio.sleep(5)
        except TimeoutError:
            if loop.time() < when:
                early.append(when - loop.time())

    for _ in range(10):
        first = loop.time() + 0.01
        await asyncio.gather(wait(first), wait(first + 0.0009))
    assert early == []


def hanging_primary(a: Any, b: Any) -> str:
    # a 0.3 s budget; a's breaker never opens, so every request goes to it first
    return pair_config(a, b, deadline=0.3,
                       tail="[breaker]\nfailure_threshold = 1000\nminimum_calls = 1000\n")


async def test_a_primary_cut_at_the_request_deadline_is_no_failover(
        fake_openai: Any, start_daemon: Any) -> None:
    # a never answers (its breaker kept closed): it uses up the whole budget, and the answer
    # is a's timeout alone. With concurrent requests, another request's expiry cut a's call up
    # to a millisecond early; the router saw time left and failed over to b with none,
    # counting a timeout against b's breaker for a call b never got
    a = await fake_openai(default="hang")
    b = await fake_openai(reply="from b")
    d = await start_daemon(hanging_primary(a, b))

    async def one() -> Any:
        return await d.http.post("/v1/chat/completions",
                                 json={"model": "default", "messages": HELLO})

    for _ in range(3):
        for resp in await asyncio.gather(*(one() for _ in range(30))):
            assert resp.status_code == 503, (resp.headers, resp.text)
            attempts = resp.json()["error"]["attempts"]
            assert [x["model"] for x in attempts] == ["a/gpt-a"], attempts
    assert b.chat_requests() == []
    models = (await d.http.get("/v1/status")).json()["models"]
    assert models["b/gpt-b"]["calls_in_window"] == 0, models["b/gpt-b"]
