"""POST /v1/responses with Anthropic's signed thinking across a tool loop.

A Responses client (the Agents SDK, Codex: store=false) gets Anthropic's signed thinking in
the reasoning item's ``encrypted_content`` (failoverd's own format) and sends it back with
the item; the next request gives Anthropic those blocks, signed, first in the assistant turn,
so thinking stays on. End to end with the openai SDK over the Unix socket against the fake
Anthropic, which signs its thinking and refuses a forged signature or a tool loop whose last
assistant turn lacks its thinking; then the translation as pure functions.
"""

from __future__ import annotations

import base64
from typing import Any

import openai
import orjson
import pytest

from failoverd.errors import RequestError
from failoverd.translate.anthropic_request import canonical_to_anthropic
from failoverd.translate.responses_front import responses_to_canonical
from failoverd.translate.responses_response import (
    THINKING_PREFIX,
    canonical_to_responses,
    encrypted_thinking,
    response_echo,
)
from tests.fakes.anthropic import FakeAnthropic, signature
from tests.test_responses_front import WEATHER, config
from tests.test_responses_review import completed_output, delta, finish, stream

QUESTION = "weather in Paris?"


@pytest.fixture
async def rig(fake_openai: Any, fake_anthropic: Any, start_daemon: Any) -> Any:
    oai = await fake_openai()
    ant = await fake_anthropic()
    # both reason, so a request with reasoning.effort may fail over from one to the other
    d = await start_daemon(config(oai, ant).replace(
        'capabilities = ["tools", "vision", "json"]\n',
        'capabilities = ["tools", "vision", "json", "reasoning"]\n', 1))
    return oai, ant, d


def settings(model: str = "ant/claude") -> dict[str, Any]:
    """What the Agents SDK sends with store=false and reasoning on."""
    return {"model": model, "tools": [WEATHER], "store": False,
            "include": ["reasoning.encrypted_content"], "max_output_tokens": 4096,
            "reasoning": {"effort": "low", "summary": "auto"}}


def next_input(output: list[Any]) -> list[dict[str, Any]]:
    """Turn 2's input as the Agents SDK builds it: the question, every output item of turn 1
    sent back as it came, and the tool's answer."""
    call = next(i for i in output if i.type == "function_call")
    return [{"role": "user", "content": QUESTION},
            *(i.model_dump(exclude_none=True) for i in output),
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]


def assert_thinking_replayed(ant: FakeAnthropic) -> None:
    body = ant.message_requests()[-1].body
    assert body["thinking"]["type"] == "enabled"
    assistant = [m for m in body["messages"] if m["role"] == "assistant"]
    assert assistant[-1]["content"][0] == {"type": "thinking", "thinking": ant.thinking,
                                           "signature": signature(ant.thinking)}
    assert [b["type"] for b in assistant[-1]["content"]] == ["thinking", "text", "tool_use"]


# ------------------------------------------------------------------ end to end

async def test_a_tool_loop_keeps_anthropic_thinking_on(rig: Any) -> None:
    oai, ant, d = rig
    first = await d.openai.responses.create(input=QUESTION, **settings())
    assert [i.type for i in first.output] == ["reasoning", "message", "function_call"]
    reasoning = first.output[0]
    assert reasoning.summary[0].text == ant.thinking
    assert reasoning.encrypted_content is not None
    assert reasoning.encrypted_content.startswith(THINKING_PREFIX)
    second = await d.openai.responses.create(input=next_input(first.output), **settings())
    assert second.status == "completed"
    assert_thinking_replayed(ant)
    assert second.output[0].type == "reasoning"  # thinking stayed on


async def test_a_streamed_tool_loop_keeps_anthropic_thinking_on(rig: Any) -> None:
    oai, ant, d = rig
    async with d.openai.responses.stream(input=QUESTION, **settings()) as events:
        done = [e.item async for e in events if e.type == "response.output_item.done"]
        first = await events.get_final_response()
    assert [i.type for i in first.output] == ["reasoning", "message", "function_call"]
    # the item's done event carries it already, as the final response does
    assert done[0].type == "reasoning"
    assert done[0].encrypted_content == first.output[0].encrypted_content
    assert (first.output[0].encrypted_content or "").startswith(THINKING_PREFIX)
    async with d.openai.responses.stream(input=next_input(first.output),
                                         **settings()) as events:
        second = await events.get_final_response()
    assert second.status == "completed"
    assert_thinking_replayed(ant)
    assert second.output[0].type == "reasoning"


async def test_it_is_given_without_include_too(rig: Any) -> None:
    """Clients that replay every item without asking for include (older Agents SDKs) keep
    their thinking too: failoverd's reasoning items cannot go to OpenAI anyway."""
    oai, ant, d = rig
    body = {**settings(), "include": None}
    first = await d.openai.responses.create(input=QUESTION, **body)
    assert (first.output[0].encrypted_content or "").startswith(THINKING_PREFIX)
    await d.openai.responses.create(input=next_input(first.output), **body)
    assert_thinking_replayed(ant)


