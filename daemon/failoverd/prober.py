"""Scheduled health probes (APScheduler 3.x AsyncIOScheduler).

One interval job per model (`probes.interval` with `probes.jitter`, coalesce, max_instances=1
and a misfire grace of one interval), so a model going down with no traffic is noticed within
interval + timeout. When a breaker opens, a one-off recovery job is scheduled for the end of
its open period: the recovery probe (`probes.recovery_kind`) closes the breaker if the model is
back, so no client has to be the guinea pig. With recovery_kind "none" the job only reads the
breaker, so its half-open state is published when the period ends, not at the next request.
Likewise a one-off job at the end of a provider's auth or billing block applies its end (event,
MQTT state) then; without interval probes it also sends one model a recovery probe.

Choices:

- The first scheduled probe of each model comes between half an interval and one interval after
  start, spread at random: a restarting (or crash-looping) daemon does not burst probes at every
  provider, and detection still takes at most interval + timeout.
- A scheduled probe skips a model whose open period is still running: the outcome could not
  change the breaker (only the recovery probe at the end of the period can), so it would be a
  wasted request to an upstream that is known to be failing. One that finds the period over
  (the breaker half-open) is sent with `recovery_kind`, since its success closes the breaker.
- A model whose provider is blocked for auth or billing is probed with `recovery_kind` (a chat
  completion) when that is not "none": listing models often works without credit, so only a
  completion proves that the trouble is over. The scheduled probes of a blocked provider's
  models take turns: one per interval for the provider (whichever model's job comes first),
  since one success clears the block for all of them.
- An operator's probe (``probe(..., operator=True)``, POST /v1/models/{id}/probe) always makes a
  real request (a kind "none" becomes "models"; a model that is not up gets `recovery_kind`),
  and its success closes an open breaker at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import random
from typing import TYPE_CHECKING

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from failoverd.breaker import BreakerState
from failoverd.clock import Clock
from failoverd.config import ModelConfig, ProbeKind
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.providers.base import Provider
from failoverd.providers.http import probe_limits

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
        self._tasks: set[asyncio.Task[object]] = set()  # scheduled jobs running now
        # loop time of the last scheduled probe of each provider blocked for auth or billing
        self._blocked_probed: dict[str, float] = {}
        self._stopping = False
        service.on_breaker_change.append(self._breaker_changed)
        service.health.on_credentials_change.append(self._credentials_changed)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(),
                                          timezone=dt.UTC)
        self.scheduler.start()
        self.reschedule()
        # breakers restored open from the state file changed state in an earlier process:
        # their recovery probes must be scheduled here; one whose period ended while the
        # daemon was down is half-open now and gets its recovery probe soon, spread over
        # the first half interval (a crash-looping daemon does not burst them)
        cfg = self.service.runtime.config
        for model_id in cfg.models:
            breaker = self.service.health.breaker(model_id)
            if breaker is None:
                continue
            state = breaker.state
            if state in _OPEN_STATES:
                self._breaker_changed(model_id, state)
            elif state is BreakerState.HALF_OPEN:
                self._schedule_recovery(model_id,
                                        cfg.probes.interval * self.rng.uniform(0.0, 0.5))
        for name in cfg.providers:  # credential blocks restored from the state file
            credentials = self.service.health.provider_state(name)
            if credentials != "ok":
                self._credentials_changed(name, credentials)

    def reschedule(self) -> None:
        """(Re)creates the interval jobs for the current configuration."""
        if self.scheduler is None:
            return
        cfg = self.service.runtime.config
        self._failing.intersection_update(cfg.models)  # a removed model recovers no more
        for name in [p for p in self._blocked_probed if p not in cfg.providers]:
            del self._blocked_probed[name]
        for job in self.scheduler.get_jobs():
            kind, _, model_id = job.id.partition(":")
            if kind == "probe" and model_id not in cfg.models:
                job.remove()
            elif kind == "recover" and not self._recovering(model_id):
                job.remove()
            elif kind == "credentials" and model_id not in cfg.providers:
                job.remove()
        if cfg.probes.kind == "none":
            for job in self.scheduler.get_jobs():
                if job.id.startswith("probe:"):
                    job.remove()
            return
        interval = cfg.probes.interval
        now = dt.datetime.now(dt.UTC)
        existing = {job.id for job in self.scheduler.get_jobs()}
        for model_id in cfg.models:
            job_id = f"probe:{model_id}"
            # spread first runs over the second half of the interval: no burst at start
            first = now + dt.timedelta(seconds=interval * self.rng.uniform(0.5, 1.0))
            trigger = IntervalTrigger(seconds=interval, jitter=cfg.probes.jitter or None,
                                      start_date=first, timezone=dt.UTC)
            if job_id in existing:
                # a reload: keep the job (and its running instance); a new schedule only if
                # the [probes] timing changed, so frequent reloads do not starve the probes
                job = self.scheduler.get_job(job_id)
                old = job.trigger if job is not None else None
                if (isinstance(old, IntervalTrigger)
                        and old.interval.total_seconds() == interval
                        and old.jitter == trigger.jitter):
                    continue
                self.scheduler.reschedule_job(job_id, trigger=trigger)
                self.scheduler.modify_job(job_id, misfire_grace_time=_grace(interval))
                continue
            self.scheduler.add_job(
                self._job, trigger, args=("probe", model_id), id=job_id,
                coalesce=True, max_instances=1, misfire_grace_time=_grace(interval),
            )

    def _recovering(self, model_id: str) -> bool:
        """Whether a pending recovery probe of the model still has a period to end (a changed
        model got a fresh, closed breaker)."""
        breaker = self.service.health.breaker(model_id)  # None: the model was removed
        return breaker is not None and breaker.state is not BreakerState.CLOSED

    async def stop(self) -> None:
        """Stops scheduling and ends the probes in flight (they would only delay the exit)."""
        self._stopping = True
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is not None and scheduler.running:
            scheduler.pause()  # no job is handed to the executor from now on
            # a job handed over just before has a task that has not started: let it start
            # and end at once (_job), rather than be cancelled by the shutdown before its
            # first step, which APScheduler logs as a failed job with a traceback
            await asyncio.sleep(0)
            scheduler.shutdown(wait=False)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _job(self, job: str, model_id: str) -> bool | None:
        """Entry point of every scheduled job, tracked so that ``stop()`` can end it quietly
        (APScheduler would log a cancelled job as a failure)."""
        if self._stopping:
            return None  # handed over as the prober stopped: nothing to probe for
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if job == "recover":
                return await self.recover(model_id)
            if job == "credentials":
                return await self.credentials_ended(model_id)  # a provider's name here
            return await self.scheduled(model_id)
        except asyncio.CancelledError:
            if self._stopping:
                return None
            raise
        finally:
            if task is not None:
                self._tasks.discard(task)

    # ------------------------------------------------------------------ probing

    def _breaker_changed(self, model_id: str, state: BreakerState) -> None:
        if self.scheduler is None:
            return
        if state not in _OPEN_STATES:
            if state is BreakerState.CLOSED:
                # closed by a reset or a trial: the pending recovery probe has nothing to do
                with contextlib.suppress(JobLookupError):
                    self.scheduler.remove_job(f"recover:{model_id}")
            return
        wait = self.service.health.retry_in(model_id)
        if wait is None:
            return  # forced open until reset: nothing to recover to
        self._schedule_recovery(model_id, wait + 0.01)

    def _schedule_recovery(self, model_id: str, wait: float) -> None:
        """Runs the model's recovery probe `wait` seconds from now (replacing a pending one)."""
        if self.scheduler is None:
            return
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait)
        self.scheduler.add_job(self._job, DateTrigger(run_date=when), args=("recover", model_id),
                               id=f"recover:{model_id}", replace_existing=True,
                               misfire_grace_time=None)

    def _credentials_changed(self, provider: str, state: str) -> None:
        """A provider's auth or billing block began, changed or ended: its end is watched."""
        if self.scheduler is None:
            return
        wait = self.service.health.provider_retry_in(provider)
        if state == "ok" or wait is None:
            with contextlib.suppress(JobLookupError):
                self.scheduler.remove_job(f"credentials:{provider}")
            return
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait + 0.01)
        self.scheduler.add_job(self._job, DateTrigger(run_date=when),
                               args=("credentials", provider), id=f"credentials:{provider}",
                               replace_existing=True, misfire_grace_time=None)

    async def credentials_ended(self, provider: str) -> bool | None:
        """The job at the end of a provider's auth or billing block: the block's end is applied
        (provider:credentials ok, MQTT state) when it comes, not at the next request or status
        query; without scheduled probes, one model of the provider then gets a recovery probe,
        so no client has to find out whether the key works again."""
        health = self.service.health
        cfg = self.service.runtime.config
        if provider not in cfg.providers:
            return None
        if health.provider_state(provider) != "ok":
            self._credentials_changed(provider, health.provider_state(provider))  # later
            return None
        if cfg.probes.kind != "none" or cfg.probes.recovery_kind == "none":
            return None  # the scheduled probes (or the next request) find out
        for model_id, model in cfg.models.items():
            breaker = health.breaker(model_id)
            if model.provider == provider and breaker is not None and breaker.can_acquire():
                return await self.probe(model_id, cfg.probes.recovery_kind)
        return None

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
        if cfg.probes.recovery_kind == "none":
            # no probe, but the period's end is applied now, not at the next request: the
            # breaker goes half-open and says so (event, MQTT state) while traffic is away
            self.service.health.settle(model_id)
            return False
        return await self.probe(model_id, cfg.probes.recovery_kind)

    async def scheduled(self, model_id: str) -> bool | None:
        """The interval job: probes the model unless its open period is still running.

        Returns the probe's outcome, or None when it was skipped.
        """
        health = self.service.health
        cfg = self.service.runtime.config
        breaker = health.breaker(model_id)
        if breaker is None or model_id not in cfg.models:
            return None
        if breaker.state in _OPEN_STATES and not breaker.can_acquire():
            return None
        kind = cfg.probes.kind
        provider = cfg.models[model_id].provider
        blocked = health.provider_state(provider) != "ok"
        if blocked and not self._blocked_provider_turn(provider):
            return None
        # a half-open breaker (its period over) is closed by this probe's success: that takes
        # the recovery probe's kind, or a model list would end every open period of a model
        # whose completions fail, and reset its backoff each time
        if cfg.probes.recovery_kind != "none" and (
                blocked or breaker.state is not BreakerState.CLOSED):
            kind = cfg.probes.recovery_kind
        return await self.probe(model_id, kind)

    def _blocked_provider_turn(self, provider: str) -> bool:
        """Whether a scheduled probe may go to the blocked `provider` now: one per interval
        for the provider, not one per model (every model's job, all failing on the same key)."""
        probes = self.service.runtime.config.probes
        now = asyncio.get_running_loop().time()
        last = self._blocked_probed.get(provider)
        # runs of one job are at least interval - jitter apart; a little less, so the model
        # whose turn it was last time may have it again
        if last is not None and now - last < 0.9 * max(0.0, probes.interval - probes.jitter):
            return False
        self._blocked_probed[provider] = now
        return True

    async def probe(self, model_id: str, kind: ProbeKind | None = None, *,
                    operator: bool = False) -> bool:
        """Probes one model now; the outcome feeds the health registry, metrics and events.

        `kind` defaults to ``probes.kind``; for an `operator` probe, to ``recovery_kind`` when
        the model is not up. An operator probe never degrades to "none".
        """
        rt = self.service.runtime
        cfg = rt.config
        model = cfg.models.get(model_id)
        if model is None:
            return False
        if kind is None:
            kind = cfg.probes.kind
            if operator and self.service.health.model_state(model_id) != "closed":
                kind = cfg.probes.recovery_kind
            if operator and kind == "none":
                kind = cfg.probes.kind if cfg.probes.kind != "none" else "models"
        if kind == "none":
            return True
        if model.kind in ("transcription", "speech"):
            kind = "models"  # no speech to send: its provider's models listing (as logged)
        provider = rt.providers[model.provider]
        # a reload during the probe that changes the model or its provider (a new key, URL)
        # replaces its breaker: the answer to the old settings says nothing about the new ones
        breaker = self.service.health.breaker(model_id)
        started = self.clock.monotonic()
        reason: FailureReason | None = None
        retry_after: float | None = None
        message = ""
        try:
            async with asyncio.timeout(cfg.probes.timeout):
                if model.embedding and kind == "chat":
                    # an embedding model answers no chat: the call its clients make instead
                    await provider.embed({"model": model.id, "input": "ping"}, model,
                                         probe_limits(cfg.probes.timeout,
                                                      provider.config.connect_timeout))
                elif model.kind in ("transcription", "speech"):
                    await _probe_speech_server(provider, model, cfg.probes.timeout)
                else:
                    await provider.probe(model, kind, cfg.probes.timeout,
                                         cfg.probes.chat_max_tokens)
        except UpstreamError as exc:
            if exc.local:  # failoverd's own trouble says nothing about the model
                logger.warning("probe (%s) of %s could not run: %s", kind, model_id, exc.message)
                return False
            reason, retry_after, message = exc.reason, exc.retry_after, exc.message
        except TimeoutError:
            reason, message = FailureReason.TIMEOUT, "probe timed out"
        latency = self.clock.monotonic() - started
        ok = reason is None
        if breaker is None or not self.service.health.current(breaker):
            logger.info("probe (%s) of %s ended after a reload changed it: ignored",
                        kind, model_id)
            return ok
        self.service.metrics.probe(model_id, ok)
        self.service.health.record_probe(model_id, ok, latency, reason, retry_after,
                                         operator=operator)
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
            logger.warning("probe (%s) of %s failed: %s", kind, model_id, reason)
        return ok


def _grace(interval: float) -> int:
    # a probe that could not start on time (a busy loop, a suspended machine) still runs if
    # it is at most one interval late; later than that the next one is as good
    return max(1, math.ceil(interval))


async def _probe_speech_server(provider: Provider, model: ModelConfig,
                               limit: float) -> None:
    """A transcription model's probe, of either kind: a probe has no speech to send, so the
    provider's models listing (reachability and the key); a speech server without one
    (whisper.cpp's answers 404) has answered all the same."""
    try:
        await provider.probe(model, "models", limit, 1)
    except UpstreamError as exc:
        if exc.status not in (404, 405):
            raise
