"""Scheduled health probes (APScheduler 3.x AsyncIOScheduler).

One interval job per model (`probes.interval` with `probes.jitter`, coalesce, max_instances=1
and a misfire grace of one interval), so a model going down with no traffic is noticed within
interval + timeout. When a breaker opens, a one-off recovery job is scheduled for the end of
its open period: the recovery probe (`probes.recovery_kind`) closes the breaker if the model is
back, so no client has to be the guinea pig.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from typing import TYPE_CHECKING

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from failoverd.breaker import BreakerState
from failoverd.clock import Clock
from failoverd.config import ProbeKind
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason

if TYPE_CHECKING:
    from failoverd.service import Service

logger = logging.getLogger(__name__)

_OPEN_STATES = (BreakerState.OPEN, BreakerState.FORCED_OPEN)


class Prober:
    """Probes every model on a schedule and after each open period."""

    def __init__(self, service: Service, clock: Clock, rng: random.Random | None = None) -> None:
        self.service = service
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.scheduler: AsyncIOScheduler | None = None
        self._failing: set[str] = set()  # models whose last probe failed (for probe:recovered)
        service.on_breaker_change.append(self._breaker_changed)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(),
                                          timezone=dt.UTC)
        self.scheduler.start()
        self.reschedule()

    def reschedule(self) -> None:
        """(Re)creates the interval jobs for the current configuration."""
        if self.scheduler is None:
            return
        cfg = self.service.runtime.config
        for job in self.scheduler.get_jobs():
            if job.id.startswith("probe:") and job.id[6:] not in cfg.models:
                job.remove()
        if cfg.probes.kind == "none":
            for job in self.scheduler.get_jobs():
                if job.id.startswith("probe:"):
                    job.remove()
            return
        interval = cfg.probes.interval
        now = dt.datetime.now(dt.UTC)
        for model_id in cfg.models:
            # spread first runs over the interval so probes do not arrive in a burst
            first = now + dt.timedelta(seconds=self.rng.uniform(0, min(interval, 5.0)))
            self.scheduler.add_job(
                self.probe, IntervalTrigger(seconds=interval, jitter=cfg.probes.jitter or None,
                                            start_date=first),
                args=(model_id,), id=f"probe:{model_id}", replace_existing=True,
                coalesce=True, max_instances=1, misfire_grace_time=max(1, int(interval)),
            )

    async def stop(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.scheduler = None

    # ------------------------------------------------------------------ probing

    def _breaker_changed(self, model_id: str, state: BreakerState) -> None:
        if state not in _OPEN_STATES or self.scheduler is None:
            return
        kind = self.service.runtime.config.probes.recovery_kind
        if kind == "none":
            return
        wait = self.service.health.retry_in(model_id)
        if wait is None:
            return  # forced open until reset: nothing to recover to
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait + 0.01)
        self.scheduler.add_job(self.recover, DateTrigger(run_date=when), args=(model_id,),
                               id=f"recover:{model_id}", replace_existing=True,
                               misfire_grace_time=None)

    async def recover(self, model_id: str) -> bool:
        """The recovery probe at the end of an open period."""
        cfg = self.service.runtime.config
        if model_id not in cfg.models:
            return False
        ok, _ = self.service.health.available(model_id)
        if not ok:
            wait = self.service.health.retry_in(model_id)
            if wait is not None and wait > 0:
                # still open (e.g. extended by a later failure): come back then
                self._breaker_changed(model_id, BreakerState.OPEN)
            return False
        return await self.probe(model_id, cfg.probes.recovery_kind)

    async def probe(self, model_id: str, kind: ProbeKind | None = None) -> bool:
        """Probes one model now; the outcome feeds the health registry, metrics and events."""
        rt = self.service.runtime
        cfg = rt.config
        model = cfg.models.get(model_id)
        if model is None:
            return False
        kind = kind or cfg.probes.kind
        if kind == "none":
            return True
        provider = rt.providers[model.provider]
        started = self.clock.monotonic()
        reason: FailureReason | None = None
        retry_after: float | None = None
        message = ""
        try:
            async with asyncio.timeout(cfg.probes.timeout):
                await provider.probe(model, kind, cfg.probes.timeout, cfg.probes.chat_max_tokens)
        except UpstreamError as exc:
            reason, retry_after, message = exc.reason, exc.retry_after, exc.message
        except TimeoutError:
            reason, message = FailureReason.TIMEOUT, "probe timed out"
        latency = self.clock.monotonic() - started
        ok = reason is None
        self.service.metrics.probe(model_id, ok)
        self.service.health.record_probe(model_id, ok, latency, reason, retry_after)
        bus = self.service.bus
        if ok:
            if model_id in self._failing:
                self._failing.discard(model_id)
                bus.emit("probe:recovered", model=model_id, kind=kind,
                         latency=round(latency, 4))
        else:
            self._failing.add(model_id)
            bus.emit("probe:failed", model=model_id, kind=kind, reason=str(reason),
                     error=message, latency=round(latency, 4))
            logger.warning("probe of %s failed: %s", model_id, reason)
        return ok
