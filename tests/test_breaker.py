"""The breaker state machine, exhaustively, on simulated time."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pytest

from failoverd.breaker import (
    JITTER,
    RETRY_AFTER_CEILING,
    Breaker,
    BreakerState,
)
from failoverd.clock import ManualClock
from failoverd.config import BreakerConfig
from failoverd.failures import FailureReason

R = FailureReason
CLOSED, OPEN, HALF_OPEN, FORCED = (BreakerState.CLOSED, BreakerState.OPEN,
                                   BreakerState.HALF_OPEN, BreakerState.FORCED_OPEN)
SEED = 1234


@dataclass
class Rig:
    breaker: Breaker
    clock: ManualClock
    events: list[tuple[Any, ...]] = field(default_factory=list)

    def fail(self, reason: FailureReason = R.SERVER_ERROR,
             retry_after: float | None = None) -> None:
        ticket = self.breaker.try_acquire()
        assert ticket is not None, "expected the call to be admitted"
        self.breaker.record_failure(ticket, reason, retry_after)

    def ok(self, duration: float = 0.1) -> None:
        ticket = self.breaker.try_acquire()
        assert ticket is not None, "expected the call to be admitted"
        self.breaker.record_success(ticket, duration)

    def open_period(self) -> float:
        retry_in = self.breaker.retry_in()
        assert retry_in is not None
        return retry_in


def rig(seed: int = SEED, **overrides: Any) -> Rig:
    cfg = replace(BreakerConfig(), **overrides)
    clock = ManualClock()
    events: list[tuple[Any, ...]] = []
    breaker = Breaker("p/m", cfg, clock, random.Random(seed),
                      lambda *args: events.append(args))
    return Rig(breaker, clock, events)


def expected_periods(n: int, seed: int = SEED, open_seconds: float = 30.0,
                     cap: float = 600.0) -> list[float]:
    rng = random.Random(seed)
    return [min(open_seconds * 2 ** i * rng.uniform(1 - JITTER, 1 + JITTER), cap)
            for i in range(n)]


def open_it(r: Rig) -> None:
    for _ in range(r.breaker.config.failure_threshold):
        r.fail()
    assert r.breaker.state is OPEN


def to_half_open(r: Rig) -> None:
    r.clock.advance(r.open_period())
    assert r.breaker.state is HALF_OPEN


# ------------------------------------------------------------------ closed → open


def test_new_breaker_is_closed_and_admits() -> None:
    r = rig()
    assert r.breaker.state is CLOSED
    assert r.breaker.can_acquire()
    assert r.breaker.retry_in() == 0.0
    assert r.breaker.retry_at() is None
    assert r.breaker.try_acquire() is not None


def test_opens_on_consecutive_failure_threshold() -> None:
    r = rig(failure_threshold=3)
    r.fail()
    r.fail()
    assert r.breaker.state is CLOSED
    assert r.breaker.consecutive_failures == 2
    r.fail(R.TIMEOUT)
    assert r.breaker.state is OPEN
    assert r.breaker.reason == "timeout"
    assert r.breaker.try_acquire() is None
    assert not r.breaker.can_acquire()


def test_success_resets_consecutive_count() -> None:
    r = rig(failure_threshold=3)
    r.fail()
    r.fail()
    r.ok()
    assert r.breaker.consecutive_failures == 0
    r.fail()
    r.fail()
    assert r.breaker.state is CLOSED


def test_transition_callback_payload() -> None:
    r = rig(failure_threshold=1)
    r.fail(R.OVERLOADED)
    period = expected_periods(1)[0]
    assert r.events == [("p/m", CLOSED, OPEN, "overloaded",
                         round(r.clock.time() + period, 3), 1)]


def test_rate_opens_once_minimum_calls_reached() -> None:
    r = rig(failure_threshold=100, failure_rate=0.5, minimum_calls=4, window=10)
    r.fail()
    r.ok()
    r.fail()
    assert r.breaker.state is CLOSED  # 2/3 failed, but only 3 calls
    r.ok()  # 2/4 = 0.5 reaches the rate
    assert r.breaker.state is OPEN
    assert r.breaker.reason == "failure_rate"


def test_rate_opens_on_the_failure_that_crosses_it() -> None:
    r = rig(failure_threshold=100, failure_rate=0.5, minimum_calls=4, window=10)
    for _ in range(3):
        r.ok()
    r.fail()
    assert r.breaker.state is CLOSED  # 1/4
    r.fail(R.CONNECTION)  # 2/5 = 0.4
    assert r.breaker.state is CLOSED
    r.fail(R.CONNECTION)  # 3/6 = 0.5
    assert r.breaker.state is OPEN
    assert r.breaker.reason == "connection"


def test_below_minimum_calls_never_opens_by_rate() -> None:
    r = rig(failure_threshold=100, failure_rate=0.1, minimum_calls=10, window=60)
    for _ in range(9):
        r.fail()
    assert r.breaker.state is CLOSED
    assert r.breaker.failure_rate() == (1.0, 9)


@pytest.mark.parametrize(("gap", "opens"), [(9.999, True), (10.0, False)])
def test_window_boundary(gap: float, opens: bool) -> None:
    # calls on bucket boundaries (window / 60): the call at t=0 is out exactly 10 s later
    r = rig(failure_threshold=100, failure_rate=0.5, minimum_calls=3, window=10)
    r.fail()
    r.clock.advance(5)
    r.ok()
    r.clock.advance(gap - 5)
    r.fail()  # with the first failure: 2 of 3; without it: 1 of 2 (under minimum_calls)
    assert (r.breaker.state is OPEN) is opens


def test_old_calls_fall_out_of_the_window() -> None:
    r = rig(failure_threshold=100, failure_rate=0.5, minimum_calls=2, window=10)
    r.fail()
    assert r.breaker.failure_rate() == (1.0, 1)
    r.clock.advance(10)
    assert r.breaker.failure_rate() == (0.0, 0)
    r.ok()
    r.ok()
    r.fail()
    assert r.breaker.state is CLOSED  # 1/3
    rate, calls = r.breaker.failure_rate()
    assert rate == pytest.approx(1 / 3)
    assert calls == 3


def test_slow_successes_count_for_the_rate_only() -> None:
    r = rig(failure_threshold=2, failure_rate=0.5, minimum_calls=4, slow_call_seconds=1.0)
    r.fail()
    r.ok(duration=5.0)  # slow: a failure for the rate, but it resets the consecutive count
    assert r.breaker.consecutive_failures == 0
    r.fail()
    assert r.breaker.state is CLOSED
    assert r.breaker.failure_rate() == (1.0, 3)
    r.ok(duration=1.0)  # exactly the limit is not slow: 3/4 failed
    assert r.breaker.state is OPEN


def test_slow_successes_alone_can_open() -> None:
    r = rig(failure_rate=1.0, minimum_calls=3, slow_call_seconds=0.5)
    for _ in range(3):
        r.ok(duration=0.6)
    assert r.breaker.state is OPEN
    assert r.breaker.reason == "slow_calls"


def test_slow_call_counting_off_by_default() -> None:
    r = rig(failure_rate=0.1, minimum_calls=2)
    for _ in range(5):
        r.ok(duration=1000.0)
    assert r.breaker.state is CLOSED
    assert r.breaker.failure_rate() == (0.0, 5)


# ------------------------------------------------------------------ open period and backoff


def test_open_goes_half_open_lazily_at_the_end_of_the_period() -> None:
    r = rig(failure_threshold=1)
    r.fail()
    period = expected_periods(1)[0]
    assert r.open_period() == pytest.approx(period)
    r.clock.advance(period - 0.001)
    assert r.breaker.try_acquire() is None
    r.clock.advance(0.001)
    assert r.breaker.can_acquire()
    assert len(r.events) == 1  # nothing happens until someone asks
    assert r.breaker.try_acquire() is not None
    assert r.breaker.state is HALF_OPEN
    assert r.events[-1] == ("p/m", OPEN, HALF_OPEN, "server_error", None, 1)


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    r = rig(failure_threshold=1, open_seconds=30, max_open_seconds=600)
    periods = []
    r.fail()
    for _ in range(7):
        periods.append(r.open_period())
        to_half_open(r)
        r.fail()  # the trial fails: re-open, longer
    periods.append(r.open_period())
    assert periods == pytest.approx(expected_periods(8))
    for i, p in enumerate(periods[:5]):  # 30, 60, 120, 240, 480 ± 10%
        assert 30 * 2 ** i * 0.9 <= p <= 30 * 2 ** i * 1.1
    assert periods[5:] == [600.0, 600.0, 600.0]
    assert r.breaker.open_count == 8


def test_jitter_depends_on_the_rng() -> None:
    a, b = rig(seed=1, failure_threshold=1), rig(seed=2, failure_threshold=1)
    a.fail()
    b.fail()
    assert a.open_period() != b.open_period()


def test_closing_resets_the_backoff() -> None:
    r = rig(failure_threshold=1)
    r.fail()
    to_half_open(r)
    r.fail()
    assert r.breaker.open_count == 2
    to_half_open(r)
    r.ok()
    assert r.breaker.state is CLOSED
    assert r.breaker.open_count == 0
    r.fail()
    assert r.breaker.open_count == 1
    assert 27 <= r.open_period() <= 33


def test_retry_after_is_a_floor_on_the_open_period() -> None:
    r = rig(failure_threshold=1)
    r.fail(R.RATE_LIMIT, retry_after=100)
    assert r.open_period() == 100
    assert r.breaker.retry_at() == round(r.clock.time() + 100, 3)


def test_short_retry_after_does_not_shorten_the_period() -> None:
    r = rig(failure_threshold=1)
    r.fail(R.RATE_LIMIT, retry_after=1)
    assert r.open_period() == pytest.approx(expected_periods(1)[0])


def test_retry_after_beyond_the_cap_is_honoured_up_to_the_ceiling() -> None:
    r = rig(failure_threshold=1, max_open_seconds=60)
    r.fail(R.RATE_LIMIT, retry_after=900)
    assert r.open_period() == 900
    r2 = rig(failure_threshold=1)
    r2.fail(R.RATE_LIMIT, retry_after=10 * RETRY_AFTER_CEILING)
    assert r2.open_period() == RETRY_AFTER_CEILING


def test_only_the_opening_failures_retry_after_counts() -> None:
    r = rig(failure_threshold=2)
    r.fail(R.RATE_LIMIT, retry_after=500)
    r.fail(R.SERVER_ERROR)
    assert r.open_period() == pytest.approx(expected_periods(1)[0])


def test_late_failure_with_longer_retry_after_extends_the_period() -> None:
    r = rig(failure_threshold=1)
    early = r.breaker.try_acquire()
    assert early is not None
    r.fail()
    r.breaker.record_failure(early, R.RATE_LIMIT, retry_after=200)
    assert r.open_period() == 200
    assert r.breaker.open_count == 1  # extended, not re-opened


def test_not_found_opens_for_max_open_seconds_at_once() -> None:
    r = rig(failure_threshold=5, max_open_seconds=600)
    r.fail(R.NOT_FOUND)
    assert r.breaker.state is OPEN
    assert r.breaker.reason == "not_found"
    assert r.open_period() == 600


def test_not_found_in_half_open_reopens_for_max() -> None:
    r = rig(failure_threshold=1)
    r.fail()
    to_half_open(r)
    r.fail(R.NOT_FOUND)
    assert r.open_period() == 600


# ------------------------------------------------------------------ half-open


def test_half_open_admits_only_half_open_calls() -> None:
    r = rig(failure_threshold=1, half_open_calls=3)
    r.fail()
    to_half_open(r)
    tickets = [r.breaker.try_acquire() for _ in range(5)]
    admitted = [t for t in tickets if t is not None]
    assert len(admitted) == 3
    assert tickets[3:] == [None, None]
    r.breaker.record_success(admitted[0], 0.1)
    assert r.breaker.state is HALF_OPEN
    assert r.breaker.try_acquire() is None  # 1 succeeded + 2 in flight = 3
    r.breaker.release(admitted[1])  # gives the slot back
    replacement = r.breaker.try_acquire()
    assert replacement is not None
    assert r.breaker.try_acquire() is None
    r.breaker.record_success(admitted[2], 0.1)
    assert r.breaker.state is HALF_OPEN
    r.breaker.record_success(replacement, 0.1)
    assert r.breaker.state is CLOSED
    assert r.events[-1][2:4] == (CLOSED, "trial_succeeded")


def test_any_trial_failure_reopens_longer() -> None:
    r = rig(failure_threshold=1, half_open_calls=2)
    r.fail()
    to_half_open(r)
    first, second = r.breaker.try_acquire(), r.breaker.try_acquire()
    assert first is not None and second is not None
    r.breaker.record_success(first, 0.1)
    r.breaker.record_failure(second, R.TIMEOUT)
    assert r.breaker.state is OPEN
    assert r.breaker.open_count == 2
    assert r.open_period() == pytest.approx(expected_periods(2)[1])


def test_closing_clears_window_and_counters() -> None:
    r = rig(failure_threshold=3, minimum_calls=100)
    for _ in range(3):
        r.fail()
    to_half_open(r)
    r.ok()
    assert r.breaker.state is CLOSED
    assert r.breaker.failure_rate() == (0.0, 0)
    assert r.breaker.consecutive_failures == 0
    r.fail()
    r.fail()
    assert r.breaker.state is CLOSED


def test_stale_tickets_do_not_move_the_breaker() -> None:
    r = rig(failure_threshold=1, half_open_calls=1)
    old = r.breaker.try_acquire()
    assert old is not None
    r.fail()
    to_half_open(r)
    trial = r.breaker.try_acquire()
    assert trial is not None
    r.breaker.record_success(old, 0.1)  # admitted while closed: not a trial
    assert r.breaker.state is HALF_OPEN
    r.breaker.release(old)
    assert r.breaker.try_acquire() is None  # the trial still holds the only slot
    r.breaker.record_success(trial, 0.1)
    assert r.breaker.state is CLOSED


def test_results_from_before_a_reset_are_ignored() -> None:
    r = rig(failure_threshold=1)
    before = r.breaker.try_acquire()
    assert before is not None
    r.breaker.reset()
    r.breaker.record_failure(before, R.SERVER_ERROR)
    assert r.breaker.state is CLOSED
    assert r.breaker.failure_rate() == (0.0, 0)


# ------------------------------------------------------------------ reasons that do not count

IGNORED = [R.BAD_REQUEST, R.CONTEXT_OVERFLOW, R.CONTENT_FILTER, R.CANCELLED,
           R.AUTH, R.BILLING]


@pytest.mark.parametrize("reason", IGNORED)
def test_ignored_reasons_never_move_a_closed_breaker(reason: FailureReason) -> None:
    r = rig(failure_threshold=1, minimum_calls=1, failure_rate=0.01)
    for _ in range(20):
        r.fail(reason)
    assert r.breaker.state is CLOSED
    assert r.breaker.consecutive_failures == 0
    assert r.breaker.failure_rate() == (0.0, 0)
    assert r.events == []


@pytest.mark.parametrize("reason", IGNORED)
def test_ignored_reasons_give_back_the_half_open_permit(reason: FailureReason) -> None:
    r = rig(failure_threshold=1, half_open_calls=1)
    r.fail()
    to_half_open(r)
    for _ in range(5):
        r.fail(reason)
        assert r.breaker.state is HALF_OPEN
    r.ok()
    assert r.breaker.state is CLOSED


def test_ignored_reasons_do_not_break_a_run_of_failures() -> None:
    r = rig(failure_threshold=3)
    r.fail()
    r.fail(R.BAD_REQUEST)
    r.fail()
    r.fail(R.CANCELLED)
    assert r.breaker.state is CLOSED
    r.fail()
    assert r.breaker.state is OPEN


# ------------------------------------------------------------------ operator


def test_force_open_for_a_time_then_half_open() -> None:
    r = rig()
    r.breaker.force_open(120)
    assert r.breaker.state is FORCED
    assert r.breaker.reason == "operator"
    assert r.breaker.try_acquire() is None
    assert r.open_period() == 120
    r.breaker.record_probe(True)  # a probe does not overrule the operator
    assert r.breaker.state is FORCED
    r.clock.advance(120)
    assert r.breaker.try_acquire() is not None
    assert r.breaker.state is HALF_OPEN
    assert [e[2] for e in r.events] == [FORCED, HALF_OPEN]


def test_force_open_until_reset() -> None:
    r = rig()
    r.breaker.force_open(None)
    assert r.breaker.retry_in() is None
    assert r.breaker.retry_at() is None
    r.clock.advance(10 ** 7)
    assert r.breaker.try_acquire() is None
    assert r.breaker.state is FORCED
    r.breaker.reset()
    assert r.breaker.state is CLOSED
    assert r.events[-1][1:4] == (FORCED, CLOSED, "reset")


def test_reset_clears_everything() -> None:
    r = rig(failure_threshold=1)
    r.fail()
    to_half_open(r)
    r.fail()
    assert r.breaker.open_count == 2
    r.breaker.reset()
    assert r.breaker.state is CLOSED
    assert r.breaker.open_count == 0
    assert r.breaker.consecutive_failures == 0
    assert r.breaker.failure_rate() == (0.0, 0)
    r.fail()
    assert 27 <= r.open_period() <= 33  # backoff starts over


def test_reset_of_a_closed_breaker_emits_nothing() -> None:
    r = rig()
    r.fail()
    r.breaker.reset()
    assert r.breaker.consecutive_failures == 0
    assert r.events == []


# ------------------------------------------------------------------ probes


def test_probes_count_like_calls_while_closed() -> None:
    r = rig(failure_threshold=2)
    r.breaker.record_probe(False, R.CONNECTION)
    r.breaker.record_probe(True)
    r.breaker.record_probe(False, R.CONNECTION)
    assert r.breaker.state is CLOSED
    r.breaker.record_probe(False)
    assert r.breaker.state is OPEN
    assert r.breaker.reason == "probe_failed"


def test_successful_probe_does_not_cut_a_running_open_period() -> None:
    r = rig(failure_threshold=1)
    r.fail()
    r.clock.advance(1)
    r.breaker.record_probe(True)
    assert r.breaker.state is OPEN


def test_recovery_probe_closes_when_the_period_ends() -> None:
    r = rig(failure_threshold=1)
    r.fail()
    r.clock.advance(r.open_period())
    r.breaker.record_probe(True)
    assert r.breaker.state is CLOSED
    assert r.events[-2][2] is HALF_OPEN
    assert r.events[-1][2:4] == (CLOSED, "probe_succeeded")


def test_failed_recovery_probe_reopens_longer() -> None:
    r = rig(failure_threshold=1)
    r.fail()
    r.clock.advance(r.open_period())
    r.breaker.record_probe(False, R.TIMEOUT)
    assert r.breaker.state is OPEN
    assert r.breaker.open_count == 2
    assert r.open_period() == pytest.approx(expected_periods(2)[1])


def test_probe_closes_half_open_and_outstanding_trials_go_stale() -> None:
    r = rig(failure_threshold=1)
    r.fail()
    to_half_open(r)
    trial = r.breaker.try_acquire()
    assert trial is not None
    r.breaker.record_probe(True)
    assert r.breaker.state is CLOSED
    r.breaker.record_failure(trial, R.SERVER_ERROR)
    assert r.breaker.consecutive_failures == 0


def test_ignored_probe_failure_does_nothing() -> None:
    r = rig(failure_threshold=1)
    r.breaker.record_probe(False, R.BAD_REQUEST)
    assert r.breaker.state is CLOSED


# ------------------------------------------------------------------ status and persistence


def test_status_fields() -> None:
    r = rig(failure_threshold=2, minimum_calls=100)
    r.ok()
    r.fail()
    status = r.breaker.status()
    assert status == {
        "state": "closed", "reason": None, "since": pytest.approx(r.clock.time()),
        "retry_at": None, "consecutive_failures": 1, "failure_rate": 0.5,
        "calls_in_window": 2, "open_count": 0,
    }
    r.clock.advance(3)
    r.fail(R.RATE_LIMIT, retry_after=100)
    status = r.breaker.status()
    assert status["state"] == "open"
    assert status["reason"] == "rate_limit"
    assert status["since"] == round(r.clock.time(), 3)
    assert status["retry_at"] == round(r.clock.time() + 100, 3)
    assert status["open_count"] == 1
    orjson.dumps(status)


def restarted(r: Rig, later: float) -> Rig:
    """A new process: another monotonic origin, the wall clock `later` seconds on."""
    clock = ManualClock(start=7.0, wall=r.clock.time() + later)
    events: list[tuple[Any, ...]] = []
    breaker = Breaker("p/m", r.breaker.config, clock, random.Random(SEED),
                      lambda *a: events.append(a))
    assert breaker.restore(orjson.loads(orjson.dumps(r.breaker.snapshot())))
    return Rig(breaker, clock, events)


def test_open_breaker_stays_open_across_a_restart() -> None:
    r = rig(failure_threshold=1)
    r.fail(R.RATE_LIMIT, retry_after=300)
    retry_at = r.breaker.retry_at()
    r2 = restarted(r, later=100)
    assert r2.breaker.state is OPEN
    assert r2.breaker.reason == "rate_limit"
    assert r2.breaker.open_count == 1
    assert r2.breaker.retry_at() == retry_at
    assert r2.open_period() == pytest.approx(200)
    r2.clock.advance(199.9)
    assert r2.breaker.try_acquire() is None
    r2.clock.advance(0.1)
    trial = r2.breaker.try_acquire()
    assert trial is not None
    assert r2.breaker.state is HALF_OPEN
    r2.breaker.record_failure(trial, R.SERVER_ERROR)  # the next period continues the backoff
    assert r2.breaker.open_count == 2
    assert r2.events[0][1:3] == (OPEN, HALF_OPEN)  # restore itself emitted nothing


def test_expired_open_period_restores_as_due() -> None:
    r = rig(failure_threshold=1)
    r.fail()
    r2 = restarted(r, later=10_000)
    assert r2.breaker.retry_in() == 0.0
    assert r2.breaker.try_acquire() is not None
    assert r2.breaker.state is HALF_OPEN


def test_half_open_restores_as_open_and_due() -> None:
    r = rig(failure_threshold=1, half_open_calls=1)
    r.fail()
    to_half_open(r)
    assert r.breaker.try_acquire() is not None  # the trial dies with the process
    r2 = restarted(r, later=1)
    assert r2.breaker.state is HALF_OPEN
    assert r2.breaker.try_acquire() is not None


def test_forced_open_until_reset_survives_a_restart() -> None:
    r = rig()
    r.breaker.force_open(None)
    r2 = restarted(r, later=10 ** 6)
    assert r2.breaker.state is FORCED
    assert r2.breaker.try_acquire() is None


def test_closed_snapshot_restores_closed() -> None:
    r = rig()
    r.fail()
    r2 = restarted(r, later=5)
    assert r2.breaker.state is CLOSED
    assert r2.breaker.consecutive_failures == 1
    assert r2.breaker.status()["since"] == pytest.approx(r.breaker.status()["since"])


@pytest.mark.parametrize("bad", [
    {}, {"state": "melted", "since": 1.0}, {"state": "open", "since": "yesterday"},
    {"state": "open", "since": 1.0, "open_until": [1]},
])
def test_unusable_snapshot_is_refused(bad: dict[str, Any],
                                      caplog: pytest.LogCaptureFixture) -> None:
    r = rig(failure_threshold=1)
    r.fail()
    before = r.breaker.snapshot()
    with caplog.at_level(logging.WARNING, "failoverd.breaker"):
        assert not r.breaker.restore(bad)
    assert r.breaker.snapshot() == before
    assert "unusable breaker state" in caplog.text


def test_a_failing_callback_does_not_break_the_breaker(
        caplog: pytest.LogCaptureFixture) -> None:
    def boom(*args: Any) -> None:
        raise RuntimeError("listener bug")

    breaker = Breaker("p/m", replace(BreakerConfig(), failure_threshold=1), ManualClock(),
                      random.Random(1), boom)
    ticket = breaker.try_acquire()
    assert ticket is not None
    with caplog.at_level(logging.ERROR, "failoverd.breaker"):
        breaker.record_failure(ticket, R.SERVER_ERROR)
    assert breaker.state is OPEN
    assert "transition callback failed" in caplog.text


def test_reconfigure_keeps_state_and_applies_new_values() -> None:
    r = rig(failure_threshold=3)
    r.fail()
    r.breaker.config = replace(r.breaker.config, failure_threshold=2)
    r.fail()
    assert r.breaker.state is OPEN
