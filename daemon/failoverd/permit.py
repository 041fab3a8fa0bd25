"""A permit: the admission of one upstream call to a model, which reports its one outcome
(success, a failure and its reason, or no outcome at all) back to the health registry."""

from __future__ import annotations

from typing import Protocol

from failoverd.breaker import Breaker
from failoverd.clock import Clock
from failoverd.failures import POLICY, BreakerEffect, FailureReason
from failoverd.quota import Quotas

__all__ = ["Permit", "Registry"]


class Registry(Protocol):
    """What a permit reports to (health.HealthRegistry)."""

    clock: Clock
    quotas: Quotas

    def current(self, breaker: Breaker) -> bool: ...

    def finished(self, model_id: str, latency: float | None) -> None: ...

    def block_provider_of(self, model_id: str, effect: BreakerEffect, reason: str) -> None: ...


class Permit:
    """Admission of one upstream call; report exactly one outcome (later ones are ignored).

    Used as a context manager it gives the permit back if no outcome was reported.
    """

    __slots__ = ("_registry", "_breaker", "model_id", "_ticket", "_started", "_done",
                 "counted")

    def __init__(self, registry: Registry, breaker: Breaker, ticket: int) -> None:
        self._registry = registry
        self._breaker = breaker
        self.model_id = breaker.model_id
        self._ticket = ticket
        self._started = registry.clock.monotonic()
        self._done = False
        self.counted = False  # the call was counted against the model's max_rpm

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _elapsed(self, duration: float | None) -> float:
        return self._registry.clock.monotonic() - self._started if duration is None else duration

    def success(self, duration: float | None = None) -> None:
        """The call succeeded; `duration` defaults to the time since admission."""
        if self._done:
            return
        self._done = True
        elapsed = self._elapsed(duration)
        self._breaker.record_success(self._ticket, elapsed)
        current = self._registry.current(self._breaker)
        self._registry.finished(self.model_id, latency=elapsed if current else None)

    def failure(self, reason: FailureReason, duration: float | None = None,
                retry_after: float | None = None) -> None:
        """The call failed with `reason` (the policy table decides what that means)."""
        if self._done:
            return
        self._done = True
        effect = POLICY[reason].breaker
        if effect in (BreakerEffect.OPEN_PROVIDER_AUTH, BreakerEffect.OPEN_PROVIDER_BILLING):
            self._breaker.release(self._ticket)
            # a call made with settings a reload replaced (an old API key, URL) says nothing
            # about the new ones: its breaker was replaced along with them
            if self._registry.current(self._breaker):
                self._registry.block_provider_of(self.model_id, effect, str(reason))
        else:
            self._breaker.record_failure(self._ticket, reason, retry_after)
        self._registry.finished(self.model_id, latency=None)

    def release(self, *, called: bool = True) -> None:
        """Gives the permit back without an outcome (cancelled, or never called). `called`
        False: no upstream call was made (the adapter could not express the request), so
        it takes no slot of the model's max_rpm either."""
        if self._done:
            return
        self._done = True
        self._breaker.release(self._ticket)
        if not called and self.counted:
            self._registry.quotas.uncount(self.model_id, self._started)
        self._registry.finished(self.model_id, latency=None)
