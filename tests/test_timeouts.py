"""timeouts.py: asyncio.timeout's semantics on one shared loop timer."""

from __future__ import annotations

import asyncio

import pytest

from failoverd import timeouts
from failoverd.timeouts import timeout, timeout_at


async def test_a_block_that_ends_in_time_is_left_alone() -> None:
    with timeout(5) as t:
        await asyncio.sleep(0)
    assert not t.expired()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_expiry_raises_timeout_error_from_the_cancellation() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError) as info:
        with timeout(0.05) as t:
            await asyncio.sleep(5)
    assert t.expired()
    assert isinstance(info.value.__cause__, asyncio.CancelledError)
    assert 0.04 <= loop.time() - started < 1
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_deadline_already_past_expires_on_the_next_turn() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        with timeout_at(loop.time() - 1):
            await asyncio.sleep(5)
    with timeout_at(loop.time() - 1):  # nothing awaited: nothing to cancel
        pass


async def test_each_of_many_deadlines_expires_on_time_whatever_the_order() -> None:
    loop = asyncio.get_running_loop()
    ended: dict[float, float] = {}

    async def wait(delay: float) -> None:
        started = loop.time()
        with pytest.raises(TimeoutError):
            with timeout(delay):
                await asyncio.sleep(5)
        ended[delay] = loop.time() - started

    async def done_early() -> None:
        with timeout(0.01):  # the earliest one ends before it expires
            await asyncio.sleep(0)

    # a late one first (the timer is armed for it), then earlier ones re-arm it
    await asyncio.gather(wait(0.3), done_early(), wait(0.1), wait(0.2), wait(0.1))
    for delay, took in ended.items():
        assert delay - 0.005 <= took < delay + 0.2, (delay, took)


async def test_an_outer_cancellation_is_not_turned_into_a_timeout() -> None:
    async def guarded() -> None:
        with timeout(0.05):
            try:
                await asyncio.sleep(5)
            finally:
                await asyncio.sleep(0.1)  # the deadline passes while cancelled already

    task = asyncio.ensure_future(guarded())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_meanwhile_wins_over_the_expiry() -> None:
    async def guarded() -> None:
        with timeout(0.02):
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                await asyncio.sleep(0.05)  # someone else cancels now
                raise

    task = asyncio.ensure_future(guarded())
    await asyncio.sleep(0.03)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_nested_the_inner_deadline_answers_its_own_expiry() -> None:
    with timeout(5) as outer:
        with pytest.raises(TimeoutError):
            with timeout(0.02):
                await asyncio.sleep(5)
        await asyncio.sleep(0)
    assert not outer.expired()


async def test_nested_the_outer_expiry_passes_through_the_inner_block() -> None:
    with pytest.raises(TimeoutError):
        with timeout(0.02) as outer:
            with timeout(5) as inner:
                await asyncio.sleep(5)
    assert outer.expired() and not inner.expired()


async def test_a_block_that_swallows_the_cancellation_ends_normally() -> None:
    with timeout(0.02) as t:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            pass
    assert t.expired()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_ended_blocks_leave_nothing_pending() -> None:
    for _ in range(100):
        with timeout(60):
            await asyncio.sleep(0)
    current = timeouts._current
    assert current is not None and not current.pending


def test_outside_a_task_it_refuses() -> None:
    with pytest.raises(RuntimeError):
        timeouts.Timeout(0.0).__enter__()
