"""Home Assistant MQTT discovery (`[mqtt] discovery = true`) on a real mosquitto: the retained
config messages that make Home Assistant create one device per node with a "problem" binary
sensor per model and a "connectivity" one for the daemon, reading the state topics failoverd
publishes anyway; configs follow reloads and come back after a broker restart."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
import pytest

from failoverd import config as config_mod
from failoverd.discovery import object_id
from failoverd.errors import ConfigError
from tests.helpers import until
from tests.mosquitto import Mosquitto, requires_mosquitto, retained
from tests.mosquitto import mosquitto as mosquitto  # the fixture

NODE = "den"
MODELS = ("sim/chat", "down/chat", "ollama/qwen2.5:7b")


def body(port: int, *, discovery: str = "discovery = true", models: tuple[str, ...] = MODELS,
         node: str = NODE) -> str:
    """Node `node` on the broker at `port` with simulated `models`: ids starting with "down"
    fail every call (one failure opens)."""
    entries = "".join(f'[models."{m}"]\nprovider = "{"down" if m.startswith("down") else "sim"}"\n'
                      for m in models)
    return f"""node = "{node}"
[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
{discovery}
[providers.sim]
kind = "simulated"
[providers.down]
kind = "simulated"
simulate_failure = "server_error"
{entries}
[breaker]
failure_threshold = 1
[probes]
kind = "none"
"""


def problem(template: str, state: str) -> str:
    """Home Assistant's rendering of the sensors' value_template for a model state (the one
    Jinja form it uses: ``'OFF' if value_json.state in [...] else 'ON'``)."""
    found = re.fullmatch(r"\{\{ 'OFF' if value_json\.state in \[(.*)\] else 'ON' \}\}", template)
    assert found, template
    ok = [s.strip().strip("'") for s in found.group(1).split(",")]
    return "OFF" if state in ok else "ON"


async def settled(d: Any) -> None:
    pub = d.sup.service.mqtt
    await asyncio.wait_for(pub.wait_connected(), 5)
    await until(lambda: pub.stats().states_pending == 0)


@requires_mosquitto
async def test_a_sensor_per_model_and_one_for_the_daemon(mosquitto: Mosquitto,
                                                         start_daemon: Any) -> None:
    d = await start_daemon(body(mosquitto.port))
    await settled(d)
    configs = {t: orjson.loads(m.payload) for t, m in  # type: ignore[arg-type]
               (await retained(mosquitto.port, "homeassistant/#")).items()}
    node_id = f"failoverd_{object_id(NODE)}"
    daemon = configs.pop(f"homeassistant/binary_sensor/{node_id}/daemon/config")
    assert daemon["device_class"] == "connectivity"
    assert daemon["state_topic"] == f"failoverd/{NODE}/status"
    assert (daemon["payload_on"], daemon["payload_off"]) == ("online", "offline")
    assert len(configs) == len(MODELS)
    kept = await retained(mosquitto.port, f"failoverd/{NODE}/#")
    ids = set()
    for model_id in MODELS:
        oid = object_id(model_id)
        assert re.fullmatch(r"[a-zA-Z0-9_-]+", oid)
        sensor = configs[f"homeassistant/binary_sensor/{node_id}/{oid}/config"]
        assert sensor["name"] == model_id and sensor["device_class"] == "problem"
        assert sensor["device"] == daemon["device"]
        assert sensor["device"]["identifiers"] == [node_id]
        assert sensor["availability_topic"] == f"failoverd/{NODE}/status"
        # it reads the state failoverd keeps retained for the model
        state = orjson.loads(kept[sensor["state_topic"]].payload)  # type: ignore[arg-type]
        assert state["model"] == model_id and sensor["json_attributes_topic"] == \
            sensor["state_topic"]
        assert problem(sensor["value_template"], state["state"]) == "OFF"
        ids.add(sensor["unique_id"])
    assert len(ids) == len(MODELS)
    # a model that fails opens its breaker: its sensor turns on, from the same topic
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "down/chat", "messages": [{"role": "user", "content": "x"}]},
        headers={"x-failoverd-no-fallback": "1"})
    assert resp.status_code == 503
    await settled(d)
    topic = configs[f"homeassistant/binary_sensor/{node_id}/{object_id('down/chat')}/config"][
        "state_topic"]
    state = orjson.loads((await retained(mosquitto.port, topic))[topic].payload)  # type: ignore[arg-type]
    assert state["state"] == "open"
    template = configs[f"homeassistant/binary_sensor/{node_id}/"
                       f"{object_id('down/chat')}/config"]["value_template"]
    assert problem(template, state["state"]) == "ON"
    # a trial call goes through in half_open; forced open and blocked credentials do not
    for state_name, shown in (("half_open", "OFF"), ("forced_open", "ON"),
                              ("unavailable", "ON"), ("closed", "OFF")):
        assert problem(template, state_name) == shown


@requires_mosquitto
async def test_a_reload_clears_the_sensor_of_a_model_that_left(mosquitto: Mosquitto,
                                                               start_daemon: Any,
                                                               short_dir: Any) -> None:
    d = await start_daemon(body(mosquitto.port))
    await settled(d)
    path = short_dir / "d.toml"
    path.write_text(path.read_text().replace('[models."ollama/qwen2.5:7b"]\nprovider = "sim"\n',
                                             ""))
    assert (await d.http.post("/v1/reload")).json()["ok"] is True
    await settled(d)
    topics = set(await retained(mosquitto.port, "homeassistant/#"))
    assert not any(object_id("ollama/qwen2.5:7b") in t for t in topics)
    assert any(object_id("sim/chat") in t for t in topics) and len(topics) == 3


@requires_mosquitto
async def test_configs_come_back_after_a_broker_restart(mosquitto: Mosquitto,
                                                        start_daemon: Any) -> None:
    d = await start_daemon(body(mosquitto.port))
    await settled(d)
    pub = d.sup.service.mqtt
    mosquitto.restart()  # a broker without persistence: every retained message is gone
    await until(lambda: pub.stats().reconnects >= 1 and pub.stats().connected, timeout=15)
    await until(lambda: pub.stats().states_pending == 0)
    assert len(await retained(mosquitto.port, "homeassistant/#")) == len(MODELS) + 1


@requires_mosquitto
async def test_off_by_default(mosquitto: Mosquitto, start_daemon: Any) -> None:
    d = await start_daemon(body(mosquitto.port, discovery=""))
    await settled(d)
    assert await retained(mosquitto.port, "homeassistant/#") == {}


def test_the_discovery_prefix_is_checked() -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.loads("[daemon]\n" + body(
            1883, discovery='discovery = true\ndiscovery_prefix = "ha/"'), env={})
    assert any(p.startswith("mqtt.discovery_prefix:") for p in info.value.problems)
    cfg = config_mod.loads("[daemon]\n" + body(
        1883, discovery='discovery_prefix = "home/assistant"'), env={})
    assert (cfg.mqtt.discovery, cfg.mqtt.discovery_prefix) == (False, "home/assistant")
