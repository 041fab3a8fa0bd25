"""BedrockProvider against a fake Bedrock Runtime speaking the real wire format (Converse JSON,
event stream frames, x-amzn-ErrorType errors) and checking every request's SigV4 signature or
API key; the bedrock configuration keys. The daemon serving clients from it: test_bedrock_e2e.py."""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from failoverd import config
from failoverd.catalog import AwsCredentials
from failoverd.config import ModelConfig, ProviderConfig
from failoverd.errors import ConfigError, TranslationError, UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import HttpClient
from failoverd.providers import make_provider
from failoverd.providers.base import AttemptLimits
from failoverd.providers.bedrock import BedrockProvider, classify_error
from failoverd.translate import bedrock as translate
from failoverd.translate.bedrock_stream import StreamTranslator
from tests.fakes.bedrock import (
    ACCESS_KEY,
    API_KEY,
    ERRORS,
    SECRET_KEY,
    FakeBedrock,
    fake_bedrock,
)
from tests.test_provider_contract import check_reuse

__all__ = ["fake_bedrock"]  # the fixture

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8/5+hHgAHggJ/"
       "PchI7wAAAABJRU5ErkJggg==")
MODEL = ModelConfig(id="bedrock/sonnet", provider="bedrock",
                    name="anthropic.claude-3-5-sonnet-20240620-v1:0")
LIMITS = AttemptLimits(total=5, connect=2, first_token=5, idle=5)
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}
HELLO = {"messages": [{"role": "user", "content": "Hello"}]}
SIGV4 = AwsCredentials(ACCESS_KEY, SECRET_KEY)


def provider_for(fake: FakeBedrock, client: HttpClient, *, api_key: str = "",
                 aws: AwsCredentials | None = SIGV4, **kwargs: Any) -> BedrockProvider:
    cfg = ProviderConfig(name="bedrock", kind="bedrock", base_url=fake.url, api_key=api_key,
                         region="us-east-1", aws=None if api_key else aws)
    if kwargs:
        return BedrockProvider(cfg, client, **kwargs)
    provider = make_provider(cfg, client)
    assert isinstance(provider, BedrockProvider)
    return provider


@pytest.fixture
async def setup(fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
                http_client: HttpClient) -> tuple[FakeBedrock, BedrockProvider]:
    fake = await fake_bedrock()
    return fake, provider_for(fake, http_client)


async def collect(provider: BedrockProvider, body: dict[str, Any],
                  limits: AttemptLimits = LIMITS) -> list[dict[str, Any]]:
    return [c.data async for c in provider.stream(body, MODEL, limits)]


# ------------------------------------------------------------------ non-streaming


