"""Review of observability end to end (GET /metrics, /v1/status, /v1/health, logs) as an
operator running Prometheus, journald and dashboards meets it: regression tests for defects
found, and checks the other suites do not make.

/metrics is read with prometheus_client's own parser (the `test` extra), the way a scraper
reads it, not with string matching alone."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from failoverd import logs
from tests.fakes.base import Logged
from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO, pair_config, status, until
from tests.mosquitto import Mosquitto, requires_mosquitto
from tests.test_events_review import open_stalled_sse
from tests.test_lifecycle import launch as launch  # the fixture
from tests.test_lifecycle import toml as lifecycle_toml

# model ids an operator may well write: '/' and ':' (ollama tags), and ones a scraper chokes
# on unless escaped: a quote, a backslash
# (a line break in a model id is a config error)
ODD = ('odd/"quoted":v1', "odd/back\\slash:latest", "odd/comma,equals=brace} ünï")


def toml_key(model_id: str) -> str:
    """`model_id` as a TOML basic-string key."""
    return orjson.dumps(model_id).decode()


def odd_models(fake: FakeOpenAI) -> str:
    """Providers and models for pair_config's `more`: the ODD ids, served by `fake`."""
    out = f'[providers.odd]\nkind = "openai"\nbase_url = "{fake.url}"\n'
    for model_id in ODD:
        out += f"[models.{toml_key(model_id)}]\nprovider = \"odd\"\nname = \"m\"\n"
    return out


def parse(text: str) -> dict[str, Any]:
    """/metrics as prometheus_client parses it: {family name: family}; fails on a malformed
    exposition, a family described twice or a series exposed twice."""
    families: dict[str, Any] = {}
    series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for family in text_string_to_metric_families(text):
        assert family.name not in families, f"family {family.name} described twice"
        families[family.name] = family
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in series, f"series {key} exposed twice"
            series.add(key)
    # HELP and TYPE once per family, before its samples
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(helps) == len(set(helps)) and len(types) == len(set(types))
    assert sorted(helps) == sorted(types)
    return families


def samples(families: dict[str, Any], name: str, **labels: str) -> list[Sample]:
    """The samples named `name` (a family's or a histogram's _bucket/_sum/_count) whose labels
    include `labels`."""
    out = []
    for family in families.values():
        out.extend(s for s in family.samples if s.name == name
                   and all(s.labels.get(k) == v for k, v in labels.items()))
    return out


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    """The one sample's value (0 when there is none: a counter never incremented)."""
    found = [s for s in samples(families, name, **labels) if s.labels == labels]
    assert len(found) <= 1, found
    return found[0].value if found else 0.0


async def scrape(d: Any) -> dict[str, Any]:
    resp = await d.http.get("/metrics")
    assert resp.status_code == 200
    return parse(resp.text)


async def chat(d: Any, model: str = "default", **extra: Any) -> Any:
    return await d.http.post("/v1/chat/completions",
                             json={"model": model, "messages": HELLO, **extra})


# --------------------------------------------------------------------------- /metrics format


