"""Review of four operator features of Dec 7, end to end against the real daemon: Home
Assistant MQTT discovery (on a real mosquitto), daemon.access_log (on both of the daemon's HTTP
paths), models.<id>.max_rpm (on a ManualClock) and failoverd_cost_usd_total.

The tests pin behaviour worth keeping; those of the defects the review found pass since the fixes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from failoverd.catalog import Cost, ModelConfig
from failoverd.clock import ManualClock
from failoverd.discovery import object_id
from failoverd.fingerprint import fingerprint
from tests.fakes.base import event_stream, serve_app
from tests.helpers import HELLO, one_model_config, providers, tcp_listener, until
from tests.helpers import chat as ask
from tests.mosquitto import Mosquitto, TcpProxy, recording, requires_mosquitto, retained
from tests.mosquitto import mosquitto as mosquitto  # the fixture
from tests.test_fastpath import CHAT, connect, own_daemon, post, read_answer
from tests.test_mqtt_discovery import body as mqtt_body
from tests.test_prompt_caching import tool_loop
from tests.test_sdk_clients import anthropic_client, openai_client

NO_PROBES = '[probes]\nkind = "none"\n'


# ====================================================================== Home Assistant discovery

NODE = "den"
DISCOVERY = "homeassistant/binary_sensor"
NODE_ID = f"failoverd_{object_id(NODE)}"
# Home Assistant's discovery topic: <prefix>/<component>/[<node_id>/]<object_id>/config, both
# ids of [a-zA-Z0-9_-] (its MQTT integration documentation, "Discovery topic")
HA_TOPIC = re.compile(r"homeassistant/binary_sensor/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config")
# Home Assistant drops these names from json_attributes (MQTT_ATTRIBUTES_BLOCKED)
HA_BLOCKED_ATTRIBUTES = {"state", "device_class", "name", "unique_id", "icon", "friendly_name"}


def render_problem(template: str, payload: bytes) -> str:
    """Home Assistant's rendering of the model sensors' value_template for a state payload:
    `value_json` is the payload's JSON (undefined when it is none); "" when rendering fails
    (HA logs "Error parsing value" and ignores the message)."""
    found = re.fullmatch(r"\{\{ 'OFF' if value_json\.state in \[(.*)\] else 'ON' \}\}", template)
    assert found, template
    try:
        value_json = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ""  # value_json.state on an undefined value_json: a template error in HA
    ok = [s.strip().strip("'") for s in found.group(1).split(",")]
    return "OFF" if value_json["state"] in ok else "ON"


async def settled(d: Any) -> None:
    pub = d.sup.service.mqtt
    await asyncio.wait_for(pub.wait_connected(), 5)
    await until(lambda: pub.stats().states_pending == 0)


async def configs(port: int) -> dict[str, dict[str, Any]]:
    found = await retained(port, "homeassistant/#")
    return {t: orjson.loads(m.payload) for t, m in found.items()}


@requires_mosquitto
async def test_discovery_configs_make_working_home_assistant_entities(
        mosquitto: Mosquitto, start_daemon: Any) -> None:
    """What Home Assistant needs of a retained binary_sensor config: a topic of the allowed
    characters (an odd node name and model ids too), a state_topic it can read right away
    (retained), unique ids, one device with identifiers, an availability topic that says
    online, and a value_template that renders its payload_on/payload_off (ON/OFF)."""
    models = ("sim/chat", "down/chat", "ollama/qwen2.5:7b", "sim/a+b#c%d")
    node = "Büro.lan 2"
    d = await start_daemon(mqtt_body(mosquitto.port, models=models, node=node))
    await settled(d)
    await d.http.post(CHAT, json={"model": "down/chat", "messages": HELLO},
                      headers={"x-failoverd-no-fallback": "1"})  # opens its breaker
    await settled(d)
    found = await configs(mosquitto.port)
    kept = await retained(mosquitto.port, f"failoverd/{node}/#")
    assert len(found) == len(models) + 1
    assert all(HA_TOPIC.fullmatch(t) for t in found), sorted(found)
    assert len({c["unique_id"] for c in found.values()}) == len(found)
    devices = [c["device"] for c in found.values()]
    assert all(dev == devices[0] for dev in devices) and devices[0]["identifiers"]
    assert devices[0]["name"] == f"failoverd {node}"
    shown = {}
    for config in found.values():
        assert config["state_topic"] in kept  # retained: HA has a state at once, also after
        # its own restart
        if config["device_class"] == "connectivity":
            assert kept[config["state_topic"]].payload == config["payload_on"].encode()
            continue
        assert config["device_class"] == "problem" and "payload_on" not in config
        assert kept[config["availability_topic"]].payload == \
            config["payload_available"].encode()
        state = kept[config["state_topic"]].payload
        assert isinstance(state, bytes)
        attributes = orjson.loads(state)
        # what the README promises as attributes survives HA's blocked names
        assert {"reason", "retry_at", "open_count", "provider"} <= \
            set(attributes) - HA_BLOCKED_ATTRIBUTES
        shown[config["name"]] = render_problem(config["value_template"], state)
    assert shown == {"sim/chat": "OFF", "down/chat": "ON", "ollama/qwen2.5:7b": "OFF",
                     "sim/a+b#c%d": "OFF"}


@requires_mosquitto
async def test_a_removed_models_sensor_goes_before_its_state_topic(
        mosquitto: Mosquitto, start_daemon: Any, short_dir: Path) -> None:
    models = ("sim/chat", "sim/gone")
    d = await start_daemon(mqtt_body(mosquitto.port, models=models))
    await settled(d)
    config_topic = f"{DISCOVERY}/{NODE_ID}/{object_id('sim/gone')}/config"
    template = (await configs(mosquitto.port))[config_topic]["value_template"]
    state_topic = d.sup.service.mqtt.model_state_topic("sim/gone")
    async with recording(mosquitto.port, "#") as rec:
        path = short_dir / "d.toml"
        path.write_text(path.read_text().replace('[models."sim/gone"]\nprovider = "sim"\n', ""))
        assert (await d.http.post("/v1/reload")).json()["ok"] is True
        await rec.wait_for(lambda ms: {m.topic.value for m in ms if m.payload == b""}
                           >= {config_topic, state_topic})
    # what an entity still subscribed to the state topic would render: nothing good
    assert render_problem(template, b"") == ""
    cleared = [m.topic.value for m in rec.messages if m.payload == b""]
    assert cleared.index(config_topic) < cleared.index(state_topic)


@requires_mosquitto
async def test_a_model_removed_across_a_restart_loses_its_sensor(
        mosquitto: Mosquitto, start_daemon: Any) -> None:
    d = await start_daemon(mqtt_body(mosquitto.port, models=("sim/chat", "sim/gone")))
    await settled(d)
    await d.stop()
    d = await start_daemon(mqtt_body(mosquitto.port, models=("sim/chat",)), name="e")
    await settled(d)
    assert sorted(await configs(mosquitto.port)) == sorted([
        f"{DISCOVERY}/{NODE_ID}/daemon/config",
        f"{DISCOVERY}/{NODE_ID}/{object_id('sim/chat')}/config"])


@requires_mosquitto
async def test_a_reload_while_the_broker_is_away_is_applied_on_reconnect(
        mosquitto: Mosquitto, start_daemon: Any, short_dir: Path) -> None:
    """The broker keeps its retained messages while the daemon's connection is down; a reload
    then removes one model and adds another: once back, the removed model's config is
    cleared and the new one's published (the clear was not lost with the connection)."""
    proxy = TcpProxy(mosquitto.port)
    await proxy.open()
    try:
        d = await start_daemon(mqtt_body(proxy.port, models=("sim/chat", "sim/gone")))
        await settled(d)
        pub = d.sup.service.mqtt
        await proxy.close_listener()
        for writer in list(proxy._writers):  # noqa: SLF001 - cut the live connection only
            writer.close()
        await until(lambda: not pub.stats().connected)
        path = short_dir / "d.toml"
        path.write_text(path.read_text().replace('"sim/gone"', '"sim/new"'))
        assert (await d.http.post("/v1/reload")).json()["ok"] is True
        assert pub.stats().states_pending >= 2
        await proxy.open()
        await until(lambda: pub.stats().connected and pub.stats().states_pending == 0)
        assert sorted(await configs(mosquitto.port)) == sorted(
            f"{DISCOVERY}/{NODE_ID}/{oid}/config"
            for oid in ("daemon", object_id("sim/chat"), object_id("sim/new")))
    finally:
        await proxy.close()


