"""The daemon's long-lived state: the current Runtime and everything that outlives reloads.

Service ties the parts together: health registry (breakers, credentials), event bus and its
sinks (audit log, MQTT, hooks), sessions, metrics and the state file. The API handlers read
`service.runtime` once per request, so a reload (one assignment) never changes a request
that is already running.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from failoverd import discovery, hedge
from failoverd.breaker import BreakerState
from failoverd.budget import Reached
from failoverd.clients import CURRENT, Clients, Limited
from failoverd.clock import Clock
from failoverd.config import Config
from failoverd.dispatch import FailoverInfo, FailoverVerdict, Outcome
from failoverd.errors import Attempt
from failoverd.events import AuditLog, EventBus
from failoverd.failures import FailureReason
from failoverd.health import HealthRegistry
from failoverd.hedgebudget import HedgeBudgets
from failoverd.hooks import HookRunner
from failoverd.http1 import HttpClient
from failoverd.http1.client import PoolStats
from failoverd.metrics import Metrics, labels
from failoverd.mqtt import MqttPublisher
from failoverd.routes import Route as Route
from failoverd.routes import Routing, configured_chains
from failoverd.runtime import Runtime, build_runtime
from failoverd.sessions import SessionStore
from failoverd.statefile import StateFile
from failoverd.window import SlidingWindow

if TYPE_CHECKING:
    from failoverd.prober import Prober

logger = logging.getLogger(__name__)

_EVENT_FOR_STATE = {
    BreakerState.OPEN: "breaker:opened",
    BreakerState.FORCED_OPEN: "breaker:opened",
    BreakerState.HALF_OPEN: "breaker:half_open",
    BreakerState.CLOSED: "breaker:closed",
}


# The retained state topic is republished on transitions only, so it carries what changes
# with them; per-call figures (latency, in-flight, failure counts) would go stale there.
MQTT_STATE_KEYS = ("state", "breaker_state", "reason", "since", "retry_at", "open_count",
                   "provider")


def mqtt_state(model_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The retained ``models/<id>/state`` payload from a /v1/status model entry."""
    return {"model": model_id, **{k: entry.get(k) for k in MQTT_STATE_KEYS}}


def hook_secrets(config: Config) -> frozenset[str]:
    """Values hook processes must not inherit in their environment: the providers' API keys
    and proxy URLs (they may hold a password), the TCP tokens and the MQTT password."""
    values = [p.api_key for p in config.providers.values()]
    values += [p.proxy for p in config.providers.values()]
    values += [config.daemon.tcp_token, config.mqtt.password]
    values += [c.tcp_token for c in config.clients.values()]  # [clients.<name>]' own tokens
    return frozenset(v.strip() for v in values if v.strip())


# A client connection waiting this long for its next request is closed. aiohttp's AppRunner
# keeps one for 3630 s unless told (only web.run_app passes 75): clients that hold idle
# keep-alive connections would pin a file descriptor and a handler task each for an hour.
# 75 s stays above the idle expiry of common clients (httpx 5 s, aiohttp 15 s, Node 5 s), so
# a client does not pick a connection the daemon is closing; streams are never cut by it.
IDLE_CONNECTION_SECONDS = 75.0
# Spending (budget.py) is saved this long after an answer's cost at most: a crash loses
# no more of it, and a busy daemon writes its state file once per period, not per answer.
SPENDING_SAVE_SECONDS = 5.0