async def test_metrics_parse_with_odd_model_ids_and_every_series_is_labelled_right(
        fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai(default="server_error")
    b = await fake_openai()
    odd = await fake_openai()
    d = await start_daemon(pair_config(a, b, more=odd_models(odd)))
    for model_id in ODD:
        resp = await chat(d, model_id)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-failoverd-model"] == model_id
    resp = await chat(d)  # a/gpt-a fails (twice: max_retries), b/gpt-b serves
    assert resp.headers["x-failoverd-model"] == "b/gpt-b"
    await d.http.post(f"/v1/models/{ODD[0]}/open")

    families = await scrape(d)
    for model_id in ODD:
        assert value(families, "failoverd_requests_total", model=model_id, outcome="ok") == 1
        assert value(families, "failoverd_upstream_latency_seconds_count", model=model_id,
                     result="ok") == 1
    # the breaker gauge names every configured model, odd ids escaped like any other label
    states = {s.labels["model"]: s.value
              for s in samples(families, "failoverd_breaker_state")}
    assert states == {"a/gpt-a": 0, "b/gpt-b": 0, ODD[0]: 3, ODD[1]: 0, ODD[2]: 0}
    assert value(families, "failoverd_failovers_total", from_model="a/gpt-a",
                 to_model="b/gpt-b", reason="server_error") == 1
    assert families["failoverd_requests"].type == "counter"
    assert families["failoverd_breaker_state"].type == "gauge"
    assert families["failoverd_upstream_latency_seconds"].type == "histogram"


def check_exposition(families: dict[str, Any]) -> None:
    """What a scraper relies on beyond the grammar: counters end in _total, every histogram
    series has cumulative buckets up to +Inf, whose count is its _count."""
    for family in families.values():
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family
        if family.type != "histogram":
            continue
        series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            entry = series.setdefault(labels, {"buckets": []})
            if s.name.endswith("_bucket"):
                entry["buckets"].append((float(s.labels["le"]), s.value))
            else:
                entry[s.name.rsplit("_", 1)[1]] = s.value
        for labels, entry in series.items():
            buckets = entry["buckets"]
            assert buckets and buckets[-1][0] == float("inf"), labels
            assert [b for b, _ in buckets] == sorted(b for b, _ in buckets), labels
            counts = [n for _, n in buckets]
            assert counts == sorted(counts), f"{labels}: buckets not cumulative"
            assert counts[-1] == entry["count"], labels
            assert entry["sum"] >= 0 and (entry["count"] > 0 or entry["sum"] == 0)


async def test_every_request_outcome_is_counted_and_inflight_returns_to_zero(
        fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai()
    b = await fake_openai()
    d = await start_daemon(pair_config(a, b, head="max_inflight = 2",
                                       tail="[breaker]\nfailure_threshold = 100"))
    sent = 0
    # served; failover after a retried 500; failover after a 429 (Retry-After too long)
    for script in (["ok"], ["server_error"] * 2, ["rate_limit"]):
        a.push(*script)
        assert (await chat(d)).status_code == 200
        sent += 1
    a.push("server_error", "server_error")  # every model fails: no_model_available
    b.push("server_error", "server_error")
    assert (await chat(d)).status_code == 503
    sent += 1
    bad = await d.http.post("/v1/chat/completions", content=b"{not json",
                            headers={"content-type": "application/json"})
    assert bad.status_code == 400
    sent += 1
    # two requests hang upstream (max_inflight 2): a third is refused as overloaded
    a.push("hang", "hang")
    hanging = [asyncio.create_task(chat(d)) for _ in range(2)]
    sent += 2
    await until(lambda: len(a.chat_requests()) == 8)
    assert (await chat(d)).status_code == 503
    sent += 1
    stat = await status(d)
    assert stat["inflight"] == 2 and stat["models"]["a/gpt-a"]["inflight"] == 2
    for task in hanging:  # their clients give up
        task.cancel()
    await asyncio.gather(*hanging, return_exceptions=True)

    async def settled() -> bool:
        s = await status(d)
        return s["inflight"] == 0 and all(m["inflight"] == 0 for m in s["models"].values())

    async with asyncio.timeout(5):
        while not await settled():
            await asyncio.sleep(0.02)
    families = await scrape(d)
    check_exposition(families)
    assert value(families, "failoverd_inflight_requests") == 0
    assert value(families, "failoverd_requests_total", model="a/gpt-a", outcome="ok") == 1
    assert value(families, "failoverd_requests_total", model="b/gpt-b", outcome="ok") == 2
    assert value(families, "failoverd_requests_total", model="",
                 outcome="no_model_available") == 1
    assert value(families, "failoverd_requests_total", model="", outcome="cancelled") == 2
    assert value(families, "failoverd_rejected_requests_total", why="bad_input") == 1
    assert value(families, "failoverd_rejected_requests_total", why="overloaded") == 1
    counted = (sum(s.value for s in samples(families, "failoverd_requests_total"))
               + sum(s.value for s in samples(families, "failoverd_rejected_requests_total")))
    assert counted == sent
    assert value(families, "failoverd_failovers_total", from_model="a/gpt-a",
                 to_model="b/gpt-b", reason="server_error") == 2
    assert value(families, "failoverd_failovers_total", from_model="a/gpt-a",
                 to_model="b/gpt-b", reason="rate_limit") == 1
    # each upstream call is one observation: a's 1 + 2 + 1 (a 429 is not retried past
    # retry_after_max) + 2, b's 2 served + 2 failed; the hung calls were cancelled
    hist = "failoverd_upstream_latency_seconds_count"
    assert value(families, hist, model="a/gpt-a", result="ok") == 1
    assert value(families, hist, model="a/gpt-a", result="error") == 5
    assert value(families, hist, model="b/gpt-b", result="ok") == 2
    assert value(families, hist, model="b/gpt-b", result="error") == 2
    assert value(families, "failoverd_events_total", type="model:failover") == 3
    assert value(families, "failoverd_events_total", type="chain:exhausted") == 1


def answered(families: dict[str, Any]) -> float:
    """Client requests the metrics account for, whatever their outcome."""
    return (sum(s.value for s in samples(families, "failoverd_requests_total"))
            + sum(s.value for s in samples(families, "failoverd_rejected_requests_total")))


async def test_an_upstream_bad_request_answer_is_counted(fake_openai: Any,
                                                         start_daemon: Any) -> None:
    a = await fake_openai(default="bad_param")
    b = await fake_openai()
    d = await start_daemon(pair_config(a, b))
    resp = await chat(d)
    assert resp.status_code == 400 and "temperature" in resp.text
    assert b.requests == []  # bad_request: no failover
    assert answered(await scrape(d)) == 1


# --------------------------------------------------------------------------- logs

PROMPT = "PROMPT-zebra-quartz-4711 tell me a secret"
CLIENT_TOKEN = "sk-client-TOKEN-8a7b6c5d4e3f"
KEY_A = "sk-provider-KEY-A-0f1e2d3c4b5a69788796"
KEY_B = "sk-provider-KEY-B-a1b2c3d4e5f60718293a"


class EchoingOpenAI(FakeOpenAI):
    """A FakeOpenAI whose "echo_key" behaviour answers 401 quoting the whole key it got, as
    some OpenAI-compatible gateways do (OpenAI itself masks the middle)."""

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if self.script and self.script[0] == "echo_key":
            self.script.popleft()
            self.requests.append(Logged(request.path, dict(request.headers), None))
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            return web.json_response({"error": {
                "message": f"Incorrect API key provided: {key}. You can find your API key at "
                           "https://platform.openai.com/account/api-keys.",
                "type": "invalid_request_error", "code": "invalid_api_key"}}, status=401)
        return await super()._chat(request)


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every log record of the in-process daemon, at DEBUG, formatted as log_format = "json"
    formats it (logs.JsonFormatter), one line each."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_json_logs_are_one_object_a_line_without_prompt_or_secrets(
        start_daemon: Any, json_log: io.StringIO) -> None:
    a = await EchoingOpenAI().start()
    b = await EchoingOpenAI().start()
    try:
        d = await start_daemon(pair_config(
            a, b, head='log_format = "json"',
            tail="[breaker]\nfailure_threshold = 100\nauth_open_seconds = 0.001"
        ).replace('kind = "openai"\nbase_url = "' + a.url + '"',
                  'kind = "openai"\napi_key_env = "KEY_A"\nbase_url = "' + a.url + '"')
          .replace('kind = "openai"\nbase_url = "' + b.url + '"',
                   'kind = "openai"\napi_key_env = "KEY_B"\nbase_url = "' + b.url + '"'),
            env={"KEY_A": KEY_A, "KEY_B": KEY_B})
        sessions = iter(range(100))

        def headers() -> dict[str, str]:  # a new session each: none sticks to b
            return {"Authorization": f"Bearer {CLIENT_TOKEN}",
                    "x-failoverd-session": f"s-{next(sessions)}"}

        body = {"model": "default", "messages": [{"role": "user", "content": PROMPT}]}
        # failures of every kind on a, served by b; then b fails too; then a stream breaks
        for script in (["server_error", "server_error"], ["rate_limit"], ["echo_key"],
                       ["invalid_json", "invalid_json"], ["bad_gateway", "bad_gateway"]):
            a.push(*script)
            resp = await d.http.post("/v1/chat/completions", json=body, headers=headers())
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-failoverd-model"] == "b/gpt-b"
        await d.http.post("/v1/models/a/gpt-a/reset")
        a.push("server_error", "server_error")
        b.push("echo_key")
        resp = await d.http.post("/v1/chat/completions", json=body, headers=headers())
        assert resp.status_code == 503
        await d.http.post("/v1/models/b/gpt-b/reset")
        a.push("stream_error")
        resp = await d.http.post("/v1/chat/completions", json={**body, "stream": True},
                                 headers=headers())
        assert resp.status_code == 200 and "server_error" in resp.text
        bad = await d.http.post("/v1/chat/completions", headers=headers(),
                                json={"model": "default", "messages": PROMPT})
        assert bad.status_code == 400
        # what an operator reads: the log, the events, status and metrics
        seen = {"events": (await d.http.get("/v1/events?recent=1")).text,
                "status": (await d.http.get("/v1/status")).text,
                "metrics": (await d.http.get("/metrics")).text}
        await d.stop()
    finally:
        await a.close()
        await b.close()
    # the test's own client logs too: only the daemon's lines are the daemon's log
    lines = [line for line in json_log.getvalue().splitlines()
             if not orjson.loads(line)["logger"].startswith(("httpx", "httpcore"))]
    assert lines
    audit = []
    for line in lines:
        entry = orjson.loads(line)  # each line is one JSON object
        assert isinstance(entry, dict)
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        assert entry["level"] in ("debug", "info", "warning", "error", "critical")
        if entry["logger"] == "failoverd.audit":
            audit.append(orjson.loads(entry["message"]))
    types = {e["type"] for e in audit}
    assert {"model:failover", "chain:exhausted", "provider:credentials"} <= types, types
    failover = next(e for e in audit if e["type"] == "model:failover")
    assert {"id", "time", "node", "from_model", "to_model", "reason", "status", "error",
            "session", "attempt"} <= failover.keys()
    # the gateway's 401 quoting the key reached the events, with the key cut out
    assert any(e["type"] == "model:failover" and e["reason"] == "auth"
               and "[redacted]" in e["error"] for e in audit)
    assert any("failed after the first chunk" in orjson.loads(line)["message"]
               for line in lines)
    # nothing an operator reads holds the prompt, the client's token or a provider's key
    for where, text in {"log": "\n".join(lines), **seen}.items():
        for secret in ("zebra-quartz", CLIENT_TOKEN, KEY_A, KEY_B, KEY_A[12:], KEY_B[12:]):
            assert secret not in text, f"{secret!r} in the {where}"


# --------------------------------------------------------------------------- drops


async def test_events_lost_to_a_slow_sse_reader_stay_counted_in_status_and_metrics(
        fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai()
    b = await fake_openai()
    d = await start_daemon(pair_config(a, b))
    svc = d.sup.service
    _, writer = await open_stalled_sse(d.socket)
    try:
        for n in range(3000):  # ~6 MB for a client that reads nothing: some are lost
            svc.bus.emit("config:reloaded", source="test", n=n, padding="x" * 2048)
        families = await scrape(d)
        live = value(families, "failoverd_sse_dropped_events_total")
        assert live >= 1000
        assert (await status(d))["events"]["dropped"] == live
    finally:
        writer.close()
    await until(lambda: not svc.streams and not svc.bus.stats()["subscribers"])
    # the client is gone: what it lost is still what status and metrics say
    families = await scrape(d)
    assert value(families, "failoverd_sse_dropped_events_total") == live
    assert (await status(d))["events"]["dropped"] == live


async def test_an_event_a_sink_failed_on_is_counted_in_metrics(
        fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai(default="server_error")
    b = await fake_openai()
    d = await start_daemon(pair_config(a, b))
    svc = d.sup.service

    def broken_sink(event: Any) -> None:  # a sink with a bug (as MQTT's or a hook's could be)
        raise RuntimeError("sink bug")

    svc.bus.listen(broken_sink)
    resp = await chat(d)
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "b/gpt-b"
    errors = (await status(d))["events"]["listener_errors"]
    assert errors >= 1  # model:failover at least
    assert value(await scrape(d), "failoverd_event_sink_errors_total") == errors


@requires_mosquitto
async def test_publishes_the_broker_refuses_are_counted_in_metrics(
        fake_openai: Any, start_daemon: Any, tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic read #\n")  # anonymous clients may read, not write
    broker = Mosquitto(tmp_path)
    with broker.conf.open("a") as conf:
        conf.write(f"acl_file {acl}\n")
    broker.start()
    try:
        a = await fake_openai(default="server_error")
        b = await fake_openai()
        d = await start_daemon(pair_config(
            a, b, head=f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}'))
        assert (await chat(d)).headers["x-failoverd-model"] == "b/gpt-b"  # an event
        mqtt = d.sup.service.mqtt
        await until(lambda: mqtt.stats().refused >= 3 and not mqtt.stats().queued)
        refused = (await status(d))["mqtt"]["refused"]
        families = await scrape(d)
        assert value(families, "failoverd_mqtt_refused_publishes_total") == refused
        await d.stop()
    finally:
        broker.kill()
        broker.release_port()


async def test_a_stream_that_breaks_midway_is_an_upstream_error_observation(
        fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai(default="stream_error")
    b = await fake_openai()
    d = await start_daemon(pair_config(a, b))
    resp = await chat(d, stream=True)
    assert resp.status_code == 200 and "server_error" in resp.text
    families = await scrape(d)
    assert value(families, "failoverd_requests_total", model="a/gpt-a",
                 outcome="stream_error") == 1
    assert (await status(d))["models"]["a/gpt-a"]["consecutive_failures"] == 1
    assert value(families, "failoverd_upstream_latency_seconds_count", model="a/gpt-a",
                 result="error") == 1


async def test_latency_percentiles_and_histogram_agree_with_the_calls(
        fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai()
    b = await fake_openai()
    d = await start_daemon(pair_config(a, b))
    a.push("slow:0.3")
    for _ in range(4):  # one slow call, three fast ones
        assert (await chat(d)).headers["x-failoverd-model"] == "a/gpt-a"
    model = (await status(d))["models"]["a/gpt-a"]
    assert model["latency_p50"] < 0.25 <= 0.3 <= model["latency_p95"] < 1.0
    assert model["inflight"] == 0
    assert (await status(d))["models"]["b/gpt-b"]["latency_p50"] is None  # never called
    families = await scrape(d)
    check_exposition(families)
    buckets = {s.labels["le"]: s.value for s in samples(
        families, "failoverd_upstream_latency_seconds_bucket", model="a/gpt-a", result="ok")}
    assert buckets["0.25"] == 3 and buckets["0.5"] == buckets["+Inf"] == 4
    total = value(families, "failoverd_upstream_latency_seconds_sum", model="a/gpt-a",
                  result="ok")
    assert 0.3 <= total < 1.0


async def test_json_log_lines_stay_json_for_a_path_that_is_not_utf8(
        launch: Any, short_dir: Path, fake_openai: Any) -> None:
    # a file name is bytes: one that is not UTF-8 reaches the log as a lone surrogate (Python's
    # surrogateescape), which orjson refuses; the line must not be lost to a logging error
    a = await fake_openai()
    config = Path(os.fsdecode(bytes(short_dir) + b"/conf-\xff.toml"))
    config.write_text(lifecycle_toml(short_dir, {"a": a}, daemon='log_format = "json"'))
    d = await launch("", config=config)
    await d.reload()  # logs "reloading the configuration from <path>"
    shown = str(config).encode("utf-8", "backslashreplace").decode()
    client = d.client()
    for path in ("/v1/status", "/v1/health", "/metrics"):  # an operator's views still answer
        assert (await client.get(path)).status_code == 200, path
    assert (await client.get("/v1/status")).json()["config"] == shown
    reloaded = await client.post("/v1/reload")
    assert reloaded.status_code == 200 and reloaded.json()["config"] == shown
    # config:reloaded names the file too: the event stream, and its ring, carry it
    recent = await client.get("/v1/events?recent=1")
    assert recent.status_code == 200
    data = [line[6:] for line in recent.text.splitlines() if line.startswith("data: ")]
    assert [orjson.loads(e)["source"] for e in data] == [shown, shown]
    d.signal(signal.SIGTERM)
    assert await d.exit_code() == 0
    entries = [orjson.loads(line) for line in d.log_text().splitlines()]
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in entries)
    assert any(e["message"].startswith("reloading the configuration from ")
               and "conf-" in e["message"] for e in entries)
    audit = [orjson.loads(e["message"]) for e in entries if e["logger"] == "failoverd.audit"]
    assert [e["type"] for e in audit] == ["config:reloaded"] * 2
    assert not [e for e in entries if e["level"] == "error"]


async def test_a_reload_that_adds_and_removes_models_keeps_the_exposition_consistent(
        fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai(default="server_error")
    b = await fake_openai()
    odd = await fake_openai()
    d = await start_daemon(pair_config(a, b))
    assert (await chat(d)).headers["x-failoverd-model"] == "b/gpt-b"
    before = await scrape(d)
    assert value(before, "failoverd_requests_total", model="b/gpt-b", outcome="ok") == 1
    # b goes, the odd ids come: a fresh series for each, none left of b, no series twice
    path = Path(d.sup.config_path)
    text = path.read_text().replace('[models."b/gpt-b"]\nprovider = "b"\n', odd_models(odd))
    path.write_text(text.replace('fallbacks = ["b/gpt-b"]', f"fallbacks = [{toml_key(ODD[0])}]"))
    resp = await d.http.post("/v1/reload")
    assert resp.status_code == 200, resp.text
    assert (await chat(d)).headers["x-failoverd-model"] == ODD[0]
    after = await scrape(d)
    check_exposition(after)
    states = {s.labels["model"] for s in samples(after, "failoverd_breaker_state")}
    assert states == {"a/gpt-a", *ODD}
    every_label = {v for family in after.values() for s in family.samples
                   for v in s.labels.values()}
    assert "b/gpt-b" not in every_label
    assert value(after, "failoverd_requests_total", model=ODD[0], outcome="ok") == 1
    assert value(after, "failoverd_failovers_total", from_model="a/gpt-a", to_model=ODD[0],
                 reason="server_error") == 1
    # a's counters went on across the reload (2 calls, then 1: the third failure opened it)
    assert value(after, "failoverd_upstream_latency_seconds_count", model="a/gpt-a",
                 result="error") == 3
    assert value(after, "failoverd_events_total", type="config:reloaded") == 1
