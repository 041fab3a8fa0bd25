"""Canonical (OpenAI Chat Completions) <-> Gemini generateContent translation."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from failoverd.errors import RequestError, TranslationError
from failoverd.translate import gemini as g

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/"
       "PchI7wAAAABJRU5ErkJggg==")

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
                   "additionalProperties": False,
                   "properties": {"city": {"type": "string", "format": "uri"},
                                  "unit": {"type": ["string", "null"],
                                           "enum": ["c", "f"]}},
                   "required": ["city", "ghost"]}}}


def req(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages), **extra}


# ---------------------------------------------------------------- requests


def test_system_and_multi_turn() -> None:
    out = g.to_request(req(
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
    ))
    assert out["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "No emoji."}]}
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "Hi"}]},
        {"role": "model", "parts": [{"text": "Hello!"}]},
        {"role": "user", "parts": [{"text": "Weather?"}]},
    ]
    assert "generationConfig" not in out


def test_only_a_system_prompt_becomes_the_user_turn() -> None:
    out = g.to_request(req({"role": "system", "content": "Say hi."}))
    assert out["contents"] == [{"role": "user", "parts": [{"text": "Say hi."}]}]
    assert "systemInstruction" not in out


def test_generation_config() -> None:
    out = g.to_request(req({"role": "user", "content": "x"}, max_completion_tokens=50,
                           max_tokens=10, temperature=0.2, top_p=0.9, stop="END", n=2, seed=7,
                           presence_penalty=0.1, frequency_penalty=0.3,
                           response_format={"type": "json_object"}, reasoning_effort="low",
                           user="u1", stream=True, stream_options={"include_usage": True}))
    assert out["generationConfig"] == {
        "maxOutputTokens": 50, "temperature": 0.2, "topP": 0.9, "seed": 7,
        "presencePenalty": 0.1, "frequencyPenalty": 0.3, "stopSequences": ["END"],
        "candidateCount": 2, "responseMimeType": "application/json",
        "thinkingConfig": {"thinkingBudget": 1024}}


def test_json_schema_response_format_is_cleaned() -> None:
    schema = {"type": "object", "additionalProperties": False, "$defs": {
        "Point": {"type": "object", "properties": {"x": {"type": "number"}}}},
        "properties": {"p": {"$ref": "#/$defs/Point"}, "kind": {"const": "pt"},
                       "tags": {"type": "array", "items": {"type": "string"},
                                "uniqueItems": True},
                       "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}},
        "required": ["p"]}
    out = g.to_request(req({"role": "user", "content": "x"}, response_format={
        "type": "json_schema", "json_schema": {"name": "pt", "strict": True, "schema": schema}}))
    assert out["generationConfig"]["responseMimeType"] == "application/json"
    assert out["generationConfig"]["responseSchema"] == {
        "type": "object", "required": ["p"], "properties": {
            "p": {"type": "object", "properties": {"x": {"type": "number"}}},
            "kind": {"enum": ["pt"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "note": {"type": "string", "nullable": True}}}


def test_recursive_schema_is_a_translation_error() -> None:
    schema = {"$defs": {"Node": {"type": "object", "properties": {
        "child": {"$ref": "#/$defs/Node"}}}}, "$ref": "#/$defs/Node"}
    with pytest.raises(TranslationError) as err:
        g.to_request(req({"role": "user", "content": "x"}, response_format={
            "type": "json_schema", "json_schema": {"name": "n", "schema": schema}}))
    assert "recursive" in err.value.message
    assert err.value.param is not None and err.value.param.startswith(
        "response_format.json_schema.schema")


def test_images_base64_and_url() -> None:
    out = g.to_request(req({"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.JPG?s=1"}},
    ]}))
    assert out["contents"][0]["parts"] == [
        {"text": "What is this?"},
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.JPG?s=1"}},
    ]


def test_url_image_without_extension_is_a_translation_error() -> None:
    with pytest.raises(TranslationError) as err:
        g.to_request(req({"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/render?id=3"}}]}))
    assert err.value.param == "messages[0].content[0].image_url.url"


def test_tool_definitions_and_choice() -> None:
    out = g.to_request(req({"role": "user", "content": "x"}, tools=[
        WEATHER_TOOL,
        {"type": "function", "function": {"name": "now", "parameters": {
            "type": "object", "properties": {}}}},
    ], tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    assert out["tools"] == [{"functionDeclarations": [
        {"name": "get_weather", "description": "Current weather", "parameters": {
            "type": "object", "required": ["city"], "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "nullable": True, "enum": ["c", "f"]}}}},
        {"name": "now"},
    ]}]
    assert out["toolConfig"] == {"functionCallingConfig": {
        "mode": "ANY", "allowedFunctionNames": ["get_weather"]}}


@pytest.mark.parametrize(("choice", "mode"), [("auto", "AUTO"), ("none", "NONE"),
                                              ("required", "ANY")])
def test_tool_choice_modes(choice: str, mode: str) -> None:
    out = g.to_request(req({"role": "user", "content": "x"}, tools=[WEATHER_TOOL],
                           tool_choice=choice))
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": mode}}


def test_tool_calls_and_results_round_trip_names() -> None:
    out = g.to_request(req(
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_0", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_1", "type": "function",
             "function": {"name": "get_time", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
        {"role": "tool", "tool_call_id": "call_0", "content": '{"temp": 21}'},
        tools=[WEATHER_TOOL]))
    assert out["contents"][1] == {"role": "model", "parts": [
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
         "thoughtSignature": g.DUMMY_THOUGHT_SIGNATURE},
        {"functionCall": {"name": "get_time", "args": {"city": "Rome"}}}]}
    # consecutive tool results share one user turn, names recovered from the call ids
    assert out["contents"][2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_time", "response": {"result": "12:00"}}},
        {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}}]}


def test_tool_result_without_matching_call_names_the_field() -> None:
    with pytest.raises(TranslationError) as err:
        g.to_request(req({"role": "user", "content": "x"},
                         {"role": "tool", "tool_call_id": "call_9", "content": "42"}))
    assert err.value.param == "messages[1].tool_call_id"
    assert "call_9" in err.value.message


@pytest.mark.parametrize(("extra", "param"), [
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"logprobs": True}, "logprobs"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "custom"}}, "tool_choice"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
])
def test_untranslatable_request_keys(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as err:
        g.to_request(req({"role": "user", "content": "x"}, **extra))
    assert err.value.param == param
    assert "Gemini" in err.value.message


@pytest.mark.parametrize(("message", "param"), [
    ({"role": "function", "name": "f", "content": "x"}, "messages[0].role"),
    ({"role": "user", "content": [{"type": "input_video"}]}, "messages[0].content[0]"),
    ({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
     "messages[0].content[0]"),
    ({"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "f", "arguments": "[1, 2]"}}]}, "messages[0].tool_calls[0].function.arguments"),
])
def test_untranslatable_messages(message: dict[str, Any], param: str) -> None:
    with pytest.raises(TranslationError) as err:
        g.to_request(req(message))
    assert err.value.param == param


def test_malformed_messages_are_request_errors() -> None:
    with pytest.raises(RequestError) as err:
        g.to_request({"messages": []})
    assert err.value.param == "messages"


# ---------------------------------------------------------------- responses


def gem(parts: list[dict[str, Any]] | None, finish: str | None = "STOP",
        **extra: Any) -> dict[str, Any]:
    cand: dict[str, Any] = {"index": 0}
    if parts is not None:
        cand["content"] = {"role": "model", "parts": parts}
    if finish:
        cand["finishReason"] = finish
    return {"candidates": [cand], "modelVersion": "gemini-2.5-flash", "responseId": "r1",
            **extra}


def test_text_response_and_usage() -> None:
    out = g.to_completion(gem([{"text": "Hel"}, {"text": "lo"}, {"text": "hmm", "thought": True}],
                              usageMetadata={"promptTokenCount": 10, "candidatesTokenCount": 4,
                                             "thoughtsTokenCount": 3, "totalTokenCount": 17,
                                             "cachedContentTokenCount": 2}),
                          "gemini-x", created=123)
    assert out == {
        "id": "chatcmpl-r1", "object": "chat.completion", "created": 123,
        "model": "gemini-2.5-flash",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17,
                  "completion_tokens_details": {"reasoning_tokens": 3},
                  "prompt_tokens_details": {"cached_tokens": 2}}}


def test_function_call_response_gets_ids() -> None:
    out = g.to_completion(gem([{"functionCall": {"name": "a", "args": {"x": 1}}},
                               {"functionCall": {"name": "b", "args": {}}}]), "m")
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "call_0", "type": "function", "function": {"name": "a", "arguments": '{"x":1}'}},
        {"id": "call_1", "type": "function", "function": {"name": "b", "arguments": "{}"}}]


@pytest.mark.parametrize(("gemini", "openai"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
    ("RECITATION", "content_filter"), ("BLOCKLIST", "content_filter"),
    ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
    ("MALFORMED_FUNCTION_CALL", "stop"), ("OTHER", "stop"),
])
def test_finish_reasons(gemini: str, openai: str) -> None:
    assert g.to_completion(gem(None, gemini), "m")["choices"][0]["finish_reason"] == openai


def test_blocked_prompt() -> None:
    assert g.blocked({"promptFeedback": {"blockReason": "SAFETY"}}) == \
        "prompt blocked by Gemini: SAFETY"
    assert g.blocked(gem([{"text": "ok"}])) is None


# ---------------------------------------------------------------- streaming


def test_stream_text_deltas_and_finish_with_usage() -> None:
    t = g.StreamTranslator("gemini-x", created=5)
    usage = {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}
    first = t.feed(gem([{"text": "Hel"}], None, usageMetadata=usage))
    last = t.feed(gem([{"text": "lo"}], "STOP", usageMetadata=usage))
    assert not t.finish()
    assert t.complete
    deltas = [c["choices"][0]["delta"] for c in first + last]
    assert deltas == [{"role": "assistant", "content": "Hel"}, {"content": "lo"}, {}]
    assert last[-1]["choices"][0]["finish_reason"] == "stop"
    assert last[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert {c["id"] for c in first + last} == {"chatcmpl-r1"}
    assert all(c["object"] == "chat.completion.chunk" for c in first + last)


def test_stream_tool_calls_are_whole_deltas() -> None:
    t = g.StreamTranslator("m")
    a = t.feed(gem([{"functionCall": {"name": "a", "args": {"x": 1}}}], None))
    b = t.feed(gem([{"functionCall": {"name": "b", "args": {"y": 2}}}], "STOP"))
    assert a[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "tool_calls": [
        {"index": 0, "id": "call_0", "type": "function",
         "function": {"name": "a", "arguments": '{"x":1}'}}]}
    assert b[0]["choices"][0]["delta"]["tool_calls"][0]["index"] == 1
    assert b[0]["choices"][0]["delta"]["tool_calls"][0]["id"] == "call_1"
    assert b[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_stream_include_usage_sends_a_final_usage_chunk() -> None:
    t = g.StreamTranslator("m", include_usage=True)
    chunks = t.feed(gem([{"text": "x"}], "MAX_TOKENS", usageMetadata={
        "promptTokenCount": 1, "candidatesTokenCount": 1, "totalTokenCount": 2}))
    assert "usage" not in chunks[-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    (tail,) = t.finish()
    assert tail["choices"] == [] and tail["usage"]["total_tokens"] == 2


def test_stream_without_finish_is_incomplete() -> None:
    t = g.StreamTranslator("m", expected=2)
    t.feed(gem([{"text": "x"}], "STOP"))
    assert not t.complete  # n=2 asked for, one candidate finished


def test_request_is_json_serialisable() -> None:
    out = g.to_request(req({"role": "user", "content": "x"}, tools=[WEATHER_TOOL]))
    assert orjson.loads(orjson.dumps(out)) == out