@requires_mosquitto
async def test_configs_a_reload_left_pending_are_flushed_at_stop(
        mosquitto: Mosquitto, start_daemon: Any, short_dir: Path) -> None:
    """A slow link (each acknowledgement late): a reload adds models and the daemon stops at
    once; the stop's flush still publishes their configs before `offline`."""
    proxy = TcpProxy(mosquitto.port, latency=0.02)
    await proxy.open()
    try:
        d = await start_daemon(mqtt_body(proxy.port, models=("sim/chat",)))
        await settled(d)
        added = ("sim/x1", "sim/x2", "sim/x3")
        path = short_dir / "d.toml"
        path.write_text(path.read_text() + "".join(
            f'[models."{m}"]\nprovider = "sim"\n' for m in added))
        assert (await d.http.post("/v1/reload")).json()["ok"] is True
        assert d.sup.service.mqtt.stats().states_pending > 0
        await d.stop()
        found = await configs(mosquitto.port)
        assert {f"{DISCOVERY}/{NODE_ID}/{object_id(m)}/config" for m in added} <= set(found)
        status = (await retained(mosquitto.port, f"failoverd/{NODE}/status"))
        assert status[f"failoverd/{NODE}/status"].payload == b"offline"
    finally:
        await proxy.close()


# ====================================================================== daemon.access_log

