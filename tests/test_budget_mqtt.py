"""Spending caps on MQTT, on a real mosquitto: each cap's retained state under
`<prefix>/<node>/budgets/<scope>/<name>/<period>`, a Home Assistant USD sensor per cap when
discovery is on, updates as spending grows, and retained caps of a previous run cleared."""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import orjson
import pytest

from failoverd import service as service_mod
from failoverd.discovery import object_id
from tests.helpers import HELLO, until, until_async
from tests.mosquitto import Mosquitto, requires_mosquitto, retained
from tests.mosquitto import mosquitto as mosquitto  # the fixture

NODE = "attic"
BASE = f"failoverd/{NODE}"
MODEL = "sim/pro:1"  # ':' stays, '/' is encoded in the topic level
TOPIC = f"{BASE}/budgets/model/sim%2Fpro%3A1/day"


def body(port: int, *, discovery: bool = True, cap: float = 1.0) -> str:
    return f"""node = "{NODE}"
[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
discovery = {"true" if discovery else "false"}
[providers.sim]
kind = "simulated"
max_cost_per_month = 50.0
[models."{MODEL}"]
provider = "sim"
cost = {{ input = 1000.0, output = 1000.0 }}
max_cost_per_day = {cap}
[probes]
kind = "none"
"""


async def settled(d: Any) -> None:
    pub = d.sup.service.mqtt
    await asyncio.wait_for(pub.wait_connected(), 5)
    await until(lambda: pub.stats().states_pending == 0)


async def ask(d: Any) -> None:
    resp = await d.http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO})
    assert resp.status_code == 200


async def payload(port: int, topic: str) -> dict[str, Any]:
    found = await retained(port, topic)
    assert topic in found, sorted(found)
    data: dict[str, Any] = orjson.loads(found[topic].payload)  # type: ignore[arg-type]
    return data


@requires_mosquitto
async def test_each_cap_has_a_retained_state_and_a_usd_sensor(
        mosquitto: Mosquitto, start_daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_mod, "SPENDING_SAVE_SECONDS", 0.05)
    d = await start_daemon(body(mosquitto.port))
    await settled(d)
    state = await payload(mosquitto.port, TOPIC)
    assert (state["scope"], state["name"], state["period"], state["limit_usd"],
            state["spent_usd"], state["reached"]) == ("model", MODEL, "day", 1.0, 0.0, False)
    provider = await payload(mosquitto.port, f"{BASE}/budgets/provider/sim/month")
    assert provider["limit_usd"] == 50.0

    node_id = f"failoverd_{object_id(NODE)}"
    sensors = {t: orjson.loads(m.payload)  # type: ignore[arg-type]
               for t, m in (await retained(mosquitto.port, "homeassistant/sensor/#")).items()}
    assert len(sensors) == 2
    sensor = sensors[f"homeassistant/sensor/{node_id}/"
                     f"{object_id(f'budget model {MODEL} day')}/config"]
    assert sensor["name"] == f"{MODEL} spent today"
    assert (sensor["device_class"], sensor["unit_of_measurement"]) == ("monetary", "USD")
    assert sensor["state_topic"] == sensor["json_attributes_topic"] == TOPIC
    assert sensor["value_template"] == "{{ value_json.spent_usd }}"
    assert sensor["availability_topic"] == f"{BASE}/status"
    assert sensor["device"]["identifiers"] == [node_id]

    # spending shows within SPENDING_SAVE_SECONDS, without a cap reached
    await ask(d)
    spent = d.sup.service.health.budgets.spent("model", MODEL, "day", d.sup.service.clock.time())
    assert spent > 0

    async def shown() -> bool:
        return bool((await payload(mosquitto.port, TOPIC))["spent_usd"] == round(spent, 9))
    await until_async(shown)  # the save timer is 50 ms here


@requires_mosquitto
async def test_a_cap_reached_is_published_at_once(mosquitto: Mosquitto,
                                                  start_daemon: Any) -> None:
    d = await start_daemon(body(mosquitto.port, discovery=False, cap=0.000001))
    await settled(d)
    assert await retained(mosquitto.port, "homeassistant/#") == {}
    await ask(d)  # costs more than the cap: reached (no timer involved: it is 5 s here)
    await settled(d)
    state = await payload(mosquitto.port, TOPIC)
    assert state["reached"] is True and state["spent_usd"] > 0.000001


@requires_mosquitto
async def test_retained_caps_of_a_previous_run_are_cleared(mosquitto: Mosquitto,
                                                           start_daemon: Any) -> None:
    node_id = f"failoverd_{object_id(NODE)}"
    stale = {f"{BASE}/budgets/model/gone/day": b'{"spent_usd": 3}',
             f"homeassistant/sensor/{node_id}/gone_123456/config": b'{"name": "gone"}'}
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        for topic, data in stale.items():
            await client.publish(topic, data, qos=1, retain=True)
    assert set(stale) <= set(await retained(mosquitto.port, "#"))
    d = await start_daemon(body(mosquitto.port))
    await settled(d)

    async def cleared() -> bool:
        kept = await retained(mosquitto.port, "#")
        return not set(stale) & set(kept) and TOPIC in kept  # ours stay
    await until_async(cleared)
