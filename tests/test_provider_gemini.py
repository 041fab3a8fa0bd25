"""GeminiProvider against a fake Gemini server speaking the real wire format."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from failoverd.config import ModelConfig, ProviderConfig
from failoverd.errors import TranslationError, UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import HttpClient
from failoverd.providers import make_provider
from failoverd.providers.base import AttemptLimits
from failoverd.providers.gemini import GeminiProvider
from tests.fakes.gemini import FakeGemini

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/"
       "PchI7wAAAABJRU5ErkJggg==")
MODEL = ModelConfig(id="gemini/gemini-2.5-flash", provider="gemini", name="gemini-2.5-flash")
LIMITS = AttemptLimits(total=5, connect=2, first_token=5, idle=5)
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
HELLO = {"messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture
async def setup(fake_gemini: Callable[..., Awaitable[FakeGemini]],
                http_client: HttpClient) -> tuple[FakeGemini, GeminiProvider]:
    fake = await fake_gemini()
    config = ProviderConfig(name="gemini", kind="gemini", base_url=fake.url,
                            api_key="AIza-test-key")
    provider = make_provider(config, http_client)
    assert isinstance(provider, GeminiProvider)
    return fake, provider


async def collect(provider: GeminiProvider, body: dict[str, Any],
                  limits: AttemptLimits = LIMITS) -> list[dict[str, Any]]:
    return [c.data async for c in provider.stream(body, MODEL, limits)]


async def test_text_completion(setup: tuple[FakeGemini, GeminiProvider]) -> None:
    fake, provider = setup
    body = {**HELLO, "max_tokens": 5, "messages": [
        {"role": "system", "content": "Be brief."}, *HELLO["messages"]]}
    result = await provider.complete(body, MODEL, LIMITS)
    assert result.body["choices"][0]["message"] == {"role": "assistant",
                                                    "content": "Hello from the fake Gemini"}
    assert result.body["usage"] == {"prompt_tokens": 9, "completion_tokens": 6,
                                    "total_tokens": 15}
    (logged,) = fake.requests
    assert logged.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert logged.headers["x-goog-api-key"] == "AIza-test-key"
    assert logged.body == {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
                           "systemInstruction": {"parts": [{"text": "Be brief."}]},
                           "generationConfig": {"maxOutputTokens": 5}}


async def test_streaming(setup: tuple[FakeGemini, GeminiProvider]) -> None:
    fake, provider = setup
    chunks = await collect(provider, {**HELLO, "stream": True})
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Hello from the fake Gemini"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["total_tokens"] == 15
    assert fake.requests[0].path.endswith(":streamGenerateContent")
    assert fake.requests[0].query == {"alt": "sse"}


async def test_tools_complete_and_stream(setup: tuple[FakeGemini, GeminiProvider]) -> None:
    fake, provider = setup
    fake.tool_calls = 2
    body = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [TOOL],
            "tool_choice": "required"}
    result = await provider.complete(body, MODEL, LIMITS)
    choice = result.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert [c["id"] for c in choice["message"]["tool_calls"]] == ["call_0", "call_1"]
    assert choice["message"]["tool_calls"][0]["function"] == {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert fake.requests[0].body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}

    chunks = await collect(provider, {**body, "stream": True})
    calls = chunks[0]["choices"][0]["delta"]["tool_calls"]
    assert [(c["index"], c["function"]["name"]) for c in calls] == [(0, "get_weather"),
                                                                    (1, "get_weather")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    # the client answers the calls: the results go back with the function name
    follow = {**body, "tool_choice": "auto", "messages": [
        *body["messages"], choice["message"],
        {"role": "tool", "tool_call_id": "call_0", "content": "21C"},
        {"role": "tool", "tool_call_id": "call_1", "content": "22C"}]}
    final = await provider.complete(follow, MODEL, LIMITS)
    assert final.body["choices"][0]["message"]["content"] == "Hello from the fake Gemini"
    parts = fake.requests[-1].body["contents"][-1]["parts"]
    assert [p["functionResponse"]["name"] for p in parts] == ["get_weather", "get_weather"]


async def test_image_input(setup: tuple[FakeGemini, GeminiProvider]) -> None:
    fake, provider = setup
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]}
    await provider.complete(body, MODEL, LIMITS)
    assert fake.requests[0].body["contents"][0]["parts"][1] == {
        "inlineData": {"mimeType": "image/png", "data": PNG}}


async def test_untranslatable_request_never_reaches_upstream(
        setup: tuple[FakeGemini, GeminiProvider]) -> None:
    fake, provider = setup
    with pytest.raises(TranslationError) as err:
        await provider.complete({**HELLO, "logit_bias": {"1": 2}}, MODEL, LIMITS)
    assert err.value.param == "logit_bias"
    with pytest.raises(TranslationError):
        await collect(provider, {**HELLO, "logit_bias": {"1": 2}})
    assert fake.requests == []


async def test_rate_limit_carries_retry_info(setup: tuple[FakeGemini, GeminiProvider]) -> None:
    fake, provider = setup
    fake.push("rate_limit")
    with pytest.raises(UpstreamError) as err:
        await provider.complete(HELLO, MODEL, LIMITS)
    assert err.value.retry_after == 38.0


async def test_blocked_prompt_is_a_content_filter(
        setup: tuple[FakeGemini, GeminiProvider]) -> None:
    fake, provider = setup
    fake.push("blocked")
    with pytest.raises(UpstreamError) as err:
        await provider.complete(HELLO, MODEL, LIMITS)
    assert err.value.reason == FailureReason.CONTENT_FILTER


async def test_safety_stop_is_a_content_filter_finish(
        setup: tuple[FakeGemini, GeminiProvider]) -> None:
    fake, provider = setup
    fake.push("safety", "max_tokens")
    result = await provider.complete(HELLO, MODEL, LIMITS)
    assert result.body["choices"][0]["finish_reason"] == "content_filter"
    chunks = await collect(provider, HELLO)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_probes(setup: tuple[FakeGemini, GeminiProvider]) -> None:
    fake, provider = setup
    await provider.probe(MODEL, "models", 2, 16)
    assert fake.requests[-1].path == "/v1beta/models/gemini-2.5-flash"
    await provider.probe(MODEL, "chat", 2, 16)
    assert fake.requests[-1].body["generationConfig"] == {"maxOutputTokens": 16}
    await provider.probe(MODEL, "none", 2, 16)
    assert len(fake.requests) == 2
    fake.push("not_found", "bad_key")
    with pytest.raises(UpstreamError) as err:
        await provider.probe(MODEL, "models", 2, 16)
    assert err.value.reason == FailureReason.NOT_FOUND
    with pytest.raises(UpstreamError) as err:
        await provider.probe(MODEL, "chat", 2, 16)
    assert err.value.reason == FailureReason.AUTH
