"""daemon.access_log: one line per proxied request on the logger failoverd.access (method,
path, status, the model that served, upstream attempts, failover hops, milliseconds, the
peer's uid), with its fields as the JSON line's `request` object; off by default."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import httpx
import orjson
import pytest

from failoverd.logs import JsonFormatter
from tests.helpers import HELLO

CONFIG = """
[providers.busy]
kind = "simulated"
simulate_failure = "rate_limit"
[providers.sim]
kind = "simulated"
[providers.slow]
kind = "simulated"
simulate_latency = 5
[models."busy/m"]
provider = "busy"
max_retries = 0
[models."sim/m"]
provider = "sim"
[models."slow/m"]
provider = "slow"
[models."sim/embed"]
provider = "sim"
capabilities = ["embeddings"]
[routing]
primary = "busy/m"
fallbacks = ["sim/m"]
retry_after_max = 0
when_all_unavailable = "fail"
[probes]
kind = "none"
"""


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.access for r in caplog.records if r.name == "failoverd.access"]  # type: ignore[attr-defined]


async def test_one_line_per_request_with_what_an_operator_asks(
        start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="failoverd.access")
    d = await start_daemon("access_log = true\n" + CONFIG)
    await d.http.post("/v1/chat/completions", json={"model": "default", "messages": HELLO})
    await d.http.post("/v1/chat/completions", json={"model": "default", "messages": "x"})
    await d.http.post("/v1/chat/completions", json={"model": "busy/m", "messages": HELLO},
                      headers={"x-failoverd-no-fallback": "1"})
    await d.http.post("/v1/embeddings", json={"model": "sim/embed", "input": "x"})
    async with d.http.stream("POST", "/v1/chat/completions", json={
            "model": "sim/m", "messages": HELLO, "stream": True}) as resp:
        await resp.aread()
    got = lines(caplog)
    assert [(g["path"], g["status"], g["model"], g["attempts"], g["failover"]) for g in got] == [
        ("/v1/chat/completions", 200, "sim/m", 2, "busy/m>sim/m:rate_limit"),
        ("/v1/chat/completions", 400, None, 0, None),
        ("/v1/chat/completions", 503, None, 1, None),
        ("/v1/embeddings", 200, "sim/embed", 1, None),
        ("/v1/chat/completions", 200, "sim/m", 1, None),
    ]
    assert all(g["method"] == "POST" and g["ms"] >= 0 for g in got)
    assert {g["uid"] for g in got} == {os.getuid()}
    text = [r.getMessage() for r in caplog.records if r.name == "failoverd.access"][0]
    assert text.startswith("POST /v1/chat/completions 200 model=sim/m attempts=2 "
                           "failover=busy/m>sim/m:rate_limit ")
    assert text.endswith(f"ms uid={os.getuid()}")


async def test_a_client_that_leaves_is_a_499(start_daemon: Any,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="failoverd.access")
    d = await start_daemon("access_log = true\n" + CONFIG)
    client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=d.socket),
                               base_url="http://failoverd", timeout=0.3)
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/v1/chat/completions", json={"model": "slow/m", "messages": HELLO})
    await client.aclose()
    for _ in range(100):  # the daemon notices the closed connection on its next turn
        if lines(caplog):
            break
        await asyncio.sleep(0.01)
    (line,) = lines(caplog)
    assert (line["status"], line["model"]) == (499, None)


async def test_off_by_default(start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="failoverd.access")
    d = await start_daemon(CONFIG)
    resp = await d.http.post("/v1/chat/completions", json={"model": "sim/m", "messages": HELLO})
    assert resp.status_code == 200
    assert lines(caplog) == []


def test_the_json_line_carries_the_fields_as_request() -> None:
    fields = {"method": "POST", "path": "/v1/chat/completions\udcff", "status": 200}
    record = logging.LogRecord("failoverd.access", logging.INFO, __file__, 1, "POST %s",
                               ("x",), None)
    record.access = fields
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["logger"] == "failoverd.access" and entry["message"] == "POST x"
    # a path that is no UTF-8 (surrogate escapes) keeps the line
    assert entry["request"] == {**fields, "path": "/v1/chat/completions\\udcff"}


async def test_a_hedged_requests_line_names_its_hedge(
        start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="failoverd.access")
    body = CONFIG.replace('primary = "busy/m"', 'primary = "slow/m"').replace(
        "[routing]\n", "[routing]\nhedge_after = 0.05\n")
    d = await start_daemon("access_log = true\n" + body)
    resp = await d.http.post("/v1/chat/completions", json={"model": "default",
                                                            "messages": HELLO})
    assert resp.headers["x-failoverd-hedge"] == "slow/m>sim/m:won"
    await d.http.post("/v1/chat/completions", json={"model": "sim/m", "messages": HELLO})
    got = lines(caplog)
    assert [(g["status"], g["model"], g["attempts"], g["failover"], g["hedge"]) for g in got] \
        == [(200, "sim/m", 2, None, "slow/m>sim/m:won"), (200, "sim/m", 1, None, None)]
    hedged, plain = [r.getMessage() for r in caplog.records if r.name == "failoverd.access"]
    assert hedged.startswith("POST /v1/chat/completions 200 model=sim/m attempts=2 failover=- "
                             "hedge=slow/m>sim/m:won ")
    assert "hedge=" not in plain and " failover=- " in plain