async def test_text_answer_signed_with_sigv4(setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    fake, provider = setup
    body = {"max_tokens": 50, "temperature": 0.2, "top_p": 0.9, "stop": "END", "seed": 7,
            "messages": [{"role": "system", "content": "Be brief."}, *HELLO["messages"]]}
    result = await provider.complete(body, MODEL, LIMITS)
    assert result.body["choices"][0]["message"] == {"role": "assistant",
                                                    "content": "Hello from the fake Bedrock"}
    assert result.body["choices"][0]["finish_reason"] == "stop"
    assert result.body["usage"] == {"prompt_tokens": 12, "completion_tokens": 6,
                                    "total_tokens": 18}
    (logged,) = fake.requests
    assert fake.auth_failures == []
    # the model id's ':' percent-encoded in the path, as the AWS SDKs send it
    assert logged.path == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    assert logged.model == MODEL.name
    assert logged.headers["Authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert "/us-east-1/bedrock/aws4_request" in logged.headers["Authorization"]
    assert logged.body == {
        "messages": [{"role": "user", "content": [{"text": "Hello"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.2, "topP": 0.9,
                            "stopSequences": ["END"]}}


async def test_api_key_as_bearer(fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
                                 http_client: HttpClient) -> None:
    fake = await fake_bedrock()
    provider = provider_for(fake, http_client, api_key=API_KEY)
    await provider.complete(HELLO, MODEL, LIMITS)
    assert fake.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"
    assert "X-Amz-Date" not in fake.requests[0].headers
    wrong = provider_for(fake, http_client, api_key="ABSKwrong-key-value")
    with pytest.raises(UpstreamError) as err:
        await wrong.complete(HELLO, MODEL, LIMITS)
    assert err.value.reason is FailureReason.AUTH
    assert "ABSKwrong-key-value" not in err.value.message


async def test_session_token_is_sent_and_signed(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], http_client: HttpClient) -> None:
    fake = await fake_bedrock(session_token="FwoGZXIvYXdzEFakeSessionToken==")
    without = provider_for(fake, http_client)
    with pytest.raises(UpstreamError) as err:
        await without.complete(HELLO, MODEL, LIMITS)
    assert err.value.reason is FailureReason.AUTH
    provider = provider_for(fake, http_client, aws=AwsCredentials(
        ACCESS_KEY, SECRET_KEY, "FwoGZXIvYXdzEFakeSessionToken=="))
    await provider.complete(HELLO, MODEL, LIMITS)
    assert fake.requests[-1].headers["X-Amz-Security-Token"] == \
        "FwoGZXIvYXdzEFakeSessionToken=="


async def test_a_wrong_secret_or_a_stale_clock_is_auth(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], http_client: HttpClient) -> None:
    fake = await fake_bedrock()
    wrong = provider_for(fake, http_client, aws=AwsCredentials(ACCESS_KEY, "not-the-secret"))
    with pytest.raises(UpstreamError) as err:
        await wrong.complete(HELLO, MODEL, LIMITS)
    assert err.value.reason is FailureReason.AUTH
    assert err.value.status == 403
    # the signer's injected clock an hour behind: AWS refuses signatures older than 5 min
    stale = provider_for(fake, http_client, now=lambda: time.time() - 3600)
    with pytest.raises(UpstreamError) as err:
        await stale.complete(HELLO, MODEL, LIMITS)
    assert err.value.reason is FailureReason.AUTH
    assert fake.auth_failures == ["bad_signature", "signature_expired"]


async def test_tool_loop(setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    fake, provider = setup
    fake.tool_calls = 2
    body = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [TOOL],
            "tool_choice": "required"}
    result = await provider.complete(body, MODEL, LIMITS)
    choice = result.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me look that up."
    calls = choice["message"]["tool_calls"]
    assert [c["function"] for c in calls] == [
        {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"name": "get_weather", "arguments": '{"city":"Paris1"}'}]
    assert fake.requests[0].body["toolConfig"] == {
        "tools": [{"toolSpec": {"name": "get_weather", "description": "Weather",
                                "inputSchema": {"json": TOOL["function"]["parameters"]}}}],
        "toolChoice": {"any": {}}}
    follow = {"tools": [TOOL], "messages": [
        *body["messages"], choice["message"],
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "22C"},
        {"role": "user", "content": "Thanks"}]}
    final = await provider.complete(follow, MODEL, LIMITS)
    assert final.body["choices"][0]["message"]["content"] == "Hello from the fake Bedrock"
    sent = fake.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[2]["content"] == [
        {"toolResult": {"toolUseId": calls[0]["id"], "content": [{"json": {"temp": 21}}]}},
        {"toolResult": {"toolUseId": calls[1]["id"], "content": [{"text": "22C"}]}},
        {"text": "Thanks"}]
    assert "toolChoice" not in fake.requests[-1].body["toolConfig"]


async def test_foreign_tool_ids_and_a_history_without_tools(
        setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    """Kimi's ids are rewritten (results follow them); a history with tool calls and no tools
    declared gets stub declarations, which Converse requires."""
    fake, provider = setup
    history = {"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "functions.get_weather:0", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": ""}]}
    await provider.complete(history, MODEL, LIMITS)
    sent = fake.requests[-1].body
    use = sent["messages"][1]["content"][0]["toolUse"]
    result = sent["messages"][2]["content"][0]["toolResult"]
    assert use["toolUseId"] == result["toolUseId"] != "functions.get_weather:0"
    assert result["content"] == [{"text": "(empty)"}]
    assert [t["toolSpec"]["name"] for t in sent["toolConfig"]["tools"]] == ["get_weather"]
    with pytest.raises(TranslationError) as err:
        await provider.complete({**history, "tool_choice": "none", "tools": [TOOL]}, MODEL,
                                LIMITS)
    assert err.value.param == "tool_choice"


async def test_images(setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    fake, provider = setup
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]}
    await provider.complete(body, MODEL, LIMITS)
    assert fake.requests[0].body["messages"][0]["content"][1] == {
        "image": {"format": "png", "source": {"bytes": PNG}}}
    http_image = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}
    with pytest.raises(TranslationError):
        await provider.complete(http_image, MODEL, LIMITS)
    assert len(fake.requests) == 1


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 2}, "n"), ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logit_bias": {"1": 2}}, "logit_bias"), ({"presence_penalty": 0.5}, "presence_penalty"),
])
async def test_unexpressible_requests_never_reach_bedrock(
        setup: tuple[FakeBedrock, BedrockProvider], extra: dict[str, Any], param: str) -> None:
    fake, provider = setup
    with pytest.raises(TranslationError) as err:
        await provider.complete({**HELLO, **extra}, MODEL, LIMITS)
    assert err.value.param == param
    with pytest.raises(TranslationError):
        await collect(provider, {**HELLO, **extra})
    assert fake.requests == []


