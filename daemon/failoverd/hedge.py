"""Hedged requests: an attempt that is slow to its first byte races the next candidate.

When an attempt on a model has not produced its first byte (a stream's first chunk; a plain
call's whole answer) after the model's `hedge_after` seconds, the dispatcher starts the next
candidate that is available now alongside it (dispatch.Dispatcher._hedged). The first of the
two to answer wins; the other is cancelled at once: its upstream connection closed, its
permit given back without an outcome, so its breaker does not count it. A failure of either
is counted as usual while the other goes on; when both fail, the chain goes on after them.

This module holds what that needs apart from the attempt loop: the choice of the hedge, the
hedged attempt and the race of its two calls, and the report (event, metric, the loser's
usage) of each hedge. The config keys are read in catalog.py (read_hedge_after); how many
hedges a model may start is its hedge budget's (hedgebudget.py): one the budget refuses is
not started, and is reported with outcome `budget`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from failoverd.errors import Attempt, UpstreamError
from failoverd.failures import FailureReason, policy
from failoverd.fitting import answer_room, cap_output, lacking
from failoverd.selection import context_reason
from failoverd.timeouts import timeout
from failoverd.upstreamlimits import adopt

if TYPE_CHECKING:
    from failoverd.config import Config, ModelConfig
    from failoverd.dispatch import Health, Outcome, Permit
    from failoverd.events import EventBus
    from failoverd.metrics import Metrics
    from failoverd.providers.base import Provider
    from failoverd.requirements import Requirements

__all__ = ["HedgeFailed", "HedgeInfo", "Lane", "abandon", "afters", "cancel_all", "pick_target",
           "race", "reporter", "run"]

logger = logging.getLogger(__name__)

# won: the hedge served; lost: the attempt it hedged served first; failed: the hedge failed;
# cancelled: the request ended (the client left, a refusal no candidate gets past) first;
# budget: the model's hedge budget refused it, so it was never started
HedgeOutcome = Literal["won", "lost", "failed", "cancelled", "budget"]


@dataclass(slots=True)
class HedgeInfo:
    """One hedge, once it is decided: for the `model:hedged` event and the counter."""

    from_model: str
    to_model: str
    after: float  # the hedge_after that started it (seconds)
    outcome: HedgeOutcome
    winner: str | None  # the model that served, if one of the two did
    session: str | None
    # the usage of a loser that answered in full at the same moment as the winner
    loser: str | None = None
    loser_usage: Any = None
    request_id: str | None = None  # the client request's (requestid.py)

    def header(self) -> str:
        """Its part of x-failoverd-hedge: `from>to:outcome`."""
        return f"{self.from_model}>{self.to_model}:{self.outcome}"


class HedgeFailed(Exception):
    """Both attempts of a hedge failed, the original in a way the chain goes on after (the
    hedge perhaps with a refusal): (model, error) each, in the order they failed. An internal
    signal of the attempt loop, outside errors.py's tree: it never leaves the dispatcher."""

    def __init__(self, failures: list[tuple[str, UpstreamError]]) -> None:
        super().__init__(f"{len(failures)} hedged attempts failed")
        self.failures = failures


@dataclass(slots=True)
class Lane:
    """One of the two racing attempts."""

    model: str
    task: asyncio.Task[Any]


@dataclass(slots=True)
class Finish:
    """How a race ended with an answer: the lane that served and its result, the failures
    before it, and the result of the other lane when it answered at the very same moment
    (the caller closes it)."""

    winner: Lane
    result: Any
    failures: list[tuple[str, UpstreamError]]
    late: Any = None
    late_lane: Lane | None = None


def afters(config: Config) -> dict[str, float]:
    """The models whose attempts are hedged, and after how long (a model's own `hedge_after`,
    else routing's; those above 0): never audio models, a second transcription or speech
    is made, and billed, in full."""
    routing = config.routing.hedge_after
    return {m.id: after for m in config.models.values()
            if m.kind in ("chat", "embeddings")
            and (after := routing if m.hedge_after is None else m.hedge_after) > 0}


def pick_target(config: Config, health: Health | None, providers: Mapping[str, Provider],
                model_id: str, body: dict[str, Any], candidates: Sequence[str],
                needs: Requirements | None, min_context: int | None, tried: tuple[str, ...]
                ) -> tuple[ModelConfig, dict[str, Any], Permit | None] | None:
    """The candidate after `model_id` that can serve the request now, the request as it gets
    it, and its permit (taken: a hedge never waits); None when there is none. Not the same
    model, none a hedge called already, none lacking a capability or too small for the
    request (a hedge never truncates), none that a limit, its breaker or its provider's
    block holds back (health.acquire says no)."""
    behind = True
    for candidate in candidates:
        if behind:
            behind = candidate != model_id
            continue
        if candidate == model_id or candidate in tried:
            continue
        other = config.models[candidate]
        if min_context is not None and (other.context_window or 0) <= min_context:
            continue
        if lacking(other, needs) is not None:
            continue
        if needs is not None and context_reason(other, needs) is not None:
            continue
        default_output = providers[other.provider].default_output(other)
        req = cap_output(body, other, answer_room(other, needs, False, default_output))
        permit: Permit | None = None
        if health is not None:
            # available() first: acquire() counts a refusal by the upstream's rate-limit
            # headers as a skip, and passing a candidate over is none
            if not health.available(candidate)[0]:
                continue
            permit = health.acquire(candidate)
            if permit is None:
                continue
        return other, req, permit
    return None


