"""The attempt loop: one request down its candidates, with retries, backoff and one deadline.

Decisions follow the failure reason's policy (failures.POLICY): same-model retries with jittered
exponential backoff for transient faults, a 429's Retry-After honoured up to retry_after_max,
bad_request returned to the client unchanged, everything else fails over to the next candidate.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from failoverd import requestid
from failoverd.clock import Clock
from failoverd.config import Config, ContextPolicy, ModelConfig
from failoverd.errors import (
    Attempt,
    ContextRefused,
    NoModelAvailable,
    RequestError,
    UpstreamError,
)
from failoverd.failures import FailureReason, policy
from failoverd.fitting import answer_room, cap_output, fit_context, lacking
from failoverd.hedge import HedgeFailed, HedgeInfo, pick_target
from failoverd.hedge import afters as hedge_afters
from failoverd.hedge import run as hedge_run
from failoverd.hedgebudget import HedgeBudgets
from failoverd.providers.base import AttemptLimits, Chunk, Completion, Provider, RateLimitSink
from failoverd.requirements import Requirements
from failoverd.timeouts import timeout

_RATE_LIMIT_KINDS = frozenset({"openai", "anthropic"})  # see upstreamlimits.py
logger = logging.getLogger(__name__)

BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0
# Time left below this counts as none: uvloop's timers have millisecond resolution and fire up
# to a millisecond early, so an attempt cut by the request's deadline finds a hair of it left;
# failing over with that would list (and charge) a fallback that could not have answered.
DEADLINE_SLACK = 0.002


class Permit(Protocol):
    def success(self, duration: float) -> None: ...
    def failure(self, reason: FailureReason, duration: float,
                retry_after: float | None) -> None:
        """Records a failure; a reason that does not count only gives the permit back."""
        ...
    def release(self, *, called: bool = True) -> None: ...


class Health(Protocol):
    """What the dispatcher needs of the breakers (health.HealthRegistry)."""

    @property
    def upstream(self) -> RateLimitSink:
        """Takes the upstreams' rate-limit headers (upstreamlimits.py)."""
        ...

    def acquire(self, model_id: str) -> Permit | None: ...
    def available(self, model_id: str) -> tuple[bool, str | None]: ...
    def earliest_available_in(self, model_ids: Sequence[str]) -> float | None: ...
    def out_longer_than(self, model_ids: Sequence[str], seconds: float) -> bool: ...
    def inflight(self, model_id: str) -> int: ...
    def wait_for_change(self) -> Coroutine[Any, Any, Literal[True]]: ...


@dataclass(slots=True)
class FailoverInfo:
    """Handed to the failover hook before a fallback attempt."""

    from_model: str
    to_model: str
    error: UpstreamError
    attempt: int
    session: str | None
    session_tokens: int | None
    target_context_window: int | None
    # seconds left of the request's deadline: the hooks the request waits for get no more
    time_left: float | None = None
    request_id: str | None = None  # the client request's (requestid.py)


@dataclass(slots=True)
class FailoverVerdict:
    """What the model:failover hooks decided."""

    abort: bool = False
    messages: tuple[str, ...] = ()
    context: ContextPolicy | None = None  # overrides routing.context_policy for this attempt


# Called before each fallback attempt; may abort, add notices, or choose the context policy.
FailoverHook = Callable[[FailoverInfo], Awaitable[FailoverVerdict]]


@dataclass(slots=True)
class Outcome:
    """Bookkeeping of one request across its attempts (becomes response headers)."""

    model: str = ""
    upstream_attempts: int = 0
    failovers: list[str] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    # the client's x-failoverd-deadline is shorter than routing.deadline: a timeout it caused
    # is not held against the model (see Dispatcher._try_model)
    client_deadline: bool = False
    # what the answer cost (USD) at the serving model's prices, once its usage is known
    cost: float = 0.0
    # hedged attempts, `from>to:outcome` (x-failoverd-hedge); a tuple: nothing to allocate
    # for the requests that are not hedged
    hedges: tuple[str, ...] = ()
    # the request's id (x-request-id) and the one the serving upstream gave its answer
    # (requestid.py): for the access log and the events
    request_id: str | None = None
    upstream_request_id: str | None = None


