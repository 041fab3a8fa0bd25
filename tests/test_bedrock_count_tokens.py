"""POST /v1/messages/count_tokens for models on Amazon Bedrock: Claude's count is Bedrock's own
(CountTokens, ``POST /model/{modelId}/count-tokens`` with a ``converse`` input, signed as the
Converse calls are or with the API key), other models get failoverd's estimate. The real
anthropic SDK against the daemon, with a fake Bedrock Runtime that verifies every signature."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import httpx2
import orjson
import pytest

from failoverd.clock import ManualClock
from failoverd.providers.bedrock import UNCOUNTED_SECONDS, count_model_id
from tests.fakes.bedrock import ACCESS_KEY, API_KEY, SECRET_KEY, FakeBedrock, count_of, fake_bedrock

__all__ = ["fake_bedrock"]  # the fixture

SONNET_4 = "anthropic.claude-sonnet-4-20250514-v1:0"
NOVA = "amazon.nova-pro-v1:0"
AWS_ENV = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
KEY_ENV = "FAILOVERD_TEST_BEDROCK_KEY"
HI = [{"role": "user", "content": "How many tokens is this?"}]
TOOL = {"name": "get_weather", "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def config(fake: FakeBedrock, *, auth: str = "") -> str:
    return f"""
[providers.bedrock]
kind = "bedrock"
region = "us-east-1"
base_url = "{fake.url}"
{auth}
[models."bedrock/sonnet"]
provider = "bedrock"
name = "us.{SONNET_4}"
context_window = 200000
max_output_tokens = 32000
capabilities = ["tools", "vision", "reasoning"]
[models."bedrock/nova"]
provider = "bedrock"
name = "{NOVA}"
context_window = 300000
capabilities = ["tools", "vision"]
[routing]
primary = "bedrock/sonnet"
fallbacks = ["bedrock/nova"]
when_all_unavailable = "fail"
[probes]
kind = "none"
"""


@asynccontextmanager
async def sdk(socket: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(
        api_key="unused", base_url="http://failoverd", max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=socket),
                                       timeout=30))
    try:
        yield client
    finally:
        await client.close()


def counts(fake: FakeBedrock) -> list[Any]:
    return [r for r in fake.requests if r.path.endswith("/count-tokens")]


@pytest.mark.parametrize(("name", "counted"), [
    (SONNET_4, SONNET_4),
    (f"us.{SONNET_4}", SONNET_4),
    (f"apac.{SONNET_4}", SONNET_4),
    (f"us-gov.{SONNET_4}", SONNET_4),
    ("global.anthropic.claude-sonnet-4-5-20250929-v1:0",
     "anthropic.claude-sonnet-4-5-20250929-v1:0"),
    (f"arn:aws:bedrock:us-east-1::foundation-model/{SONNET_4}", SONNET_4),
    (f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.{SONNET_4}", SONNET_4),
    ("arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3", None),
    (NOVA, None),
    ("us.amazon.nova-pro-v1:0", None),
    ("meta.llama3-70b-instruct-v1:0", None),
])
def test_the_foundation_model_counted_for_a_model_name(name: str, counted: str | None) -> None:
    assert count_model_id(name) == counted


async def test_claude_on_bedrock_is_counted_by_count_tokens_signed_with_sigv4(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], start_daemon: Any) -> None:
    fake = await fake_bedrock()
    d = await start_daemon(config(fake), env=AWS_ENV)
    async with sdk(d.socket) as client:
        raw = await client.messages.with_raw_response.count_tokens(
            model="bedrock/sonnet", messages=HI, system="Be brief.",  # type: ignore[arg-type]
            tools=[TOOL])  # type: ignore[list-item]
        counted = await raw.parse()
    assert raw.headers["x-failoverd-count"] == "upstream"
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
    [sent] = counts(fake)
    # the foundation model's id, not the profile's, percent-encoded as the SDKs send it
    assert sent.path == "/model/anthropic.claude-sonnet-4-20250514-v1%3A0/count-tokens"
    assert sent.body == {"input": {"converse": {
        "messages": [{"role": "user", "content": [{"text": "How many tokens is this?"}]}],
        "system": [{"text": "Be brief."}],
        "toolConfig": {"tools": [{"toolSpec": {
            "name": "get_weather", "description": "Weather for a city",
            "inputSchema": {"json": TOOL["input_schema"]}}}]}}}}
    assert counted.input_tokens == count_of(sent.body["input"]["converse"])
    auth = sent.headers["Authorization"]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert "/us-east-1/bedrock/aws4_request" in auth
    assert fake.auth_failures == []  # the fake recomputed the signature and agreed
    assert len(fake.requests) == 1  # nothing was generated


async def test_the_api_key_and_thinking_go_with_the_count(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], start_daemon: Any) -> None:
    fake = await fake_bedrock()
    d = await start_daemon(config(fake, auth=f'api_key_env = "{KEY_ENV}"'),
                           env={KEY_ENV: API_KEY})
    async with sdk(d.socket) as client:
        counted = await client.messages.count_tokens(
            model="bedrock/sonnet", messages=HI,  # type: ignore[arg-type]
            thinking={"type": "enabled", "budget_tokens": 4000})
    [sent] = counts(fake)
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    converse = sent.body["input"]["converse"]
    assert converse["additionalModelRequestFields"]["thinking"]["type"] == "enabled"
    assert "inferenceConfig" not in converse  # CountTokens takes none
    assert counted.input_tokens == count_of(converse)


async def test_a_model_bedrock_counts_none_for_gets_the_estimate_without_a_call(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], start_daemon: Any) -> None:
    fake = await fake_bedrock()
    d = await start_daemon(config(fake), env=AWS_ENV)
    async with sdk(d.socket) as client:
        raw = await client.messages.with_raw_response.count_tokens(
            model="bedrock/nova", messages=HI)  # type: ignore[arg-type]
        estimate = (await raw.parse()).input_tokens
    assert raw.headers["x-failoverd-count"] == "estimate"
    assert raw.headers["x-failoverd-model"] == "bedrock/nova"
    assert 0 < estimate < 50
    assert fake.requests == []


async def test_a_failed_count_is_the_estimate_and_a_body_bedrock_refuses_the_clients_400(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], start_daemon: Any) -> None:
    fake = await fake_bedrock()
    d = await start_daemon(config(fake), env=AWS_ENV)
    async with sdk(d.socket) as client:
        fake.push("throttled")
        raw = await client.messages.with_raw_response.count_tokens(
            model="bedrock/sonnet", messages=HI)  # type: ignore[arg-type]
        assert raw.headers["x-failoverd-count"] == "estimate"
        assert 0 < (await raw.parse()).input_tokens < 50
        # the throttled count fed no breaker: the next one is Bedrock's again
        raw = await client.messages.with_raw_response.count_tokens(
            model="bedrock/sonnet", messages=HI)  # type: ignore[arg-type]
        assert raw.headers["x-failoverd-count"] == "upstream"
        # a tool name Bedrock refuses: so does the count, as a messages request would be
        with pytest.raises(anthropic.BadRequestError) as refused:
            await client.messages.count_tokens(
                model="bedrock/sonnet", messages=HI,  # type: ignore[arg-type]
                tools=[{**TOOL, "name": "get weather"}])  # type: ignore[list-item]
    assert refused.value.status_code == 400
    assert "toolSpec.name" in refused.value.message
    assert len(counts(fake)) == 3


async def test_a_model_bedrock_will_not_count_gets_estimates_for_a_while(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], start_daemon: Any) -> None:
    """"The provided model doesn't support counting tokens." (a model or region without
    CountTokens): the estimate, and no call for that model for UNCOUNTED_SECONDS."""
    fake = await fake_bedrock()
    fake.uncounted.add(SONNET_4)
    clock = ManualClock()
    d = await start_daemon(config(fake), env=AWS_ENV, clock=clock)
    async with sdk(d.socket) as client:
        for _ in range(2):
            raw = await client.messages.with_raw_response.count_tokens(
                model="bedrock/sonnet", messages=HI)  # type: ignore[arg-type]
            assert raw.headers["x-failoverd-count"] == "estimate"
        assert len(counts(fake)) == 1
        fake.uncounted.clear()  # say, the model gained it
        clock.advance(UNCOUNTED_SECONDS + 1)
        raw = await client.messages.with_raw_response.count_tokens(
            model="bedrock/sonnet", messages=HI)  # type: ignore[arg-type]
        assert raw.headers["x-failoverd-count"] == "upstream"
    assert len(counts(fake)) == 2


async def test_the_fake_counts_an_invoke_model_body_as_botocore_sends_it(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]]) -> None:
    """The other form of the input, which failoverd does not send: botocore sends the body
    blob base64-encoded (rest-json), so the fake decodes it before counting."""
    fake = await fake_bedrock()
    body = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100, "messages": HI}
    async with httpx2.AsyncClient(timeout=10) as http:
        resp = await http.post(
            f"{fake.url}/model/{SONNET_4.replace(':', '%3A')}/count-tokens",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"input": {"invokeModel": {"body": base64.b64encode(
                orjson.dumps(body)).decode()}}})
        assert resp.status_code == 200 and resp.json() == {"inputTokens": count_of(body)}
        resp = await http.post(
            f"{fake.url}/model/us.{SONNET_4.replace(':', '%3A')}/count-tokens",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"input": {"converse": {"messages": [{"role": "user",
                                                       "content": [{"text": "hi"}]}]}}})
    assert resp.status_code == 400
    assert resp.headers["x-amzn-ErrorType"].startswith("ValidationException:")
    assert resp.json() == {"message": "The provided model doesn't support counting tokens."}


async def test_a_role_without_bedrock_count_tokens_gets_estimates_and_keeps_serving(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], start_daemon: Any) -> None:
    """An AccessDeniedException for bedrock:CountTokens (a role made for Converse only) is the
    count's failure, not the model's: estimates for a while, and messages still go there."""
    fake = await fake_bedrock()
    d = await start_daemon(config(fake), env=AWS_ENV, clock=ManualClock())
    fake.push("count_denied")
    async with sdk(d.socket) as client:
        for _ in range(2):
            raw = await client.messages.with_raw_response.count_tokens(
                model="bedrock/sonnet", messages=HI)  # type: ignore[arg-type]
            assert raw.headers["x-failoverd-count"] == "estimate"
        message = await client.messages.create(
            model="bedrock/sonnet", max_tokens=50, messages=HI)  # type: ignore[arg-type]
    assert message.content[0].type == "text"
    assert [r.path.rsplit("/", 1)[1] for r in fake.requests] == ["count-tokens", "converse"]