# what hedges an attempt: the model, its attempt (a coroutine, not started) and the permit
# taken for it; None when no candidate can be called now
HedgeTo = Callable[[], "tuple[str, Coroutine[Any, Any, Any], Permit | None] | None"]


async def run(model_id: str, attempt: Coroutine[Any, Any, Any], after: float,
              hedge_to: HedgeTo, info: HedgeInfo, outcome: Outcome,
              report: Callable[[HedgeInfo], None] | None,
              discard: Callable[[Any], Awaitable[Any]],
              allow: Callable[[], bool] | None = None) -> tuple[str, Any]:
    """`attempt` (on `model_id`), hedged by `hedge_to()`'s once it has not answered after
    `after` seconds: (the model that served, its result). Raises what the attempt raises
    when it is not hedged; HedgeFailed when both failed. `info` is filled in and reported,
    and its part of x-failoverd-hedge added to `outcome`; `discard` closes an answer that is
    not served (a loser's that came at the same moment as the winner's, one that came as the
    request was cancelled) and returns its usage. `allow` (the model's hedge budget, None:
    none) is asked once a hedge is found: a no leaves the attempt alone, the hedge reported
    as `budget`."""
    first = Lane(model_id, lane_task(attempt))
    try:
        with timeout(after):
            return model_id, await asyncio.shield(first.task)
    except TimeoutError:
        if first.task.done():  # it ended as the time did: as it ended
            return model_id, first.task.result()
    except BaseException:  # its own failure, or the request cancelled
        await abandon((first,), discard)
        raise
    try:
        target = hedge_to()
        if target is not None and allow is not None and not allow():
            to_id, to_attempt, permit = target
            to_attempt.close()  # never started
            if permit is not None:
                permit.release(called=False)
            info.to_model, info.outcome, target = to_id, "budget", None
            _told(info, outcome, report)
    except BaseException:
        await abandon((first,), discard)
        raise
    if target is None:
        try:
            return model_id, await asyncio.shield(first.task)
        except BaseException:  # the request cancelled, perhaps as the attempt answered
            await abandon((first,), discard)
            raise
    to_id, to_attempt, permit = target
    info.to_model = to_id
    started = False

    async def hedge() -> Any:
        nonlocal started
        started = True
        return await to_attempt

    second = Lane(to_id, lane_task(hedge()))
    failures: list[tuple[str, UpstreamError]] = []  # race's, in the order they came

    def listed() -> None:
        outcome.attempts.extend(Attempt(failed_id, exc.reason, exc.status, exc.message,
                                        exc.upstream_request_id)
                                for failed_id, exc in failures)

    try:
        finish = await race(first, second, discard, failures)
    except HedgeFailed:
        info.outcome = "failed"
        raise
    except BaseException:
        # the original's refusal (or a bug, or the request cancelled): the hedge's failure
        # before it is an attempt all the same
        listed()
        if second.task.done() and not second.task.cancelled() \
                and second.task.exception() is not None:
            info.outcome = "failed"
        raise
    else:
        listed()
        info.winner = finish.winner.model
        if finish.winner is second:
            info.outcome = "won"
        else:
            info.outcome = "failed" if finish.failures else "lost"
        if finish.late_lane is not None:
            info.loser = finish.late_lane.model
            try:
                info.loser_usage = await discard(finish.late)
            except BaseException:  # cancelled meanwhile: the winner's answer goes unserved
                await _discard_quietly(discard, finish.result)
                raise
        return finish.winner.model, finish.result
    finally:
        if not started:
            to_attempt.close()  # never started: nothing to clean up but the coroutine
            if permit is not None:
                permit.release(called=False)  # its call was not made
        _told(info, outcome, report)


def _told(info: HedgeInfo, outcome: Outcome, report: Callable[[HedgeInfo], None] | None
          ) -> None:
    """A decided hedge's part of x-failoverd-hedge, and its report."""
    outcome.hedges += (info.header(),)
    if report is not None:
        try:
            report(info)
        except Exception:
            # an advisory side channel: its bug must not fail the request, nor drop the
            # winner's answer (a stream's connection and permit) on the way out
            logger.exception("reporting a hedge failed")


