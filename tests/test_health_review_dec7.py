"""Health machinery review (Dec 7): prober, breakers, credentials and the state file."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest

from failoverd import config
from failoverd.clock import ManualClock
from failoverd.failures import FailureReason
from failoverd.health import HealthRegistry
from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO, providers, status, until_async


def many_models(a: FakeOpenAI, b: FakeOpenAI, n: int, probes: str, breaker: str = "") -> str:
    models = "".join(f'[models."a/m{i}"]\nprovider = "a"\n' for i in range(n))
    chain = "".join(f'"a/m{i}", ' for i in range(1, n))
    return f"""
{providers(a=a.url, b=b.url)}
{models}[models."b/x"]
provider = "b"
[routing]
primary = "a/m0"
fallbacks = [{chain}"b/x"]
deadline = 5
when_all_unavailable = "fail"
[breaker]
{breaker}
[probes]
jitter = 0
{probes}
"""


def creds_events(d: Any) -> list[tuple[str, str | None]]:
    return [(e.fields["state"], e.fields["reason"]) for e in d.sup.service.bus.recent()
            if e.type == "provider:credentials"]


def probes_sent(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.chat_requests()
               if r.body["messages"] == [{"role": "user", "content": "ping"}])


async def test_a_blocked_provider_is_probed_once_per_interval_not_once_per_model(
        fake_openai, start_daemon) -> None:
    """Every model's interval job probed the blocked provider with a completion: 20 models
    on a revoked key made 40 chat requests a minute against it, all failing the same way."""
    a = await fake_openai(default="auth")
    b = await fake_openai()
    d = await start_daemon(many_models(a, b, 6, 'interval = 0.2\nkind = "models"'))

    async def blocked() -> bool:
        return bool((await status(d))["providers"]["a"]["credentials"] == "auth")

    await until_async(blocked, timeout=3)
    before = probes_sent(a)
    await asyncio.sleep(1.0)  # five intervals of six models each: the rate is under test
    sent = probes_sent(a) - before
    assert 2 <= sent <= 7, sent  # about one per interval (was about 30)
    a.default = "ok"

    async def cleared() -> bool:
        return bool((await status(d))["providers"]["a"]["credentials"] == "ok")

    await until_async(cleared, timeout=3)
    assert creds_events(d)[-1] == ("ok", "probe_succeeded")


async def test_probes_confirming_a_credential_block_do_not_announce_it_again(
        fake_openai, start_daemon) -> None:
    """Each failed probe during an auth block extended it and emitted provider:credentials
    again (hooks, MQTT republish of every model of the provider): one per probe."""
    a = await fake_openai(default="auth")
    b = await fake_openai()
    d = await start_daemon(many_models(a, b, 2, 'interval = 0.1\nkind = "models"'))

    async def probed_during_block() -> bool:
        return probes_sent(a) >= 4

    await until_async(probed_during_block, timeout=5)
    assert creds_events(d) == [("auth", "auth")]
    entry = (await status(d))["providers"]["a"]
    assert entry["credentials"] == "auth"
    assert entry["retry_at"] == pytest.approx(entry["since"] + 3600, abs=0.01)


async def test_a_period_that_ended_while_the_daemon_was_down_gets_its_recovery_probe(
        fake_openai, start_daemon) -> None:
    """A breaker restored open whose period ended during the downtime is half-open at start;
    its recovery probe used to be scheduled only for periods still running, so it sat
    half-open (no probe with kind "none") until a client's request was the trial."""
    a = await fake_openai(default="server_error")
    b = await fake_openai()
    clock = ManualClock()
    body = many_models(a, b, 1, 'kind = "none"\nrecovery_kind = "chat"\ninterval = 0.2',
                       "failure_threshold = 1\nopen_seconds = 30")
    d = await start_daemon(body, clock=clock)
    resp = await d.http.post("/v1/chat/completions", json={"model": "default", "messages": HELLO})
    assert resp.status_code == 200
    assert (await status(d))["models"]["a/m0"]["state"] == "open"
    await d.stop()
    a.default = "ok"
    clock.advance(100)  # the 30 s period ends while the daemon is down
    d2 = await start_daemon(body, clock=clock)

    async def closed() -> bool:
        return bool((await status(d2))["models"]["a/m0"]["state"] == "closed")

    await until_async(closed, timeout=3)
    entry = (await status(d2))["models"]["a/m0"]
    assert entry["reason"] == "probe_succeeded"
    assert entry["last_probe"]["ok"] is True
    assert a.chat_requests()[-1].body["messages"] == [{"role": "user", "content": "ping"}]
    kinds = [e.type for e in d2.sup.service.bus.recent() if e.type.startswith("breaker:")]
    assert kinds == ["breaker:half_open", "breaker:closed"]


