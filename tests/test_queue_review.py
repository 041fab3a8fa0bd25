"""Review of the queue's early answer (health.out_longer_than, dispatch._queue): it may answer
the 503 at once only when no candidate can come back within the wait; these are the cases
where one can, and the request must wait for it and be served."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from failoverd.clock import ManualClock
from tests.helpers import HELLO, ask, until
from tests.test_breaker_e2e import FALLBACK, PRIMARY, force_open, queue_toml


async def test_a_half_open_model_whose_trial_is_under_way_is_waited_for(
        fake_openai: Any, start_daemon: Any) -> None:
    """a is half-open and its one trial call is under way (no time known: the trial decides),
    b is out for 40 s: the request waits, and a serves it once its trial closes the breaker."""
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    clock = ManualClock()
    d = await start_daemon(queue_toml(a, b, queue_timeout=3), clock=clock)
    await force_open(d, PRIMARY, seconds=1)
    clock.advance(2)  # a's period is over: its next call is the half-open trial
    a.push("slow:0.3")
    trial = asyncio.create_task(ask(d))
    await until(lambda: len(a.requests) == 1)
    await force_open(d, FALLBACK, seconds=40)
    started = time.monotonic()
    model, raw = await asyncio.wait_for(ask(d), 3)
    assert model == PRIMARY and raw.parse().choices[0].message.content == "from a"
    assert time.monotonic() - started >= 0.1  # it waited for the trial, not a 503 at once
    assert (await trial)[0] == PRIMARY


async def test_a_model_at_max_concurrency_is_waited_for(fake_openai: Any,
                                                        start_daemon: Any) -> None:
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    text = queue_toml(a, b, queue_timeout=3).replace(
        f'[models."{PRIMARY}"]\nprovider = "a"',
        f'[models."{PRIMARY}"]\nprovider = "a"\nmax_concurrency = 1')
    d = await start_daemon(text)
    await force_open(d, FALLBACK, seconds=40)
    a.push("slow:0.3")
    first = asyncio.create_task(ask(d))
    await until(lambda: len(a.requests) == 1)
    model, _ = await asyncio.wait_for(ask(d), 3)
    assert model == PRIMARY  # the slot came back within the queue's time
    assert (await first)[0] == PRIMARY


async def test_a_reload_during_the_wait_brings_a_model_back(fake_openai: Any,
                                                            start_daemon: Any) -> None:
    """a is forced open until reset (so the request waits), b out for 40 s; a reload that
    gives b new settings (a fresh breaker) serves the waiting request at once."""
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(queue_toml(a, b, queue_timeout=3))
    await force_open(d, PRIMARY)
    await force_open(d, FALLBACK, seconds=40)
    request = asyncio.create_task(ask(d))
    await asyncio.sleep(0.1)
    assert not request.done()
    path = Path(d.sup.config_path)
    path.write_text(path.read_text().replace(f'[models."{FALLBACK}"]\nprovider = "b"',
                                             f'[models."{FALLBACK}"]\nprovider = "b"\n'
                                             'max_retries = 0'))
    assert (await d.http.post("/v1/reload")).status_code == 200
    model, _ = await asyncio.wait_for(request, 2)
    assert model == FALLBACK


async def test_a_forced_open_with_seconds_past_the_queue_is_answered_at_once(
        fake_openai: Any, start_daemon: Any) -> None:
    """The operator's `open` with seconds is a known time: past the queue, the 503 comes at
    once, its Retry-After the seconds (a reset would still end it, as it ends any period)."""
    a = await fake_openai()
    b = await fake_openai()
    d = await start_daemon(queue_toml(a, b, queue_timeout=2))
    await force_open(d, PRIMARY, FALLBACK, seconds=30)
    started = time.monotonic()
    resp = await d.http.post("/v1/chat/completions", json={"model": "default",
                                                           "messages": HELLO})
    assert time.monotonic() - started < 1
    assert resp.status_code == 503 and 28 <= int(resp.headers["Retry-After"]) <= 30
