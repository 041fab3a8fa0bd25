"""The OpenAI front end served by every provider kind, and failover chains across providers."""

from __future__ import annotations

import json

import pytest

from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import FakeOpenAI
from tests.helpers import providers

PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
       "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def config(openai_fake: FakeOpenAI, gemini: FakeGemini, ollama: FakeOllama) -> str:
    return f"""
{providers(openai=openai_fake.url, gemini=("gemini", gemini.url))}
api_key_env = "GEMINI_KEY"
[providers.ollama]
kind = "ollama"
base_url = "{ollama.url}"
[models."openai/gpt-5"]
provider = "openai"
capabilities = ["tools", "vision"]
[models."gemini/gemini-2.5-flash"]
provider = "gemini"
capabilities = ["tools", "vision"]
[models."ollama/qwen2.5:7b"]
provider = "ollama"
capabilities = ["tools", "vision"]
context_window = 32768
[chains.cheap]
models = ["gemini/gemini-2.5-flash", "ollama/qwen2.5:7b"]
[routing]
primary = "openai/gpt-5"
fallbacks_from_models = true
when_all_unavailable = "fail"
"""


@pytest.fixture
async def trio(fake_openai, fake_gemini, fake_ollama, start_daemon):
    o = await fake_openai(reply="from openai")
    g = await fake_gemini()
    ol = await fake_ollama()
    d = await start_daemon(config(o, g, ol), env={"GEMINI_KEY": "g-key"})
    return o, g, ol, d


@pytest.mark.parametrize("target", ["gemini/gemini-2.5-flash", "ollama/qwen2.5:7b"])
async def test_text_and_streaming_on_each_kind(trio, target: str) -> None:
    o, g, ol, d = trio
    fake = g if target.startswith("gemini") else ol
    hello = [{"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"}]
    reply = await d.openai.chat.completions.create(model=target, messages=hello)
    assert reply.choices[0].message.content == fake.reply
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.total_tokens > 0
    stream = await d.openai.chat.completions.create(model=target, messages=hello, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == fake.reply
    assert o.requests == []
    if fake is g:
        sent = g.chat_requests()[0]
        assert sent.headers["x-goog-api-key"] == "g-key"
        assert sent.body["systemInstruction"]["parts"][0]["text"] == "be terse"
    else:
        assert ol.chat_requests()[0].body["messages"][0] == {"role": "system",
                                                              "content": "be terse"}


@pytest.mark.parametrize("target", ["openai/gpt-5", "gemini/gemini-2.5-flash",
                                    "ollama/qwen2.5:7b"])
async def test_tools_round_trip_on_each_kind(trio, target: str) -> None:
    o, g, ol, d = trio
    messages: list[dict] = [{"role": "user", "content": "weather in Paris?"}]
    first = await d.openai.chat.completions.create(model=target, messages=messages,
                                                   tools=[WEATHER_TOOL])
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"].startswith("Paris")
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    second = await d.openai.chat.completions.create(model=target, messages=messages,
                                                    tools=[WEATHER_TOOL])
    assert second.choices[0].message.content
    fake = {"openai": o, "gemini": g, "ollama": ol}[target.split("/")[0]]
    last = fake.chat_requests()[-1].body
    if fake is o:  # same API: passed through as sent
        assert last["messages"][-1] == messages[-1]
        assert last["tools"] == [WEATHER_TOOL]
    elif fake is g:
        parts = [p for c in last["contents"] for p in c["parts"]]
        assert any("functionResponse" in p and p["functionResponse"]["name"] == "get_weather"
                   for p in parts)
    else:
        assert last["messages"][-1]["role"] == "tool"


async def test_image_input_reaches_every_kind(trio) -> None:
    o, g, ol, d = trio
    content = [{"type": "text", "text": "what is this?"},
               {"type": "image_url", "image_url": {"url": PNG}}]
    for target in ("openai/gpt-5", "gemini/gemini-2.5-flash", "ollama/qwen2.5:7b"):
        await d.openai.chat.completions.create(model=target,
                                               messages=[{"role": "user", "content": content}])
    assert o.chat_requests()[0].body["messages"][0]["content"] == content
    parts = g.chat_requests()[0].body["contents"][0]["parts"]
    assert any(p.get("inlineData", {}).get("mimeType") == "image/png" for p in parts)
    images = ol.chat_requests()[0].body["messages"][0]["images"]
    assert images == [PNG.split(",", 1)[1]]


async def test_openai_429_fails_over_to_gemini(trio) -> None:
    o, g, ol, d = trio
    o.default = "rate_limit_long"
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-failoverd-failover"] == "openai/gpt-5>gemini/gemini-2.5-flash:rate_limit"
    assert raw.parse().choices[0].message.content == g.reply


async def test_gemini_down_fails_over_to_ollama_streaming(trio) -> None:
    o, g, ol, d = trio
    g.default = "overloaded"
    stream = await d.openai.chat.completions.with_raw_response.create(
        model="cheap", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert stream.headers["x-failoverd-model"] == "ollama/qwen2.5:7b"
    assert stream.headers["x-failoverd-failover"] == (
        "gemini/gemini-2.5-flash>ollama/qwen2.5:7b:overloaded")
    text = "".join([c.choices[0].delta.content or "" async for c in stream.parse()
                    if c.choices])
    assert text == ol.reply


async def test_untranslatable_request_moves_to_a_provider_that_can(trio) -> None:
    o, g, ol, d = trio
    # an http image URL cannot be sent to Ollama (base64 only): the chain goes on
    content = [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}]
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "ollama/qwen2.5:7b", "messages": [{"role": "user", "content": content}]})
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == "openai/gpt-5"
    assert ol.chat_requests() == []


@pytest.mark.parametrize("target", ["openai/gpt-5", "gemini/gemini-2.5-flash",
                                    "ollama/qwen2.5:7b"])
async def test_streamed_tool_calls_on_each_kind(trio, target: str) -> None:
    o, g, ol, d = trio
    stream = await d.openai.chat.completions.create(
        model=target, stream=True, tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "weather in Paris?"}])
    name, arguments, finish = "", "", None
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                name += call.function.name or "" if call.function else ""
                arguments += call.function.arguments or "" if call.function else ""
            finish = choice.finish_reason or finish
    assert name == "get_weather"
    assert json.loads(arguments)["city"].startswith("Paris")
    assert finish == "tool_calls"


async def test_an_adapter_that_cannot_cope_is_skipped_not_a_500(trio) -> None:
    o, g, ol, d = trio
    # valid JSON Schema that Gemini's schema subset cannot express (allOf of two schemas)
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string"}},
        "allOf": [{"required": ["a"]}, {"properties": {"b": {"type": "number"}}}]}}}
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "cheap", "tools": [tool], "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == "ollama/qwen2.5:7b"
    assert g.chat_requests() == []
