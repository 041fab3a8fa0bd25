"""A time-based sliding window of call outcomes, in partial aggregates (resilience4j's design).

The window holds ``BUCKETS`` buckets, each covering ``seconds / BUCKETS`` of time (one second
for the default 60 s window). A call is added to the bucket of the moment its outcome is
recorded; a bucket leaves the window once it is no longer one of the ``BUCKETS`` newest
epochs. So a call counts for between ``seconds * (1 - 1/BUCKETS)`` and ``seconds``, and memory
and time per call stay constant whatever the call rate: a model serving thousands of calls a
second keeps at most ``BUCKETS`` small lists, not one entry per call.

When the window's length changes (a reload), the buckets already there keep their start
times and age out under the new length, so no outcome is dropped by the change itself.
"""

from __future__ import annotations

import math
from collections import deque

BUCKETS = 60


class SlidingWindow:
    """Calls and failures over the last ``seconds`` (see the module docstring)."""

    __slots__ = ("_scale", "_buckets", "calls", "failures")

    def __init__(self, seconds: float) -> None:
        self._scale = BUCKETS / seconds
        # [bucket start (clock seconds), calls, failures], oldest first
        self._buckets: deque[list[float]] = deque()
        self.calls = 0
        self.failures = 0

    def resize(self, seconds: float) -> None:
        """A new window length, applied from now on."""
        self._scale = BUCKETS / seconds

    def add(self, now: float, failed: bool) -> None:
        """Records one call's outcome at clock time `now`."""
        start = math.floor(now * self._scale) / self._scale
        self.evict(now)
        buckets = self._buckets
        if buckets and buckets[-1][0] >= start:
            last = buckets[-1]  # this epoch's bucket (or a newer one, after a resize)
            last[1] += 1
            if failed:
                last[2] += 1
        else:
            buckets.append([start, 1, 1 if failed else 0])
        self.calls += 1
        if failed:
            self.failures += 1

    def evict(self, now: float) -> None:
        """Drops the buckets that are out of the window at clock time `now`."""
        buckets = self._buckets
        if not buckets:
            return
        oldest = (math.floor(now * self._scale) - BUCKETS + 1) / self._scale
        while buckets and buckets[0][0] < oldest:
            _, calls, failures = buckets.popleft()
            self.calls -= int(calls)
            self.failures -= int(failures)

    def clear(self) -> None:
        self._buckets.clear()
        self.calls = 0
        self.failures = 0

    @property
    def buckets(self) -> int:
        """Buckets held: at most ``BUCKETS`` (plus one across a resize)."""
        return len(self._buckets)


class SlidingSum:
    """A sum (tokens) over the last ``seconds``, in ``BUCKETS`` buckets as SlidingWindow."""

    __slots__ = ("_scale", "_buckets", "total")

    def __init__(self, seconds: float) -> None:
        self._scale = BUCKETS / seconds
        self._buckets: deque[list[float]] = deque()  # [bucket start, amount], oldest first
        self.total = 0

    def add(self, now: float, amount: int) -> None:
        start = math.floor(now * self._scale) / self._scale
        self.evict(now)
        if self._buckets and self._buckets[-1][0] >= start:
            self._buckets[-1][1] += amount
        else:
            self._buckets.append([start, amount])
        self.total += amount

    def evict(self, now: float) -> None:
        oldest = (math.floor(now * self._scale) - BUCKETS + 1) / self._scale
        buckets = self._buckets
        while buckets and buckets[0][0] < oldest:
            self.total -= int(buckets.popleft()[1])

    def buckets(self, now: float) -> list[tuple[float, int]]:
        """(bucket start, amount) of what the window holds at `now`, oldest first."""
        self.evict(now)
        return [(start, int(amount)) for start, amount in self._buckets]

    def wait_below(self, limit: int, now: float) -> float:
        """Seconds until the sum drops below `limit` as its oldest buckets age out (0: it
        is below now)."""
        self.evict(now)
        total = self.total
        if total < limit:
            return 0.0
        width = 1 / self._scale
        for start, amount in self._buckets:
            total -= int(amount)
            if total < limit:
                # that bucket leaves the window once its epoch is BUCKETS epochs old
                return max(0.0, start + BUCKETS * width - now)
        return BUCKETS * width  # unreachable: the last bucket takes the sum to zero
