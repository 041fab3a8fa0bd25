"""Review of hooks and MQTT under hostile or failing conditions: hooks that misbehave, shutdown
while hooks run; brokers that refuse publishes or never answer CONNECT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from failoverd.clock import ManualClock
from failoverd.config import HookConfig, MqttConfig
from failoverd.events import EventBus
from failoverd.hooks import HookOutcome, HookRunner
from failoverd.mqtt import MqttPublisher
from tests.helpers import alive, chat, pair_config
from tests.mosquitto import MOSQUITTO, Mosquitto, Recorder, requires_mosquitto, running

NODE = "hm"


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def hooked_config(a: Any, b: Any, hook: str, *, timeout: float = 2,
                  events: str = "model:failover", head: str = "") -> str:
    return pair_config(a, b, head=head) + (
        f'[[hooks]]\nevents = ["{events}"]\nexec = ["{hook}"]\ntimeout = {timeout}\n')


def publisher(port: int, bus: EventBus | None = None, *, v5: bool = True) -> MqttPublisher:
    pub = MqttPublisher(MqttConfig(enabled=True, host="127.0.0.1", port=port), NODE, bus,
                        ManualClock(), random.Random(3), keepalive=5, timeout=2.0,
                        backoff_initial=0.05, backoff_max=0.2)
    pub._v5 = v5  # as after a broker refused v5
    return pub


@pytest.fixture(autouse=True)
def _quiet_paho() -> None:
    """paho logs every packet at DEBUG; keep failures readable."""
    logging.getLogger("failoverd.mqtt.paho").setLevel(logging.INFO)


@pytest.fixture
def acl_broker(tmp_path: Path) -> Any:
    """A mosquitto whose ACL lets clients read everything and write nothing of ours."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    acl = tmp_path / "acl"
    acl.write_text("topic read #\ntopic write somebody-else/#\n")
    broker = Mosquitto(tmp_path)
    broker.conf.write_text(broker.conf.read_text() + f"acl_file {acl}\n")
    with running(broker):
        yield broker


# --------------------------------------------------------------------------- MQTT


@requires_mosquitto
async def test_publishes_an_acl_refuses_are_reported_not_passed_off_as_published(
        acl_broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    """Under MQTT v5 a broker's ACL refusal comes back in the PUBACK (0x87 Not authorized);
    aiomqtt completes the publish anyway, so every event counted as published, last_error
    stayed empty, nothing was logged, and a dashboard stayed empty with no clue why."""
    caplog.set_level(logging.INFO, logger="failoverd.mqtt")
    bus = EventBus(NODE, ManualClock())
    async with Recorder(acl_broker.port, f"failoverd/{NODE}/#") as rec, \
            publisher(acl_broker.port, bus) as pub:
        await asyncio.wait_for(pub.wait_connected(), 5)
        bus.emit("probe:failed", model="m")
        async with asyncio.timeout(5):
            while pub.stats().queued:
                await asyncio.sleep(0.01)
        stats = pub.stats()
        assert stats.refused >= 2  # online and the event
        assert "Not authorized" in stats.last_error and f"failoverd/{NODE}/#" in stats.last_error
        assert any(r.levelno == logging.ERROR and "refused" in r.getMessage()
                   for r in caplog.records)
        assert pub.stats().as_dict()["refused"] == stats.refused
        assert rec.messages == []  # really refused


@requires_mosquitto
async def test_mqtt_311_cannot_tell_a_refusal(acl_broker: Mosquitto) -> None:
    """3.1.1 has no reason code in PUBACK: nothing is counted as refused (README says so)."""
    bus = EventBus(NODE, ManualClock())
    async with publisher(acl_broker.port, bus, v5=False) as pub:
        await asyncio.wait_for(pub.wait_connected(), 5)
        bus.emit("probe:failed", model="m")
        async with asyncio.timeout(5):
            while pub.stats().queued:
                await asyncio.sleep(0.01)
        assert pub.stats().refused == 0 and pub.stats().protocol == "3.1.1"


async def silent_broker() -> tuple[asyncio.Server, int, list[asyncio.StreamWriter]]:
    """A TCP server that accepts connections, reads the CONNECT and never answers."""
    conns: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        with contextlib.suppress(OSError):
            await reader.read()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], conns


@contextlib.asynccontextmanager
async def silent_broker_port() -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    server, port, conns = await silent_broker()
    try:
        yield port, conns
    finally:
        server.close()
        for w in conns:
            w.close()
        await server.wait_closed()


