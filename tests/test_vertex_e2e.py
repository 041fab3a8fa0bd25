"""The daemon serving OpenAI and Anthropic SDK clients from a vertex provider (a fake Vertex AI
with Claude and Gemini models and a fake token endpoint that checks the service account's
signature), failing over from a Vertex quota error, and fetching a new token after a 401."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fakes.openai import FakeOpenAI
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
from tests.test_sdk_clients import anthropic_client

__all__ = ["fake_google_auth", "fake_vertex", "rsa_key"]  # the fixtures

Setup = tuple[FakeVertex, FakeGoogleAuth, FakeOpenAI, Any]
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}


def daemon_config(vertex: FakeVertex, backup: FakeOpenAI, credentials: str) -> str:
    return f"""
[providers.vertex]
kind = "vertex"
region = "{LOCATION}"
base_url = "{vertex.url}"
{credentials}
[providers.backup]
kind = "openai"
base_url = "{backup.url}"
[models."vertex/sonnet"]
provider = "vertex"
name = "claude-sonnet-4-5@20250929"
capabilities = ["tools", "vision"]
max_output_tokens = 2000
[models."vertex/flash"]
provider = "vertex"
name = "gemini-2.5-flash"
capabilities = ["tools", "vision"]
[models."backup/gpt"]
provider = "backup"
capabilities = ["tools", "vision"]
[routing]
primary = "vertex/sonnet"
fallbacks = ["vertex/flash", "backup/gpt"]
retry_after_max = 0.2
deadline = 10
when_all_unavailable = "fail"
[probes]
kind = "none"
"""


async def started(fake_vertex: Callable[..., Awaitable[FakeVertex]],
                  fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]],
                  fake_openai: Any, start_daemon: Any, rsa_key: ServiceKey,
                  tmp_path: Path) -> Setup:
    vertex = await fake_vertex()
    auth = await fake_google_auth(modulus=rsa_key.modulus, vertex=vertex)
    backup = await fake_openai()
    path = tmp_path / "sa.json"
    path.write_bytes(orjson.dumps(rsa_key.account(f"{auth.url}/token")))
    d = await start_daemon(daemon_config(vertex, backup,
                                         f'google_credentials_file = "{path}"'), env={})
    return vertex, auth, backup, d


@pytest.fixture
async def vertex_setup(fake_vertex: Callable[..., Awaitable[FakeVertex]],
                       fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]],
                       fake_openai: Any, start_daemon: Any, rsa_key: ServiceKey,
                       tmp_path: Path) -> Setup:
    """`started`'s fake Vertex, token endpoint, backup and daemon."""
    return await started(fake_vertex, fake_google_auth, fake_openai, start_daemon, rsa_key,
                         tmp_path)


async def test_openai_clients_served_by_claude_and_gemini_on_vertex(
        vertex_setup: Setup) -> None:
    vertex, auth, backup, d = vertex_setup
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-failoverd-model"] == "vertex/sonnet"
    assert raw.parse().choices[0].message.content == "Hello from Claude on Vertex"
    call = vertex.calls("anthropic")[-1]
    assert call.path.endswith(f"/projects/{PROJECT}/locations/{LOCATION}/publishers/anthropic/"
                              "models/claude-sonnet-4-5@20250929:rawPredict")
    assert call.body["max_tokens"] == 2000 and "model" not in call.body

    stream = await d.openai.chat.completions.create(
        model="vertex/flash", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    text, usage = "", None
    async for chunk in stream:
        usage = chunk.usage or usage
        text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text == "Hello from Gemini on Vertex"
    assert usage is not None and usage.total_tokens == 15
    assert vertex.calls("google")[-1].path.endswith("gemini-2.5-flash:streamGenerateContent")
    # one signed grant served both publishers
    assert len(auth.grants) == 1 and vertex.refused == [] and backup.requests == []


async def test_anthropic_sdk_streams_tool_use_from_claude_on_vertex(
        vertex_setup: Setup) -> None:
    vertex, _, backup, d = vertex_setup
    client = anthropic_client(d.socket)
    tool = {"name": "get_weather", "description": "Weather",
            "input_schema": TOOL["function"]["parameters"]}
    async with client.messages.stream(
            model="default", max_tokens=300, tools=[tool],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "Weather in Paris?"}]) as stream:
        message = await stream.get_final_message()
    await client.close()
    assert message.stop_reason == "tool_use"
    assert [block.type for block in message.content] == ["text", "tool_use"]
    use = message.content[1]
    assert use.type == "tool_use" and use.input == {"city": "Paris", "days": 2}
    call = vertex.calls("anthropic")[-1]
    assert call.path.endswith(":streamRawPredict")
    assert call.body["stream"] is True and call.body["anthropic_version"] == "vertex-2023-10-16"
    assert call.body["tools"][0]["name"] == "get_weather" and call.body["max_tokens"] == 300
    assert backup.requests == []


