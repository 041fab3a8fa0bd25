"""[clients.<name>] end to end: the daemon on a Unix socket (the test process's own uid is
the client's) and its TCP listener with per-client tokens, the openai SDK and httpx, fake
upstreams with prices, on simulated time: model access lists (403 naming the client and the
model, a chain's other models skipped), max_rpm and max_concurrency (429 with Retry-After),
the spending caps (429 insufficient_quota until the UTC day ends, kept across a reload and a
restart), the client:limited event once per episode, status, failoverctl, metrics and the
access log."""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
import os
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from failoverd.clock import ManualClock
from tests.conftest import daemon_toml
from tests.helpers import HELLO, chat, failoverctl, metric, status, tcp_listener, until

UID = os.getuid()
# 2026-12-07 23:50:00 UTC, ten minutes before the day's caps reset
LATE = float(calendar.timegm((2026, 12, 7, 23, 50, 0, 0, 0, 0)))
# $100 per million tokens both ways: an answer of the fakes (9 + 6 tokens) costs $0.0015
PRICED = "cost = { input = 100.0, output = 100.0 }"


def body(local: Any, cloud: Any, clients: str, head: str = "") -> str:
    """local/llama (priced) and cloud/big; the default chain cloud/big > local/llama and
    chain "mixed" the same; `clients`: the [clients.*] tables."""
    return f"""{head}
[providers.local]
kind = "openai"
base_url = "{local.url}"
stream_usage = true
[providers.cloud]
kind = "openai"
base_url = "{cloud.url}"
[models."local/llama"]
provider = "local"
{PRICED}
[models."local/free"]
provider = "local"
[models."cloud/big"]
provider = "cloud"
[routing]
primary = "cloud/big"
fallbacks = ["local/llama"]
retry_after_max = 0.2
when_all_unavailable = "fail"
[chains.mixed]
models = ["cloud/big", "local/llama"]
[probes]
kind = "none"
{clients}"""


async def messages(d: Any, model: str) -> httpx.Response:
    return await d.http.post("/v1/messages", json={"model": model, "max_tokens": 16,
                                                   "messages": HELLO})


def limited_events(d: Any) -> list[dict[str, Any]]:
    return [dict(e.fields) for e in d.sup.service.bus.recent() if e.type == "client:limited"]


async def test_models_outside_the_list_are_refused_and_skipped(
        fake_openai: Any, start_daemon: Any) -> None:
    local, cloud = await fake_openai(reply="local"), await fake_openai(reply="cloud")
    d = await start_daemon(body(local, cloud, f"""
[clients.batch]
uids = [{UID}]
models = ["local/*"]"""))
    with pytest.raises(openai.PermissionDeniedError) as info:
        await d.openai.chat.completions.create(model="cloud/big", messages=HELLO)
    error = info.value.body
    assert isinstance(error, dict)
    assert error["type"] == "permission_denied" and error["code"] == "model_not_allowed"
    assert error["message"] == ("client 'batch' may not use model 'cloud/big' (not in "
                                "clients.batch.models)")
    assert error["client"] == "batch"
    for name in ("default", "mixed"):  # not listed: nor are their models all the client's
        resp = await chat(d, name)
        assert resp.status_code == 403 and f"'{name}'" in resp.json()["error"]["message"]
    resp = await messages(d, "cloud/big")  # in the Anthropic shape on /v1/messages
    assert resp.status_code == 403
    assert resp.json()["type"] == "error"
    assert resp.json()["error"]["type"] == "permission_error"
    assert not cloud.requests
    # a model of the glob serves; its fallbacks (the default chain) outside the list are
    # passed over, and visibly so: a 503 lists the skipped model with the reason
    raw = await d.openai.chat.completions.with_raw_response.create(model="local/llama",
                                                                   messages=HELLO)
    assert raw.headers["x-failoverd-model"] == "local/llama"
    assert raw.parse().choices[0].message.content == "local"
    local.push("auth")
    resp = await chat(d, "local/llama")
    assert resp.status_code == 503
    attempts = {a["model"]: a for a in resp.json()["error"]["attempts"]}
    assert attempts["cloud/big"]["reason"] == "incapable"
    assert "not in clients.batch.models" in str(attempts["cloud/big"])
    assert attempts["local/llama"]["status"] == 401 and not cloud.requests
    counts = (await status(d))["clients"]["batch"]
    assert counts["models"] == ["local/*"] and counts["inflight"] == 0
    assert await metric(d, 'failoverd_client_requests_total{client="batch",outcome="forbidden"}'
                        " 4")