ACCESS = "failoverd.access"


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.access for r in caplog.records if r.name == ACCESS]  # type: ignore[attr-defined]


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=ACCESS)
    return caplog


def chunked_post(body: dict[str, Any], *, cut: int | None = None) -> bytes:
    """A chunked POST (aiohttp's path serves it); `cut`: only that many body bytes sent."""
    raw = orjson.dumps(body)
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: failoverd\r\nContent-Type: application/json\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n{len(raw):x}\r\n").encode()
    return head + raw[:cut] if cut is not None else head + raw + b"\r\n0\r\n\r\n"


async def test_access_lines_on_both_paths_hold_nothing_private(
        fake_openai: Any, start_daemon: Any, access: pytest.LogCaptureFixture) -> None:
    """The fast path and aiohttp's (a chunked body, a query string) give the same line; no
    prompt, session key, query string (a key some clients put there) or credential in it."""
    fake = await fake_openai()
    d = await start_daemon("access_log = true\n" + one_model_config(
        fake.url, provider='api_key_env = "A_KEY"', tail=NO_PROBES), env={"A_KEY": "sk-SECRET1"})
    ask = {"model": "a/m", "messages": [{"role": "user", "content": "PROMPT-TEXT"}],
           "user": "USER-KEY"}
    private = ("PROMPT-TEXT", "USER-KEY", "SESSION-KEY", "sk-SECRET1", "QUERY-KEY")
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ask, headers="x-failoverd-session: SESSION-KEY\r\n"))
        assert (await read_answer(reader)).status == 200
        writer.write(chunked_post(ask))
        assert (await read_answer(reader)).status == 200
        writer.write(post(ask, f"{CHAT}?api-key=QUERY-KEY"))
        assert (await read_answer(reader)).status == 200
    got = access_lines(access)
    assert [(g["path"], g["status"], g["model"], g["attempts"]) for g in got] == \
        [(CHAT, 200, "a/m", 1)] * 3
    text = "\n".join(r.getMessage() + repr(getattr(r, "access", None))
                     for r in access.records if r.name == ACCESS)
    assert not [p for p in private if p in text]


async def test_bodies_too_large_are_logged_as_413_on_both_paths(
        fake_openai: Any, start_daemon: Any, access: pytest.LogCaptureFixture) -> None:
    fake = await fake_openai()
    d = await start_daemon("access_log = true\nmax_body_bytes = 2048\n"
                           + one_model_config(fake.url, tail=NO_PROBES))
    big = {"model": "a/m", "messages": [{"role": "user", "content": "x" * 4000}]}
    for request in (post(big), chunked_post(big)):
        async with connect(d.socket) as (reader, writer):
            writer.write(request)
            assert (await read_answer(reader)).status == 413
    assert [g["status"] for g in access_lines(access)] == [413, 413]
    assert fake.requests == []


