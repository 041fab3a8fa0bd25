"""What every HTTP adapter promises, checked against each fake upstream in the same words.

The reason and status of each fake's real error bodies, timeouts, refused connections,
unusable 200 answers and streams that fail after their first chunk; each adapter's own wire
details (requests, translations, retry hints, probes) are tested in its
test_provider_<kind>.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from failoverd.config import ModelConfig, ProviderConfig
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import HttpClient
from failoverd.providers import make_provider
from failoverd.providers.base import AttemptLimits, Chunk, Provider
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import FakeServer
from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama

LIMITS = AttemptLimits(total=5, connect=2, first_token=5, idle=5)
SHORT = AttemptLimits(total=0.3, connect=0.3, first_token=0.3, idle=0.3)
HELLO = {"messages": [{"role": "user", "content": "Hello"}]}


@dataclass(frozen=True)
class Adapter:
    """An adapter kind with its fake and the fake's names for the shared behaviours."""

    fake: type[FakeServer[Any]]
    model: ModelConfig
    stall: bool  # the fake can send stream headers and then nothing
    no_end: str  # a stream that ends cleanly without the API's end marker
    stream_error: FailureReason  # the reason of the fake's mid-stream error event
    bad_200: tuple[str, ...]  # 200 answers without a usable body
    error_marker: bytes  # in every error body the fake sends
    errors: tuple[tuple[str, FailureReason, int], ...]  # (behaviour, reason, status)


ADAPTERS = {
    "gemini": Adapter(
        FakeGemini, ModelConfig(id="gemini/gemini-2.5-flash", provider="gemini",
                                name="gemini-2.5-flash"),
        stall=True, no_end="no_finish", stream_error=FailureReason.SERVER_ERROR,
        bad_200=("empty", "invalid_json"), error_marker=b'"error"', errors=(
            ("rate_limit", FailureReason.RATE_LIMIT, 429),
            ("quota_zero", FailureReason.BILLING, 429),
            ("overloaded", FailureReason.OVERLOADED, 503),
            ("server_error", FailureReason.SERVER_ERROR, 500),
            ("deadline", FailureReason.TIMEOUT, 504),
            ("bad_key", FailureReason.AUTH, 400),
            ("unauthenticated", FailureReason.AUTH, 401),
            ("permission_denied", FailureReason.AUTH, 403),
            ("forbidden_key", FailureReason.AUTH, 403),
            ("context", FailureReason.CONTEXT_OVERFLOW, 400),
            ("not_found", FailureReason.NOT_FOUND, 404),
            ("billing", FailureReason.BILLING, 400),
            ("location", FailureReason.AUTH, 400),
            ("bad_request", FailureReason.BAD_REQUEST, 400))),
    "ollama": Adapter(
        FakeOllama, ModelConfig(id="ollama/qwen2.5:7b", provider="ollama", name="qwen2.5:7b",
                                context_window=32768),
        stall=True, no_end="no_done", stream_error=FailureReason.SERVER_ERROR,
        bad_200=("empty", "invalid_json"), error_marker=b'"error"', errors=(
            ("not_found", FailureReason.NOT_FOUND, 404),
            ("server_error", FailureReason.SERVER_ERROR, 500),
            ("out_of_memory", FailureReason.SERVER_ERROR, 500),
            ("busy", FailureReason.OVERLOADED, 503),
            ("bad_request", FailureReason.BAD_REQUEST, 400),
            ("no_tools", FailureReason.INCAPABLE, 400))),
    "anthropic": Adapter(
        FakeAnthropic, ModelConfig(id="anth/claude-test", provider="anth",
                                   name="claude-test-1", max_output_tokens=2000),
        stall=False, no_end="no_stop", stream_error=FailureReason.OVERLOADED,
        bad_200=("invalid_json",), error_marker=b'"type":"error"', errors=(
            ("overloaded", FailureReason.OVERLOADED, 529),
            ("overloaded_503", FailureReason.OVERLOADED, 503),
            ("rate_limit", FailureReason.RATE_LIMIT, 429),
            ("auth", FailureReason.AUTH, 401),
            ("permission", FailureReason.AUTH, 403),
            ("not_found", FailureReason.NOT_FOUND, 404),
            ("too_long", FailureReason.CONTEXT_OVERFLOW, 400),
            ("credit", FailureReason.BILLING, 400),
            ("bad_request", FailureReason.BAD_REQUEST, 400),
            ("api_error", FailureReason.SERVER_ERROR, 500))),
}


