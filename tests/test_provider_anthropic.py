"""AnthropicProvider against a fake Anthropic API on 127.0.0.1 speaking the real wire format."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from failoverd.config import ModelConfig, ProviderConfig
from failoverd.errors import TranslationError, UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import HttpClient
from failoverd.providers import make_provider
from failoverd.providers.anthropic import AnthropicProvider
from failoverd.providers.base import AttemptLimits
from tests.fakes.anthropic import FakeAnthropic

LIMITS = AttemptLimits(total=5, connect=2, first_token=3, idle=3)
MODEL = ModelConfig(id="anth/claude-test", provider="anth", name="claude-test-1",
                    max_output_tokens=2000)
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
       "RU5ErkJggg==")


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = await FakeAnthropic().start()
    yield server
    await server.close()


@pytest.fixture
async def provider(fake: FakeAnthropic) -> AsyncIterator[AnthropicProvider]:
    config = ProviderConfig(name="anth", kind="anthropic", base_url=fake.url,
                            api_key="sk-ant-test", headers=(("anthropic-beta", "x-test"),))
    async with HttpClient() as client:
        made = make_provider(config, client)
        assert isinstance(made, AnthropicProvider)
        yield made


def ask(text: str = "Hi", **extra: Any) -> dict[str, Any]:
    return {"model": "anth/claude-test", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": text}], **extra}


async def collect(provider: AnthropicProvider, body: dict[str, Any],
                  limits: AttemptLimits = LIMITS) -> list[dict[str, Any]]:
    return [chunk.data async for chunk in provider.stream(body, MODEL, limits)]


async def test_complete_text_sends_anthropic_request(provider: AnthropicProvider,
                                                     fake: FakeAnthropic) -> None:
    result = await provider.complete(ask(max_tokens=50, temperature=0.3), MODEL, LIMITS)
    body = result.body
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == fake.reply
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 15, "completion_tokens": 7, "total_tokens": 22,
                             "prompt_tokens_details": {"cached_tokens": 3}}
    [req] = fake.message_requests()
    assert req.headers["x-api-key"] == "sk-ant-test"
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert req.headers["anthropic-beta"] == "x-test"
    assert req.body == {"model": "claude-test-1", "max_tokens": 50,
                        "system": [{"type": "text", "text": "Be brief."}],
                        "messages": [{"role": "user", "content": [{"type": "text",
                                                                   "text": "Hi"}]}],
                        "temperature": 0.3}


async def test_default_and_capped_max_tokens(provider: AnthropicProvider,
                                             fake: FakeAnthropic) -> None:
    await provider.complete(ask(), MODEL, LIMITS)
    await provider.complete(ask(max_completion_tokens=999_999), MODEL, LIMITS)
    first, second = fake.message_requests()
    assert first.body["max_tokens"] == 2000  # the model's max_output_tokens
    assert second.body["max_tokens"] == 2000  # capped, not refused


async def test_complete_tools_and_image(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Weather where this photo was taken?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}]}],
        "tools": TOOLS, "tool_choice": "required"}
    result = await provider.complete(body, MODEL, LIMITS)
    message = result.body["choices"][0]["message"]
    assert result.body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] == "Let me check."
    [call] = message["tool_calls"]
    assert call["id"] == "toolu_01Fake"
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 2}
    [req] = fake.message_requests()
    content = req.body["messages"][0]["content"]
    assert content[1] == {"type": "image", "source": {"type": "base64",
                                                      "media_type": "image/png", "data": PNG}}
    assert content[2] == {"type": "image", "source": {"type": "url",
                                                      "url": "https://example.com/a.jpg"}}
    assert req.body["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                                  "input_schema": TOOLS[0]["function"]["parameters"]}]
    assert req.body["tool_choice"] == {"type": "any"}


async def test_stream_text(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    chunks = await collect(provider, ask(stream=True, stream_options={"include_usage": True}))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    usage = chunks.pop()
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 7
    assert usage["usage"]["prompt_tokens"] == 15
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == fake.reply
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # not asked for: no usage chunk, the usage on the finish chunk (as Gemini's and Ollama's
    # translations give it), so failoverd_tokens_total counts it
    plain = await collect(provider, ask(stream=True))
    assert [c for c in plain if "usage" in c] == [plain[-1]]
    assert plain[-1]["choices"][0]["finish_reason"] == "stop"
    assert plain[-1]["usage"]["completion_tokens"] == 7
    assert fake.message_requests()[0].body["stream"] is True
    assert fake.message_requests()[0].headers["accept"] == "text/event-stream"


async def test_stream_tool_call_argument_deltas(provider: AnthropicProvider) -> None:
    chunks = await collect(provider, ask(tools=TOOLS))
    calls = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert calls[0]["index"] == 0 and calls[0]["id"] == "toolu_01Fake"
    assert calls[0]["function"]["name"] == "get_weather"
    assert all(tc["index"] == 0 for tc in calls)
    arguments = "".join(tc["function"]["arguments"] for tc in calls)
    assert orjson.loads(arguments) == {"city": "Paris", "days": 2}
    assert len(calls) == 3  # start + two partial_json pieces (the empty one is skipped)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_rate_limit_carries_retry_after(provider: AnthropicProvider,
                                              fake: FakeAnthropic) -> None:
    fake.push("rate_limit")
    with pytest.raises(UpstreamError) as info:
        await provider.complete(ask(), MODEL, LIMITS)
    assert info.value.retry_after == 7.0


async def test_untranslatable_request_is_refused_without_a_call(
        provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    with pytest.raises(TranslationError) as info:
        await provider.complete(ask(n=2), MODEL, LIMITS)
    assert info.value.param == "n"
    with pytest.raises(TranslationError):
        await collect(provider, ask(response_format={"type": "json_object"}))
    assert fake.message_requests() == []


async def test_probes(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    await provider.probe(MODEL, "models", 2, 16)
    await provider.probe(MODEL, "chat", 2, 16)
    await provider.probe(MODEL, "none", 2, 16)
    models, chat = fake.requests
    assert models.method == "GET" and models.path == "/v1/models"
    assert models.headers["x-api-key"] == "sk-ant-test"
    assert chat.body["max_tokens"] == 16 and "thinking" not in chat.body
    fake.push("auth")
    with pytest.raises(UpstreamError) as info:
        await provider.probe(MODEL, "models", 2, 16)
    assert info.value.reason is FailureReason.AUTH
