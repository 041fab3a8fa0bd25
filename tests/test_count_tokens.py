"""POST /v1/messages/count_tokens (api/count_tokens.py): Anthropic clients (Claude Code among
them) count their context with it. The real anthropic SDK against the daemon, with fake
Anthropic and OpenAI upstreams."""

from __future__ import annotations

from typing import Any

import anthropic
import orjson
import pytest

from tests.helpers import tcp_listener
from tests.test_sdk_clients import anthropic_client, config, curl, rig  # noqa: F401

HI = [{"role": "user", "content": "How many tokens is this?"}]
TOOL = {"name": "get_weather", "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def fake_count(body: dict[str, Any]) -> int:
    """What the fake Anthropic answers for a counted body (tests/fakes/anthropic.py)."""
    counted = orjson.dumps({k: body[k] for k in sorted(body) if k != "model"})
    return len(counted) // 4 + 3


async def test_the_sdk_gets_anthropics_own_count_for_a_model_on_anthropic(rig: Any) -> None:  # noqa: F811
    _, ant, d, client = rig
    raw = await client.messages.with_raw_response.count_tokens(
        model="ant/claude", messages=HI, system="Be brief.", tools=[TOOL])
    counted = (await raw.parse())
    sent = [r for r in ant.requests if r.path == "/v1/messages/count_tokens"]
    assert len(sent) == 1
    # the upstream model name; only the fields the endpoint takes (it refuses max_tokens)
    assert sent[0].body == {"model": "claude", "messages": HI, "system": "Be brief.",
                            "tools": [TOOL]}
    assert sent[0].headers["anthropic-version"]  # the provider's own headers
    assert counted.input_tokens == fake_count(sent[0].body)
    assert raw.headers["x-failoverd-count"] == "upstream"
    assert raw.headers["x-failoverd-model"] == "ant/claude"
    assert not ant.message_requests()  # nothing was generated


async def test_a_model_on_another_provider_gets_failoverds_estimate(rig: Any) -> None:  # noqa: F811
    oai, ant, d, client = rig
    raw = await client.messages.with_raw_response.count_tokens(model="oai/gpt", messages=HI)
    short = (await raw.parse()).input_tokens
    assert raw.headers["x-failoverd-count"] == "estimate"
    assert raw.headers["x-failoverd-model"] == "oai/gpt"
    longer = (await client.messages.count_tokens(
        model="oai/gpt", messages=[{"role": "user", "content": "word " * 2000}])).input_tokens
    assert 0 < short < 50 and 1000 < longer < 4000  # ~1 token per English word
    assert not oai.requests and not ant.requests


async def test_the_count_is_for_the_model_a_request_would_go_to_now(rig: Any) -> None:  # noqa: F811
    """With the chain's head open, the model a messages request would reach is counted."""
    _, ant, d, client = rig
    assert (await d.http.post("/v1/models/ant/claude/open")).status_code == 200
    raw = await client.messages.with_raw_response.count_tokens(model="both", messages=HI)
    assert raw.headers["x-failoverd-model"] == "oai/gpt"
    assert raw.headers["x-failoverd-count"] == "estimate"
    assert not ant.requests
    assert (await d.http.post("/v1/models/ant/claude/reset")).status_code == 200
    raw = await client.messages.with_raw_response.count_tokens(model="both", messages=HI)
    assert raw.headers["x-failoverd-model"] == "ant/claude"
    assert raw.headers["x-failoverd-count"] == "upstream"


async def test_an_upstream_that_fails_to_count_gets_the_estimate_and_no_breaker_count(
        rig: Any) -> None:  # noqa: F811
    _, ant, d, client = rig
    ant.push("overloaded", "overloaded", "overloaded", "api_error")
    for _ in range(4):
        raw = await client.messages.with_raw_response.count_tokens(model="ant/claude",
                                                                   messages=HI)
        assert raw.status_code == 200 and (await raw.parse()).input_tokens > 0
        assert raw.headers["x-failoverd-count"] == "estimate"
    assert len([r for r in ant.requests if r.path == "/v1/messages/count_tokens"]) == 4
    model = (await d.http.get("/v1/status")).json()["models"]["ant/claude"]
    assert model["state"] == "closed" and model["consecutive_failures"] == 0
    metrics = (await d.http.get("/metrics")).text
    assert "failoverd_requests_total{" not in metrics


async def test_a_body_anthropic_refuses_is_the_clients_400(rig: Any) -> None:  # noqa: F811
    _, ant, d, _client = rig
    ant.push("bad_request")
    resp = await d.http.post("/v1/messages/count_tokens",
                             json={"model": "ant/claude", "messages": HI})
    assert resp.status_code == 400
    body = resp.json()
    assert body["type"] == "error"
    assert "text content blocks must be non-empty" in body["error"]["message"]


async def test_bad_input_is_a_400_naming_the_problem(rig: Any) -> None:  # noqa: F811
    _, ant, d, _client = rig
    for payload, words in (({"model": "ant/claude"}, "messages"),
                           ({"model": "nope/none", "messages": HI}, "nope/none")):
        resp = await d.http.post("/v1/messages/count_tokens", json=payload)
        assert resp.status_code in (400, 404), resp.text
        body = resp.json()
        assert body["type"] == "error" and words in body["error"]["message"]
    resp = await d.http.post("/v1/messages/count_tokens", content=b"{nope")
    assert resp.status_code == 400 and resp.json()["type"] == "error"
    assert not ant.requests


async def test_claude_codes_beta_query_with_curl(rig: Any) -> None:  # noqa: F811
    _, ant, d, _client = rig
    head, body = await curl("--unix-socket", d.socket,
                            "http://failoverd/v1/messages/count_tokens?beta=true",
                            "-H", "content-type: application/json", "-H",
                            "anthropic-beta: token-counting-2024-11-01",
                            "-d", orjson.dumps({"model": "ant/claude", "messages": HI}).decode())
    assert head.startswith("HTTP/1.1 200")
    assert orjson.loads(body)["input_tokens"] == fake_count({"messages": HI})


async def test_anthropic_clients_reach_the_tcp_listener_with_their_api_key(
        fake_openai: Any, fake_anthropic: Any, start_daemon: Any, short_dir: Any) -> None:
    """ANTHROPIC_BASE_URL=http://127.0.0.1:PORT ANTHROPIC_API_KEY=<token>: the SDK sends the
    key as x-api-key, not as a bearer; it was a 401."""
    oai, ant = await fake_openai(), await fake_anthropic()
    port, tcp = tcp_listener(short_dir)
    d = await start_daemon(tcp + config(oai, ant))
    assert d.socket
    for key, ok in (("s3cret", True), ("wrong", False)):
        client = anthropic.AsyncAnthropic(api_key=key, base_url=f"http://127.0.0.1:{port}",
                                          max_retries=0)
        try:
            if not ok:
                with pytest.raises(anthropic.AuthenticationError) as info:
                    await client.messages.count_tokens(model="ant/claude", messages=HI)
                assert "x-api-key" in str(info.value)
                continue
            msg = await client.messages.create(model="ant/claude", max_tokens=64, messages=HI)
            assert msg.content[0].type == "text"
            counted = await client.messages.count_tokens(model="ant/claude", messages=HI)
            assert counted.input_tokens == fake_count({"messages": HI})
        finally:
            await client.close()
    # the client's key is never sent upstream
    assert all(r.headers.get("x-api-key") != "s3cret" for r in ant.requests)
