"""The daemon serving OpenAI, Anthropic and Responses clients from a bedrock provider (a fake
Bedrock Runtime that verifies every signature), failing over from it, and reloading its AWS
credentials."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest

from failoverd.errors import ConfigError
from tests.fakes.bedrock import ACCESS_KEY, SECRET_KEY, FakeBedrock, fake_bedrock
from tests.test_provider_bedrock import HELLO, MODEL, TOOL

__all__ = ["fake_bedrock"]  # the fixture


def daemon_config(fake: FakeBedrock, fallback_url: str, *, window: int = 200000,
                  fallback_window: int = 200000) -> str:
    return f"""
[providers.bedrock]
kind = "bedrock"
region = "us-east-1"
base_url = "{fake.url}"
[providers.backup]
kind = "openai"
base_url = "{fallback_url}"
[models."bedrock/sonnet"]
provider = "bedrock"
name = "{MODEL.name}"
context_window = {window}
capabilities = ["tools", "vision"]
[models."backup/gpt"]
provider = "backup"
context_window = {fallback_window}
capabilities = ["tools", "vision"]
[routing]
primary = "bedrock/sonnet"
fallbacks = ["backup/gpt"]
retry_after_max = 0.2
deadline = 10
when_all_unavailable = "fail"
[probes]
kind = "none"
"""


AWS_ENV = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}


async def test_daemon_serves_openai_clients_from_bedrock_and_fails_over(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_openai: Any,
        start_daemon: Any) -> None:
    fake = await fake_bedrock()
    backup = await fake_openai()
    d = await start_daemon(daemon_config(fake, backup.url), env=AWS_ENV)
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}])
    answer = raw.parse()
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
    assert answer.choices[0].message.content == "Hello from the fake Bedrock"
    assert answer.usage is not None and answer.usage.total_tokens == 18
    assert fake.auth_failures == []

    fake.push("throttled", "throttled")  # the first attempt and its same-model retry
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-failoverd-model"] == "backup/gpt"
    assert raw.headers["x-failoverd-failover"] == "bedrock/sonnet>backup/gpt:rate_limit"
    assert len(backup.requests) == 1


async def test_daemon_streams_tool_calls_from_bedrock(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_openai: Any,
        start_daemon: Any) -> None:
    fake = await fake_bedrock(tool_calls=2)
    backup = await fake_openai()
    d = await start_daemon(daemon_config(fake, backup.url), env=AWS_ENV)
    stream = await d.openai.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[TOOL], stream=True, stream_options={"include_usage": True})
    text, calls, finish, usage = "", {}, None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for call in choice.delta.tool_calls or ():
                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += call.id or ""
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    assert text == "Let me look that up."
    assert [(c["name"], orjson.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Paris1"})]
    assert all(c["id"].startswith("tooluse_fake") for c in calls.values())
    assert finish == "tool_calls"
    assert usage is not None and usage.total_tokens == 18
    assert fake.requests[0].path.endswith("%3A0/converse-stream")
    assert backup.requests == []


async def test_daemon_fails_over_on_a_stream_exception_before_content(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_openai: Any,
        start_daemon: Any) -> None:
    fake = await fake_bedrock()
    backup = await fake_openai()
    d = await start_daemon(daemon_config(fake, backup.url), env=AWS_ENV)
    fake.push("exception_first", "exception_first")
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = [c async for c in raw.parse()]
    assert raw.headers["x-failoverd-failover"] == "bedrock/sonnet>backup/gpt:rate_limit"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def test_daemon_context_overflow_goes_to_a_larger_window(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_openai: Any,
        start_daemon: Any) -> None:
    fake = await fake_bedrock()
    backup = await fake_openai()
    d = await start_daemon(daemon_config(fake, backup.url, window=100000,
                                         fallback_window=400000), env=AWS_ENV)
    fake.push("context")
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "a long story"}])
    assert raw.headers["x-failoverd-failover"] == "bedrock/sonnet>backup/gpt:context_overflow"
    assert len(fake.requests) == 1  # no same-model retry


async def test_daemon_refuses_to_start_without_aws_credentials(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], start_daemon: Any) -> None:
    fake = await fake_bedrock()
    with pytest.raises(ConfigError) as err:
        # no source of the chain: the instance metadata service, its last resort, is off
        await start_daemon(daemon_config(fake, "http://127.0.0.1:9"),
                           env={"AWS_EC2_METADATA_DISABLED": "true"})
    assert any("AWS_ACCESS_KEY_ID" in p for p in err.value.problems)


async def test_daemon_ends_a_stream_with_an_error_after_content(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_openai: Any,
        start_daemon: Any) -> None:
    fake = await fake_bedrock()
    backup = await fake_openai()
    d = await start_daemon(daemon_config(fake, backup.url), env=AWS_ENV)
    fake.push("exception_mid")
    stream = await d.openai.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "hi"}], stream=True)
    text = ""
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            text += "".join(c.delta.content or "" for c in chunk.choices)
    assert text == "Hello from"
    assert backup.requests == []


async def test_a_reload_rereads_the_aws_credentials(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_openai: Any,
        start_daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = await fake_bedrock()
    backup = await fake_openai()
    d = await start_daemon(daemon_config(fake, backup.url), env=AWS_ENV)
    await d.openai.chat.completions.create(model="default", messages=HELLO["messages"])
    # the credentials are rotated: AWS and the daemon's environment change together
    fake.access_key, fake.secret_key = "AKIAROTATEDBEDROCK02", "rotated/Secret+Key0000"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", fake.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", fake.secret_key)
    resp = await d.http.post("/v1/reload")
    assert resp.status_code == 200, resp.text
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
    assert fake.requests[-1].headers["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIAROTATEDBEDROCK02/")
    assert fake.auth_failures == [] and backup.requests == []


async def test_anthropic_and_responses_clients_served_by_bedrock(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_openai: Any,
        start_daemon: Any) -> None:
    """The other front ends over the same adapter: an Anthropic SDK tool-use stream and a
    Responses API call."""
    fake = await fake_bedrock()
    backup = await fake_openai()
    d = await start_daemon(daemon_config(fake, backup.url), env=AWS_ENV)
    client = anthropic.AsyncAnthropic(
        api_key="unused", base_url="http://failoverd", max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=d.socket),
                                       timeout=30))
    tool = {"name": "get_weather", "description": "Weather",
            "input_schema": TOOL["function"]["parameters"]}
    async with client.messages.stream(
            model="default", max_tokens=200, tools=[tool],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "Weather in Paris?"}]) as stream:
        message = await stream.get_final_message()
    await client.close()
    assert message.stop_reason == "tool_use"
    kinds = [block.type for block in message.content]
    assert kinds == ["text", "tool_use"]
    use = message.content[1]
    assert use.type == "tool_use" and use.name == "get_weather"
    assert use.input == {"city": "Paris"}
    assert fake.requests[0].body["inferenceConfig"]["maxTokens"] == 200

    answer = await d.openai.responses.create(model="default", input="hi",
                                             instructions="be terse")
    assert answer.output_text == "Hello from the fake Bedrock"
    assert fake.requests[-1].body["system"] == [{"text": "be terse"}]
    assert backup.requests == []
