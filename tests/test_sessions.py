"""Session memory on simulated time: pins, sticky failovers, LRU and TTL bounds."""

from __future__ import annotations

import pytest

from failoverd.clock import ManualClock
from failoverd.sessions import MAX_KEY_LENGTH, Session, SessionStore, Sticky, normalize_key


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(clock: ManualClock) -> SessionStore:
    return SessionStore(clock, max_entries=100, ttl=3600.0, sticky_seconds=300.0)


def test_unknown_session_has_no_preference(store: SessionStore) -> None:
    assert store.preferred("nobody") is None
    assert store.get("nobody") is None
    assert store.as_dict("nobody") is None
    assert len(store) == 0


def test_pin_get_and_delete(store: SessionStore, clock: ManualClock) -> None:
    store.set_preference("s1", "fast")
    assert store.preferred("s1") == "fast"
    assert store.get("s1") == Session("s1", "fast", None, clock.monotonic())
    assert store.delete("s1") is True
    assert store.delete("s1") is False
    assert store.preferred("s1") is None


def test_sticky_across_a_failover_and_back(store: SessionStore, clock: ManualClock) -> None:
    # served by the head: nothing to remember, nothing stored
    store.note_served("s", "A", "A")
    assert store.preferred("s") is None and len(store) == 0

    # A failed over to B at t0: the session prefers B
    t0 = clock.monotonic()
    store.note_served("s", "A", "B")
    assert store.preferred("s") == "B"
    assert store.get("s") == Session("s", None, Sticky("A", "B", t0, t0 + 300), t0)

    # B keeps serving; its own successes do not extend the window (no flapping either way)
    for _ in range(5):
        clock.advance(50)
        assert store.preferred("s") == "B"
        store.note_served("s", "B", "B")
    clock.advance(49.9)
    assert store.preferred("s") == "B"

    # t0 + sticky_seconds: back to the primary
    clock.advance(0.1)
    assert store.preferred("s") is None
    assert store.get("s") is not None and store.get("s").sticky is None  # type: ignore[union-attr]
    store.note_served("s", "A", "A")
    assert store.preferred("s") is None


def test_sticky_beats_the_pin_while_it_lasts(store: SessionStore, clock: ManualClock) -> None:
    store.set_preference("s", "model-x")
    store.note_served("s", "model-x", "model-y")
    assert store.preferred("s") == "model-y"
    clock.advance(300)
    assert store.preferred("s") == "model-x"


def test_a_new_pin_clears_the_sticky_failover(store: SessionStore) -> None:
    store.note_served("s", "A", "B")
    store.set_preference("s", "C")
    assert store.preferred("s") == "C"
    store.set_preference("s", None)
    assert store.preferred("s") is None


def test_failing_over_again_moves_the_window(store: SessionStore, clock: ManualClock) -> None:
    store.note_served("s", "A", "B")
    clock.advance(100)
    store.note_served("s", "B", "C")  # the sticky fallback failed too
    assert store.preferred("s") == "C"
    clock.advance(299)
    assert store.preferred("s") == "C"
    clock.advance(1)
    assert store.preferred("s") is None


def test_served_by_the_original_primary_ends_the_window(store: SessionStore) -> None:
    store.note_served("s", "A", "B")
    store.note_served("s", "B", "A")  # B failed, the chain went on to A, which answered
    assert store.preferred("s") is None
    assert store.get("s").sticky is None  # type: ignore[union-attr]


def test_sticky_seconds_zero_disables_stickiness(clock: ManualClock) -> None:
    store = SessionStore(clock, sticky_seconds=0)
    store.note_served("s", "A", "B")
    assert store.preferred("s") is None
    assert len(store) == 0


def test_explicit_now_is_used(store: SessionStore, clock: ManualClock) -> None:
    store.note_served("s", "A", "B", now=clock.monotonic() - 250)
    assert store.preferred("s") == "B"
    clock.advance(50)
    assert store.preferred("s") is None


