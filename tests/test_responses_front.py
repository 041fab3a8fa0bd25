"""POST /v1/responses: the OpenAI Responses API served statelessly by every provider kind.

End to end with the official openai SDK (`client.responses.create`, `responses.stream()`)
over the Unix socket, a real daemon and fake upstreams on 127.0.0.1; then the translation
itself (failoverd.translate.responses_*) as pure functions.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import orjson
import pytest

from failoverd.api.fronts import RESPONSES
from failoverd.errors import RequestError, TranslationError
from failoverd.providers.base import Completion
from failoverd.translate.responses_front import responses_to_canonical
from failoverd.translate.responses_response import canonical_to_responses, response_echo
from failoverd.translate.responses_stream import ResponsesStreamEncoder
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import USAGE, FakeOpenAI
from tests.helpers import providers, tcp_listener
from tests.test_fastpath import paths

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}, "strict": False}
MODELS = ["oai/gpt", "ant/claude"]
ANT_REPLY = "Hello from the fake Anthropic"
OAI_REPLY = "Hello from the fake upstream"


def config(oai: FakeOpenAI, ant: FakeAnthropic, head: str = "") -> str:
    return f"""{head}
{providers(oai=oai.url, ant=("anthropic", ant.url))}
[models."oai/gpt"]
provider = "oai"
capabilities = ["tools", "vision", "json"]
[models."ant/claude"]
provider = "ant"
capabilities = ["tools", "vision", "json", "reasoning"]
[chains.ant_first]
models = ["ant/claude", "oai/gpt"]
[routing]
primary = "oai/gpt"
fallbacks = ["ant/claude"]
retry_after_max = 0.2
when_all_unavailable = "fail"
[probes]
kind = "none"
"""


@pytest.fixture
async def rig(fake_openai: Any, fake_anthropic: Any, start_daemon: Any) -> Any:
    oai = await fake_openai()
    ant = await fake_anthropic()
    d = await start_daemon(config(oai, ant))
    return oai, ant, d


def reply_of(model: str) -> str:
    return OAI_REPLY if model == "oai/gpt" else ANT_REPLY


def sent(oai: FakeOpenAI, ant: FakeAnthropic, model: str) -> dict[str, Any]:
    """The last request the upstream serving `model` got."""
    log = oai.chat_requests() if model == "oai/gpt" else ant.message_requests()
    body: dict[str, Any] = log[-1].body
    return body


# ------------------------------------------------------------------ end to end

@pytest.mark.parametrize("model", MODELS)
async def test_plain_text_by_either_kind(rig: Any, model: str) -> None:
    oai, ant, d = rig
    raw = await d.openai.responses.with_raw_response.create(
        model=model, input="hi", instructions="be terse", metadata={"app": "t"},
        user="u-1", store=True, temperature=0.5, max_output_tokens=100)
    assert raw.headers["x-failoverd-model"] == model
    r = raw.parse()
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status == "completed" and r.model == model
    assert r.output_text == reply_of(model)
    [item] = r.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert r.instructions == "be terse" and r.metadata == {"app": "t"}
    assert r.temperature == 0.5 and r.max_output_tokens == 100
    assert r.store is False  # nothing is kept: no response can be retrieved later
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    body = sent(oai, ant, model)
    assert "store" not in body
    if model == "oai/gpt":
        assert "metadata" not in body
        assert body["messages"] == [{"role": "system", "content": "be terse"},
                                    {"role": "user", "content": "hi"}]
        assert body["max_tokens"] == 100 and body["user"] == "u-1"
    else:
        assert body["system"][0]["text"] == "be terse"
        assert body["max_tokens"] == 100 and body["metadata"] == {"user_id": "u-1"}


async def test_usage_is_in_the_responses_shape(rig: Any) -> None:
    oai, ant, d = rig
    r = await d.openai.responses.create(model="oai/gpt", input="hi")
    assert r.usage is not None
    assert r.usage.model_dump(exclude_none=True) == {
        "input_tokens": USAGE["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": USAGE["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": USAGE["total_tokens"]}
    stream = await d.openai.responses.create(model="oai/gpt", input="hi", stream=True)
    final = [e async for e in stream][-1]
    assert final.type == "response.completed"
    assert final.response.usage is not None
    assert final.response.usage.input_tokens == USAGE["prompt_tokens"]
    assert final.response.usage.output_tokens == USAGE["completion_tokens"]


@pytest.mark.parametrize("model", MODELS)
async def test_streamed_text_by_either_kind(rig: Any, model: str) -> None:
    oai, ant, d = rig
    stream = await d.openai.responses.create(model=model, input="hi", stream=True)
    events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert kinds[:5] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added",
                         "response.output_text.delta"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == reply_of(model)
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == text
    completed = events[-1].response
    assert completed.status == "completed" and completed.model == model
    assert completed.output_text == text and completed.id == events[0].response.id
    assert completed.usage is not None and completed.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
async def test_function_call_round_trip_by_either_kind(rig: Any, model: str) -> None:
    oai, ant, d = rig
    first = await d.openai.responses.create(model=model, input="weather in Paris?",
                                            tools=[WEATHER], tool_choice="auto")
    calls = [i for i in first.output if i.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather" and call.id is not None and call.id.startswith("fc_")
    assert json.loads(call.arguments)["city"] == "Paris"
    assert first.tools[0].name == "get_weather"  # the request's tools, repeated
    tools = sent(oai, ant, model)["tools"]
    if model == "oai/gpt":
        assert tools == [{"type": "function", "function": {
            "name": "get_weather", "description": "Weather for a city",
            "parameters": WEATHER["parameters"], "strict": False}}]
    else:
        assert tools[0]["name"] == "get_weather"
        assert tools[0]["input_schema"] == WEATHER["parameters"]
    # the next turn: the history as the SDK keeps it, then the call's output
    history: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    history += [item.model_dump(exclude_none=True) for item in first.output]
    history.append({"type": "function_call_output", "call_id": call.call_id,
                    "output": "sunny, 21 C"})
    second = await d.openai.responses.create(model=model, input=history, tools=[WEATHER])
    body = sent(oai, ant, model)
    if model == "oai/gpt":
        assert second.output_text == OAI_REPLY
        assistant, result = body["messages"][-2:]
        assert assistant["tool_calls"][0]["id"] == call.call_id
        assert result == {"role": "tool", "tool_call_id": call.call_id,
                          "content": "sunny, 21 C"}
    else:
        assert second.status == "completed"
        assistant, result = body["messages"][-2:]
        assert [b["type"] for b in assistant["content"]][-1] == "tool_use"
        assert result["content"][0]["type"] == "tool_result"
        assert result["content"][0]["tool_use_id"] == call.call_id
        assert result["content"][0]["content"] in ("sunny, 21 C", [
            {"type": "text", "text": "sunny, 21 C"}])


@pytest.mark.parametrize("model", MODELS)
async def test_streamed_function_call_by_either_kind(rig: Any, model: str) -> None:
    oai, ant, d = rig
    stream = await d.openai.responses.create(model=model, input="weather?", tools=[WEATHER],
                                             stream=True)
    events = [e async for e in stream]
    added = [e for e in events if e.type == "response.output_item.added"
             and e.item.type == "function_call"]
    assert len(added) == 1 and added[0].item.name == "get_weather"
    deltas = "".join(e.delta for e in events
                     if e.type == "response.function_call_arguments.delta")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == deltas and json.loads(deltas)["city"] == "Paris"
    final = events[-1].response
    [call] = [i for i in final.output if i.type == "function_call"]
    assert call.arguments == deltas and call.call_id == added[0].item.call_id
    assert [e.sequence_number for e in events] == list(range(len(events)))


@pytest.mark.parametrize("model", MODELS)
async def test_sdk_stream_helper_assembles_the_final_response(rig: Any, model: str) -> None:
    oai, ant, d = rig
    async with d.openai.responses.stream(model=model, input="hi") as stream:
        texts = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(texts) == final.output_text == reply_of(model)
    async with d.openai.responses.stream(model=model, input="weather?",
                                         tools=[WEATHER]) as stream:
        final = await stream.get_final_response()
    [call] = [i for i in final.output if i.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments)["city"] == "Paris"


async def test_streamed_failover_from_a_rate_limited_openai_to_anthropic(rig: Any) -> None:
    oai, ant, d = rig
    oai.push("rate_limit")
    raw = await d.openai.responses.with_raw_response.create(
        model="oai/gpt", input="hi", stream=True, user="agent-7")
    assert raw.headers["x-failoverd-failover"] == "oai/gpt>ant/claude:rate_limit"
    assert raw.headers["x-failoverd-model"] == "ant/claude"
    events = [e async for e in raw.parse()]
    assert events[-1].type == "response.completed"
    assert events[-1].response.model == "ant/claude"
    assert events[-1].response.output_text == ANT_REPLY
    # the session key is the request's user: it stays on the fallback
    resp = await d.http.get("/v1/sessions/agent-7")
    assert resp.status_code == 200 and "ant/claude" in resp.text


async def test_streamed_failover_from_an_overloaded_anthropic_to_openai(rig: Any) -> None:
    oai, ant, d = rig
    ant.default = "overloaded"
    raw = await d.openai.responses.with_raw_response.create(
        model="ant_first", input="hi", stream=True)
    assert raw.headers["x-failoverd-failover"] == "ant/claude>oai/gpt:overloaded"
    events = [e async for e in raw.parse()]
    assert events[-1].response.model == "oai/gpt"
    assert events[-1].response.output_text == OAI_REPLY


async def test_a_failure_after_the_first_chunk_is_an_error_then_response_failed(
        rig: Any) -> None:
    oai, ant, d = rig
    oai.push("stream_error")
    stream = await d.openai.responses.create(model="oai/gpt", input="hi", stream=True,
                                             extra_headers={"x-failoverd-no-fallback": "1"})
    events = [e async for e in stream]
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].code == "server_error"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None
    assert failed.output_text == "Hello from"  # what came before the failure
    assert [e.sequence_number for e in events] == list(range(len(events)))


@pytest.mark.parametrize(("fields", "param"), [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"conversation": "conv_123"}, "conversation"),
    ({"background": True}, "background"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [WEATHER, {"type": "file_search", "vector_store_ids": ["vs_1"]}]},
     "tools[1].type"),
    ({"tools": [{"type": "computer_use_preview", "display_width": 1, "display_height": 1,
                 "environment": "linux"}]}, "tools[0].type"),
    ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]},
     "tools[0].type"),
    ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "https://x"}]},
     "tools[0].type"),
    ({"tools": [{"type": "image_generation"}]}, "tools[0].type"),
    ({"tools": [{"type": "local_shell"}]}, "tools[0].type"),
    ({"tools": [{"type": "custom", "name": "grammar"}]}, "tools[0].type"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_file", "file_id": "file-1"}]}]}, "input[0].content[0].file_id"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_image", "file_id": "file-1"}]}]}, "input[0].content[0].file_id"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"include": ["message.output_text.logprobs"]}, "include[0]"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
])
async def test_what_a_stateless_proxy_cannot_serve_is_a_400_naming_it(
        rig: Any, fields: dict[str, Any], param: str) -> None:
    oai, ant, d = rig
    body = {"model": "oai/gpt", "input": "hi", **fields}
    resp = await d.http.post("/v1/responses", json=body)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == param and param in error["message"]
    assert error["type"] == "invalid_request_error"
    assert oai.requests == [] and ant.requests == []
    # the SDK raises its typed error with the param
    with pytest.raises(openai.BadRequestError) as info:
        await d.openai.responses.create(model="oai/gpt", input="hi", extra_body=fields)
    assert info.value.param == param
    r = await d.openai.responses.create(model="oai/gpt", input="hi")  # still serving
    assert r.output_text == OAI_REPLY


async def test_malformed_bodies_are_400s_naming_the_field(rig: Any) -> None:
    oai, ant, d = rig
    for body, param in (({"input": "hi"}, "model"), ({"model": "oai/gpt"}, "input"),
                        ({"model": "oai/gpt", "input": 3}, "input"),
                        ({"model": "oai/gpt", "input": "hi", "temperature": "hot"},
                         "temperature"),
                        ({"model": "oai/gpt", "input": "hi", "nonsense": 1}, "nonsense")):
        resp = await d.http.post("/v1/responses", json=body)
        assert resp.status_code == 400, body
        assert resp.json()["error"]["param"] == param
    assert oai.requests == []


async def test_the_route_is_on_the_fast_path_and_the_tcp_listener(
        fake_openai: Any, fake_anthropic: Any, start_daemon: Any, short_dir: Any) -> None:
    oai = await fake_openai()
    ant = await fake_anthropic()
    port, tcp = tcp_listener(short_dir)
    d = await start_daemon(config(oai, ant, head=tcp))
    before = paths(d)
    r = await d.openai.responses.create(model="ant/claude", input="hi")
    assert r.output_text == ANT_REPLY
    served, handed_off = paths(d)
    assert served == before[0] + 1 and handed_off == before[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        resp = await client.post("/v1/responses", json={"model": "oai/gpt", "input": "hi"},
                                 headers={"Authorization": "Bearer s3cret"})
        assert resp.status_code == 200
        assert resp.json()["output"][0]["content"][0]["text"] == OAI_REPLY
        resp = await client.post("/v1/responses", json={"model": "oai/gpt", "input": "hi"})
        assert resp.status_code == 401


# ------------------------------------------------------------------ translation

def test_input_items_become_canonical_messages() -> None:
    body = {"model": "m", "instructions": "sys", "input": [
        {"role": "developer", "content": "dev"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": "https://x/a.png", "detail": "high"},
            {"type": "input_file", "file_data": "data:application/pdf;base64,AAAA",
             "filename": "a.pdf"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "checking", "annotations": []}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"a\":1}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": [
            {"type": "input_text", "text": "two"}]},
    ]}
    out = responses_to_canonical(body)
    assert out["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "developer", "content": "dev"},
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "high"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,AAAA",
                                      "filename": "a.pdf"}}]},
        {"role": "assistant", "content": "checking", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g",
                                                          "arguments": "{\"a\":1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
    ]
    assert "stream" not in out


def test_settings_map_to_their_canonical_fields() -> None:
    out = responses_to_canonical({
        "model": "m", "input": "hi", "max_output_tokens": 50, "temperature": 0.2,
        "top_p": 0.9, "stream": True, "reasoning": {"effort": "low", "summary": "auto"},
        "text": {"format": {"type": "json_schema", "name": "o", "strict": True,
                            "schema": {"type": "object"}}, "verbosity": "low"},
        "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": False, "safety_identifier": "s", "prompt_cache_key": "k",
        "store": False, "include": ["reasoning.encrypted_content"], "metadata": {"a": "b"},
        "truncation": "disabled"})
    assert out == {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50,
        "temperature": 0.2, "top_p": 0.9, "safety_identifier": "s", "prompt_cache_key": "k",
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "parameters": WEATHER["parameters"],
            "description": "Weather for a city", "strict": False}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False, "verbosity": "low",
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "o", "schema": {"type": "object"}, "strict": True}},
        "reasoning_effort": "low", "stream": True, "stream_options": {"include_usage": True}}
    assert responses_to_canonical({"model": "m", "input": "x", "text": {
        "format": {"type": "json_object"}}})["response_format"] == {"type": "json_object"}
    assert "response_format" not in responses_to_canonical(
        {"model": "m", "input": "x", "text": {"format": {"type": "text"}}})


@pytest.mark.parametrize(("body", "param", "kind"), [
    ({"input": [{"role": "system", "content": [
        {"type": "input_image", "image_url": "https://x"}]}]}, "input[0].content[0].type",
     TranslationError),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", RequestError),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
     "input[0].call_id", RequestError),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type",
     TranslationError),
    ({"input": "x", "reasoning": {"effort": "max"}}, "reasoning.effort", RequestError),
    ({"input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type", RequestError),
    ({"input": "x", "background": True}, "background", TranslationError),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", RequestError),
])
def test_refusals_name_the_field(body: dict[str, Any], param: str,
                                 kind: type[Exception]) -> None:
    with pytest.raises(RequestError) as info:
        responses_to_canonical({"model": "m", **body})
    assert info.value.param == param and type(info.value) is kind


def test_null_and_off_values_are_accepted() -> None:
    out = responses_to_canonical({"model": "m", "input": "x", "previous_response_id": None,
                                  "background": False, "conversation": None, "tools": [],
                                  "include": [], "store": True})
    assert out == {"model": "m", "messages": [{"role": "user", "content": "x"}]}


def _completion(message: dict[str, Any], finish: str = "stop",
                usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000,
            "model": "up", "choices": [{"index": 0, "message": message,
                                        "finish_reason": finish}], "usage": usage}


def test_an_answer_with_reasoning_text_and_calls_becomes_output_items() -> None:
    usage = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30,
             "prompt_tokens_details": {"cached_tokens": 8},
             "completion_tokens_details": {"reasoning_tokens": 4}}
    r = canonical_to_responses(_completion({
        "role": "assistant", "content": "let me see", "reasoning_content": "think",
        "tool_calls": [{"id": "call_9", "type": "function",
                        "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
        "tool_calls", usage), "prov/model", response_echo({"tools": [WEATHER]}))
    assert [i["type"] for i in r["output"]] == ["reasoning", "message", "function_call"]
    assert r["output"][0]["summary"] == [{"type": "summary_text", "text": "think"}]
    assert r["output"][1]["content"][0]["text"] == "let me see"
    assert r["output"][2]["call_id"] == "call_9" and r["output"][2]["arguments"] == '{"x":1}'
    assert r["status"] == "completed" and r["model"] == "prov/model"
    assert r["created_at"] == 1700000000 and r["tools"] == [WEATHER]
    assert r["usage"] == {"input_tokens": 20,
                          "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
                          "output_tokens": 10,
                          "output_tokens_details": {"reasoning_tokens": 4},
                          "total_tokens": 30}


def test_a_length_finish_is_incomplete() -> None:
    r = canonical_to_responses(_completion({"role": "assistant", "content": "cut"}, "length"),
                               "m", response_echo(None))
    assert r["status"] == "incomplete"
    assert r["incomplete_details"] == {"reason": "max_output_tokens"}
    assert r["output"][0]["status"] == "incomplete"
    events = _events(_encode([{"choices": [{"index": 0, "delta": {"content": "cut"}}]},
                              {"choices": [{"index": 0, "delta": {},
                                            "finish_reason": "length"}]}]))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_notices_travel_in_the_body() -> None:
    completion = Completion(_completion({"role": "assistant", "content": "hi"}))
    body = orjson.loads(RESPONSES.answer(completion, "m", ["switched"], {"model": "x"}))
    assert body["failoverd"] == {"notices": ["switched"]}
    events = _events(_encode([{"failoverd": {"notices": ["switched"]}, "choices": [
        {"index": 0, "delta": {"content": "hi"}}]}]))
    assert events[0]["response"]["failoverd"] == {"notices": ["switched"]}
    assert events[-1]["response"]["failoverd"] == {"notices": ["switched"]}


def _encode(chunks: list[dict[str, Any]]) -> bytes:
    encoder = ResponsesStreamEncoder("m", response_echo(None))
    return b"".join(encoder.feed(c) for c in chunks) + encoder.finish()


def _events(data: bytes) -> list[dict[str, Any]]:
    out = []
    for block in data.decode().split("\n\n"):
        if block:
            name, payload = block.split("\n")
            event = json.loads(payload.removeprefix("data: "))
            assert name == "event: " + event["type"]
            out.append(event)
    return out


def test_stream_reasoning_then_text_then_interleaved_calls() -> None:
    def delta(**d: Any) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": d}]}

    events = _events(_encode([
        delta(reasoning_content="hm"), delta(content="ok"),
        delta(tool_calls=[{"index": 0, "id": "a", "function": {"name": "f",
                                                               "arguments": "{\"x\""}}]),
        delta(tool_calls=[{"index": 1, "id": "b", "function": {"name": "g",
                                                               "arguments": "{}"}}]),
        delta(tool_calls=[{"index": 0, "function": {"arguments": ":1}"}}]),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}]))
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added",
                         "response.reasoning_summary_part.added"]
    assert kinds.count("response.output_item.added") == 4
    assert kinds.count("response.output_item.done") == 4
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert [i["type"] for i in final["output"]] == ["reasoning", "message", "function_call",
                                                    "function_call"]
    assert final["output"][0]["summary"][0]["text"] == "hm"
    assert final["output"][2]["arguments"] == '{"x":1}'
    assert final["output"][3]["arguments"] == "{}"
    assert final["usage"]["total_tokens"] == 5
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_an_empty_stream_still_completes_with_an_empty_message() -> None:
    events = _events(_encode([]))
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == ""


# ------------------------------------------------------------------ left to other modules

async def test_a_stream_cut_by_the_drain_ends_in_the_responses_shape(
        fake_openai: Any, fake_anthropic: Any, start_daemon: Any) -> None:
    oai = await fake_openai(default="slow_stream:0.3")
    ant = await fake_anthropic()
    d = await start_daemon(config(oai, ant, head="shutdown_timeout = 0.3\n"))
    data = b""
    async with d.http.stream("POST", "/v1/responses", json={
            "model": "oai/gpt", "input": "hi", "stream": True}) as resp:
        async for chunk in resp.aiter_bytes():
            data += chunk
            if b"response.output_text.delta" in data and not d.sup.tracker.cutting:
                d.sup.request_stop()
    assert b"failoverd is shutting down" in data
    assert b"event: response.failed" in data


async def test_stored_response_endpoints_are_json_404s(rig: Any) -> None:
    """Retrieving, cancelling or listing the input of a stored response needs the store
    failoverd does not keep: OpenAI-shaped 404s the SDK raises as NotFoundError."""
    oai, ant, d = rig
    with pytest.raises(openai.NotFoundError):
        await d.openai.responses.retrieve("resp_1")
    with pytest.raises(openai.NotFoundError):
        await d.openai.responses.cancel("resp_1")
    resp = await d.http.get("/v1/responses")
    assert resp.status_code == 405 and resp.json()["error"]["code"] == "method_not_allowed"


async def test_reasoning_effort_gets_anthropic_thinking_back_as_a_reasoning_item(
        rig: Any) -> None:
    oai, ant, d = rig
    r = await d.openai.responses.create(model="ant/claude", input="think", max_output_tokens=4096,
                                        reasoning={"effort": "low", "summary": "auto"})
    assert sent(oai, ant, "ant/claude")["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert [i.type for i in r.output] == ["reasoning", "message"]
    assert r.output[0].summary[0].text == ant.thinking
    assert r.reasoning is not None and r.reasoning.effort == "low"
    async with d.openai.responses.stream(model="ant/claude", input="think",
                                         max_output_tokens=4096,
                                         reasoning={"effort": "low"}) as stream:
        deltas = [e.delta async for e in stream
                  if e.type == "response.reasoning_summary_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == ant.thinking
    assert [i.type for i in final.output] == ["reasoning", "message"]
    assert final.output_text == ANT_REPLY


@pytest.mark.parametrize("model", MODELS)
async def test_an_agents_sdk_turn_is_served_by_either_kind(rig: Any, model: str) -> None:
    """The body the OpenAI Agents SDK sends on the turn after a tool call (its
    _build_response_create_kwargs): include always present, the history with item ids,
    statuses and a reasoning item, structured output as text.format, parallel calls off."""
    oai, ant, d = rig
    schema = {"type": "object", "properties": {"answer": {"type": "string"}},
              "required": ["answer"], "additionalProperties": False}
    body = {
        "model": model, "instructions": "You are a weather agent.", "include": [],
        "input": [
            {"content": "weather in Paris?", "role": "user"},
            {"id": "rs_1", "summary": [], "type": "reasoning"},
            {"id": "msg_1", "content": [{"annotations": [], "text": "Let me check.",
                                         "type": "output_text", "logprobs": []}],
             "role": "assistant", "status": "completed", "type": "message"},
            {"arguments": "{\"city\":\"Paris\"}", "call_id": "call_a1", "name": "get_weather",
             "type": "function_call", "id": "fc_1", "status": "completed"},
            {"call_id": "call_a1", "output": "sunny", "type": "function_call_output"}],
        "tools": [WEATHER], "parallel_tool_calls": False, "tool_choice": "auto",
        "text": {"format": {"type": "json_schema", "name": "final_output", "schema": schema,
                            "strict": True}},
        "metadata": {"run": "1"}, "store": True, "stream": True}
    async with d.http.stream("POST", "/v1/responses", json=body) as resp:
        assert resp.status_code == 200
        data = b"".join([c async for c in resp.aiter_bytes()])
    assert b"event: response.completed" in data
    sent_body = sent(oai, ant, model)
    if model == "oai/gpt":
        assert sent_body["response_format"]["json_schema"]["name"] == "final_output"
        assert sent_body["parallel_tool_calls"] is False
        assert [m["role"] for m in sent_body["messages"]] == ["system", "user", "assistant",
                                                               "tool"]
    else:
        assert sent_body["output_config"]["format"]["schema"] == schema
        assert [m["role"] for m in sent_body["messages"]] == ["user", "assistant", "user"]
