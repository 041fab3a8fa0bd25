"""What the upstreams' rate-limit headers say (upstreamlimits.py), read by the real adapters
from fake upstreams on 127.0.0.1 that send them as OpenAI, OpenRouter and Anthropic do, into
the health registry: a model whose remaining requests are 0 is unavailable ("upstream_rpm")
until the stated reset, one whose remaining tokens are below a request's prompt is for that
request ("upstream_tpm"); bogus figures are ignored; on simulated time."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import pytest
from aiohttp import web

from failoverd import config as config_mod
from failoverd import upstreamlimits
from failoverd.clock import ManualClock
from failoverd.health import HealthRegistry
from failoverd.http1 import HttpClient
from failoverd.metrics import UPSTREAM_SKIPS
from failoverd.providers import make_provider
from failoverd.providers.base import AttemptLimits
from failoverd.providers.http import go_duration
from failoverd.tokens import estimate
from failoverd.upstreamlimits import MAX_RESET, UpstreamLimits
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import fake_fixture
from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO, providers

# what OpenAI sends with an answer (platform.openai.com/docs/guides/rate-limits): Go durations
OPENAI_SPENT = {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "20s", "x-ratelimit-limit-tokens": "30000",
                "x-ratelimit-remaining-tokens": "29000", "x-ratelimit-reset-tokens": "2s"}
OPENAI_SHORT = {"x-ratelimit-limit-requests": "500", "x-ratelimit-remaining-requests": "499",
                "x-ratelimit-reset-requests": "120ms", "x-ratelimit-limit-tokens": "30000",
                "x-ratelimit-remaining-tokens": "2000", "x-ratelimit-reset-tokens": "6m0s"}


_ADMITTED = web.RequestKey("admitted", dict[str, str])  # a request's figures, as it arrived


class _LimitHeaders:
    """Sends `limits` with every answer, errors and stream heads included, as the vendors do
    (aiohttp's on_response_prepare: the headers go out with the head, before any body). The
    figures are those of the moment the request arrived, as a vendor's rate limiter admits
    it: a slow answer tells what was left when it was asked."""

    limits: dict[str, str]

    def _with_limits(self, app: web.Application) -> web.Application:
        @web.middleware
        async def admit(request: web.Request, handler: Any) -> web.StreamResponse:
            request[_ADMITTED] = dict(self.limits)
            response: web.StreamResponse = await handler(request)
            return response

        async def add(request: web.Request, response: web.StreamResponse) -> None:
            response.headers.update(request.get(_ADMITTED, self.limits))
        app.middlewares.append(admit)
        app.on_response_prepare.append(add)
        return app

    async def start(self) -> Self:
        """The fake's own start (tests/fakes/base.py), its app sending `limits`."""
        fake: Any = self
        app = web.Application()
        fake._routes(app.router)
        await fake._serve(self._with_limits(app), fake.url_path,
                          handler_cancellation=fake.handler_cancellation)
        return self


@dataclass
class LimitedOpenAI(_LimitHeaders, FakeOpenAI):
    """FakeOpenAI whose answers carry `limits` (rate-limit headers)."""

    limits: dict[str, str] = field(default_factory=dict, kw_only=True)


@dataclass
class LimitedAnthropic(_LimitHeaders, FakeAnthropic):
    """FakeAnthropic whose answers carry `limits` (anthropic-ratelimit-* headers)."""

    limits: dict[str, str] = field(default_factory=dict, kw_only=True)


limited_openai = fake_fixture(LimitedOpenAI, "limited_openai")
limited_anthropic = fake_fixture(LimitedAnthropic, "limited_anthropic")


def rfc3339(epoch: float) -> str:
    """An epoch as Anthropic writes its resets: "2025-08-21T12:40:59Z"."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def registry(text: str, clock: ManualClock) -> tuple[HealthRegistry, Any]:
    cfg = config_mod.loads(text + '\n[models."a/m"]\nprovider = "a"\n', env={})
    return HealthRegistry(cfg, clock, random.Random(1)), cfg


def limits(reg: HealthRegistry) -> AttemptLimits:
    return AttemptLimits(total=5, connect=5, first_token=5, idle=5, upstream=reg.upstream)


async def answer(http_client: HttpClient, reg: HealthRegistry, cfg: Any, *,
                 stream: bool = False, body: dict[str, Any] | None = None) -> None:
    """One call of model a/m through its real adapter, the registry taking the headers."""
    provider = make_provider(cfg.providers["a"], http_client)
    model = cfg.models["a/m"]
    request = body or {"messages": HELLO, "max_tokens": 16}
    if stream:
        async for _ in provider.stream(request, model, limits(reg)):
            pass
    else:
        await provider.complete(request, model, limits(reg))


# ---------------------------------------------------------------------- OpenAI's headers


async def test_openai_requests_spent_until_the_stated_reset(
        limited_openai: Any, http_client: HttpClient) -> None:
    fake = await limited_openai(limits=OPENAI_SPENT)
    clock = ManualClock()
    reg, cfg = registry(providers(a=fake.url), clock)
    assert reg.available("a/m") == (True, None)
    await answer(http_client, reg, cfg)
    assert reg.available("a/m") == (False, "upstream_rpm")
    before = UPSTREAM_SKIPS[("a/m", "upstream_rpm")]
    assert reg.acquire("a/m") is None  # not called: counted as a skip, no breaker count
    assert UPSTREAM_SKIPS[("a/m", "upstream_rpm")] == before + 1
    assert reg.breaker("a/m").status()["consecutive_failures"] == 0  # type: ignore[union-attr]
    assert reg.retry_in("a/m") == pytest.approx(20)
    assert reg.out_longer_than(["a/m"], 10) and not reg.out_longer_than(["a/m"], 30)
    entry = reg.status()["models"]["a/m"]
    assert entry["upstream_limits"] == {
        "requests_remaining": 0, "requests_reset_at": round(clock.time() + 20, 3),
        "tokens_remaining": 29000, "tokens_reset_at": round(clock.time() + 2, 3),
        "at": round(clock.time(), 3)}
    assert entry["state"] == "closed"  # knowledge, not a breaker state
    clock.advance(20)
    assert reg.available("a/m") == (True, None)
    permit = reg.acquire("a/m")
    assert permit is not None
    permit.release()


async def test_a_stream_head_counts(limited_openai: Any, http_client: HttpClient) -> None:
    fake = await limited_openai(limits=OPENAI_SPENT)
    clock = ManualClock()
    reg, cfg = registry(providers(a=fake.url), clock)
    await answer(http_client, reg, cfg, stream=True)
    assert reg.available("a/m") == (False, "upstream_rpm")


@pytest.mark.parametrize("endpoint", ["embed", "complete_text", "stream_text"])
async def test_every_openai_endpoint_tells(limited_openai: Any, http_client: HttpClient,
                                          endpoint: str) -> None:
    """Embeddings and legacy text completions (streamed or not) read the headers as chats
    do; their requests are not measured, so only a spent request budget skips them."""
    fake = await limited_openai(limits=OPENAI_SPENT)
    clock = ManualClock()
    reg, cfg = registry(providers(a=fake.url), clock)
    provider = make_provider(cfg.providers["a"], http_client)
    model = cfg.models["a/m"]
    if endpoint == "embed":
        await provider.embed({"model": "a/m", "input": "hello"}, model, limits(reg))
    elif endpoint == "complete_text":
        await provider.complete_text({"prompt": "hello"}, model, limits(reg))
    else:
        async for _ in provider.stream_text({"prompt": "hello"}, model, limits(reg)):
            pass
    assert reg.available("a/m") == (False, "upstream_rpm")


async def test_a_429_is_left_to_its_retry_after(limited_openai: Any,
                                                http_client: HttpClient) -> None:
    """An error answer's headers are not read: a 429's wait is its own (Retry-After, the
    message's "try again in 120ms"), which the breaker and the same-model retry go by; read
    as knowledge too, a 120 ms reset would have turned that retry into a failover."""
    fake = await limited_openai(limits=OPENAI_SPENT)
    fake.push("rate_limit")
    clock = ManualClock()
    reg, cfg = registry(providers(a=fake.url), clock)
    with pytest.raises(Exception, match="rate_limit"):
        await answer(http_client, reg, cfg)
    assert reg.available("a/m") == (True, None)
    assert reg.status()["models"]["a/m"].get("upstream_limits") is None


async def test_tokens_below_the_prompt_skip_a_big_request_not_a_small_one(
        limited_openai: Any, http_client: HttpClient) -> None:
    fake = await limited_openai(limits=OPENAI_SHORT)
    clock = ManualClock()
    reg, cfg = registry(providers(a=fake.url), clock)
    await answer(http_client, reg, cfg)
    small = {"messages": HELLO}
    big = {"messages": [{"role": "user", "content": "lorem ipsum dolor sit amet " * 800}]}
    upstreamlimits.ask(small)
    assert reg.available("a/m") == (True, None)
    upstreamlimits.ask(big)  # about 2,400 tokens: more than the 2,000 remaining
    assert reg.available("a/m") == (False, "upstream_tpm")
    assert reg.retry_in("a/m") == pytest.approx(360)  # 6m0s
    upstreamlimits.ask(big, 1999)  # the router's own estimate is taken when it made one
    assert reg.available("a/m") == (True, None)
    upstreamlimits.ask(None)  # a request not measured (embeddings, audio)
    assert reg.available("a/m") == (True, None)
    clock.advance(360)
    upstreamlimits.ask(big)
    assert reg.available("a/m") == (True, None)  # the budget is whole again


# ---------------------------------------------------------------------- Anthropic's headers


def anthropic_limits(clock: ManualClock, *, requests: str = "49", input_tokens: str = "30000",
                     reset: float = 15) -> dict[str, str]:
    """What Anthropic sends with every answer: its resets as RFC 3339 times."""
    at = rfc3339(clock.time() + reset)
    return {"anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": requests,
            "anthropic-ratelimit-requests-reset": at,
            "anthropic-ratelimit-input-tokens-limit": "30000",
            "anthropic-ratelimit-input-tokens-remaining": input_tokens,
            "anthropic-ratelimit-input-tokens-reset": at,
            "anthropic-ratelimit-output-tokens-limit": "8000",
            "anthropic-ratelimit-output-tokens-remaining": "8000",
            "anthropic-ratelimit-output-tokens-reset": at,
            "anthropic-ratelimit-tokens-limit": "38000",
            "anthropic-ratelimit-tokens-remaining": "38000",
            "anthropic-ratelimit-tokens-reset": at}


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_rfc3339_reset_through_the_wall_clock(
        limited_anthropic: Any, http_client: HttpClient, stream: bool) -> None:
    clock = ManualClock()
    fake = await limited_anthropic(limits=anthropic_limits(clock, requests="0"))
    reg, cfg = registry(providers(a=("anthropic", fake.url)), clock)
    await answer(http_client, reg, cfg, stream=stream)
    assert reg.available("a/m") == (False, "upstream_rpm")
    assert reg.retry_in("a/m") == pytest.approx(15)
    clock.advance(15)
    assert reg.available("a/m") == (True, None)


async def test_anthropic_input_tokens_and_prompt_caching(
        limited_anthropic: Any, http_client: HttpClient) -> None:
    """The input-token budget is measured against the prompt, except for a request with
    cache breakpoints: Anthropic does not count cache reads against it."""
    clock = ManualClock()
    fake = await limited_anthropic(limits=anthropic_limits(clock, input_tokens="1000"))
    reg, cfg = registry(providers(a=("anthropic", fake.url)), clock)
    await answer(http_client, reg, cfg)
    text = "lorem ipsum dolor sit amet " * 800
    upstreamlimits.ask({"messages": [{"role": "user", "content": text}]})
    assert reg.available("a/m") == (False, "upstream_tpm")
    upstreamlimits.ask({"messages": [{"role": "user", "content": [
        {"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]}]})
    assert reg.available("a/m") == (True, None)
    # "0" is Anthropic's rounding of up to 499 left: the uncached part may still fit
    reg.upstream.seen("anthropic", "a/m", anthropic_limits(clock, input_tokens="0"))
    assert reg.available("a/m") == (True, None)
    upstreamlimits.ask(None)


# ---------------------------------------------------------------------- what is not trusted


@pytest.mark.parametrize("headers", [
    {"x-ratelimit-remaining-requests": "none", "x-ratelimit-reset-requests": "20s"},
    {"x-ratelimit-remaining-requests": "-1", "x-ratelimit-reset-requests": "20s"},  # Azure
    {"x-ratelimit-remaining-requests": "0.0", "x-ratelimit-reset-requests": "20s"},
    {"x-ratelimit-remaining-requests": "٠", "x-ratelimit-reset-requests": "20s"},  # Arabic 0
    {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "soon"},
    {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "0s"},
    {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "-5s"},
    {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "nan"},
    {"x-ratelimit-remaining-requests": "0"},  # no reset: no way to know when
    {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1600000000000"},  # in the past
    {"anthropic-ratelimit-requests-remaining": "0",
     "anthropic-ratelimit-requests-reset": "tomorrow"},
    {"anthropic-ratelimit-requests-remaining": "0",
     "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:00Z"},  # before ManualClock's now
    {"anthropic-ratelimit-requests-remaining": "0",
     "anthropic-ratelimit-requests-reset": "2099-01-01T00:00:00"},  # no offset: not RFC 3339
])
def test_bogus_figures_are_ignored(headers: dict[str, str]) -> None:
    clock = ManualClock()
    store = UpstreamLimits(clock)
    family = "anthropic" if any(k.startswith("anthropic") for k in headers) else "openai"
    store.seen(family, "m", headers)
    assert store.blocked("m", clock.monotonic()) is None
    assert store.wait("m", clock.monotonic()) == 0


def test_a_reset_further_than_an_hour_is_cut_to_it() -> None:
    clock = ManualClock()
    store = UpstreamLimits(clock)
    store.seen("openai", "m", {"x-ratelimit-remaining-requests": "0",
                               "x-ratelimit-reset-requests": "26h0m0s"})  # a day's quota
    assert store.wait("m", clock.monotonic()) == MAX_RESET == 3600
    store.seen("anthropic", "n", {"anthropic-ratelimit-requests-remaining": "0",
                                  "anthropic-ratelimit-requests-reset": "2099-01-01T00:00:00Z"})
    assert store.wait("n", clock.monotonic()) == MAX_RESET


def test_openrouter_resets_in_epoch_milliseconds_or_seconds() -> None:
    clock = ManualClock()
    store = UpstreamLimits(clock)
    store.seen("openai", "ms", {"x-ratelimit-remaining": "0",
                                "x-ratelimit-reset": str(int((clock.time() + 9) * 1000))})
    store.seen("openai", "s", {"x-ratelimit-remaining": "0",
                               "x-ratelimit-reset": str(int(clock.time() + 9))})
    for model in ("ms", "s"):
        assert store.wait(model, clock.monotonic()) == pytest.approx(9, abs=1), model


def test_the_last_answer_wins() -> None:
    clock = ManualClock()
    store = UpstreamLimits(clock)
    store.seen("openai", "m", OPENAI_SPENT)
    assert store.blocked("m", clock.monotonic()) == "upstream_rpm"
    store.seen("openai", "m", OPENAI_SHORT)  # a call in flight before came back later
    assert store.blocked("m", clock.monotonic()) is None
    # a later answer without a usable reset keeps the count but cannot skip
    store.seen("openai", "m", {"x-ratelimit-remaining-requests": "0"})
    assert store.blocked("m", clock.monotonic()) is None
    assert store.status("m")["requests_remaining"] == 0  # type: ignore[index]


def test_go_durations() -> None:
    for text, seconds in (("120ms", 0.12), ("1s", 1), ("1.5s", 1.5), ("6m0s", 360),
                          ("1h2m3s", 3723), ("7m12s", 432), ("0.5ms", 0.0005)):
        assert go_duration(text) == pytest.approx(seconds), text
    for text in ("", "ms", "s", "1x", "1.2.3s", "-1s", "١s"):
        assert go_duration(text) is None, text


def test_headers_without_limits_cost_a_few_lookups() -> None:
    """An answer without rate-limit headers (a local server, vLLM) keeps nothing; reading
    one that has them stays in microseconds."""
    clock = ManualClock()
    store = UpstreamLimits(clock)
    plain = {"content-type": "application/json", "content-length": "512"}
    runs = 20000
    started = time.perf_counter()
    for _ in range(runs):
        store.seen("openai", "m", plain)
    none = (time.perf_counter() - started) / runs
    assert store.status("m") is None
    started = time.perf_counter()
    for _ in range(runs):
        store.seen("openai", "m", OPENAI_SHORT)
    some = (time.perf_counter() - started) / runs
    print(f"seen(): {none * 1e9:.0f} ns without rate-limit headers, {some * 1e9:.0f} ns with")
    assert none < 20e-6 and some < 100e-6  # generous: a loaded CI machine


def test_the_ceiling_that_spares_the_estimate_is_one() -> None:
    """A request is estimated (up to milliseconds) only when a quick ceiling of its estimate
    (string lengths) is over the remaining tokens: the ceiling must never be below the
    estimate, whatever the text (letters, digits, symbols, CJK, emoji), parts, tool calls,
    thinking blocks and tools; a PDF has none (its pages decide)."""
    rng = random.Random(7)
    alphabets = ["abcXYZ", "0123456789", "{}[]:,.-_", " \n\t", "日本語中文한국어", "😀🎉👍", "éàüß"]

    def text() -> str:
        n = rng.choice([0, 1, 2, 5, 30, 300, 3000])
        return "".join(rng.choice(rng.choice(alphabets)) for _ in range(n))

    for _ in range(300):
        messages: list[dict[str, Any]] = []
        for _ in range(rng.randint(1, 5)):
            message: dict[str, Any] = {"role": rng.choice(["user", "assistant", "tool"])}
            if rng.random() < 0.5:
                message["content"] = text()
            else:
                message["content"] = [{"type": "text", "text": text()},
                                      {"type": "image_url", "image_url": {"url": "https://x/a.png"}},
                                      {"type": "refusal", "refusal": text()}]
            if rng.random() < 0.3:
                message["tool_calls"] = [{"id": "c", "type": "function", "function": {
                    "name": "f", "arguments": text()}}]
            if rng.random() < 0.2:
                message["thinking_blocks"] = [{"type": "thinking", "thinking": text(),
                                               "signature": "s"}]
            messages.append(message)
        body: dict[str, Any] = {"messages": messages}
        if rng.random() < 0.3:
            body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {
                "type": "object", "properties": {"a": {"description": text()}}}}}]
        assert upstreamlimits._ceiling(body) >= estimate(body)
    pdf = {"messages": [{"role": "user", "content": [{"type": "file", "file": {
        "file_data": "data:application/pdf;base64,JVBERi0="}}]}]}
    assert upstreamlimits._ceiling(pdf) > 10**15
