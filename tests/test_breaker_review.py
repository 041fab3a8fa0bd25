"""Review of breakers, the health registry, the prober and queue mode: the cases the other test
files leave open (each test names the behaviour it pins down)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from failoverd.clock import ManualClock
from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO, until_async
from tests.test_breaker import OPEN, R, rig
from tests.test_breaker_e2e import (
    FALLBACK,
    PRIMARY,
    force_open,
    model_status,
    pair_toml,
)


def queue_toml(a: FakeOpenAI, b: FakeOpenAI, *, queue_timeout: float = 3,
               breaker: str = "", probes: str = 'recovery_kind = "none"') -> str:
    return pair_toml(
        a, b, breaker=f"open_seconds = 30\nmax_open_seconds = 600\n{breaker}", probes=probes,
        routing=f'when_all_unavailable = "queue"\nqueue_timeout = {queue_timeout}')


async def chat(d: Any) -> httpx.Response:
    resp: httpx.Response = await d.http.post(
        "/v1/chat/completions", json={"model": "default", "messages": HELLO})
    return resp


# ------------------------------------------------------------------ queue mode


async def test_queued_requests_take_turns_at_a_half_open_breaker(fake_openai,
                                                                 start_daemon) -> None:
    """Three requests queue for one model; its period ends: only half_open_calls = 1 trial
    goes upstream, and the others wait on (within queue_timeout) until the trial closed the
    breaker, then are served. They used to get 503 at once, the moment the trial took the slot."""
    a = await fake_openai(reply="from a", default="slow:0.3")
    b = await fake_openai(reply="from b")
    d = await start_daemon(queue_toml(a, b))
    await force_open(d, FALLBACK)
    await force_open(d, PRIMARY, seconds=0.3)
    requests = [asyncio.create_task(chat(d)) for _ in range(3)]

    async def trial_sent() -> bool:
        return len(a.chat_requests()) >= 1

    await until_async(trial_sent)
    await asyncio.sleep(0.1)  # the trial takes 0.3 s: nobody else may go upstream meanwhile
    assert len(a.chat_requests()) == 1
    responses = await asyncio.wait_for(asyncio.gather(*requests), 5)
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    assert {r.headers["x-failoverd-model"] for r in responses} == {PRIMARY}
    assert len(a.chat_requests()) == 3
    assert b.requests == []
    assert (await model_status(d))["state"] == "closed"


async def test_queued_requests_take_turns_at_a_concurrency_limit(fake_openai,
                                                                 start_daemon) -> None:
    """max_concurrency = 1 on the only candidate left: queued requests are served one after
    the other as the slot frees, not refused when another queued request won the slot."""
    a = await fake_openai(reply="from a", default="slow:0.2")
    b = await fake_openai(reply="from b")
    text = queue_toml(a, b).replace(f'[models."{PRIMARY}"]\nprovider = "a"',
                                    f'[models."{PRIMARY}"]\nprovider = "a"\nmax_concurrency = 1')
    assert "max_concurrency = 1" in text
    d = await start_daemon(text)
    await force_open(d, FALLBACK)
    responses = await asyncio.wait_for(asyncio.gather(*(chat(d) for _ in range(3))), 5)
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    assert len(a.chat_requests()) == 3


async def test_a_queued_client_that_goes_away_leaves_nothing_behind(fake_openai,
                                                                    start_daemon) -> None:
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(queue_toml(a, b, queue_timeout=10))
    await force_open(d, PRIMARY, FALLBACK)
    request = asyncio.create_task(chat(d))

    async def queued() -> bool:
        return d.sup.service.health._changed is not None  # someone waits for a change

    await until_async(queued)
    request.cancel()
    await asyncio.gather(request, return_exceptions=True)

    async def gone() -> bool:
        event = d.sup.service.health._changed
        return event is None or not event._waiters

    await until_async(gone)
    status = (await d.http.get("/v1/status")).json()["models"]
    assert {m: status[m]["inflight"] for m in (PRIMARY, FALLBACK)} == {PRIMARY: 0, FALLBACK: 0}
    assert {status[m]["state"] for m in (PRIMARY, FALLBACK)} == {"forced_open"}
    assert a.requests == [] and b.requests == []
    # the daemon serves on once a model is back
    assert (await d.http.post(f"/v1/models/{PRIMARY}/reset")).status_code == 200
    resp = await chat(d)
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == PRIMARY


# ------------------------------------------------------------------ half-open trials


async def test_a_cancelled_half_open_trial_gives_its_permit_back(fake_openai,
                                                                 start_daemon) -> None:
    """half_open_calls = 2: two trials hang, their clients go away; the permits come back, so
    the breaker is not wedged in half-open and the next two trials close it."""
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(pair_toml(a, b, breaker="half_open_calls = 2",
                                     probes='recovery_kind = "none"',
                                     routing='when_all_unavailable = "fail"'))
    await force_open(d, FALLBACK)
    await force_open(d, PRIMARY, seconds=0.05)
    await asyncio.sleep(0.1)  # the forced period (real time: no clock injected) ends
    a.push("hang", "hang")
    hanging = [asyncio.create_task(chat(d)) for _ in range(2)]

    async def both_upstream() -> bool:
        return len(a.chat_requests()) == 2

    await until_async(both_upstream)
    refused = await chat(d)  # both trial slots taken
    assert refused.status_code == 503
    for task in hanging:
        task.cancel()
    await asyncio.gather(*hanging, return_exceptions=True)

    async def released() -> bool:
        return (await model_status(d))["inflight"] == 0

    await until_async(released)
    status = await model_status(d)
    assert status["breaker_state"] == "half_open"
    responses = await asyncio.gather(chat(d), chat(d))
    assert [r.status_code for r in responses] == [200, 200]
    assert (await model_status(d))["state"] == "closed"


# ------------------------------------------------------------------ prober and reloads


async def test_a_reload_drops_recovery_probes_of_removed_and_changed_models(
        fake_openai, start_daemon) -> None:
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(pair_toml(a, b, probes='recovery_kind = "chat"'))
    await force_open(d, PRIMARY, FALLBACK, seconds=60)
    scheduler = d.sup.prober.scheduler
    assert {j.id for j in scheduler.get_jobs() if j.id.startswith("recover:")} == {
        f"recover:{PRIMARY}", f"recover:{FALLBACK}"}
    path = Path(d.sup.config_path)
    text = path.read_text()
    # the fallback goes away; the primary changes (a fresh, closed breaker)
    text = text.replace(f'fallbacks = ["{FALLBACK}"]', "fallbacks = []")
    text = text.replace(f'[models."{FALLBACK}"]\nprovider = "b"\n', "")
    text = text.replace(f'[models."{PRIMARY}"]\nprovider = "a"',
                        f'[models."{PRIMARY}"]\nprovider = "a"\ntier = "small"')
    path.write_text(text)
    resp = await d.http.post("/v1/reload")
    assert resp.status_code == 200, resp.text
    assert (await model_status(d))["state"] == "closed"
    assert [j.id for j in scheduler.get_jobs() if j.id.startswith("recover:")] == []
    assert [j.id for j in scheduler.get_jobs()] == [f"probe:{PRIMARY}"]


async def test_a_probe_still_running_when_the_next_is_due_is_not_doubled(
        fake_openai, start_daemon) -> None:
    """interval 0.1 s, the upstream hangs and the probe times out after 0.6 s: one probe at a
    time per model (max_instances = 1, coalesced), and it counts once against the breaker."""
    a = await fake_openai(default="hang")
    b = await fake_openai()
    text = pair_toml(a, b, probes='kind = "models"\nrecovery_kind = "none"')
    d = await start_daemon(text.replace("interval = 3600\njitter = 0\ntimeout = 2",
                                        "interval = 0.1\njitter = 0\ntimeout = 0.6"))

    async def first_probe() -> bool:
        return any(r.path.endswith("/models") for r in a.requests)

    await until_async(first_probe)
    started = time.monotonic()

    async def first_failed() -> bool:
        return (await model_status(d))["last_probe"] is not None

    await until_async(first_failed)
    assert time.monotonic() - started > 0.4  # the 0.6 s timeout, not the 0.1 s interval
    status = await model_status(d)
    assert status["last_probe"]["reason"] == "timeout"
    # while the first probe hung, several intervals passed: none started a second probe
    listed = [r for r in a.requests if r.path.endswith("/models")]
    assert len(listed) <= 2  # the one that timed out, and at most the next, just started
    assert status["consecutive_failures"] == 1


async def test_probe_times_stay_within_interval_and_jitter(fake_openai, start_daemon) -> None:
    a = await fake_openai()
    b = await fake_openai()
    d = await start_daemon(pair_toml(a, b).replace("jitter = 0", "jitter = 3").replace(
        "interval = 3600", "interval = 60"))
    now = time.time()
    for model_id in (PRIMARY, FALLBACK):
        job = d.sup.prober.scheduler.get_job(f"probe:{model_id}")
        first = job.next_run_time.timestamp() - now
        assert 30 - 0.5 <= first <= 63 + 0.5  # half to one interval, plus up to the jitter
        later = [job.trigger.get_next_fire_time(job.next_run_time, job.next_run_time)
                 for _ in range(50)]
        gaps = [(t - job.next_run_time).total_seconds() for t in later]
        assert all(60 <= g <= 63 for g in gaps)
        assert max(gaps) - min(gaps) > 0.5  # really jittered


async def test_a_late_retry_after_that_extends_the_period_reaches_the_state_file(
        fake_openai, start_daemon) -> None:
    """A failure that extends a running open period (a probe or a late call with a longer
    Retry-After) changes retry_at: status, the state file and the recovery probe follow."""
    clock = ManualClock()
    a = await fake_openai(default="server_error")
    b = await fake_openai()
    d = await start_daemon(pair_toml(a, b, breaker="open_seconds = 5\nmax_open_seconds = 600"),
                           clock=clock)
    for _ in range(2):
        assert (await chat(d)).headers["x-failoverd-model"] == FALLBACK
    status = await model_status(d)
    assert status["state"] == "open"
    assert status["retry_at"] < clock.time() + 6
    a.default = "rate_limit_long"  # 429 with Retry-After: 30
    resp = await d.http.post(f"/v1/models/{PRIMARY}/probe")
    assert resp.status_code == 502
    assert resp.json()["retry_at"] == pytest.approx(clock.time() + 30, abs=0.1)

    path = Path(d.sup.service.state_file.path)

    async def saved() -> bool:
        data = orjson.loads(path.read_bytes()) if path.exists() else {}
        until = data.get("breakers", {}).get(PRIMARY, {}).get("open_until")
        return until is not None and until == pytest.approx(clock.time() + 30, abs=0.1)

    await until_async(saved, timeout=2)
    job = d.sup.prober.scheduler.get_job(f"recover:{PRIMARY}")
    assert job is not None
    assert job.next_run_time.timestamp() - time.time() > 25


def test_an_extension_is_reported_to_the_listener_with_the_new_retry_at() -> None:
    r = rig(failure_threshold=1)
    early = r.breaker.try_acquire()
    assert early is not None
    r.fail()
    assert len(r.events) == 1
    assert r.breaker.try_acquire() is None
    r.breaker.record_failure(early, R.RATE_LIMIT, retry_after=200)
    assert r.events[-1] == ("p/m", OPEN, OPEN, "server_error", r.clock.time() + 200, 1)
    # a shorter one changes nothing and says nothing
    r.breaker.record_failure(early, R.RATE_LIMIT, retry_after=100)
    assert len(r.events) == 2
    assert r.breaker.retry_at() == r.clock.time() + 200
