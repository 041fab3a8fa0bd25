"""VertexProvider against a fake Vertex AI speaking both publishers' wire formats (Claude's
rawPredict and streamRawPredict, Gemini's generateContent, SSE streams, :predict embeddings)
and Google's and Claude's error bodies, with access tokens from a fake token endpoint. The
daemon serving clients from it: test_vertex_e2e.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from failoverd import config
from failoverd.clock import ManualClock
from failoverd.config import ModelConfig, ProviderConfig
from failoverd.errors import RequestError, UpstreamError
from failoverd.failures import FailureReason
from failoverd.googlecreds import read_file
from failoverd.http1 import HttpClient
from failoverd.providers import make_provider
from failoverd.providers.base import AttemptLimits
from failoverd.providers.vertex import VertexProvider
from tests.fakes.vertex import (
    LOCATION,
    PROJECT,
    FakeGoogleAuth,
    FakeVertex,
    ServiceKey,
    fake_google_auth,
    fake_vertex,
    rsa_key,
)

__all__ = ["fake_google_auth", "fake_vertex", "rsa_key"]  # the fixtures

CLAUDE = ModelConfig(id="vertex/sonnet", provider="vertex", name="claude-sonnet-4-5@20250929",
                     max_output_tokens=1000)
GEMINI = ModelConfig(id="vertex/flash", provider="vertex", name="gemini-2.5-flash")
EMBED = ModelConfig(id="vertex/embed", provider="vertex", name="text-embedding-005",
                    capabilities=frozenset({"embeddings"}))
LIMITS = AttemptLimits(total=5, connect=2, first_token=5, idle=5)
HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture
async def setup(fake_vertex: Callable[..., Awaitable[FakeVertex]],
                fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]],
                http_client: HttpClient, rsa_key: ServiceKey,
                tmp_path: Path) -> tuple[FakeVertex, FakeGoogleAuth, VertexProvider]:
    vertex = await fake_vertex()
    auth = await fake_google_auth(modulus=rsa_key.modulus, vertex=vertex)
    path = tmp_path / "sa.json"
    path.write_bytes(orjson.dumps(rsa_key.account(f"{auth.url}/token")))
    cfg = ProviderConfig(name="vertex", kind="vertex", base_url=vertex.url, region=LOCATION,
                         project=PROJECT, google=read_file(str(path)),
                         headers=(("anthropic-beta", "context-1m-2025-08-07"),))
    provider = make_provider(cfg, http_client)
    assert isinstance(provider, VertexProvider)
    return vertex, auth, provider


async def collect(provider: VertexProvider, model: ModelConfig,
                  body: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [c.data async for c in provider.stream(body or {**HELLO, "stream": True}, model,
                                                  LIMITS)]


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c.get("choices"))


# ------------------------------------------------------------------ Claude


async def test_claude_by_raw_predict(setup: tuple[FakeVertex, FakeGoogleAuth,
                                                  VertexProvider]) -> None:
    vertex, auth, provider = setup
    result = await provider.complete(HELLO, CLAUDE, LIMITS)
    assert result.body["choices"][0]["message"]["content"] == "Hello from Claude on Vertex"
    assert result.body["usage"]["completion_tokens"] == 7
    call = vertex.requests[-1]
    assert call.path == (f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/anthropic/"
                         "models/claude-sonnet-4-5@20250929:rawPredict")
    assert "model" not in call.body and call.body["anthropic_version"] == "vertex-2023-10-16"
    assert call.body["max_tokens"] == 1000 and "stream" not in call.body
    assert call.headers["Authorization"] == f"Bearer {auth.issued[0]}"
    # the beta features travel in their header; the API version is the body's
    assert call.headers["anthropic-beta"] == "context-1m-2025-08-07"
    assert "anthropic-version" not in {k.lower() for k in call.headers}
    assert "x-api-key" not in {k.lower() for k in call.headers}
    # the token serves the next calls: one grant
    await provider.complete(HELLO, CLAUDE, LIMITS)
    assert len(auth.grants) == 1


async def test_claude_streams_by_stream_raw_predict(
        setup: tuple[FakeVertex, FakeGoogleAuth, VertexProvider]) -> None:
    vertex, _, provider = setup
    chunks = await collect(provider, CLAUDE)
    assert text_of(chunks) == "Hello from Claude on Vertex"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    call = vertex.requests[-1]
    assert call.path.endswith("claude-sonnet-4-5@20250929:streamRawPredict")
    assert call.body["stream"] is True and "model" not in call.body


async def test_claude_errors(setup: tuple[FakeVertex, FakeGoogleAuth, VertexProvider]) -> None:
    vertex, _, provider = setup
    expected = {
        "overloaded": FailureReason.OVERLOADED,  # Claude's own 529
        "rate_limit": FailureReason.RATE_LIMIT,  # Vertex's quota, Google's shape
        "rate_limit_list": FailureReason.RATE_LIMIT,
        "not_enabled": FailureReason.NOT_FOUND,  # this model, not the provider
        "claude_bad_request": FailureReason.BAD_REQUEST,
        "service_disabled": FailureReason.AUTH,
        "billing_disabled": FailureReason.BILLING,
        "unavailable": FailureReason.OVERLOADED,
    }
    for name, reason in expected.items():
        vertex.push(name)
        with pytest.raises(UpstreamError) as caught:
            await provider.complete(HELLO, CLAUDE, LIMITS)
        assert caught.value.reason is reason, name
    # a stream fails before its first chunk, so the router may still fail over
    vertex.push("rate_limit")
    with pytest.raises(UpstreamError) as caught:
        await collect(provider, CLAUDE)
    assert caught.value.reason is FailureReason.RATE_LIMIT
    # an error event mid-stream (Claude's overloaded_error)
    vertex.push("stream_error")
    with pytest.raises(UpstreamError) as caught:
        await collect(provider, CLAUDE)
    assert caught.value.reason is FailureReason.OVERLOADED


# ------------------------------------------------------------------ Gemini


async def test_gemini_by_generate_content(
        setup: tuple[FakeVertex, FakeGoogleAuth, VertexProvider]) -> None:
    vertex, auth, provider = setup
    result = await provider.complete(HELLO, GEMINI, LIMITS)
    assert result.body["choices"][0]["message"]["content"] == "Hello from Gemini on Vertex"
    assert result.body["usage"]["total_tokens"] == 15
    call = vertex.requests[-1]
    assert call.path == (f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/"
                         "models/gemini-2.5-flash:generateContent")
    assert call.body["contents"] == [{"role": "user", "parts": [{"text": "Hello"}]}]
    assert call.headers["Authorization"] == f"Bearer {auth.issued[0]}"
    assert "x-goog-api-key" not in {k.lower() for k in call.headers}

    chunks = await collect(provider, GEMINI)
    assert text_of(chunks) == "Hello from Gemini on Vertex"
    assert vertex.requests[-1].path.endswith(":streamGenerateContent")
    assert vertex.requests[-1].query == {"alt": "sse"}
    assert len(auth.grants) == 1


async def test_gemini_errors(setup: tuple[FakeVertex, FakeGoogleAuth, VertexProvider]) -> None:
    vertex, _, provider = setup
    expected = {
        "rate_limit_list": FailureReason.RATE_LIMIT,
        "permission": FailureReason.NOT_FOUND,  # "(or it may not exist)": this model's
        "not_found": FailureReason.NOT_FOUND,
        "context": FailureReason.CONTEXT_OVERFLOW,
        "billing_disabled": FailureReason.BILLING,
        "internal": FailureReason.SERVER_ERROR,
        "unavailable": FailureReason.OVERLOADED,
    }
    for name, reason in expected.items():
        vertex.push(name)
        with pytest.raises(UpstreamError) as caught:
            await provider.complete(HELLO, GEMINI, LIMITS)
        assert caught.value.reason is reason, name
    vertex.push("rate_limit")
    with pytest.raises(UpstreamError) as caught:
        await collect(provider, GEMINI)
    assert caught.value.reason is FailureReason.RATE_LIMIT
    vertex.push("stream_error")  # Google's error object as an SSE event mid-stream
    with pytest.raises(UpstreamError) as caught:
        await collect(provider, GEMINI)
    assert caught.value.reason is FailureReason.SERVER_ERROR


async def test_wrong_location_is_named(setup: tuple[FakeVertex, FakeGoogleAuth,
                                                    VertexProvider]) -> None:
    vertex, _, provider = setup
    vertex.location = "europe-west1"  # the provider calls us-east5
    with pytest.raises(UpstreamError) as caught:
        await provider.complete(HELLO, GEMINI, LIMITS)
    assert caught.value.reason is FailureReason.NOT_FOUND
    assert "us-east5" in caught.value.message


# ------------------------------------------------------------------ embeddings, probes


async def test_embeddings_by_predict(setup: tuple[FakeVertex, FakeGoogleAuth,
                                                  VertexProvider]) -> None:
    vertex, _, provider = setup
    texts = [f"text number {i}" for i in range(260)]  # two calls of at most 250
    result = await provider.embed({"input": texts, "dimensions": 16}, EMBED, LIMITS)
    data = result.body["data"]
    assert len(data) == 260 and [d["index"] for d in data] == list(range(260))
    assert all(len(d["embedding"]) == 16 for d in data)
    assert result.body["usage"]["prompt_tokens"] == 3 * 260
    calls = [r for r in vertex.requests if r.path.endswith("text-embedding-005:predict")]
    assert sorted(len(c.body["instances"]) for c in calls) == [10, 250]
    assert calls[0].body["parameters"] == {"autoTruncate": False, "outputDimensionality": 16}
    gemini_embed = ModelConfig(id="vertex/ge", provider="vertex", name="gemini-embedding-001",
                               capabilities=frozenset({"embeddings"}))
    result = await provider.embed({"input": ["a", "b", "c"]}, gemini_embed, LIMITS)
    assert len(result.body["data"]) == 3  # one instance a call, as that model takes
    with pytest.raises(RequestError):
        await provider.embed({"input": ["a"]}, CLAUDE, LIMITS)


async def test_probes_make_one_token_calls(
        setup: tuple[FakeVertex, FakeGoogleAuth, VertexProvider]) -> None:
    vertex, _, provider = setup
    await provider.probe(CLAUDE, "models", 5, 10)
    assert vertex.requests[-1].body["max_tokens"] == 1
    await provider.probe(GEMINI, "chat", 5, 10)
    assert vertex.requests[-1].body["generationConfig"]["maxOutputTokens"] == 10
    await provider.probe(EMBED, "models", 5, 10)
    assert vertex.requests[-1].path.endswith(":predict")
    count = len(vertex.requests)
    await provider.probe(CLAUDE, "none", 5, 10)
    assert len(vertex.requests) == count


# ------------------------------------------------------------------ tokens


async def test_a_refused_token_is_replaced_and_the_call_made_again(
        setup: tuple[FakeVertex, FakeGoogleAuth, VertexProvider],
        http_client: HttpClient) -> None:
    vertex, auth, provider = setup
    clock = ManualClock()
    provider = VertexProvider(provider.config, http_client, clock=clock)
    await provider.complete(HELLO, CLAUDE, LIMITS)
    vertex.tokens.clear()  # revoked early
    result = await provider.complete(HELLO, CLAUDE, LIMITS)
    assert result.body["choices"][0]["message"]["content"] == "Hello from Claude on Vertex"
    assert vertex.refused == [auth.issued[0]] and len(auth.grants) == 2
    assert vertex.requests[-1].headers["Authorization"] == f"Bearer {auth.issued[1]}"
    # both publishers share the tokens; streams and embeddings are made again likewise
    result = await provider.complete(HELLO, GEMINI, LIMITS)
    assert vertex.requests[-1].headers["Authorization"] == f"Bearer {auth.issued[1]}"
    # (a token fetched for a refusal and refused within a minute would be the credentials')
    clock.advance(60)
    vertex.tokens.clear()
    assert text_of(await collect(provider, GEMINI)) == "Hello from Gemini on Vertex"
    clock.advance(60)
    vertex.tokens.clear()
    assert text_of(await collect(provider, CLAUDE)) == "Hello from Claude on Vertex"
    clock.advance(60)
    vertex.tokens.clear()
    result = await provider.embed({"input": ["a"]}, EMBED, LIMITS)
    assert len(result.body["data"]) == 1
    assert vertex.refused == auth.issued[:4] and len(auth.grants) == 5


async def test_a_new_token_refused_too_is_auth(
        setup: tuple[FakeVertex, FakeGoogleAuth, VertexProvider]) -> None:
    vertex, auth, provider = setup
    await provider.complete(HELLO, CLAUDE, LIMITS)
    vertex.tokens.clear()
    auth.vertex = None  # the endpoint's tokens are no longer taken
    with pytest.raises(UpstreamError) as caught:
        await provider.complete(HELLO, CLAUDE, LIMITS)
    assert caught.value.reason is FailureReason.AUTH and caught.value.status == 401
    assert vertex.refused == auth.issued[:2]  # once more with a new one, and no more
    assert auth.issued[1] not in caught.value.message
    vertex.tokens.clear()
    with pytest.raises(UpstreamError) as caught:
        await collect(provider, GEMINI)
    assert caught.value.reason is FailureReason.AUTH


async def test_token_endpoint_trouble(setup: tuple[FakeVertex, FakeGoogleAuth,
                                                   VertexProvider]) -> None:
    vertex, auth, provider = setup
    auth.fail = 503  # down: says nothing of the credentials
    with pytest.raises(UpstreamError) as caught:
        await provider.complete(HELLO, CLAUDE, LIMITS)
    assert caught.value.reason is FailureReason.CONNECTION
    assert vertex.requests == []


async def test_token_refused_is_auth(fake_vertex: Callable[..., Awaitable[FakeVertex]],
                                     fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]],
                                     http_client: HttpClient, rsa_key: ServiceKey,
                                     tmp_path: Path) -> None:
    vertex = await fake_vertex()
    auth = await fake_google_auth(modulus=rsa_key.modulus, vertex=vertex, refuse=True)
    path = tmp_path / "sa.json"
    path.write_bytes(orjson.dumps(rsa_key.account(f"{auth.url}/token")))
    cfg = ProviderConfig(name="vertex", kind="vertex", base_url=vertex.url, region=LOCATION,
                         project=PROJECT, google=read_file(str(path)))
    provider = VertexProvider(cfg, http_client, clock=ManualClock())
    with pytest.raises(UpstreamError) as caught:
        await provider.complete(HELLO, GEMINI, LIMITS)
    assert caught.value.reason is FailureReason.AUTH
    assert "invalid_grant" in caught.value.message
    assert vertex.requests == []


async def test_user_credentials_bill_their_quota_project(
        fake_vertex: Callable[..., Awaitable[FakeVertex]],
        fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]],
        http_client: HttpClient, tmp_path: Path) -> None:
    vertex = await fake_vertex()
    auth = await fake_google_auth(vertex=vertex)
    path = tmp_path / "adc.json"
    path.write_bytes(orjson.dumps({
        "type": "authorized_user", "client_id": auth.client_id,
        "client_secret": auth.client_secret, "refresh_token": auth.refresh_token,
        "token_uri": f"{auth.url}/token", "quota_project_id": PROJECT}))
    cfg = config.loads(f"""
[providers.vertex]
kind = "vertex"
region = "{LOCATION}"
base_url = "{vertex.url}/v1"
[models."vertex/flash"]
provider = "vertex"
name = "gemini-2.5-flash"
""", env={"GOOGLE_APPLICATION_CREDENTIALS": str(path)})
    assert cfg.providers["vertex"].project == PROJECT  # the quota project
    provider = make_provider(cfg.providers["vertex"], http_client)
    result = await provider.complete(HELLO, GEMINI, LIMITS)
    assert result.body["choices"][0]["message"]["content"] == "Hello from Gemini on Vertex"
    call = vertex.requests[-1]
    assert call.headers["x-goog-user-project"] == PROJECT
    assert call.headers["Authorization"] == f"Bearer {auth.issued[0]}"
    assert auth.grants[0]["grant_type"] == "refresh_token"