def rows(make: Any) -> list[Any]:
    """pytest params of (kind, *row) for every adapter's rows, with readable ids."""
    return [pytest.param(kind, *row, id=f"{kind}-{row[0]}")
            for kind, adapter in ADAPTERS.items() for row in make(adapter)]


@pytest.fixture
async def setup(kind: str, http_client: HttpClient
                ) -> AsyncIterator[tuple[FakeServer[Any], Provider, ModelConfig]]:
    """The fake and the adapter for the test's `kind` parameter."""
    adapter = ADAPTERS[kind]
    fake = await adapter.fake().start()
    config = ProviderConfig(name=adapter.model.provider, kind=kind, base_url=fake.url,
                            api_key="test-key")
    yield fake, make_provider(config, http_client), adapter.model
    await fake.close()


async def collect(provider: Provider, model: ModelConfig, limits: AttemptLimits = LIMITS,
                  got: list[Chunk] | None = None) -> list[Chunk]:
    got = [] if got is None else got
    async for chunk in provider.stream(HELLO, model, limits):
        got.append(chunk)
    return got


def text(chunks: list[Chunk]) -> str:
    return "".join(c.data["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c.data["choices"])


@pytest.mark.parametrize(("kind", "behaviour", "reason", "status"), rows(lambda a: a.errors))
async def test_error_rows(setup: tuple[FakeServer[Any], Provider, ModelConfig], kind: str,
                          behaviour: str, reason: FailureReason, status: int) -> None:
    fake, provider, model = setup
    fake.push(behaviour, behaviour)
    with pytest.raises(UpstreamError) as err:
        await provider.complete(HELLO, model, LIMITS)
    assert (err.value.reason, err.value.status) == (reason, status)
    assert err.value.provider == model.provider and err.value.model == model.id
    assert err.value.body is not None and ADAPTERS[kind].error_marker in err.value.body
    # streaming: the failure surfaces on the first chunk, before anything reached the client
    it = provider.stream(HELLO, model, LIMITS).__aiter__()
    with pytest.raises(UpstreamError) as err2:
        await it.__anext__()
    assert err2.value.reason == reason


@pytest.mark.parametrize("kind", list(ADAPTERS))
async def test_complete_timeout(setup: tuple[FakeServer[Any], Provider, ModelConfig],
                                kind: str) -> None:
    fake, provider, model = setup
    fake.push("hang")
    with pytest.raises(UpstreamError) as err:
        await provider.complete(HELLO, model, SHORT)
    assert err.value.reason == FailureReason.TIMEOUT


@pytest.mark.parametrize(("kind", "behaviour"), rows(
    lambda a: [("hang",), ("stall",)] if a.stall else [("hang",)]))
async def test_first_token_timeout(setup: tuple[FakeServer[Any], Provider, ModelConfig],
                                   kind: str, behaviour: str) -> None:
    fake, provider, model = setup
    fake.push(behaviour)
    with pytest.raises(UpstreamError) as err:
        await collect(provider, model, SHORT)
    assert err.value.reason == FailureReason.TIMEOUT


@pytest.mark.parametrize(("kind", "behaviour", "reason"), rows(lambda a: [
    ("cut_stream", FailureReason.INVALID_RESPONSE),
    (a.no_end, FailureReason.INVALID_RESPONSE),
    ("stream_error", a.stream_error)]))
async def test_stream_failures_after_first_chunk(
        setup: tuple[FakeServer[Any], Provider, ModelConfig], kind: str, behaviour: str,
        reason: FailureReason) -> None:
    fake, provider, model = setup
    fake.push(behaviour)
    got: list[Chunk] = []
    with pytest.raises(UpstreamError) as err:
        await collect(provider, model, got=got)
    assert err.value.reason == reason
    assert got and text(got).startswith("Hello"), "the failure came after chunks were delivered"
    if behaviour == "stream_error":
        assert text(got) == "Hello from"


@pytest.mark.parametrize(("kind", "behaviour"), rows(lambda a: [(b,) for b in a.bad_200]))
async def test_unusable_200_is_invalid_response(
        setup: tuple[FakeServer[Any], Provider, ModelConfig], kind: str, behaviour: str) -> None:
    fake, provider, model = setup
    fake.push(behaviour)
    with pytest.raises(UpstreamError) as err:
        await provider.complete(HELLO, model, LIMITS)
    assert err.value.reason == FailureReason.INVALID_RESPONSE


@pytest.mark.parametrize("kind", list(ADAPTERS))
async def test_connection_refused(http_client: HttpClient, kind: str) -> None:
    model = ADAPTERS[kind].model
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        config = ProviderConfig(name=model.provider, kind=kind,
                                base_url=f"http://127.0.0.1:{port}", api_key="test-key")
        provider = make_provider(config, http_client)
        with pytest.raises(UpstreamError) as err:
            await provider.complete(HELLO, model, LIMITS)
        assert err.value.reason == FailureReason.CONNECTION
        with pytest.raises(UpstreamError) as err:
            await collect(provider, model)
        assert err.value.reason == FailureReason.CONNECTION
        with pytest.raises(UpstreamError) as err:
            await provider.probe(model, "models", 1, 16)
        assert err.value.reason == FailureReason.CONNECTION


async def pooled(client: HttpClient) -> None:
    """Waits (bounded) until a connection sits idle in the pool."""
    for _ in range(200):
        if client.idle_connections:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("no connection came back to the pool")


@pytest.mark.parametrize("kind", list(ADAPTERS))
async def test_connections_are_reused_and_a_timed_out_one_is_not(
        setup: tuple[FakeServer[Any], Provider, ModelConfig], http_client: HttpClient,
        kind: str) -> None:
    fake, provider, model = setup
    await check_reuse(fake, provider, model, http_client, ADAPTERS[kind].errors[0][0])


async def test_openai_connections_are_reused_and_a_timed_out_one_is_not(
        fake_openai: Any, http_client: HttpClient) -> None:
    fake = await fake_openai()
    model = ModelConfig(id="oai/gpt-test", provider="oai", name="gpt-test")
    provider = make_provider(ProviderConfig(name="oai", kind="openai", base_url=fake.url,
                                            api_key="sk-test"), http_client)
    await check_reuse(fake, provider, model, http_client, "rate_limit")


async def check_reuse(fake: Any, provider: Provider, model: ModelConfig,
                      http_client: HttpClient, error: str) -> None:
    await provider.complete(HELLO, model, LIMITS)
    fake.push(error)
    with pytest.raises(UpstreamError):
        await provider.complete(HELLO, model, LIMITS)
    assert text(await collect(provider, model)).startswith("Hello")
    # a stream released at its end marker is read out to its last HTTP chunk in the
    # background, then pooled
    await pooled(http_client)
    fake.push(error)
    with pytest.raises(UpstreamError):
        await collect(provider, model)
    await provider.complete(HELLO, model, LIMITS)
    # answers, error answers and finished streams all gave their connection back
    assert http_client.connects == 1
    fake.push("hang")
    with pytest.raises(UpstreamError) as err:
        await provider.complete(HELLO, model, SHORT)
    assert err.value.reason == FailureReason.TIMEOUT
    await provider.complete(HELLO, model, LIMITS)
    # the timed-out connection was closed (the upstream sees the call abandoned)
    assert http_client.connects == 2