async def test_max_rpm_refuses_with_retry_after_and_tells_once(
        fake_openai: Any, start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="failoverd.access")
    clock = ManualClock(wall=LATE - 3600)
    local, cloud = await fake_openai(), await fake_openai()
    d = await start_daemon(body(local, cloud, f"""
[clients.batch]
uids = [{UID}]
max_rpm = 2""", head="access_log = true"), clock=clock)
    assert (await chat(d)).status_code == 200
    clock.advance(20)
    assert (await chat(d)).status_code == 200
    clock.advance(10)
    with pytest.raises(openai.RateLimitError) as info:
        await d.openai.chat.completions.create(model="default", messages=HELLO)
    assert info.value.response.headers["retry-after"] == "30"  # the first leaves the minute
    error = info.value.body
    assert isinstance(error, dict)
    assert (error["type"], error["code"], error["limit"]) == (
        "requests", "rate_limit_exceeded", "max_rpm")
    assert "client 'batch' is at its max_rpm (2 requests in the last minute)" in error["message"]
    resp = await messages(d, "default")  # Anthropic's rate_limit_error
    assert resp.status_code == 429 and resp.json()["error"]["type"] == "rate_limit_error"
    assert resp.headers["retry-after"] == "30"
    # one event for the episode, not one per refused request
    assert len(limited_events(d)) == 1
    event = limited_events(d)[0]
    assert (event["client"], event["limit"]) == ("batch", "max_rpm")
    assert event["retry_at"] == clock.time() + 30
    entry = (await status(d))["clients"]["batch"]
    assert (entry["requests_last_minute"], entry["max_rpm"], entry["limited"]) == (
        2, 2, "max_rpm")
    code, out, _ = await failoverctl(d.socket, "status")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("batch "))
    assert f"uid {UID}" in row and "2/2" in row and "MAX_RPM" in row and "any" in row
    assert "CLIENT" in out and "AT ONCE" in out
    clock.advance(30)
    assert (await chat(d)).status_code == 200
    assert await metric(d, 'failoverd_client_requests_total{client="batch",outcome="served"} 3')
    assert await metric(d, 'failoverd_client_requests_total{client="batch",outcome="max_rpm"} 2')
    # kept at its limit, a place freed and taken at once: the same episode, told once
    await chat(d)
    assert (await chat(d)).status_code == 429
    assert len(limited_events(d)) == 1
    # after a minute with no refusal a new episode is told again
    clock.advance(60)
    await chat(d)
    await chat(d)
    assert (await chat(d)).status_code == 429
    assert len(limited_events(d)) == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "failoverd.access"]
    assert lines and all(line.endswith(" client=batch") for line in lines)
    assert any(" 429 " in line for line in lines)
    access = [r.access for r in caplog.records  # type: ignore[attr-defined]
              if r.name == "failoverd.access"]
    assert {a["client"] for a in access} == {"batch"}


async def test_max_concurrency(fake_openai: Any, start_daemon: Any, tmp_path: Path) -> None:
    local, cloud = await fake_openai(), await fake_openai()
    told = tmp_path / "told.json"
    hook = tmp_path / "hook"
    hook.write_text(f"#!/bin/sh\ncat > {told}\n")
    hook.chmod(0o755)
    d = await start_daemon(body(local, cloud, f"""
[clients.batch]
uids = [{UID}]
max_concurrency = 1
[[hooks]]
events = ["client:limited"]
exec = ["{hook}"]"""))
    cloud.push("slow:0.5")
    first = asyncio.create_task(chat(d))
    await until(lambda: len(cloud.requests) == 1)
    resp = await chat(d)
    assert resp.status_code == 429 and resp.headers["retry-after"] == "1"
    assert resp.json()["error"]["limit"] == "max_concurrency"
    assert (await status(d))["clients"]["batch"]["inflight"] == 1
    assert (await first).status_code == 200
    assert (await chat(d)).status_code == 200
    assert [e["limit"] for e in limited_events(d)] == ["max_concurrency"]
    # hooks may subscribe to it
    await until(lambda: told.exists() and told.stat().st_size > 0)
    event = json.loads(told.read_text())
    assert (event["type"], event["client"], event["limit"]) == (
        "client:limited", "batch", "max_concurrency")