async def test_a_stream_the_upstream_broke_is_logged_when_it_ends(
        fake_openai: Any, start_daemon: Any, access: pytest.LogCaptureFixture) -> None:
    """The head (200) went out before the break: the line says 200 and the model."""
    fake = await fake_openai(default="cut_stream")
    d = await start_daemon("access_log = true\n" + one_model_config(fake.url, tail=NO_PROBES))
    async with d.http.stream("POST", CHAT, json={"model": "a/m", "messages": HELLO,
                                                 "stream": True}) as resp:
        assert resp.status_code == 200
        assert b'"invalid_response"' in await resp.aread()
    (line,) = access_lines(access)
    assert (line["status"], line["model"], line["attempts"]) == (200, "a/m", 1)


async def test_an_overloaded_503_has_its_access_line(
        fake_openai: Any, start_daemon: Any, access: pytest.LogCaptureFixture) -> None:
    fake = await fake_openai(default="slow:0.2")
    d = await start_daemon("access_log = true\nmax_inflight = 1\n"
                           + one_model_config(fake.url, tail=NO_PROBES))
    first = asyncio.create_task(d.http.post(CHAT, json={"model": "a/m", "messages": HELLO}))
    await until(lambda: d.sup.service.inflight == 1)
    refused = await d.http.post(CHAT, json={"model": "a/m", "messages": HELLO})
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "overloaded"
    assert (await first).status_code == 200
    assert sorted(g["status"] for g in access_lines(access)) == [200, 503]


async def test_a_request_cut_by_the_stop_is_not_logged_as_a_client_gone(
        fake_openai: Any, start_daemon: Any, access: pytest.LogCaptureFixture) -> None:
    fake = await fake_openai(default="hang")
    d = await start_daemon("access_log = true\n" + one_model_config(fake.url, tail=NO_PROBES))
    pending = asyncio.create_task(d.http.post(CHAT, json={"model": "a/m", "messages": HELLO}))
    await until(lambda: d.sup.service.inflight == 1)
    d.sup.request_stop()
    d.sup.request_stop()  # the second one cuts the drain short
    answer = await pending
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "shutting_down"
    await d.stop()
    assert [g["status"] for g in access_lines(access)] == [503]


async def test_a_client_that_left_keeps_its_uid_in_the_line(
        fake_openai: Any, start_daemon: Any, access: pytest.LogCaptureFixture) -> None:
    fake = await fake_openai(default="slow_stream:0.05")
    d = await start_daemon("access_log = true\n" + one_model_config(fake.url, tail=NO_PROBES))
    stream = {"model": "a/m", "messages": HELLO, "stream": True}
    for request in (post(stream), chunked_post(stream)):  # the fast path, then aiohttp's
        async with connect(d.socket) as (reader, writer):
            writer.write(request)
            await reader.readuntil(b"\n\n")  # the head and the first chunk, then it leaves
        await until(lambda: d.sup.service.inflight == 0)
    lines = access_lines(access)
    assert [(g["status"], g["model"]) for g in lines] == [(499, "a/m")] * 2
    assert [g["uid"] for g in lines] == [os.getuid()] * 2


async def test_a_stalled_body_408_is_logged_on_both_paths(
        fake_openai: Any, short_dir: Path, access: pytest.LogCaptureFixture) -> None:
    fake = await fake_openai()
    ask = {"model": "a/m", "messages": HELLO}
    async with own_daemon(short_dir, "access_log = true\n" + one_model_config(
            fake.url, tail=NO_PROBES)) as (_, sock):
        for request in (chunked_post(ask, cut=10), post(ask)[:-5]):  # aiohttp's, then fast
            async with connect(sock) as (reader, writer):
                writer.write(request)
                assert (await read_answer(reader)).status == 408
    assert [g["status"] for g in access_lines(access)] == [408, 408]


