"""Anthropic's signed thinking survives failoverd, both ways.

An Anthropic client (Claude Code: thinking on, tools) served by Anthropic gets its thinking
blocks with their real signatures (streamed as signature_delta before the block's stop), and
the blocks it replays reach Anthropic first in their assistant turn, so thinking stays on for
every turn of a tool loop. Before, signatures came back empty and replayed blocks were
dropped: every tool-loop turn went without thinking. A turn another provider served carries
no signed thinking: that request goes without thinking, and without a 400.
"""

from __future__ import annotations

from typing import Any

import anthropic
import orjson
import pytest

from failoverd import tokens
from failoverd.translate import gemini, ollama
from failoverd.translate.anthropic import (
    AnthropicStreamDecoder,
    AnthropicStreamEncoder,
    anthropic_to_canonical,
    anthropic_to_canonical_response,
    canonical_to_anthropic,
    canonical_to_anthropic_response,
)
from tests.fakes.anthropic import signature
from tests.test_sdk_clients import (
    WEATHER,
    anthropic_client,
    openai_client,
    reasoning_config,
)

THINK = {"type": "enabled", "budget_tokens": 2048}
TOOL = {"name": "get_weather", "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}
ASK = {"role": "user", "content": "Weather in Paris?"}
REDACTED = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"}


@pytest.fixture
async def rig(fake_openai: Any, fake_anthropic: Any, start_daemon: Any) -> Any:
    """tests/test_sdk_clients.py's two models, both able to reason."""
    oai, ant = await fake_openai(), await fake_anthropic()
    d = await start_daemon(reasoning_config(oai, ant))
    client = anthropic_client(d.socket)
    yield oai, ant, d, client
    await client.close()


async def ask(client: anthropic.AsyncAnthropic, model: str, messages: list[dict[str, Any]],
              stream: bool) -> anthropic.types.Message:
    kwargs: dict[str, Any] = {"model": model, "max_tokens": 4096, "thinking": THINK,
                              "tools": [TOOL], "messages": messages}
    if not stream:
        return await client.messages.create(**kwargs)
    async with client.messages.stream(**kwargs) as events:
        return await events.get_final_message()


def next_turn(answer: anthropic.types.Message) -> list[dict[str, Any]]:
    """The conversation after `answer` (a tool call), with the tool's result, as an agent
    sends it: the assistant turn exactly as it came."""
    call = next(b for b in answer.content if b.type == "tool_use")
    return [ASK, {"role": "assistant",
                  "content": [b.model_dump(exclude_none=True) for b in answer.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                          "content": "18C, sunny"}]}]


# ------------------------------------------------------------------ end to end


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_tool_loop_keeps_thinking_on_with_the_signed_block(rig: Any,
                                                                   stream: bool) -> None:
    _, ant, _d, client = rig
    first = await ask(client, "ant/claude", [ASK], stream)
    thought = first.content[0]
    assert thought.type == "thinking"
    assert thought.thinking == ant.thinking
    assert thought.signature == signature(ant.thinking)  # was "" (no signature_delta)
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]

    second = await ask(client, "ant/claude", next_turn(first), stream)
    sent = ant.message_requests()[-1].body
    assert sent["thinking"] == THINK  # was left off mid tool loop
    assert sent["messages"][1]["content"][0] == {
        "type": "thinking", "thinking": ant.thinking, "signature": signature(ant.thinking)}
    assert second.content[0].type == "thinking"
    assert second.content[0].signature == signature(ant.thinking)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_loop_whose_turn_another_provider_served_goes_without_thinking(
        rig: Any, stream: bool) -> None:
    oai, ant, d, client = rig
    ant.push("overloaded", "overloaded", "overloaded")
    raw = await client.messages.with_raw_response.create(
        model="both", max_tokens=4096, thinking=THINK, tools=[TOOL], messages=[ASK])
    assert raw.headers["x-failoverd-model"] == "oai/gpt"
    first = await raw.parse()
    assert not any(b.type == "thinking" and b.signature for b in first.content)
    await d.http.post("/v1/models/ant/claude/reset")
    messages = next_turn(first)
    # a thinking block another provider's reasoning became (empty signature), echoed back
    messages[1]["content"].insert(0, {"type": "thinking", "thinking": "hmm", "signature": ""})

    second = await ask(client, "ant/claude", messages, stream)  # no 400
    sent = ant.message_requests()[-1].body
    assert "thinking" not in sent
    assert sent["messages"][1]["content"][0]["type"] == "tool_use"
    assert second.content[0].type == "text"
    assert not any("thinking_blocks" in m for m in oai.requests[-1].body["messages"])


