"""Translation between Anthropic Messages and the canonical (OpenAI) form, both directions."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from failoverd.errors import RequestError, TranslationError
from failoverd.failures import FailureReason
from failoverd.translate.anthropic import (
    AnthropicStreamDecoder,
    AnthropicStreamEncoder,
    anthropic_error_body,
    anthropic_error_type,
    anthropic_to_canonical,
    anthropic_to_canonical_response,
    canonical_to_anthropic,
    canonical_to_anthropic_response,
    effort_for_budget,
)
from failoverd.translate.images import parse_data_url

PNG = "iVBORw0KGgo="
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}

ANTHROPIC_REQUEST: dict[str, Any] = {
    "model": "anthropic/claude-sonnet-4-5",
    "max_tokens": 512,
    "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this picture, and the weather there?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/b.jpg"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "Paris. Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C, sunny"},
            {"type": "text", "text": "Thanks. And tomorrow?"}]},
    ],
    "tools": [{"name": "get_weather", "description": "Weather for a city",
               "input_schema": SCHEMA, "cache_control": {"type": "ephemeral"}}],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "stop_sequences": ["END"],
    "temperature": 0.5,
    "metadata": {"user_id": "user-42"},
    "stream": True,
}


# ------------------------------------------------------------------ front end request


def test_anthropic_request_to_canonical() -> None:
    out = anthropic_to_canonical(ANTHROPIC_REQUEST)
    assert out["model"] == "anthropic/claude-sonnet-4-5"
    assert out["max_tokens"] == 512
    assert out["stop"] == ["END"] and out["temperature"] == 0.5 and out["user"] == "user-42"
    assert out["stream"] is True and out["stream_options"] == {"include_usage": True}
    assert out["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": SCHEMA, "description": "Weather for a city"},
        "cache_control": {"type": "ephemeral"}}]  # breakpoints kept, as LiteLLM has them
    assert out["tool_choice"] == "auto" and out["parallel_tool_calls"] is False
    system, user, assistant, tool, user2 = out["messages"]
    assert system == {"role": "system", "content": [
        {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}]}
    assert user["content"][1] == {"type": "image_url",
                                  "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    assert user["content"][2] == {"type": "image_url",
                                  "image_url": {"url": "https://example.com/b.jpg"}}
    assert assistant == {"role": "assistant", "content": "Paris. Checking.", "tool_calls": [
        {"id": "toolu_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}],
        "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "sig"}]}
    assert tool == {"role": "tool", "tool_call_id": "toolu_1", "content": "18C, sunny"}
    assert user2 == {"role": "user", "content": "Thanks. And tomorrow?"}


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"},
     {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice_front(choice: dict[str, Any], expected: Any) -> None:
    body = {**ANTHROPIC_REQUEST, "tool_choice": choice}
    assert anthropic_to_canonical(body)["tool_choice"] == expected


def test_thinking_budget_to_effort() -> None:
    assert [effort_for_budget(b) for b in (1024, 4095, 4096, 16383, 16384)] == \
        ["low", "low", "medium", "medium", "high"]
    body = {**ANTHROPIC_REQUEST, "thinking": {"type": "enabled", "budget_tokens": 10000}}
    assert anthropic_to_canonical(body)["reasoning_effort"] == "medium"
    off = {**ANTHROPIC_REQUEST, "thinking": {"type": "disabled"}}
    assert "reasoning_effort" not in anthropic_to_canonical(off)


def test_tool_result_blocks_with_image() -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "is_error": True,
         "content": [{"type": "text", "text": "screen:"},
                     {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                  "data": PNG}}]}]}]}
    [tool] = anthropic_to_canonical(body)["messages"]
    assert tool["role"] == "tool" and tool["tool_call_id"] == "t1"
    assert tool["content"][0] == {"type": "text", "text": "screen:"}
    assert tool["content"][1]["type"] == "image_url"


@pytest.mark.parametrize(("patch", "param"), [
    ({"messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                        "data": "AA=="}}]}]}, "messages[0].content[0].type"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
    ({"top_k": 5}, "top_k"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "file", "file_id": "file_1"}}]}]}, "messages[0].content[0].source.type"),
    ({"thinking": {"type": "telepathic"}}, "thinking.type"),
])
def test_front_untranslatable(patch: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as info:
        anthropic_to_canonical({**ANTHROPIC_REQUEST, **patch})
    assert info.value.param == param
    assert param in info.value.message


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m", "max_tokens": 5}, "messages"),
    ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"model": "m", "max_tokens": "5", "messages": [{"role": "user", "content": "x"}]},
     "max_tokens"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
     "messages[0].role"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": 7}]},
     "messages[0].content"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "text"}]}]}, "messages[0].content[0].text"),
    ({"model": "m", "max_tokens": 5, "stream": "yes",
      "messages": [{"role": "user", "content": "x"}]}, "stream"),
])
def test_front_validation(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as info:
        anthropic_to_canonical(body)
    assert not isinstance(info.value, TranslationError)
    assert info.value.param == param and info.value.status == 400


# ------------------------------------------------------------------ adapter request


def test_round_trip_anthropic_canonical_anthropic() -> None:
    back = canonical_to_anthropic(anthropic_to_canonical(ANTHROPIC_REQUEST), "claude-x")
    assert back["model"] == "claude-x" and back["max_tokens"] == 512
    assert back["system"] == ANTHROPIC_REQUEST["system"]  # its breakpoint with it
    assert back["stop_sequences"] == ["END"] and back["temperature"] == 0.5
    assert back["metadata"] == {"user_id": "user-42"}
    assert back["tools"] == [{"name": "get_weather", "input_schema": SCHEMA,
                              "description": "Weather for a city",
                              "cache_control": {"type": "ephemeral"}}]
    assert back["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    original = ANTHROPIC_REQUEST["messages"]
    assert back["messages"][0] == original[0]
    # the signed thinking block goes back first, as it came
    assert back["messages"][1] == {"role": "assistant", "content": original[1]["content"]}
    assert back["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1",
         "content": [{"type": "text", "text": "18C, sunny"}]},
        {"type": "text", "text": "Thanks. And tomorrow?"}]}


def test_adapter_merges_roles_and_collects_system() -> None:
    body = {"messages": [
        {"role": "system", "content": "A"},
        {"role": "user", "content": "one"},
        {"role": "user", "content": [{"type": "text", "text": "two"}]},
        {"role": "developer", "content": [{"type": "text", "text": "B"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r1"},
        {"role": "tool", "tool_call_id": "c2", "content": "r2"},
        {"role": "user", "content": "go on"},
        {"role": "assistant", "content": "Sure, "},
    ], "stop": "X", "temperature": 1.6, "top_p": 0.9, "max_tokens": 77}
    out = canonical_to_anthropic(body, "claude-x")
    assert out["system"] == [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user", "assistant"]
    assert out["messages"][0]["content"] == [{"type": "text", "text": "one"},
                                             {"type": "text", "text": "two"}]
    assert [b["input"] for b in out["messages"][1]["content"]] == [{}, {}]
    assert out["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": [{"type": "text", "text": "r1"}]},
        {"type": "tool_result", "tool_use_id": "c2", "content": [{"type": "text", "text": "r2"}]},
        {"type": "text", "text": "go on"}]
    assert out["messages"][3]["content"] == [{"type": "text", "text": "Sure,"}]  # prefill
    assert out["stop_sequences"] == ["X"]
    assert out["temperature"] == 1.0 and "top_p" not in out  # clamped; not both
    assert out["max_tokens"] == 77


def test_adapter_max_tokens_default_and_cap() -> None:
    body = {"messages": [{"role": "user", "content": "x"}]}
    assert canonical_to_anthropic(body, "m")["max_tokens"] == 4096
    assert canonical_to_anthropic(body, "m", 900)["max_tokens"] == 900
    big = {**body, "max_completion_tokens": 50_000}
    assert canonical_to_anthropic(big, "m", 900, max_output_tokens=8000)["max_tokens"] == 8000


def test_adapter_reasoning_effort_to_thinking() -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "medium",
            "max_tokens": 20000, "temperature": 0.2}
    out = canonical_to_anthropic(body, "m")
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert "temperature" not in out  # Anthropic refuses temperature with thinking
    small = canonical_to_anthropic({**body, "max_tokens": 500}, "m")
    assert "thinking" not in small  # no room for the 1024-token minimum budget
    assert canonical_to_anthropic({**body, "reasoning_effort": "high", "max_tokens": 5000},
                                  "m")["thinking"]["budget_tokens"] == 4999
    mid_loop = {**body, "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "ok"}]}
    assert "thinking" not in canonical_to_anthropic(mid_loop, "m")


@pytest.mark.parametrize(("patch", "param"), [
    ({"n": 3}, "n"),
    ({"response_format": {"type": "json_object"}}, "response_format.type"),
    ({"logprobs": True}, "logprobs"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"some_vendor_flag": 1}, "some_vendor_flag"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/bmp;base64,Qk0="}}]}]}, "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "ftp://x/y.png"}}]}]}, "messages[0].content[0].image_url.url"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio",
                                                 "input_audio": {}}]}]},
     "messages[0].content[0].type"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
])
def test_adapter_untranslatable(patch: dict[str, Any], param: str) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], **patch}
    with pytest.raises(TranslationError) as info:
        canonical_to_anthropic(body, "m")
    assert info.value.param == param


def test_adapter_accepts_harmless_defaults() -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "n": 1, "seed": 3,
            "presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": False,
            "response_format": {"type": "text"}, "stream_options": {"include_usage": True},
            "parallel_tool_calls": True}
    out = canonical_to_anthropic(body, "m")
    assert set(out) == {"model", "max_tokens", "messages"}


def test_data_url_helpers() -> None:
    image = parse_data_url("data:image/svg+xml,%3Csvg%2F%3E", path="p")
    assert image.media_type == "image/svg+xml" and image.decoded() == b"<svg/>"
    with pytest.raises(TranslationError):
        parse_data_url("data:image/png;base64,@@@", path="p")


# ------------------------------------------------------------------ responses


def completion(message: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {"id": "chatcmpl-abc", "object": "chat.completion", "model": "gpt-x",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25,
                      "prompt_tokens_details": {"cached_tokens": 8}}}


@pytest.mark.parametrize(("finish", "stop"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
    ("content_filter", "refusal"), (None, "end_turn")])
def test_canonical_response_to_anthropic_stop_reasons(finish: str | None, stop: str) -> None:
    out = canonical_to_anthropic_response(
        completion({"role": "assistant", "content": "hi"}, finish), "openai/gpt-x")
    assert out["stop_reason"] == stop
    assert out["model"] == "openai/gpt-x" and out["id"] == "msg_abc"
    assert out["type"] == "message" and out["role"] == "assistant"
    assert out["usage"] == {"input_tokens": 12, "output_tokens": 5,
                            "cache_read_input_tokens": 8}


def test_canonical_response_tool_calls_to_anthropic() -> None:
    out = canonical_to_anthropic_response(completion({
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        "tool_calls"), "m")
    assert out["content"] == [{"type": "tool_use", "id": "call_1", "name": "get_weather",
                               "input": {"city": "Oslo"}}]
    assert out["stop_reason"] == "tool_use"


def test_anthropic_response_to_canonical() -> None:
    out = anthropic_to_canonical_response({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [{"type": "thinking", "thinking": "so", "signature": "s"},
                    {"type": "text", "text": "Checking"},
                    {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {"a": [1]}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 4,
                                             "cache_creation_input_tokens": 2}})
    choice = out["choices"][0]
    assert out["object"] == "chat.completion" and out["model"] == "claude-x"
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking"
    assert choice["message"]["reasoning_content"] == "so"
    assert choice["message"]["tool_calls"] == [{"id": "toolu_9", "type": "function",
                                                "function": {"name": "f",
                                                             "arguments": '{"a":[1]}'}}]
    assert out["usage"] == {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16,
                            "cache_creation_input_tokens": 2}
    back = canonical_to_anthropic_response(out, "m")
    # the thinking comes back as a thinking block, with its signature
    assert [b["type"] for b in back["content"]] == ["thinking", "text", "tool_use"]
    assert back["content"][0] == {"type": "thinking", "thinking": "so", "signature": "s"}
    assert back["content"][2]["input"] == {"a": [1]}


def test_error_body_shapes() -> None:
    assert anthropic_error_body("overloaded_error", "Overloaded") == {
        "type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert anthropic_error_type(FailureReason.RATE_LIMIT) == "rate_limit_error"
    assert anthropic_error_type(FailureReason.SERVER_ERROR) == "api_error"


# ------------------------------------------------------------------ streams


def parse_sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        data = orjson.loads(data_line[6:])
        assert data["type"] == name_line[7:]
        events.append((name_line[7:], data))
    return events


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


CANONICAL_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Let me "}),
    chunk({"content": "look."}),
    chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Rome"}'}}]}),
    chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                           "function": {"name": "get_time", "arguments": "{}"}}]}),
    chunk({}, "tool_calls"),
    {"id": "c", "object": "chat.completion.chunk", "choices": [],
     "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}},
]


def test_stream_encoder_text_and_tool_calls() -> None:
    encoder = AnthropicStreamEncoder("openai/gpt-x", message_id="msg_t")
    raw = b"".join(encoder.feed(c) for c in CANONICAL_STREAM) + encoder.finish()
    events = parse_sse(raw)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    assert events[0][1]["message"]["id"] == "msg_t"
    assert events[0][1]["message"]["model"] == "openai/gpt-x"
    assert events[5][1]["content_block"] == {"type": "tool_use", "id": "call_a",
                                             "name": "get_weather", "input": {}}
    # a tool call goes out whole once complete (Anthropic blocks cannot interleave)
    assert events[6][1]["delta"] == {"type": "input_json_delta",
                                     "partial_json": '{"city":"Rome"}'}
    assert [e[1]["index"] for e in events[8:11]] == [2, 2, 2]
    assert events[11][1]["delta"]["stop_reason"] == "tool_use"
    assert events[11][1]["usage"] == {"input_tokens": 30, "output_tokens": 9}
    assert encoder.finish() == b"" and encoder.done


def test_stream_encoder_without_finish_reason_and_errors() -> None:
    encoder = AnthropicStreamEncoder("m")
    raw = encoder.feed(chunk({"content": "partial"})) + encoder.finish()
    events = parse_sse(raw)
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    failing = AnthropicStreamEncoder("m")
    raw = failing.feed(chunk({"content": "a"})) + failing.error_event("overloaded_error", "gone")
    name, data = parse_sse(raw)[-1]
    assert name == "error" and data["error"] == {"type": "overloaded_error", "message": "gone"}
    assert failing.finish() == b"" and failing.feed(chunk({"content": "late"})) == b""


def test_stream_round_trip_through_anthropic_sse() -> None:
    encoder = AnthropicStreamEncoder("m")
    raw = b"".join(encoder.feed(c) for c in CANONICAL_STREAM) + encoder.finish()
    decoder = AnthropicStreamDecoder("m", include_usage=True)
    chunks = [c for name, data in parse_sse(raw) for c in decoder.feed(name, data)]
    assert decoder.stopped and decoder.content_started
    usage = chunks.pop()  # include_usage: OpenAI's last chunk, no choices, just usage
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("content") or "" for d in deltas) == "Let me look."
    calls = [tc for d in deltas for tc in d.get("tool_calls") or []]
    by_index: dict[int, str] = {}
    for tc in calls:
        by_index[tc["index"]] = by_index.get(tc["index"], "") + tc["function"]["arguments"]
    assert by_index == {0: '{"city":"Rome"}', 1: "{}"}
    assert [tc["id"] for tc in calls if "id" in tc] == ["call_a", "call_b"]
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == "tool_calls"
    assert "usage" not in final


def test_stream_decoder_thinking_and_ignored_events() -> None:
    decoder = AnthropicStreamDecoder("m", include_usage=True)
    assert decoder.feed("ping", {"type": "ping"}) == []
    decoder.feed("message_start", {"type": "message_start", "message": {
        "id": "msg_z", "usage": {"input_tokens": 5, "output_tokens": 1}}})
    assert not decoder.content_started
    decoder.feed("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "thinking", "thinking": ""}})
    [thinking] = decoder.feed("content_block_delta", {
        "type": "content_block_delta", "index": 0,
        "delta": {"type": "thinking_delta", "thinking": "hmm"}})
    assert thinking["choices"][0]["delta"] == {"reasoning_content": "hmm"}
    assert thinking["id"] == "chatcmpl-msg_z"
    [signed] = decoder.feed("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                    "delta": {"type": "signature_delta",
                                                              "signature": "x"}})
    assert signed["choices"][0]["delta"] == {"thinking_blocks": [
        {"type": "thinking", "thinking": "", "signature": "x"}]}
    [end] = decoder.feed("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": "max_tokens"},
                                           "usage": {"output_tokens": 3}})
    assert end["choices"][0]["finish_reason"] == "length"
    [usage] = decoder.feed("message_stop", {"type": "message_stop"})
    assert usage["usage"]["prompt_tokens"] == 5 and usage["usage"]["completion_tokens"] == 3


def test_stream_encoder_interleaved_and_index_less_tool_calls() -> None:
    def call(index: int | None, **fn: str) -> dict:
        c: dict = {"function": fn}
        if index is not None:
            c["index"] = index
        if "name" in fn:
            c["id"] = f"call_{fn['name']}"
        return chunk({"tool_calls": [c]})

    encoder = AnthropicStreamEncoder("m")
    stream = [call(0, name="f", arguments=""), call(1, name="g", arguments=""),
              call(0, arguments='{"x":'), call(1, arguments='{"y":2}'), call(0, arguments="1}"),
              chunk({}, "tool_calls")]
    raw = b"".join(encoder.feed(c) for c in stream) + encoder.finish()
    starts = [d for n, d in parse_sse(raw) if n == "content_block_start"]
    args = [d["delta"]["partial_json"] for n, d in parse_sse(raw) if n == "content_block_delta"]
    assert [s["content_block"]["name"] for s in starts] == ["f", "g"]
    assert args == ['{"x":1}', '{"y":2}']  # nothing lost to interleaving

    encoder = AnthropicStreamEncoder("m")  # an upstream that omits `index`
    stream = [call(None, name="f", arguments='{"a":1}'), call(None, name="g", arguments="{}")]
    raw = b"".join(encoder.feed(c) for c in stream) + encoder.finish()
    starts = [d for n, d in parse_sse(raw) if n == "content_block_start"]
    assert [s["content_block"]["name"] for s in starts] == ["f", "g"]


def test_message_ids_and_tool_choice_none_with_parallel_flag() -> None:
    from failoverd.translate.anthropic_response import message_id

    assert message_id("chatcmpl-msg_01Fake") == "msg_01Fake"  # no msg_msg_
    assert message_id("chatcmpl-abc") == "msg_abc"
    out = canonical_to_anthropic({
        "messages": [{"role": "user", "content": "hi"}], "tool_choice": "none",
        "parallel_tool_calls": False,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "m")
    assert out["tool_choice"] == {"type": "none"}


def test_reasoning_reaches_anthropic_clients_as_thinking() -> None:
    answer = canonical_to_anthropic_response({"choices": [{"message": {
        "role": "assistant", "reasoning_content": "let me think", "content": "42"},
        "finish_reason": "stop"}]}, "m")
    assert [b["type"] for b in answer["content"]] == ["thinking", "text"]
    assert answer["content"][0]["thinking"] == "let me think"
    encoder = AnthropicStreamEncoder("m")
    raw = (encoder.feed(chunk({"reasoning_content": "hmm"}))
           + encoder.feed(chunk({"reasoning_content": " ok"}))
           + encoder.feed(chunk({"content": "42"})) + encoder.finish())
    events = parse_sse(raw)
    starts = [d["content_block"]["type"] for n, d in events if n == "content_block_start"]
    assert starts == ["thinking", "text"]
    thinking = "".join(d["delta"].get("thinking", "") for n, d in events
                       if n == "content_block_delta")
    assert thinking == "hmm ok"


def test_adaptive_thinking_is_a_medium_effort() -> None:
    canonical = anthropic_to_canonical({**ANTHROPIC_REQUEST, "thinking": {"type": "adaptive"}})
    assert canonical["reasoning_effort"] == "medium"
