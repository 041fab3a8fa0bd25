"""Review: what real OpenAI-compatible servers send, and the reason failoverd reads in it.

Each fake behaviour copies a real server's bytes (sources in tests/fakes/openai.py): llama.cpp's
and Kimi's context errors, llama.cpp's `error:` SSE field, streams that end without [DONE],
OpenRouter's error chunk, MiniMax's base_resp inside a 200, OpenAI's rate-limit waits that
come without Retry-After.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from failoverd.providers.http import rate_limit_wait
from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO, ask, pair_config, status


@pytest.fixture
async def pair(fake_openai: Any, start_daemon: Any) -> tuple[FakeOpenAI, FakeOpenAI, Any]:
    """a/gpt-a (8,000 tokens) failing over to b/gpt-b (128,000 tokens)."""
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(pair_config(a, b, a_window=8000, b_window=128000))
    return a, b, d


async def _stream(d: Any, **extra: Any) -> tuple[Any, str]:
    """A streamed HELLO over httpx: (the response, its body)."""
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "default", "messages": HELLO, "stream": True, **extra})
    return resp, resp.text


def _events(body: str) -> list[dict[str, Any]]:
    """The JSON events of an SSE body."""
    return [orjson.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]


def _text(events: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in events
                   if c.get("choices"))


@pytest.mark.parametrize("behaviour", ["llamacpp_context", "llamacpp_context_500",
                                       "kimi_context"])
async def test_context_errors_of_local_servers_and_kimi_fail_over_to_a_larger_window(
        pair: Any, behaviour: str) -> None:
    """llama.cpp's "exceeds the available context size" (400, or 500 from older builds) and
    Kimi's "exceeded model token limit" were bad_request / server_error: the client got the
    400 (no failover), or the same model was retried and its breaker fed."""
    a, b, d = pair
    a.default = behaviour
    _, raw = await ask(d)
    assert raw.parse().choices[0].message.content == "from b"
    assert raw.headers["x-failoverd-failover"] == "a/gpt-a>b/gpt-b:context_overflow"
    assert len(a.chat_requests()) == 1  # no same-model retry
    model = (await status(d))["models"]["a/gpt-a"]
    assert model["consecutive_failures"] == 0  # not counted


@pytest.mark.parametrize("include_usage", [False, True])
async def test_a_finished_stream_without_done_is_a_success(pair: Any,
                                                           include_usage: bool) -> None:
    """Servers that end the body after the finish_reason chunk (and the usage chunk) without
    [DONE]: the client got an error event after a whole answer, and every such stream fed the
    model's breaker as invalid_response until it opened."""
    a, b, d = pair
    a.default = "no_done"
    for _ in range(4):  # more than failure_threshold (3)
        stream = await d.openai.chat.completions.create(
            model="default", messages=HELLO, stream=True,
            **({"stream_options": {"include_usage": True}} if include_usage else {}))
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "from a"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        if include_usage:
            assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 15
    model = (await status(d))["models"]["a/gpt-a"]
    assert model["breaker_state"] == "closed" and model["consecutive_failures"] == 0
    resp, body = await _stream(d)
    assert body.rstrip().endswith("data: [DONE]") and '"error"' not in body
    assert b.requests == []


async def test_a_stream_cut_before_its_finish_is_still_invalid_response(pair: Any) -> None:
    """The other side of the above: without a finish_reason the end of the body is a cut."""
    a, b, d = pair
    a.push("cut_stream")
    resp, body = await _stream(d)
    assert '"error"' in body and "from" in body


async def test_openrouter_error_chunk_before_any_token_fails_over(pair: Any) -> None:
    """OpenRouter's error chunk puts `error` after id/object/created/model/provider, past the
    first 40 bytes the adapter looked at: it reached the client as the first chunk (an empty
    delta with finish_reason "error"), which committed the stream to the failing model."""
    a, b, d = pair
    a.default = "openrouter_error_first"
    resp, body = await _stream(d)
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == "b/gpt-b"
    assert resp.headers["x-failoverd-failover"] == "a/gpt-a>b/gpt-b:server_error"
    assert len(a.chat_requests()) == 2  # server_error: one same-model retry
    assert '"finish_reason":"error"' not in body and _text(_events(body)) == "from b"