async def test_shutdown_with_a_hung_hook_and_a_silent_broker_keeps_to_shutdown_timeout(
        fake_openai: Any, start_daemon: Any, tmp_path: Path) -> None:
    """Stop used shutdown_timeout for the drain, then 5 s more for background hooks and up to
    5 s more for MQTT, whatever was left: with shutdown_timeout = 1, a hung breaker hook and a
    broker that never answers CONNECT, a stop took 10 s (with 30 s, 42 of systemd's 45, and
    state is saved last). Now hooks and MQTT get what is left of shutdown_timeout (MQTT at
    least 1 s, and a connection attempt under way no longer than that)."""
    a = await fake_openai(default="hang")
    b = await fake_openai(reply="from b")
    pids = tmp_path / "pids"
    hook = script(tmp_path, "hang", f"cat >/dev/null\necho $$ >> {pids}\nexec sleep 30\n")
    async with silent_broker_port() as (port, conns):
        head = (f'shutdown_timeout = 1\n[mqtt]\nenabled = true\nhost = "127.0.0.1"\n'
                f"port = {port}")
        d = await start_daemon(hooked_config(a, b, hook, timeout=30, events="breaker:*",
                                             head=head))
        assert (await d.http.post("/v1/models/b/gpt-b/open", json={"seconds": 60})
                ).status_code == 200
        async with asyncio.timeout(5):
            while not pids.exists() or not conns:  # the hook runs, the broker got CONNECT
                await asyncio.sleep(0.01)
        held = asyncio.create_task(chat(d))  # a hangs: this request lasts the whole drain
        async with asyncio.timeout(5):
            while not a.requests:
                await asyncio.sleep(0.01)
        started = time.monotonic()
        await d.stop()
        took = time.monotonic() - started
        resp = await held
    assert resp.status_code == 503  # cut at the deadline, with a clear error
    assert took < 3.5, f"stop took {took:.1f}s with shutdown_timeout = 1"
    assert not Path(f"/proc/{int(pids.read_text())}").exists()  # killed and reaped
    assert d.sup.service is not None and d.sup.service.mqtt is not None
    assert d.sup.service.mqtt.stats().connected is False


# --------------------------------------------------------------------------- hooks


async def test_a_hook_that_exits_leaving_a_detached_child_gets_it_killed_at_its_timeout(
        tmp_path: Path) -> None:
    """`cmd </dev/null >/dev/null 2>&1 &` in a hook: the hook exits at once and its answer
    counts, but the child lived on forever (it holds none of the hook's pipes, so the run
    ended normally and nothing killed its group): a hook run per failover piled up processes
    without end. Now what a hook leaves in its process group is killed at its timeout."""
    pidfile = tmp_path / "child.pid"
    argv = script(tmp_path, "leaves", "cat >/dev/null\nsleep 30 </dev/null >/dev/null 2>&1 &\n"
                  f"echo $! > {pidfile}\necho '{{\"messages\": [\"ok\"]}}'\n")
    bus = EventBus(NODE, ManualClock())
    runner = HookRunner((HookConfig(events=("model:failover",), exec=(argv,), timeout=0.5),),
                        bus)
    started = time.monotonic()
    outcome = await runner.run(bus.emit("model:failover", from_model="a", to_model="b"))
    assert time.monotonic() - started < 0.5  # the request does not wait for the child
    assert outcome == HookOutcome(messages=("ok",))
    child = int(pidfile.read_text())
    try:
        assert alive(child)  # it gets the rest of the hook's timeout
        async with asyncio.timeout(3):
            while alive(child):
                await asyncio.sleep(0.02)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
    assert runner.failures == 0 and runner.runs == 1


async def test_shutdown_kills_what_finished_hooks_left_running(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    argv = script(tmp_path, "leaves", "cat >/dev/null\nsleep 30 </dev/null >/dev/null 2>&1 &\n"
                  f"echo $! > {pidfile}\n")
    bus = EventBus(NODE, ManualClock())
    runner = HookRunner((HookConfig(events=("breaker:*",), exec=(argv,), timeout=30),), bus)
    runner.fire_and_forget(bus.emit("breaker:opened", model="a"))
    async with asyncio.timeout(5):
        while runner.pending:
            await asyncio.sleep(0.01)
    child = int(pidfile.read_text())
    try:
        assert alive(child)
        async with asyncio.timeout(2):
            await runner.aclose(grace=0)
        async with asyncio.timeout(2):
            while alive(child):
                await asyncio.sleep(0.01)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
