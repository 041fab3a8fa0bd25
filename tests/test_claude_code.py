"""Claude Code as a client (ANTHROPIC_BASE_URL pointed at failoverd): the request shape it
sends — `?beta=true`, beta headers, cached system blocks, adaptive thinking with
`output_config.effort`, `context_management` — is served by Anthropic and, failed over, by an
OpenAI-compatible model. Each of these fields was a 400 from failoverd before."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.test_sdk_clients import reasoning_config

BETAS = "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27"


def claude_code_body(model: str, **extra: Any) -> dict[str, Any]:
    """A turn as Claude Code 2.1 sends it (trimmed)."""
    return {
        "model": model, "max_tokens": 32000, "stream": True,
        "system": [{"type": "text", "text": "You are Claude Code.",
                    "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "List the files.", "cache_control": {"type": "ephemeral"}}]}],
        "tools": [{"name": "Bash", "description": "Runs a command",
                   "input_schema": {"type": "object", "additionalProperties": False,
                                    "$schema": "http://json-schema.org/draft-07/schema#",
                                    "properties": {"command": {"type": "string"}},
                                    "required": ["command"]}}],
        "metadata": {"user_id": "user_0a1b_account__session_5f6e"},
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        **extra,
    }


@pytest.fixture
async def rig(fake_openai: Any, fake_anthropic: Any, start_daemon: Any) -> Any:
    """tests/test_sdk_clients.py's two models, both able to reason."""
    oai, ant = await fake_openai(), await fake_anthropic()
    text = reasoning_config(oai, ant)
    d = await start_daemon(text)
    yield oai, ant, d, None


async def post_stream(d: Any, body: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    resp = await d.http.post("/v1/messages?beta=true", content=orjson.dumps(body), headers={
        "content-type": "application/json", "anthropic-version": "2023-06-01",
        "anthropic-beta": BETAS, "x-app": "cli", "user-agent": "claude-cli/2.1.0 (external, cli)"})
    events = [orjson.loads(line[6:]) for line in resp.text.splitlines()
              if line.startswith("data: ")]
    return resp, events


async def test_a_claude_code_turn_is_served_by_anthropic(rig: Any) -> None:
    _, ant, d, _client = rig
    resp, events = await post_stream(d, claude_code_body("ant/claude"))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "ant/claude"
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    sent = ant.message_requests()[-1].body
    # adaptive thinking guided by effort "high" goes out as a high thinking budget
    assert sent["thinking"]["type"] == "enabled"
    assert sent["thinking"]["budget_tokens"] >= 16384
    assert "context_management" not in sent  # no other provider has it: dropped everywhere
    assert sent["tools"][0]["name"] == "Bash"


async def test_a_claude_code_turn_fails_over_to_an_openai_model(rig: Any) -> None:
    oai, ant, d, _client = rig
    ant.push("overloaded", "overloaded", "overloaded")
    resp, events = await post_stream(d, claude_code_body("both"))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "oai/gpt"
    assert resp.headers["x-failoverd-failover"].startswith("ant/claude>oai/gpt:overloaded")
    assert events[-1]["type"] == "message_stop"
    sent = oai.requests[-1].body
    assert sent["reasoning_effort"] == "high"
    assert "context_management" not in sent and "output_config" not in sent


async def test_effort_without_thinking_asks_for_no_reasoning(rig: Any) -> None:
    oai, _, d, _client = rig
    body = claude_code_body("oai/gpt", output_config={"effort": "low"})
    del body["thinking"]
    resp, _ = await post_stream(d, body)
    assert resp.status_code == 200, resp.text
    assert "reasoning_effort" not in oai.requests[-1].body


async def test_an_unknown_effort_is_a_400_naming_it(rig: Any) -> None:
    _, ant, d, _client = rig
    resp, _ = await post_stream(d, claude_code_body("ant/claude",
                                                    output_config={"effort": "extreme"}))
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert "output_config.effort" in error["message"] and "'extreme'" in error["message"]
    assert not ant.message_requests()


async def test_client_betas_stay_behind_and_the_providers_own_go_out(
        fake_openai: Any, fake_anthropic: Any, start_daemon: Any) -> None:
    """Claude Code's anthropic-beta values are not forwarded: Anthropic refuses a beta it does
    not know or the key may not use ("Unexpected value(s) `oauth-2025-04-20` for the
    `anthropic-beta` header", a 400 that would end the request without failover), and an
    Anthropic-compatible upstream refuses them all. The betas an operator wants are set on
    the provider (`headers`), and go out with every request to it."""
    oai, ant = await fake_openai(), await fake_anthropic()
    text = reasoning_config(oai, ant).replace(
        'kind = "anthropic"\n',
        'kind = "anthropic"\nheaders = { "anthropic-beta" = "interleaved-thinking-2025-05-14" }\n')
    d = await start_daemon(text)
    resp, _ = await post_stream(d, claude_code_body("ant/claude"))
    assert resp.status_code == 200, resp.text
    sent = ant.message_requests()[-1].headers
    assert sent.getall("anthropic-beta") == ["interleaved-thinking-2025-05-14"]
