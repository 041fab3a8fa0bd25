"""The MQTT publisher against a real mosquitto and real subscribers."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import orjson
import pytest

from failoverd.clock import ManualClock
from failoverd.config import MqttConfig
from failoverd.events import Event, EventBus
from failoverd.mqtt import MqttPublisher, backoff_delay, model_topic_id
from tests.helpers import until
from tests.mosquitto import Mosquitto, Recorder, TcpProxy, requires_mosquitto, retained
from tests.mosquitto import mosquitto as mosquitto  # the fixture

NODE = "n1"
STATUS = f"failoverd/{NODE}/status"


def publisher(port: int, bus: EventBus | None = None, **cfg: object) -> MqttPublisher:
    config = MqttConfig(enabled=True, host="127.0.0.1", port=port, **cfg)  # type: ignore[arg-type]
    return MqttPublisher(config, NODE, bus, ManualClock(), random.Random(7), keepalive=5,
                         timeout=2.0, backoff_initial=0.05, backoff_max=0.2)


def payloads(rec: Recorder, topic: str) -> list[bytes]:
    return [bytes(m.payload) for m in rec.on(topic)]  # type: ignore[arg-type]


def event_ns(rec: Recorder) -> list[int]:
    return [orjson.loads(m.payload)["n"] for m in rec.messages  # type: ignore[arg-type]
            if m.topic.value == f"failoverd/{NODE}/events/probe/failed"]


def has_event_count(n: int) -> Callable[[list[aiomqtt.Message]], bool]:
    return lambda msgs: sum(m.topic.value.endswith("/events/probe/failed") for m in msgs) >= n


def test_backoff_is_jittered_exponential_and_capped() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(a, 0.5, 30.0, rng) for a in range(12)]
    for attempt, d in enumerate(delays):
        base = min(30.0, 0.5 * 2 ** attempt)
        assert base / 2 <= d <= base
    assert max(delays) <= 30.0 and delays[-1] >= 15.0
    assert len(set(delays)) == len(delays)  # jittered, not lockstep


def test_model_ids_are_one_topic_level() -> None:
    assert model_topic_id("anthropic/claude-sonnet-4-5") == "anthropic%2Fclaude-sonnet-4-5"
    assert model_topic_id("a+b#c%d:e") == "a%2Bb%23c%25d%3Ae"


@requires_mosquitto
async def test_online_states_and_event(mosquitto: Mosquitto) -> None:
    bus = EventBus(NODE, ManualClock())
    async with Recorder(mosquitto.port, f"failoverd/{NODE}/#") as rec, \
            publisher(mosquitto.port, bus) as pub:
        pub.set_model_state("anthropic/claude-sonnet-4-5", {"state": "closed"})
        pub.set_model_state("odd+id#1", {"state": "open", "reason": "rate_limit"})
        ev = bus.emit("model:failover", from_model="anthropic/claude-sonnet-4-5",
                      to_model="openai/gpt-5", reason="rate_limit", status=429)
        topic = f"failoverd/{NODE}/events/model/failover"
        await rec.wait_for(lambda msgs: any(m.topic.value == topic for m in msgs))
        [msg] = rec.on(topic)
        assert orjson.loads(msg.payload) == ev.as_dict()  # type: ignore[arg-type]
        assert msg.qos == 1 and not msg.retain
        assert msg.properties is not None
        assert msg.properties.ContentType == "application/json"
        assert 3590 <= msg.properties.MessageExpiryInterval <= 3600
        await until(lambda: pub.stats().queued == 0)
        stats = pub.stats()
        assert stats.connected and stats.protocol == "5" and stats.published == 1
        assert stats.dropped == 0 and stats.reconnects == 0

        kept = await retained(mosquitto.port, f"failoverd/{NODE}/#")
        assert kept[STATUS].payload == b"online"
        states = {t: orjson.loads(m.payload) for t, m in kept.items()  # type: ignore[arg-type]
                  if t.endswith("/state")}
        assert states == {
            f"failoverd/{NODE}/models/anthropic%2Fclaude-sonnet-4-5/state": {"state": "closed"},
            f"failoverd/{NODE}/models/odd%2Bid%231/state": {"state": "open",
                                                            "reason": "rate_limit"},
        }
        assert not any("/events/" in t for t in kept)  # events are not retained

        pub.clear_model_state("odd+id#1")
        await until(lambda: "odd+id#1" not in pub._states)
        kept = await retained(mosquitto.port, f"failoverd/{NODE}/models/#")
        assert list(kept) == [f"failoverd/{NODE}/models/anthropic%2Fclaude-sonnet-4-5/state"]


@requires_mosquitto
async def test_clean_shutdown_flushes_events_then_publishes_offline(
        mosquitto: Mosquitto) -> None:
    async with Recorder(mosquitto.port, f"failoverd/{NODE}/#") as rec:
        async with publisher(mosquitto.port) as pub:
            await asyncio.wait_for(pub.wait_connected(), 5)
            for n in range(20):
                pub.publish_event(EventBus(NODE, ManualClock()).emit("probe:failed", n=n))
        # stop() returned: everything queued went out before "offline"
        await rec.wait_for(lambda msgs: any(m.payload == b"offline" for m in msgs))
        assert event_ns(rec) == list(range(20))
        order = [m.topic.value for m in rec.messages]
        assert order.index(STATUS, 1) > max(i for i, t in enumerate(order) if "/events/" in t)
    kept = await retained(mosquitto.port, STATUS)
    assert kept[STATUS].payload == b"offline"
    assert pub.stats().connected is False


@requires_mosquitto
async def test_broker_restart_loses_nothing(mosquitto: Mosquitto) -> None:
    # The publisher reaches the broker through a proxy the test can hold closed, so the test's
    # subscriber is back on the restarted broker before the publisher reconnects (events are
    # not retained: a subscriber that is late would miss them through no fault of ours).
    proxy = TcpProxy(mosquitto.port)
    await proxy.open()
    bus = EventBus(NODE, ManualClock())
    try:
        async with publisher(proxy.port, bus) as pub:
            pub.set_model_state("m/1", {"state": "closed"})
            async with Recorder(mosquitto.port, f"failoverd/{NODE}/#") as rec:
                for n in range(3):
                    bus.emit("probe:failed", n=n)
                await rec.wait_for(has_event_count(3))
            await proxy.close_listener()
            mosquitto.kill()
            await until(lambda: not pub.stats().connected)
            for n in range(3, 10):  # emitted while the broker is away: never blocks
                bus.emit("probe:failed", n=n)
            pub.set_model_state("m/1", {"state": "open"})
            assert pub.stats().queued == 7
            mosquitto.start()  # same port, empty: no retained messages, no sessions
            async with Recorder(mosquitto.port, f"failoverd/{NODE}/#") as rec:
                await proxy.open()
                await rec.wait_for(has_event_count(7))
                assert event_ns(rec) == list(range(3, 10))
                assert payloads(rec, STATUS) == [b"online"]
            kept = await retained(mosquitto.port, f"failoverd/{NODE}/#")
            assert kept[STATUS].payload == b"online"
            assert orjson.loads(kept[f"failoverd/{NODE}/models/m%2F1/state"]
                                .payload) == {"state": "open"}  # type: ignore[arg-type]
            stats = pub.stats()
            assert stats.reconnects == 1 and stats.queued == 0 and stats.dropped == 0
            assert stats.published == 10
    finally:
        await proxy.close()


@requires_mosquitto
async def test_direct_restart_republishes_retained_state(mosquitto: Mosquitto) -> None:
    async with publisher(mosquitto.port) as pub:
        pub.set_model_state("m/1", {"state": "half_open"})
        await until(lambda: pub.stats().connected and not pub._dirty)
        mosquitto.restart()
        await until(lambda: pub.stats().reconnects == 1 and pub.stats().connected
                    and not pub._dirty)
        kept = await retained(mosquitto.port, f"failoverd/{NODE}/#")
        assert kept[STATUS].payload == b"online"
        assert orjson.loads(kept[f"failoverd/{NODE}/models/m%2F1/state"]
                            .payload) == {"state": "half_open"}  # type: ignore[arg-type]


@requires_mosquitto
async def test_overflow_drops_oldest_and_counts(mosquitto: Mosquitto) -> None:
    proxy = TcpProxy(mosquitto.port)  # not listening yet: the broker is unreachable
    bus = EventBus(NODE, ManualClock())
    try:
        async with publisher(proxy.port, bus, queue_size=3) as pub:
            for n in range(8):
                bus.emit("probe:failed", n=n)
            stats = pub.stats()
            assert stats.queued == 3 and stats.dropped == 5 and not stats.connected
            async with Recorder(mosquitto.port, f"failoverd/{NODE}/#") as rec:
                await proxy.open()
                await rec.wait_for(has_event_count(3))
                assert event_ns(rec) == [5, 6, 7]
            assert pub.stats().connect_failures >= 1
    finally:
        await proxy.close()


@requires_mosquitto
async def test_odd_field_values_are_published_not_lost(mosquitto: Mosquitto) -> None:
    # what orjson's `default` never sees: integers beyond 64 bits, keys that are not strings
    bus = EventBus(NODE, ManualClock())
    async with Recorder(mosquitto.port, f"failoverd/{NODE}/#") as rec, \
            publisher(mosquitto.port, bus) as pub:
        bus.emit("probe:failed", n=0, big=2**70, by_status={429: 2, "x": [2**65]})
        bus.emit("probe:failed", n=1)
        await rec.wait_for(has_event_count(2))
        assert event_ns(rec) == [0, 1]
        first = orjson.loads(rec.on(f"failoverd/{NODE}/events/probe/failed")[0].payload)  # type: ignore[arg-type]
        assert first["big"] == str(2**70)
        assert first["by_status"] == {"429": 2, "x": [str(2**65)]}
        assert pub.stats().dropped == 0


class _Unencodable(Event):
    """An event whose encoding fails the way a bug of ours would."""

    __slots__ = ()

    def to_json(self) -> bytes:
        raise RuntimeError("cannot encode")


@requires_mosquitto
async def test_an_unencodable_event_is_dropped_counted_and_the_rest_go_out(
        mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus(NODE, ManualClock())
    async with Recorder(mosquitto.port, f"failoverd/{NODE}/#") as rec, \
            publisher(mosquitto.port, bus) as pub:
        await pub.wait_connected()
        good = bus.emit("probe:failed", n=0)
        pub.publish_event(_Unencodable(id="x", type="probe:failed", time=good.time,
                                       node=NODE, fields=good.fields))
        bus.emit("probe:failed", n=2)
        await rec.wait_for(has_event_count(2))
        await until(lambda: pub.stats().queued == 0)
        assert event_ns(rec) == [0, 2]
        stats = pub.stats()
        assert stats.dropped == 1 and stats.published == 2 and stats.connected
        assert "event x probe:failed cannot be encoded; dropped" in caplog.text


@requires_mosquitto
async def test_events_are_pipelined_over_a_slow_link(mosquitto: Mosquitto) -> None:
    # 50 ms per acknowledgement: one publish at a time would take 300 x 50 ms = 15 s
    proxy = TcpProxy(mosquitto.port, latency=0.05)
    await proxy.open()
    bus = EventBus(NODE, ManualClock())
    try:
        async with Recorder(mosquitto.port, f"failoverd/{NODE}/#") as rec, \
                publisher(proxy.port, bus, queue_size=1000) as pub:
            await pub.wait_connected()
            for n in range(300):
                bus.emit("probe:failed", n=n)
            await rec.wait_for(has_event_count(300), timeout=10)
            assert event_ns(rec) == list(range(300))  # in order, each once
            await until(lambda: pub.stats().queued == 0)
            stats = pub.stats()
            assert stats.published == 300 and stats.dropped == 0
    finally:
        await proxy.close()


@requires_mosquitto
async def test_falls_back_to_311_when_broker_refuses_v5(mosquitto: Mosquitto) -> None:
    proxy = TcpProxy(mosquitto.port, refuse_v5=True)
    await proxy.open()
    bus = EventBus(NODE, ManualClock())
    try:
        async with Recorder(mosquitto.port, f"failoverd/{NODE}/#") as rec, \
                publisher(proxy.port, bus) as pub:
            bus.emit("probe:failed", n=1)
            await rec.wait_for(has_event_count(1))
            assert pub.stats().protocol == "3.1.1"
            assert proxy.refused_v5 == 1
            [msg] = rec.on(f"failoverd/{NODE}/events/probe/failed")
            assert orjson.loads(msg.payload)["n"] == 1  # type: ignore[arg-type]
    finally:
        await proxy.close()


@requires_mosquitto
async def test_unix_socket_broker(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="fm") as short:
        sock = f"{short}/b.sock"
        broker = Mosquitto(tmp_path, unix_socket=sock)
        broker.start()
        try:
            cfg = MqttConfig(enabled=True, socket=sock)
            async with MqttPublisher(cfg, NODE, None, ManualClock(), timeout=2.0) as pub:
                await asyncio.wait_for(pub.wait_connected(), 5)
                kept = await retained(broker.port, STATUS)
                assert kept[STATUS].payload == b"online"
        finally:
            broker.kill()
            broker.release_port()


WILL_CHILD = """
import asyncio, sys
from failoverd.clock import SystemClock
from failoverd.config import MqttConfig
from failoverd.mqtt import MqttPublisher