async def test_spending_cap_reload_and_restart(
        fake_openai: Any, start_daemon: Any, short_dir: Path) -> None:
    clock = ManualClock(wall=LATE)
    local, cloud = await fake_openai(), await fake_openai()
    tables = f"""
[clients.batch]
uids = [{UID}]
models = ["local/*"]
max_cost_per_day = {{cap}}"""
    config = body(local, cloud, tables.format(cap=0.003))
    d = await start_daemon(config, clock=clock)
    # a stream's cost counts as a plain answer's
    # (the provider's stream_usage asks for a stream's usage: without it a stream costs
    # nothing, as for the models' caps)
    stream = await d.openai.chat.completions.create(model="local/llama", messages=HELLO,
                                                    stream=True)
    assert [c async for c in stream]
    batch = d.sup.service.clients.status
    await until(lambda: batch()["batch"]["inflight"] == 0)  # its end is counted after [DONE]
    assert batch()["batch"]["spent_usd"]["day"] == pytest.approx(0.0015)
    assert (await chat(d, "local/llama")).status_code == 200
    resp = await chat(d, "local/llama")
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "600"  # to 00:00 UTC
    assert resp.headers["x-should-retry"] == "false"
    error = resp.json()["error"]
    assert (error["type"], error["code"], error["limit"]) == (
        "insufficient_quota", "insufficient_quota", "max_cost_per_day")
    assert "$0.0030 of $0.003 spent in 2026-12-07" in error["message"]
    resp = await messages(d, "local/llama")
    assert resp.json()["error"]["type"] == "rate_limit_error"
    assert len(local.chat_requests()) == 2
    # a model without prices costs nothing: past the cap it still serves
    assert (await chat(d, "local/free")).status_code == 200
    assert [(e["limit"], e["retry_at"]) for e in limited_events(d)] == [
        ("max_cost_per_day", LATE + 600)]
    entry = (await status(d))["clients"]["batch"]
    assert entry["spent_usd"]["day"] == pytest.approx(0.003)
    assert entry["limited"] == "max_cost_per_day"
    assert await metric(d, 'failoverd_client_cost_usd_total{client="batch"} 0.003')
    assert await metric(d, 'failoverd_client_requests_total{client="batch",'
                        'outcome="max_cost_per_day"} 2')
    # a restart keeps what was spent (the state file), and does not tell the cap again
    await d.stop()
    d = await start_daemon(config, clock=clock)
    assert (await chat(d, "local/llama")).status_code == 429
    assert limited_events(d) == []
    # a reload applies a new cap at once and keeps the count
    path = short_dir / "d.toml"
    path.write_text(daemon_toml(str(short_dir / "d.sock"), str(short_dir / "d-state"),
                                body(local, cloud, tables.format(cap=0.004))))
    assert d.sup.reload()  # (the client, kept to its models, may not POST /v1/reload)
    assert (await chat(d, "local/llama")).status_code == 200
    assert (await status(d))["clients"]["batch"]["spent_usd"]["day"] == pytest.approx(0.0045)
    assert (await chat(d, "local/llama")).status_code == 429
    # the day ends: a new one starts from nothing
    clock.advance(600)
    assert (await chat(d, "local/llama")).status_code == 200
    entry = (await status(d))["clients"]["batch"]
    assert entry["spent_usd"] == {"day": pytest.approx(0.0015), "month": pytest.approx(0.006)}


async def test_tcp_tokens_and_unmatched_peers(
        fake_openai: Any, start_daemon: Any, short_dir: Path) -> None:
    local, cloud = await fake_openai(), await fake_openai()
    port, head = tcp_listener(short_dir)  # the daemon-wide token "s3cret"
    d = await start_daemon(body(local, cloud, f"""
[clients.batch]
tcp_token_env = "BATCH_TOKEN"
models = ["local/*"]
[clients.someone_else]
uids = [{UID + 1}]
models = ["local/*"]
max_rpm = 1""", head=head), env={"BATCH_TOKEN": "batch-token"})
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as tcp:
        def ask(token: str, model: str = "cloud/big", **extra: str) -> Any:
            return tcp.post("/v1/chat/completions", json={"model": model, "messages": HELLO},
                            headers={"Authorization": f"Bearer {token}", **extra})

        resp = await ask("batch-token")
        assert resp.status_code == 403
        assert "client 'batch' may not use model 'cloud/big'" in resp.json()["error"]["message"]
        assert (await ask("batch-token", "local/llama")).status_code == 200
        # Anthropic clients send their key as x-api-key
        resp = await tcp.post("/v1/messages", headers={"x-api-key": "batch-token"}, json={
            "model": "cloud/big", "max_tokens": 16, "messages": HELLO})
        assert resp.status_code == 403 and resp.json()["error"]["type"] == "permission_error"
        # the daemon-wide token is no client's: served as before
        assert (await ask("s3cret")).status_code == 200
        assert (await ask("wrong")).status_code == 401
    # a Unix socket peer whose uid is no client's is served as before, limits or not
    for _ in range(2):
        assert (await chat(d, "cloud/big")).status_code == 200
    clients = (await status(d))["clients"]
    assert clients["batch"]["tcp_token"] is True and clients["batch"]["uids"] == []
    assert clients["someone_else"]["requests_last_minute"] == 0
    assert "batch-token" not in str(clients)