@pytest.mark.parametrize("streamed", [False, True])
async def test_failover_in_turn_two_never_sends_thinking_blocks_to_openai(
        rig: Any, streamed: bool) -> None:
    oai, ant, d = rig
    first = await d.openai.responses.create(input=QUESTION, **settings())
    ant.default = "overloaded"
    raw = await d.openai.responses.with_raw_response.create(
        input=next_input(first.output), stream=streamed, **settings("ant_first"))
    assert raw.headers["x-failoverd-failover"] == "ant/claude>oai/gpt:overloaded"
    if streamed:
        assert [e async for e in raw.parse()][-1].type == "response.completed"
    else:
        assert raw.parse().status == "completed"
    sent = orjson.dumps(oai.chat_requests()[-1].body)
    assert b"thinking_blocks" not in sent and b"signature" not in sent
    assert signature(ant.thinking).encode() not in sent


async def test_a_forged_encrypted_content_is_a_400_naming_it(rig: Any) -> None:
    oai, ant, d = rig
    first = await d.openai.responses.create(input=QUESTION, **settings())
    history = next_input(first.output)
    history[1]["encrypted_content"] = THINKING_PREFIX + "not base64 json!"
    with pytest.raises(openai.BadRequestError) as caught:
        await d.openai.responses.create(input=history, **settings())
    assert caught.value.status_code == 400
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "input[1].encrypted_content"
    assert len(ant.message_requests()) == 1  # never sent upstream


async def test_openai_encrypted_content_is_ignored(rig: Any) -> None:
    """A reasoning item from real OpenAI (its Fernet token) cannot be read here: the turn goes
    as today, its summary unsigned, and Anthropic runs that turn without thinking."""
    oai, ant, d = rig
    first = await d.openai.responses.create(input=QUESTION, **settings())
    history = next_input(first.output)
    history[1]["encrypted_content"] = "gAAAAABo" + "x" * 40
    second = await d.openai.responses.create(input=history, **settings())
    assert second.status == "completed"
    body = ant.message_requests()[-1].body
    assert "thinking" not in body
    assert ant.thinking.encode() not in orjson.dumps(body["messages"])


# ------------------------------------------------------------------ translation

SIGNED = {"type": "thinking", "thinking": "hm", "signature": "sig-1"}
REDACTED = {"type": "redacted_thinking", "data": "opaque"}


def test_the_format_round_trips() -> None:
    blocks = [SIGNED, REDACTED]
    content = encrypted_thinking(blocks)
    assert content.startswith(THINKING_PREFIX) and "=" not in content
    out = responses_to_canonical({"model": "m", "input": [
        {"role": "user", "content": "x"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "edited"}],
         "encrypted_content": content},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"}]})
    assert out["messages"][1]["thinking_blocks"] == blocks  # signed, the summary unused


@pytest.mark.parametrize("payload", [
    THINKING_PREFIX,
    THINKING_PREFIX + "%%%",
    THINKING_PREFIX + base64.urlsafe_b64encode(b"{not json").decode(),
    encrypted_thinking([]),
    encrypted_thinking([{"type": "thinking", "thinking": "hm", "signature": ""}]),
    encrypted_thinking([{**SIGNED, "extra": 1}]),
    encrypted_thinking(["text"]),  # type: ignore[list-item]
    THINKING_PREFIX + base64.urlsafe_b64encode(b'{"a": 1}').decode(),
])
def test_a_malformed_one_names_the_field(payload: str) -> None:
    with pytest.raises(RequestError) as caught:
        responses_to_canonical({"model": "m", "input": [
            {"role": "user", "content": "x"},
            {"type": "reasoning", "summary": [], "encrypted_content": payload}]})
    assert caught.value.param == "input[1].encrypted_content"


def test_a_non_string_names_the_field() -> None:
    with pytest.raises(RequestError) as caught:
        responses_to_canonical({"model": "m", "input": [
            {"role": "user", "content": "x"},
            {"type": "reasoning", "summary": [], "encrypted_content": 7}]})
    assert caught.value.param == "input[1].encrypted_content"


def test_an_answer_with_only_redacted_thinking_still_has_a_reasoning_item() -> None:
    completion = {"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "ok", "thinking_blocks": [
            REDACTED, {"type": "thinking", "thinking": "unsigned", "signature": ""}]}}]}
    r = canonical_to_responses(completion, "m", response_echo(None))
    [reasoning, _] = r["output"]
    assert reasoning["summary"] == []
    assert reasoning["encrypted_content"] == encrypted_thinking([REDACTED])


