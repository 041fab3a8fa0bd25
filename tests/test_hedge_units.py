"""Hedged requests' parts on their own: the race of two attempts, the counter, the event type
(the daemon end to end: test_hedge.py)."""

from __future__ import annotations

import asyncio

import pytest

from failoverd import config as config_mod
from failoverd.errors import UpstreamError
from failoverd.events import EVENT_TYPES
from failoverd.failures import FailureReason
from failoverd.hedge import HedgeFailed, Lane, race
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