async def test_the_stream_signs_the_block_before_its_stop(rig: Any) -> None:
    """signature_delta comes last in the thinking block, right before content_block_stop,
    as in Anthropic's own stream."""
    _, ant, d, _client = rig
    body = {"model": "ant/claude", "max_tokens": 4096, "thinking": THINK, "stream": True,
            "messages": [ASK]}
    resp = await d.http.post("/v1/messages", content=orjson.dumps(body),
                             headers={"content-type": "application/json",
                                      "anthropic-version": "2023-06-01"})
    assert resp.status_code == 200, resp.text
    events = [orjson.loads(line[6:]) for line in resp.text.splitlines()
              if line.startswith("data: ")]
    block = [e for e in events if e.get("index") == 0]
    assert block[0]["content_block"]["type"] == "thinking"
    assert [e["delta"]["type"] for e in block[1:-1]] == ["thinking_delta", "thinking_delta",
                                                         "signature_delta"]
    assert block[-2]["delta"]["signature"] == signature(ant.thinking)
    assert block[-1]["type"] == "content_block_stop"


async def test_a_forged_signature_is_anthropic_s_400(rig: Any) -> None:
    """A replayed block with a signature Anthropic did not make reaches it (and is refused by
    it, as the real API refuses it), rather than being swapped for thinking off."""
    _, ant, _d, client = rig
    first = await ask(client, "ant/claude", [ASK], stream=False)
    messages = next_turn(first)
    messages[1]["content"][0]["signature"] = "Zm9yZ2Vk"
    with pytest.raises(anthropic.BadRequestError) as info:
        await ask(client, "ant/claude", messages, stream=False)
    assert "Invalid `signature`" in str(info.value)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_an_openai_client_gets_and_replays_thinking_blocks(rig: Any,
                                                                 stream: bool) -> None:
    """The official openai SDK takes `thinking_blocks` as an extra field (LiteLLM's shape);
    sent back, they keep thinking on at Anthropic and never reach an OpenAI upstream."""
    oai, ant, d, _client = rig
    client = openai_client(d.socket)
    kwargs: dict[str, Any] = {"model": "ant/claude", "max_tokens": 4096,
                              "reasoning_effort": "low", "tools": [WEATHER],
                              "messages": [ASK]}
    try:
        if stream:
            blocks: list[Any] = []
            reasoning, call_id = "", ""
            async for chunk in await client.chat.completions.create(stream=True, **kwargs):
                for choice in chunk.choices:
                    extra = choice.delta.model_extra or {}
                    reasoning += extra.get("reasoning_content") or ""
                    blocks += extra.get("thinking_blocks") or []
                    for call in choice.delta.tool_calls or []:
                        call_id = call.id or call_id
            assert reasoning == ant.thinking
            assert blocks == [{"type": "thinking", "thinking": "",
                               "signature": signature(ant.thinking)}]
            # a client rebuilds the block from the reasoning it streamed and the signature
            blocks = [{**blocks[0], "thinking": reasoning}]
        else:
            answer = await client.chat.completions.create(**kwargs)
            message = answer.choices[0].message
            blocks = (message.model_extra or {})["thinking_blocks"]
            assert blocks == [{"type": "thinking", "thinking": ant.thinking,
                               "signature": signature(ant.thinking)}]
            call_id = message.tool_calls[0].id
        history = [ASK, {"role": "assistant", "content": None, "thinking_blocks": blocks,
                         "tool_calls": [{"id": call_id, "type": "function", "function": {
                             "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                   {"role": "tool", "tool_call_id": call_id, "content": "18C, sunny"}]
        await client.chat.completions.create(**{**kwargs, "messages": history})
        sent = ant.message_requests()[-1].body
        assert sent["thinking"]["type"] == "enabled"
        assert sent["messages"][1]["content"][0] == blocks[0]

        await client.chat.completions.create(**{**kwargs, "model": "oai/gpt",
                                                "messages": history})
        assert "thinking_blocks" not in oai.requests[-1].body["messages"][1]
    finally:
        await client.close()


# ------------------------------------------------------------------ translation


def test_redacted_thinking_passes_through_both_ways() -> None:
    signed = {"type": "thinking", "thinking": "so", "signature": "c2ln"}
    answer = anthropic_to_canonical_response({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [signed, REDACTED, {"type": "text", "text": "Hi"}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}})
    message = answer["choices"][0]["message"]
    assert message["thinking_blocks"] == [signed, REDACTED]
    assert message["reasoning_content"] == "so"
    back = canonical_to_anthropic_response(answer, "m")
    assert back["content"] == [signed, REDACTED, {"type": "text", "text": "Hi"}]

    # replayed by the client: kept, and first in the turn towards Anthropic
    canonical = anthropic_to_canonical({"model": "m", "max_tokens": 9, "messages": [
        ASK, {"role": "assistant", "content": [REDACTED, {"type": "text", "text": "Hi"}]},
        {"role": "user", "content": "More"}]})
    assert canonical["messages"][1]["thinking_blocks"] == [REDACTED]
    upstream = canonical_to_anthropic(canonical, "claude-x")
    assert upstream["messages"][1]["content"] == [REDACTED, {"type": "text", "text": "Hi"}]


def test_streamed_redacted_thinking_and_signature_reach_the_client() -> None:
    decoder = AnthropicStreamDecoder("m")
    decoder.feed("message_start", {"type": "message_start", "message": {"id": "msg_r"}})
    chunks = decoder.feed("content_block_start", {"type": "content_block_start", "index": 0,
                                                  "content_block": REDACTED})
    chunks += decoder.feed("content_block_start", {
        "type": "content_block_start", "index": 1,
        "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
    for delta in ({"type": "thinking_delta", "thinking": "so"},
                  {"type": "signature_delta", "signature": "c2ln"}):
        chunks += decoder.feed("content_block_delta", {"type": "content_block_delta",
                                                       "index": 1, "delta": delta})
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"thinking_blocks": [REDACTED]}, {"reasoning_content": "so"},
        {"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "c2ln"}]}]

    encoder = AnthropicStreamEncoder("m")
    raw = b"".join(encoder.feed(c) for c in chunks)
    raw += encoder.feed({"choices": [{"index": 0, "delta": {"reasoning_content": "more"}}]})
    raw += encoder.finish()
    events = [orjson.loads(line[6:]) for line in raw.decode().splitlines()
              if line.startswith("data: ")]
    kinds = [(e["type"], e.get("index"), (e.get("delta") or e.get("content_block") or {})
              .get("type")) for e in events if e["type"].startswith("content_block")]
    assert kinds == [
        ("content_block_start", 0, "redacted_thinking"), ("content_block_stop", 0, None),
        ("content_block_start", 1, "thinking"), ("content_block_delta", 1, "thinking_delta"),
        ("content_block_delta", 1, "signature_delta"), ("content_block_stop", 1, None),
        # thinking after a signed block is a block of its own (unsigned: not from Anthropic)
        ("content_block_start", 2, "thinking"), ("content_block_delta", 2, "thinking_delta"),
        ("content_block_stop", 2, None)]
    assert events[1]["content_block"] == REDACTED


def test_litellm_style_deltas_do_not_repeat_the_thinking() -> None:
    """A delta with both reasoning_content and the same text in thinking_blocks (LiteLLM's
    stream) streams the text once."""
    encoder = AnthropicStreamEncoder("m")
    raw = encoder.feed({"choices": [{"index": 0, "delta": {
        "reasoning_content": "so", "thinking_blocks": [
            {"type": "thinking", "thinking": "so", "signature": None}]}}]})
    raw += encoder.feed({"choices": [{"index": 0, "delta": {"thinking_blocks": [
        {"type": "thinking", "thinking": "", "signature": "c2ln"}]}}]})
    assert raw.count(b'"thinking_delta"') == 1 and raw.count(b'"signature_delta"') == 1


def test_unsigned_thinking_never_reaches_anthropic_and_keeps_thinking_off_mid_loop() -> None:
    canonical = anthropic_to_canonical({
        "model": "m", "max_tokens": 4096, "thinking": THINK, "tools": [TOOL], "messages": [
            ASK, {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "from elsewhere", "signature": ""},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                          "content": "18C"}]}]})
    # kept unsigned, for a model that wants its reasoning back (see test_reasoning_replay.py)
    assert canonical["messages"][1]["thinking_blocks"] == [
        {"type": "thinking", "thinking": "from elsewhere", "signature": ""}]
    upstream = canonical_to_anthropic(canonical, "claude-x")
    assert "thinking" not in upstream
    assert upstream["messages"][1]["content"][0]["type"] == "tool_use"


def test_thinking_blocks_never_reach_gemini_or_ollama() -> None:
    body = {"messages": [ASK, {"role": "assistant", "content": "Sunny.", "thinking_blocks": [
        {"type": "thinking", "thinking": "so", "signature": "c2lnbmVk"}, REDACTED]},
        {"role": "user", "content": "Thanks"}]}
    for request in (gemini.to_request(body), ollama.to_request(body, "m", stream=False)):
        text = orjson.dumps(request)
        assert b"thinking_blocks" not in text and b"c2lnbmVk" not in text
        assert REDACTED["data"].encode() not in text


def test_the_estimate_counts_the_thinking_anthropic_counts() -> None:
    thinking = "step " * 20000
    body = {"messages": [ASK, {"role": "assistant", "content": None, "thinking_blocks": [
        {"type": "thinking", "thinking": thinking, "signature": "c2ln"}], "tool_calls": [
        {"id": "toolu_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"}]}
    assert tokens.estimate(body) > tokens.text_tokens(thinking)


def test_the_estimate_leaves_out_thinking_anthropic_strips_or_never_gets() -> None:
    thinking = "step " * 20000
    earlier = {"role": "assistant", "content": "Sunny.", "thinking_blocks": [
        {"type": "thinking", "thinking": thinking, "signature": "c2ln"}]}
    unsigned = {"role": "assistant", "content": "Sunny.", "thinking_blocks": [
        {"type": "thinking", "thinking": thinking, "signature": ""}]}
    then = {"role": "user", "content": "Thanks"}
    # an earlier turn's thinking: Anthropic strips it from the prompt
    assert tokens.estimate({"messages": [ASK, earlier, then]}) < tokens.text_tokens(thinking)
    # unsigned thinking (another provider's reasoning echoed back) is never sent
    assert tokens.estimate({"messages": [ASK, unsigned]}) < tokens.text_tokens(thinking)


def interleaved_turn() -> dict[str, Any]:
    """An assistant turn with interleaved thinking (the interleaved-thinking beta): thinking
    between tool calls, a text block after the first."""
    first, second = "I need the weather.", "And the forecast."
    return {"role": "assistant", "content": [
        {"type": "thinking", "thinking": first, "signature": signature(first)},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "thinking", "thinking": second, "signature": signature(second)},
        {"type": "text", "text": "And tomorrow."},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Lyon"}}]}


def loop_after(turn: dict[str, Any]) -> list[dict[str, Any]]:
    return [ASK, turn, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "16C"}]}]


def test_an_interleaved_turn_goes_back_to_anthropic_in_its_own_order() -> None:
    turn = interleaved_turn()
    canonical = anthropic_to_canonical({"model": "m", "max_tokens": 4096, "thinking": THINK,
                                        "messages": loop_after(turn)})
    back = canonical_to_anthropic(canonical, "claude")
    assert back["messages"][1]["content"] == turn["content"]
    assert back["thinking"]["type"] == "enabled"  # the turn starts with its thinking


def test_a_turn_with_its_thinking_first_keeps_the_plain_canonical_shape() -> None:
    turn = interleaved_turn()
    turn["content"] = [turn["content"][0], turn["content"][3], *turn["content"][1:3],
                       turn["content"][5]]
    assistant = anthropic_to_canonical({"model": "m", "max_tokens": 4096,
                                        "messages": loop_after(turn)})["messages"][1]
    assert "anthropic_order" not in assistant and assistant["content"] == "Checking."


async def test_interleaved_thinking_reaches_anthropic_in_order_and_never_openai(rig) -> None:
    oai, ant, _, client = rig
    turn = interleaved_turn()
    await ask(client, "ant/claude", loop_after(turn), stream=True)
    assert ant.message_requests()[-1].body["messages"][1]["content"] == turn["content"]
    ant.push("overloaded", "overloaded", "overloaded")
    answer = await ask(client, "both", loop_after(turn), stream=False)
    assert answer.content  # served by the OpenAI fake, which refuses unknown message fields
    sent = oai.chat_requests()[-1].body
    assert "anthropic_order" not in orjson.dumps(sent).decode()
    assert sent["messages"][1]["content"] == [{"type": "text", "text": "Checking."},
                                              {"type": "text", "text": "And tomorrow."}]


def test_a_non_streamed_interleaved_answer_keeps_its_order_both_ways() -> None:
    """Anthropic's answer with interleaved thinking reaches an Anthropic client in its order,
    and an OpenAI client that sends the message back (its text one string, its order in
    anthropic_order with the text lengths) gets it to Anthropic in that order too."""
    turn = interleaved_turn()
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
              "content": turn["content"], "stop_reason": "tool_use",
              "usage": {"input_tokens": 5, "output_tokens": 9}}
    canonical = anthropic_to_canonical_response(answer, "claude")
    message = canonical["choices"][0]["message"]
    assert message["anthropic_order"] == "tx9utx13u"
    assert message["content"] == "Checking.And tomorrow."
    assert canonical_to_anthropic_response(canonical, "m")["content"] == turn["content"]
    replayed = {"model": "m", "messages": [ASK, message, *(
        {"role": "tool", "tool_call_id": f"toolu_{n}", "content": "18C"} for n in (1, 2))]}
    assert canonical_to_anthropic(replayed, "claude")["messages"][1]["content"] == \
        turn["content"]
    # an order that does not fit the message (edited text) falls back to thinking first
    edited = {**message, "content": "Checking. And tomorrow."}
    blocks = canonical_to_anthropic({"model": "m", "messages": [ASK, edited]}, "claude")[
        "messages"][1]["content"]
    assert [b["type"] for b in blocks] == ["thinking", "thinking", "text", "tool_use",
                                           "tool_use"]
