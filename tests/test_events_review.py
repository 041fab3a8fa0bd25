"""Review of events, MQTT and hooks against DESIGN.md "Events": regression tests for defects
found, and end-to-end checks the other suites do not make."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import orjson
import pytest

from failoverd import hooks as hooks_mod
from failoverd.clock import ManualClock
from failoverd.config import HookConfig
from failoverd.events import EVENT_TYPES, Event, EventBus
from failoverd.hooks import HookRunner
from tests.helpers import HELLO, alive, chat, pair_config
from tests.mosquitto import Mosquitto, Recorder, requires_mosquitto, retained
from tests.mosquitto import mosquitto as mosquitto  # the fixture
from tests.test_events_e2e import sse


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


async def gone(pid: int, timeout: float = 2.0) -> bool:
    async with asyncio.timeout(timeout):
        while alive(pid):
            await asyncio.sleep(0.01)
    return True


def failed_events(bus: EventBus) -> list[Event]:
    return [e for e in bus.recent() if e.type == "hook:failed"]


async def test_timeout_kills_children_of_a_hook_that_already_exited(tmp_path: Path) -> None:
    # The hook itself exits at once, but leaves a child holding its stdout: the run only ends
    # at the timeout, and then that child (same process group) must be killed too.
    pidfile = tmp_path / "child.pid"
    argv = script(tmp_path, "leaky", f"cat >/dev/null\nsleep 30 &\necho $! > {pidfile}\n"
                  "echo '{}'\n")
    bus = EventBus("n1", ManualClock())
    runner = HookRunner((HookConfig(events=("model:failover",), exec=(argv,), timeout=0.5),),
                        bus)
    started = time.monotonic()
    outcome = await runner.run(bus.emit("model:failover", from_model="a", to_model="b"))
    assert time.monotonic() - started < 3
    [failed] = failed_events(bus)
    assert "timed out" in failed.fields["error"] and outcome.errors
    child = int(pidfile.read_text())
    try:
        assert await gone(child), "the hook's child outlived the timeout"
    finally:
        if alive(child):
            import os
            import signal
            os.kill(child, signal.SIGKILL)


async def test_background_hooks_are_not_dropped_by_busy_failover_hooks(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    slow = script(tmp_path, "slow", f"cat >/dev/null\nwhile [ ! -e {gate} ]; do sleep 0.02; "
                  "done\n")
    marker = tmp_path / "breaker.seen"
    alert = script(tmp_path, "alert", f"cat > {marker}\n")
    bus = EventBus("n1", ManualClock())
    runner = HookRunner((HookConfig(events=("model:failover",), exec=(slow,), timeout=10),
                         HookConfig(events=("breaker:*",), exec=(alert,), timeout=5)), bus)
    runner.attach(bus)
    failover = bus.emit("model:failover", from_model="a", to_model="b")
    running = [asyncio.create_task(runner.run(failover)) for _ in range(hooks_mod.MAX_INLINE)]
    try:
        await asyncio.sleep(0)  # every inline run holds its slot now
        bus.emit("breaker:opened", model="a", reason="rate_limit")  # a background hook
        async with asyncio.timeout(5):
            while not marker.exists() or not marker.read_bytes():
                await asyncio.sleep(0.02)
        assert runner.dropped == 0
        assert failed_events(bus) == []
    finally:
        gate.write_text("go")
        await asyncio.wait_for(asyncio.gather(*running), 20)
    await runner.aclose()


async def test_background_hooks_start_at_most_max_concurrent_processes(tmp_path: Path) -> None:
    # README: "at most 8 hook processes at a time" for background hooks, however many hooks
    # subscribe to one event.
    gate = tmp_path / "gate"
    started = tmp_path / "started"
    started.mkdir()
    body = f"cat >/dev/null\ntouch {started}/$$\nwhile [ ! -e {gate} ]; do sleep 0.02; done\n"
    hooks = tuple(HookConfig(events=("breaker:*",), exec=(script(tmp_path, f"h{i}", body),),
                             timeout=10) for i in range(3))
    bus = EventBus("n1", ManualClock())
    runner = HookRunner(hooks, bus)
    runner.attach(bus)
    for n in range(4):
        bus.emit("breaker:opened", model=f"m{n}")
    limit = hooks_mod.MAX_CONCURRENT
    try:
        async with asyncio.timeout(5):
            while len(list(started.iterdir())) < limit:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # time for any process beyond the limit to show up
        assert len(list(started.iterdir())) == limit
    finally:
        gate.write_text("go")
    async with asyncio.timeout(10):
        while runner.pending:
            await asyncio.sleep(0.02)
    assert len(list(started.iterdir())) == 12  # every run happened, none was dropped
    assert runner.dropped == 0 and failed_events(bus) == []


# --------------------------------------------------------------------------- every event type

NODE = "rev"
BASE = f"failoverd/{NODE}"
ODD = "c/odd #+: x"  # every character MQTT topics care about, and a space
ODD_TOPIC = "c%2Fodd%20%23%2B%3A%20x"

# DESIGN.md "Events" and README's table: the fields each type carries
FIELDS = {
    "model:failover": {"from_model", "to_model", "reason", "status", "error", "session",
                       "session_tokens", "target_context_window", "attempt"},
    "breaker:opened": {"model", "reason", "retry_at", "open_count", "previous"},
    "breaker:half_open": {"model", "reason", "retry_at", "open_count", "previous"},
    "breaker:closed": {"model", "reason", "retry_at", "open_count", "previous"},
    "probe:failed": {"model", "kind", "reason", "error", "latency"},
    "probe:recovered": {"model", "kind", "latency"},
    "provider:credentials": {"provider", "state", "reason", "retry_at"},
    "chain:exhausted": {"attempts"},
    "config:reloaded": {"source", "models", "providers"},
    "config:rejected": {"source", "problems"},
    "hook:failed": {"hook", "event", "event_id", "error"},
    "budget:reached": {"scope", "name", "period", "period_key", "cap", "limit_usd",
                       "spent_usd", "resets_at"},
    "model:hedged": {"from_model", "to_model", "after", "winner", "outcome", "session"},
    "client:limited": {"client", "limit", "retry_at", "detail"},
}


def every_type_config(a: Any, b: Any, c: Any, port: int, hook: str, slow: Any) -> str:
    return pair_config(
        a, b, head=f'node = "{NODE}"\n[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {port}',
        a_window=128000, b_window=32000,
        # still b's model: its first answer (15 tokens at $0.10 per 1,000) reaches its cap
        more='cost = { input = 100.0, output = 100.0 }\nmax_cost_per_day = 0.001\n'
             f'[providers.c]\nkind = "openai"\nbase_url = "{c.url}"\n'
             f'[models."{ODD}"]\nprovider = "c"\nname = "gpt-c"\n'
             # slow to answer: hedged to a/gpt-a after 50 ms (model:hedged)
             f'[providers.s]\nkind = "openai"\nbase_url = "{slow.url}"\n'
             '[models."s/slow"]\nprovider = "s"\nhedge_after = 0.05\n',
        tail=f"""[chains.odd]
