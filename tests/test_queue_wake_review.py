"""The queue's wake-up by fresher upstream rate-limit figures, under review: the wake-up hook
(`UpstreamLimits.wake`) is set only while a request really waits (not left behind by a waiter
that timed out or was cancelled, so answers read afterwards compare nothing), figures that
free nothing wake no one (more tokens while no requests remain), and a reload while a request
waits. On the registry with a fake OpenAI upstream on 127.0.0.1 sending the real
x-ratelimit-* headers through the real adapter, and end to end on the daemon; the resets on a
ManualClock."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from failoverd.clock import ManualClock
from failoverd.http1 import HttpClient
from failoverd.providers.base import AttemptLimits
from tests.helpers import HELLO, chat, providers, until
from tests.test_queue_wake import queued, waiting
from tests.test_upstream_limits import OPENAI_SPENT, answer, registry
from tests.test_upstream_limits_e2e import PRIMARY, calls
from tests.test_upstream_limits_e2e import limited_openai as limited_openai  # the fixture


async def test_a_waiter_that_timed_out_leaves_no_wake_up_behind(
        limited_openai: Any, http_client: HttpClient) -> None:
    fake = await limited_openai(limits=OPENAI_SPENT)
    clock = ManualClock()
    reg, cfg = registry(providers(a=fake.url), clock)
    await answer(http_client, reg, cfg)
    assert reg.available("a/m") == (False, "upstream_rpm")
    try:
        await asyncio.wait_for(reg.wait_for_change(), 0.01)
    except TimeoutError:
        pass
    assert reg.upstream.wake is None  # no one waits: an answer compares nothing
    # nor does a cancelled one leave it
    waiter = asyncio.create_task(reg.wait_for_change())
    await asyncio.sleep(0)  # it waits (one cancelled before its first step counts until
    assert reg.upstream.wake is not None  # the next change, as before: see health.py)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert reg.upstream.wake is None


async def test_the_last_waiter_to_leave_takes_the_wake_up_away(
        limited_openai: Any, http_client: HttpClient) -> None:
    """Two waiters: the one that gives up first leaves the other's wake-up set, and freeing
    figures still wake that one; a waiter that comes after a wake-up has its own."""
    fake = await limited_openai(limits=OPENAI_SPENT)
    clock = ManualClock()
    reg, cfg = registry(providers(a=fake.url), clock)
    await answer(http_client, reg, cfg)
    early = asyncio.create_task(reg.wait_for_change())
    late = asyncio.create_task(reg.wait_for_change())
    await asyncio.sleep(0)
    early.cancel()
    await asyncio.gather(early, return_exceptions=True)
    assert reg.upstream.wake is not None and not late.done()
    clock.advance(1)
    fake.limits = {**OPENAI_SPENT, "x-ratelimit-remaining-requests": "5"}
    await answer(http_client, reg, cfg)
    assert await asyncio.wait_for(late, 1) is True
    assert reg.upstream.wake is None
    again = asyncio.create_task(reg.wait_for_change())
    await asyncio.sleep(0)
    assert reg.upstream.wake is not None
    again.cancel()
    await asyncio.gather(again, return_exceptions=True)
    assert reg.upstream.wake is None


async def test_more_tokens_while_no_requests_remain_wake_no_one(
        limited_openai: Any, http_client: HttpClient) -> None:
    """The model is held back by its requests (0 left for 20 s): a newer answer that still
    says 0 requests, with the same reset, frees nothing however many tokens it tells of."""
    fake = await limited_openai(limits=OPENAI_SPENT)
    clock = ManualClock()
    reg, cfg = registry(providers(a=fake.url), clock)
    await answer(http_client, reg, cfg)  # 0 requests until +20 s, 29,000 tokens until +2 s
    waiter = asyncio.create_task(reg.wait_for_change())
    await asyncio.sleep(0)
    clock.advance(1)
    fake.limits = {**OPENAI_SPENT, "x-ratelimit-reset-requests": "19s",
                   "x-ratelimit-remaining-tokens": "30000"}
    await answer(http_client, reg, cfg)
    await asyncio.sleep(0)
    assert reg.available("a/m") == (False, "upstream_rpm")
    assert not waiter.done() and reg.upstream.wake is not None
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)


async def test_a_queued_request_that_times_out_leaves_no_wake_up_in_the_daemon(
        limited_openai: Any, fake_openai: Any, start_daemon: Any) -> None:
    """0 requests left for 0.3 s of the daemon's clock, which stands still: the request
    waits its queue_timeout (0.5 s, real time bounds the queue's waits) and gets its 503."""
    a = await limited_openai(limits={**OPENAI_SPENT, "x-ratelimit-reset-requests": "300ms"},
                             reply="from a")
    b = await fake_openai()
    clock = ManualClock()
    d = await start_daemon(queued(a, b).replace("queue_timeout = 30", "queue_timeout = 0.5"),
                           clock=clock)
    assert (await chat(d)).status_code == 200
    waiter = asyncio.create_task(chat(d))
    await waiting(d)
    resp = await asyncio.wait_for(waiter, 5)
    assert resp.status_code == 503
    assert d.sup.service.health.upstream.wake is None
    assert calls(a) == 1


async def test_a_reload_while_a_request_waits(
        limited_openai: Any, fake_openai: Any, start_daemon: Any) -> None:
    """The registry outlives the reload: one that leaves the model as it was wakes the
    waiter, which waits again on the same figures and is still woken by fresher ones; the
    request is served by the primary without a failover."""
    a = await limited_openai(limits=OPENAI_SPENT, reply="from a")
    b = await fake_openai()
    clock = ManualClock()
    d = await start_daemon(queued(a, b), clock=clock)
    health = d.sup.service.health
    assert (await chat(d)).status_code == 200
    started = time.monotonic()
    waiter = asyncio.create_task(chat(d))
    await waiting(d)
    path = Path(d.sup.config_path)
    path.write_text(path.read_text().replace("deadline = 40", "deadline = 41"))
    assert (await d.http.post("/v1/reload")).status_code == 200
    assert d.sup.service.health is health
    await waiting(d)  # woken by the reload, it waits again: the figures stand
    assert not waiter.done() and calls(a) == 1
    # a probe-like answer to a request sent after the first: requests again
    clock.advance(1)
    a.limits = {**OPENAI_SPENT, "x-ratelimit-remaining-requests": "10"}
    await answer_direct(d, health)
    resp = await asyncio.wait_for(waiter, 5)
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == PRIMARY
    assert time.monotonic() - started < 5
    assert health.upstream.wake is None


async def answer_direct(d: Any, health: Any) -> None:
    """One call of the primary through its real adapter as the daemon has it (the
    dispatcher would not call a model its figures hold back), its headers read into the
    daemon's registry."""
    dispatcher = d.sup.service.runtime.dispatcher
    model = dispatcher.config.models[PRIMARY]
    provider = dispatcher.providers[model.provider]
    await provider.complete({"messages": HELLO, "max_tokens": 16}, model,
                            AttemptLimits(total=5, connect=5, first_token=5, idle=5,
                                          upstream=health.upstream))


async def test_a_queued_client_that_leaves_takes_its_wake_up_with_it(
        limited_openai: Any, fake_openai: Any, start_daemon: Any) -> None:
    a = await limited_openai(limits=OPENAI_SPENT, reply="from a")
    b = await fake_openai()
    d = await start_daemon(queued(a, b), clock=ManualClock())
    assert (await chat(d)).status_code == 200  # a/gpt-a: 0 requests left for 20 s
    client = asyncio.create_task(chat(d))
    await waiting(d)
    client.cancel()  # its connection closes: the daemon cancels its request
    await asyncio.gather(client, return_exceptions=True)
    await until(lambda: d.sup.service.inflight == 0)
    assert d.sup.service.health.upstream.wake is None
    assert calls(a) == 1


async def test_a_busy_daemon_does_not_wear_out_a_queued_requests_wait(
        limited_openai: Any, fake_openai: Any, start_daemon: Any) -> None:
    """Every call that ends on another model wakes the queue's waiters (a permit given back
    may free a max_concurrency slot): a waiter woken 1,500 times by calls to b/gpt-b within
    its queue_timeout still waits for its own model, and is served when it comes back."""
    a = await limited_openai(limits=OPENAI_SPENT, reply="from a")
    b = await fake_openai()
    clock = ManualClock()
    d = await start_daemon(queued(a, b), clock=clock)
    health = d.sup.service.health
    assert (await chat(d)).status_code == 200  # a/gpt-a: 0 requests left for 20 s
    waiter = asyncio.create_task(chat(d))
    await waiting(d)
    for turn in range(1500):
        permit = health.acquire("b/gpt-b")  # a call to another model, ending at once
        assert permit is not None
        permit.release()
        for _ in range(10):  # its turn: it looks again and waits again
            await asyncio.sleep(0)
            if health.upstream.wake is not None:
                break
        assert not waiter.done(), f"turn {turn}: {waiter.result().status_code}"
    clock.advance(21)  # the reset passes (its step's timer is real time: one more call
    permit = health.acquire("b/gpt-b")  # ends, and its next turn finds the model back)
    assert permit is not None
    permit.release()
    resp = await asyncio.wait_for(waiter, 5)
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == PRIMARY


async def test_many_waiters_one_wake_up_and_the_hook_until_the_last_leaves(
        limited_openai: Any, http_client: HttpClient) -> None:
    """Twenty requests waiting share one wake-up: freeing figures wake them all at once and
    take the hook away until they wait again; of the twenty waiting again, nineteen giving
    up leave it set for the last, whose leaving takes it away."""
    fake = await limited_openai(limits=OPENAI_SPENT)
    clock = ManualClock()
    reg, cfg = registry(providers(a=fake.url), clock)
    await answer(http_client, reg, cfg)
    waiters = [asyncio.create_task(reg.wait_for_change()) for _ in range(20)]
    await asyncio.sleep(0)
    clock.advance(1)
    fake.limits = {**OPENAI_SPENT, "x-ratelimit-remaining-requests": "3"}
    await answer(http_client, reg, cfg)
    assert reg.upstream.wake is None  # told once: the next answers compare nothing
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True] * 20
    waiters = [asyncio.create_task(reg.wait_for_change()) for _ in range(20)]
    await asyncio.sleep(0)
    for waiter in waiters[:-1]:
        waiter.cancel()
    await asyncio.gather(*waiters[:-1], return_exceptions=True)
    assert reg.upstream.wake is not None and not waiters[-1].done()
    waiters[-1].cancel()
    await asyncio.gather(waiters[-1], return_exceptions=True)
    assert reg.upstream.wake is None
