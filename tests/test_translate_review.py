"""Review of translation fidelity and failure classification against the real providers' wire
formats: error bodies as OpenAI, Anthropic and Gemini really send them (quoted from their
answers), read by the real adapters over HTTP from a scripted upstream on 127.0.0.1, and
what the daemon does with them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from failoverd.config import ModelConfig, ProviderConfig
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import HttpClient
from failoverd.providers import make_provider
from failoverd.providers.base import AttemptLimits, Provider
from failoverd.translate import gemini
from failoverd.translate.anthropic import anthropic_to_canonical, canonical_to_anthropic
from tests.fakes.base import serve_app

LIMITS = AttemptLimits(total=5, connect=2, first_token=5, idle=5)
HELLO = {"messages": [{"role": "user", "content": "Hello"}]}


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class Upstream:
    """A real HTTP server on 127.0.0.1 answering every request with the next scripted answer
    (the last one repeats) and logging the JSON bodies it got."""

    answers: deque[Answer]
    requests: list[Any] = field(default_factory=list)
    url: str = ""

    async def _any(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.requests.append(orjson.loads(raw) if raw else None)
        answer = self.answers.popleft() if len(self.answers) > 1 else self.answers[0]
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers,
                            content_type=answer.content_type)


@pytest.fixture
async def upstream() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    runners: list[web.AppRunner] = []

    async def start(*answers: Answer) -> Upstream:
        up = Upstream(deque(answers))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", up._any)
        runner, port = await serve_app(app)
        runners.append(runner)
        up.url = f"http://127.0.0.1:{port}"
        return up

    yield start
    for runner in runners:
        await runner.cleanup()


MODELS = {
    "openai": ModelConfig(id="oa/gpt-5", provider="oa", name="gpt-5"),
    "anthropic": ModelConfig(id="an/claude", provider="an", name="claude-sonnet-4-5",
                             max_output_tokens=2000),
    "gemini": ModelConfig(id="ge/gemma", provider="ge", name="gemma-3-27b-it"),
}


def adapter(kind: str, up: Upstream, client: HttpClient) -> Provider:
    base = up.url + ("/v1" if kind == "openai" else "")
    return make_provider(ProviderConfig(name=MODELS[kind].provider, kind=kind, base_url=base,
                                        api_key="k"), client)


async def failure(provider: Provider, model: ModelConfig, *, stream: bool,
                  body: dict[str, Any] = HELLO) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        if stream:
            async for _ in provider.stream(body, model, LIMITS):
                pass
        else:
            await provider.complete(body, model, LIMITS)
    return caught.value


def openai_error(message: str, type_: str | None, code: str | None,
                 param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}})


def sse(*events: bytes) -> bytes:
    return b"".join(b"data: " + e + b"\n\n" for e in events)


# OpenAI's 429 for an account without a payment method: a plain rate limit whose text links
# to the billing page (both the current shape and the older one with no code)
RATE_LIMIT_BILLING_URL = openai_error(
    "Rate limit reached for gpt-4o-mini in organization org-test on requests per min (RPM): "
    "Limit 3, Used 3, Requested 1. Please try again in 20s. Visit "
    "https://platform.openai.com/account/rate-limits to learn more. You can increase your rate "
    "limit by adding a payment method to your account at "
    "https://platform.openai.com/account/billing.", "requests", "rate_limit_exceeded")
RATE_LIMIT_BILLING_URL_OLD = openai_error(
    "Rate limit reached for default-gpt-3.5-turbo in organization org-test on requests per "
    "min. Limit: 20 / min. Current: 30 / min. Contact support@openai.com if you continue to "
    "have issues. Please add a payment method to your account to increase your rate limit. "
    "Visit https://platform.openai.com/account/billing to add a payment method.", "requests",
    None)


@pytest.mark.parametrize("body", [RATE_LIMIT_BILLING_URL, RATE_LIMIT_BILLING_URL_OLD],
                         ids=["rate_limit_exceeded", "no_code"])
async def test_openai_rate_limit_naming_the_billing_page_is_a_rate_limit(
        upstream, http_client, body: bytes) -> None:
    """Billing would open every model of the provider for billing_open_seconds (hours) over
    a limit that lifts in 20 s."""
    up = await upstream(Answer(429, body, {"retry-after": "20"}))
    err = await failure(adapter("openai", up, http_client), MODELS["openai"], stream=False)
    assert (err.reason, err.status, err.retry_after) == (FailureReason.RATE_LIMIT, 429, 20.0)


async def test_openai_in_stream_rate_limit_naming_the_billing_page_is_a_rate_limit(
        upstream, http_client) -> None:
    up = await upstream(Answer(200, sse(RATE_LIMIT_BILLING_URL), content_type="text/event-stream"))
    err = await failure(adapter("openai", up, http_client), MODELS["openai"], stream=True)
    assert err.reason is FailureReason.RATE_LIMIT


# Anthropic refuses some outputs with a 400 invalid_request_error (and as a stream's error
# event): a content-policy refusal that another model may not make
CONTENT_FILTERING = orjson.dumps({"type": "error", "error": {
    "type": "invalid_request_error", "message": "Output blocked by content filtering policy"},
    "request_id": "req_011CZJgXycvbvFANorJwBAYE"})


async def test_anthropic_content_filtering_400_is_content_filter(upstream, http_client) -> None:
    up = await upstream(Answer(400, CONTENT_FILTERING))
    err = await failure(adapter("anthropic", up, http_client), MODELS["anthropic"],
                        stream=False)
    assert (err.reason, err.status) == (FailureReason.CONTENT_FILTER, 400)


async def test_anthropic_content_filtering_stream_error_is_content_filter(
        upstream, http_client) -> None:
    start = orjson.dumps({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1}}})
    body = (b"event: message_start\ndata: " + start + b"\n\n"
            b"event: error\ndata: " + CONTENT_FILTERING + b"\n\n")
    up = await upstream(Answer(200, body, content_type="text/event-stream"))
    err = await failure(adapter("anthropic", up, http_client), MODELS["anthropic"], stream=True)
    assert err.reason is FailureReason.CONTENT_FILTER


# Parameters a model refuses outright: another model may take them, so the chain moves on
UNSUPPORTED = [
    ("openai", 400, openai_error("Unsupported parameter: 'temperature' is not supported with "
                                 "this model.", "invalid_request_error", "unsupported_parameter",
                                 "temperature")),
    ("openai", 400, openai_error("Unsupported parameter: 'stop' is not supported with this "
                                 "model.", "invalid_request_error", None, "stop")),
    ("gemini", 400, orjson.dumps({"error": {
        "code": 400, "message": "Developer instruction is not enabled for "
        "models/gemma-3-27b-it", "status": "INVALID_ARGUMENT"}})),
    ("gemini", 400, orjson.dumps({"error": {
        "code": 400, "message": "Function calling is not enabled for models/gemma-3-12b-it",
        "status": "INVALID_ARGUMENT"}})),
]


@pytest.mark.parametrize(("kind", "status", "body"), UNSUPPORTED,
                         ids=["openai-temperature", "openai-stop", "gemma-system",
                              "gemma-tools"])
async def test_a_model_refusing_a_feature_is_incapable(upstream, http_client, kind: str,
                                                       status: int, body: bytes) -> None:
    up = await upstream(Answer(status, body))
    err = await failure(adapter(kind, up, http_client), MODELS[kind], stream=False)
    assert (err.reason, err.status) == (FailureReason.INCAPABLE, status)


def daemon_config(first_kind: str, first_url: str, second_url: str) -> str:
    return f"""
