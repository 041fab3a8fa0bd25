"""The breaker's time-based sliding window: bounded buckets, boundaries, resizes."""

from __future__ import annotations

import pytest

from failoverd.window import BUCKETS, SlidingWindow


def test_counts_calls_and_failures() -> None:
    w = SlidingWindow(60)
    for i in range(10):
        w.add(1000.0 + i * 0.1, failed=i % 3 == 0)
    assert (w.calls, w.failures) == (10, 4)
    assert w.buckets == 1  # all within one second: one bucket


def test_memory_stays_bounded_at_any_call_rate() -> None:
    w = SlidingWindow(60)
    now = 1000.0
    for _ in range(300_000):  # 5,000 calls a second for a minute
        now += 0.0002
        w.add(now, failed=False)
    assert w.buckets <= BUCKETS
    # the oldest second has been evicted, the newest 59-60 s remain
    assert 59 * 5000 - 5 <= w.calls <= 300_000


@pytest.mark.parametrize(("later", "counted"), [
    (0.0, True), (58.999, True), (59.0, True), (59.999, True), (60.0, False), (120.0, False)])
def test_a_call_at_a_bucket_start_counts_for_the_whole_window(later: float,
                                                              counted: bool) -> None:
    w = SlidingWindow(60)
    w.add(1000.0, failed=True)
    w.evict(1000.0 + later)
    assert (w.calls == 1) is counted
    assert (w.failures == 1) is counted


@pytest.mark.parametrize(("later", "counted"), [(58.4, True), (59.0, True), (59.002, False)])
def test_a_call_late_in_its_bucket_counts_for_at_least_59_60ths(later: float,
                                                                counted: bool) -> None:
    w = SlidingWindow(60)
    w.add(1000.999, failed=False)  # bucket [1000, 1001)
    w.evict(1000.999 + later)
    assert (w.calls == 1) is counted


def test_small_windows_use_small_buckets() -> None:
    w = SlidingWindow(0.6)  # 10 ms buckets
    w.add(5.0, failed=True)
    w.add(5.3, failed=False)
    w.evict(5.59)
    assert (w.calls, w.failures) == (2, 1)
    w.evict(5.6)
    assert (w.calls, w.failures) == (1, 0)
    w.evict(5.9)
    assert (w.calls, w.failures) == (0, 0)
    assert w.buckets == 0


def test_adding_evicts_the_old_buckets() -> None:
    w = SlidingWindow(10)
    w.add(0.0, failed=True)
    w.add(10.0, failed=False)
    assert (w.calls, w.failures) == (1, 0)


def test_resize_keeps_what_is_there_and_ages_it_out_under_the_new_length() -> None:
    w = SlidingWindow(60)
    w.add(1000.0, failed=True)
    w.add(1030.0, failed=False)
    w.resize(10)
    assert (w.calls, w.failures) == (2, 1)  # nothing dropped by the reload itself
    w.add(1030.5, failed=True)
    # under a 10 s window the call at 1000 is out; the one at 1030 is in
    assert (w.calls, w.failures) == (2, 1)
    w.evict(1041.0)
    assert (w.calls, w.failures) == (0, 0)


def test_resize_to_coarser_buckets_merges_into_the_newest() -> None:
    w = SlidingWindow(6)  # 0.1 s buckets
    w.add(100.05, failed=False)
    w.add(100.15, failed=True)
    w.resize(600)  # 10 s buckets: 100.25 falls in the bucket starting at 100.0
    w.add(100.25, failed=False)
    assert (w.calls, w.failures) == (3, 1)
    assert w.buckets == 2


def test_clear() -> None:
    w = SlidingWindow(60)
    w.add(1.0, failed=True)
    w.clear()
    assert (w.calls, w.failures, w.buckets) == (0, 0, 0)