async def test_a_vertex_quota_error_fails_over(
        vertex_setup: Setup) -> None:
    vertex, _, backup, d = vertex_setup
    # Claude's quota (and its same-model retry), then Gemini's, as Vertex words them
    vertex.push("rate_limit", "rate_limit", "rate_limit_list", "rate_limit_list")
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-failoverd-model"] == "backup/gpt"
    assert raw.headers["x-failoverd-failover"] == (
        "vertex/sonnet>vertex/flash:rate_limit,vertex/flash>backup/gpt:rate_limit")
    assert len(backup.requests) == 1


async def test_claudes_overload_on_vertex_fails_over_before_the_first_chunk(
        vertex_setup: Setup) -> None:
    vertex, _, backup, d = vertex_setup
    # Claude's own 529 (and its same-model retry), streamed to an OpenAI client: Gemini on
    # Vertex takes it
    vertex.push("overloaded", "overloaded")
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = [c async for c in raw.parse()]
    assert raw.headers["x-failoverd-model"] == "vertex/flash"
    assert raw.headers["x-failoverd-failover"] == "vertex/sonnet>vertex/flash:overloaded"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Hello from Gemini on Vertex"
    assert [c.path.rsplit(":", 1)[1] for c in vertex.requests] == [
        "streamRawPredict", "streamRawPredict", "streamGenerateContent"]
    assert backup.requests == []


async def test_a_401_makes_the_next_call_fetch_a_new_token(
        vertex_setup: Setup) -> None:
    vertex, auth, backup, d = vertex_setup
    await d.openai.chat.completions.create(model="default",
                                           messages=[{"role": "user", "content": "hi"}])
    vertex.tokens.clear()  # the token is revoked before it expires
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}])
    # the refusal is no auth block of the provider: the call is made again with a new token
    assert raw.headers["x-failoverd-model"] == "vertex/sonnet"
    assert "x-failoverd-failover" not in raw.headers
    assert vertex.refused == [auth.issued[0]]
    assert len(auth.grants) == 2
    assert vertex.requests[-1].headers["Authorization"] == f"Bearer {auth.issued[1]}"
    status = (await d.http.get("/status")).json()
    text = orjson.dumps(status).decode()
    assert auth.issued[0] not in text and auth.issued[1] not in text
    assert backup.requests == []


