"""Task timeouts on one loop timer: `asyncio.timeout`'s semantics at a fraction of its cost.

Every proxied request runs under a timeout (the upstream call's total, a stream's first token,
the idle gap before each stream line), and nearly all of them end long before they expire.
`asyncio.timeout` arms a loop timer on entry and cancels it on exit — under uvloop a libuv
handle allocated, started, stopped and closed each time — and enters and leaves through two
coroutines. Here the deadlines of one loop sit in a set and one timer is armed for the
earliest: a deadline that is not the earliest costs a set insert and a discard, and the
context manager is a plain (synchronous) one.

What happens on expiry is `asyncio.timeout`'s, step for step: the task is cancelled, and the
block's CancelledError becomes TimeoutError (from it) unless the task was also cancelled by
someone else meanwhile (`Task.uncancel` accounting), in which case the cancellation goes on.
Use it only inside a task, with `with`, around code that awaits:

    with timeout(5.0):
        await something()
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

__all__ = ["Timeout", "timeout", "timeout_at"]


class _Timers:
    """The pending timeouts of one event loop, and the one timer armed for the earliest.

    Timeouts that end are only discarded (the timer is left alone): when it fires it expires
    what is due and re-arms for the earliest of the rest, so idle work is one wake-up per
    expiry period at most.
    """

    __slots__ = ("loop", "pending", "handle", "armed_at")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: set[Timeout] = set()
        self.handle: asyncio.TimerHandle | None = None
        self.armed_at = math.inf

    def arm(self, when: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.armed_at = when
        self.handle = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        armed_for = self.armed_at
        self.handle = None
        self.armed_at = math.inf
        # uvloop's timers have millisecond resolution and may fire up to a millisecond before
        # `when` by loop.time(): the deadline the timer was armed for counts as reached, as
        # asyncio's own Timeout expires unconditionally when its handle runs (else the timer
        # would be re-armed for the same instant and fire again, dozens of times, until the
        # clock got there). Any later deadline waits for the clock: expiring those "within the
        # resolution" too cut other requests' calls up to a millisecond before their deadline,
        # and the router, finding time left, failed over with none.
        now = max(self.loop.time(), armed_for)
        due = [t for t in self.pending if t.when <= now]
        for entry in due:
            self.pending.discard(entry)
            entry._expire()
        if self.pending:
            self.arm(min(t.when for t in self.pending))

    def expire(self, entry: Timeout) -> None:
        if entry in self.pending:
            self.pending.discard(entry)
            entry._expire()


_current: _Timers | None = None


def _timers(loop: asyncio.AbstractEventLoop) -> _Timers:
    """The loop's `_Timers` (a process normally runs one loop; tests run one after another)."""
    global _current
    timers = _current
    if timers is None or timers.loop is not loop:
        timers = _current = _Timers(loop)
    return timers


class Timeout:
    """A deadline (loop time) for the block it guards; see the module's docstring."""

    __slots__ = ("when", "_task", "_cancelling", "_timers", "_expired")

    def __init__(self, when: float) -> None:
        self.when = when
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._timers: _Timers | None = None
        self._expired = False

    def __enter__(self) -> Timeout:
        if self._task is not None:
            raise RuntimeError("Timeout has already been entered")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Timeout should be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        timers = self._timers = _timers(task.get_loop())
        timers.pending.add(self)
        if self.when <= timers.loop.time():
            # already past: cancel on the next loop turn, as asyncio.timeout does
            timers.loop.call_soon(timers.expire, self)
        elif self.when < timers.armed_at:
            timers.arm(self.when)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        timers = self._timers
        assert timers is not None and self._task is not None
        timers.pending.discard(self)
        if self._expired and self._task.uncancel() <= self._cancelling \
                and exc_type is asyncio.CancelledError:
            # no other cancellation was asked for meanwhile: this one is ours to answer
            raise TimeoutError from exc

    def expired(self) -> bool:
        """Whether the deadline passed while the block ran."""
        return self._expired

    def _expire(self) -> None:
        assert self._task is not None
        self._expired = True
        self._task.cancel()


def timeout_at(when: float) -> Timeout:
    """A timeout at loop time `when`."""
    return Timeout(when)


def timeout(delay: float) -> Timeout:
    """A timeout `delay` seconds from now (loop time)."""
    return Timeout(asyncio.get_running_loop().time() + delay)