async def test_a_request_the_access_guard_refuses_has_its_access_line(
        fake_openai: Any, start_daemon: Any, short_dir: Path,
        access: pytest.LogCaptureFixture) -> None:
    fake = await fake_openai()
    port, tcp = tcp_listener(short_dir)
    await start_daemon("access_log = true\n" + tcp + one_model_config(fake.url, tail=NO_PROBES))
    async with connect(("127.0.0.1", port)) as (reader, writer):
        writer.write(post({"model": "a/m", "messages": HELLO},
                          headers="Authorization: Bearer wrong\r\n"))
        assert (await read_answer(reader)).status == 401
    assert fake.requests == []
    assert [(g["path"], g["status"], g["uid"]) for g in access_lines(access)] == [
        (CHAT, 401, None)]


# ====================================================================== models.<id>.max_rpm

def rpm_config(a_url: str, b_url: str, *, a: str = "max_rpm = 2", when: str = "fail",
               routing: str = "", tail: str = NO_PROBES) -> str:
    return f"""
{providers(a=a_url, b=b_url)}
[models."a/m"]
provider = "a"
{a}
[models."b/m"]
provider = "b"
[routing]
primary = "a/m"
fallbacks = ["b/m"]
when_all_unavailable = "{when}"
retry_after_max = 0
{routing}
{tail}"""


async def test_many_simultaneous_requests_never_exceed_max_rpm(
        fake_openai: Any, start_daemon: Any) -> None:
    a, b = await fake_openai(), await fake_openai()
    d = await start_daemon(rpm_config(a.url, b.url, a="max_rpm = 3"), clock=ManualClock())
    answers = await asyncio.gather(*(ask(d) for _ in range(20)))
    served = [r.headers["x-failoverd-model"] for r in answers]
    assert served.count("a/m") == 3 and served.count("b/m") == 17
    assert len(a.chat_requests()) == 3
    # what /v1/select says of it now, without a call
    select = (await d.http.post("/v1/select", json={"model": "default"})).json()
    assert [(c["model"], c["eligible"], c["reason"]) for c in select["candidates"]] == [
        ("a/m", False, "max_rpm"), ("b/m", True, None)]


async def test_same_model_retries_count_and_stop_at_the_limit(
        fake_openai: Any, start_daemon: Any) -> None:
    """Each retry is a call: with max_rpm 2 and max_retries 3, the second 500 moves on to
    the fallback instead of a third call, and the breaker counts only the calls made."""
    a, b = await fake_openai(default="server_error"), await fake_openai()
    d = await start_daemon(rpm_config(a.url, b.url, a="max_rpm = 2\nmax_retries = 3",
                                      tail=NO_PROBES + "[breaker]\nfailure_threshold = 5\n"),
                           clock=ManualClock())
    resp = await ask(d)
    assert resp.headers["x-failoverd-model"] == "b/m"
    assert resp.headers["x-failoverd-attempts"] == "3"  # a twice, then b
    assert len(a.chat_requests()) == 2
    entry = (await d.http.get("/v1/status")).json()["models"]["a/m"]
    assert (entry["calls_last_minute"], entry["consecutive_failures"]) == (2, 2)


async def test_a_half_open_trial_is_not_spent_while_the_model_is_at_its_rpm(
        fake_openai: Any, start_daemon: Any) -> None:
    clock = ManualClock()
    a, b = await fake_openai(default="server_error"), await fake_openai()
    d = await start_daemon(rpm_config(
        a.url, b.url, a="max_rpm = 1\nmax_retries = 0",
        tail=NO_PROBES + "[breaker]\nfailure_threshold = 1\nopen_seconds = 20\n"), clock=clock)
    assert (await ask(d)).headers["x-failoverd-model"] == "b/m"  # a's call fails: open
    a.default = "ok"
    clock.advance(25)  # a's open period is over, its minute's call is not
    resp = await ask(d)
    assert resp.headers["x-failoverd-model"] == "b/m"
    assert resp.headers["x-failoverd-failover"] == "a/m>b/m:unavailable"
    assert (await d.http.get("/v1/status")).json()["models"]["a/m"]["state"] == "half_open"
    clock.advance(35)  # the call ages out: the trial goes, and closes the breaker
    assert (await ask(d)).headers["x-failoverd-model"] == "a/m"
    assert (await d.http.get("/v1/status")).json()["models"]["a/m"]["state"] == "closed"
    assert len(a.chat_requests()) == 2