[providers.first]
kind = "{first_kind}"
base_url = "{first_url}"
api_key_env = "FIRST_KEY"
[providers.second]
kind = "openai"
base_url = "{second_url}"
[models."first/m"]
provider = "first"
name = "{'gemma-3-27b-it' if first_kind == 'gemini' else 'claude-sonnet-4-5'}"
[models."second/gpt"]
provider = "second"
name = "gpt-test"
[chains.c]
models = ["first/m", "second/gpt"]
[routing]
primary = "first/m"
when_all_unavailable = "fail"
[probes]
kind = "none"
"""


SYSTEM_BLOCKS = [{"type": "text", "text": "You are a helpful assistant"},
                 {"type": "text", "text": "Answer in French"}]


@pytest.mark.parametrize(("kind", "body", "reason"), [
    ("anthropic", CONTENT_FILTERING, "content_filter"),
    ("gemini", UNSUPPORTED[2][2], "incapable"),
], ids=["anthropic-content-filtering", "gemma-no-system"])
async def test_anthropic_client_fails_over_past_the_refusal(
        upstream, fake_openai, start_daemon, kind: str, body: bytes, reason: str) -> None:
    first = await upstream(Answer(400, body))
    second = await fake_openai(reply="bonjour")
    d = await start_daemon(daemon_config(kind, first.url, second.url), env={"FIRST_KEY": "k"})
    resp = await d.http.post("/v1/messages", json={
        "model": "c", "max_tokens": 50, "system": SYSTEM_BLOCKS,
        "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["content"][0]["text"] == "bonjour"
    assert resp.headers["x-failoverd-failover"] == f"first/m>second/gpt:{reason}"
    assert len(first.requests) == 1


def test_anthropic_system_blocks_stay_separate_on_anthropic_and_gemini() -> None:
    """Joined without a separator, the blocks ran together: "...assistantAnswer in French"."""
    canonical = anthropic_to_canonical({
        "model": "m", "max_tokens": 50, "system": SYSTEM_BLOCKS,
        "messages": [{"role": "user", "content": "hi"}]})
    assert canonical_to_anthropic(canonical, "claude")["system"] == SYSTEM_BLOCKS
    assert gemini.to_request(canonical)["systemInstruction"] == {
        "parts": [{"text": "You are a helpful assistant"}, {"text": "Answer in French"}]}
