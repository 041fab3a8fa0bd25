"""Scheduled probes end to end: APScheduler's real (short) intervals against a fake upstream.

Here the scheduler's real time is the thing under test, so intervals are 0.1 s and every wait
is a bounded poll.
"""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import Any

from failoverd.clock import ManualClock
from tests.fakes.openai import FakeOpenAI
from tests.helpers import until_async

ONE = "a/one"
TWO = "a/two"


def probe_toml(a: FakeOpenAI, probes: str, breaker: str = "failure_threshold = 2") -> str:
    return f"""
[providers.a]
kind = "openai"
base_url = "{a.url}"
[models."{ONE}"]
provider = "a"
[models."{TWO}"]
provider = "a"
capabilities = ["reasoning"]
[routing]
primary = "{ONE}"
fallbacks = ["{TWO}"]
when_all_unavailable = "fail"
[breaker]
open_seconds = 30
{breaker}
[probes]
jitter = 0
{probes}
"""


async def models_status(d: Any) -> dict[str, Any]:
    return (await d.http.get("/v1/status")).json()["models"]


async def test_models_probes_list_models_on_schedule(fake_openai, start_daemon) -> None:
    a = await fake_openai()
    d = await start_daemon(probe_toml(a, 'interval = 0.1\nkind = "models"'))

    async def probed_twice() -> bool:
        return len(a.requests) >= 4

    await until_async(probed_twice, timeout=3)
    assert {r.path for r in a.requests} == {"/v1/models"}
    status = await models_status(d)
    for m in (ONE, TWO):
        assert status[m]["last_probe"]["ok"] is True
        assert status[m]["last_probe"]["latency"] >= 0
        assert status[m]["state"] == "closed"
    metrics = (await d.http.get("/metrics")).text
    assert f'failoverd_probes_total{{model="{ONE}",outcome="ok"}}' in metrics


async def test_chat_probes_send_a_tiny_completion(fake_openai, start_daemon) -> None:
    a = await fake_openai()
    d = await start_daemon(probe_toml(a, 'interval = 0.1\nkind = "chat"\nchat_max_tokens = 5'))

    async def both_probed() -> bool:
        return {r.body["model"] for r in a.chat_requests()} == {"one", "two"}

    await until_async(both_probed, timeout=3)
    assert {r.path for r in a.requests} == {"/v1/chat/completions"}
    by_model = {r.body["model"]: r.body for r in a.chat_requests()}
    assert by_model["one"]["max_tokens"] == 5
    assert "max_completion_tokens" not in by_model["one"]
    # a reasoning model: the newer limit name and the lowest effort
    assert by_model["two"]["max_completion_tokens"] == 5
    assert by_model["two"]["reasoning_effort"] == "low"
    assert not by_model["one"].get("stream")
    assert (await models_status(d))[TWO]["last_probe"]["ok"] is True


async def test_kind_none_schedules_nothing(fake_openai, start_daemon) -> None:
    a = await fake_openai()
    d = await start_daemon(probe_toml(a, 'interval = 0.1\nkind = "none"'))
    jobs = [j.id for j in d.sup.prober.scheduler.get_jobs()]
    assert not [j for j in jobs if j.startswith("probe:")]
    await asyncio.sleep(0.35)  # several intervals: absence is the thing under test
    assert a.requests == []
    assert (await models_status(d))[ONE]["last_probe"] is None


async def test_failing_model_without_traffic_opens_within_the_bound(fake_openai,
                                                                    start_daemon) -> None:
    a = await fake_openai(default="server_error")
    d = await start_daemon(probe_toml(a, 'interval = 0.1\nkind = "models"\ntimeout = 0.5'))

    async def opened() -> bool:
        return (await models_status(d))[ONE]["state"] == "open"

    # failure_threshold = 2 probes; the first comes within one interval
    took = await until_async(opened, timeout=3)
    assert took < 2 * 0.1 + 0.5 + 0.5
    status = (await models_status(d))[ONE]
    assert status["reason"] == "server_error"
    assert status["last_probe"]["ok"] is False
    assert status["last_probe"]["reason"] == "server_error"
    assert a.chat_requests() == []  # no client was the guinea pig
    failed = [e for e in d.sup.service.bus.recent()
              if e.type == "probe:failed" and e.fields["model"] == ONE]
    assert len(failed) >= 2
    assert failed[0].fields["kind"] == "models"

    # while its open period runs, the scheduled probes leave it alone
    async def both_open() -> bool:
        s = await models_status(d)
        return s[ONE]["state"] == s[TWO]["state"] == "open"

    await until_async(both_open, timeout=3)
    count = len(a.requests)
    await asyncio.sleep(0.35)
    assert len(a.requests) == count
    assert d.sup.prober.scheduler.get_job(f"recover:{ONE}") is not None


