"""OllamaProvider against a fake Ollama server speaking the real native wire format."""

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
from failoverd.providers.ollama import OllamaProvider, tagged
from tests.fakes.ollama import FakeOllama

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/"
       "PchI7wAAAABJRU5ErkJggg==")
MODEL = ModelConfig(id="ollama/qwen2.5:7b", provider="ollama", name="qwen2.5:7b",
                    context_window=32768)
LIMITS = AttemptLimits(total=5, connect=2, first_token=5, idle=5)
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
HELLO = {"messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture
async def setup(fake_ollama: Callable[..., Awaitable[FakeOllama]],
                http_client: HttpClient) -> tuple[FakeOllama, OllamaProvider]:
    fake = await fake_ollama()
    provider = make_provider(ProviderConfig(name="ollama", kind="ollama", base_url=fake.url),
                             http_client)
    assert isinstance(provider, OllamaProvider)
    return fake, provider


async def collect(provider: OllamaProvider, body: dict[str, Any],
                  limits: AttemptLimits = LIMITS) -> list[dict[str, Any]]:
    return [c.data async for c in provider.stream(body, MODEL, limits)]


async def test_text_completion(setup: tuple[FakeOllama, OllamaProvider]) -> None:
    fake, provider = setup
    result = await provider.complete({**HELLO, "max_tokens": 5}, MODEL, LIMITS)
    assert result.body["choices"][0]["message"] == {"role": "assistant",
                                                    "content": "Hello from the fake Ollama"}
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert result.body["usage"] == {"prompt_tokens": 26, "completion_tokens": 7,
                                    "total_tokens": 33}
    (logged,) = fake.requests
    assert logged.path == "/api/chat"
    assert logged.body == {"model": "qwen2.5:7b", "stream": False,
                           "messages": [{"role": "user", "content": "Hello"}],
                           "options": {"num_predict": 5, "num_ctx": 32768},
                           "truncate": False}


async def test_streaming(setup: tuple[FakeOllama, OllamaProvider]) -> None:
    fake, provider = setup
    chunks = await collect(provider, {**HELLO, "stream": True,
                                      "stream_options": {"include_usage": True}})
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello from the fake Ollama"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 33
    assert fake.requests[0].body["stream"] is True


async def test_length_finish(setup: tuple[FakeOllama, OllamaProvider]) -> None:
    fake, provider = setup
    fake.push("length", "length")
    assert (await provider.complete(HELLO, MODEL, LIMITS)).body["choices"][0][
        "finish_reason"] == "length"
    assert (await collect(provider, HELLO))[-1]["choices"][0]["finish_reason"] == "length"


async def test_tools_round_trip(setup: tuple[FakeOllama, OllamaProvider]) -> None:
    fake, provider = setup
    body = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [TOOL]}
    result = await provider.complete(body, MODEL, LIMITS)
    message = result.body["choices"][0]["message"]
    assert result.body["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"] == [{"id": "call_0", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city":"Paris"}'}}]

    fake.tool_calls = 2
    chunks = await collect(provider, {**body, "stream": True})
    calls = chunks[0]["choices"][0]["delta"]["tool_calls"]
    assert [(c["index"], c["id"]) for c in calls] == [(0, "call_0"), (1, "call_1")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    follow = {**body, "messages": [*body["messages"], message,
                                   {"role": "tool", "tool_call_id": "call_0", "content": "21C"}]}
    final = await provider.complete(follow, MODEL, LIMITS)
    assert final.body["choices"][0]["message"]["content"] == "Hello from the fake Ollama"
    sent = fake.requests[-1].body["messages"]
    assert sent[1]["tool_calls"] == [{"function": {"name": "get_weather",
                                                   "arguments": {"city": "Paris"}}}]
    assert sent[2] == {"role": "tool", "content": "21C", "tool_name": "get_weather"}


async def test_image_input(setup: tuple[FakeOllama, OllamaProvider]) -> None:
    fake, provider = setup
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]}
    await provider.complete(body, MODEL, LIMITS)
    assert fake.requests[0].body["messages"][0]["images"] == [PNG]
    with pytest.raises(TranslationError):
        await provider.complete({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]},
            MODEL, LIMITS)
    assert len(fake.requests) == 1  # the untranslatable one never went out


async def test_missing_model_error_names_it(setup: tuple[FakeOllama, OllamaProvider]) -> None:
    fake, provider = setup
    fake.push("not_found")
    with pytest.raises(UpstreamError) as err:
        await provider.complete(HELLO, MODEL, LIMITS)
    assert err.value.reason == FailureReason.NOT_FOUND
    assert 'model "qwen2.5:7b" not found' in err.value.message


async def test_probes(setup: tuple[FakeOllama, OllamaProvider]) -> None:
    fake, provider = setup
    await provider.probe(MODEL, "models", 2, 16)
    assert fake.requests[-1].path == "/api/tags"
    await provider.probe(MODEL, "chat", 2, 16)
    assert fake.requests[-1].body["options"]["num_predict"] == 16
    assert fake.requests[-1].body["stream"] is False
    missing = ModelConfig(id="ollama/mistral", provider="ollama", name="mistral")
    with pytest.raises(UpstreamError) as err:
        await provider.probe(missing, "models", 2, 16)
    assert err.value.reason == FailureReason.NOT_FOUND
    latest = ModelConfig(id="ollama/llama3.2", provider="ollama", name="llama3.2")
    await provider.probe(latest, "models", 2, 16)  # the implicit :latest tag matches
    fake.push("busy")
    with pytest.raises(UpstreamError) as err:
        await provider.probe(MODEL, "chat", 2, 16)
    assert err.value.reason == FailureReason.OVERLOADED


def test_tagged() -> None:
    assert tagged("llama3.2") == "llama3.2:latest"
    assert tagged("qwen2.5:7b") == "qwen2.5:7b"
    assert tagged("hf.co/org/model") == "hf.co/org/model:latest"
    assert tagged("localhost:5000/org/model") == "localhost:5000/org/model:latest"