@pytest.mark.parametrize(("behaviour", "reason", "status"), [
    ("throttled", FailureReason.RATE_LIMIT, 429),  # "Too many tokens": the type decides
    ("throttled_requests", FailureReason.RATE_LIMIT, 429),
    ("quota", FailureReason.RATE_LIMIT, 400),
    ("unavailable", FailureReason.OVERLOADED, 503),
    ("not_ready", FailureReason.OVERLOADED, 429),
    ("access_denied", FailureReason.NOT_FOUND, 403),  # an IAM denial names the model
    ("no_model_access", FailureReason.NOT_FOUND, 403),  # this model only, not the account
    ("payment", FailureReason.BILLING, 403),
    ("expired", FailureReason.AUTH, 403),
    ("bad_token", FailureReason.AUTH, 403),
    ("not_found", FailureReason.NOT_FOUND, 404),
    ("bad_model_id", FailureReason.NOT_FOUND, 400),
    ("on_demand", FailureReason.NOT_FOUND, 400),
    ("context", FailureReason.CONTEXT_OVERFLOW, 400),
    ("context_tokens", FailureReason.CONTEXT_OVERFLOW, 400),
    ("no_tools", FailureReason.INCAPABLE, 400),
    ("validation", FailureReason.BAD_REQUEST, 400),
    ("model_timeout", FailureReason.TIMEOUT, 408),
    ("model_error", FailureReason.SERVER_ERROR, 424),
    ("internal", FailureReason.SERVER_ERROR, 500),
])
async def test_errors_are_classified(setup: tuple[FakeBedrock, BedrockProvider], behaviour: str,
                                     reason: FailureReason, status: int) -> None:
    fake, provider = setup
    fake.push(behaviour, behaviour)
    with pytest.raises(UpstreamError) as err:
        await provider.complete(HELLO, MODEL, LIMITS)
    assert (err.value.reason, err.value.status) == (reason, status)
    assert err.value.message.startswith(f"{ERRORS[behaviour][1]}: ")
    with pytest.raises(UpstreamError) as streamed:
        await collect(provider, HELLO)
    assert streamed.value.reason is reason


