"""The daemon's long-lived state as the API handlers see it."""

from __future__ import annotations

from collections import deque
from typing import Any

from aiohttp import web

from failoverd import router
from failoverd.clock import Clock
from failoverd.dispatch import FailoverInfo, Outcome
from failoverd.metrics import Metrics
from failoverd.runtime import Runtime


class Service:
    """Holds the current Runtime (swapped on reload) and what outlives reloads."""

    def __init__(self, runtime: Runtime, clock: Clock, metrics: Metrics | None = None) -> None:
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.inflight = 0
        self.started = clock.time()
        self._failover_times: deque[float] = deque(maxlen=100_000)
        self.install(runtime)

    runtime: Runtime

    def install(self, runtime: Runtime) -> None:
        """Swaps in a new configuration's runtime (atomic: one assignment)."""
        runtime.dispatcher.on_failover = self._failover
        runtime.dispatcher.observe_latency = self.metrics.upstream_latency
        self.runtime = runtime

    def _failover(self, info: FailoverInfo) -> None:
        self.metrics.failover(info.from_model, info.to_model, str(info.error.reason))
        self._failover_times.append(self.clock.monotonic())

    def candidates(self, rt: Runtime, body: dict[str, Any], pin: bool,
                   session: str | None) -> tuple[str, ...]:
        return router.resolve(rt.config, body.get("model") or "", pin=pin)

    def recent_failovers(self, window: float = 60.0) -> int:
        """Failovers in the last `window` seconds (for systemd's STATUS= line)."""
        cutoff = self.clock.monotonic() - window
        times = self._failover_times
        while times and times[0] < cutoff:
            times.popleft()
        return len(times)

    def model_state(self, model_id: str) -> str:
        return "closed"

    def served(self, outcome: Outcome, session: str | None, candidates: tuple[str, ...]) -> None:
        self.metrics.served(outcome.model)


SERVICE = web.AppKey("service", Service)
