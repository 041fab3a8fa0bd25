"""Canonical (OpenAI Chat Completions) <-> Ollama native /api/chat translation."""

from __future__ import annotations

from typing import Any

import pytest

from failoverd.errors import RequestError, TranslationError
from failoverd.translate import ollama as o

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/"
       "PchI7wAAAABJRU5ErkJggg==")
TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}


def req(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages), **extra}


# ---------------------------------------------------------------- requests


def test_system_multi_turn_and_options() -> None:
    out = o.to_request(req(
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "developer", "content": "No emoji."},
        {"role": "user", "content": [{"type": "text", "text": "Line 1"},
                                     {"type": "text", "text": "Line 2"}]},
    ), "qwen2.5:7b", stream=True, context_window=32768)
    out2 = o.to_request(req({"role": "user", "content": "x"}, max_tokens=20, temperature=0.1,
                            top_p=0.8, stop=["a", "b"], seed=3, user="u"),
                        "qwen2.5:7b", stream=False)
    assert out == {"model": "qwen2.5:7b", "stream": True, "options": {"num_ctx": 32768},
                   "truncate": False,
                   "messages": [
                       {"role": "system", "content": "Be brief."},
                       {"role": "user", "content": "Hi"},
                       {"role": "assistant", "content": "Hello!"},
                       {"role": "system", "content": "No emoji."},
                       {"role": "user", "content": "Line 1\nLine 2"}]}
    assert out2["stream"] is False
    assert out2["options"] == {"num_predict": 20, "temperature": 0.1, "top_p": 0.8,
                               "stop": ["a", "b"], "seed": 3}


def test_images_become_bare_base64() -> None:
    out = o.to_request(req({"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": f"data:image/png;base64,{PNG}"},
    ]}), "llava", stream=False)
    assert out["messages"] == [{"role": "user", "content": "What is this?",
                                "images": [PNG, PNG]}]


def test_http_image_is_a_translation_error() -> None:
    with pytest.raises(TranslationError) as err:
        o.to_request(req({"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}),
            "llava", stream=False)
    assert err.value.param == "messages[0].content[0].image_url.url"
    assert "base64" in err.value.message


def test_tools_calls_and_results() -> None:
    out = o.to_request(req(
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_0", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temp": 21}'},
        tools=[TOOL], tool_choice="auto"), "qwen2.5:7b", stream=False)
    assert out["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather",
        "parameters": TOOL["function"]["parameters"]}}]
    assert out["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    assert out["messages"][2] == {"role": "tool", "content": '{"temp": 21}',
                                  "tool_name": "get_weather"}


def test_tool_choice_none_sends_no_tools() -> None:
    out = o.to_request(req({"role": "user", "content": "x"}, tools=[TOOL], tool_choice="none"),
                       "m", stream=False)
    assert "tools" not in out


@pytest.mark.parametrize(("fmt", "expected"), [
    ({"type": "json_object"}, "json"),
    ({"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
     {"type": "object"}),
])
def test_response_format(fmt: dict[str, Any], expected: Any) -> None:
    out = o.to_request(req({"role": "user", "content": "x"}, response_format=fmt), "m",
                       stream=False)
    assert out["format"] == expected


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 2}, "n"),
    ({"logit_bias": {"1": 5}}, "logit_bias"),
    ({"logprobs": True}, "logprobs"),
    ({"tools": [TOOL], "tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "custom", "custom": {}}]}, "tools[0]"),
    ({"response_format": {"type": "grammar"}}, "response_format"),
])
def test_untranslatable_keys(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as err:
        o.to_request(req({"role": "user", "content": "x"}, **extra), "m", stream=False)
    assert err.value.param == param
    assert "Ollama" in err.value.message


@pytest.mark.parametrize(("message", "param"), [
    ({"role": "function", "content": "x"}, "messages[0].role"),
    ({"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
     "messages[0].content[0]"),
    ({"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "f", "arguments": "not json"}}]}, "messages[0].tool_calls[0].function.arguments"),
])
def test_untranslatable_messages(message: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as err:
        o.to_request(req(message), "m", stream=False)
    assert err.value.param == param


def test_malformed_content_is_a_request_error() -> None:
    with pytest.raises(RequestError) as err:
        o.to_request(req({"role": "user", "content": 5}), "m", stream=False)
    assert err.value.param == "messages[0].content"


# ---------------------------------------------------------------- responses


def final(message: dict[str, Any], reason: str = "stop") -> dict[str, Any]:
    return {"model": "qwen2.5:7b", "message": {"role": "assistant", **message}, "done": True,
            "done_reason": reason, "prompt_eval_count": 26, "eval_count": 7}


def test_text_completion_and_usage() -> None:
    out = o.to_completion(final({"content": "Hi there", "thinking": "hmm"}), "x", created=9)
    assert out["object"] == "chat.completion" and out["created"] == 9
    assert out["model"] == "qwen2.5:7b"
    assert out["choices"] == [{"index": 0, "logprobs": None, "finish_reason": "stop",
                               "message": {"role": "assistant", "content": "Hi there"}}]
    assert out["usage"] == {"prompt_tokens": 26, "completion_tokens": 7, "total_tokens": 33}


def test_tool_call_completion_arguments_become_strings() -> None:
    out = o.to_completion(final({"content": "", "tool_calls": [
        {"function": {"name": "a", "arguments": {"city": "Paris"}}},
        {"id": "ol_7", "function": {"name": "b", "arguments": {}}}]}), "m")
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function",
         "function": {"name": "a", "arguments": '{"city":"Paris"}'}},
        {"id": "ol_7", "type": "function", "function": {"name": "b", "arguments": "{}"}}]}


@pytest.mark.parametrize(("reason", "expected"), [("stop", "stop"), ("length", "length"),
                                                  ("load", "stop"), (None, "stop")])
def test_finish_reasons(reason: str | None, expected: str) -> None:
    assert o.finish_reason(reason, False) == expected


# ---------------------------------------------------------------- streaming


def piece(message: dict[str, Any]) -> dict[str, Any]:
    return {"model": "m", "message": {"role": "assistant", **message}, "done": False}


def test_stream_text_then_done_with_usage() -> None:
    t = o.StreamTranslator("m", created=1)
    chunks = t.feed(piece({"content": "Hel"})) + t.feed(piece({"content": "lo"}))
    assert not t.done
    chunks += t.feed(final({"content": ""}, "length"))
    assert t.done
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "Hel"}, {"content": "lo"}, {}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["total_tokens"] == 33
    assert len({c["id"] for c in chunks}) == 1


def test_stream_tool_calls_and_include_usage() -> None:
    t = o.StreamTranslator("m", include_usage=True)
    chunks = t.feed(piece({"content": "", "tool_calls": [
        {"function": {"name": "a", "arguments": {"x": 1}}}]}))
    chunks += t.feed(final({"content": ""}))
    assert chunks[0]["choices"][0]["delta"]["tool_calls"] == [
        {"index": 0, "id": "call_0", "type": "function",
         "function": {"name": "a", "arguments": '{"x":1}'}}]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert "usage" not in chunks[-2]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 26
