"""Home Assistant MQTT discovery (`[mqtt] discovery = true`): retained config messages under
`<discovery_prefix>/binary_sensor/...` that make Home Assistant create, with no YAML, one
device per failoverd node with a binary sensor per model ("problem": on while the model is
out: its breaker open or forced open, or its provider's credentials blocked), one for the
daemon ("connectivity": its online/offline status), and a USD sensor per spending cap (what
was spent of it in the current UTC day or month, with the cap and its reset as attributes).
The sensors read the topics failoverd publishes anyway (the retained model state, status and
spending caps), so nothing else is sent per change.

Home Assistant wants object ids of [a-zA-Z0-9_-]: model ids ("openai/gpt-5", "qwen2.5:7b")
are rewritten so, with a short hash of the id so that two ids never share a sensor.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import orjson

from failoverd import __version__
from failoverd.config import MqttConfig

_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
# a model is a problem unless its breaker lets calls through (closed, or half open on trial)
_PROBLEM = ("{{ 'OFF' if value_json.state in ['closed', 'half_open'] else 'ON' }}")


def object_id(text: str) -> str:
    """`text` as a Home Assistant object id, unique per text."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:6]
    return f"{_UNSAFE.sub('_', text)[:64]}_{digest}"


def node_id(node: str) -> str:
    return f"failoverd_{object_id(node)}"


def config_filters(cfg: MqttConfig, node: str) -> tuple[str, ...]:
    """The topic filters of every discovery config of this node."""
    return tuple(f"{cfg.discovery_prefix}/{component}/{node_id(node)}/+/config"
                 for component in ("binary_sensor", "sensor"))


def messages(cfg: MqttConfig, node: str, models: Iterable[tuple[str, str]],
             state_topic: str, budgets: Iterable[tuple[str, str, str, str]] = ()
             ) -> dict[str, bytes]:
    """Every discovery config: topic -> retained JSON payload. `models` are (model id,
    its retained state topic); `state_topic` is the daemon's status topic; `budgets` are the
    spending caps as (scope, name, period, their retained topic): a USD sensor each."""
    nid = node_id(node)
    device = {"identifiers": [nid], "name": f"failoverd {node}", "manufacturer": "failoverd",
              "model": "LLM failover daemon", "sw_version": __version__}
    availability = {"availability_topic": state_topic, "payload_available": "online",
                    "payload_not_available": "offline"}
    base = f"{cfg.discovery_prefix}/binary_sensor/{nid}"
    out = {f"{base}/daemon/config": orjson.dumps({
        "name": "Daemon", "unique_id": f"{nid}_daemon", "device_class": "connectivity",
        "state_topic": state_topic, "payload_on": "online", "payload_off": "offline",
        "device": device})}
    for model_id, topic in models:
        oid = object_id(model_id)
        out[f"{base}/{oid}/config"] = orjson.dumps({
            "name": model_id, "unique_id": f"{nid}_{oid}", "device_class": "problem",
            "state_topic": topic, "value_template": _PROBLEM,
            "json_attributes_topic": topic, "device": device, **availability})
    for scope, name, period, topic in budgets:
        oid = object_id(f"budget {scope} {name} {period}")
        when = "today" if period == "day" else "this month"
        out[f"{cfg.discovery_prefix}/sensor/{nid}/{oid}/config"] = orjson.dumps({
            "name": f"{name} spent {when}", "unique_id": f"{nid}_{oid}",
            "device_class": "monetary", "unit_of_measurement": "USD",
            "state_topic": topic, "value_template": "{{ value_json.spent_usd }}",
            "json_attributes_topic": topic, "device": device, **availability})
    return out
