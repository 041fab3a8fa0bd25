"""What the README audit found where the code, not the README, was wrong (fixed since)."""

from __future__ import annotations

import pytest

from failoverd import config as config_mod
from failoverd.errors import ConfigError
from tests.helpers import HELLO

# A primary that always fails over (a 500), a fallback the operator forced open, and a third
# model that serves: simulated providers, no network.
THREE = """
[providers.down]
kind = "simulated"
simulate_failure = "server_error"

[providers.up]
kind = "simulated"

[models."down/a"]
provider = "down"
max_retries = 0

[models."up/b"]
provider = "up"

[models."up/c"]
provider = "up"

[routing]
primary = "down/a"
fallbacks = ["up/b", "up/c"]
when_all_unavailable = "fail"

[probes]
kind = "none"
"""


def test_invalid_kind_does_not_call_stream_usage_unknown() -> None:
    text = ('[providers.p]\nkind = "openaii"\nstream_usage = true\n\n'
            '[models."p/m"]\nprovider = "p"\n')
    with pytest.raises(ConfigError) as caught:
        config_mod.loads(text, env={})
    problems = caught.value.problems
    assert any(p.startswith("providers.p.kind:") for p in problems)
    assert problems == [p for p in problems if "stream_usage" not in p]


async def test_failover_past_an_open_fallback_names_the_model_that_serves(start_daemon) -> None:
    d = await start_daemon(THREE)
    opened = await d.http.post("/v1/models/up/b/open")
    assert opened.status_code == 200
    resp = await d.http.post("/v1/chat/completions", json={"model": "default",
                                                           "messages": HELLO})
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == "up/c"
    assert resp.headers["x-failoverd-attempts"] == "2"  # down/a, then up/c: up/b got nothing
    failovers = [e.fields for e in d.sup.service.bus.recent() if e.type == "model:failover"]
    metrics = (await d.http.get("/metrics")).text
    counted = [line for line in metrics.splitlines()
               if line.startswith("failoverd_failovers_total{")]
    assert [(f["from_model"], f["to_model"]) for f in failovers] == [("down/a", "up/c")]
    assert counted == ['failoverd_failovers_total{from_model="down/a",to_model="up/c",'
                       'reason="server_error"} 1']