async def test_empty_and_unparsable_answers_are_invalid(
        setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    fake, provider = setup
    fake.push("empty", "invalid_json")
    for _ in range(2):
        with pytest.raises(UpstreamError) as err:
            await provider.complete(HELLO, MODEL, LIMITS)
        assert err.value.reason is FailureReason.INVALID_RESPONSE
    fake.push("max_tokens", "guardrail")
    cut_short = await provider.complete(HELLO, MODEL, LIMITS)
    assert cut_short.body["choices"][0]["finish_reason"] == "length"
    guarded = await provider.complete(HELLO, MODEL, LIMITS)
    assert guarded.body["choices"][0]["finish_reason"] == "content_filter"


async def test_probes_are_one_token_converse_calls(
        setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    fake, provider = setup
    await provider.probe(MODEL, "models", 5, 16)
    await provider.probe(MODEL, "chat", 5, 16)
    await provider.probe(MODEL, "none", 5, 16)
    assert [r.body["inferenceConfig"]["maxTokens"] for r in fake.requests] == [1, 16]
    fake.push("no_model_access")
    with pytest.raises(UpstreamError) as err:
        await provider.probe(MODEL, "models", 5, 16)
    assert err.value.reason is FailureReason.NOT_FOUND


async def test_other_endpoints_are_lacking(setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    _fake, provider = setup
    for call in (provider.embed, provider.complete_text, provider.transcribe, provider.speak):
        with pytest.raises(Exception, match="Bedrock's Converse API has no"):
            await call({}, MODEL, LIMITS)


# ------------------------------------------------------------------ configuration


def _bedrock(extra: str = "") -> str:
    return f'[providers.b]\nkind = "bedrock"\n{extra}\n[models."b/m"]\nprovider = "b"\n'


def test_config_region_base_url_and_credentials() -> None:
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_SESSION_TOKEN": "tok"}
    cfg = config.loads(_bedrock('region = "eu-central-1"'), env=env).providers["b"]
    assert cfg.base_url == "https://bedrock-runtime.eu-central-1.amazonaws.com"
    assert cfg.aws == AwsCredentials(ACCESS_KEY, SECRET_KEY, "tok")
    assert SECRET_KEY not in repr(cfg)
    keyed = config.loads(_bedrock('region = "us-east-1"\napi_key_env = "K"'),
                         env={"K": API_KEY}).providers["b"]
    assert (keyed.api_key, keyed.aws) == (API_KEY, None)


@pytest.mark.parametrize(("text", "env", "problem"), [
    ("", {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"},
     'providers.b.region: is required for kind = "bedrock"'),
    ('region = "Virginia"', {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"},
     "providers.b.region: must be an AWS region name"),
    # no source of the chain (the instance metadata service, its last resort, turned off)
    ('region = "us-east-1"', {"AWS_EC2_METADATA_DISABLED": "true"},
     "providers.b: has no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    ('region = "us-east-1"', {"AWS_ACCESS_KEY_ID": "a"},
     "providers.b: environment variable AWS_SECRET_ACCESS_KEY is not set or empty"),
    ('region = "us-east-1"\napi_key_env = "K"', {},
     "providers.b.api_key_env: environment variable K is not set or empty"),
    ('region = "us-east-1"\nheaders = { "X-Amz-Security-Token" = "t" }',
     {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"},
     "providers.b.headers.X-Amz-Security-Token: carries a credential"),
])
def test_config_problems(text: str, env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.loads(_bedrock(text), env=env)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems
    assert len(err.value.problems) == 1, err.value.problems


def test_region_only_on_bedrock() -> None:
    with pytest.raises(ConfigError) as err:
        config.loads('[providers.o]\nkind = "openai"\nregion = "us-east-1"\n'
                     '[models."o/m"]\nprovider = "o"\n', env={})
    assert err.value.problems == ['providers.o.region: only valid for kind = "bedrock" or "vertex"']


# ------------------------------------------------------------------ streaming


async def test_stream_text_with_usage(setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    fake, provider = setup
    chunks = await collect(provider, {**HELLO, "stream": True})
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Hello from the fake Bedrock"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 12, "completion_tokens": 6,
                                   "total_tokens": 18}
    assert len({c["id"] for c in chunks}) == 1
    (logged,) = fake.requests
    assert logged.path.endswith("%3A0/converse-stream")
    assert logged.headers["Accept"] == "application/vnd.amazon.eventstream"
    assert fake.auth_failures == []

    usage_chunks = await collect(provider, {**HELLO, "stream_options": {"include_usage": True}})
    assert usage_chunks[-1]["choices"] == []
    assert usage_chunks[-1]["usage"]["total_tokens"] == 18
    assert "usage" not in usage_chunks[-2]
    assert usage_chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def test_stream_tool_calls(setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    fake, provider = setup
    fake.tool_calls = 2
    chunks = await collect(provider, {"messages": [{"role": "user", "content": "Weather?"}],
                                      "tools": [TOOL]})
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls: dict[int, dict[str, str]] = {}
    for delta in deltas:
        for call in delta.get("tool_calls") or ():
            entry = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.get("id") or ""
            entry["name"] += call.get("function", {}).get("name") or ""
            entry["arguments"] += call.get("function", {}).get("arguments") or ""
    assert [(c["name"], orjson.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Paris1"})]
    assert calls[0]["id"] != calls[1]["id"]
    assert "".join(d.get("content") or "" for d in deltas) == "Let me look that up."
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_stream_exception_before_content_fails_at_the_first_chunk(
        setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    fake, provider = setup
    fake.push("exception_first")
    stream = provider.stream(HELLO, MODEL, LIMITS)
    with pytest.raises(UpstreamError) as err:
        await stream.__anext__()
    assert err.value.reason is FailureReason.RATE_LIMIT
    assert err.value.status is None
    assert err.value.message.startswith("ThrottlingException: ")


@pytest.mark.parametrize(("behaviour", "reason", "words"), [
    ("exception_mid", FailureReason.SERVER_ERROR, "ModelStreamErrorException"),
    ("bad_crc", FailureReason.INVALID_RESPONSE, "message CRC mismatch"),
    ("cut_stream", FailureReason.INVALID_RESPONSE, "stream cut"),
    ("no_stop", FailureReason.INVALID_RESPONSE, "before messageStop"),
])
async def test_stream_failures_after_content(setup: tuple[FakeBedrock, BedrockProvider],
                                             behaviour: str, reason: FailureReason,
                                             words: str) -> None:
    fake, provider = setup
    fake.push(behaviour)
    got: list[dict[str, Any]] = []
    with pytest.raises(UpstreamError) as err:
        async for chunk in provider.stream(HELLO, MODEL, LIMITS):
            got.append(chunk.data)
    assert err.value.reason is reason
    assert words in err.value.message
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in got).startswith(
        "Hello")
    # the adapter still works afterwards (the broken connection was not pooled)
    assert len(await collect(provider, HELLO)) > 2


async def test_stream_without_an_answer_or_first_token(
        setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    fake, provider = setup
    fake.push("empty")
    with pytest.raises(UpstreamError) as err:
        await collect(provider, HELLO)
    assert err.value.reason is FailureReason.INVALID_RESPONSE
    fake.push("stall")
    quick = AttemptLimits(total=5, connect=2, first_token=0.15, idle=5)
    with pytest.raises(UpstreamError) as err:
        await collect(provider, HELLO, quick)
    assert err.value.reason is FailureReason.TIMEOUT
    assert "no first token" in err.value.message


# ------------------------------------------------------------------ more of the edge


async def test_documents(setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    fake, provider = setup
    pdf = "data:application/pdf;base64,JVBERi0xLjQK"
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Summarise both"},
        {"type": "file", "file": {"file_data": pdf, "filename": "Q3 report.v2.pdf"}},
        {"type": "file", "file": {"file_data": pdf, "filename": "Q3 report.v2.pdf"}}]}]}
    await provider.complete(body, MODEL, LIMITS)
    blocks = fake.requests[0].body["messages"][0]["content"]
    assert blocks[1:] == [
        {"document": {"format": "pdf", "name": "Q3 report-v2",
                      "source": {"bytes": "JVBERi0xLjQK"}}},
        {"document": {"format": "pdf", "name": "Q3 report-v2 (2)",
                      "source": {"bytes": "JVBERi0xLjQK"}}}]
    zipped = {"messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_data": "data:application/zip;base64,UEsDBA=="}}]}]}
    with pytest.raises(TranslationError):
        await provider.complete(zipped, MODEL, LIMITS)


async def test_timeouts_and_refused_connections(
        setup: tuple[FakeBedrock, BedrockProvider], http_client: HttpClient) -> None:
    fake, provider = setup
    short = AttemptLimits(total=0.15, connect=0.15, first_token=0.15, idle=0.15)
    fake.push("hang", "hang")
    with pytest.raises(UpstreamError) as err:
        await provider.complete(HELLO, MODEL, short)
    assert err.value.reason is FailureReason.TIMEOUT
    with pytest.raises(UpstreamError) as err:
        await collect(provider, HELLO, short)
    assert err.value.reason is FailureReason.TIMEOUT
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        cfg = ProviderConfig(name="bedrock", kind="bedrock",
                             base_url=f"http://127.0.0.1:{s.getsockname()[1]}",
                             region="us-east-1", aws=SIGV4)
        refused = make_provider(cfg, http_client)
        for call in (refused.complete(HELLO, MODEL, LIMITS), collect(refused, HELLO),
                     refused.probe(MODEL, "models", 1, 16)):
            with pytest.raises(UpstreamError) as err:
                await call
            assert err.value.reason is FailureReason.CONNECTION


async def test_connections_are_reused_and_a_timed_out_one_is_not(
        setup: tuple[FakeBedrock, BedrockProvider], http_client: HttpClient) -> None:
    fake, provider = setup
    await check_reuse(fake, provider, MODEL, http_client, "throttled")


async def test_an_inference_profile_arn_as_the_model(
        setup: tuple[FakeBedrock, BedrockProvider]) -> None:
    """An ARN's ':' and '/' are percent-encoded in the path (and signed double-encoded)."""
    fake, provider = setup
    arn = ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
           "us.anthropic.claude-3-5-sonnet-20241022-v2:0")
    model = ModelConfig(id="bedrock/profile", provider="bedrock", name=arn)
    await provider.complete(HELLO, model, LIMITS)
    assert fake.requests[0].path == (
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
        "us.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse")
    assert fake.requests[0].model == arn
    assert fake.auth_failures == []


@pytest.mark.parametrize(("status", "kind", "message", "reason"), [
    (413, "", "Request Entity Too Large", FailureReason.INCAPABLE),
    (None, "throttlingException", "Too many tokens", FailureReason.RATE_LIMIT),
    (None, "validationException", "Input is too long for requested model.",
     FailureReason.CONTEXT_OVERFLOW),
    (None, "", "something odd", FailureReason.SERVER_ERROR),
    (502, "", "Bad Gateway", FailureReason.SERVER_ERROR),
    (403, "", "Forbidden", FailureReason.AUTH),
])
def test_classification_without_a_body_type(status: int | None, kind: str, message: str,
                                            reason: FailureReason) -> None:
    assert classify_error(status, message, kind) is reason


def test_reasoning_and_stop_reasons_in_answers() -> None:
    """Reasoning (DeepSeek-R1's, Claude's thinking) as reasoning_content, and the stop reasons
    and cache usage of answers, without the network."""
    answer = translate.to_completion({
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"reasoningText": {"text": "Think.", "signature": "sig"}}},
            {"text": "Done."}]}},
        "stopReason": "model_context_window_exceeded",
        "usage": {"inputTokens": 5, "outputTokens": 3, "totalTokens": 108,
                  "cacheReadInputTokens": 60, "cacheWriteInputTokens": 40}}, "m")
    message = answer["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == ("Done.", "Think.")
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 105, "completion_tokens": 3,
                               "total_tokens": 108, "prompt_tokens_details": {
                                   "cached_tokens": 60}, "cache_creation_input_tokens": 40}
    stream = StreamTranslator("m")
    chunks = [*stream.feed("messageStart", {"role": "assistant"})]
    assert not stream.content_started
    chunks += stream.feed("contentBlockDelta", {"contentBlockIndex": 0, "delta": {
        "reasoningContent": {"text": "Hmm"}}})
    chunks += stream.feed("contentBlockDelta", {"contentBlockIndex": 0, "delta": {
        "reasoningContent": {"signature": "sig"}}})
    assert stream.content_started
    chunks += stream.feed("contentBlockDelta", {"contentBlockIndex": 1, "delta": {
        "text": "Yes"}})
    chunks += stream.feed("messageStop", {"stopReason": "guardrail_intervened"})
    chunks += stream.feed("metadata", {"usage": {"inputTokens": 1, "outputTokens": 2,
                                                 "totalTokens": 3}})
    chunks += stream.finish()
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[:3] == [{"role": "assistant", "content": ""}, {"reasoning_content": "Hmm"},
                          {"content": "Yes"}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert chunks[-1]["usage"]["total_tokens"] == 3


def test_request_translation_details() -> None:
    """Without the network: the knobs, turn merging and the refusals of to_request."""
    request = translate.to_request({
        "temperature": 1.5, "max_tokens": 9000, "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "  "},
                     {"role": "developer", "content": [{"type": "text", "text": "rule"}]},
                     {"role": "user", "content": [{"type": "text", "text": "b"}]}]},
        max_output_tokens=4096)
    assert request["inferenceConfig"] == {"maxTokens": 4096, "temperature": 1.0}
    assert request["messages"] == [{"role": "user", "content": [{"text": "a"}, {"text": "b"}]}]
    assert request["system"] == [{"text": "rule"}]
    assert request["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}
    assert translate.to_request({"messages": [{"role": "system", "content": "only"}]},
                                max_output_tokens=100) == {
        "messages": [{"role": "user", "content": [{"text": "only"}]}],
        "inferenceConfig": {"maxTokens": 100}}
    with pytest.raises(TranslationError) as err:
        translate.to_request({"messages": [{"role": "assistant", "content": "Hi!"},
                                           {"role": "user", "content": "hello"}]})
    assert err.value.param == "messages"