async def main():
    cfg = MqttConfig(enabled=True, host="127.0.0.1", port=int(sys.argv[1]))
    async with MqttPublisher(cfg, "willnode", None, SystemClock(), keepalive=5) as pub:
        await pub.wait_connected()
        print("connected", flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@requires_mosquitto
async def test_sigkill_leaves_offline_via_last_will(mosquitto: Mosquitto) -> None:
    status = "failoverd/willnode/status"
    async with Recorder(mosquitto.port, status) as rec:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WILL_CHILD, str(mosquitto.port),
            stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            assert child.stdout is not None
            async with asyncio.timeout(10):
                assert await child.stdout.readline() == b"connected\n"
            await rec.wait_for(lambda msgs: any(m.payload == b"online" for m in msgs))
            child.send_signal(signal.SIGKILL)
            await rec.wait_for(lambda msgs: any(m.payload == b"offline" for m in msgs))
        finally:
            if child.returncode is None:
                child.kill()
            await child.wait()
    kept = await retained(mosquitto.port, status)
    assert kept[status].payload == b"offline"


async def test_unreachable_broker_never_blocks_and_stops_promptly() -> None:
    pub = publisher(1)  # nothing listens on port 1
    bus = EventBus(NODE, ManualClock())
    bus.listen(pub.publish_event)
    pub.start()
    for n in range(5):
        bus.emit("probe:failed", n=n)  # returns at once
    await until(lambda: pub.stats().connect_failures >= 2)
    async with asyncio.timeout(3):
        await pub.stop(grace=1.0)
    stats = pub.stats()
    assert not stats.connected and stats.queued == 5 and stats.published == 0
    assert "cannot connect" in stats.last_error


@pytest.fixture(autouse=True)
def _quiet_paho() -> None:
    """paho logs every packet at DEBUG; keep failures readable."""
    import logging

    logging.getLogger("failoverd.mqtt.paho").setLevel(logging.INFO)
