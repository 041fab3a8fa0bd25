"""A review of the bedrock adapter against Bedrock's real wire behaviour: what its models
refuse (a prefill's trailing whitespace, temperature with top_p, a toolChoice), how it streams
many calls and calls without arguments, idle streams and a client leaving mid-stream, cache
usage towards OpenAI and Anthropic clients, and how real Bedrock error messages are
classified (the account refused, a maxTokens over the model's limit, a Marketplace denial, an
IAM denial of one model). The fake Bedrock Runtime and the daemon are real servers
(tests/fakes/bedrock.py, the start_daemon fixture)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from aiohttp import web

from failoverd.config import ModelConfig
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.providers.bedrock import BedrockProvider, classify_error
from tests.fakes.bedrock import ERRORS, FakeBedrock, event, fake_bedrock
from tests.test_bedrock_e2e import AWS_ENV, daemon_config
from tests.test_provider_bedrock import HELLO, LIMITS, MODEL, TOOL, collect, provider_for

__all__ = ["fake_bedrock"]  # the fixture

ERRORS_MARKETPLACE = orjson.loads(ERRORS["marketplace"][2])["message"]

SONNET_45 = ModelConfig(id="bedrock/sonnet45", provider="bedrock",
                        name="us.anthropic.claude-sonnet-4-5-20250929-v1:0")
NO_ARGS = {"type": "function", "function": {"name": "get_time", "description": "Now",
                                            "parameters": {"type": "object",
                                                           "properties": {}}}}


def calls_of(chunks: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """The tool calls a stream's chunks add up to, by index."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for call in choice["delta"].get("tool_calls") or ():
                entry = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                entry["id"] += call.get("id") or ""
                entry["name"] += call.get("function", {}).get("name") or ""
                entry["arguments"] += call.get("function", {}).get("arguments") or ""
    return calls


@pytest.fixture
async def setup(fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
                http_client: Any) -> tuple[FakeBedrock, BedrockProvider]:
    fake = await fake_bedrock()
    return fake, provider_for(fake, http_client)


# ------------------------------------------------------------------ tool calls


async def test_a_streamed_call_without_arguments_has_the_empty_object(
        setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    """Claude's call of a parameterless tool streams through Converse as one empty input
    delta: OpenAI clients parse the arguments, so they must be "{}" (as complete() gives
    them), not ""."""
    fake, provider = setup
    fake.tool_input = {}
    body = {"messages": [{"role": "user", "content": "Time?"}], "tools": [NO_ARGS]}
    answer = await provider.complete(body, MODEL, LIMITS)
    assert answer.body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] \
        == "{}"
    chunks = await collect(provider, body)
    (call,) = calls_of(chunks).values()
    assert call["name"] == "get_time"
    assert orjson.loads(call["arguments"]) == {}