async def test_queued_requests_take_freed_slots_one_by_one(
        fake_openai: Any, start_daemon: Any) -> None:
    """when_all_unavailable = "queue": requests wait for the model's slot; each slot that frees
    serves one of them and the others go on waiting (not a 503 for the losers)."""
    clock = ManualClock()
    a, b = await fake_openai(), await fake_openai()
    d = await start_daemon(rpm_config(a.url, b.url, a="max_rpm = 1", when="queue",
                                      routing="queue_timeout = 300\ndeadline = 300"),
                           clock=clock)
    pin = {"x-failoverd-no-fallback": "1"}
    assert (await ask(d, "a/m", **pin)).headers["x-failoverd-model"] == "a/m"
    waiting = [asyncio.create_task(ask(d, "a/m", **pin)) for _ in range(2)]
    await until(lambda: d.sup.service.inflight == 2)
    for served in (2, 3):
        clock.advance(60)  # a slot frees; another call ending wakes the queue at once
        assert (await ask(d, "b/m")).status_code == 200
        await until(lambda n=served: len(a.chat_requests()) == n)  # type: ignore[misc]
        assert sum(t.done() for t in waiting) == served - 1
    assert [t.result().headers["x-failoverd-model"] for t in waiting] == ["a/m", "a/m"]


async def test_a_reload_that_lowers_the_limit_keeps_the_newest_calls(
        fake_openai: Any, start_daemon: Any, short_dir: Path) -> None:
    clock = ManualClock()
    a, b = await fake_openai(), await fake_openai()
    d = await start_daemon(rpm_config(a.url, b.url, a="max_rpm = 5"), clock=clock)
    for _ in range(5):  # at 0, 10, 20, 30, 40 s
        assert (await ask(d)).headers["x-failoverd-model"] == "a/m"
        clock.advance(10)
    path = short_dir / "d.toml"
    path.write_text(path.read_text().replace("max_rpm = 5", "max_rpm = 2"))
    assert (await d.http.post("/v1/reload")).json()["ok"] is True  # at 50 s
    resp = await ask(d, **{"x-failoverd-no-fallback": "1"})
    # two calls of the minute are the limit: the one of 30 s must age out (at 90 s)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "40"
    clock.advance(39)
    assert (await ask(d)).headers["x-failoverd-model"] == "b/m"
    clock.advance(1)
    assert (await ask(d)).headers["x-failoverd-model"] == "a/m"


async def test_a_model_removed_and_added_back_keeps_its_minute(
        fake_openai: Any, start_daemon: Any, short_dir: Path) -> None:
    clock = ManualClock()
    a, b = await fake_openai(), await fake_openai()
    d = await start_daemon(rpm_config(a.url, b.url), clock=clock)
    for _ in range(2):
        assert (await ask(d, "a/m")).headers["x-failoverd-model"] == "a/m"
    path = short_dir / "d.toml"
    full = path.read_text()
    path.write_text(full.replace('[models."a/m"]\nprovider = "a"\nmax_rpm = 2\n', "").replace(
        'primary = "a/m"\nfallbacks = ["b/m"]', 'primary = "b/m"'))
    assert (await d.http.post("/v1/reload")).json()["ok"] is True
    clock.advance(5)
    path.write_text(full)
    assert (await d.http.post("/v1/reload")).json()["ok"] is True
    assert (await ask(d, "a/m")).headers["x-failoverd-model"] == "b/m"
    assert len(a.chat_requests()) == 2


async def test_a_request_the_model_is_incapable_of_spends_no_rpm_slot(
        fake_anthropic: Any, fake_openai: Any, start_daemon: Any) -> None:
    ant, b = await fake_anthropic(), await fake_openai()
    d = await start_daemon(f"""
{providers(ant=("anthropic", ant.url), b=b.url)}
[models."ant/claude"]
provider = "ant"
max_rpm = 2
[models."b/m"]
provider = "b"
[routing]
primary = "ant/claude"
fallbacks = ["b/m"]
when_all_unavailable = "fail"
{NO_PROBES}""", clock=ManualClock())
    for _ in range(2):  # legacy text completions: Anthropic has none, b serves them
        resp = await d.http.post("/v1/completions", json={"model": "default", "prompt": "x"})
        assert resp.headers["x-failoverd-model"] == "b/m"
        assert resp.headers["x-failoverd-failover"] == "ant/claude>b/m:incapable"
    assert ant.requests == []
    assert (await ask(d)).headers["x-failoverd-model"] == "ant/claude"


