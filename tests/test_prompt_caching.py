"""Prompt caching through failoverd: the clients' cache_control breakpoints reach Anthropic
upstreams on the blocks they were set on (so an agent's long prompt is read from Anthropic's
cache, not paid in full every turn), cache reads and writes come back in the usage, and the
breakpoints never reach an OpenAI-compatible upstream (which refuses the unknown field: the
fake OpenAI does, as the API does) when the request fails over there.

The canonical form carries them as LiteLLM does: on content parts, tools and tool calls, on
a tool message, on a message (its string content), and the request's top-level one.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_claude_code import claude_code_body, post_stream
from tests.test_sdk_clients import WEATHER, openai_client
from tests.test_thinking_roundtrip import rig as rig  # the fixture: the same two models

EPHEMERAL = {"type": "ephemeral"}
HOUR = {"type": "ephemeral", "ttl": "1h"}
LONG = "You are a coding agent. " * 200


def marked(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, cache_control) of every breakpoint in an Anthropic request body."""
    out = [(f"tools[{i}]", t["cache_control"]) for i, t in enumerate(body.get("tools") or [])
           if "cache_control" in t]
    system = body.get("system")
    if isinstance(system, list):
        out += [(f"system[{i}]", b["cache_control"]) for i, b in enumerate(system)
                if "cache_control" in b]
    for i, message in enumerate(body["messages"]):
        for j, block in enumerate(message["content"]):
            if "cache_control" in block:
                out.append((f"messages[{i}].{block['type']}[{j}]", block["cache_control"]))
    return out


def tool_loop(model: str) -> dict[str, Any]:
    """An agent's turn after a tool ran, marked as Claude Code marks it: system, last tool,
    and the last block of the last message (the tool_result)."""
    return {
        "model": model, "max_tokens": 1024,
        "system": [{"type": "text", "text": LONG, "cache_control": HOUR}],
        "tools": [{"name": "get_weather", "description": "Weather for a city",
                   "input_schema": WEATHER["function"]["parameters"],
                   "cache_control": EPHEMERAL}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C",
                 "cache_control": EPHEMERAL}]}]}


async def test_breakpoints_reach_anthropic_and_the_second_turn_reads_the_cache(rig) -> None:
    _, ant, _, client = rig
    body = tool_loop("ant/claude")
    first = await client.messages.create(**body)
    assert marked(ant.message_requests()[-1].body) == [
        ("tools[0]", EPHEMERAL), ("system[0]", HOUR),
        ("messages[2].tool_result[0]", EPHEMERAL)]
    assert first.usage.cache_creation_input_tokens > 1000  # the long system prompt, written
    assert not first.usage.cache_read_input_tokens
    second = await client.messages.create(**body)
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert not second.usage.cache_creation_input_tokens
    assert second.usage.input_tokens == first.usage.input_tokens  # only what is not cached


async def test_a_streamed_claude_code_turn_keeps_its_breakpoints(rig) -> None:
    _, ant, d, _ = rig
    usages = []
    for _ in range(2):
        resp, events = await post_stream(d, claude_code_body("ant/claude"))
        assert resp.status_code == 200, resp.text
        usages.append(next(e for e in events if e["type"] == "message_delta")["usage"])
    assert marked(ant.message_requests()[-1].body) == [
        ("system[0]", HOUR), ("messages[0].text[0]", EPHEMERAL)]
    assert usages[0]["cache_creation_input_tokens"] > 0
    assert usages[1]["cache_read_input_tokens"] == usages[0]["cache_creation_input_tokens"]


async def test_a_failover_to_openai_leaves_every_breakpoint_behind(rig) -> None:
    oai, ant, _, client = rig
    ant.push("overloaded", "overloaded", "overloaded")
    body = {**tool_loop("both"), "cache_control": EPHEMERAL}
    msg = await client.messages.with_raw_response.create(**body)
    assert msg.headers["x-failoverd-model"] == "oai/gpt"
    assert (await msg.parse()).content[0].text == oai.reply
    # the fake refuses cache_control anywhere with OpenAI's 400, so this one had none
    assert "cache_control" not in str(oai.chat_requests()[-1].body)


async def test_openai_clients_mark_breakpoints_as_litellm_spells_them(rig) -> None:
    _, ant, d, _ = rig
    client = openai_client(d.socket)
    messages: list[Any] = [
        {"role": "system", "content": LONG, "cache_control": HOUR},  # on the message
        {"role": "user", "content": [
            {"type": "text", "text": "Weather in Paris?", "cache_control": EPHEMERAL}]},
        {"role": "assistant", "content": "Checking.", "cache_control": EPHEMERAL,
         "tool_calls": [{"id": "call_1", "type": "function", "function": {
             "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"}]
    tools = [{**WEATHER, "cache_control": EPHEMERAL}]
    try:
        first = await client.chat.completions.create(
            model="ant/claude", messages=messages, tools=tools, extra_headers={
                "x-failoverd-no-fallback": "1"})
        second = await client.chat.completions.create(
            model="ant/claude", messages=messages, tools=tools)
    finally:
        await client.close()
    assert marked(ant.message_requests()[-1].body) == [
        ("tools[0]", EPHEMERAL), ("system[0]", HOUR),
        ("messages[0].text[0]", EPHEMERAL), ("messages[1].text[0]", EPHEMERAL)]
    assert first.usage is not None and second.usage is not None
    written = (first.usage.model_extra or {}).get("cache_creation_input_tokens")
    assert written and written > 1000  # LiteLLM's usage field for cache writes
    assert second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens == written
    assert second.usage.prompt_tokens == first.usage.prompt_tokens  # reads count as prompt


async def test_a_breakpoint_on_an_assistant_tool_call_marks_its_tool_use(rig) -> None:
    _, ant, _, client = rig
    body = tool_loop("ant/claude")
    body["messages"][1]["content"][1]["cache_control"] = EPHEMERAL
    await client.messages.create(**body)
    assert ("messages[1].tool_use[1]", EPHEMERAL) in marked(ant.message_requests()[-1].body)


async def test_more_breakpoints_than_anthropic_takes_are_its_400(rig) -> None:
    _, ant, _, client = rig
    body = tool_loop("ant/claude")
    body["messages"][0] = {"role": "user", "content": [
        {"type": "text", "text": "a", "cache_control": EPHEMERAL},
        {"type": "text", "text": "b", "cache_control": EPHEMERAL}]}
    with pytest.raises(Exception) as raised:
        await client.messages.create(**body)
    assert getattr(raised.value, "status_code", None) == 400
    assert "A maximum of 4 blocks with cache_control" in str(raised.value)
    assert len(marked(ant.message_requests()[-1].body)) == 5  # passed on as sent


async def test_a_malformed_breakpoint_is_a_400_naming_it(rig) -> None:
    _, ant, _, client = rig
    body = tool_loop("ant/claude")
    body["system"][0]["cache_control"] = "ephemeral"
    with pytest.raises(Exception) as raised:
        await client.messages.create(**body)
    assert getattr(raised.value, "status_code", None) == 400
    assert "system[0].cache_control: must be an object" in str(raised.value)
    assert not ant.message_requests()


def test_gemini_and_ollama_requests_carry_no_breakpoint() -> None:
    from failoverd.translate import gemini, ollama
    from failoverd.translate.anthropic import anthropic_to_canonical

    body = anthropic_to_canonical({**tool_loop("m"), "cache_control": EPHEMERAL})
    assert "cache_control" in str(body)
    for request in (gemini.to_request(body), ollama.to_request(body, "m", stream=False)):
        assert "cache_control" not in str(request)