async def test_many_calls_with_arguments_in_many_pieces(
        setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    """Three calls in one turn, each with a large input streamed in many deltas."""
    fake, provider = setup
    big = {"text": "x" * 20000, "n": list(range(200))}
    fake.tool_calls, fake.tool_input = 3, big
    chunks = await collect(provider, {"messages": [{"role": "user", "content": "Go"}],
                                      "tools": [TOOL]})
    calls = calls_of(chunks)
    assert sorted(calls) == [0, 1, 2]
    assert all(orjson.loads(c["arguments"]) == big for c in calls.values())
    assert len({c["id"] for c in calls.values()}) == 3
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_parallel_results_go_back_in_one_user_turn(
        setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    fake, provider = setup
    history = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_b", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"t": 20}'},
        {"role": "tool", "tool_call_id": "call_b", "content": "sunny"},
        {"role": "user", "content": "And tomorrow?"}]
    await provider.complete({"messages": history, "tools": [TOOL]}, MODEL, LIMITS)
    sent = fake.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == [
        {"toolUse": {"toolUseId": "call_a", "name": "get_weather", "input": {"city": "Paris"}}},
        {"toolUse": {"toolUseId": "call_b", "name": "get_weather", "input": {"city": "Rome"}}}]
    assert sent[2]["content"] == [
        {"toolResult": {"toolUseId": "call_a", "content": [{"json": {"t": 20}}]}},
        {"toolResult": {"toolUseId": "call_b", "content": [{"text": "sunny"}]}},
        {"text": "And tomorrow?"}]


async def test_tool_choice_auto_is_converses_default_and_not_sent(
        setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    """Only some models take a toolChoice at all (Claude, Mistral Large, Nova); "auto" is
    Converse's default, so a client's explicit "auto" must not make Llama incapable."""
    fake, provider = setup
    llama = ModelConfig(id="bedrock/llama", provider="bedrock",
                        name="us.meta.llama3-3-70b-instruct-v1:0")
    body = {"messages": [{"role": "user", "content": "Weather?"}], "tools": [TOOL],
            "tool_choice": "auto"}
    answer = await provider.complete(body, llama, LIMITS)
    assert answer.body["choices"][0]["finish_reason"] == "tool_calls"
    assert "toolChoice" not in fake.requests[-1].body["toolConfig"]
    await provider.complete({**body, "tool_choice": "required"}, MODEL, LIMITS)
    assert fake.requests[-1].body["toolConfig"]["toolChoice"] == {"any": {}}


# ------------------------------------------------------------------ what Claude refuses


async def test_a_prefill_ending_in_whitespace_is_trimmed(
        setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    """Claude refuses a final assistant turn that ends in whitespace (a 400 that would reach
    the client as its own mistake); the Anthropic adapter trims it, so must this one."""
    fake, provider = setup
    body = {"messages": [{"role": "user", "content": "Give me JSON"},
                         {"role": "assistant", "content": "Here it is: "}]}
    answer = await provider.complete(body, MODEL, LIMITS)
    assert answer.body["choices"][0]["message"]["content"] == "Hello from the fake Bedrock"
    assert fake.requests[-1].body["messages"][-1] == {
        "role": "assistant", "content": [{"text": "Here it is:"}]}
    # a prefill of whitespace only is no prefill
    body["messages"][-1]["content"] = "  \n"
    await provider.complete(body, MODEL, LIMITS)
    assert [m["role"] for m in fake.requests[-1].body["messages"]] == ["user"]


async def test_temperature_and_top_p_towards_claude_sonnet_4_5(
        setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    """Claude Sonnet / Haiku 4.5 and Opus 4.1 on take temperature or top_p, not both (the
    Anthropic adapter sends the temperature alone); other models get both."""
    fake, provider = setup
    body = {**HELLO, "temperature": 0.7, "top_p": 0.9}
    answer = await provider.complete(body, SONNET_45, LIMITS)
    assert answer.body["choices"][0]["message"]["content"] == "Hello from the fake Bedrock"
    assert fake.requests[-1].body["inferenceConfig"] == {"temperature": 0.7}
    await provider.complete({**HELLO, "top_p": 0.9}, SONNET_45, LIMITS)
    assert fake.requests[-1].body["inferenceConfig"] == {"topP": 0.9}
    await provider.complete(body, MODEL, LIMITS)  # Claude 3.5 Sonnet takes both
    assert fake.requests[-1].body["inferenceConfig"] == {"temperature": 0.7, "topP": 0.9}


# ------------------------------------------------------------------ timeouts


async def test_idle_stream_after_content_is_a_timeout(http_client: Any) -> None:
    fake = await StallingBedrock().start()
    try:
        provider = provider_for(fake, http_client)
        got: list[dict[str, Any]] = []
        limits = type(LIMITS)(total=5, connect=2, first_token=5, idle=0.2)
        with pytest.raises(UpstreamError) as err:
            async for chunk in provider.stream(HELLO, MODEL, limits):
                got.append(chunk.data)
        assert err.value.reason is FailureReason.TIMEOUT
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in got) == "Hi"
        await asyncio.wait_for(fake.gone.wait(), 5)  # the upstream connection was closed
    finally:
        await fake.close()


# ------------------------------------------------------------------ the daemon


@dataclass
class StallingBedrock(FakeBedrock):
    """Streams messageStart and a first word, then nothing; notices when dropped."""

    gone: asyncio.Event = field(default_factory=asyncio.Event, kw_only=True)
    handler_cancellation = True

    async def _stream(self, request: web.Request, content: list[dict[str, Any]], stop: str,
                      behaviour: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={
            "Content-Type": "application/vnd.amazon.eventstream"})
        await resp.prepare(request)
        await resp.write(event("messageStart", {"role": "assistant"}))
        await resp.write(event("contentBlockDelta", {"contentBlockIndex": 0,
                                                     "delta": {"text": "Hi"}}))
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.gone.set()
            raise
        return resp


async def test_a_client_leaving_mid_stream_closes_the_bedrock_connection(
        fake_openai: Any, start_daemon: Any) -> None:
    fake = await StallingBedrock().start()
    try:
        backup = await fake_openai()
        d = await start_daemon(daemon_config(fake, backup.url), env=AWS_ENV)
        reader, writer = await asyncio.open_unix_connection(d.socket)
        data = orjson.dumps({"model": "default", "stream": True, **HELLO})
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: failoverd\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await writer.drain()
        async with asyncio.timeout(5):
            while b'"Hi"' not in await reader.readline():
                pass
        writer.close()
        await asyncio.wait_for(fake.gone.wait(), 5)
        assert backup.requests == []
    finally:
        await fake.close()


async def test_anthropic_clients_get_a_parameterless_call_from_bedrock(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_openai: Any,
        start_daemon: Any) -> None:
    """An Anthropic SDK stream (thinking asked for, cache_control on the system prompt) served
    by Bedrock: the call's input is {} and Converse gets no cache_control."""
    fake = await fake_bedrock(tool_input={})
    backup = await fake_openai()
    reasoning = daemon_config(fake, backup.url).replace(
        'capabilities = ["tools", "vision"]', 'capabilities = ["tools", "vision", "reasoning"]')
    d = await start_daemon(reasoning, env=AWS_ENV)
    client = anthropic.AsyncAnthropic(
        api_key="unused", base_url="http://failoverd", max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=d.socket),
                                       timeout=30))
    tool = {"name": "get_time", "description": "Now",
            "input_schema": {"type": "object", "properties": {}}}
    try:
        async with client.messages.stream(
                model="default", max_tokens=8000, tools=[tool],  # type: ignore[list-item]
                thinking={"type": "enabled", "budget_tokens": 2048},
                system=[{"type": "text", "text": "Be exact.",
                         "cache_control": {"type": "ephemeral"}}],
                messages=[{"role": "user", "content": "Time?"}]) as stream:
            message = await stream.get_final_message()
    finally:
        await client.close()
    use = message.content[-1]
    assert use.type == "tool_use" and use.name == "get_time"
    assert use.input == {}
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 6)
    sent = fake.requests[-1].body
    assert sent["system"] == [{"text": "Be exact."}]
    assert "cache_control" not in orjson.dumps(sent).decode()
    assert backup.requests == []


