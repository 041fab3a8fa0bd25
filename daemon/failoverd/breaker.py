"""The per-model circuit breaker: a pure state machine on an injected clock.

Semantics follow resilience4j's CircuitBreaker with DESIGN.md's ``[breaker]`` keys::

    CLOSED ──(failure_threshold consecutive failures, or failure_rate over `window`
             once it holds minimum_calls calls, or not_found)──▶ OPEN
    OPEN ──(open period over; applied lazily on the next query)──▶ HALF_OPEN
    HALF_OPEN ──(half_open_calls trial successes, or a successful probe)──▶ CLOSED
    HALF_OPEN ──(any counted trial failure)──▶ OPEN, with a longer period
    any ──force_open()──▶ FORCED_OPEN ──(its time over)──▶ HALF_OPEN
    any ──reset()──▶ CLOSED

Choices where resilience4j or DESIGN.md leave room:

- The thresholds are checked after every recorded call while closed, successes included (as
  resilience4j does): a success can complete ``minimum_calls`` on a window already failing
  enough. Reasons that do not count neither add to nor reset the consecutive-failure run.
- A call is placed in the sliding window at the time its outcome is recorded. The window is
  resilience4j's time-based one (``window.SlidingWindow``): 60 buckets of ``window / 60``
  seconds each, so a call counts for between 59/60 of ``window`` and ``window`` seconds, and a
  model at thousands of calls a second holds 60 counters, not one entry per call.
- Slow calls (``slow_call_seconds > 0`` and a success strictly slower than it) count as failures
  for the failure *rate* only; a slow success still resets the consecutive-failure count, because
  the model did answer. Half-open trials judge success only, never speed.
- Open period for the n-th consecutive opening: ``open_seconds * 2**(n-1)``, multiplied by a
  uniform jitter factor in ``[1 - JITTER, 1 + JITTER]`` (so models that failed together do not
  all come back in the same instant), then capped at ``max_open_seconds``. The opening failure's
  Retry-After is a floor on top of that and may exceed the cap (calling earlier would only earn
  another 429); it is bounded by RETRY_AFTER_CEILING against absurd headers. not_found opens
  for exactly ``max_open_seconds``.
- Closing resets the re-open count, so backoff starts over after a recovery.
- Outcomes carry the ticket ``try_acquire()`` returned; a ticket from an earlier state (a call
  admitted before the breaker opened, or before a reset) does not move the breaker. The one
  exception: a late counted failure with a Retry-After longer than the current open period
  extends that period, reported as OPEN → OPEN with the new retry_at (and the same open_count)
  so that events, MQTT state, the state file and the recovery probe follow it.
- Probes are trials without a ticket: see ``record_probe``.
- Timestamps in ``status()`` and ``snapshot()`` are wall-clock epoch seconds (floats), so they
  survive restarts and need no parsing in scripts.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable, Mapping
from typing import Any

from failoverd.clock import Clock
from failoverd.config import BreakerConfig
from failoverd.failures import POLICY, BreakerEffect, FailureReason
from failoverd.window import SlidingWindow

logger = logging.getLogger(__name__)

JITTER = 0.1
RETRY_AFTER_CEILING = 86400.0

# Reasons for transitions that are not upstream failures.
REASON_OPERATOR = "operator"
REASON_RESET = "reset"
REASON_TRIAL_OK = "trial_succeeded"
REASON_PROBE_OK = "probe_succeeded"
REASON_PROBE_FAILED = "probe_failed"
REASON_SLOW = "slow_calls"
REASON_RATE = "failure_rate"


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"


TransitionCallback = Callable[
    [str, BreakerState, BreakerState, "str | None", "float | None", int], None
]
"""``(model_id, old, new, reason, retry_at_wall, open_count)``"""


class Breaker:
    """One model's circuit breaker. Not thread-safe; lives on the event loop."""

    __slots__ = (
        "model_id", "_cfg", "_clock", "_rng", "_on_transition", "_state", "_reason", "_since",
        "_open_until", "_open_count", "_consecutive", "_window", "_epoch",
        "_trials", "_trial_successes",
    )

    def __init__(
        self,
        model_id: str,
        config: BreakerConfig,
        clock: Clock,
        rng: random.Random,
        on_transition: TransitionCallback | None = None,
    ) -> None:
        self.model_id = model_id
        self._cfg = config
        self._clock = clock
        self._rng = rng
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._reason: str | None = None
        self._since = clock.monotonic()
        self._open_until: float | None = None  # monotonic; None while forced open = until reset
        self._open_count = 0
        self._consecutive = 0
        self._window = SlidingWindow(config.window)
        self._epoch = 0  # bumped on every transition; tickets from older epochs are stale
        self._trials = 0  # half-open permits out
        self._trial_successes = 0

    # ------------------------------------------------------------------ queries

    @property
    def config(self) -> BreakerConfig:
        return self._cfg

    @config.setter
    def config(self, config: BreakerConfig) -> None:
        """A reload with new [breaker] keys keeps the state; new values apply from now on."""
        self._cfg = config
        self._window.resize(config.window)

    @property
    def state(self) -> BreakerState:
        """The current state, applying a due OPEN → HALF_OPEN transition first."""
        self._tick()
        return self._state

    @property
    def reason(self) -> str | None:
        return self._reason

    @property
    def open_count(self) -> int:
        return self._open_count

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    def can_acquire(self) -> bool:
        """Whether ``try_acquire()`` would admit a call now; changes nothing."""
        state = self._state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            return self._trials + self._trial_successes < self._cfg.half_open_calls
        return self._open_until is not None and self._clock.monotonic() >= self._open_until

    def retry_in(self) -> float | None:
        """Seconds until a call may be tried: 0 when admitted now, None when no time is known
        (forced open until reset, or every half-open trial slot taken)."""
        if self.can_acquire():
            return 0.0
        if self._state is BreakerState.HALF_OPEN or self._open_until is None:
            return None
        return max(0.0, self._open_until - self._clock.monotonic())

    def retry_at(self) -> float | None:
        """Wall-clock epoch time at which the open period ends; None when not timed."""
        if self._state in (BreakerState.OPEN, BreakerState.FORCED_OPEN):
            return self._wall(self._open_until)
        return None

    def failure_rate(self) -> tuple[float, int]:
        """(failure rate, calls) over the sliding window; slow calls count as failures."""
        window = self._window
        window.evict(self._clock.monotonic())
        calls = window.calls
        return (window.failures / calls if calls else 0.0), calls

    def status(self) -> dict[str, Any]:
        """JSON-able status for GET /v1/status; times are wall-clock epoch seconds."""
        state = self.state
        rate, calls = self.failure_rate()
        return {
            "state": str(state),
            "reason": self._reason,
            "since": self._wall(self._since),
            "retry_at": self.retry_at(),
            "consecutive_failures": self._consecutive,
            "failure_rate": round(rate, 4),
            "calls_in_window": calls,
            "open_count": self._open_count,
        }

    # ------------------------------------------------------------------ the request path

    def try_acquire(self) -> int | None:
        """Admits a call: returns its ticket, or None when refused (open, or trials busy)."""
        self._tick()
        state = self._state
        if state is BreakerState.CLOSED:
            return self._epoch
        if state is BreakerState.HALF_OPEN and (
            self._trials + self._trial_successes < self._cfg.half_open_calls
        ):
            self._trials += 1
            return self._epoch
        return None

    def record_success(self, ticket: int, duration: float = 0.0) -> None:
        """The call admitted with `ticket` succeeded after `duration` seconds."""
        if ticket != self._epoch:
            return
        if self._state is BreakerState.CLOSED:
            slow = 0 < self._cfg.slow_call_seconds < duration
            self._consecutive = 0
            self._add(slow)
            # resilience4j checks the rate after every call: a success can complete
            # minimum_calls on a window that is already failing enough
            self._check_rate(REASON_SLOW if slow else REASON_RATE)
        elif self._state is BreakerState.HALF_OPEN:
            self._trials -= 1
            self._trial_successes += 1
            if self._trial_successes >= self._cfg.half_open_calls:
                self._close(REASON_TRIAL_OK)

    def record_failure(
        self, ticket: int, reason: FailureReason, retry_after: float | None = None
    ) -> None:
        """The call admitted with `ticket` failed with `reason`.

        Reasons the policy table does not count against the model (and provider-scoped ones,
        which the health registry handles) only give back a half-open permit.
        """
        effect = POLICY[reason].breaker
        if effect is BreakerEffect.COUNT:
            if ticket != self._epoch:
                self._extend(retry_after)
            else:
                self._count_failure(str(reason), retry_after)
        elif effect is BreakerEffect.OPEN_MODEL_MAX:
            if ticket == self._epoch and self._state is not BreakerState.FORCED_OPEN:
                self._open(str(reason), None, maximum=True)
        else:
            self.release(ticket)

    def release(self, ticket: int) -> None:
        """Gives back a permit whose outcome says nothing about the model (bad_request, ...)."""
        if ticket == self._epoch and self._state is BreakerState.HALF_OPEN:
            self._trials -= 1

    def record_probe(
        self,
        ok: bool,
        reason: FailureReason | None = None,
        retry_after: float | None = None,
        *,
        operator: bool = False,
    ) -> None:
        """A probe's outcome; probes bypass ``try_acquire``.

        While closed, a probe counts like a call. A successful probe closes a half-open breaker
        or an open one whose period has ended (the recovery probe); a scheduled probe never
        shortens a running open period, but one the operator asked for (`operator`) does: they
        are asking "is it back?" and the answer is yes. Nothing lifts a forced open but its
        time or a reset. A failed probe at the end of a period re-opens with the next, longer
        period. `reason` None with ok False counts as a plain failure.
        """
        self._tick()
        effect = POLICY[reason].breaker if reason is not None else BreakerEffect.COUNT
        label = str(reason) if reason is not None else REASON_PROBE_FAILED
        state = self._state
        if state is BreakerState.FORCED_OPEN:
            return
        if ok:
            if state is BreakerState.CLOSED:
                self._consecutive = 0
                self._add(False)
            elif state is BreakerState.HALF_OPEN:
                self._close(REASON_PROBE_OK)
            elif operator or self._due():
                self._close(REASON_PROBE_OK)
            return
        if effect is BreakerEffect.OPEN_MODEL_MAX:
            self._open(label, None, maximum=True)
        elif effect is not BreakerEffect.COUNT:
            return
        elif state is BreakerState.CLOSED:
            self._count_failure(label, retry_after)
        elif state is BreakerState.HALF_OPEN or self._due():
            self._open(label, retry_after)
        else:
            self._extend(retry_after)

    # ------------------------------------------------------------------ operator

    def force_open(self, seconds: float | None = None) -> None:
        """Takes the model out for `seconds` (None: until ``reset()``)."""
        until = None if seconds is None else self._clock.monotonic() + max(0.0, seconds)
        self._transition(BreakerState.FORCED_OPEN, REASON_OPERATOR, until)

    def reset(self) -> None:
        """Back to CLOSED with clean counters, whatever the state."""
        self._close(REASON_RESET)

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state with wall-clock times, for the state file."""
        return {
            "state": str(self._state),
            "reason": self._reason,
            "since": self._wall(self._since),
            "open_until": self._wall(self._open_until),
            "open_count": self._open_count,
            "consecutive_failures": self._consecutive,
        }

    def restore(self, data: Mapping[str, Any], saved_at: float | None = None) -> bool:
        """Loads a ``snapshot()`` taken by an earlier process; fires no transition callback.

        An open breaker stays open until its (wall-clock) time; a half-open one comes back open
        with its period over, since its trial calls died with the old process. `saved_at` (the
        wall time the snapshot was taken) bounds a wall clock that is behind now: a machine
        without a real-time clock, started before NTP, would otherwise keep a model out for
        the clock's error on top of its period (years, from 1970). Returns False (and changes
        nothing) when the snapshot is unusable.
        """
        try:
            state = BreakerState(data["state"])
            reason = data.get("reason")
            since = float(data["since"])
            until_wall = data.get("open_until")
            until = None if until_wall is None else float(until_wall)
            open_count = int(data.get("open_count", 0))
            consecutive = int(data.get("consecutive_failures", 0))
            if reason is not None and not isinstance(reason, str):
                raise TypeError("reason must be a string")
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("ignoring unusable breaker state for %s: %s", self.model_id, exc)
            return False
        mono, wall = self._clock.monotonic(), self._clock.time()
        if saved_at is not None:
            wall = max(wall, saved_at)  # not before the snapshot was taken
        self._epoch += 1
        self._trials = self._trial_successes = 0
        self._window.clear()
        if state is BreakerState.CLOSED:
            self._state, self._reason, self._open_until = state, reason, None
            self._open_count = 0
            self._consecutive = max(0, consecutive)
        else:
            if state is BreakerState.HALF_OPEN:
                state, until = BreakerState.OPEN, wall
            elif state is BreakerState.OPEN and until is None:
                until = wall
            self._state, self._reason = state, reason
            self._open_until = None if until is None else mono + (until - wall)
            self._open_count = max(0, open_count)
            self._consecutive = max(0, consecutive)
        self._since = mono + (since - wall)
        return True

    # ------------------------------------------------------------------ internals

    def _wall(self, mono: float | None) -> float | None:
        if mono is None:
            return None
        return round(self._clock.time() + (mono - self._clock.monotonic()), 3)

    def _due(self) -> bool:
        return self._open_until is not None and self._clock.monotonic() >= self._open_until

    def _tick(self) -> None:
        if self._state in (BreakerState.OPEN, BreakerState.FORCED_OPEN) and self._due():
            self._transition(BreakerState.HALF_OPEN, self._reason, None)

    def _add(self, failed: bool) -> None:
        self._window.add(self._clock.monotonic(), failed)

    def _count_failure(self, reason: str, retry_after: float | None) -> None:
        if self._state is BreakerState.CLOSED:
            self._consecutive += 1
            self._add(True)
            if self._consecutive >= self._cfg.failure_threshold:
                self._open(reason, retry_after)
            else:
                self._check_rate(reason, retry_after)
        elif self._state is BreakerState.HALF_OPEN:
            self._open(reason, retry_after)

    def _check_rate(self, reason: str, retry_after: float | None = None) -> None:
        calls = self._window.calls
        if calls >= self._cfg.minimum_calls and (
            self._window.failures >= self._cfg.failure_rate * calls
        ):
            self._open(reason, retry_after)

    def _period(self) -> float:
        cfg = self._cfg
        # the exponent is bounded so a long-flapping model cannot overflow the float
        base = cfg.open_seconds * 2.0 ** min(self._open_count - 1, 64)
        return min(base * self._rng.uniform(1 - JITTER, 1 + JITTER), cfg.max_open_seconds)

    def _open(self, reason: str, retry_after: float | None, *, maximum: bool = False) -> None:
        self._open_count += 1
        period = self._cfg.max_open_seconds if maximum else self._period()
        if retry_after is not None and retry_after > 0:
            period = max(period, min(retry_after, RETRY_AFTER_CEILING))
        self._transition(BreakerState.OPEN, reason, self._clock.monotonic() + period)

    def _extend(self, retry_after: float | None) -> None:
        if self._state is not BreakerState.OPEN or not retry_after or retry_after <= 0:
            return
        until = self._clock.monotonic() + min(retry_after, RETRY_AFTER_CEILING)
        if self._open_until is not None and until > self._open_until:
            self._open_until = until
            logger.info("breaker %s: open period extended by a Retry-After of %.1fs",
                        self.model_id, retry_after)
            self._notify(BreakerState.OPEN, BreakerState.OPEN, self._reason, self._wall(until))

    def _close(self, reason: str) -> None:
        self._open_count = 0
        self._consecutive = 0
        self._window.clear()
        self._transition(BreakerState.CLOSED, reason, None)

    def _transition(self, new: BreakerState, reason: str | None, until: float | None) -> None:
        old = self._state
        self._state = new
        self._reason = reason
        self._since = self._clock.monotonic()
        self._open_until = until
        self._epoch += 1
        self._trials = 0
        self._trial_successes = 0
        retry_at = self._wall(until)
        if old is new is BreakerState.CLOSED:
            # a reset of a closed breaker: counters cleared, no state changed
            logger.info("breaker %s: reset (was closed; counters cleared)", self.model_id)
            return
        logger.info("breaker %s: %s -> %s (reason=%s, open_count=%d, retry_at=%s)",
                    self.model_id, old, new, reason, self._open_count, retry_at)
        self._notify(old, new, reason, retry_at)

    def _notify(self, old: BreakerState, new: BreakerState, reason: str | None,
                retry_at: float | None) -> None:
        if self._on_transition is None:
            return
        try:
            self._on_transition(self.model_id, old, new, reason, retry_at, self._open_count)
        except Exception:
            # a broken listener must not leave the breaker half-updated or fail the request
            logger.exception("breaker %s: transition callback failed", self.model_id)

