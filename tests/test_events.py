"""The event bus, event wire shape, subscriptions and the audit log."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from failoverd.clock import ManualClock
from failoverd.events import AuditLog, Event, EventBus, audit_line, iso_time
from failoverd.failures import FailureReason


def make_bus(**kw: int) -> tuple[EventBus, ManualClock]:
    clock = ManualClock(wall=1_700_000_000.0)
    return EventBus("node1", clock, **kw), clock


def test_event_wire_shape() -> None:
    bus, clock = make_bus()
    clock.advance(0.1234)
    ev = bus.emit("model:failover", from_model="a/b", to_model="c", reason=FailureReason.RATE_LIMIT,
                  status=429, attempt=1)
    assert ev.category == "model" and ev.action == "failover"
    assert ev.time == "2023-11-14T22:13:20.123Z"
    assert ev.node == "node1"
    data = orjson.loads(ev.to_json())
    assert data == {"id": ev.id, "type": "model:failover", "time": ev.time, "node": "node1",
                    "from_model": "a/b", "to_model": "c", "reason": "rate_limit", "status": 429,
                    "attempt": 1}
    assert list(data)[:4] == ["id", "type", "time", "node"]
    assert len(ev.id) == 26


def test_iso_time_is_utc_with_milliseconds() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert iso_time(1.5) == "1970-01-01T00:00:01.500Z"


def test_ids_are_unique_and_sort_by_creation() -> None:
    bus, clock = make_bus()
    ids = []
    for i in range(50):
        if i % 10 == 0:
            clock.advance(0.001)
        ids.append(bus.emit("breaker:opened", model="m").id)  # many within one millisecond
    assert len(set(ids)) == 50
    assert ids == sorted(ids)


def test_emit_never_raises_on_odd_fields() -> None:
    bus, _ = make_bus()
    ev = bus.emit("config:rejected", id="spoof", problems=["x"], obj=object())
    data = orjson.loads(ev.to_json())
    assert data["id"] == ev.id != "spoof"  # reserved names cannot be overridden
    assert data["obj"].startswith("<object object")
    assert ev.action == "rejected"


def test_listeners_called_inline_and_isolated() -> None:
    bus, _ = make_bus()
    seen: list[str] = []

    def broken(_: object) -> None:
        raise RuntimeError("sink bug")

    bus.listen(broken)
    remove = bus.listen(lambda e: seen.append(e.type))
    bus.emit("probe:failed", model="m")
    assert seen == ["probe:failed"]
    assert bus.listener_errors == 1
    remove()
    bus.emit("probe:recovered", model="m")
    assert seen == ["probe:failed"]
    assert bus.stats()["emitted"] == {"probe:failed": 1, "probe:recovered": 1}


async def test_subscription_delivers_in_order_and_ends_on_close() -> None:
    bus, _ = make_bus()
    sub = bus.subscribe(10)
    got: list[str] = []

    async def consume() -> None:
        async for ev in sub:
            got.append(ev.fields["n"])

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)  # let the consumer park on an empty queue
    for n in ("1", "2", "3"):
        bus.emit("chain:exhausted", n=n)
    await asyncio.sleep(0)
    sub.close()
    async with asyncio.timeout(2):
        await task
    assert got == ["1", "2", "3"]
    assert bus.stats()["subscribers"] == 0


async def test_slow_subscriber_loses_oldest_and_counts() -> None:
    bus, _ = make_bus()
    with bus.subscribe(3) as slow, bus.subscribe(100) as fast:
        for n in range(10):
            bus.emit("breaker:closed", n=n)
        assert slow.dropped == 7 and fast.dropped == 0
        assert bus.stats()["dropped"] == 7  # all subscriptions together
        assert [slow.get_nowait().fields["n"] for _ in range(3)] == [7, 8, 9]  # type: ignore[union-attr]
        assert len(fast) == 10
    assert bus.stats()["subscribers"] == 0
    assert bus.stats()["dropped"] == 7  # still counted once they are gone


def test_recent_ring_for_late_clients() -> None:
    bus, clock = make_bus(history=5)
    events = []
    for n in range(8):
        clock.advance(0.01)
        events.append(bus.emit("probe:failed", n=n))
    assert [e.fields["n"] for e in bus.recent()] == [3, 4, 5, 6, 7]
    assert [e.fields["n"] for e in bus.recent(events[5].id)] == [6, 7]
    assert bus.recent(events[-1].id) == []


def test_audit_line_text_and_json() -> None:
    bus, _ = make_bus()
    ev = bus.emit("model:failover", from_model="anthropic/claude", to_model="openai/gpt-5",
                  reason="rate_limit", error="too many requests", session=None,
                  attempts=[1, 2])
    text = audit_line(ev, "text")
    assert text == ('event model:failover from_model=anthropic/claude to_model=openai/gpt-5 '
                    'reason=rate_limit error="too many requests" session=null attempts=[1,2]')
    assert orjson.loads(audit_line(ev, "json")) == ev.as_dict()


def test_audit_log_writes_one_line_per_event(caplog: pytest.LogCaptureFixture) -> None:
    bus, _ = make_bus()
    AuditLog("text").attach(bus)
    with caplog.at_level(logging.INFO, logger="failoverd.audit"):
        bus.emit("breaker:opened", model="m1", reason="timeout")
        bus.emit("breaker:closed", model="m1")
    lines = [r.getMessage() for r in caplog.records if r.name == "failoverd.audit"]
    assert lines == ["event breaker:opened model=m1 reason=timeout",
                     "event breaker:closed model=m1"]


def test_the_audit_line_carries_a_name_that_is_not_utf8() -> None:
    # a list or a spaced string holding a lone surrogate (a drop-in or config path that is not
    # UTF-8) made the text line fail with orjson's JSONEncodeError: the event went unlogged
    bad = "/etc/f\udcff.toml"
    event = Event(id="01", type="config:rejected", time="t", node="n",
                  fields={"problems": [f"{bad}: not TOML"], "source": f"{bad} x", "n": 2**70,
                          "bare": bad})
    line = audit_line(event)
    assert line == ('event config:rejected problems=["/etc/f\\\\udcff.toml: not TOML"] '
                    'source="/etc/f\\\\udcff.toml x" n="1180591620717411303424" '
                    'bare=/etc/f\\udcff.toml'), line
