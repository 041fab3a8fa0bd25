"""The upstreams' rate-limit headers through the daemon: fake OpenAI and Anthropic upstreams on
127.0.0.1 send them with their answers; a model whose remaining requests are 0 is skipped to
its fallback without a call (the fake's request log proves it) until the stated reset, a
request bigger than the remaining tokens is too; the switch, /v1/status, the metric, the
queue and the 503's Retry-After, and reloads; on simulated time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from failoverd.clock import ManualClock
from tests.fakes.base import fake_fixture
from tests.helpers import HELLO, chat, pair_config, providers, status
from tests.test_upstream_limits import (
    OPENAI_SHORT,
    OPENAI_SPENT,
    LimitedAnthropic,
    LimitedOpenAI,
    anthropic_limits,
)

limited_openai = fake_fixture(LimitedOpenAI, "limited_openai")
limited_anthropic = fake_fixture(LimitedAnthropic, "limited_anthropic")

PRIMARY, FALLBACK = "a/gpt-a", "b/gpt-b"
BIG = [{"role": "user", "content": "lorem ipsum dolor sit amet " * 800}]  # ~2,400 tokens


async def skips(d: Any, model: str, limit: str) -> int:
    """failoverd_upstream_limit_skips_total of a model and limit in /metrics (process-wide,
    as the adapters' resend counter: the difference is what a test made)."""
    head = f'failoverd_upstream_limit_skips_total{{model="{model}",limit="{limit}"}} '
    lines = [x for x in (await d.http.get("/metrics")).text.splitlines() if x.startswith(head)]
    return int(lines[0].removeprefix(head)) if lines else 0


def calls(fake: Any) -> int:
    return sum(1 for r in fake.requests if r.path.endswith(("/chat/completions", "/messages")))


async def test_requests_spent_skip_to_the_fallback_until_the_reset(
        limited_openai: Any, fake_openai: Any, start_daemon: Any) -> None:
    a = await limited_openai(limits=OPENAI_SPENT, reply="from a")
    b = await fake_openai(reply="from b")
    clock = ManualClock()
    d = await start_daemon(pair_config(a, b), clock=clock)
    resp = await chat(d)
    assert resp.headers["x-failoverd-model"] == PRIMARY  # its answer says 0 requests remain
    skipped = await skips(d, PRIMARY, "upstream_rpm")
    resp = await chat(d)
    assert resp.headers["x-failoverd-model"] == FALLBACK
    assert resp.headers["x-failoverd-failover"] == f"{PRIMARY}>{FALLBACK}:unavailable"
    assert resp.headers["x-failoverd-attempts"] == "1"
    assert calls(a) == 1  # the primary was not called
    entry = (await status(d))["models"][PRIMARY]
    assert entry["upstream_limits"]["requests_remaining"] == 0
    assert entry["upstream_limits"]["requests_reset_at"] == round(clock.time() + 20, 3)
    assert (entry["state"], entry["consecutive_failures"]) == ("closed", 0)
    assert await skips(d, PRIMARY, "upstream_rpm") == skipped + 1
    # pinned: the 503 says why and when
    resp = await chat(d, **{"x-failoverd-no-fallback": "1"})
    assert resp.status_code == 503
    (attempt,) = resp.json()["error"]["attempts"]
    assert (attempt["reason"], attempt["message"]) == ("unavailable", "upstream_rpm")
    assert resp.headers["Retry-After"] == "20"
    assert not [e for e in d.sup.service.bus.recent()
                if e.type in ("model:failover", "breaker:opened")]  # no event storm
    clock.advance(20)
    a.limits = {}  # a fresh budget, and an upstream that stops telling
    assert (await chat(d)).headers["x-failoverd-model"] == PRIMARY
    assert calls(a) == 2


async def test_a_stream_head_tells(limited_openai: Any, fake_openai: Any,
                                   start_daemon: Any) -> None:
    a = await limited_openai(limits=OPENAI_SPENT)
    b = await fake_openai()
    d = await start_daemon(pair_config(a, b), clock=ManualClock())
    stream = await d.openai.chat.completions.create(model="default", messages=HELLO,
                                                    stream=True)
    async for _ in stream:
        pass
    assert (await chat(d)).headers["x-failoverd-model"] == FALLBACK
    assert calls(a) == 1


async def test_tokens_below_the_prompt_skip_a_big_request_not_a_small_one(
        limited_openai: Any, fake_openai: Any, start_daemon: Any) -> None:
    a = await limited_openai(limits=OPENAI_SHORT)  # 2,000 tokens left for 6 minutes
    b = await fake_openai()
    clock = ManualClock()
    d = await start_daemon(pair_config(a, b), clock=clock)
    assert (await chat(d)).headers["x-failoverd-model"] == PRIMARY
    skipped = await skips(d, PRIMARY, "upstream_tpm")
    big = await d.http.post("/v1/chat/completions", json={"model": "default", "messages": BIG})
    assert big.headers["x-failoverd-model"] == FALLBACK
    assert big.headers["x-failoverd-failover"] == f"{PRIMARY}>{FALLBACK}:unavailable"
    assert calls(a) == 1
    small = await chat(d)
    assert small.headers["x-failoverd-model"] == PRIMARY  # the budget still takes it
    assert await skips(d, PRIMARY, "upstream_tpm") == skipped + 1
    # /v1/select measures the request it is given
    picked = (await d.http.post("/v1/select", json={"messages": BIG})).json()["candidates"]
    assert (picked[0]["eligible"], picked[0]["reason"]) == (False, "upstream_tpm")
    picked = (await d.http.post("/v1/select", json={"tokens": 5000})).json()["candidates"]
    assert (picked[0]["eligible"], picked[0]["reason"]) == (False, "upstream_tpm")
    picked = (await d.http.post("/v1/select", json={"messages": HELLO})).json()["candidates"]
    assert picked[0]["eligible"] is True
    # pinned: the 503 says when the tokens come back (6m0s)
    big = await d.http.post("/v1/chat/completions", json={"model": "default", "messages": BIG},
                            headers={"x-failoverd-no-fallback": "1"})
    assert big.status_code == 503 and big.headers["Retry-After"] == "360"
    assert big.json()["error"]["attempts"][0]["message"] == "upstream_tpm"
    assert calls(a) == 2
    clock.advance(360)
    big = await d.http.post("/v1/chat/completions", json={"model": "default", "messages": BIG})
    assert big.headers["x-failoverd-model"] == PRIMARY
    assert calls(a) == 3


async def test_anthropic_rfc3339_reset(limited_anthropic: Any, fake_openai: Any,
                                       start_daemon: Any) -> None:
    clock = ManualClock()
    a = await limited_anthropic(limits=anthropic_limits(clock, requests="0", reset=15))
    b = await fake_openai()
    text = f"""{providers(a=("anthropic", a.url), b=b.url)}
[models."a/claude"]
provider = "a"
[models."b/gpt-b"]
provider = "b"
[routing]
primary = "a/claude"
fallbacks = ["b/gpt-b"]
when_all_unavailable = "fail"
[probes]
kind = "none"
"""
    d = await start_daemon(text, clock=clock)
    assert (await chat(d)).headers["x-failoverd-model"] == "a/claude"
    assert (await chat(d)).headers["x-failoverd-model"] == "b/gpt-b"
    assert calls(a) == 1
    told = (await status(d))["models"]["a/claude"]["upstream_limits"]
    assert told["requests_reset_at"] == round(clock.time() + 15, 3)
    assert told["tokens_remaining"] == 30000  # the input tokens'
    clock.advance(15)
    assert (await chat(d)).headers["x-failoverd-model"] == "a/claude"


async def test_bogus_headers_change_nothing(limited_openai: Any, fake_openai: Any,
                                            start_daemon: Any) -> None:
    a = await limited_openai(limits={"x-ratelimit-remaining-requests": "-1",  # Azure's
                                     "x-ratelimit-remaining-tokens": "lots",
                                     "x-ratelimit-reset-requests": "0",
                                     "x-ratelimit-reset-tokens": "whenever"})
    b = await fake_openai()
    d = await start_daemon(pair_config(a, b), clock=ManualClock())
    for _ in range(3):
        assert (await chat(d)).headers["x-failoverd-model"] == PRIMARY
    assert "upstream_limits" not in (await status(d))["models"][PRIMARY]


async def test_switched_off_the_headers_are_not_read(limited_openai: Any, fake_openai: Any,
                                                     start_daemon: Any) -> None:
    a = await limited_openai(limits=OPENAI_SPENT)
    b = await fake_openai()
    text = pair_config(a, b).replace(f'base_url = "{a.url}"',
                                     f'base_url = "{a.url}"\nrate_limit_headers = false')
    d = await start_daemon(text, clock=ManualClock())
    for _ in range(3):
        assert (await chat(d)).headers["x-failoverd-model"] == PRIMARY
    assert calls(a) == 3
    assert "upstream_limits" not in (await status(d))["models"][PRIMARY]


async def test_the_queue_answers_at_once_past_its_time_with_the_reset(
        limited_openai: Any, fake_openai: Any, start_daemon: Any) -> None:
    a = await limited_openai(limits=OPENAI_SPENT)  # 20 s to the reset
    b = await fake_openai()
    clock = ManualClock()
    d = await start_daemon(pair_config(a, b, fallbacks="[]", routing='queue_timeout = 5')
                           .replace('when_all_unavailable = "fail"',
                                    'when_all_unavailable = "queue"'), clock=clock)
    await chat(d)
    started = time.monotonic()
    resp = await chat(d)
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "20"
    assert time.monotonic() - started < 2  # not held for the queue's 5 s
    assert calls(a) == 1


async def test_the_queue_waits_for_a_reset_within_its_time(
        limited_openai: Any, fake_openai: Any, start_daemon: Any) -> None:
    """On the real clock: a reset 300 ms away is waited for, then the model is called."""
    a = await limited_openai(limits={**OPENAI_SPENT, "x-ratelimit-reset-requests": "300ms"})
    b = await fake_openai()
    d = await start_daemon(pair_config(a, b, fallbacks="[]", routing='queue_timeout = 5')
                           .replace('when_all_unavailable = "fail"',
                                    'when_all_unavailable = "queue"'))
    await chat(d)
    a.limits = {}
    started = time.monotonic()
    resp = await asyncio.wait_for(chat(d), 5)
    assert resp.headers["x-failoverd-model"] == PRIMARY
    assert 0.1 < time.monotonic() - started < 3
    assert calls(a) == 2


async def test_a_reload_keeps_it_unless_the_model_or_provider_changed(
        limited_openai: Any, fake_openai: Any, start_daemon: Any) -> None:
    a = await limited_openai(limits=OPENAI_SPENT)
    b = await fake_openai()
    d = await start_daemon(pair_config(a, b), clock=ManualClock())
    await chat(d)
    path = Path(d.sup.config_path)
    # another key in [routing]: the primary and its provider are as they were
    path.write_text(path.read_text().replace("deadline = 10", "deadline = 11"))
    assert (await d.http.post("/v1/reload")).status_code == 200
    assert (await chat(d)).headers["x-failoverd-model"] == FALLBACK
    assert "upstream_limits" in (await status(d))["models"][PRIMARY]
    # the provider's settings changed (a new header, maybe another account): told again
    path.write_text(path.read_text().replace(f'base_url = "{a.url}"',
                                             f'base_url = "{a.url}"\nheaders = {{ x-t = "1" }}'))
    assert (await d.http.post("/v1/reload")).status_code == 200
    assert "upstream_limits" not in (await status(d))["models"][PRIMARY]
    assert (await chat(d)).headers["x-failoverd-model"] == PRIMARY
    assert calls(a) == 2