async def test_tokens_from_the_metadata_server(
        fake_vertex: Callable[..., Awaitable[FakeVertex]],
        fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]], fake_openai: Any,
        start_daemon: Any) -> None:
    vertex = await fake_vertex()
    auth = await fake_google_auth(vertex=vertex)
    backup = await fake_openai()
    d = await start_daemon(daemon_config(vertex, backup, f'project = "{PROJECT}"'),
                           env={"GCE_METADATA_HOST": auth.host})
    answer = await d.openai.chat.completions.create(
        model="vertex/flash", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "Hello from Gemini on Vertex"
    assert auth.metadata_calls == 1 and auth.grants == []


async def test_a_401_in_a_stream_to_an_anthropic_client_is_made_again_with_a_new_token(
        vertex_setup: Setup) -> None:
    vertex, auth, backup, d = vertex_setup
    await d.openai.chat.completions.create(model="default",
                                           messages=[{"role": "user", "content": "hi"}])
    vertex.tokens.clear()
    client = anthropic_client(d.socket)
    async with client.messages.stream(model="default", max_tokens=100, messages=[
            {"role": "user", "content": "hi"}]) as stream:
        message = await stream.get_final_message()
    await client.close()
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from Claude on Vertex"
    assert vertex.refused == [auth.issued[0]] and len(auth.grants) == 2
    assert [c.path.rsplit(":", 1)[1] for c in vertex.requests[1:]] == [
        "streamRawPredict", "streamRawPredict"]
    assert backup.requests == []


async def test_anthropic_token_counts_come_from_claude_on_vertex(
        vertex_setup: Setup) -> None:
    """POST /v1/messages/count_tokens for a Claude model on Vertex is Vertex's own count
    (count-tokens:rawPredict, the model in the body with Vertex's version, the OAuth token);
    for a Gemini model on Vertex, failoverd's estimate."""
    vertex, auth, _, d = vertex_setup
    client = anthropic_client(d.socket)
    try:
        messages: Any = [{"role": "user", "content": "How many tokens is this?"}]
        raw = await client.messages.with_raw_response.count_tokens(
            model="vertex/sonnet", messages=messages, system="be terse")
        assert raw.headers["x-failoverd-count"] == "upstream"
        assert raw.headers["x-failoverd-model"] == "vertex/sonnet"
        counted = orjson.dumps({"messages": messages, "system": "be terse"})
        assert (await raw.parse()).input_tokens == len(counted) // 4 + 3
        call = vertex.calls("anthropic")[-1]
        assert call.path.endswith(f"/projects/{PROJECT}/locations/{LOCATION}/publishers/"
                                  "anthropic/models/count-tokens:rawPredict")
        assert call.body == {"messages": messages, "system": "be terse",
                             "model": "claude-sonnet-4-5@20250929",
                             "anthropic_version": "vertex-2023-10-16"}
        assert call.headers["Authorization"].startswith("Bearer ")
        # a 401 for a stale token: a new one, and the count is still Vertex's
        vertex.tokens.clear()
        raw = await client.messages.with_raw_response.count_tokens(
            model="vertex/sonnet", messages=messages)
        assert raw.headers["x-failoverd-count"] == "upstream"
        assert len(auth.grants) == 2
        calls = len(vertex.requests)
        raw = await client.messages.with_raw_response.count_tokens(
            model="vertex/flash", messages=messages)
        assert raw.headers["x-failoverd-count"] == "estimate"
        assert len(vertex.requests) == calls  # Gemini has no Anthropic count: not asked
    finally:
        await client.close()


async def test_model_garden_models_by_the_openai_compatible_endpoint(
        fake_vertex: Callable[..., Awaitable[FakeVertex]],
        fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]], fake_openai: Any,
        start_daemon: Any, rsa_key: ServiceKey, tmp_path: Path) -> None:
    """A model named with its publisher (meta/llama-...-maas) goes to Vertex's OpenAI-compatible
    endpoint with the OAuth token, plain and streamed; Vertex's Google-shaped quota error
    fails over; a 401 for a stale token is made again with a new one."""
    vertex = await fake_vertex()
    auth = await fake_google_auth(modulus=rsa_key.modulus, vertex=vertex)
    backup = await fake_openai(reply="from the backup")
    path = tmp_path / "sa.json"
    path.write_bytes(orjson.dumps(rsa_key.account(f"{auth.url}/token")))
    text = daemon_config(vertex, backup, f'google_credentials_file = "{path}"').replace(
        'name = "gemini-2.5-flash"', 'name = "meta/llama-3.3-70b-instruct-maas"')
    d = await start_daemon(text, env={})
    hi = [{"role": "user", "content": "hi"}]
    raw = await d.openai.chat.completions.with_raw_response.create(model="vertex/flash",
                                                                    messages=hi)
    assert raw.headers["x-failoverd-model"] == "vertex/flash"
    assert raw.parse().choices[0].message.content == "Hello from Llama on Vertex"
    call = vertex.requests[-1]
    assert call.path == (f"/v1/projects/{PROJECT}/locations/{LOCATION}/endpoints/openapi/"
                         "chat/completions")
    assert call.body["model"] == "meta/llama-3.3-70b-instruct-maas"
    assert call.headers["Authorization"].startswith("Bearer ")
    stream = await d.openai.chat.completions.create(model="vertex/flash", messages=hi,
                                                    stream=True)
    streamed = ""
    async for chunk in stream:
        streamed += "".join(c.delta.content or "" for c in chunk.choices)
    assert streamed == "Hello from Llama on Vertex"
    # a stale token: Vertex's 401, a new token, the same model serves
    vertex.tokens.clear()
    raw = await d.openai.chat.completions.with_raw_response.create(model="vertex/flash",
                                                                    messages=hi)
    assert raw.headers["x-failoverd-model"] == "vertex/flash" and len(auth.grants) == 2
    # Vertex's quota error (Google's shape) is a rate limit: the request fails over
    vertex.push("rate_limit")
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="vertex/flash", messages=hi, extra_headers={"x-failoverd-session": "q"})
    assert raw.headers["x-failoverd-model"] == "vertex/sonnet"  # the default chain's next
    assert raw.headers["x-failoverd-failover"] == "vertex/flash>vertex/sonnet:rate_limit"
    # no embeddings for it here
    resp = await d.http.post("/v1/embeddings", json={"model": "vertex/flash", "input": "x"})
    assert resp.status_code == 400