async def test_openrouter_error_chunk_mid_stream_is_an_error_with_its_reason(pair: Any) -> None:
    """After two words: the client gets the words and an error event of the chunk's reason, not
    the chunk itself (finish_reason "error") followed by an invalid_response "stream ended
    before [DONE]"."""
    a, b, d = pair
    a.push("openrouter_error_mid")
    resp, body = await _stream(d)
    events = _events(body)
    assert _text(events) == "from a"
    assert '"finish_reason":"error"' not in body
    assert events[-1]["error"]["type"] == "server_error"
    assert "Provider disconnected unexpectedly" in events[-1]["error"]["message"]
    model = (await status(d))["models"]["a/gpt-a"]
    assert model["consecutive_failures"] == 1  # server_error counts, once


async def test_llamacpp_error_field_is_not_an_empty_answer(pair: Any) -> None:
    """llama.cpp's server streamed a failure as an `error: {...}` line, then `data: [DONE]`:
    SSE readers drop unknown fields, so failoverd answered 200 with no content at all."""
    a, b, d = pair
    a.push("llamacpp_error_event")
    resp, body = await _stream(d)
    assert resp.headers["x-failoverd-model"] == "b/gpt-b"
    assert resp.headers["x-failoverd-failover"] == "a/gpt-a>b/gpt-b:context_overflow"


async def test_minimax_base_resp_in_a_200_is_billing(pair: Any) -> None:
    """MiniMax's {"base_resp": {"status_code": 1008, "status_msg": "insufficient balance"}}
    in a 200 was an invalid_response (retried on the same model, counted by its breaker)."""
    a, b, d = pair
    a.default = "minimax_balance"
    _, raw = await ask(d)
    assert raw.headers["x-failoverd-failover"] == "a/gpt-a>b/gpt-b:billing"
    assert len(a.chat_requests()) == 1
    assert (await status(d))["providers"]["a"]["credentials"] == "billing"


async def test_openai_rate_limit_wait_without_retry_after_is_honoured(pair: Any) -> None:
    """OpenAI's 429 often carries no Retry-After; its message ("Please try again in 120ms")
    and x-ratelimit-reset-* headers say how long. A short wait is a same-model retry."""
    a, b, d = pair
    a.push("rate_limit_hint")
    _, raw = await ask(d)
    assert raw.headers["x-failoverd-model"] == "a/gpt-a"
    assert raw.headers["x-failoverd-attempts"] == "2"
    assert b.requests == []


async def test_openai_long_rate_limit_wait_holds_the_breaker_open(pair: Any) -> None:
    a, b, d = pair
    a.default = "rate_limit_daily"  # "Please try again in 7m12s", x-ratelimit-reset-tokens
    for _ in range(3):
        _, raw = await ask(d)
        assert raw.headers["x-failoverd-model"] == "b/gpt-b"
    model = (await status(d))["models"]["a/gpt-a"]
    assert model["breaker_state"] == "open"
    assert model["retry_at"] - time.time() >= 400  # 432 s, not the 30 s of open_seconds


@pytest.mark.parametrize(("message", "headers", "wait"), [
    ("Please try again in 2.36s. Visit https://console.groq.com/docs/rate-limits", {}, 2.36),
    ("Please try again in 1h2m3.5s.", {}, 3723.5),
    ("Please try again in 6m0s.", {"x-ratelimit-reset-tokens": "1s"}, 360.0),  # message first
    ("Rate limit reached on requests per min (RPM).",
     {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s",
      "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "6m0s"}, 360.0),
    ("Rate limit reached on requests per min (RPM).",  # neither limit says it is exhausted
     {"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "1s"}, None),
    ("Rate limit reached.", {"x-ratelimit-remaining-tokens": "0",
                             "x-ratelimit-reset-tokens": "soon"}, None),
])
def test_rate_limit_wait_reads_go_durations(message: str, headers: dict[str, str],
                                            wait: float | None) -> None:
    got = rate_limit_wait(message, headers)
    assert got == pytest.approx(wait) if wait is not None else got is None