def test_an_answer_without_signed_thinking_has_no_encrypted_content() -> None:
    completion = {"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "ok", "reasoning_content": "deepseek's"}}]}
    [reasoning, _] = canonical_to_responses(completion, "m", response_echo(None))["output"]
    assert "encrypted_content" not in reasoning


def test_streamed_signatures_sign_the_text_since_the_previous_one() -> None:
    """Anthropic's stream as anthropic_stream gives it: the text as reasoning_content, then a
    signature delta; interleaved thinking makes one reasoning item per thinking block."""
    call = {"index": 0, "id": "toolu_1", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}
    output = completed_output([
        delta(reasoning_content="first "), delta(reasoning_content="thought"),
        delta(thinking_blocks=[{"type": "thinking", "thinking": "", "signature": "s1"}]),
        delta(thinking_blocks=[REDACTED]),
        delta(tool_calls=[call]),
        delta(reasoning_content="second"),
        delta(thinking_blocks=[{"type": "thinking", "thinking": "", "signature": "s2"}]),
        delta(tool_calls=[{**call, "index": 1, "id": "toolu_2"}]),
        finish("tool_calls")])
    assert [i["type"] for i in output] == ["reasoning", "function_call", "reasoning",
                                           "function_call"]
    assert output[0]["encrypted_content"] == encrypted_thinking([
        {"type": "thinking", "thinking": "first thought", "signature": "s1"}, REDACTED])
    assert output[0]["summary"] == [{"type": "summary_text", "text": "first thought"}]
    assert output[2]["encrypted_content"] == encrypted_thinking([
        {"type": "thinking", "thinking": "second", "signature": "s2"}])


def test_a_stream_of_redacted_thinking_alone_is_a_reasoning_item_without_summary() -> None:
    events, _ = stream([delta(thinking_blocks=[REDACTED]), delta(content="ok"),
                        finish("stop")])
    assert not any(e["type"].startswith("response.reasoning_summary") for e in events)
    [reasoning, message] = events[-1]["response"]["output"]
    assert reasoning["summary"] == [] and message["type"] == "message"
    assert reasoning["encrypted_content"] == encrypted_thinking([REDACTED])


def test_unsigned_streamed_reasoning_has_no_encrypted_content() -> None:
    output = completed_output([delta(reasoning_content="deepseek's"), delta(content="ok"),
                               delta(thinking_blocks=[{"type": "thinking", "thinking": "x",
                                                       "signature": ""}]),
                               finish("stop")])
    assert [i["type"] for i in output] == ["reasoning", "message"]
    assert "encrypted_content" not in output[0]


def test_interleaved_blocks_sent_back_go_to_one_turn_in_order() -> None:
    """A streamed interleaved answer's items sent back: the turn keeps its signed blocks,
    each before the call that followed it (anthropic_order), as Anthropic answered."""
    first = {"type": "thinking", "thinking": "a", "signature": "s1"}
    second = {"type": "thinking", "thinking": "b", "signature": "s2"}
    out = responses_to_canonical({"model": "m", "input": [
        {"role": "user", "content": "x"},
        {"type": "reasoning", "summary": [], "encrypted_content": encrypted_thinking([first])},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "reasoning", "summary": [], "encrypted_content": encrypted_thinking([second])},
        {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"type": "function_call_output", "call_id": "c2", "output": "ok"}]})
    turn = out["messages"][1]
    assert turn["thinking_blocks"] == [first, second]
    assert turn["anthropic_order"] == "tutu"
    sent = canonical_to_anthropic({**out, "reasoning_effort": "low"}, "claude", 8192)
    assert [(b["type"], b.get("signature") or b.get("id")) for b in sent["messages"][1][
        "content"]] == [("thinking", "s1"), ("tool_use", "c1"), ("thinking", "s2"),
                        ("tool_use", "c2")]
    # thinking first, as it came: the order is not kept, as Anthropic needs none
    out = responses_to_canonical({"model": "m", "input": [
        {"role": "user", "content": "x"},
        {"type": "reasoning", "summary": [], "encrypted_content": encrypted_thinking([first])},
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}]})
    assert "anthropic_order" not in out["messages"][1]


def test_a_non_streamed_interleaved_answer_is_an_item_per_block_in_order() -> None:
    """Anthropic's non-streamed answer with interleaved thinking (thinking, text, call,
    thinking, text, call): an item per block in that order, as the stream gives them, and
    sent back they reach Anthropic in that order."""
    from failoverd.translate.anthropic_response import anthropic_to_canonical_response

    first, second = "I need the weather.", "And the forecast."
    blocks = [
        {"type": "thinking", "thinking": first, "signature": signature(first)},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "P"}},
        {"type": "thinking", "thinking": second, "signature": signature(second)},
        {"type": "text", "text": "And tomorrow."},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "L"}}]
    canonical = anthropic_to_canonical_response({
        "id": "msg_1", "content": blocks, "stop_reason": "tool_use",
        "usage": {"input_tokens": 5, "output_tokens": 9}}, "claude")
    output = canonical_to_responses(canonical, "ant/claude", response_echo({}))["output"]
    assert [item["type"] for item in output] == [
        "reasoning", "message", "function_call", "reasoning", "message", "function_call"]
    assert output[1]["content"][0]["text"] == "Checking."
    out = responses_to_canonical({"model": "m", "input": [
        {"role": "user", "content": "Weather?"}, *output,
        {"type": "function_call_output", "call_id": "toolu_1", "output": "18C"},
        {"type": "function_call_output", "call_id": "toolu_2", "output": "16C"}]})
    sent = canonical_to_anthropic({**out, "reasoning_effort": "low"}, "claude", 8192)
    assert sent["messages"][1]["content"] == blocks
