"""The health registry: every model's breaker, provider credential state, latency, probes.

The router asks ``available()`` / ``acquire()`` before calling a model and reports the outcome
on the Permit it got; the prober reports through ``record_probe()``; the API reads
``status()`` and drives ``reset()`` / ``force_open()``. Provider-scoped trouble (auth, billing)
lives here, not in the breakers: it blocks every model of the provider for
``auth_open_seconds`` / ``billing_open_seconds`` and is cleared by a successful probe of any
of the provider's models, by an operator reset of one of them, or when its time is over.

Queue mode: a request that found every candidate unavailable waits in
``async with asyncio.timeout(min(earliest_available_in(ids) or remaining, remaining)):
await registry.wait_for_change()``. Breakers open → half-open lazily (on the next query), so
the timeout is what wakes the waiter when a period ends; ``wait_for_change`` returns early on
anything else that may free a model (a breaker closing or going half-open, credentials
cleared, a permit given back, a reset or reload, an upstream's rate-limit headers telling of
budget again: upstreamlimits' ``wake``, set only while someone waits).

``snapshot()`` / ``restore()`` carry the breakers and credential blocks across restarts; what
the state file holds of them, and which entries a restart drops, is ``healthstate.py``'s.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from failoverd import healthstate
from failoverd.breaker import Breaker, BreakerState, TransitionCallback
from failoverd.budget import Budgets, Reached, caps_of
from failoverd.clock import Clock
from failoverd.config import Config, ModelConfig
from failoverd.failures import POLICY, BreakerEffect, FailureReason
from failoverd.permit import Permit
from failoverd.quota import Quotas
from failoverd.upstreamlimits import UpstreamLimits

__all__ = ["HealthRegistry", "Permit", "ProbeResult"]

logger = logging.getLogger(__name__)

LATENCY_SAMPLES = 256

CredentialCallback = Callable[[str, str, "str | None", "float | None"], None]
"""``(provider, state "ok"|"auth"|"billing", reason, retry_at_wall)``"""


@dataclass(slots=True)
class _Credentials:
    state: str = "ok"  # ok | auth | billing
    since: float = 0.0  # monotonic
    until: float = 0.0  # monotonic; meaningful while state != "ok"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The last probe of a model."""

    at: float  # wall-clock epoch seconds
    ok: bool
    latency: float
    reason: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "ok": self.ok, "latency": round(self.latency, 4),
                "reason": self.reason}