def lane_task(attempt: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """A task for one lane's attempt that routes the request as the dispatcher's task does:
    measured against the upstreams' token budgets (upstreamlimits.adopt, set in the task's
    context before its first step, so even an attempt cancelled before it starts leaves no
    coroutine unawaited)."""
    context = contextvars.copy_context()
    task = asyncio.get_running_loop().create_task(attempt, context=context)
    context.run(adopt, task)
    return task


async def race(first: Lane, second: Lane,
               discard: Callable[[Any], Awaitable[Any]] | None = None,
               failures: list[tuple[str, UpstreamError]] | None = None) -> Finish:
    """The first answer of the two lanes (the first lane's on a tie). A failure the chain
    would fail over after lets the other lane go on, and so does any upstream failure of
    the second (the hedge: a refusal by it says nothing of the attempt it hedged, which
    would have served without it); both failing raises HedgeFailed. Any other exception
    (the first lane's bad_request, a bug) ends the race at once. The lane still running
    when the race ends, however it ends (its caller cancelled included), is cancelled and
    awaited, so its permit and connection are given back first; an answer that is not
    handed over (it came as the race was cancelled, or with the first lane's refusal) is
    closed with `discard`. `failures` (the upstream failures, in the order they came) is
    filled in as the race goes, so a caller sees them however it ends."""
    lanes = (first, second)
    pending = {first.task, second.task}
    failures = [] if failures is None else failures
    kept: tuple[Lane, ...] = ()  # the lanes whose answers the caller takes
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            answered: list[Lane] = []
            refusal: BaseException | None = None
            for lane in lanes:  # in order: the first lane's answer or refusal goes first
                if lane.task not in done:
                    continue
                error = _error(lane)
                if error is None:
                    if refusal is None:
                        answered.append(lane)
                elif isinstance(error, UpstreamError) and (policy(error.reason).fail_over
                                                           or lane is second):
                    # at the same moment as the other's answer too: the hedge "failed"
                    failures.append((lane.model, error))
                elif refusal is None and not answered:
                    refusal = error
            if refusal is not None:
                raise refusal
            if answered:
                finish = Finish(answered[0], answered[0].task.result(), failures)
                if len(answered) == 2:
                    finish.late, finish.late_lane = answered[1].task.result(), answered[1]
                kept = tuple(answered)
                return finish
        raise HedgeFailed(failures)
    finally:
        try:
            await abandon(tuple(lane for lane in lanes if lane not in kept), discard)
        except BaseException:  # cancelled while the loser went: the answer goes unserved
            if discard is not None:
                for lane in kept:
                    await _discard_quietly(discard, lane.task.result())
            raise


def _error(lane: Lane) -> BaseException | None:
    if lane.task.cancelled():  # not by the race: something inside gave up
        return UpstreamError(FailureReason.CANCELLED, "attempt cancelled", model=lane.model)
    return lane.task.exception()


async def cancel_all(tasks: set[asyncio.Task[Any]]) -> None:
    """Cancels `tasks` and waits for them to end (their cleanup gives permits back)."""
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    for task in tasks:  # retrieved, so the loop logs no "exception was never retrieved"
        if not task.cancelled():
            task.exception()


async def abandon(lanes: Sequence[Lane], discard: Callable[[Any], Awaitable[Any]] | None
                  ) -> None:
    """Ends lanes whose answers will not be served: those still running are cancelled and
    awaited; one that answered all the same (in the loop turn that ended the race or
    cancelled the request) has its answer closed with `discard`, so a stream's connection
    and permit are not left behind."""
    await cancel_all({lane.task for lane in lanes if not lane.task.done()})
    if discard is None:
        return
    for lane in lanes:
        task = lane.task
        if task.done() and not task.cancelled() and task.exception() is None:
            await _discard_quietly(discard, task.result())


async def _discard_quietly(discard: Callable[[Any], Awaitable[Any]], answer: Any) -> None:
    # called on the way out of a failure or a cancellation, which must go on as it was
    try:
        await discard(answer)
    except Exception:
        logger.warning("closing an answer that was not served failed", exc_info=True)


def reporter(bus: EventBus, metrics: Metrics,
             usage: Callable[[str, Any], float]) -> Callable[[HedgeInfo], None]:
    """What the Service does with each hedge: `model:hedged` (MQTT, /v1/events, hooks, the
    audit log), failoverd_hedges_total, and the usage a loser reported."""
    def report(info: HedgeInfo) -> None:
        metrics.hedged(info.from_model, info.to_model, info.outcome)
        bus.emit("model:hedged", from_model=info.from_model, to_model=info.to_model,
                 after=info.after, winner=info.winner, outcome=info.outcome,
                 session=info.session, request_id=info.request_id)
        if info.loser is not None and info.loser_usage is not None:
            usage(info.loser, info.loser_usage)

    return report
