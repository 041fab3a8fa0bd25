"""Hedged requests: an attempt that is slow to its first byte races the next candidate.

When an attempt on a model has not produced its first byte (a stream's first chunk; a plain
call's whole answer) after the model's `hedge_after` seconds, the dispatcher starts the next
candidate that is available now alongside it (dispatch.Dispatcher._hedged). The first of the
two to answer wins; the other is cancelled at once: its upstream connection closed, its
permit given back without an outcome, so its breaker does not count it. A failure of either
is counted as usual while the other goes on; when both fail, the chain goes on after them.

This module holds what that needs apart from the attempt loop: the config key, the race of
two attempts, and the report (event, metric, the loser's usage) of each hedge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason, policy
from failoverd.tomlreader import Section

if TYPE_CHECKING:
    from failoverd.events import EventBus
    from failoverd.metrics import Metrics

__all__ = ["MAX_HEDGE_AFTER", "HedgeFailed", "HedgeInfo", "Lane", "cancel_all", "race",
           "read_hedge_after", "reporter"]

# The longest a request may run (x-failoverd-deadline's bound): a later hedge never starts
MAX_HEDGE_AFTER = 86400.0

# won: the hedge served; lost: the attempt it hedged served first; failed: the hedge failed;
# cancelled: the request ended (the client left, a refusal no candidate gets past) first
HedgeOutcome = Literal["won", "lost", "failed", "cancelled"]


def read_hedge_after(sec: Section) -> float:
    """A `hedge_after` key (routing's or a model's): seconds, 0 (off) to MAX_HEDGE_AFTER."""
    value = sec.number("hedge_after", 0.0)
    if value > MAX_HEDGE_AFTER:
        sec.problem("hedge_after", f"must be at most {MAX_HEDGE_AFTER:g} seconds (0 = off), "
                    f"got {value:g}")
        return 0.0
    return value


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

    def header(self) -> str:
        """Its part of x-failoverd-hedge: `from>to:outcome`."""
        return f"{self.from_model}>{self.to_model}:{self.outcome}"


class HedgeFailed(Exception):
    """Both attempts of a hedge failed in ways the chain goes on after: (model, error) each,
    in the order they failed. Never leaves the dispatcher."""

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


async def race(first: Lane, second: Lane) -> Finish:
    """The first answer of the two lanes (the first lane's on a tie). A failure the chain
    would fail over after lets the other lane go on, and so does any upstream failure of
    the second (the hedge: a refusal by it says nothing of the attempt it hedged, which
    would have served without it); both failing raises HedgeFailed. Any other exception
    (the first lane's bad_request, a bug) ends the race at once. The lane still running
    when the race ends, however it ends (its caller cancelled included), is cancelled and
    awaited, so its permit and connection are given back first."""
    lanes = (first, second)
    pending = {first.task, second.task}
    failures: list[tuple[str, UpstreamError]] = []
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for lane in lanes:
                if lane.task not in done:
                    continue
                error = _error(lane)
                if error is None:
                    other = second if lane is first else first
                    finish = Finish(lane, lane.task.result(), failures)
                    if other.task in done and _error(other) is None:
                        finish.late, finish.late_lane = other.task.result(), other
                    return finish
                if isinstance(error, UpstreamError) and (policy(error.reason).fail_over
                                                         or lane is second):
                    failures.append((lane.model, error))
                    continue
                raise error
        raise HedgeFailed(failures)
    finally:
        await cancel_all(pending)


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


def reporter(bus: EventBus, metrics: Metrics,
             usage: Callable[[str, Any], float]) -> Callable[[HedgeInfo], None]:
    """What the Service does with each hedge: `model:hedged` (MQTT, /v1/events, hooks, the
    audit log), failoverd_hedges_total, and the usage a loser reported."""
    def report(info: HedgeInfo) -> None:
        metrics.hedged(info.from_model, info.to_model, info.outcome)
        bus.emit("model:hedged", from_model=info.from_model, to_model=info.to_model,
                 after=info.after, winner=info.winner, outcome=info.outcome,
                 session=info.session)
        if info.loser is not None and info.loser_usage is not None:
            usage(info.loser, info.loser_usage)

    return report