class Service(Routing):
    """Holds the current Runtime (swapped on reload) and the state that outlives it."""

    runtime: Runtime

    def __init__(self, config: Config, client: HttpClient, clock: Clock,
                 rng: random.Random | None = None) -> None:
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.client = client
        self.metrics = Metrics()
        self.inflight = 0
        # how long a client connection may stay idle, or leave its request body stalled
        self.client_idle_timeout = IDLE_CONNECTION_SECONDS
        # (open client connections, connections closed at once at the cap): set by the
        # listener's front (api/fastpath.py) once it serves
        self.client_connections: Callable[[], tuple[int, int]] | None = None
        self.started = clock.time()
        self._failovers = SlidingWindow(60.0)  # for "failovers in the last minute"
        self.bus = EventBus(config.node, clock)
        self._detach_audit = AuditLog(config.daemon.log_format).attach(self.bus)
        self.hooks = HookRunner(config.hooks, self.bus, secrets=hook_secrets(config))
        self.hooks.attach(self.bus)
        self.mqtt: MqttPublisher | None = None
        self.health = HealthRegistry(config, clock, self.rng, self._on_transition,
                                     self._on_credentials)
        self.health.on_budget_reached = self._budget_reached
        self.sessions = SessionStore(clock, sticky_seconds=config.routing.sticky_seconds)
        self.state_file = StateFile(config.daemon.state_dir)
        self._save_pending = False
        self._spending_save: asyncio.TimerHandle | None = None
        self.streams: set[Any] = set()  # open /v1/events subscriptions, closed on shutdown
        self.prober: Prober | None = None
        self.reloader: Callable[[], tuple[bool, list[str]]] | None = None
        self._chain_offsets: dict[str, int] = {}  # operator rotations (/v1/chains/X/next)
        self.on_breaker_change: list[Callable[[str, BreakerState], None]] = []
        self.hedge_budgets = HedgeBudgets(clock)  # its windows outlive reloads
        self.clients = Clients(clock)  # [clients.<name>]: their counts outlive reloads
        self.clients.on_limited = self._client_limited
        self.clients.on_spent = self._schedule_spending_save
        self.metrics.gauges.append(self._gauges)
        self.metrics.gauges.append(self.clients.metrics)
        self.install(build_runtime(config, client, clock, self.health, self.rng))

    # ------------------------------------------------------------------ configuration

    def install(self, runtime: Runtime) -> None:
        """Swaps in a configuration's runtime (atomic: one assignment)."""
        d = runtime.dispatcher
        d.failover_hook = self._before_failover
        d.on_failover = self._failover
        d.on_exhausted = self._exhausted
        d.observe_latency = self.metrics.upstream_latency
        d.on_hedge = hedge.reporter(self.bus, self.metrics, self._loser_usage)
        self.hedge_budgets.configure(runtime.config)
        d.hedge_budget = self.hedge_budgets
        cfg = runtime.config
        self.clients.configure(cfg.clients, cfg.models, {
            **configured_chains(cfg), **{p.name: p.models for p in cfg.pools.values()}})
        models = runtime.config.models
        # a model a reload removed keeps its price: its answers still in flight cost
        former = {m: p for m, p in self.metrics.prices.items() if m not in models}
        self.metrics.prices = {**former, **{m.id: m.cost for m in models.values()
                                            if m.priced}}
        self.runtime = runtime

    def reload(self, config: Config) -> None:
        """A validated new config: breakers of unchanged models keep their state."""
        old = self.runtime.config
        # an operator's rotation was of the chain as it was: a chain that changed or went
        # away starts again from its configured order (unchanged chains keep theirs)
        before, after = configured_chains(old), configured_chains(config)
        for name in [n for n in self._chain_offsets if after.get(n) != before.get(n)]:
            del self._chain_offsets[name]
        self.health.reconfigure(config)
        if self.sessions.set_sticky_seconds(config.routing.sticky_seconds):
            logger.info("reload: sticky_seconds is now %g; longer sticky windows shortened",
                        config.routing.sticky_seconds)
        dropped = self.sessions.forget_missing(config.models, {*config.chains, *config.pools})
        if dropped:
            logger.info("reload: %d session(s) lost a pin or sticky model that went away",
                        dropped)
        self.hooks.hooks = config.hooks
        self.hooks.secrets = hook_secrets(config)
        self.install(build_runtime(config, self.client, self.clock, self.health, self.rng))
        self.metrics.forget_models(config.models)
        if self.mqtt is not None:
            for model_id in old.models:
                if model_id not in config.models:
                    self.mqtt.clear_model_state(model_id)
            self.publish_all_states()
        # the breakers of removed or changed models are gone: the state file says so now, not
        # at the next transition (a crash before it would bring them back)
        self.schedule_save()
        self.bus.emit("config:reloaded", source=config.source, models=len(config.models),
                      providers=len(config.providers))

    def usage(self, model_id: str, usage: Any) -> float:
        """An answer's reported usage: counted (tokens, cost), its cost spent against the
        spending caps and, for a model with max_tpm, its tokens against its minute; returns
        the cost (USD, 0 without prices)."""
        usd = self.metrics.usage(model_id, usage)
        if usd > 0:
            self.health.cost(model_id, usd)
            self._schedule_spending_save()
        if isinstance(usage, dict):
            tokens = sum(v for v in (usage.get("prompt_tokens"), usage.get("completion_tokens"))
                         if type(v) is int and v > 0)
            if tokens:
                self.health.spent(model_id, tokens)
        return usd

    def _loser_usage(self, model_id: str, usage: Any) -> float:
        """A hedge's loser that answered in full: its usage counted as any answer's, and its
        cost spent by the request's [clients.<name>] too (it asked for both calls)."""
        usd = self.usage(model_id, usage)
        client = CURRENT.get()
        if client is not None and usd > 0:
            self.clients.charge(client, usd)
        return usd

    def served(self, outcome: Outcome, session: str | None, route: Route) -> None:
        """A complete (non-streaming) answer went out."""
        self.metrics.served(outcome.model)
        self.note_session(outcome, session, route)

    def note_session(self, outcome: Outcome, session: str | None, route: Route) -> None:
        """Remembers which model served the session (sticky choice after a failover)."""
        if session and route.candidates:
            # models skipped without a call (lacking a capability, too small a window) did not
            # fail: a request served with no failover hop leaves the session where it was
            first = route.candidates[0]
            failed = outcome.failovers or (outcome.hedges and _failed(outcome, first))
            self.sessions.note_served(session, first if failed else outcome.model, outcome.model)

    async def _before_failover(self, info: FailoverInfo) -> FailoverVerdict:
        event = self.bus.emit(
            "model:failover", from_model=info.from_model, to_model=info.to_model,
            reason=str(info.error.reason), status=info.error.status, error=info.error.message,
            session=info.session, session_tokens=info.session_tokens,
            target_context_window=info.target_context_window, attempt=info.attempt,
            request_id=info.request_id, upstream_request_id=info.error.upstream_request_id)
        if not self.hooks.subscribed(event.type):
            return FailoverVerdict()
        try:
            outcome = await self.hooks.run(event, limit=info.time_left)
        except Exception:
            # HookRunner reports a hook's own failures; anything else is our bug, and a bug in
            # an advisory side channel must not fail the request: fail over as if no hook ran.
            logger.exception("running model:failover hooks failed")
            return FailoverVerdict()
        return FailoverVerdict(abort=outcome.abort, messages=tuple(outcome.messages),
                               context=outcome.context)

    def _failover(self, info: FailoverInfo) -> None:
        self.metrics.failover(info.from_model, info.to_model, str(info.error.reason))
        self._failovers.add(self.clock.monotonic(), failed=True)

    def _exhausted(self, attempts: list[Attempt], request_id: str | None = None) -> None:
        self.bus.emit("chain:exhausted", attempts=[a.as_dict() for a in attempts],
                      request_id=request_id)

    def recent_failovers(self) -> int:
        """Failovers in the last minute (for systemd's STATUS= line and /v1/status)."""
        self._failovers.evict(self.clock.monotonic())
        return self._failovers.calls

    # ------------------------------------------------------------------ health

    def model_state(self, model_id: str) -> str:
        return self.health.model_state(model_id)

    def _on_transition(self, model_id: str, old: BreakerState, new: BreakerState,
                       reason: str | None, retry_at: float | None, open_count: int) -> None:
        self.bus.emit(_EVENT_FOR_STATE[new], model=model_id, reason=reason, retry_at=retry_at,
                      open_count=open_count, previous=str(old))
        self._publish_state(model_id)
        self.schedule_save()
        for listener in self.on_breaker_change:
            listener(model_id, new)

    def _on_credentials(self, provider: str, state: str, reason: str | None,
                        retry_at: float | None) -> None:
        self.bus.emit("provider:credentials", provider=provider, state=state, reason=reason,
                      retry_at=retry_at)
        if self.mqtt is not None:  # set after start-up, when the runtime exists
            for model in self.runtime.config.models.values():
                if model.provider == provider:
                    self._publish_state(model.id)
        self.schedule_save()

    def _publish_state(self, model_id: str) -> None:
        if self.mqtt is None:
            return
        entry = self.health.status()["models"].get(model_id)
        if entry is not None:
            self.mqtt.set_model_state(model_id, mqtt_state(model_id, entry))

    def publish_all_states(self) -> None:
        """Hands every model's retained state to the MQTT publisher (startup, reload), and
        Home Assistant's discovery configs when asked for."""
        mqtt = self.mqtt
        if mqtt is None:
            return
        for model_id, entry in self.health.status()["models"].items():
            mqtt.set_model_state(model_id, mqtt_state(model_id, entry))
        self.publish_budgets()

    def publish_budgets(self) -> None:
        """Hands the spending caps' retained states (and Home Assistant's discovery configs,
        when asked for) to the MQTT publisher, which sends those that changed: at start, on
        a reload, when a cap is reached, and every few seconds from the supervisor."""
        mqtt = self.mqtt
        if mqtt is None:
            return
        caps = self.health.budgets.status(self.clock.time())
        topics = {mqtt.budget_topic(c["scope"], c["name"], c["period"]): c for c in caps}
        retained: dict[str, bytes] = {}
        if mqtt.cfg.discovery:
            # the configs first: the publisher keeps this order, so a cap that leaves gets
            # its sensor removed before its state topic is cleared (which Home Assistant
            # would render the sensor's template on)
            retained.update(discovery.messages(
                mqtt.cfg, mqtt.node,
                [(m, mqtt.model_state_topic(m)) for m in self.runtime.config.models],
                mqtt.status_topic,
                [(c["scope"], c["name"], c["period"], t) for t, c in topics.items()]))
        retained.update((topic, orjson.dumps(cap)) for topic, cap in topics.items())
        mqtt.set_retained(retained)

    # ------------------------------------------------------------------ persistence

    def restore_state(self) -> None:
        data = self.state_file.load()
        if data is not None:
            self.health.restore(data)
            self.clients.restore(data.get("clients"))
            logger.info("restored breaker state from %s", self.state_file.path)

    def schedule_save(self) -> None:
        """Coalesces the transitions of one loop turn into one atomic write."""
        if self._save_pending:
            return
        self._save_pending = True
        try:
            asyncio.get_running_loop().call_soon(self.save_state)
        except RuntimeError:
            self.save_state()

    def _schedule_spending_save(self) -> None:
        """Spending goes to the state file, and MQTT, within SPENDING_SAVE_SECONDS (not one
        write per answer); a cap reached, and a stop, save at once."""
        if self._spending_save is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.save_state()
                return
            self._spending_save = loop.call_later(SPENDING_SAVE_SECONDS, self._spending_due)

    def _spending_due(self) -> None:
        self.schedule_save()
        self.publish_budgets()

    def _budget_reached(self, reached: Reached) -> None:
        budget = reached.budget
        self.bus.emit("budget:reached", scope=budget.scope, name=budget.name,
                      period=budget.period, period_key=reached.period, cap=budget.key,
                      limit_usd=budget.limit, spent_usd=round(reached.spent, 9),
                      resets_at=reached.resets_at)
        self.schedule_save()
        self.publish_budgets()

    def _client_limited(self, limited: Limited, retry_at: float) -> None:
        self.bus.emit("client:limited", client=limited.client, limit=limited.limit,
                      retry_at=retry_at, detail=limited.detail)
        if limited.limit.startswith("max_cost"):
            self.schedule_save()  # the period's cap was told: a restart does not tell it again

    def save_state(self) -> None:
        self._save_pending = False
        if self._spending_save is not None:
            self._spending_save.cancel()
            self._spending_save = None
        try:
            data = self.health.snapshot()
            spent = self.clients.snapshot()
            if spent:  # what [clients.<name>] spent, as the models' spending is kept
                data["clients"] = spent
            self.state_file.save(data)
        except OSError as exc:
            logger.error("cannot write state file %s: %s", self.state_file.path, exc)

    # ------------------------------------------------------------------ metrics

    def _gauges(self) -> list[str]:
        values = {"closed": 0, "half_open": 1, "open": 2, "forced_open": 3, "unavailable": 4}
        out = ["# HELP failoverd_breaker_state Breaker state per model (0 closed, 1 half-open, "
               "2 open, 3 forced open, 4 provider credentials blocked).",
               "# TYPE failoverd_breaker_state gauge"]
        for model_id in self.runtime.config.models:
            state = self.model_state(model_id)
            out.append(f"failoverd_breaker_state{labels(model=model_id)} "
                       f"{values.get(state, 2)}")
        out += ["# HELP failoverd_inflight_requests Client requests in flight.",
                "# TYPE failoverd_inflight_requests gauge",
                f"failoverd_inflight_requests {self.inflight}"]
        if self.client_connections is not None:
            open_now, refused = self.client_connections()
            out += ["# HELP failoverd_client_connections Client connections open (Unix "
                    "socket and TCP).", "# TYPE failoverd_client_connections gauge",
                    f"failoverd_client_connections {open_now}",
                    "# HELP failoverd_client_connections_refused_total Client connections "
                    "closed at once because half the file descriptor limit was open.",
                    "# TYPE failoverd_client_connections_refused_total counter",
                    f"failoverd_client_connections_refused_total {refused}"]
        stats = self.bus.stats()
        out += ["# HELP failoverd_sse_dropped_events_total Events dropped for slow /v1/events "
                "readers.", "# TYPE failoverd_sse_dropped_events_total counter",
                f"failoverd_sse_dropped_events_total {stats['dropped']}",
                "# HELP failoverd_event_sink_errors_total Events a sink (MQTT queue, hooks, "
                "audit log) failed on with an error of its own, so may not have got.",
                "# TYPE failoverd_event_sink_errors_total counter",
                f"failoverd_event_sink_errors_total {stats['listener_errors']}"]
        out += ["# HELP failoverd_events_total Events emitted by type.",
                "# TYPE failoverd_events_total counter"]
        out += [f"failoverd_events_total{labels(type=t)} {n}"
                for t, n in sorted(stats.get("emitted", {}).items())]
        if self.mqtt is not None:
            m = self.mqtt.stats()
            out += ["# HELP failoverd_mqtt_dropped_events_total Events dropped while the "
                    "broker was away (queue_size exceeded).",
                    "# TYPE failoverd_mqtt_dropped_events_total counter",
                    f"failoverd_mqtt_dropped_events_total {m.dropped}",
                    "# HELP failoverd_mqtt_queued_events Events waiting for the broker.",
                    "# TYPE failoverd_mqtt_queued_events gauge",
                    f"failoverd_mqtt_queued_events {m.queued}",
                    "# HELP failoverd_mqtt_published_events_total Events the broker "
                    "acknowledged.",
                    "# TYPE failoverd_mqtt_published_events_total counter",
                    f"failoverd_mqtt_published_events_total {m.published}",
                    "# HELP failoverd_mqtt_refused_publishes_total Publishes (events, also "
                    "counted as published, and retained states) the broker acknowledged with "
                    "an error (MQTT v5), e.g. an ACL's Not authorized.",
                    "# TYPE failoverd_mqtt_refused_publishes_total counter",
                    f"failoverd_mqtt_refused_publishes_total {m.refused}",
                    "# HELP failoverd_mqtt_reconnects_total Connections made after the first.",
                    "# TYPE failoverd_mqtt_reconnects_total counter",
                    f"failoverd_mqtt_reconnects_total {m.reconnects}",
                    "# HELP failoverd_mqtt_connected 1 while connected to the broker.",
                    "# TYPE failoverd_mqtt_connected gauge",
                    f"failoverd_mqtt_connected {int(m.connected)}"]
        caps = self.health.budgets.status(self.clock.time())
        if caps:  # the spending caps (budget.py): alert on spent / cap before it is reached
            out += ["# HELP failoverd_budget_spent_usd What a capped model or provider spent "
                    "in the current UTC day or month.", "# TYPE failoverd_budget_spent_usd gauge"]
            out += [f"failoverd_budget_spent_usd{_cap_labels(c)} {c['spent_usd']}" for c in caps]
            out += ["# HELP failoverd_budget_limit_usd A spending cap (max_cost_per_day, "
                    "max_cost_per_month).", "# TYPE failoverd_budget_limit_usd gauge"]
            out += [f"failoverd_budget_limit_usd{_cap_labels(c)} {c['limit_usd']}" for c in caps]
        pools = self.client.stats()
        out += ["# HELP failoverd_upstream_connections_opened_total Connections opened to each "
                "upstream (keep-alive reuse keeps this low).",
                "# TYPE failoverd_upstream_connections_opened_total counter"]
        out += [f"failoverd_upstream_connections_opened_total{_pool_labels(p)} {p.opened}"
                for p in pools]
        out += ["# HELP failoverd_upstream_connections Connections open to each upstream "
                "(in use or idle).", "# TYPE failoverd_upstream_connections gauge"]
        out += [f"failoverd_upstream_connections{_pool_labels(p)} {p.open}" for p in pools]
        out += ["# HELP failoverd_upstream_idle_connections Idle keep-alive connections to "
                "each upstream.", "# TYPE failoverd_upstream_idle_connections gauge"]
        out += [f"failoverd_upstream_idle_connections{_pool_labels(p)} {p.idle}" for p in pools]
        # each hook run (one program for one event) is counted once: started, or dropped
        out += ["# HELP failoverd_hook_runs_total Hook runs started (one program for one "
                "event).", "# TYPE failoverd_hook_runs_total counter",
                f"failoverd_hook_runs_total {self.hooks.runs}",
                "# HELP failoverd_hook_failures_total Hook runs started that failed: could "
                "not start, exited non-zero, timed out or printed junk.",
                "# TYPE failoverd_hook_failures_total counter",
                f"failoverd_hook_failures_total {self.hooks.failures}",
                "# HELP failoverd_hook_dropped_total Hook runs never started because too many "
                "were running or waiting (not counted as runs or failures).",
                "# TYPE failoverd_hook_dropped_total counter",
                f"failoverd_hook_dropped_total {self.hooks.dropped}"]
        return out


def _cap_labels(cap: dict[str, Any]) -> str:
    return labels(scope=cap["scope"], name=cap["name"], period=cap["period"])


def _pool_labels(p: PoolStats) -> str:
    return (labels(upstream=p.upstream, proxy=p.proxy) if p.proxy
            else labels(upstream=p.upstream))


def _failed(outcome: Outcome, model: str) -> bool:
    """Whether `model`'s upstream call failed in a hedged request: a hedge that won after the
    original failed is a failover all but in name, and the session sticks to the winner as
    after one (a hedge that merely outran a slow original is not: the original did not fail)."""
    return any(a.model == model and a.reason not in _SKIPS for a in outcome.attempts)


_SKIPS = (FailureReason.UNAVAILABLE, FailureReason.INCAPABLE)  # candidates passed, not called