class HealthRegistry:
    """Health of every configured model and provider."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        rng: random.Random,
        on_transition: TransitionCallback | None = None,
        on_credentials: CredentialCallback | None = None,
    ) -> None:
        self.clock = clock
        self._rng = rng
        self._on_transition = on_transition
        self._on_credentials = on_credentials
        self._config = config
        self._breakers: dict[str, Breaker] = {}
        self._inflight: dict[str, int] = {}
        self.quotas = Quotas()  # max_rpm and max_tpm
        # what the upstreams' rate-limit headers said (the adapters read them into it)
        self.upstream = UpstreamLimits(clock)
        self._former_providers: dict[str, str] = {}  # model id -> provider, of models removed
        self.budgets = Budgets()  # max_cost_per_day and max_cost_per_month
        self.budgets.configure(caps_of(config))
        # told of every cap the spending reaches (once per period); the service's events
        self.on_budget_reached: Callable[[Reached], None] | None = None
        self._latency: dict[str, deque[float]] = {}
        self._probes: dict[str, ProbeResult] = {}
        self._credentials: dict[str, _Credentials] = {}
        self._changed: asyncio.Event | None = None
        self._waiting = 0  # the requests waiting on _changed (wait_for_change)
        # told of every credential state change as (provider, state); the prober's hook
        self.on_credentials_change: list[Callable[[str, str], None]] = []
        # the state file's salt and the fingerprints of the settings under it
        self._fingerprints = healthstate.Fingerprints()
        for model in config.models.values():
            self._add_model(model)
        for name in config.providers:
            self._credentials[name] = _Credentials(since=clock.monotonic())

    # ------------------------------------------------------------------ setup

    def _add_model(self, model: ModelConfig) -> None:
        def on_transition(model_id: str, old: BreakerState, new: BreakerState,
                          reason: str | None, retry_at: float | None, open_count: int) -> None:
            if not self.current(breaker):
                # a call admitted before a reload replaced (or removed) this breaker ended:
                # the model's breaker now is another one, whose state is the one to announce
                logger.info("breaker %s: %s -> %s under settings a reload replaced: not "
                            "announced", model_id, old, new)
                return
            self._transition(model_id, old, new, reason, retry_at, open_count)

        breaker = Breaker(model.id, self._config.breaker, self.clock, self._rng, on_transition)
        self._breakers[model.id] = breaker
        self._inflight.setdefault(model.id, 0)
        self._latency[model.id] = deque(maxlen=LATENCY_SAMPLES)
        self.quotas.configure(model)  # its minute counts against new limits too
        # a new key, URL or switch may be another account's budget: told again by the next
        # answer
        self.upstream.forget(model.id)
        self._probes.pop(model.id, None)

    def current(self, breaker: Breaker) -> bool:
        """Whether `breaker` is its model's breaker now (a reload that changed the model or
        its provider, or removed it, replaced it: calls admitted before keep the old one)."""
        return self._breakers.get(breaker.model_id) is breaker

    def reconfigure(self, config: Config) -> None:
        """Applies a reloaded config: state survives for models (and providers) unchanged.

        A model or provider whose settings changed starts fresh; the state it leaves (an open
        breaker, an auth or billing block) is announced as ended, reason "reconfigured", so
        event and hook consumers see it end as MQTT and /v1/status do.
        """
        old = self._config
        self._config = config
        lifted: list[str] = []
        for name in list(self._credentials):
            if old.providers.get(name) != config.providers.get(name):
                # a new key or URL deserves a fresh chance
                if name in config.providers and self._blocked(name, apply=False):
                    lifted.append(name)
                del self._credentials[name]
        for name in config.providers:
            self._credentials.setdefault(name, _Credentials(since=self.clock.monotonic()))
        for model_id in list(self._breakers):
            if model_id not in config.models:
                # its calls still running cost what they cost, to its provider's caps too
                self._former_providers[model_id] = old.models[model_id].provider
                del self._breakers[model_id], self._latency[model_id]
                if not self._inflight.get(model_id):
                    self._inflight.pop(model_id, None)
                # else its calls still running keep their count (dropped once they end): a
                # model added back before they end has them against its max_concurrency, and
                # their ends must not take slots from the calls made after
                self._probes.pop(model_id, None)
                self.upstream.forget(model_id)
        # a removed model's minute stays until it ages out: one added back within it must
        # not get a fresh quota
        self.quotas.forget(config.models, self.clock.monotonic())
        self.budgets.configure(caps_of(config))  # what was spent counts against new caps
        reopened: list[tuple[str, BreakerState]] = []
        for model in config.models.values():
            breaker = self._breakers.get(model.id)
            previous = old.models.get(model.id)
            unchanged = (previous == model and old.providers.get(model.provider)
                         == config.providers.get(model.provider))
            if breaker is not None and unchanged:
                breaker.config = config.breaker
            else:
                if breaker is not None and breaker.state is not BreakerState.CLOSED:
                    reopened.append((model.id, breaker.state))
                self._add_model(model)
        self._notify()
        for name in lifted:
            self._announce_credentials(name, "ok", "reconfigured", None)
        for model_id, state in reopened:
            if self._on_transition is not None:
                self._on_transition(model_id, state, BreakerState.CLOSED, "reconfigured",
                                    None, 0)
        self._announce_budgets(self.budgets.reached(self.clock.time()))  # a lowered cap

    # ------------------------------------------------------------------ admission

    def available(self, model_id: str) -> tuple[bool, str | None]:
        """Whether a call to the model would be admitted now, and if not why; no side effects.

        Reasons: unknown, auth, billing, open, forced_open, half_open (trial slots taken),
        max_concurrency, max_rpm, max_tpm, a spending cap, upstream_rpm / upstream_tpm (the
        upstream's rate-limit headers; upstream_tpm for the request this task routes). Lazy
        transitions (a period that just ended) are left to ``acquire``.
        """
        breaker = self._breakers.get(model_id)
        if breaker is None:
            return False, "unknown"
        blocked = self._blocked(self._config.models[model_id].provider, apply=False)
        if blocked is not None:
            return False, blocked
        if not breaker.can_acquire():
            # not admissible means no transition is due, so reading the state changes nothing
            return False, str(breaker.state)
        if self._over_limit(model_id):
            return False, "max_concurrency"
        quota = self.quotas.blocked(model_id, self.clock.monotonic())
        if quota is not None:
            return False, quota
        budget = self.budgets.blocked(model_id, self._config.models[model_id].provider,
                                      self.clock.time())
        if budget is not None:
            return False, budget
        upstream = self.upstream.blocked(model_id, self.clock.monotonic())
        if upstream is not None:
            return False, upstream
        return True, None

    def settle(self, model_id: str) -> None:
        """Applies the lazy transitions that are due (an open period that ended, a
        provider's auth or billing block that expired), with their events, without a call."""
        breaker = self._breakers.get(model_id)
        if breaker is None:
            return
        self._blocked(self._config.models[model_id].provider)  # an expired block ends
        breaker.state  # noqa: B018 - reading it applies a due OPEN -> HALF_OPEN

    def acquire(self, model_id: str) -> Permit | None:
        """Admits one call to the model, or None when it is not to be called now."""
        breaker = self._breakers.get(model_id)
        if breaker is None:
            return None
        provider = self._config.models[model_id].provider
        if self._blocked(provider) is not None:
            return None
        if self._over_limit(model_id) \
                or self.quotas.blocked(model_id, self.clock.monotonic()) is not None \
                or self.budgets.blocked(model_id, provider, self.clock.time()) is not None:
            return None
        upstream = self.upstream.blocked(model_id, self.clock.monotonic())
        if upstream is not None:
            self.upstream.refused(model_id, upstream)
            return None
        ticket = breaker.try_acquire()
        if ticket is None:
            return None
        self._inflight[model_id] += 1
        permit = Permit(self, breaker, ticket)
        permit.counted = self.quotas.counted(model_id, permit._started)
        return permit

    def spent(self, model_id: str, tokens: int) -> None:
        """Records the tokens an answer of the model reported (for max_tpm)."""
        self.quotas.spent(model_id, tokens, self.clock.monotonic())

    def cost(self, model_id: str, usd: float) -> None:
        """Records what an answer of the model cost (for its and its provider's caps)."""
        model = self._config.models.get(model_id)
        # a model a reload removed while its call ran: the provider it had then
        provider = model.provider if model is not None else self._former_providers.get(model_id)
        if provider is not None:
            self._announce_budgets(self.budgets.spend(model_id, provider, usd,
                                                      self.clock.time()))

    def _announce_budgets(self, reached: list[Reached]) -> None:
        for cap in reached:
            budget = cap.budget
            logger.warning("%s %s: %s reached (%.4f of %.4f USD in %s); %s skipped until "
                           "%s", budget.scope, budget.name, budget.key, cap.spent,
                           budget.limit, cap.period,
                           "it is" if budget.scope == "model" else "its models are",
                           time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(cap.resets_at)))
            if self.on_budget_reached is not None:
                self.on_budget_reached(cap)

    def inflight(self, model_id: str) -> int:
        """Calls to the model under way now."""
        return self._inflight.get(model_id, 0)

    def _over_limit(self, model_id: str) -> bool:
        limit = self._config.models[model_id].max_concurrency
        return limit > 0 and self._inflight[model_id] >= limit

    def finished(self, model_id: str, latency: float | None) -> None:
        """A call admitted by a Permit ended (its latency if it counts)."""
        if model_id in self._inflight and self._inflight[model_id] > 0:
            self._inflight[model_id] -= 1
            if not self._inflight[model_id] and model_id not in self._breakers:
                del self._inflight[model_id]  # the last call to a removed model ended
        if latency is not None and model_id in self._latency:
            self._latency[model_id].append(latency)
        self._notify()

    def retry_in(self, model_id: str) -> float | None:
        """Seconds until the model may be tried: 0 now, None when no time is known."""
        breaker = self._breakers.get(model_id)
        if breaker is None:
            return None
        provider = self._config.models[model_id].provider
        creds = self._credentials.get(provider)
        wait = breaker.retry_in()
        if creds is not None and self._blocked(provider, apply=False):
            cred_wait = max(0.0, creds.until - self.clock.monotonic())
            wait = None if wait is None else max(wait, cred_wait)
        if wait == 0.0 and self._over_limit(model_id):
            return None
        if wait is not None:
            wait = max(wait, self.quotas.wait(model_id, self.clock.monotonic()),
                       self.budgets.wait(model_id, provider, self.clock.time()),
                       self.upstream.wait(model_id, self.clock.monotonic()))
        return wait

    def retry_at(self, model_id: str) -> float | None:
        """Wall-clock epoch time from which the model may be tried; None when unknown."""
        wait = self.retry_in(model_id)
        return None if wait is None else round(self.clock.time() + wait, 3)

    def earliest_available_in(self, model_ids: Iterable[str]) -> float | None:
        """Seconds until the first of these models may be tried; None when none has a time."""
        waits = [w for w in map(self.retry_in, model_ids) if w is not None]
        return min(waits) if waits else None

    def out_longer_than(self, model_ids: Iterable[str], seconds: float) -> bool:
        """Whether each model's known wait is longer than `seconds`, so that none can come back
        within them but by an operator's hand (a reset, a reload). A model without a known time
        (forced open, trial slots or concurrency taken) or whose provider is blocked for its
        credentials (a probe's success ends that early) may come back sooner: False then."""
        for model_id in model_ids:
            wait = self.retry_in(model_id)
            if wait is None or wait <= seconds:
                return False
            if self.provider_retry_in(self._config.models[model_id].provider) is not None:
                return False
        return True

    def wait_for_change(self) -> Coroutine[Any, Any, Literal[True]]:
        """What to await for anything that may have freed a model.

        Bound it with ``asyncio.timeout`` (ended open periods are noticed only on query, so the
        timeout is what covers them) and re-check ``available()`` either way. Not a coroutine
        function: the wait begins at the call, so a change before its awaiting runs (a task
        starts a loop turn later, as under ``asyncio.wait_for``) still ends it.
        """
        event = self._changed
        if event is None:
            event = self._changed = asyncio.Event()
            self._waiting = 0
            # fresher upstream figures that free a model wake the waiters too; only while
            # someone waits, so the answers read meanwhile compare nothing
            self.upstream.wake = self._notify
        self._waiting += 1
        return self._wait(event)

    async def _wait(self, event: asyncio.Event) -> Literal[True]:
        try:
            return await event.wait()
        finally:
            # one that gave up (its step's timeout, its request cancelled): the last of them
            # takes the wake-up away, or every answer read until the next change would
            # compare its figures for no one (one never awaited at all counts until then)
            if self._changed is event:
                self._waiting -= 1
                if not self._waiting:
                    self._changed = None
                    self.upstream.wake = None

    def _notify(self) -> None:
        event, self._changed = self._changed, None
        if event is not None:
            self.upstream.wake = None
            event.set()

    # ------------------------------------------------------------------ credentials

    def _blocked(self, provider: str, *, apply: bool = True) -> str | None:
        """The provider's credential trouble, if any; `apply` records an expiry (and emits)."""
        creds = self._credentials.get(provider)
        if creds is None or creds.state == "ok":
            return None
        if self.clock.monotonic() >= creds.until:
            if apply:
                self._set_credentials(provider, "ok", "expired", 0.0)
            return None
        return creds.state

    def block_provider_of(self, model_id: str, effect: BreakerEffect, reason: str) -> None:
        model = self._config.models.get(model_id)
        if model is None:
            return  # removed by a reload while its call was in flight
        provider = model.provider
        cfg = self._config.breaker
        if effect is BreakerEffect.OPEN_PROVIDER_AUTH:
            state, seconds = "auth", cfg.auth_open_seconds
        else:
            state, seconds = "billing", cfg.billing_open_seconds
        if seconds <= 0:
            return
        until = self.clock.monotonic() + seconds
        creds = self._credentials.get(provider)
        if creds is not None and self._blocked(provider, apply=False) is not None and (
                creds.state == state or creds.until >= until):
            # already blocked for this (a probe during the block only confirms it: extending
            # and announcing it again made every probe of every model of the provider a
            # provider:credentials event), or blocked longer for the other trouble
            return
        self._set_credentials(provider, state, reason, until)

    def _set_credentials(self, provider: str, state: str, reason: str | None,
                         until: float) -> None:
        creds = self._credentials.setdefault(provider, _Credentials())
        if creds.state == state == "ok":
            return
        creds.state, creds.since, creds.until = state, self.clock.monotonic(), until
        retry_at = self._wall(until) if state != "ok" else None
        logger.warning("provider %s: credentials %s (reason=%s, retry_at=%s)",
                       provider, state, reason, retry_at)
        if state == "ok":
            self._notify()
        self._announce_credentials(provider, state, reason, retry_at)

    def _announce_credentials(self, provider: str, state: str, reason: str | None,
                              retry_at: float | None) -> None:
        if self._on_credentials is not None:
            try:
                self._on_credentials(provider, state, reason, retry_at)
            except Exception:
                logger.exception("provider %s: credentials callback failed", provider)
        for listener in self.on_credentials_change:
            try:
                listener(provider, state)
            except Exception:
                logger.exception("provider %s: credentials listener failed", provider)

    def provider_retry_in(self, provider: str) -> float | None:
        """Seconds until the provider's auth or billing block ends; None when not blocked."""
        creds = self._credentials.get(provider)
        if creds is None or self._blocked(provider, apply=False) is None:
            return None
        return max(0.0, creds.until - self.clock.monotonic())

    def provider_state(self, provider: str) -> str:
        """The provider's credential state: "ok", "auth" or "billing" (expiry applied)."""
        return self._blocked(provider) or "ok"

    def reset_provider(self, provider: str) -> None:
        """Operator: clears auth/billing trouble of a provider."""
        self._set_credentials(provider, "ok", "reset", 0.0)

    # ------------------------------------------------------------------ probes and operator

    def record_probe(self, model_id: str, ok: bool, latency: float,
                     reason: FailureReason | None = None,
                     retry_after: float | None = None, *, operator: bool = False) -> None:
        """A probe's outcome: feeds status, the breaker and the provider's credential state.

        `operator`: the probe was asked for by the operator, so a success also ends a running
        open period (see ``Breaker.record_probe``).
        """
        breaker = self._breakers.get(model_id)
        if breaker is None:
            return
        self._probes[model_id] = ProbeResult(round(self.clock.time(), 3), ok, latency,
                                             None if reason is None else str(reason))
        provider = self._config.models[model_id].provider
        if ok:
            creds = self._credentials.get(provider)
            if creds is not None and creds.state != "ok":
                self._set_credentials(provider, "ok", "probe_succeeded", 0.0)
            breaker.record_probe(True, operator=operator)
            return
        effect = POLICY[reason].breaker if reason is not None else BreakerEffect.COUNT
        if effect in (BreakerEffect.OPEN_PROVIDER_AUTH, BreakerEffect.OPEN_PROVIDER_BILLING):
            self.block_provider_of(model_id, effect, str(reason))
        else:
            breaker.record_probe(False, reason, retry_after)

    def reset(self, model_id: str) -> bool:
        """Operator: closes the model's breaker and clears its provider's credential trouble."""
        breaker = self._breakers.get(model_id)
        if breaker is None:
            return False
        self.reset_provider(self._config.models[model_id].provider)
        breaker.reset()
        self._notify()
        return True

    def force_open(self, model_id: str, seconds: float | None = None) -> bool:
        """Operator: takes the model out for `seconds` (None: until reset)."""
        breaker = self._breakers.get(model_id)
        if breaker is None:
            return False
        breaker.force_open(seconds)
        return True

    # ------------------------------------------------------------------ status

    def breaker(self, model_id: str) -> Breaker | None:
        return self._breakers.get(model_id)

    def model_state(self, model_id: str) -> str:
        """closed | open | half_open | forced_open, "unavailable" (credentials) or "unknown"."""
        breaker = self._breakers.get(model_id)
        if breaker is None:
            return "unknown"
        state = breaker.state
        if state is BreakerState.CLOSED or state is BreakerState.HALF_OPEN:
            if self._blocked(self._config.models[model_id].provider) is not None:
                return "unavailable"
        return str(state)

    def latency(self, model_id: str) -> tuple[float | None, float | None]:
        """(p50, p95) in seconds over recent successful calls (nearest rank)."""
        samples = sorted(self._latency.get(model_id, ()))
        if not samples:
            return None, None

        def rank(q: float) -> float:
            return samples[max(0, math.ceil(q * len(samples)) - 1)]

        return rank(0.5), rank(0.95)

    def status(self) -> dict[str, Any]:
        """Per model and per provider, for GET /v1/status (times: wall-clock epoch seconds)."""
        wall = self.clock.time()
        models: dict[str, Any] = {}
        for model_id, breaker in self._breakers.items():
            entry = breaker.status()
            p50, p95 = self.latency(model_id)
            probe = self._probes.get(model_id)
            entry.update(
                state=self.model_state(model_id),
                breaker_state=str(breaker.state),
                provider=self._config.models[model_id].provider,
                latency_p50=None if p50 is None else round(p50, 4),
                latency_p95=None if p95 is None else round(p95, 4),
                last_probe=None if probe is None else probe.as_dict(),
                inflight=self._inflight.get(model_id, 0),
            )
            entry.update(self.quotas.status(model_id, self.clock.monotonic()))
            told = self.upstream.status(model_id)
            if told is not None:
                entry["upstream_limits"] = told
            model = self._config.models[model_id]
            if model.priced:
                entry["spent_usd"] = self.budgets.spending("model", model_id, wall)
            held = self.budgets.blocked(model_id, model.provider, wall)
            if held is not None:  # skipped until the cap's period ends
                entry.update(budget=held, retry_at=self.retry_at(model_id))
            if entry["state"] == "unavailable":
                # blocked by its provider's credentials: say why and until when
                creds = self._credentials[entry["provider"]]
                entry.update(reason=creds.state, retry_at=self._wall(creds.until),
                             since=max(entry.get("since") or 0.0, self._wall(creds.since)))
            models[model_id] = entry
        providers: dict[str, Any] = {}
        priced = {m.provider for m in self._config.models.values() if m.priced}
        for name in self._config.providers:
            state = self._blocked(name) or "ok"
            creds = self._credentials[name]
            providers[name] = {
                "credentials": state,
                "since": self._wall(creds.since),
                "retry_at": self._wall(creds.until) if state != "ok" else None,
            }
            if name in priced:  # what its priced models spent together
                providers[name]["spent_usd"] = self.budgets.spending("provider", name, wall)
        return {"models": models, "providers": providers, "budgets": self.budgets.status(wall)}

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        """Breaker and credential state for the state file (wall-clock times; see
        ``healthstate.py``), each entry with the fingerprint of the settings it was earned
        under, so a restart with a changed key or model drops it."""
        blocks: dict[str, healthstate.Block] = {}
        for name, creds in self._credentials.items():
            state = self._blocked(name)
            if state is not None:
                blocks[name] = (state, self._wall(creds.since), self._wall(creds.until))
        data = healthstate.snapshot(self._fingerprints, self._config, self.clock.time(),
                                    self._breakers, blocks)
        data["budgets"] = self.budgets.snapshot()  # money spent: kept whatever the settings
        data["quotas"] = self.quotas.snapshot(self.clock.monotonic(), self.clock.time())
        return data

    def restore(self, data: Mapping[str, Any]) -> None:
        """Loads a ``snapshot()``; unknown models/providers and malformed entries are skipped,
        and so are entries saved under other settings (a new API key, URL or model config).

        A file without fingerprints (written before they existed) is taken as it is.
        """
        spending = data.get("budgets")
        if data.get("version") == healthstate.STATE_VERSION and isinstance(spending, dict):
            self.budgets.restore(spending, self.clock.time())
            self._announce_restored()
        quotas = data.get("quotas")
        if data.get("version") == healthstate.STATE_VERSION and isinstance(quotas, dict):
            self.quotas.restore(quotas, self.clock.monotonic(), self.clock.time())
        blocks = healthstate.restore(data, self._fingerprints, self._config, self.clock,
                                     self._breakers, self._credentials)
        for name, (state, since, until) in blocks.items():
            self._credentials[name] = _Credentials(state, since, until)

    def _announce_restored(self) -> None:
        """Tells the caps the restored spending reached and no run told yet, once the start
        is under way: the event sinks that come with it (MQTT) listen only after the state
        is restored."""
        def announce() -> None:
            self._announce_budgets(self.budgets.reached(self.clock.time()))
        try:
            asyncio.get_running_loop().call_soon(announce)
        except RuntimeError:
            announce()

    def _wall(self, mono: float) -> float:
        return round(self.clock.time() + (mono - self.clock.monotonic()), 3)

    def _transition(self, model_id: str, old: BreakerState, new: BreakerState,
                    reason: str | None, retry_at: float | None, open_count: int) -> None:
        if new in (BreakerState.CLOSED, BreakerState.HALF_OPEN):
            self._notify()
        if self._on_transition is not None:
            self._on_transition(model_id, old, new, reason, retry_at, open_count)