HEALTH_TOML = """
[providers.a]
kind = "simulated"
[models."a/one"]
provider = "a"
[models."a/two"]
provider = "a"
[breaker]
failure_threshold = 1
open_seconds = 30
auth_open_seconds = 3600
"""


def registry(clock: ManualClock) -> HealthRegistry:
    return HealthRegistry(config.loads(HEALTH_TOML, env={}), clock, random.Random(3))


def test_a_wall_clock_behind_at_start_does_not_stretch_restored_periods() -> None:
    """A machine without a real-time clock starts at 1970 (or an old date) until NTP: open
    periods and credential blocks restored from the state file were kept for the clock's
    error on top of what was left of them (56 years for a 30 s period)."""
    clock = ManualClock(wall=1_800_000_000.0)
    before = registry(clock)
    permit = before.acquire("a/one")
    assert permit is not None
    permit.failure(FailureReason.SERVER_ERROR)
    permit = before.acquire("a/two")
    assert permit is not None
    permit.failure(FailureReason.AUTH)
    left = before.breaker("a/one").retry_in()  # type: ignore[union-attr]
    assert left is not None and 25 < left < 35
    saved = orjson.loads(orjson.dumps(before.snapshot()))

    boot = ManualClock(start=5.0, wall=86_400.0)  # 2 January 1970
    after = registry(boot)
    after.restore(saved)
    assert after.model_state("a/one") == "open"
    assert after.breaker("a/one").retry_in() == pytest.approx(left, abs=0.01)  # type: ignore[union-attr]
    assert after.retry_in("a/two") == pytest.approx(3600, abs=0.01)
    boot.advance(left + 0.01)
    assert after.breaker("a/one").can_acquire()  # type: ignore[union-attr]


async def test_a_scheduled_model_list_does_not_close_a_breaker_whose_period_ended(
        fake_openai, start_daemon) -> None:
    """The scheduled probe that met a breaker at the end of its period (half-open) listed
    models, and that success closed it: a model whose completions fail while its listing
    works came back for every client after each period, with its backoff reset."""
    a = await fake_openai()
    b = await fake_openai()
    clock = ManualClock()
    d = await start_daemon(many_models(a, b, 1, 'interval = 0.1\ntimeout = 0.3\nkind = "models"'
                                       '\nrecovery_kind = "chat"',
                                       "failure_threshold = 1\nopen_seconds = 30"), clock=clock)
    a.default = "slow:100"  # listing models answers at once; a completion never comes
    a.push("server_error")  # but the first listing fails: the breaker opens

    async def opened() -> bool:
        return bool((await status(d))["models"]["a/m0"]["state"] == "open")

    await until_async(opened, timeout=3)
    assert (await status(d))["models"]["a/m0"]["open_count"] == 1
    clock.advance(40)  # the period is over; its recovery job is 30 real seconds away
    over = clock.time()

    async def probed() -> bool:
        return bool((await status(d))["models"]["a/m0"]["last_probe"]["at"] >= over)

    await until_async(probed, timeout=3)
    entry = (await status(d))["models"]["a/m0"]
    assert entry["last_probe"]["reason"] == "timeout"
    assert entry["state"] == "open"
    assert entry["open_count"] == 2


async def test_the_end_of_a_credential_block_is_announced_and_probed_when_it_comes(
        fake_openai, start_daemon) -> None:
    """Without scheduled probes, an ended auth block was applied only at the next request or
    status query: provider:credentials ok and the retained MQTT state (unavailable) waited
    for them, and that first client's request was the test of the key."""
    a = await fake_openai()
    b = await fake_openai()
    d = await start_daemon(many_models(a, b, 2, 'kind = "none"\nrecovery_kind = "chat"',
                                       "auth_open_seconds = 0.3"))
    a.push("auth")
    resp = await d.http.post("/v1/chat/completions", json={"model": "default", "messages": HELLO})
    assert resp.headers["x-failoverd-model"] == "b/x"
    assert creds_events(d) == [("auth", "auth")]

    async def announced() -> bool:  # no status query or request in between: they apply it
        return creds_events(d)[-1] == ("ok", "expired") and probes_sent(a) == 1

    await until_async(announced, timeout=3)
    entry = (await status(d))["models"]["a/m0"]
    assert entry["state"] == "closed"
    assert entry["last_probe"]["ok"] is True
    assert d.sup.prober.scheduler.get_job("credentials:a") is None