async def test_cache_usage_reaches_openai_and_anthropic_clients(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_openai: Any,
        start_daemon: Any) -> None:
    """Converse's inputTokens leave out the cache reads and writes (as Anthropic's
    input_tokens do): an OpenAI client's prompt_tokens count them all, an Anthropic client
    gets the three apart again, streamed or not."""
    fake = await fake_bedrock(usage={"inputTokens": 10, "outputTokens": 6, "totalTokens": 516,
                                     "cacheReadInputTokens": 400,
                                     "cacheWriteInputTokens": 100})
    backup = await fake_openai()
    d = await start_daemon(daemon_config(fake, backup.url), env=AWS_ENV)
    stream = await d.openai.chat.completions.create(
        model="default", messages=HELLO["messages"], stream=True,
        stream_options={"include_usage": True})
    usage = [c.usage async for c in stream if c.usage is not None]
    assert [u.prompt_tokens for u in usage] == [510]
    assert usage[0].completion_tokens == 6 and usage[0].total_tokens == 516
    assert usage[0].prompt_tokens_details is not None
    assert usage[0].prompt_tokens_details.cached_tokens == 400
    for streamed in (False, True):
        resp = await d.http.post("/v1/messages", json={
            "model": "default", "max_tokens": 100, "stream": streamed,
            "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status_code == 200, resp.text
        if streamed:
            events = [orjson.loads(line[6:]) for line in resp.text.splitlines()
                      if line.startswith("data: ")]
            got: dict[str, Any] = {}
            for e in events:
                got.update((e.get("message") or {}).get("usage") or {})
                got.update(e.get("usage") or {})
        else:
            got = resp.json()["usage"]
        assert (got["input_tokens"], got["cache_read_input_tokens"],
                got["cache_creation_input_tokens"], got["output_tokens"]) == (10, 400, 100, 6)
    assert backup.requests == []


# ------------------------------------------------------------------ classification


def two_models(fake: FakeBedrock, fallback_url: str, primary: str = "bedrock/nova") -> str:
    """Nova and Claude on one Bedrock provider (`primary` first, then the other), an OpenAI
    backup last."""
    other = "bedrock/sonnet" if primary == "bedrock/nova" else "bedrock/nova"
    return f"""
[providers.bedrock]
kind = "bedrock"
region = "us-east-1"
base_url = "{fake.url}"
[providers.backup]
kind = "openai"
base_url = "{fallback_url}"
[models."bedrock/nova"]
provider = "bedrock"
name = "us.amazon.nova-pro-v1:0"
[models."bedrock/sonnet"]
provider = "bedrock"
name = "{MODEL.name}"
[models."backup/gpt"]
provider = "backup"
[routing]
primary = "{primary}"
fallbacks = ["{other}", "backup/gpt"]
retry_after_max = 0.2
deadline = 10
when_all_unavailable = "fail"
[probes]
kind = "none"
"""


async def test_operation_not_allowed_is_the_accounts_and_fails_over(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_openai: Any,
        start_daemon: Any) -> None:
    """"ValidationException: Operation not allowed" is Bedrock refusing the account (not yet
    verified, or blocked), whatever the request: not the client's 400 to get, but a reason to
    leave the provider, as for an auth failure."""
    fake = await fake_bedrock()
    backup = await fake_openai()
    d = await start_daemon(two_models(fake, backup.url), env=AWS_ENV)
    fake.push("not_allowed")
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-model"] == "backup/gpt"
    assert raw.headers["x-failoverd-failover"].startswith("bedrock/nova>bedrock/sonnet:auth")
    assert len(fake.requests) == 1  # Claude, on the same account, was not called


async def test_an_iam_denial_for_one_model_leaves_the_others(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_openai: Any,
        start_daemon: Any) -> None:
    fake = await fake_bedrock()
    backup = await fake_openai()
    d = await start_daemon(two_models(fake, backup.url), env=AWS_ENV)
    fake.push("access_denied")  # the policy allows Claude, not Nova
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"


@pytest.mark.parametrize(("message", "kind", "reason"), [
    # Bedrock's own words, and Claude's passed on: another model (or a smaller max_tokens)
    # may take it, as for the Anthropic adapter
    ("The maximum tokens you requested exceeds the model limit of 4096. Try again with a "
     "maximum tokens value that is lower than 4096.", "ValidationException",
     FailureReason.INCAPABLE),
    ("The model returned the following errors: max_tokens: 100000 > 64000, which is the "
     "maximum allowed number of output tokens for claude-sonnet-4-20250514",
     "ValidationException", FailureReason.INCAPABLE),
    # Bedrock's messages write the apostrophe either way
    ("This model doesn\u2019t support tool use in streaming mode.", "ValidationException",
     FailureReason.INCAPABLE),
    ("Operation not allowed", "ValidationException", FailureReason.AUTH),
    (ERRORS_MARKETPLACE, "AccessDeniedException", FailureReason.NOT_FOUND),
])
def test_classification_of_real_bedrock_messages(message: str, kind: str,
                                                 reason: FailureReason) -> None:
    status = 403 if kind == "AccessDeniedException" else 400
    assert classify_error(status, message, kind) is reason
    assert classify_error(None, message, kind[:1].lower() + kind[1:]) is reason  # streamed


async def test_a_max_tokens_over_the_models_limit_fails_over_as_incapable(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_openai: Any,
        start_daemon: Any) -> None:
    """Claude Code asks 32000 tokens of every model: a Bedrock model that writes fewer is no
    reason to answer the client 400 (configure its max_output_tokens to serve it)."""
    fake = await fake_bedrock()
    backup = await fake_openai()
    d = await start_daemon(daemon_config(fake, backup.url), env=AWS_ENV)
    fake.push("output_limit")
    resp = await d.http.post("/v1/messages", json={
        "model": "default", "max_tokens": 32000,
        "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-failover"] == "bedrock/sonnet>backup/gpt:incapable"
    status = (await d.http.get("/v1/status")).json()
    assert status["models"]["bedrock/sonnet"]["state"] == "closed"


async def test_a_marketplace_denial_leaves_amazons_own_models(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_openai: Any,
        start_daemon: Any) -> None:
    """Anthropic's models on Bedrock need a Marketplace subscription the role may not be
    allowed to make; Nova needs none, so only Claude is out."""
    fake = await fake_bedrock()
    backup = await fake_openai()
    d = await start_daemon(two_models(fake, backup.url, primary="bedrock/sonnet"),
                           env=AWS_ENV)
    fake.push("marketplace")
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-failover"] == "bedrock/sonnet>bedrock/nova:not_found"
    assert raw.headers["x-failoverd-model"] == "bedrock/nova"