# the fields today's commits added to the settings a saved breaker is fingerprinted with
_ADDED_TODAY = {"ModelConfig": ("max_rpm", "max_tpm"), "Cost": ("cache_read", "cache_write")}


_BEFORE_TODAY: dict[type, type] = {}


def as_before_today(value: Any) -> Any:
    """`value` (a config dataclass) as the release before today's fields held it: the same
    class name, fields and defaults, less the fields added today (left at their defaults)."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return value
    cls = type(value)
    keep = [f for f in dataclasses.fields(value)
            if f.name not in _ADDED_TODAY.get(cls.__name__, ())]
    if cls not in _BEFORE_TODAY:
        _BEFORE_TODAY[cls] = dataclasses.make_dataclass(cls.__name__, [
            (f.name, Any, dataclasses.field(default=as_before_today(f.default),
                                            default_factory=f.default_factory))
            for f in keep], frozen=True)
    return _BEFORE_TODAY[cls](**{f.name: as_before_today(getattr(value, f.name))
                                 for f in keep})


async def test_an_upgrade_keeps_the_breakers_saved_before_max_rpm_existed(
        fake_openai: Any, start_daemon: Any) -> None:
    a, b = await fake_openai(default="server_error"), await fake_openai()
    body = rpm_config(a.url, b.url, a="max_retries = 0",
                      tail=NO_PROBES + "[breaker]\nfailure_threshold = 1\nopen_seconds = 600\n")
    d = await start_daemon(body)
    await ask(d)
    assert (await d.http.get("/v1/status")).json()["models"]["a/m"]["state"] == "open"
    await d.stop()
    # the state file as the release before today wrote it (its settings fingerprints)
    path = d.sup.service.state_file.path
    saved = orjson.loads(path.read_bytes())
    config = d.sup.service.runtime.config
    model: ModelConfig = config.models["a/m"]
    assert isinstance(model.cost, Cost)
    saved["breakers"]["a/m"]["settings"] = fingerprint(
        saved["salt"], as_before_today(model), config.providers["a"])
    path.write_bytes(orjson.dumps(saved))
    d = await start_daemon(body, name="d")
    assert (await d.http.get("/v1/status")).json()["models"]["a/m"]["state"] == "open"


# ====================================================================== failoverd_cost_usd_total

async def cost(d: Any) -> dict[str, float]:
    text = (await d.http.get("/metrics")).text
    return {m: float(v) for m, v in re.findall(
        r'^failoverd_cost_usd_total\{model="([^"]*)"\} (\S+)$', text, re.M)}


SIM_COST = """
[providers.sim]
kind = "simulated"
[models."sim/a"]
provider = "sim"
cost = { input = 1.0, output = 2.0 }
[models."sim/b"]
provider = "sim"
cost = { input = 5.0, output = 5.0 }
[probes]
kind = "none"
"""


async def test_a_price_change_applies_from_the_reload_on_and_a_removed_model_goes(
        start_daemon: Any, short_dir: Path) -> None:
    d = await start_daemon(SIM_COST)
    first = (await ask(d, "sim/a")).json()["usage"]
    await ask(d, "sim/b")
    path = short_dir / "d.toml"
    path.write_text(path.read_text().replace("input = 1.0, output = 2.0",
                                             "input = 10.0, output = 20.0").replace(
        '[models."sim/b"]\nprovider = "sim"\ncost = { input = 5.0, output = 5.0 }\n', ""))
    assert (await d.http.post("/v1/reload")).json()["ok"] is True
    second = (await ask(d, "sim/a")).json()["usage"]
    spent = await cost(d)
    assert set(spent) == {"sim/a"}
    assert spent["sim/a"] == pytest.approx(
        (first["prompt_tokens"] * 1 + first["completion_tokens"] * 2
         + second["prompt_tokens"] * 10 + second["completion_tokens"] * 20) / 1e6, rel=1e-6)
    assert "sim/b" not in (await d.http.get("/v1/status")).json()["models"]


CACHED_USAGE = {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100,
                "prompt_tokens_details": {"cached_tokens": 800}}


@pytest.fixture
async def cached_upstream() -> AsyncIterator[str]:
    """An OpenAI-compatible upstream whose answers (streamed or not) read 800 of their 1000
    prompt tokens from its prompt cache, as OpenAI reports it."""
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        base = {"id": "c1", "created": 1, "model": body["model"]}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "choices": [{
                "index": 0, "message": {"role": "assistant", "content": "hi"},
                "finish_reason": "stop"}], "usage": CACHED_USAGE})
        resp = await event_stream(request)
        chunk = {**base, "object": "chat.completion.chunk"}
        for choice in ({"index": 0, "delta": {"role": "assistant", "content": "hi"},
                        "finish_reason": None},
                       {"index": 0, "delta": {}, "finish_reason": "stop"}):
            await resp.write(b"data: " + orjson.dumps({**chunk, "choices": [choice]}) + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(b"data: " + orjson.dumps(
                {**chunk, "choices": [], "usage": CACHED_USAGE}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner, port = await serve_app(app)
    yield f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


async def test_openai_cached_tokens_cost_the_cache_read_price_streamed_or_not(
        cached_upstream: str, start_daemon: Any) -> None:
    d = await start_daemon(one_model_config(
        cached_upstream, model="cost = { input = 1.0, output = 4.0, cache_read = 0.1 }",
        tail=NO_PROBES))
    client = openai_client(d.socket)
    try:
        messages: Any = HELLO
        await client.chat.completions.create(model="a/m", messages=messages)
        stream = await client.chat.completions.create(
            model="a/m", messages=messages, stream=True, stream_options={"include_usage": True})
        async for _ in stream:
            pass
    finally:
        await client.close()
    # an Anthropic client's answer from the same upstream costs the same
    assert (await d.http.post("/v1/messages", json={
        "model": "a/m", "max_tokens": 16, "messages": HELLO})).status_code == 200
    each = (200 * 1.0 + 800 * 0.1 + 100 * 4.0) / 1e6
    assert (await cost(d))["a/m"] == pytest.approx(3 * each, rel=1e-6)
    tokens = (await d.http.get("/v1/status")).json()["models"]["a/m"]["tokens"]
    assert tokens == {"prompt": 3000, "completion": 300, "cache_read": 2400, "cache_write": 0}
    # the model list shows the prices set, not a cache_write price nobody gave
    (entry,) = [m for m in (await d.http.get("/v1/models")).json()["data"] if m["id"] == "a/m"]
    assert entry["cost"] == {"input": 1.0, "output": 4.0, "cache_read": 0.1}


async def test_anthropic_cache_usage_costs_the_same_streamed_to_either_client(
        fake_anthropic: Any, start_daemon: Any) -> None:
    ant = await fake_anthropic()
    d = await start_daemon(f"""
[providers.ant]
kind = "anthropic"
base_url = "{ant.url}"
[models."ant/claude"]
provider = "ant"
capabilities = ["tools", "vision", "json"]
cost = {{ input = 3.0, output = 15.0, cache_read = 0.3, cache_write = 3.75 }}
{NO_PROBES}""")
    client = anthropic_client(d.socket)
    try:
        first = await client.messages.create(**tool_loop("ant/claude"))
        async with client.messages.stream(**tool_loop("ant/claude")) as stream:
            second = await stream.get_final_message()
    finally:
        await client.close()
    written = first.usage.cache_creation_input_tokens or 0
    assert written > 1000 and second.usage.cache_read_input_tokens == written
    expected = (first.usage.input_tokens * 3.0 + written * 3.75 + first.usage.output_tokens * 15
                + second.usage.input_tokens * 3.0 + written * 0.3
                + second.usage.output_tokens * 15) / 1e6
    assert (await cost(d))["ant/claude"] == pytest.approx(expected, rel=1e-6)