async def test_hanging_upstream_is_a_probe_timeout(fake_openai, start_daemon) -> None:
    a = await fake_openai(default="hang")
    d = await start_daemon(probe_toml(a, 'interval = 0.1\nkind = "models"\ntimeout = 0.2',
                                      breaker="failure_threshold = 1"))

    async def opened() -> bool:
        return (await models_status(d))[ONE]["state"] == "open"

    took = await until_async(opened, timeout=3)
    assert took < 0.1 + 0.2 + 0.5  # interval + timeout, plus slack
    status = (await models_status(d))[ONE]
    assert status["reason"] == "timeout"
    assert status["last_probe"]["latency"] >= 0.19


async def test_credential_trouble_is_probed_with_a_completion(fake_openai,
                                                              start_daemon) -> None:
    a = await fake_openai(default="auth")
    # one model: no probe of another model still in flight can race the one under test
    body = probe_toml(a, 'interval = 0.1\nkind = "models"\nrecovery_kind = "chat"')
    body = body.replace(f'[models."{TWO}"]\nprovider = "a"\ncapabilities = ["reasoning"]\n',
                        "").replace(f'fallbacks = ["{TWO}"]', "fallbacks = []")
    d = await start_daemon(body)

    async def credentials(state: str) -> bool:
        return (await d.http.get("/v1/status")).json()["providers"]["a"][
            "credentials"] == state

    await until_async(lambda: credentials("auth"), timeout=3)
    assert a.requests[0].path == "/v1/models"
    a.default = "ok"
    await until_async(lambda: credentials("ok"), timeout=3)
    # listing models proves little about credit: what cleared it was a completion
    assert a.requests[-1].path == "/v1/chat/completions"
    assert a.requests[-1].body["messages"] == [{"role": "user", "content": "ping"}]
    events = [e.type for e in d.sup.service.bus.recent()]
    assert "probe:recovered" in events
    assert (await d.http.get("/v1/health")).json()["status"] == "ok"


async def test_reload_keeps_probing_with_the_new_interval(fake_openai, start_daemon) -> None:
    a = await fake_openai()
    d = await start_daemon(probe_toml(a, 'interval = 3600\nkind = "models"'))
    job = d.sup.prober.scheduler.get_job(f"probe:{ONE}")
    assert job is not None and job.trigger.interval.total_seconds() == 3600
    path = Path(d.sup.config_path)
    path.write_text(path.read_text().replace("interval = 3600", "interval = 0.1"))
    resp = await d.http.post("/v1/reload")
    assert resp.status_code == 200, resp.text

    async def probed() -> bool:
        return len(a.requests) >= 2

    await until_async(probed, timeout=3)
    assert d.sup.prober.scheduler.get_job(f"probe:{ONE}").trigger.interval.total_seconds() == 0.1


async def test_without_recovery_probes_the_end_of_an_open_period_is_still_published(
        fake_openai, start_daemon) -> None:
    """recovery_kind = "none": no probe at the end of the open period, but the breaker is read
    then, so breaker:half_open (and the MQTT state) come when the period ends, not at the next
    request, which may be hours away on a quiet host."""
    a = await fake_openai()
    clock = ManualClock()
    d = await start_daemon(probe_toml(a, 'kind = "none"\nrecovery_kind = "none"',
                                      breaker="failure_threshold = 1"), clock=clock)
    a.push("server_error")
    resp = await d.http.post("/v1/chat/completions",
                             json={"model": ONE, "messages": [{"role": "user", "content": "hi"}]})
    assert resp.headers["x-failoverd-model"] == TWO
    bus = d.sup.service.bus
    opened = [e for e in bus.recent() if e.type == "breaker:opened"]
    assert [e.fields["model"] for e in opened] == [ONE]
    job = d.sup.prober.scheduler.get_job(f"recover:{ONE}")
    assert job is not None
    # run the job now, as the scheduler will when the (jittered) period ends, with the
    # breaker's clock moved past that end
    wait = d.sup.service.health.retry_in(ONE)
    assert wait is not None and wait > 20
    clock.advance(wait + 0.1)
    requests = len(a.requests)
    job.modify(next_run_time=datetime.datetime.now(datetime.UTC))

    async def half_open() -> bool:
        return any(e.type == "breaker:half_open" for e in bus.recent())

    await until_async(half_open, timeout=3)
    assert len(a.requests) == requests  # read, not probed
    assert d.sup.prober.scheduler.get_job(f"recover:{ONE}") is None
