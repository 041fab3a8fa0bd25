"""Queue waiters woken by fresher upstream rate-limit figures: a request waiting in the queue
(`when_all_unavailable = "queue"`) because its model's upstream said its requests or tokens
were spent is woken at once when a newer answer's headers tell of budget again, instead of
at the stated reset. Fake OpenAI upstreams on 127.0.0.1 send the real x-ratelimit-* headers;
the resets are on the daemon's ManualClock, 20 s away: a waiter left to the reset would hold
the test for 20 real seconds (the queue's waits are bounded by real time too)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from failoverd.clock import ManualClock
from failoverd.http1 import HttpClient
from tests.helpers import chat, pair_config, providers, until
from tests.test_upstream_limits import OPENAI_SPENT, answer, registry
from tests.test_upstream_limits_e2e import BIG, PRIMARY, calls, skips
from tests.test_upstream_limits_e2e import limited_openai as limited_openai  # the fixture

# 1,000 tokens left for 20 s: HELLO fits, BIG (~2,400 tokens) waits
TOKENS_LOW = {"x-ratelimit-remaining-requests": "499", "x-ratelimit-reset-requests": "1s",
              "x-ratelimit-remaining-tokens": "1000", "x-ratelimit-reset-tokens": "20s"}
FRESH = {"x-ratelimit-remaining-requests": "499", "x-ratelimit-reset-requests": "1s",
         "x-ratelimit-remaining-tokens": "30000", "x-ratelimit-reset-tokens": "2s"}


def queued(a: Any, b: Any) -> str:
    """The primary alone (no fallback), waiting in the queue up to 30 s for it."""
    return pair_config(a, b, fallbacks="[]", deadline=40,
                       routing="queue_timeout = 30").replace(
        'when_all_unavailable = "fail"', 'when_all_unavailable = "queue"')


async def waiting(d: Any) -> None:
    """Until a request waits in the queue (the registry's upstream figures have a waiter to
    wake)."""
    upstream = d.sup.service.health.upstream
    await until(lambda: upstream.wake is not None)


async def test_a_smaller_requests_answer_with_tokens_again_wakes_the_big_one(
        limited_openai: Any, fake_openai: Any, start_daemon: Any) -> None:
    a = await limited_openai(limits=TOKENS_LOW, reply="from a")
    b = await fake_openai()
    clock = ManualClock()
    d = await start_daemon(queued(a, b), clock=clock)
    assert (await chat(d)).status_code == 200  # its answer: 1,000 tokens left for 20 s
    skipped = await skips(d, PRIMARY, "upstream_tpm")
    started = time.monotonic()
    big = asyncio.create_task(d.http.post("/v1/chat/completions",
                                          json={"model": "default", "messages": BIG}))
    await waiting(d)
    assert await skips(d, PRIMARY, "upstream_tpm") == skipped + 1
    assert calls(a) == 1
    # a small request still fits the 1,000 tokens; its answer tells of 30,000
    clock.advance(0.001)
    a.limits = FRESH
    assert (await chat(d)).headers["x-failoverd-model"] == PRIMARY
    resp = await asyncio.wait_for(big, 5)
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == PRIMARY
    assert time.monotonic() - started < 5  # not held until the reset, 20 s on
    assert calls(a) == 3
    assert "x-failoverd-failover" not in resp.headers


async def test_a_newer_answer_with_requests_left_wakes_the_waiters(
        limited_openai: Any, fake_openai: Any, start_daemon: Any) -> None:
    """Two requests on their way: the first sent is told 0 requests remain (20 s), the
    second, sent after it (the limiter refilled meanwhile), answers later with 499 left."""
    a = await limited_openai(limits=OPENAI_SPENT, reply="from a")
    a.script = deque(["slow:0.1", "slow:0.5"])
    b = await fake_openai()
    clock = ManualClock()
    d = await start_daemon(queued(a, b), clock=clock)
    first = asyncio.create_task(chat(d))
    await until(lambda: calls(a) == 1)
    clock.advance(0.001)
    a.limits = FRESH
    second = asyncio.create_task(chat(d))
    await until(lambda: calls(a) == 2)
    assert (await first).status_code == 200  # now a/gpt-a has no requests left for 20 s
    started = time.monotonic()
    third = asyncio.create_task(chat(d))
    await waiting(d)
    assert not second.done()
    resp = await asyncio.wait_for(third, 5)
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == PRIMARY
    assert (await second).status_code == 200
    assert time.monotonic() - started < 5
    assert calls(a) == 3


async def test_figures_that_free_nothing_wake_no_one_and_no_waiter_costs_nothing(
        limited_openai: Any, http_client: HttpClient) -> None:
    """On the registry: answers read while no request waits compare nothing (no wake-up is
    set); with a waiter, figures that free nothing leave it waiting, and the first that do
    wake it, once."""
    fake = await limited_openai(limits=OPENAI_SPENT)
    clock = ManualClock()
    reg, cfg = registry(providers(a=fake.url), clock)
    await answer(http_client, reg, cfg)
    assert reg.upstream.wake is None
    assert reg.available("a/m") == (False, "upstream_rpm")
    waiter = asyncio.create_task(reg.wait_for_change())
    await until(lambda: reg.upstream.wake is not None)
    # still none left, the same reset (a newer request's answer): nothing freed
    clock.advance(1)
    await answer(http_client, reg, cfg)
    await asyncio.sleep(0)
    assert not waiter.done() and reg.upstream.wake is not None
    # a reset sooner than the one the waiter was told: it is woken to wait for that one
    clock.advance(1)
    fake.limits = {**OPENAI_SPENT, "x-ratelimit-reset-requests": "2s"}
    await answer(http_client, reg, cfg)
    await asyncio.wait_for(waiter, 1)
    assert reg.upstream.wake is None
    assert reg.retry_in("a/m") == 2