@dataclass(slots=True)
class StreamStart:
    """A stream whose first chunk has arrived: headers can be sent now."""

    first: Chunk
    rest: AsyncIterator[Chunk]
    permit: Permit | None
    started: float


# A provider's non-streaming call other than a chat (embed, complete_text, ...)
_Answer = Callable[[dict[str, Any], ModelConfig, AttemptLimits], Awaitable[Completion]]
# A provider's streaming call (stream, stream_text, speak, stream_transcript)
_Stream = Callable[[dict[str, Any], ModelConfig, AttemptLimits], AsyncIterator[Chunk]]
# One (streaming) attempt: provider, model, request, limits, the breaker's permit.
_Call = Callable[[Provider, ModelConfig, dict[str, Any], AttemptLimits, Permit | None],
                 Awaitable[Any]]


class Dispatcher:
    """Runs requests down candidate chains against providers."""

    def __init__(self, config: Config, providers: dict[str, Provider], *, clock: Clock,
                 health: Health | None = None, rng: random.Random | None = None,
                 failover_hook: FailoverHook | None = None,
                 on_failover: Callable[[FailoverInfo], None] | None = None,
                 on_exhausted: Callable[[list[Attempt], str | None], None] | None = None,
                 observe_latency: Callable[[str, float, bool], None] | None = None,
                 on_hedge: Callable[[HedgeInfo], None] | None = None,
                 hedge_budget: HedgeBudgets | None = None) -> None:
        self.config = config
        self.providers = providers
        self.clock = clock
        self.health = health
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.failover_hook = failover_hook
        self.on_failover = on_failover
        self.on_exhausted = on_exhausted
        self.observe_latency = observe_latency
        self.on_hedge = on_hedge
        # how many hedges each model may start (hedgebudget.py; the Service's, which outlives
        # reloads); None: no budget
        self.hedge_budget = hedge_budget
        # the models whose attempts are hedged, and after how long: empty when hedging is off,
        # so a request pays one emptiness test for it (hedge.py)
        self.hedge_after = hedge_afters(config)

    # ------------------------------------------------------------------ public

    def complete(self, body: dict[str, Any], candidates: Sequence[str], deadline: float,
                 outcome: Outcome, session: str | None = None,
                 needs: Requirements | None = None) -> Coroutine[Any, Any, Completion]:
        """A non-streaming completion (await it). Not a coroutine function itself: the
        attempt loop's coroutine is handed over as it is, one frame less for every await
        on the hot path to pass through."""
        result: Coroutine[Any, Any, Completion] = self._run(body, candidates, deadline,
                                                            outcome, session, needs, None)
        return result

    def stream(self, body: dict[str, Any], candidates: Sequence[str], deadline: float,
               outcome: Outcome, session: str | None = None,
               needs: Requirements | None = None, *,
               text: bool = False) -> Coroutine[Any, Any, StreamStart]:
        """A stream whose first chunk has arrived (await it); `text`: a legacy text
        completion's."""
        method = _stream_text if text else _stream_chat
        return self._stream(method, body, candidates, deadline, outcome, session, needs)

    def speak(self, body: dict[str, Any], candidates: Sequence[str], deadline: float,
              outcome: Outcome) -> Coroutine[Any, Any, StreamStart]:
        """Text to speech, streamed as a chat is (see Provider.speak): await it for the
        stream whose first audio has arrived; no context screening."""
        return self._stream(_stream_speech, body, candidates, deadline, outcome, None, None)

    async def _stream(self, method: Callable[[Provider], _Stream], body: dict[str, Any],
                      candidates: Sequence[str], deadline: float, outcome: Outcome,
                      session: str | None, needs: Requirements | None) -> StreamStart:
        """A stream of the providers' `method` down the candidates, once its first chunk
        has arrived."""
        async def call(provider: Provider, model: ModelConfig, req: dict[str, Any],
                       limits: AttemptLimits, permit: Permit | None) -> StreamStart:
            started = self.clock.monotonic()
            it = method(provider)(req, model, limits).__aiter__()
            try:
                # a backstop for adapters that see bytes before the first token (pings,
                # message_start): the first chunk must come within first_token all the same
                with timeout(limits.first_token):
                    first = await it.__anext__()
            except TimeoutError:
                await _aclose(it)
                raise UpstreamError(FailureReason.TIMEOUT, "no first token within the time limit",
                                    provider=provider.config.name, model=model.id) from None
            except StopAsyncIteration:
                raise UpstreamError(FailureReason.INVALID_RESPONSE, "stream ended before any data",
                                    status=200, provider=provider.config.name,
                                    model=model.id) from None
            except BaseException:
                await _aclose(it)
                raise
            return StreamStart(first, it, permit, started)

        start: StreamStart = await self._run(body, candidates, deadline, outcome, session,
                                             needs, call, streaming=True)
        return start

    async def embed(self, body: dict[str, Any], candidates: Sequence[str], deadline: float,
                    outcome: Outcome) -> Completion:
        """Embeddings: the same attempt loop (breakers, retries, failover down an embedding
        chain, hooks, events), with no context screening (needs None)."""
        return await self._answer(lambda p: p.embed, body, candidates, deadline, outcome)

    async def complete_text(self, body: dict[str, Any], candidates: Sequence[str],
                            deadline: float, outcome: Outcome) -> Completion:
        """A legacy text completion, not streamed: the attempt loop, no context screening."""
        return await self._answer(lambda p: p.complete_text, body, candidates, deadline,
                                  outcome)

    async def transcribe(self, body: dict[str, Any], candidates: Sequence[str],
                         deadline: float, outcome: Outcome) -> Completion:
        """Audio to text (`body`: the form and the task, see Provider.transcribe)."""
        return await self._answer(lambda p: p.transcribe, body, candidates, deadline, outcome)

    def stream_transcript(self, body: dict[str, Any], candidates: Sequence[str],
                          deadline: float, outcome: Outcome) -> Coroutine[Any, Any, StreamStart]:
        """A streamed transcription (see Provider.stream_transcript): await it for the
        stream whose first event has arrived."""
        return self._stream(_stream_transcript, body, candidates, deadline, outcome, None,
                            None)

    async def _answer(self, method: Callable[[Provider], _Answer], body: dict[str, Any],
                      candidates: Sequence[str], deadline: float,
                      outcome: Outcome) -> Completion:
        """A non-streaming answer of the providers' `method` down the candidates."""
        async def call(provider: Provider, model: ModelConfig, req: dict[str, Any],
                       limits: AttemptLimits, permit: Permit | None) -> Completion:
            started = self.clock.monotonic()
            result = await method(provider)(req, model, limits)
            self._succeeded(model.id, permit, started)
            return result

        result: Completion = await self._run(body, candidates, deadline, outcome, None, None,
                                             call)
        return result

    def stream_finished(self, model_id: str, start: StreamStart,
                        error: UpstreamError | None) -> None:
        """Records the end of a stream that was handed to the client."""
        if error is None:
            self._succeeded(model_id, start.permit, start.started)
            return
        duration = self.clock.monotonic() - start.started
        if start.permit is not None:
            # reasons that say nothing about the model only give the permit back
            start.permit.failure(error.reason, duration, error.retry_after)
        if error.reason is not FailureReason.CANCELLED and self.observe_latency is not None:
            self.observe_latency(model_id, duration, False)  # broke after its first chunk

    # ------------------------------------------------------------------ loop

    def _succeeded(self, model_id: str, permit: Permit | None, started: float) -> None:
        duration = self.clock.monotonic() - started
        if permit is not None:
            permit.success(duration)
        if self.observe_latency is not None:
            self.observe_latency(model_id, duration, True)

    async def _run(self, body: dict[str, Any], candidates: Sequence[str], deadline: float,
                   outcome: Outcome, session: str | None, needs: Requirements | None,
                   call: _Call | None, streaming: bool = False) -> Any:
        cfg = self.config
        hedging = self.hedge_after
        tried: tuple[str, ...] = ()  # models a hedge called already (see _hedged)
        queued = False
        first_pass = len(outcome.attempts)
        while True:  # at most twice: once more after waiting in the queue
            last_error: UpstreamError | None = None
            last_model = ""
            # the last real failure (not a skip for an open breaker): the hop it starts is
            # announced (model:failover, hooks, the counter) to the next model really called
            failed: UpstreamError | None = None
            failed_model = ""
            outcome.failovers.clear()
            min_context: int | None = None
            only_skipped = True  # no candidate was really tried
            unavailable: list[str] = []  # skipped for breaker/credentials: may come back
            for model_id in candidates:
                if tried and model_id in tried:
                    continue
                model = cfg.models[model_id]
                if min_context is not None and (model.context_window or 0) <= min_context:
                    outcome.attempts.append(Attempt(
                        model_id, FailureReason.INCAPABLE, None,
                        f"context window {model.context_window or 'unknown'} is not larger "
                        f"than {min_context}"))
                    continue
                verdict = FailoverVerdict()
                info: FailoverInfo | None = None
                missing = lacking(model, needs)
                if missing is not None:
                    outcome.attempts.append(Attempt(model_id, FailureReason.INCAPABLE, None,
                                                    missing))
                    continue
                if last_error is not None:
                    outcome.failovers.append(f"{last_model}>{model_id}:{last_error.reason}")
                    if failed is not None and (self.health is None
                                               or self.health.available(model_id)[0]):
                        info = FailoverInfo(
                            failed_model, model_id, failed, outcome.upstream_attempts,
                            session, needs.prompt_tokens if needs is not None else None,
                            model.context_window, self._remaining(deadline),
                            outcome.request_id)
                        verdict = await self._before_failover(info, outcome)
                        if verdict.abort:
                            outcome.failovers.pop()  # the hop was never taken
                            raise failed
                default_output = self.providers[model.provider].default_output(model)
                try:
                    fitted, skip = fit_context(model, body, needs,
                                               verdict.context or cfg.routing.context_policy,
                                               outcome.notices, default_output)
                except ContextRefused:
                    if last_error is not None:
                        outcome.failovers.pop()  # `fail` ends it here: the hop is not taken
                    raise
                if skip is not None:
                    if last_error is not None:
                        outcome.failovers.pop()
                    outcome.attempts.append(Attempt(model_id, FailureReason.INCAPABLE, None,
                                                    skip))
                    continue
                req = cap_output(fitted, model, answer_room(model, needs, fitted is not body,
                                                            default_output))
                if info is not None and self.on_failover is not None:
                    self.on_failover(info)  # counted only when the fallback is really tried
                try:
                    # the last candidate (a pinned request's only one) has none to hedge to:
                    # no task, no timer
                    if hedging and model_id in hedging and model_id != candidates[-1]:
                        served, result = await self._hedged(
                            model, req, body, deadline, outcome, call, streaming,
                            hedging[model_id], candidates, needs, min_context, session,
                            tried)
                    else:
                        served = model_id
                        result = await self._try_model(model, req, deadline, outcome, call,
                                                       streaming)
                except UpstreamError as exc:
                    failures: list[tuple[str, UpstreamError]] = [(model_id, exc)]
                except HedgeFailed as exc:  # both of a hedge failed: the chain goes on
                    failures = exc.failures
                    tried = (*tried, *(m for m, _ in failures))
                else:
                    outcome.model = served
                    return result
                spent = False
                refusal: UpstreamError | None = None
                for failed_id, error in failures:
                    if error.reason is FailureReason.UNAVAILABLE:
                        unavailable.append(failed_id)
                    elif error.reason is not FailureReason.INCAPABLE:
                        only_skipped = False
                    outcome.attempts.append(Attempt(failed_id, error.reason, error.status,
                                                    error.message, error.upstream_request_id))
                    if not policy(error.reason).fail_over:
                        refusal = refusal or error
                        continue
                    if error.reason is FailureReason.TIMEOUT and self._spent(deadline):
                        spent = True
                    if error.reason is FailureReason.CONTEXT_OVERFLOW:
                        min_context = max(min_context or 0,
                                          cfg.models[failed_id].context_window or 0)
                    last_error, last_model = error, failed_id
                    if error.reason is not FailureReason.UNAVAILABLE:
                        failed, failed_model = error, failed_id
                if refusal is not None:
                    raise refusal
                if spent:
                    break
            if (not queued and only_skipped and unavailable
                    and cfg.routing.when_all_unavailable == "queue" and self.health is not None):
                queued = True
                # wait only for models that can come back: incapable ones never will
                if await self._queue(unavailable, deadline):
                    del outcome.attempts[first_pass:]  # the skips are history, not attempts
                    continue
            break
        # the soonest any candidate may be called again: those skipped as unavailable and
        # those that failed (whose breaker the failure may have opened), not the incapable
        incapable = {a.model for a in outcome.attempts[first_pass:]
                     if a.reason == FailureReason.INCAPABLE}
        retry_after = self._retry_after([m for m in candidates if m not in incapable]
                                        or candidates)
        if self.on_exhausted is not None:
            self.on_exhausted(outcome.attempts, outcome.request_id)
        raise NoModelAvailable(outcome.attempts, retry_after)

    async def _try_model(self, model: ModelConfig, body: dict[str, Any], deadline: float,
                         outcome: Outcome,
                         call: _Call | None, streaming: bool = False,
                         admitted: Permit | None = None,
                         notices: list[str] | None = None,
                         ids: list[str | None] | None = None) -> Any:
        """One model, with its same-model retries. `call` makes a (streaming) attempt; None
        is a plain completion, called here directly (the hot path). `admitted`: the permit
        of the first call, taken already (a hedge's); `notices`: where the adapter's notices
        go, when not the request's (a hedged attempt's own, see _hedged); `ids`: where the
        upstream request id of its answer goes, when not the request's (the same)."""
        provider = self.providers[model.provider]
        pcfg = provider.config
        retries = 0
        while True:
            remaining = self._remaining(deadline)
            permit: Permit | None = admitted
            admitted = None
            if remaining <= DEADLINE_SLACK:
                if permit is not None:
                    permit.release(called=False)
                raise UpstreamError(FailureReason.TIMEOUT, "request deadline exhausted",
                                    provider=pcfg.name, model=model.id)
            if permit is None and self.health is not None:
                permit = self.health.acquire(model.id)
                if permit is None:
                    _, why = self.health.available(model.id)
                    raise UpstreamError(FailureReason.UNAVAILABLE, why or "breaker open",
                                        provider=pcfg.name, model=model.id)
            limits = AttemptLimits(
                total=min(pcfg.timeout, remaining),
                connect=min(pcfg.connect_timeout, remaining),
                first_token=min(model.first_token_timeout, remaining),
                idle=model.stream_idle_timeout,
                notices=outcome.notices if notices is None else notices,
                # the kinds whose upstreams send rate-limit headers, unless switched off
                upstream=self.health.upstream if self.health is not None
                and pcfg.rate_limit_headers and pcfg.kind in _RATE_LIMIT_KINDS else None,
            )
            outcome.upstream_attempts += 1
            seen = requestid.watch()  # the upstream's id for this attempt (providers/http.py)
            started = self.clock.monotonic()
            try:
                if call is None:
                    result = await provider.complete(body, model, limits)
                    self._succeeded(model.id, permit, started)
                else:
                    result = await call(provider, model, body, limits, permit)
                if ids is None:
                    outcome.upstream_request_id = seen.id
                else:  # a hedged lane's: _hedged keeps the one that served
                    ids.append(seen.id)
                return result
            except RequestError as exc:
                # this provider's API cannot express the request (the front end validated it):
                # not the model's fault, and the next candidate may well be able to
                if permit is not None:
                    permit.release(called=False)
                outcome.upstream_attempts -= 1
                raise UpstreamError(FailureReason.INCAPABLE, exc.message, provider=pcfg.name,
                                    model=model.id) from exc
            except (TypeError, AttributeError, KeyError, ValueError) as exc:
                # a request shape an adapter did not foresee: a bug to fix, but not a reason to
                # fail the client with a 500 when another candidate may serve it
                logger.exception("adapter %s could not handle a request for %s (request %s)",
                                 pcfg.kind, model.id, outcome.request_id)
                if permit is not None:
                    permit.release()
                outcome.upstream_attempts -= 1
                raise UpstreamError(FailureReason.INCAPABLE,
                                    f"{pcfg.kind} adapter cannot handle this request: "
                                    f"{type(exc).__name__}: {exc}"[:300],
                                    provider=pcfg.name, model=model.id) from exc
            except UpstreamError as exc:
                if exc.upstream_request_id is None:
                    exc.upstream_request_id = seen.id
                if exc.reason is FailureReason.TIMEOUT and self._spent(deadline):
                    exc.message = f"{exc.message} (request deadline exhausted)"
                duration = self.clock.monotonic() - started
                own_limit = model.first_token_timeout if streaming else pcfg.timeout
                if permit is None:
                    pass
                elif exc.local:
                    # failoverd's own trouble (out of resources before a connection): not the
                    # model's failure, and no call of its minute
                    permit.release(called=False)
                elif (exc.reason is FailureReason.TIMEOUT and outcome.client_deadline
                        and remaining < own_limit):
                    # the client's own short deadline cut the attempt before the limits the
                    # operator gave the model: not the model's failure (another client's
                    # impatience must not open its breaker for everyone)
                    permit.release()
                else:
                    permit.failure(exc.reason, duration, exc.retry_after)
                if self.observe_latency is not None and not exc.local:
                    self.observe_latency(model.id, duration, False)
                wait = self._retry_wait(exc, model, retries, deadline)
                if wait is None:
                    raise
                retries += 1
                logger.info("retrying %s after %s in %.3fs (request %s)", model.id, exc.reason,
                            wait, outcome.request_id)
                if wait > 0:
                    await asyncio.sleep(wait)
            except BaseException:
                if permit is not None:
                    permit.release()
                raise

    # ------------------------------------------------------------------ hedging

    async def _hedged(self, model: ModelConfig, req: dict[str, Any], body: dict[str, Any],
                      deadline: float, outcome: Outcome, call: _Call | None, streaming: bool,
                      after: float, candidates: Sequence[str], needs: Requirements | None,
                      min_context: int | None, session: str | None,
                      tried: tuple[str, ...]) -> tuple[str, Any]:
        """`model`'s attempt, raced by the next candidate available now once it has no first
        byte after `after` seconds (hedge.run): (the model that served, its result). Raises
        as _try_model does, or HedgeFailed when both attempts failed."""
        if after >= self._remaining(deadline) - DEADLINE_SLACK:
            # no hedge could start before the deadline: the plain attempt
            return model.id, await self._try_model(model, req, deadline, outcome, call,
                                                   streaming)

        # an attempt that could be hedged: its model's budget counts it (None: no budget)
        allow = None if self.hedge_budget is None else self.hedge_budget.armed(model.id)
        # each call's adapter notices apart: only the served answer's reach the client
        # (a cancelled loser's "sent again without cache points" is not about the answer)
        mine: list[str] = []
        theirs: list[str] = []
        # ... and their upstream request ids (a loser may answer in the winner's loop turn)
        my_id: list[str | None] = []
        their_id: list[str | None] = []

        def hedge_to() -> tuple[str, Coroutine[Any, Any, Any], Permit | None] | None:
            target = pick_target(self.config, self.health, self.providers, model.id, body,
                                 candidates, needs, min_context, tried)
            if target is None:
                return None
            to, to_req, permit = target
            return to.id, self._try_model(to, to_req, deadline, outcome, call, streaming,
                                          permit, theirs, their_id), permit

        try:
            served, result = await hedge_run(
                model.id, self._try_model(model, req, deadline, outcome, call, streaming,
                                          None, mine, my_id),
                after, hedge_to, HedgeInfo(model.id, "", after, "cancelled", None, session,
                                           request_id=outcome.request_id),
                outcome, self.on_hedge, _discard, allow)
        except HedgeFailed:
            outcome.notices.extend(mine + theirs)  # as any failed attempts' before a failover
            raise
        except BaseException:
            outcome.notices.extend(mine)  # the original's refusal: its notices, as unhedged
            raise
        outcome.notices.extend(mine if served == model.id else theirs)
        outcome.upstream_request_id = next(iter(my_id if served == model.id else their_id),
                                           None)
        return served, result

    # ------------------------------------------------------------------ helpers

    async def _before_failover(self, info: FailoverInfo, outcome: Outcome) -> FailoverVerdict:
        verdict = FailoverVerdict()
        if self.failover_hook is not None:
            verdict = await self.failover_hook(info)
            outcome.notices.extend(verdict.messages)
        return verdict

    def _remaining(self, deadline: float) -> float:
        return deadline - self.clock.monotonic()

    def _spent(self, deadline: float) -> bool:
        return self._remaining(deadline) <= DEADLINE_SLACK

    def _retry_wait(self, exc: UpstreamError, model: ModelConfig, retries: int,
                    deadline: float) -> float | None:
        """Seconds to wait before retrying the same model, or None for no retry."""
        pol = policy(exc.reason)
        if not pol.retry_same:
            return None
        limit = min(1, model.max_retries) if pol.retry_once else model.max_retries
        if retries >= limit:
            return None
        if exc.reason is FailureReason.RATE_LIMIT:
            if exc.retry_after is None or exc.retry_after > self.config.routing.retry_after_max:
                return None
            wait = exc.retry_after
        else:
            # full jitter (AWS architecture blog): uniform in [0, base * 2^n], capped
            wait = self.rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * (2 ** retries)))
        if wait >= self._remaining(deadline):
            return None
        if self.health is not None and not self.health.available(model.id)[0]:
            return None  # the failure opened the breaker: move on
        return wait

    async def _queue(self, candidates: Sequence[str], deadline: float) -> bool:
        """Waits for the first candidate to come back, within queue_timeout and the deadline."""
        assert self.health is not None
        limit = min(self.config.routing.queue_timeout, self._remaining(deadline))
        if self.health.out_longer_than(candidates, limit):
            return False  # nothing comes back in time: the 503 and its Retry-After now
        end = self.clock.monotonic() + limit
        # waits are real time; bound them by the loop's clock too, whatever clock is injected
        loop = asyncio.get_running_loop()
        real_end = loop.time() + limit
        expiries = 0
        # bounded by the time left and by the expiries waited for; not by the changes that
        # woke it, which a busy daemon makes many of (every call that ends, on any model)
        while expiries < 1000:
            if any(self.health.available(m)[0] for m in candidates):
                return True
            left = min(end - self.clock.monotonic(), real_end - loop.time())
            if left <= 0:
                return False
            soonest = self.health.earliest_available_in(candidates)
            step = left if soonest is None else min(left, max(soonest, 0.001))
            try:
                await asyncio.wait_for(self.health.wait_for_change(), step)
            except TimeoutError:
                expiries += 1
        return False

    def _retry_after(self, candidates: Sequence[str]) -> float:
        if self.health is not None:
            soonest = self.health.earliest_available_in(candidates)
            if soonest is not None:
                return max(1.0, soonest)
        return 1.0


def _stream_chat(provider: Provider) -> _Stream:
    return provider.stream


def _stream_text(provider: Provider) -> _Stream:
    return provider.stream_text


def _stream_speech(provider: Provider) -> _Stream:
    return provider.speak


def _stream_transcript(provider: Provider) -> _Stream:
    return provider.stream_transcript


async def _discard(late: Any) -> Any:
    """Closes the answer of a hedge's loser that came at the same moment as the winner's;
    returns the usage it reported, which counts all the same (None if none)."""
    if isinstance(late, StreamStart):
        try:
            await _aclose(late.rest)
        finally:
            if late.permit is not None:
                late.permit.release()
        return late.first.data.get("usage")
    body = getattr(late, "body", None)  # a Completion: its success was recorded
    return body.get("usage") if isinstance(body, dict) else None


async def _aclose(it: AsyncIterator[Chunk]) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()
