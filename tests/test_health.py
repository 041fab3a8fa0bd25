"""The health registry: permits, provider credentials, concurrency, probes, reloads, state."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest

from failoverd import config
from failoverd.breaker import BreakerState
from failoverd.clock import ManualClock
from failoverd.failures import FailureReason
from failoverd.health import HealthRegistry, Permit

R = FailureReason

BASE = """
[providers.a]
kind = "simulated"
[providers.b]
kind = "simulated"
[models."a/one"]
provider = "a"
[models."a/two"]
provider = "a"
max_concurrency = 2
[models."b/one"]
provider = "b"
[breaker]
failure_threshold = 2
open_seconds = 30
max_open_seconds = 600
auth_open_seconds = 3600
billing_open_seconds = 18000
"""


class Rig:
    def __init__(self, text: str = BASE, clock: ManualClock | None = None) -> None:
        self.clock = clock or ManualClock()
        self.transitions: list[tuple[Any, ...]] = []
        self.credentials: list[tuple[Any, ...]] = []
        self.reg = HealthRegistry(
            config.loads(text, env={}), self.clock, random.Random(7),
            on_transition=lambda *a: self.transitions.append(a),
            on_credentials=lambda *a: self.credentials.append(a),
        )

    def permit(self, model_id: str) -> Permit:
        permit = self.reg.acquire(model_id)
        assert permit is not None, f"{model_id} should be admitted"
        return permit

    def fail(self, model_id: str, reason: FailureReason = R.SERVER_ERROR,
             retry_after: float | None = None) -> None:
        self.permit(model_id).failure(reason, retry_after=retry_after)

    def open(self, model_id: str) -> None:
        for _ in range(2):
            self.fail(model_id)
        assert self.reg.model_state(model_id) == "open"


@pytest.fixture
def rig() -> Rig:
    return Rig()


# ------------------------------------------------------------------ permits and breakers


def test_healthy_models_are_available(rig: Rig) -> None:
    for model_id in ("a/one", "a/two", "b/one"):
        assert rig.reg.available(model_id) == (True, None)
        assert rig.reg.model_state(model_id) == "closed"
        assert rig.reg.retry_in(model_id) == 0.0
    assert rig.reg.available("nope") == (False, "unknown")
    assert rig.reg.acquire("nope") is None
    assert rig.reg.model_state("nope") == "unknown"


def test_failures_open_the_breaker_and_refuse_calls(rig: Rig) -> None:
    rig.open("a/one")
    assert rig.reg.available("a/one") == (False, "open")
    assert rig.reg.acquire("a/one") is None
    assert rig.reg.available("a/two") == (True, None)  # same provider, its own breaker
    assert rig.transitions[-1][:3] == ("a/one", BreakerState.CLOSED, BreakerState.OPEN)
    retry_in = rig.reg.retry_in("a/one")
    assert retry_in is not None and 27 <= retry_in <= 33
    assert rig.reg.retry_at("a/one") == round(rig.clock.time() + retry_in, 3)


def test_not_found_opens_for_max_open_seconds(rig: Rig) -> None:
    rig.fail("b/one", R.NOT_FOUND)
    assert rig.reg.model_state("b/one") == "open"
    assert rig.reg.retry_in("b/one") == 600


def test_permit_reports_once_and_tracks_inflight(rig: Rig) -> None:
    permit = rig.permit("a/one")
    assert rig.reg.status()["models"]["a/one"]["inflight"] == 1
    permit.failure(R.SERVER_ERROR)
    permit.failure(R.SERVER_ERROR)  # ignored: one outcome per permit
    permit.success(1.0)
    status = rig.reg.status()["models"]["a/one"]
    assert status["inflight"] == 0
    assert status["consecutive_failures"] == 1
    assert status["latency_p50"] is None


def test_permit_as_context_manager_gives_back_an_unreported_permit(rig: Rig) -> None:
    with rig.permit("a/two"), rig.permit("a/two"):
        assert rig.reg.available("a/two") == (False, "max_concurrency")
    assert rig.reg.available("a/two") == (True, None)
    with rig.permit("a/one") as permit:
        permit.success(0.5)
    assert rig.reg.latency("a/one") == (0.5, 0.5)


def test_permit_duration_defaults_to_elapsed_time(rig: Rig) -> None:
    permit = rig.permit("a/one")
    rig.clock.advance(2.5)
    permit.success()
    assert rig.reg.latency("a/one") == (2.5, 2.5)


def test_latency_percentiles_from_recent_successes(rig: Rig) -> None:
    for i in range(1, 101):
        rig.permit("b/one").success(i / 100)
    rig.fail("b/one")  # failures carry no latency
    assert rig.reg.latency("b/one") == (0.5, 0.95)
    for _ in range(300):  # the ring buffer keeps only recent samples
        rig.permit("b/one").success(2.0)
    assert rig.reg.latency("b/one") == (2.0, 2.0)
    status = rig.reg.status()["models"]["b/one"]
    assert (status["latency_p50"], status["latency_p95"]) == (2.0, 2.0)


def test_max_concurrency_limits_admission(rig: Rig) -> None:
    first, second = rig.permit("a/two"), rig.permit("a/two")
    assert rig.reg.acquire("a/two") is None
    assert rig.reg.available("a/two") == (False, "max_concurrency")
    assert rig.reg.retry_in("a/two") is None  # frees when a call ends, not at a known time
    first.success(0.1)
    third = rig.permit("a/two")
    assert rig.reg.acquire("a/two") is None
    second.release()
    third.failure(R.CANCELLED)
    assert rig.reg.status()["models"]["a/two"]["inflight"] == 0
    # unlimited models are never refused for concurrency
    permits = [rig.permit("a/one") for _ in range(50)]
    assert len(permits) == 50


def test_max_concurrency_refusal_does_not_take_a_half_open_slot(rig: Rig) -> None:
    holders = [rig.permit("a/two"), rig.permit("a/two")]
    for _ in range(2):
        rig.reg.breaker("a/two").record_probe(False)  # type: ignore[union-attr]
    assert rig.reg.model_state("a/two") == "open"
    rig.clock.advance(40)
    for p in holders:
        p.success(0.1)  # stale: admitted before the breaker opened
    assert rig.reg.model_state("a/two") == "half_open"
    trial = rig.permit("a/two")
    trial.success(0.1)
    assert rig.reg.model_state("a/two") == "closed"


def test_ignored_failure_in_half_open_returns_the_permit(rig: Rig) -> None:
    rig.open("b/one")
    rig.clock.advance(40)
    rig.permit("b/one").failure(R.CONTEXT_OVERFLOW)
    assert rig.reg.model_state("b/one") == "half_open"
    assert rig.reg.available("b/one") == (True, None)
    rig.permit("b/one").success(0.2)
    assert rig.reg.model_state("b/one") == "closed"


def test_available_has_no_side_effects(rig: Rig) -> None:
    rig.open("b/one")
    rig.clock.advance(40)
    events = len(rig.transitions)
    assert rig.reg.available("b/one") == (True, None)
    assert len(rig.transitions) == events
    assert rig.reg.breaker("b/one").snapshot()["state"] == "open"  # type: ignore[union-attr]


# ------------------------------------------------------------------ provider credentials


@pytest.mark.parametrize(("reason", "state", "seconds"),
                         [(R.AUTH, "auth", 3600), (R.BILLING, "billing", 18000)])
def test_credential_trouble_blocks_the_whole_provider(
        rig: Rig, reason: FailureReason, state: str, seconds: float) -> None:
    rig.fail("a/one", reason)
    for model_id in ("a/one", "a/two"):
        assert rig.reg.available(model_id) == (False, state)
        assert rig.reg.acquire(model_id) is None
        assert rig.reg.model_state(model_id) == "unavailable"
        assert rig.reg.retry_in(model_id) == seconds
    assert rig.reg.available("b/one") == (True, None)
    # provider trouble is not the model's fault: the breaker itself did not count it
    assert rig.reg.breaker("a/one").state is BreakerState.CLOSED  # type: ignore[union-attr]
    assert rig.reg.breaker("a/one").consecutive_failures == 0  # type: ignore[union-attr]
    assert rig.credentials == [("a", state, str(reason),
                                round(rig.clock.time() + seconds, 3))]
    status = rig.reg.status()["providers"]
    assert status["a"]["credentials"] == state
    assert status["a"]["retry_at"] == round(rig.clock.time() + seconds, 3)
    assert status["b"] == {"credentials": "ok", "since": status["b"]["since"],
                           "retry_at": None}


def test_credential_trouble_expires(rig: Rig) -> None:
    rig.fail("a/one", R.AUTH)
    rig.clock.advance(3599)
    assert rig.reg.acquire("a/two") is None
    rig.clock.advance(1)
    assert rig.reg.available("a/two") == (True, None)
    assert rig.reg.acquire("a/two") is not None
    assert rig.credentials[-1][:3] == ("a", "ok", "expired")


def test_successful_probe_of_any_model_clears_credentials(rig: Rig) -> None:
    rig.fail("a/one", R.BILLING)
    rig.reg.record_probe("a/two", ok=False, latency=0.1, reason=R.TIMEOUT)
    assert rig.reg.model_state("a/one") == "unavailable"
    rig.reg.record_probe("a/two", ok=True, latency=0.2)
    assert rig.reg.available("a/one") == (True, None)
    assert rig.credentials[-1][:3] == ("a", "ok", "probe_succeeded")


def test_reset_clears_the_providers_credentials(rig: Rig) -> None:
    rig.fail("a/one", R.AUTH)
    assert rig.reg.reset("a/two")
    assert rig.reg.available("a/one") == (True, None)
    assert rig.credentials[-1][:3] == ("a", "ok", "reset")
    assert not rig.reg.reset("nope")


def test_longer_credential_block_wins(rig: Rig) -> None:
    first, second = rig.permit("a/one"), rig.permit("a/two")
    first.failure(R.BILLING)
    second.failure(R.AUTH)  # a shorter block does not shorten the billing one
    assert rig.reg.available("a/one") == (False, "billing")
    assert rig.reg.retry_in("a/one") == 18000
    assert len(rig.credentials) == 1


def test_failed_probe_with_auth_blocks_the_provider(rig: Rig) -> None:
    rig.reg.record_probe("b/one", ok=False, latency=0.05, reason=R.AUTH)
    assert rig.reg.available("b/one") == (False, "auth")
    assert rig.reg.status()["models"]["b/one"]["last_probe"] == {
        "at": round(rig.clock.time(), 3), "ok": False, "latency": 0.05, "reason": "auth"}


def test_zero_auth_open_seconds_disables_blocking() -> None:
    rig = Rig(BASE.replace("auth_open_seconds = 3600", "auth_open_seconds = 0"))
    rig.fail("a/one", R.AUTH)
    assert rig.reg.available("a/one") == (True, None)
    assert rig.credentials == []


# ------------------------------------------------------------------ probes and operator


def test_probe_closes_an_open_breaker_whose_period_ended(rig: Rig) -> None:
    rig.open("b/one")
    rig.reg.record_probe("b/one", ok=True, latency=0.3)
    assert rig.reg.model_state("b/one") == "open"  # the period is still running
    rig.clock.advance(40)
    rig.reg.record_probe("b/one", ok=True, latency=0.3)
    assert rig.reg.model_state("b/one") == "closed"
    assert [t[2] for t in rig.transitions] == [
        BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    last = rig.reg.status()["models"]["b/one"]["last_probe"]
    assert last == {"at": round(rig.clock.time(), 3), "ok": True, "latency": 0.3,
                    "reason": None}


def test_failed_probes_count_as_failures(rig: Rig) -> None:
    rig.reg.record_probe("b/one", ok=False, latency=10.0, reason=R.TIMEOUT)
    rig.reg.record_probe("b/one", ok=False, latency=10.0, reason=R.TIMEOUT)
    assert rig.reg.model_state("b/one") == "open"
    assert rig.reg.status()["models"]["b/one"]["reason"] == "timeout"


def test_force_open_and_reset(rig: Rig) -> None:
    assert rig.reg.force_open("a/one", 60)
    assert rig.reg.available("a/one") == (False, "forced_open")
    assert rig.reg.retry_in("a/one") == 60
    assert rig.reg.force_open("a/one", None)
    assert rig.reg.retry_in("a/one") is None
    assert rig.reg.reset("a/one")
    assert rig.reg.model_state("a/one") == "closed"
    assert not rig.reg.force_open("nope", 1)


def test_earliest_available_in(rig: Rig) -> None:
    rig.fail("b/one", R.NOT_FOUND)  # 600 s
    rig.reg.force_open("a/one", 100)
    rig.reg.force_open("a/two", None)
    assert rig.reg.earliest_available_in(["b/one", "a/one", "a/two"]) == 100
    assert rig.reg.earliest_available_in(["b/one", "a/two"]) == 600
    assert rig.reg.earliest_available_in(["a/two", "nope"]) is None
    rig.clock.advance(30)
    assert rig.reg.earliest_available_in(["a/one", "b/one"]) == 70
    rig.reg.reset("b/one")
    assert rig.reg.earliest_available_in(["a/one", "b/one"]) == 0.0


def test_credential_block_dominates_a_shorter_breaker_period(rig: Rig) -> None:
    rig.reg.force_open("a/one", 10)
    rig.fail("a/two", R.AUTH)
    assert rig.reg.retry_in("a/one") == 3600


# ------------------------------------------------------------------ waking queued requests


async def test_wait_for_change_wakes_on_a_breaker_closing(rig: Rig) -> None:
    rig.reg.force_open("a/one", None)
    waiter = asyncio.create_task(rig.reg.wait_for_change())
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiter.done()
    rig.reg.reset("a/one")
    async with asyncio.timeout(5):
        await waiter
    assert rig.reg.available("a/one") == (True, None)


async def test_wait_for_change_wakes_on_a_freed_concurrency_slot(rig: Rig) -> None:
    holders = [rig.permit("a/two"), rig.permit("a/two")]
    waiters = [asyncio.create_task(rig.reg.wait_for_change()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    holders[0].success(0.1)
    async with asyncio.timeout(5):
        await asyncio.gather(*waiters)
    assert rig.reg.acquire("a/two") is not None


async def test_a_change_in_the_turn_the_wait_began_is_not_lost(rig: Rig) -> None:
    # the dispatcher's queue: asyncio.wait_for(wait_for_change(), step) runs the wait as a
    # task, which starts a loop turn later; a change before then must still wake it
    rig.reg.force_open("a/one", None)
    waiter = asyncio.ensure_future(asyncio.wait_for(rig.reg.wait_for_change(), 30))
    rig.reg.reset("a/one")
    async with asyncio.timeout(5):
        await waiter


async def test_wait_for_change_is_bounded_by_the_callers_timeout(rig: Rig) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await rig.reg.wait_for_change()


# ------------------------------------------------------------------ reloads


def test_reconfigure_keeps_state_of_unchanged_models(rig: Rig) -> None:
    rig.open("a/one")
    rig.open("b/one")
    rig.reg.record_probe("a/one", ok=False, latency=1.0, reason=R.TIMEOUT)
    retry_at = rig.reg.retry_at("a/one")
    new_text = (BASE.replace('[models."b/one"]\nprovider = "b"',
                             '[models."b/one"]\nprovider = "b"\nmax_concurrency = 4')
                .replace('[models."a/two"]\nprovider = "a"\nmax_concurrency = 2\n', "")
                + '[models."b/new"]\nprovider = "b"\n')
    rig.reg.reconfigure(config.loads(new_text, env={}))
    assert rig.reg.model_state("a/one") == "open"  # unchanged: kept
    assert rig.reg.retry_at("a/one") == retry_at
    assert rig.reg.status()["models"]["a/one"]["last_probe"]["ok"] is False
    assert rig.reg.model_state("b/one") == "closed"  # its config changed: fresh
    assert rig.reg.model_state("b/new") == "closed"
    assert rig.reg.model_state("a/two") == "unknown"
    assert set(rig.reg.status()["models"]) == {"a/one", "b/one", "b/new"}


def test_reconfigure_applies_new_breaker_keys_to_kept_breakers(rig: Rig) -> None:
    rig.fail("b/one")
    rig.reg.reconfigure(config.loads(BASE.replace("failure_threshold = 2",
                                                  "failure_threshold = 5"), env={}))
    for _ in range(3):
        rig.fail("b/one")
    assert rig.reg.model_state("b/one") == "closed"
    rig.fail("b/one")
    assert rig.reg.model_state("b/one") == "open"


def test_reconfigure_of_a_provider_clears_its_credentials(rig: Rig) -> None:
    rig.fail("a/one", R.AUTH)
    rig.fail("b/one", R.AUTH)
    changed = BASE.replace('[providers.a]\nkind = "simulated"',
                           '[providers.a]\nkind = "simulated"\nsimulate_latency = 0.5')
    rig.reg.reconfigure(config.loads(changed, env={}))
    assert rig.reg.available("a/one") == (True, None)
    assert rig.reg.available("b/one") == (False, "auth")


def test_reconfigure_keeps_inflight_counts(rig: Rig) -> None:
    permit = rig.permit("a/two")
    rig.reg.reconfigure(config.loads(BASE, env={}))
    assert rig.reg.status()["models"]["a/two"]["inflight"] == 1
    permit.success(0.1)
    assert rig.reg.status()["models"]["a/two"]["inflight"] == 0


# ------------------------------------------------------------------ persistence and status


def test_snapshot_restore_across_a_restart(rig: Rig) -> None:
    rig.open("a/one")
    rig.fail("b/one", R.BILLING)
    rig.reg.force_open("a/two", None)
    retry_at = rig.reg.retry_at("a/one")
    saved = orjson.loads(orjson.dumps(rig.reg.snapshot()))
    assert saved["version"] == 1

    later = Rig(clock=ManualClock(start=3.0, wall=rig.clock.time() + 20))
    later.reg.restore(saved)
    assert later.reg.model_state("a/one") == "open"
    assert later.reg.retry_at("a/one") == retry_at
    assert later.reg.model_state("a/two") == "forced_open"
    assert later.reg.available("b/one") == (False, "billing")
    assert later.reg.retry_in("b/one") == pytest.approx(18000 - 20)
    assert later.transitions == [] and later.credentials == []


def test_restore_skips_unknown_and_malformed_entries(rig: Rig) -> None:
    rig.reg.restore({"version": 1,
                     "breakers": {"gone/model": {"state": "open", "since": 1.0},
                                  "a/one": "junk", "b/one": {"state": "bogus"}},
                     "providers": {"a": {"state": "auth"}, "zzz": {"state": "auth"},
                                   "b": {"state": "billing", "until": 1.0}}})
    for model_id in ("a/one", "a/two", "b/one"):
        assert rig.reg.available(model_id) == (True, None)


def test_restore_ignores_another_version(rig: Rig) -> None:
    rig.open("a/one")
    snap = rig.reg.snapshot()
    fresh = Rig()
    fresh.reg.restore({**snap, "version": 99})
    assert fresh.reg.model_state("a/one") == "closed"


def test_status_shape(rig: Rig) -> None:
    rig.permit("a/one").success(0.25)
    status = rig.reg.status()
    entry = status["models"]["a/one"]
    assert entry["state"] == "closed"
    assert entry["breaker_state"] == "closed"
    assert entry["provider"] == "a"
    assert entry["calls_in_window"] == 1
    assert entry["failure_rate"] == 0.0
    assert entry["latency_p50"] == 0.25
    assert entry["last_probe"] is None
    assert entry["inflight"] == 0
    assert {"reason", "since", "retry_at", "consecutive_failures", "open_count"} <= set(entry)
    assert set(status["providers"]) == {"a", "b"}
    orjson.dumps(status)


def test_auth_failure_of_a_model_removed_by_reload_is_harmless() -> None:
    import random as _random

    from failoverd import config as _config
    from failoverd.clock import ManualClock as _Clock
    from failoverd.failures import FailureReason as _Reason
    from failoverd.health import HealthRegistry as _Registry

    text = '[providers.p]\nkind = "simulated"\n[models."p/a"]\nprovider = "p"\n'
    old = _config.loads(text + '[models."p/b"]\nprovider = "p"\n', env={})
    reg = _Registry(old, _Clock(), _random.Random(1))
    permit = reg.acquire("p/b")
    assert permit is not None
    reg.reconfigure(_config.loads(text, env={}))
    permit.failure(_Reason.AUTH)  # the call started before the reload
    assert reg.available("p/a") == (True, None)
