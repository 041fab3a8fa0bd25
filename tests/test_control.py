"""The status and control API over the daemon's socket: status, models, health, breaker
control (ids with '/' and ':'), chains, select and metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from failoverd.clock import ManualClock
from tests.fakes.openai import FakeOpenAI
from tests.helpers import GPT, HELLO, QWEN, chat, gpt_qwen_config, gpt_qwen_daemon, status


def control_toml(a: FakeOpenAI, o: FakeOpenAI) -> str:
    return gpt_qwen_config(
        a, o, gpt='capabilities = ["tools", "vision"]\ntier = "large"\n'
                  "cost = { input = 3.0, output = 15.0 }",
        qwen='capabilities = []\ntier = "small"', routing="deadline = 5",
        tail="[breaker]\nfailure_threshold = 2\nopen_seconds = 30\n")


@pytest.fixture
async def rig(fake_openai, start_daemon) -> Any:
    clock = ManualClock()
    return *await gpt_qwen_daemon(fake_openai, start_daemon, control_toml, clock=clock), clock


# ------------------------------------------------------------------ status


async def test_status_reports_every_field(rig) -> None:
    a, o, d, clock = rig
    assert (await chat(d)).status_code == 200
    probe = await d.http.post(f"/v1/models/{QWEN}/probe")
    assert probe.status_code == 200
    a.default = "server_error"
    assert (await chat(d)).headers["x-failoverd-model"] == QWEN  # two failures: open
    body = await status(d)
    assert body["health"] == "degraded"
    assert body["node"]
    gpt = body["models"][GPT]
    assert gpt["state"] == "open"
    assert gpt["breaker_state"] == "open"
    assert gpt["reason"] == "server_error"
    assert gpt["since"] == pytest.approx(clock.time())
    assert gpt["retry_at"] == pytest.approx(clock.time() + 30, abs=3.1)
    assert gpt["consecutive_failures"] == 2
    assert gpt["failure_rate"] == pytest.approx(2 / 3, abs=1e-3)  # 1 ok, 2 failed
    assert gpt["calls_in_window"] == 3
    assert gpt["latency_p50"] is not None and gpt["latency_p95"] is not None
    assert gpt["last_probe"] is None
    assert gpt["inflight"] == 0
    assert gpt["provider"] == "a"
    qwen = body["models"][QWEN]
    assert qwen["state"] == "closed"
    assert qwen["retry_at"] is None
    assert qwen["last_probe"]["ok"] is True
    assert qwen["last_probe"]["at"] == pytest.approx(clock.time())
    assert qwen["last_probe"]["reason"] is None
    assert body["providers"] == {
        # a's model has prices: what its models spent today and this month (budget.py)
        "a": {"credentials": "ok", "since": pytest.approx(clock.time()), "retry_at": None,
              "spent_usd": {"day": gpt["cost_usd"], "month": gpt["cost_usd"]}},
        "ollama": {"credentials": "ok", "since": pytest.approx(clock.time()), "retry_at": None},
    }
    assert gpt["spent_usd"] == {"day": gpt["cost_usd"], "month": gpt["cost_usd"]}
    assert body["budgets"] == []  # no caps
    assert body["chains"]["default"] == {"models": [GPT, QWEN], "head": GPT}
    assert body["chains"]["local"] == {"models": [QWEN, GPT], "head": QWEN}


async def test_status_counts_requests_in_flight(rig) -> None:
    a, o, d, clock = rig
    a.push("slow:1.5")
    request = asyncio.create_task(chat(d))
    for _ in range(100):  # bounded: until the request is inside the daemon
        body = await status(d)
        if body["inflight"] == 1:
            break
        await asyncio.sleep(0.01)
    assert body["inflight"] == 1
    assert body["models"][GPT]["inflight"] == 1
    assert (await request).status_code == 200
    assert (await status(d))["models"][GPT]["inflight"] == 0


async def test_models_list_states_and_chains(rig) -> None:
    a, o, d, clock = rig
    await d.http.post(f"/v1/models/{QWEN}/open")
    resp = await d.http.get("/v1/models")
    assert resp.status_code == 200
    entries = {m["id"]: m for m in resp.json()["data"]}
    assert entries[GPT]["state"] == "closed"
    assert entries[GPT]["capabilities"] == ["tools", "vision"]
    assert entries[GPT]["context_window"] == 8000
    assert entries[GPT]["tier"] == "large"
    assert entries[GPT]["cost"] == {"input": 3.0, "output": 15.0}
    assert entries[QWEN]["state"] == "forced_open"
    assert entries["local"]["chain"] == [QWEN, GPT]


async def test_health_ok_degraded_down(rig) -> None:
    a, o, d, clock = rig
    resp = await d.http.get("/v1/health")
    assert (resp.status_code, resp.json()["status"]) == (200, "ok")
    await d.http.post(f"/v1/models/{GPT}/open", json={"seconds": 10})
    resp = await d.http.get("/v1/health")
    assert (resp.status_code, resp.json()["status"]) == (200, "degraded")
    await d.http.post(f"/v1/models/{QWEN}/open")
    resp = await d.http.get("/v1/health")
    assert (resp.status_code, resp.json()["status"]) == (503, "down")
    assert resp.json()["models"] == {GPT: "forced_open", QWEN: "forced_open"}
    clock.advance(11)  # GPT's time is over: half-open admits a trial, so it is up
    resp = await d.http.get("/v1/health")
    assert (resp.status_code, resp.json()["status"]) == (200, "degraded")


# ------------------------------------------------------------------ model control


async def test_open_for_seconds_then_reset(rig) -> None:
    a, o, d, clock = rig
    resp = await d.http.post(f"/v1/models/{QWEN}/open", json={"seconds": 5})
    assert resp.status_code == 200
    body = resp.json()
    assert body["model"] == QWEN
    assert body["state"] == "forced_open"
    assert body["reason"] == "operator"
    assert body["retry_at"] == pytest.approx(clock.time() + 5)
    resp = await chat(d, QWEN)
    assert resp.headers["x-failoverd-model"] == GPT
    assert o.requests == []
    resp = await d.http.post(f"/v1/models/{QWEN}/reset")
    assert resp.status_code == 200
    assert resp.json()["state"] == "closed"
    assert resp.json()["reason"] == "reset"
    assert (await chat(d, QWEN)).headers["x-failoverd-model"] == QWEN
    kinds = [(e.type, e.fields.get("reason")) for e in d.sup.service.bus.recent()
             if e.type.startswith("breaker:")]
    assert kinds == [("breaker:opened", "operator"), ("breaker:closed", "reset")]


async def test_open_without_seconds_lasts_until_reset(rig) -> None:
    a, o, d, clock = rig
    resp = await d.http.post(f"/v1/models/{GPT}/open")
    assert resp.json()["state"] == "forced_open"
    assert resp.json()["retry_at"] is None
    clock.advance(100_000)
    assert (await status(d))["models"][GPT]["state"] == "forced_open"
    # a successful probe answers "is it healthy?", it does not overrule the operator
    probe = await d.http.post(f"/v1/models/{GPT}/probe")
    assert probe.json()["ok"] is True
    assert probe.json()["state"] == "forced_open"


@pytest.mark.parametrize("seconds", [0, -1, "10", True, 1e300, 2e9])
async def test_open_rejects_bad_seconds(rig, seconds: Any) -> None:
    a, o, d, clock = rig
    resp = await d.http.post(f"/v1/models/{QWEN}/open", json={"seconds": seconds})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "seconds"
    assert (await status(d))["models"][QWEN]["state"] == "closed"


@pytest.mark.parametrize("action", ["reset", "open", "probe"])
async def test_unknown_model_is_404(rig, action: str) -> None:
    a, o, d, clock = rig
    resp = await d.http.post(f"/v1/models/ollama/nope:1b/{action}")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "model_not_found"
    assert "ollama/nope:1b" in resp.json()["error"]["message"]
    assert a.requests == [] and o.requests == []


async def test_probe_of_a_healthy_model_lists_models(rig) -> None:
    a, o, d, clock = rig
    resp = await d.http.post(f"/v1/models/{QWEN}/probe")
    assert resp.status_code == 200
    assert resp.json()["ok"] is True
    assert [r.path for r in o.requests] == ["/v1/models"]  # probes.kind = "models"
    resp = await d.http.post(f"/v1/models/{QWEN}/probe", json={"kind": "chat"})
    assert resp.json()["ok"] is True
    assert o.requests[-1].path == "/v1/chat/completions"
    assert o.requests[-1].body["model"] == "qwen2.5:7b"
    resp = await d.http.post(f"/v1/models/{QWEN}/probe", json={"kind": "bogus"})
    assert resp.status_code == 400
    assert len(o.requests) == 2


async def test_failed_probe_answers_502_with_the_reason(rig) -> None:
    a, o, d, clock = rig
    o.default = "auth"
    resp = await d.http.post(f"/v1/models/{QWEN}/probe")
    assert resp.status_code == 502
    body = resp.json()
    assert body["ok"] is False
    assert body["last_probe"]["reason"] == "auth"
    assert body["state"] == "unavailable"  # auth blocks the provider
    assert (await status(d))["providers"]["ollama"]["credentials"] == "auth"


# ------------------------------------------------------------------ chains


async def test_chain_next_moves_the_head_and_requests_follow(rig) -> None:
    a, o, d, clock = rig
    resp = await d.http.post("/v1/chains/local/next")
    assert resp.status_code == 200
    assert resp.json() == {"chain": "local", "head": GPT, "models": [GPT, QWEN]}
    assert (await chat(d, "local")).headers["x-failoverd-model"] == GPT
    assert (await status(d))["chains"]["local"]["head"] == GPT

    resp = await d.http.post("/v1/chains/default/next")
    assert resp.json()["head"] == QWEN
    assert (await chat(d)).headers["x-failoverd-model"] == QWEN
    resp = await d.http.post("/v1/chains/default/next")  # wraps around
    assert resp.json()["head"] == GPT

    resp = await d.http.post("/v1/chains/local/reset")
    assert resp.json()["head"] == QWEN
    assert (await chat(d, "local")).headers["x-failoverd-model"] == QWEN
    resp = await d.http.post("/v1/chains/nope/next")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "chain_not_found"


# ------------------------------------------------------------------ select


async def test_select_orders_candidates_with_reasons_without_calling_upstream(rig) -> None:
    a, o, d, clock = rig
    resp = await d.http.post("/v1/select", json={"needs": ["tools"], "tokens": 100})
    assert resp.status_code == 200
    body = resp.json()
    assert body["requirements"]["needs"] == ["tools"]
    assert [(c["model"], c["eligible"], c["reason"]) for c in body["candidates"]] == [
        (GPT, True, None), (QWEN, False, "lacks capability: tools")]

    resp = await d.http.post("/v1/select", json={"tokens": 20000})
    cands = resp.json()["candidates"]
    assert cands[0]["model"] == GPT and not cands[0]["eligible"]
    assert cands[0]["reason"].startswith("context window 8000 <")
    assert cands[1] == {"model": QWEN, "eligible": True, "reason": None, "state": "closed"}

    await d.http.post(f"/v1/models/{GPT}/open")
    resp = await d.http.post("/v1/select", json={"model": "local", "needs": []})
    assert [(c["model"], c["eligible"], c["reason"]) for c in resp.json()["candidates"]] == [
        (QWEN, True, None), (GPT, False, "forced_open")]

    bad = await d.http.post("/v1/select", json={"needs": ["telepathy"]})
    assert bad.status_code == 400
    bad = await d.http.post("/v1/select", json={"tokens": -1})
    assert bad.status_code == 400
    assert a.requests == [] and o.requests == []


# ------------------------------------------------------------------ metrics


async def test_metrics_exposition(rig) -> None:
    a, o, d, clock = rig
    a.default = "server_error"
    for _ in range(2):
        assert (await chat(d)).headers["x-failoverd-model"] == QWEN
    await d.http.post(f"/v1/models/{QWEN}/probe")
    resp = await d.http.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    lines = set(text.splitlines())
    assert f'failoverd_requests_total{{model="{QWEN}",outcome="ok"}} 2' in lines
    assert (f'failoverd_failovers_total{{from_model="{GPT}",to_model="{QWEN}",'
            'reason="server_error"} 1') in lines
    assert f'failoverd_breaker_state{{model="{GPT}"}} 2' in lines
    assert f'failoverd_breaker_state{{model="{QWEN}"}} 0' in lines
    assert f'failoverd_probes_total{{model="{QWEN}",outcome="ok"}} 1' in lines
    assert "# TYPE failoverd_upstream_latency_seconds histogram" in lines
    assert (f'failoverd_upstream_latency_seconds_count{{model="{GPT}",result="error"}} 2'
            in lines)
    assert (f'failoverd_upstream_latency_seconds_bucket{{model="{QWEN}",result="ok",'
            'le="+Inf"} 2') in lines
    # every sample line is "name{labels} value" with a numeric value
    for line in text.splitlines():
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


async def test_select_auto_falling_back_to_the_default_chain_lists_each_model_once(rig) -> None:
    a, o, d, clock = rig
    await d.http.post(f"/v1/models/{GPT}/open")
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    # qwen lacks tools and gpt is open: no tiered model is left, auto uses the default chain
    resp = await d.http.post("/v1/select", json={"model": "auto", "messages": HELLO,
                                                 "tools": [tool]})
    assert resp.status_code == 200, resp.text
    models = [c["model"] for c in resp.json()["candidates"]]
    assert sorted(models) == sorted([GPT, QWEN])
    assert not any(c["eligible"] for c in resp.json()["candidates"])