def test_lru_eviction_at_max_entries(clock: ManualClock) -> None:
    store = SessionStore(clock, max_entries=3, ttl=3600)
    for key in ("a", "b", "c"):
        store.set_preference(key, f"model-{key}")
        clock.advance(1)
    store.note_served("a", "model-a", "model-a")  # use refreshes "a"
    store.set_preference("d", "model-d")
    assert len(store) == 3
    assert store.preferred("b") is None  # the least recently used went
    assert [store.preferred(k) for k in ("a", "c", "d")] == ["model-a", "model-c", "model-d"]
    store.note_served("e", "X", "Y")
    assert len(store) == 3 and store.get("c") is None and store.get("a") is not None


def test_reads_do_not_refresh_the_lru_order(clock: ManualClock) -> None:
    store = SessionStore(clock, max_entries=2)
    store.set_preference("a", "1")
    store.set_preference("b", "2")
    assert store.preferred("a") == "1"
    store.set_preference("c", "3")
    assert store.get("a") is None and store.preferred("b") == "2"


def test_ttl_expiry(clock: ManualClock) -> None:
    store = SessionStore(clock, max_entries=10, ttl=60)
    store.set_preference("old", "m1")
    clock.advance(30)
    store.set_preference("young", "m2")
    clock.advance(29.9)
    assert len(store) == 2
    clock.advance(0.1)
    assert store.preferred("old") is None
    assert len(store) == 1
    clock.advance(30)
    assert len(store) == 0
    assert store.as_dict("young") is None


def test_use_extends_the_ttl(clock: ManualClock) -> None:
    store = SessionStore(clock, ttl=60)
    store.set_preference("s", "m")
    for _ in range(5):
        clock.advance(50)
        store.note_served("s", "m", "m")
    assert store.preferred("s") == "m"


def test_as_dict(store: SessionStore, clock: ManualClock) -> None:
    store.set_preference("s", "fast")
    store.note_served("s", "A", "B")
    clock.advance(100)
    wall = clock.time()
    view = store.as_dict("s")
    assert view is not None
    assert view["key"] == "s" and view["preference"] == "fast" and view["preferred"] == "B"
    sticky = view["sticky"]
    assert sticky["from_model"] == "A" and sticky["model"] == "B"
    assert sticky["remaining"] == pytest.approx(200)
    assert sticky["until"] == pytest.approx(wall + 200)
    assert sticky["since"] == pytest.approx(wall - 100)
    assert view["last_used"] == pytest.approx(wall - 100)
    assert view["expires"] == pytest.approx(wall - 100 + 3600)


def test_long_keys_are_capped_but_stay_distinct(store: SessionStore) -> None:
    base = "k" * 300
    one, two = base + "1", base + "2"
    assert len(normalize_key(one)) <= MAX_KEY_LENGTH
    assert normalize_key(one) != normalize_key(two)
    assert normalize_key(one).startswith("k" * 200)
    assert normalize_key("short") == "short"
    assert normalize_key("k" * MAX_KEY_LENGTH) == "k" * MAX_KEY_LENGTH
    store.set_preference(one, "m1")
    store.set_preference(two, "m2")
    assert store.preferred(one) == "m1" and store.preferred(two) == "m2"
    view = store.as_dict(one)
    assert view is not None and view["key"] == normalize_key(one)
    assert store.delete(one) and store.preferred(one) is None


def test_max_entries_must_be_positive(clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        SessionStore(clock, max_entries=0)


def test_a_reload_forgets_pins_and_sticky_windows_to_what_went_away(
        store: SessionStore, clock: ManualClock) -> None:
    store.set_preference("chain", "fast")
    store.set_preference("kept", "A")
    store.set_preference("gone", "X")
    store.note_served("from-gone", "X", "A")  # sticky: asked X, served by A
    store.note_served("to-gone", "A", "Y")  # sticky: asked A, served by Y
    store.note_served("both-ok", "A", "B")
    changed = store.forget_missing(models={"A", "B"}, chains={"fast"})
    assert changed == 3
    assert store.preferred("chain") == "fast" and store.preferred("kept") == "A"
    assert store.get("gone") == Session("gone", None, None, clock.monotonic())
    assert store.preferred("from-gone") is None and store.preferred("to-gone") is None
    assert store.preferred("both-ok") == "B"
    assert store.forget_missing(models={"A", "B"}, chains={"fast"}) == 0
