"""Models that want their reasoning back in a tool loop (DeepSeek's thinking mode, on by
default): every assistant turn with tool calls must come back with its reasoning_content, or
the request is a 400 ("The reasoning_content in the thinking mode must be passed back to the
API."), which ends the agent's turn as its own error. Claude Code served by DeepSeek replayed
DeepSeek's reasoning as an unsigned thinking block, which failoverd dropped; a loop begun on
Anthropic and failed over to DeepSeek had no reasoning_content at all.

failoverd learns it from that 400 (once per model: the request goes again at once) and from
then on gives each tool-calling turn its reasoning_content: the client's own, else the text
of the turn's thinking, else a placeholder. Other OpenAI-compatible upstreams never get the
field from failoverd (OpenAI, Groq and Mistral refuse unknown message fields).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.anthropic import signature
from tests.fakes.openai import FakeOpenAI
from tests.test_sdk_clients import (
    WEATHER,
    anthropic_client,
    config,
    openai_client,
    reasoning_config,
)

THOUGHT = "The user wants the weather; I will call the tool."
TOOL = {"name": "get_weather", "description": "Weather for a city",
        "input_schema": WEATHER["function"]["parameters"]}
ASK = {"role": "user", "content": "Weather in Paris?"}
REFUSAL = "The reasoning_content in the thinking mode must be passed back to the API."


@pytest.fixture
async def rig(fake_openai: Any, fake_anthropic: Any, start_daemon: Any) -> Any:
    deepseek: FakeOpenAI = await fake_openai(thinking=THOUGHT)
    ant = await fake_anthropic()
    d = await start_daemon(reasoning_config(deepseek, ant))
    client = anthropic_client(d.socket)
    yield deepseek, ant, d, client
    await client.close()


def assistant_turns(request: Any) -> list[dict[str, Any]]:
    return [m for m in request.body["messages"] if m["role"] == "assistant"]


@pytest.mark.parametrize("stream", [False, True])
async def test_claude_code_on_deepseek_gets_through_a_tool_loop(rig, stream: bool) -> None:
    deepseek, _, d, client = rig
    kwargs: dict[str, Any] = {"model": "oai/gpt", "max_tokens": 1024, "tools": [TOOL]}

    async def ask(messages: list[Any]) -> Any:
        if not stream:
            return await client.messages.create(messages=messages, **kwargs)
        async with client.messages.stream(messages=messages, **kwargs) as events:
            return await events.get_final_message()

    first = await ask([ASK])
    thinking, call = first.content[0], first.content[-1]
    assert (thinking.type, thinking.thinking, thinking.signature) == ("thinking", THOUGHT, "")
    loop = [ASK, {"role": "assistant", "content": [c.model_dump() for c in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                          "content": "18C"}]}]
    deepseek.calls_after_result = True
    sent_before = len(deepseek.chat_requests())
    second = await ask(loop)
    assert second.content[-1].type == "tool_use"
    refused, accepted = deepseek.chat_requests()[sent_before:]
    assert "reasoning_content" not in assistant_turns(refused)[0]  # learned from its 400
    assert assistant_turns(accepted)[0]["reasoning_content"] == THOUGHT
    assert "thinking_blocks" not in assistant_turns(accepted)[0]
    # learned: the next turn goes with it at once
    sent_before = len(deepseek.chat_requests())
    await ask(loop)
    assert len(deepseek.chat_requests()) == sent_before + 1
    status = (await d.http.get("/v1/status")).json()["models"]["oai/gpt"]
    assert status["state"] == "closed"  # the 400 was no failure of the model


async def test_a_loop_failed_over_from_anthropic_gives_deepseek_claudes_thinking(rig) -> None:
    deepseek, ant, _, client = rig
    ant.push("overloaded", "overloaded", "overloaded")
    text = "Claude thought about Paris."
    await client.messages.create(model="both", max_tokens=4096, tools=[TOOL], messages=[
        ASK, {"role": "assistant", "content": [
            {"type": "thinking", "thinking": text, "signature": signature(text)},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": "18C"}]}])
    assert assistant_turns(deepseek.chat_requests()[-1])[0]["reasoning_content"] == text


async def test_an_openai_agent_history_without_reasoning_gets_a_placeholder(rig) -> None:
    deepseek, _, d, _ = rig
    client = openai_client(d.socket)
    try:
        await client.chat.completions.create(model="oai/gpt", tools=[WEATHER], messages=[
            ASK, {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_9", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_9", "content": "18C"}])
    finally:
        await client.close()
    assert assistant_turns(deepseek.chat_requests()[-1])[0]["reasoning_content"] == "."


async def test_upstreams_that_never_asked_never_get_reasoning_content(
        fake_openai: Any, fake_anthropic: Any, start_daemon: Any) -> None:
    oai, ant = await fake_openai(), await fake_anthropic()
    d = await start_daemon(config(oai, ant))
    client = anthropic_client(d.socket)
    try:
        await client.messages.create(model="oai/gpt", max_tokens=1024, tools=[TOOL], messages=[
            ASK, {"role": "assistant", "content": [
                {"type": "thinking", "thinking": THOUGHT, "signature": ""},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                          "content": "18C"}]}])
    finally:
        await client.close()
    (request,) = oai.chat_requests()
    assert "reasoning_content" not in assistant_turns(request)[0]
    assert "thinking_blocks" not in assistant_turns(request)[0]


async def test_a_400_about_something_else_is_passed_on_untouched(rig) -> None:
    deepseek, _, d, _ = rig
    deepseek.thinking = None
    deepseek.push("bad_param")
    client = openai_client(d.socket)
    try:
        with pytest.raises(Exception) as raised:
            await client.chat.completions.create(model="oai/gpt", messages=[ASK])
    finally:
        await client.close()
    assert getattr(raised.value, "status_code", None) == 400
    assert len(deepseek.chat_requests()) == 1
    assert REFUSAL not in str(raised.value)