models = ["{ODD}"]
[chains.hedged]
models = ["s/slow", "a/gpt-a"]
[breaker]
failure_threshold = 1
open_seconds = 30
max_open_seconds = 60
[[hooks]]
events = ["model:failover"]
exec = ["{hook}"]
timeout = 5
[clients.me]
uids = [{os.getuid()}]
max_rpm = 3
""")


@pytest.fixture(autouse=True)
def _quiet_paho() -> None:
    """paho logs every packet at DEBUG; keep failures readable."""
    logging.getLogger("failoverd.mqtt.paho").setLevel(logging.INFO)


@requires_mosquitto
async def test_every_event_type_reaches_mqtt_sse_and_the_log(
        mosquitto: Mosquitto, fake_openai: Any, start_daemon: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="failoverd.audit")
    a = await fake_openai(default="rate_limit", reply="from a")
    b = await fake_openai(reply="from b")
    c = await fake_openai(default="auth")
    slow = await fake_openai(default="slow:5")
    junk = script(tmp_path, "junk", "cat >/dev/null\necho 'not json'\n")
    clock = ManualClock()
    async with Recorder(mosquitto.port, f"{BASE}/#") as rec:
        d = await start_daemon(every_type_config(a, b, c, mosquitto.port, junk, slow),
                               clock=clock)
        svc = d.sup.service
        await asyncio.wait_for(svc.mqtt.wait_connected(), 5)
        async with sse(d) as stream:
            await stream.until_connected()
            # a's 429 opens its breaker; the hook prints junk; b serves
            resp = await chat(d, **{"x-failoverd-session": "s1"})
            assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "b/gpt-b"
            # the odd chain's only model has a bad key: credentials, then exhausted
            resp = await chat(d, "odd")
            assert resp.status_code == 503
            # a's open period ends and it answers again: half-open, then closed
            clock.advance(61)
            a.default = "ok"
            resp = await chat(d)
            assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "a/gpt-a"
            # an operator probe fails, the next one succeeds
            a.default = "server_error"
            resp = await d.http.post("/v1/models/a/gpt-a/probe")
            assert resp.json()["ok"] is False
            a.default = "ok"
            resp = await d.http.post("/v1/models/a/gpt-a/probe")
            assert resp.json()["ok"] is True
            # a slow model is hedged: a answers first
            resp = await chat(d, "hedged")
            assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "a/gpt-a"
            # this process's uid is client "me": its third request in the minute is its last
            assert (await chat(d)).status_code == 200
            assert (await chat(d)).status_code == 429
            # a rejected reload, then a good one
            path = Path(d.sup.config_path)
            good = path.read_text()
            path.write_text(good + "\n[routing.bogus]\nx = 1\n")
            assert (await d.http.post("/v1/reload")).status_code == 422
            path.write_text(good)
            assert (await d.http.post("/v1/reload")).status_code == 200

            emitted = svc.bus.recent()
            assert {e.type for e in emitted} == set(EVENT_TYPES)
            live = [await stream.next() for _ in emitted]
        await rec.wait_for(lambda msgs: sum("/events/" in m.topic.value for m in msgs)
                           >= len(emitted), timeout=10)
        await asyncio.wait_for(_states_published(svc), 5)
        kept = await retained(mosquitto.port, f"{BASE}/models/#")

    # /v1/events: every event, in order, with its id and type
    assert [(e["id"], e["event"]) for e in live if e] == [(e.id, e.type) for e in emitted]
    # MQTT: every event on P/events/<category>/<action>, as the same JSON
    on_mqtt = {orjson.loads(_bytes(m))["id"]: m for m in rec.messages
               if "/events/" in m.topic.value}
    for event in emitted:
        msg = on_mqtt[event.id]
        category, action = event.type.split(":")
        assert msg.topic.value == f"{BASE}/events/{category}/{action}"
        assert orjson.loads(_bytes(msg)) == orjson.loads(event.to_json())
        assert FIELDS[event.type] <= set(event.fields), event.type
    # the log: one audit line per event
    lines = [r.getMessage() for r in caplog.records if r.name == "failoverd.audit"]
    assert [line.split()[1] for line in lines] == [e.type for e in emitted]

    by_type = {e.type: e.fields for e in emitted}
    failover = by_type["model:failover"]
    assert (failover["from_model"], failover["to_model"], failover["reason"],
            failover["status"], failover["session"], failover["target_context_window"],
            failover["attempt"]) == ("a/gpt-a", "b/gpt-b", "rate_limit", 429, "s1", 32000, 1)
    assert "Rate limit reached" in failover["error"] and failover["session_tokens"] > 0
    assert by_type["breaker:half_open"]["model"] == "a/gpt-a"
    assert ("a/gpt-a", "half_open") in [(e.fields["model"], e.fields["previous"])
                                        for e in emitted if e.type == "breaker:closed"]
    assert (by_type["probe:failed"]["model"], by_type["probe:failed"]["reason"]) == (
        "a/gpt-a", "server_error")
    assert by_type["probe:recovered"]["model"] == "a/gpt-a"
    creds = by_type["provider:credentials"]
    assert (creds["provider"], creds["state"]) == ("c", "auth")
    assert [x["model"] for x in by_type["chain:exhausted"]["attempts"]] == [ODD]
    hook_failed = by_type["hook:failed"]
    assert (hook_failed["hook"], hook_failed["event"]) == (junk, "model:failover")
    assert "not JSON" in hook_failed["error"]
    # the odd model's retained state: one percent-encoded topic level
    odd = kept[f"{BASE}/models/{ODD_TOPIC}/state"]
    assert orjson.loads(_bytes(odd))["model"] == ODD
    assert orjson.loads(_bytes(odd))["state"] == "unavailable"


def _bytes(msg: aiomqtt.Message) -> bytes:
    assert isinstance(msg.payload, bytes | bytearray)
    return bytes(msg.payload)


async def _states_published(svc: Any) -> None:
    while svc.mqtt.stats().states_pending:
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- /v1/events


def sse_dropped(metrics: str) -> int:
    prefix = "failoverd_sse_dropped_events_total "
    return int(next(line[len(prefix):] for line in metrics.splitlines()
                    if line.startswith(prefix)))


async def open_stalled_sse(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A /v1/events client that reads the response head and then never reads again."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"GET /v1/events HTTP/1.1\r\nHost: failoverd\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b": connected" in await reader.readuntil(b": connected\n\n")
    return reader, writer


async def test_a_stalled_sse_client_neither_blocks_nor_leaks(fake_openai: Any,
                                                             start_daemon: Any) -> None:
    a = await fake_openai(default="rate_limit")
    b = await fake_openai(reply="from b")
    d = await start_daemon(pair_config(a, b))
    svc = d.sup.service
    _, writer = await open_stalled_sse(d.socket)
    try:
        assert len(svc.streams) == 1
        padding = "x" * 4096
        started = time.monotonic()
        for n in range(5000):  # ~20 MB of events for a client that reads nothing
            svc.bus.emit("config:reloaded", source="test", n=n, padding=padding)
        assert time.monotonic() - started < 5
        async with asyncio.timeout(5):  # the daemon goes on serving meanwhile
            resp = await chat(d)
        assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "b/gpt-b"
        [stream] = svc.streams
        assert len(stream.sub) <= 1000  # what waits for the client is bounded ...
        dropped = sse_dropped((await d.http.get("/metrics")).text)
        assert dropped >= 5000 - 1000 - 100  # ... and what it lost is counted
    finally:
        writer.close()
    async with asyncio.timeout(5):  # the client went away: its subscription is released
        while svc.streams or svc.bus.stats()["subscribers"]:
            await asyncio.sleep(0.02)
    assert sse_dropped((await d.http.get("/metrics")).text) >= dropped  # the count stays


async def test_a_stalled_sse_client_does_not_hold_up_shutdown(fake_openai: Any,
                                                              start_daemon: Any) -> None:
    a = await fake_openai()
    b = await fake_openai()
    d = await start_daemon(pair_config(a, b, head="shutdown_timeout = 20"))
    _, writer = await open_stalled_sse(d.socket)
    try:
        for n in range(2000):  # fills the socket buffers: the handler waits in a write
            d.sup.service.bus.emit("config:reloaded", source="test", n=n, padding="x" * 4096)
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await asyncio.wait_for(d.stop(), 30)
        assert time.monotonic() - started < 5
    finally:
        writer.close()


# --------------------------------------------------------------------------- hooks end to end


def hooked_config(a: Any, b: Any, hook: str, timeout: float = 2) -> str:
    return pair_config(a, b) + (f'[[hooks]]\nevents = ["model:failover"]\nexec = ["{hook}"]\n'
                                f"timeout = {timeout}\n")


async def test_abort_on_the_anthropic_front_end_is_an_anthropic_error(
        fake_openai: Any, start_daemon: Any, tmp_path: Path) -> None:
    a = await fake_openai(default="rate_limit")
    b = await fake_openai(reply="from b")
    hook = script(tmp_path, "abort", "cat >/dev/null\n"
                  'echo \'{"abort": true, "messages": ["budget spent"]}\'\n')
    d = await start_daemon(hooked_config(a, b, hook))
    resp = await d.http.post("/v1/messages", json={"model": "default", "max_tokens": 16,
                                                   "messages": HELLO})
    assert resp.status_code == 429
    body = resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"  # Anthropic's own type names
    assert "Rate limit reached" in body["error"]["message"]
    assert body["error"]["messages"] == ["budget spent"]
    assert resp.headers["x-failoverd-notice"] == "budget spent"
    assert b.chat_requests() == []
    # the OpenAI front end names the abort in `code`
    resp = await chat(d)
    assert resp.status_code == 429
    assert resp.json()["error"]["code"] == "failover_aborted"


async def test_a_hanging_hook_leaves_no_process_behind(fake_openai: Any, start_daemon: Any,
                                                       tmp_path: Path) -> None:
    a = await fake_openai(default="rate_limit")
    b = await fake_openai(reply="from b")
    pids = tmp_path / "pids"
    hook = script(tmp_path, "hang", f"echo $$ >> {pids}\nsleep 30 &\necho $! >> {pids}\n"
                  "wait\n")
    d = await start_daemon(hooked_config(a, b, hook, timeout=0.5))
    started = time.monotonic()
    resp = await chat(d)
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "b/gpt-b"
    assert time.monotonic() - started < 3  # the request waited for the timeout, no longer
    leader, child = (int(p) for p in pids.read_text().split())
    assert await gone(child)
    assert not Path(f"/proc/{leader}").exists()  # reaped by the daemon: no zombie
    failed = [e for e in d.sup.service.bus.recent() if e.type == "hook:failed"]
    assert len(failed) == 1 and "timed out" in failed[0].fields["error"]
    assert "failoverd_hook_failures_total 1" in (await d.http.get("/metrics")).text


async def test_a_long_hook_message_does_not_cost_the_client_its_answer(
        fake_openai: Any, start_daemon: Any, tmp_path: Path) -> None:
    a = await fake_openai(default="rate_limit")
    b = await fake_openai(reply="from b")
    message = "y" * 9000  # past aiohttp's 8190-byte header line
    hook = script(tmp_path, "long", f"cat >/dev/null\necho '{{\"messages\": [\"{message}\"]}}'\n")
    d = await start_daemon(hooked_config(a, b, hook))
    connector = aiohttp.UnixConnector(path=d.socket)
    async with aiohttp.ClientSession(connector=connector) as session, session.post(
            "http://failoverd/v1/chat/completions",
            json={"model": "default", "messages": HELLO}) as resp:
        assert resp.status == 200
        notice = resp.headers["x-failoverd-notice"]
        body = await resp.json()
    assert len(notice) <= 4000 and notice.startswith("yyy") and notice.endswith("...")
    assert body["failoverd"] == {"notices": [message]}  # the body has it in full
    assert body["choices"][0]["message"]["content"] == "from b"
