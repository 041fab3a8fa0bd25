"""Breakers end to end: the daemon, real clients, fake upstreams that go down and come back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from failoverd.clock import ManualClock
from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO, ask, providers, status, until, until_async

PRIMARY = "a/gpt-a"
FALLBACK = "b/gpt-b"


def pair_toml(a: FakeOpenAI, b: FakeOpenAI, *,
              breaker: str = "open_seconds = 30\nmax_open_seconds = 600", probes: str = "",
              routing: str = 'when_all_unavailable = "fail"') -> str:
    return f"""
{providers(a=a.url, b=b.url)}
[models."{PRIMARY}"]
provider = "a"
[models."{FALLBACK}"]
provider = "b"
[routing]
primary = "{PRIMARY}"
fallbacks = ["{FALLBACK}"]
deadline = 5
{routing}
[breaker]
failure_threshold = 3
{breaker}
[probes]
interval = 3600
jitter = 0
timeout = 2
{probes}
"""


async def model_status(d: Any, model_id: str = PRIMARY) -> dict[str, Any]:
    models: dict[str, Any] = (await status(d))["models"]
    return models[model_id]


def breaker_gauge(metrics: str, model_id: str) -> int:
    prefix = f'failoverd_breaker_state{{model="{model_id}"}} '
    return next(int(line[len(prefix):]) for line in metrics.splitlines()
                if line.startswith(prefix))


def event_types(d: Any, model_id: str = PRIMARY) -> list[str]:
    return [e.type for e in d.sup.service.bus.recent()
            if e.type.startswith("breaker:") and e.fields.get("model") == model_id]


def client_chats(fake: FakeOpenAI) -> list[Any]:
    """The chat requests a client sent (a probe is a 16-token "ping")."""
    return [r for r in fake.chat_requests()
            if r.body["messages"] != [{"role": "user", "content": "ping"}]]


async def test_hard_down_primary_opens_then_a_probe_brings_traffic_back(
        fake_openai, start_daemon) -> None:
    a = await fake_openai(reply="from a", default="server_error")
    b = await fake_openai(reply="from b")
    clock = ManualClock()
    d = await start_daemon(pair_toml(a, b), clock=clock)

    # max_retries = 1: each request tries the primary twice; the third failure opens it
    for _ in range(2):
        model, raw = await ask(d)
        assert model == FALLBACK
    assert len(a.chat_requests()) == 3
    assert "breaker:opened" in event_types(d)
    opened = [e for e in d.sup.service.bus.recent() if e.type == "breaker:opened"][-1]
    assert opened.fields["reason"] == "server_error"
    status = await model_status(d)
    assert status["state"] == "open"
    assert status["reason"] == "server_error"
    assert status["consecutive_failures"] == 3
    assert status["retry_at"] == pytest.approx(clock.time() + 30, abs=3.1)
    assert breaker_gauge((await d.http.get("/metrics")).text, PRIMARY) == 2

    # open: the primary is skipped without a single upstream request
    for _ in range(3):
        model, raw = await ask(d)
        assert model == FALLBACK
        assert raw.headers["x-failoverd-attempts"] == "1"
        assert raw.headers["x-failoverd-failover"] == f"{PRIMARY}>{FALLBACK}:unavailable"
    assert len(a.requests) == 3

    # still down: an operator probe fails and the breaker stays open
    resp = await d.http.post(f"/v1/models/{PRIMARY}/probe")
    assert resp.status_code == 502
    assert resp.json()["ok"] is False
    assert resp.json()["state"] == "open"

    # the upstream recovers: the operator's probe (a 1-token chat: recovery_kind) closes it
    a.default = "ok"
    resp = await d.http.post(f"/v1/models/{PRIMARY}/probe")
    assert resp.status_code == 200, resp.text
    assert resp.json()["ok"] is True
    assert resp.json()["state"] == "closed"
    probe = a.chat_requests()[-1].body
    assert probe["max_tokens"] == 16
    assert probe["messages"] == [{"role": "user", "content": "ping"}]
    assert event_types(d)[-1] == "breaker:closed"
    last = (await model_status(d))["last_probe"]
    assert last["ok"] is True
    assert last["at"] == pytest.approx(clock.time())
    assert breaker_gauge((await d.http.get("/metrics")).text, PRIMARY) == 0

    before = len(a.chat_requests())
    model, raw = await ask(d)
    assert model == PRIMARY
    assert "x-failoverd-failover" not in raw.headers
    assert len(a.chat_requests()) == before + 1
    metrics = (await d.http.get("/metrics")).text
    assert f'failoverd_probes_total{{model="{PRIMARY}",outcome="failed"}} 1' in metrics
    assert f'failoverd_probes_total{{model="{PRIMARY}",outcome="ok"}} 1' in metrics


async def test_scheduled_recovery_probe_closes_without_a_client(fake_openai,
                                                                start_daemon) -> None:
    a = await fake_openai(reply="from a", default="server_error")
    b = await fake_openai(reply="from b")
    d = await start_daemon(pair_toml(a, b, breaker="open_seconds = 0.2\nmax_open_seconds = 0.4"))
    for _ in range(2):
        assert (await ask(d))[0] == FALLBACK
    assert (await model_status(d))["state"] == "open"
    # the recovery probe runs on real time (0.2 s) and may already have been sent here, on a
    # slow machine: count the client's requests and the probes apart
    assert len(client_chats(a)) == 3

    # still down at the end of the period: the recovery probe fails and re-opens it, longer
    async def reopened() -> bool:
        return event_types(d).count("breaker:opened") >= 2

    await until_async(reopened)
    assert len(client_chats(a)) == 3
    assert len(a.chat_requests()) > 3
    assert (await model_status(d))["open_count"] >= 2

    # back up: the next recovery probe closes it, with no client request in between
    a.default = "ok"

    async def closed() -> bool:
        return (await model_status(d))["state"] == "closed"

    await until_async(closed)
    probe = a.chat_requests()[-1].body
    assert probe["max_tokens"] == 16  # the recovery probe, not a client request
    assert b.chat_requests() and len(b.chat_requests()) == 2
    status = await model_status(d)
    assert status["reason"] == "probe_succeeded"
    assert status["last_probe"]["ok"] is True
    kinds = [e.type for e in d.sup.service.bus.recent() if e.type.startswith("probe:")]
    assert "probe:failed" in kinds and kinds[-1] == "probe:recovered"
    assert (await ask(d))[0] == PRIMARY


# ------------------------------------------------------------------ restart


async def test_restart_keeps_open_breakers_and_credential_trouble(fake_openai,
                                                                  start_daemon) -> None:
    a = await fake_openai(reply="from a", default="server_error")
    b = await fake_openai(reply="from b")
    clock = ManualClock()
    body = pair_toml(a, b)
    d = await start_daemon(body, clock=clock)
    for _ in range(2):
        assert (await ask(d))[0] == FALLBACK
    # and the fallback forced open for a while, by the operator
    resp = await d.http.post(f"/v1/models/{FALLBACK}/open", json={"seconds": 120})
    assert resp.json()["state"] == "forced_open"
    before = {m: await model_status(d, m) for m in (PRIMARY, FALLBACK)}
    assert before[PRIMARY]["state"] == "open"
    await d.stop()
    assert orjson.loads((d.sup.service.state_file.path).read_bytes())["breakers"][PRIMARY][
        "state"] == "open"

    a.default = "ok"  # even healthy again, it must not be called before its time
    clock.advance(5)
    d2 = await start_daemon(body, clock=clock)
    after = {m: await model_status(d2, m) for m in (PRIMARY, FALLBACK)}
    for m in (PRIMARY, FALLBACK):
        for key in ("state", "reason", "retry_at", "open_count"):
            assert after[m][key] == before[m][key], (m, key)
    # both out: the request gets the 503 without any upstream request
    resp = await d2.http.post("/v1/chat/completions", json={"model": "default",
                                                            "messages": HELLO})
    assert resp.status_code == 503
    assert int(resp.headers["Retry-After"]) == pytest.approx(25, abs=4)
    assert [x["reason"] for x in resp.json()["error"]["attempts"]] == ["unavailable"] * 2
    assert len(a.requests) == 3
    assert len(b.chat_requests()) == 2
    # the recovery probe for the restored breaker is scheduled for the end of its period
    job = d2.sup.prober.scheduler.get_job(f"recover:{PRIMARY}")
    assert job is not None


# ------------------------------------------------------------------ provider credentials


def one_provider_two_models(a: FakeOpenAI, b: FakeOpenAI) -> str:
    return f"""
{providers(a=a.url, b=b.url)}
[models."a/one"]
provider = "a"
[models."a/two"]
provider = "a"
[models."{FALLBACK}"]
provider = "b"
[routing]
primary = "a/one"
fallbacks = ["a/two", "{FALLBACK}"]
deadline = 5
when_all_unavailable = "fail"
[probes]
interval = 3600
jitter = 0
"""


@pytest.mark.parametrize(("behaviour", "state", "seconds"),
                         [("auth", "auth", 3600), ("billing", "billing", 18000)])
@pytest.mark.parametrize("clear", ["probe", "reset"])
async def test_credential_trouble_blocks_every_model_of_the_provider(
        fake_openai, start_daemon, behaviour: str, state: str, seconds: int,
        clear: str) -> None:
    a = await fake_openai(reply="from a", default=behaviour)
    b = await fake_openai(reply="from b")
    clock = ManualClock()
    d = await start_daemon(one_provider_two_models(a, b), clock=clock)
    model, raw = await ask(d)
    assert model == FALLBACK
    # a/two is never called: its provider's key is known bad
    assert raw.headers["x-failoverd-failover"] == (
        f"a/one>a/two:{state},a/two>{FALLBACK}:unavailable")
    assert len(a.chat_requests()) == 1
    status = (await d.http.get("/v1/status")).json()
    assert status["providers"]["a"]["credentials"] == state
    assert status["providers"]["a"]["retry_at"] == pytest.approx(clock.time() + seconds)
    assert status["providers"]["b"]["credentials"] == "ok"
    for m in ("a/one", "a/two"):
        assert status["models"][m]["state"] == "unavailable"
        assert status["models"][m]["breaker_state"] == "closed"
        # the model says why and until when, as its provider does
        assert status["models"][m]["reason"] == state
        assert status["models"][m]["retry_at"] == status["providers"]["a"]["retry_at"]
    assert status["health"] == "degraded"
    events = [e for e in d.sup.service.bus.recent() if e.type == "provider:credentials"]
    assert [(e.fields["provider"], e.fields["state"]) for e in events] == [("a", state)]
    assert (await ask(d))[0] == FALLBACK
    assert len(a.chat_requests()) == 1

    a.default = "ok"
    if clear == "probe":
        resp = await d.http.post("/v1/models/a/two/probe")
        assert resp.json()["ok"] is True
        assert a.chat_requests()[-1].body["max_tokens"] == 16  # a completion proves credit
    else:
        resp = await d.http.post("/v1/models/a/two/reset")
    assert resp.status_code == 200
    status = (await d.http.get("/v1/status")).json()
    assert status["providers"]["a"]["credentials"] == "ok"
    assert {status["models"][m]["state"] for m in ("a/one", "a/two")} == {"closed"}
    assert events[-1].fields["state"] == state
    last = [e for e in d.sup.service.bus.recent() if e.type == "provider:credentials"][-1]
    assert last.fields["state"] == "ok"
    assert (await ask(d))[0] == "a/one"


# ------------------------------------------------------------------ every candidate out


def queue_toml(a: FakeOpenAI, b: FakeOpenAI, mode: str = "queue",
               queue_timeout: float = 3) -> str:
    return pair_toml(a, b, routing=f'when_all_unavailable = "{mode}"\n'
                                   f"queue_timeout = {queue_timeout}")


async def force_open(d: Any, *models: str, seconds: float | None = None) -> None:
    for m in models:
        body = {} if seconds is None else {"seconds": seconds}
        resp = await d.http.post(f"/v1/models/{m}/open", json=body)
        assert resp.status_code == 200


async def test_queued_request_is_served_when_an_operator_resets_a_model(
        fake_openai, start_daemon) -> None:
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(queue_toml(a, b))
    await force_open(d, PRIMARY, FALLBACK)
    request = asyncio.create_task(ask(d))
    await asyncio.sleep(0.2)
    assert not request.done()  # waiting in the queue, not failed
    assert a.requests == [] and b.requests == []
    started = time.monotonic()
    resp = await d.http.post(f"/v1/models/{FALLBACK}/reset")
    assert resp.json()["state"] == "closed"
    model, raw = await asyncio.wait_for(request, 2)
    assert model == FALLBACK
    assert time.monotonic() - started < 1.0  # woken by the reset, not by a timeout
    assert raw.parse().choices[0].message.content == "from b"
    assert a.requests == []


async def test_queued_request_is_served_when_an_open_period_ends(fake_openai,
                                                                 start_daemon) -> None:
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(queue_toml(a, b))
    await force_open(d, FALLBACK)
    await force_open(d, PRIMARY, seconds=0.3)
    started = time.monotonic()
    model, raw = await ask(d)
    elapsed = time.monotonic() - started
    assert model == PRIMARY  # its half-open trial
    assert 0.25 < elapsed < 2.0
    assert (await model_status(d))["state"] == "closed"
    assert b.requests == []


async def test_queue_gives_up_after_queue_timeout_with_attempts(fake_openai,
                                                                start_daemon) -> None:
    """Forced open until reset: only an operator brings them back, which may come any moment,
    so the request waits its queue_timeout for that before the 503."""
    a = await fake_openai()
    b = await fake_openai()
    d = await start_daemon(queue_toml(a, b, queue_timeout=0.3))
    await force_open(d, PRIMARY, FALLBACK)
    started = time.monotonic()
    resp = await d.http.post("/v1/chat/completions", json={"model": "default",
                                                           "messages": HELLO})
    elapsed = time.monotonic() - started
    assert resp.status_code == 503
    assert 0.3 <= elapsed < 1.5
    error = resp.json()["error"]
    assert error["type"] == "no_model_available"
    assert {x["model"] for x in error["attempts"]} == {PRIMARY, FALLBACK}
    assert {x["reason"] for x in error["attempts"]} == {"unavailable"}
    assert resp.headers["Retry-After"] == "1"  # no time known
    assert a.requests == [] and b.requests == []


async def test_queue_answers_at_once_when_nothing_comes_back_within_it(
        fake_openai, start_daemon) -> None:
    """Every candidate open for 40 s and a queue of 0.3 s: waiting cannot help, so the 503
    comes at once, its Retry-After saying when the first comes back. One candidate whose time
    is within the queue keeps the request waiting for it, and it is served."""
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(queue_toml(a, b, queue_timeout=0.3))
    await force_open(d, PRIMARY, FALLBACK, seconds=40)
    started = time.monotonic()
    resp = await d.http.post("/v1/chat/completions", json={"model": "default",
                                                           "messages": HELLO})
    assert time.monotonic() - started < 0.25
    assert resp.status_code == 503
    error = resp.json()["error"]
    assert error["type"] == "no_model_available"
    assert {x["reason"] for x in error["attempts"]} == {"unavailable"}
    assert 38 <= int(resp.headers["Retry-After"]) <= 40
    await force_open(d, PRIMARY, seconds=0.2)
    model, raw = await ask(d)
    assert model == PRIMARY and raw.parse().choices[0].message.content == "from a"
    assert b.requests == []


async def test_queue_waits_for_a_provider_whose_credential_block_a_probe_may_end(
        fake_openai, start_daemon) -> None:
    """A provider blocked for its key (an hour) may come back at the next successful probe of
    any of its models, so its time is no reason to answer at once: the request waits in the
    queue and is served the moment a probe clears the block."""
    a = await fake_openai(reply="from a", default="auth")
    b = await fake_openai(reply="from b")
    d = await start_daemon(queue_toml(a, b, queue_timeout=3))
    model, _ = await ask(d)
    assert model == FALLBACK  # a's key refused: its provider is blocked for auth_open_seconds
    await force_open(d, FALLBACK, seconds=40)
    request = asyncio.create_task(ask(d))
    await asyncio.sleep(0.3)
    assert not request.done()  # waiting, not a 503 at once
    a.default = "ok"
    assert (await d.http.post(f"/v1/models/{PRIMARY}/probe")).json()["ok"] is True
    model, raw = await asyncio.wait_for(request, 2)
    assert model == PRIMARY and raw.parse().choices[0].message.content == "from a"


async def test_queue_never_waits_past_the_deadline(fake_openai, start_daemon) -> None:
    a = await fake_openai()
    b = await fake_openai()
    d = await start_daemon(queue_toml(a, b, queue_timeout=10))
    await force_open(d, PRIMARY, FALLBACK)
    started = time.monotonic()
    resp = await d.http.post("/v1/chat/completions", json={"model": "default",
                                                           "messages": HELLO},
                             headers={"x-failoverd-deadline": "0.3"})
    elapsed = time.monotonic() - started
    assert resp.status_code == 503
    assert 0.25 <= elapsed < 1.5
    assert resp.headers["Retry-After"] == "1"  # open until reset: no time known


async def test_fail_mode_answers_503_at_once(fake_openai, start_daemon) -> None:
    a = await fake_openai()
    b = await fake_openai()
    d = await start_daemon(queue_toml(a, b, mode="fail"))
    await force_open(d, PRIMARY, FALLBACK, seconds=40)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        await ask(d)
    assert time.monotonic() - started < 0.5
    assert info.value.status_code == 503
    assert info.value.response.headers["Retry-After"] in ("40", "39")
    assert a.requests == [] and b.requests == []


# ------------------------------------------------------------------ failover count


async def test_failovers_last_minute_counts_then_ages_out(fake_openai, start_daemon) -> None:
    a = await fake_openai(reply="from a", default="server_error")
    b = await fake_openai(reply="from b")
    clock = ManualClock()
    d = await start_daemon(pair_toml(a, b), clock=clock)

    async def last_minute() -> int:
        return int((await d.http.get("/v1/status")).json()["failovers_last_minute"])

    assert (await ask(d))[0] == FALLBACK  # two failures on the primary, then the fallback
    clock.advance(20)
    assert (await ask(d))[0] == FALLBACK  # the third failure opens the primary's breaker
    clock.advance(5)
    assert (await ask(d))[0] == FALLBACK  # skipped while open: no failover hop is counted
    assert await last_minute() == 2
    clock.advance(36)  # t = 61: the first is over a minute old
    assert await last_minute() == 1
    clock.advance(20)
    assert await last_minute() == 0


async def test_reload_drops_the_metric_series_of_removed_models(fake_openai,
                                                                start_daemon) -> None:
    a = await fake_openai(reply="from a", default="server_error")
    b = await fake_openai(reply="from b")
    d = await start_daemon(pair_toml(a, b))
    assert (await ask(d))[0] == FALLBACK
    metrics = (await d.http.get("/metrics")).text
    assert f'failoverd_requests_total{{model="{FALLBACK}",outcome="ok"}} 1' in metrics
    assert f'from_model="{PRIMARY}",to_model="{FALLBACK}"' in metrics
    assert f'failoverd_upstream_latency_seconds_count{{model="{FALLBACK}"' in metrics

    # b leaves the configuration: its series go with it, a's stay
    path = Path(d.sup.config_path)
    text = path.read_text()
    text = text.replace(f'[models."{FALLBACK}"]\nprovider = "b"\n', "")
    text = text.replace(f'fallbacks = ["{FALLBACK}"]', "fallbacks = []")
    path.write_text(text)
    resp = await d.http.post("/v1/reload")
    assert resp.status_code == 200, resp.text
    metrics = (await d.http.get("/metrics")).text
    assert FALLBACK not in metrics
    assert f'failoverd_upstream_latency_seconds_count{{model="{PRIMARY}",result="error"}} 2' \
        in metrics


@pytest.mark.parametrize("stream", [False, True])
async def test_a_clients_short_deadline_is_not_held_against_the_model(
        fake_openai, start_daemon, stream: bool) -> None:
    a = await fake_openai(reply="from a", default="slow:0.3" if not stream else "hang")
    b = await fake_openai(reply="from b")
    d = await start_daemon(pair_toml(a, b, routing='when_all_unavailable = "fail"').replace(
        'base_url = "' + a.url + '"', 'base_url = "' + a.url + '"\ntimeout = 0.15').replace(
        f'[models."{PRIMARY}"]\nprovider = "a"',
        f'[models."{PRIMARY}"]\nprovider = "a"\nfirst_token_timeout = 0.15'))
    body = {"model": PRIMARY, "messages": HELLO, "stream": stream}
    hurried = {"x-failoverd-deadline": "0.05", "x-failoverd-no-fallback": "1"}
    for _ in range(4):  # failure_threshold = 3: these would open it, were they counted
        resp = await d.http.post("/v1/chat/completions", json=body, headers=hurried)
        assert resp.status_code == 503
        assert resp.json()["error"]["attempts"][0]["reason"] == "timeout"
    status = await model_status(d)
    assert status["state"] == "closed" and status["consecutive_failures"] == 0

    # the model's own limit (timeout / first_token_timeout 0.15 s) is the operator's: counted
    for _ in range(3):
        resp = await d.http.post("/v1/chat/completions", json=body,
                                 headers={"x-failoverd-no-fallback": "1"})
        assert resp.status_code == 503
    status = await model_status(d)
    assert status["state"] == "open" and status["reason"] == "timeout"


async def test_failover_events_carry_the_capped_session_key(fake_openai, start_daemon) -> None:
    a = await fake_openai(reply="from a", default="server_error")
    b = await fake_openai(reply="from b")
    d = await start_daemon(pair_toml(a, b))
    key = "k" * 5000  # within a header's size, far over what the session store keeps
    resp = await d.http.post("/v1/chat/completions", json={"model": "default", "messages": HELLO},
                             headers={"x-failoverd-session": key})
    assert resp.headers["x-failoverd-model"] == FALLBACK
    [event] = [e for e in d.sup.service.bus.recent() if e.type == "model:failover"]
    session = event.fields["session"]
    assert len(session) <= 256 and session.startswith("k" * 200 + "#")
    # the same key finds the session the store kept
    stored = await d.http.get(f"/v1/sessions/{key}")
    assert stored.status_code == 200 and stored.json()["key"] == session


async def test_a_reload_writes_the_state_file_at_once(fake_openai, start_daemon) -> None:
    a = await fake_openai(reply="from a", default="server_error")
    b = await fake_openai(reply="from b")
    d = await start_daemon(pair_toml(a, b))
    for _ in range(2):
        assert (await ask(d))[0] == FALLBACK
    state_path = d.sup.service.state_file.path

    def saved() -> dict[str, Any]:
        return orjson.loads(state_path.read_bytes())["breakers"]

    await until(lambda: saved().get(PRIMARY, {}).get("state") == "open")
    # the primary leaves the configuration: the file forgets it now, not at the next change
    path = Path(d.sup.config_path)
    text = path.read_text().replace(f'[models."{PRIMARY}"]\nprovider = "a"\n', "")
    path.write_text(text.replace(f'primary = "{PRIMARY}"', f'primary = "{FALLBACK}"')
                    .replace(f'fallbacks = ["{FALLBACK}"]', "fallbacks = []"))
    resp = await d.http.post("/v1/reload")
    assert resp.status_code == 200, resp.text
    await until(lambda: PRIMARY not in saved())
    assert set(saved()) == {FALLBACK}
