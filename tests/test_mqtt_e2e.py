"""MQTT end to end: the daemon (in-process, or a `failoverd` subprocess) publishing to a real
mosquitto while fake upstreams make it fail over; real aiomqtt subscribers check the topics."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest

from failoverd.mqtt import EVENT_EXPIRY_SECONDS
from tests.conftest import daemon_toml
from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO, pair_config, until
from tests.mosquitto import (
    Mosquitto,
    Recorder,
    TcpProxy,
    hold_port,
    requires_mosquitto,
    retained,
)
from tests.mosquitto import mosquitto as mosquitto  # the fixture

NODE = "e2e"
BASE = f"failoverd/{NODE}"
STATUS = f"{BASE}/status"
FAILOVER = f"{BASE}/events/model/failover"
OPENED = f"{BASE}/events/breaker/opened"
MODELS = ("a/gpt-a", "b/gpt-b", "ollama/qwen2.5:7b")
STATE_TOPICS = {m: f"{BASE}/models/{t}/state" for m, t in zip(
    MODELS, ("a%2Fgpt-a", "b%2Fgpt-b", "ollama%2Fqwen2.5%3A7b"), strict=True)}
FAILOVERD = str(Path(sys.executable).parent / "failoverd")


def config(a: FakeOpenAI, b: FakeOpenAI, port: int, *, threshold: int = 2,
           queue_size: int = 1000, daemon: str = "") -> str:
    """Config body for start_daemon (it supplies [daemon] socket and state_dir first)."""
    return pair_config(
        a, b, head=f"""node = "{NODE}"
{daemon}
[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
queue_size = {queue_size}""",
        a_window=128000, b_window=32000, more='[models."ollama/qwen2.5:7b"]\nprovider = "b"\n',
        tail=f"[breaker]\nfailure_threshold = {threshold}\n")


def payload(msg: aiomqtt.Message) -> Any:
    assert isinstance(msg.payload, bytes)
    return orjson.loads(msg.payload)


def on(topic: str, n: int = 1) -> Callable[[list[aiomqtt.Message]], bool]:
    return lambda msgs: sum(m.topic.value == topic for m in msgs) >= n


async def chat(d: Any, session: str = "s1") -> Any:
    started = time.monotonic()
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "default", "messages": HELLO},
        headers={"x-failoverd-session": session})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "b/gpt-b"
    # the request path never waits on MQTT, broker up or down
    assert time.monotonic() - started < 2
    return resp


@pytest.fixture(autouse=True)
def _quiet_paho() -> None:
    """paho logs every packet at DEBUG; keep failures readable."""
    logging.getLogger("failoverd.mqtt.paho").setLevel(logging.INFO)


@pytest.fixture
async def upstreams(fake_openai: Any) -> tuple[FakeOpenAI, FakeOpenAI]:
    return (await fake_openai(default="rate_limit", reply="from a"),
            await fake_openai(reply="from b"))


@requires_mosquitto
async def test_status_states_failover_and_breaker(mosquitto: Mosquitto, upstreams: Any,
                                                  start_daemon: Any) -> None:
    a, b = upstreams
    async with Recorder(mosquitto.port, f"{BASE}/#") as rec:
        d = await start_daemon(config(a, b, mosquitto.port))
        svc = d.sup.service
        await asyncio.wait_for(svc.mqtt.wait_connected(), 5)
        await until(lambda: svc.mqtt.stats().states_pending == 0)
        kept = await retained(mosquitto.port, f"{BASE}/#")
        assert kept[STATUS].payload == b"online"
        for model_id, topic in STATE_TOPICS.items():
            state = payload(kept[topic])
            assert state["model"] == model_id
            assert state["state"] == "closed"

        await chat(d)  # one 429: a failover, breaker still closed (threshold 2)
        await rec.wait_for(on(FAILOVER))
        [msg] = rec.on(FAILOVER)
        assert not msg.retain
        assert msg.qos == 1
        assert msg.properties is not None
        assert msg.properties.ContentType == "application/json"  # type: ignore[attr-defined]
        assert 0 < msg.properties.MessageExpiryInterval <= EVENT_EXPIRY_SECONDS  # type: ignore[attr-defined]
        event = payload(msg)
        assert event["type"] == "model:failover"
        assert event["node"] == NODE
        assert (event["from_model"], event["to_model"]) == ("a/gpt-a", "b/gpt-b")
        assert (event["reason"], event["status"]) == ("rate_limit", 429)
        assert "Rate limit reached" in event["error"]
        assert event["session"] == "s1"
        assert event["session_tokens"] > 0
        assert event["target_context_window"] == 32000
        assert event["attempt"] == 1
        assert rec.on(OPENED) == []

        await chat(d, "s2")  # the second consecutive failure on a opens its breaker
        # (another session: s1 now sticks to its fallback and would not try a again)
        await rec.wait_for(on(OPENED))
        opened = payload(rec.on(OPENED)[0])
        assert opened["model"] == "a/gpt-a"
        assert opened["reason"] == "rate_limit"
        assert opened["open_count"] == 1
        assert opened["retry_at"] is not None
        topic = STATE_TOPICS["a/gpt-a"]
        await rec.wait_for(lambda msgs: any(
            m.topic.value == topic and payload(m)["state"] == "open" for m in msgs))
    kept = await retained(mosquitto.port, f"{BASE}/models/#")
    state = payload(kept[topic])
    assert state["state"] == "open"
    assert state["reason"] == "rate_limit"
    assert state["retry_at"] == opened["retry_at"]
    assert payload(kept[STATE_TOPICS["b/gpt-b"]])["state"] == "closed"


@requires_mosquitto
async def test_broker_restart_mid_run(mosquitto: Mosquitto, upstreams: Any,
                                      start_daemon: Any) -> None:
    # The daemon reaches the broker through a proxy the test holds closed while the broker is
    # down, so the test's subscriber is back on the restarted broker before the daemon
    # reconnects (events are not retained: a late subscriber would miss them).
    a, b = upstreams
    proxy = TcpProxy(mosquitto.port)
    await proxy.open()
    try:
        d = await start_daemon(config(a, b, proxy.port, threshold=2))
        svc = d.sup.service
        pub = svc.mqtt
        await asyncio.wait_for(pub.wait_connected(), 5)
        await until(lambda: pub.stats().states_pending == 0)

        await proxy.close_listener()
        mosquitto.kill()
        await until(lambda: not pub.stats().connected)
        await chat(d, "down-1")  # served while the broker is away
        await chat(d, "down-2")  # ... and this one opens a's breaker
        emitted = [e for e in svc.bus.recent() if e.type != "config:reloaded"]
        assert [e.type for e in emitted] == ["model:failover", "breaker:opened",
                                             "model:failover"]
        status = (await d.http.get("/v1/status")).json()["mqtt"]
        assert status["connected"] is False
        assert status["queued"] == 3
        assert status["dropped"] == 0
        metrics = (await d.http.get("/metrics")).text
        assert "failoverd_mqtt_queued_events 3" in metrics
        assert "failoverd_mqtt_connected 0" in metrics

        mosquitto.start()  # same port, empty: no retained messages survive
        async with Recorder(mosquitto.port, f"{BASE}/#") as rec:
            await proxy.open()
            await rec.wait_for(on(f"{BASE}/events/model/failover", 2), timeout=10)
            await rec.wait_for(on(OPENED))
            got = [payload(m) for m in rec.messages if "/events/" in m.topic.value]
            assert [e["id"] for e in got] == [e.id for e in emitted]  # all of them, in order
            assert [e["session"] for e in got if e["type"] == "model:failover"] == [
                "down-1", "down-2"]
            assert [bytes(m.payload) for m in rec.on(STATUS)] == [  # type: ignore[arg-type]
                b"online"]
        await until(lambda: pub.stats().states_pending == 0)
        kept = await retained(mosquitto.port, f"{BASE}/#")
        assert kept[STATUS].payload == b"online"
        assert set(STATE_TOPICS.values()) <= set(kept)
        assert payload(kept[STATE_TOPICS["a/gpt-a"]])["state"] == "open"
        stats = (await d.http.get("/v1/status")).json()["mqtt"]
        assert stats["connected"] is True
        assert stats["queued"] == 0 and stats["dropped"] == 0
        assert stats["reconnects"] == 1
        metrics = (await d.http.get("/metrics")).text
        assert "failoverd_mqtt_published_events_total 3" in metrics
        assert "failoverd_mqtt_connected 1" in metrics
    finally:
        await proxy.close()


async def test_full_buffer_drops_oldest_and_counts_while_serving(upstreams: Any,
                                                                 start_daemon: Any) -> None:
    a, b = upstreams
    nobody = hold_port(0)  # bound, never listening: refused (and never a self-connect)
    try:
        d = await start_daemon(config(a, b, nobody.getsockname()[1], threshold=100,
                                      queue_size=2))
        await _fill_and_stop(d)
    finally:
        nobody.close()


async def _fill_and_stop(d: Any) -> None:
    for n in range(4):  # four failovers, nowhere to publish them
        await chat(d, f"s{n}")
    status = (await d.http.get("/v1/status")).json()["mqtt"]
    assert status["connected"] is False
    assert (status["queued"], status["dropped"]) == (2, 2)
    assert "cannot connect" in status["last_error"]
    metrics = (await d.http.get("/metrics")).text
    assert "failoverd_mqtt_dropped_events_total 2" in metrics
    assert "failoverd_mqtt_queued_events 2" in metrics
    # the newest two are the ones kept
    kept = [e.fields["session"] for e in d.sup.service.mqtt._queue]
    assert kept == ["s2", "s3"]
    async with asyncio.timeout(10):
        await d.stop()  # an unreachable broker does not hold shutdown up


def subprocess_config(tmp: Path, a: FakeOpenAI, b: FakeOpenAI, port: int) -> Path:
    path = tmp / "failoverd.toml"
    path.write_text(daemon_toml(f"{tmp}/d.sock", f"{tmp}/state", config(a, b, port)))
    return path


async def start_subprocess(path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        FAILOVERD, "--config", str(path), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@requires_mosquitto
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGKILL, -signal.SIGKILL),
                                           (signal.SIGTERM, 0)], ids=["sigkill", "sigterm"])
async def test_daemon_process_leaves_offline(mosquitto: Mosquitto, upstreams: Any,
                                             short_dir: Path, sig: int, code: int) -> None:
    a, b = upstreams
    path = subprocess_config(short_dir, a, b, mosquitto.port)
    async with Recorder(mosquitto.port, f"{BASE}/#") as rec:
        proc = await start_subprocess(path)
        try:
            await rec.wait_for(lambda msgs: any(
                m.topic.value == STATUS and m.payload == b"online" for m in msgs), timeout=10)
            await rec.wait_for(lambda msgs: all(
                any(m.topic.value == t for m in msgs) for t in STATE_TOPICS.values()))
            proc.send_signal(sig)
            await rec.wait_for(lambda msgs: any(
                m.topic.value == STATUS and m.payload == b"offline" for m in msgs), timeout=10)
            async with asyncio.timeout(10):
                _, err = await proc.communicate()
            assert proc.returncode == code, err.decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    kept = await retained(mosquitto.port, f"{BASE}/#")
    assert kept[STATUS].payload == b"offline"
    assert set(STATE_TOPICS.values()) <= set(kept)  # states stay for dashboards
    if sig == signal.SIGTERM:
        assert b"mqtt: published offline" in err
