"""Hedged requests' parts on their own: the race of two attempts, the counter, the event type
(the daemon end to end: test_hedge.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from failoverd import config as config_mod
from failoverd.dispatch import Outcome
from failoverd.errors import UpstreamError
from failoverd.events import EVENT_TYPES
from failoverd.failures import FailureReason
from failoverd.hedge import HedgeFailed, HedgeInfo, Lane, race
from failoverd.hedge import run as hedge_run
from failoverd.metrics import Metrics
from tests.helpers import A_THEN_B, providers


async def _answer(value: str, after: float, gone: list[str] | None = None) -> str:
    try:
        await asyncio.sleep(after)
    except asyncio.CancelledError:
        if gone is not None:
            gone.append(value)
        raise
    return value


async def _fail(reason: FailureReason, after: float) -> str:
    await asyncio.sleep(after)
    raise UpstreamError(reason, str(reason), model="x")


async def test_the_first_answer_wins_and_the_other_is_cancelled_and_awaited() -> None:
    gone: list[str] = []
    slow = Lane("a", asyncio.ensure_future(_answer("a", 5, gone)))
    fast = Lane("b", asyncio.ensure_future(_answer("b", 0.01)))
    finish = await race(slow, fast)
    assert (finish.winner.model, finish.result, finish.failures) == ("b", "b", [])
    assert gone == ["a"] and slow.task.cancelled()  # ended before race returned


async def test_a_failure_lets_the_other_go_on_and_both_failing_raises_hedge_failed() -> None:
    first = Lane("a", asyncio.ensure_future(_fail(FailureReason.RATE_LIMIT, 0)))
    second = Lane("b", asyncio.ensure_future(_answer("b", 0.02)))
    finish = await race(first, second)
    assert finish.winner is second and [m for m, _ in finish.failures] == ["a"]
    first = Lane("a", asyncio.ensure_future(_fail(FailureReason.SERVER_ERROR, 0.02)))
    second = Lane("b", asyncio.ensure_future(_fail(FailureReason.TIMEOUT, 0)))
    with pytest.raises(HedgeFailed) as info:
        await race(first, second)
    assert [(m, e.reason) for m, e in info.value.failures] == [
        ("b", FailureReason.TIMEOUT), ("a", FailureReason.SERVER_ERROR)]


async def test_a_refusal_ends_the_race_at_once() -> None:
    gone: list[str] = []
    first = Lane("a", asyncio.ensure_future(_fail(FailureReason.BAD_REQUEST, 0)))
    second = Lane("b", asyncio.ensure_future(_answer("b", 5, gone)))
    with pytest.raises(UpstreamError) as info:
        await race(first, second)
    assert info.value.reason is FailureReason.BAD_REQUEST and gone == ["b"]


async def test_a_refusal_by_the_hedge_is_only_its_failure() -> None:
    # the attempt it hedged would have served without it: it goes on
    first = Lane("a", asyncio.ensure_future(_answer("a", 0.02)))
    second = Lane("b", asyncio.ensure_future(_fail(FailureReason.BAD_REQUEST, 0)))
    finish = await race(first, second)
    assert finish.winner is first
    assert [(m, e.reason) for m, e in finish.failures] == [("b", FailureReason.BAD_REQUEST)]


async def test_a_tie_goes_to_the_first_lane_and_hands_back_the_other_answer() -> None:
    first = Lane("a", asyncio.ensure_future(_answer("a", 0)))
    second = Lane("b", asyncio.ensure_future(_answer("b", 0)))
    finish = await race(first, second)
    assert finish.winner is first and finish.late == "b" and finish.late_lane is second


async def test_cancelling_the_race_cancels_both_lanes() -> None:
    gone: list[str] = []
    first = Lane("a", asyncio.ensure_future(_answer("a", 5, gone)))
    second = Lane("b", asyncio.ensure_future(_answer("b", 5, gone)))
    racing = asyncio.ensure_future(race(first, second))
    await asyncio.sleep(0.01)
    racing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await racing
    assert sorted(gone) == ["a", "b"]


def test_the_counter_is_rendered_and_forgets_removed_models() -> None:
    metrics = Metrics()
    metrics.hedged("a/m", "b/m", "won")
    metrics.hedged("a/m", "b/m", "won")
    metrics.hedged("a/m", "c/m", "lost")
    text = metrics.render()
    assert "# TYPE failoverd_hedges_total counter" in text
    assert 'failoverd_hedges_total{model="a/m",to_model="b/m",outcome="won"} 2' in text
    metrics.forget_models(["a/m", "b/m"])
    assert list(metrics.hedges) == [("a/m", "b/m", "won")]


def test_model_hedged_is_an_event_type_hooks_can_subscribe_to() -> None:
    assert "model:hedged" in EVENT_TYPES
    body = providers(a="http://127.0.0.1:1/v1", b="http://127.0.0.1:2/v1")
    cfg = config_mod.loads(f'{body}\n{A_THEN_B}\n[[hooks]]\nevents = ["model:hedged"]\n'
                           'exec = ["/bin/true"]\n')
    assert cfg.hooks[0].events == ("model:hedged",)


# ------------------------------------------------------------------ answers never left behind


class Answer:
    """An answer that holds something until closed (a stream's connection and permit)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False


async def _close(answer: Any) -> Any:
    answer.closed = True
    return None


async def _gated(gate: asyncio.Future[None], answer: Answer) -> Answer:
    await gate
    return answer


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_an_answer_that_comes_as_the_race_is_cancelled_is_closed() -> None:
    # the client leaves in the very loop turn the first lane's stream got its first chunk:
    # the race is cancelled before it could hand the answer over; it used to stay open, its
    # permit (max_concurrency slot, in-flight count, half-open trial) never given back
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    answer = Answer("a")
    first = Lane("a", asyncio.ensure_future(_gated(gate, answer)))
    second = Lane("b", asyncio.ensure_future(_answer("b", 5)))
    racing = asyncio.ensure_future(race(first, second, _close))
    await _turns()
    gate.set_result(None)
    await asyncio.sleep(0)  # the lane ends; the race has not run since
    assert first.task.done() and not racing.done()
    racing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await racing
    assert answer.closed and second.task.cancelled()


async def test_an_answer_with_the_first_lanes_refusal_is_closed_and_failures_kept() -> None:
    # the original's bad_request ends the request; the hedge's answer of the same moment is
    # closed, and a hedge failure of that moment is listed
    answer = Answer("b")
    first = Lane("a", asyncio.ensure_future(_fail(FailureReason.BAD_REQUEST, 0)))
    second = Lane("b", asyncio.ensure_future(_gated(_done(), answer)))
    with pytest.raises(UpstreamError):
        await race(first, second, _close)
    assert answer.closed
    failures: list[tuple[str, UpstreamError]] = []
    first = Lane("a", asyncio.ensure_future(_fail(FailureReason.BAD_REQUEST, 0)))
    second = Lane("b", asyncio.ensure_future(_fail(FailureReason.SERVER_ERROR, 0)))
    with pytest.raises(UpstreamError):
        await race(first, second, _close, failures)
    assert [(m, e.reason) for m, e in failures] == [("b", FailureReason.SERVER_ERROR)]


async def test_a_hedge_failing_as_the_original_answers_is_a_failure_of_the_race() -> None:
    first = Lane("a", asyncio.ensure_future(_answer("a", 0)))
    second = Lane("b", asyncio.ensure_future(_fail(FailureReason.SERVER_ERROR, 0)))
    finish = await race(first, second)
    assert finish.winner is first
    assert [(m, e.reason) for m, e in finish.failures] == [("b", FailureReason.SERVER_ERROR)]


def _done() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


@pytest.mark.parametrize("hedged", [False, True])
async def test_an_answer_that_comes_as_the_request_is_cancelled_is_closed(hedged: bool) -> None:
    # hedge.run before its race: waiting for the first byte (the timer not yet fired), or
    # alone once no hedge could be found; the request is cancelled in the loop turn the
    # attempt answered
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    answer = Answer("a")
    outcome = Outcome()
    running = asyncio.ensure_future(hedge_run(
        "a", _gated(gate, answer), 0.001 if hedged else 5, lambda: None,
        HedgeInfo("a", "", 0.001, "cancelled", None, None), outcome, None, _close))
    if hedged:
        await asyncio.sleep(0.02)  # the timer fired, no hedge: the attempt goes on alone
    await _turns()
    gate.set_result(None)
    await asyncio.sleep(0)
    assert not running.done()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert answer.closed and outcome.hedges == ()


async def test_a_report_that_raises_does_not_drop_the_answer(
        caplog: pytest.LogCaptureFixture) -> None:
    # the event bus or the counters failing must not fail the request, nor lose the served
    # answer (a stream's connection and permit) on the way out of hedge.run
    answer = Answer("b")

    def report(info: HedgeInfo) -> None:
        raise RuntimeError("the bus is broken")

    def hedge_to() -> tuple[str, Any, None]:
        return "b", _gated(_done(), answer), None

    outcome = Outcome()
    served, result = await hedge_run(
        "a", _answer("a", 5), 0.001, hedge_to,
        HedgeInfo("a", "", 0.001, "cancelled", None, None), outcome, report, _close)
    assert (served, result) == ("b", answer) and not answer.closed
    assert outcome.hedges == ("a>b:won",)
    assert "reporting a hedge failed" in caplog.text


async def _slow_to_go(cleanup: asyncio.Future[None]) -> str:
    try:
        await asyncio.sleep(5)
    except asyncio.CancelledError:
        await cleanup  # closing its connection takes a while
        raise
    return "late"


async def test_an_answer_whose_race_is_cancelled_while_the_loser_goes_is_closed() -> None:
    # the winner is chosen; the race waits for the loser's cleanup; the client leaves then:
    # the winner's answer, never handed over, used to stay open
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cleanup: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    answer = Answer("a")
    first = Lane("a", asyncio.ensure_future(_gated(gate, answer)))
    second = Lane("b", asyncio.ensure_future(_slow_to_go(cleanup)))
    racing = asyncio.ensure_future(race(first, second, _close))
    await _turns()
    gate.set_result(None)
    await _turns()
    assert first.task.done() and not racing.done()  # waiting for the loser to go
    racing.cancel()
    await _turns()
    cleanup.set_result(None)
    with pytest.raises(asyncio.CancelledError):
        await racing
    assert answer.closed
    await _turns()
    assert second.task.cancelled()
