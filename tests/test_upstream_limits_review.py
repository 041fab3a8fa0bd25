"""Review of the upstream rate-limit headers (upstreamlimits.py): answers that come back out of
order, across a reload, after a wall-clock jump or long after their request was sent;
Anthropic's rounded token counts; the quick ceiling that spares the estimate. Real adapters
and the daemon against fake upstreams on 127.0.0.1 that fix the figures when a request
arrives, as a vendor's rate limiter does; on simulated time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from failoverd import upstreamlimits
from failoverd.clock import ManualClock
from failoverd.http1 import HttpClient
from failoverd.tokens import estimate
from tests.fakes.base import fake_fixture
from tests.helpers import HELLO, chat, pair_config, providers, status
from tests.test_upstream_limits import (
    OPENAI_SHORT,
    OPENAI_SPENT,
    LimitedAnthropic,
    LimitedOpenAI,
    answer,
    anthropic_limits,
    registry,
)

limited_openai = fake_fixture(LimitedOpenAI, "limited_openai")
limited_anthropic = fake_fixture(LimitedAnthropic, "limited_anthropic")

PRIMARY, FALLBACK = "a/gpt-a", "b/gpt-b"
FIVE_LEFT = {**OPENAI_SPENT, "x-ratelimit-remaining-requests": "5"}


class SteppedClock(ManualClock):
    """A ManualClock whose wall clock can be stepped (an NTP correction, an operator's
    `date -s`) while the monotonic one goes on."""

    def step_wall(self, seconds: float) -> None:
        self._offset += seconds


def calls(fake: Any) -> int:
    return sum(1 for r in fake.requests if r.path.endswith(("/chat/completions", "/messages")))


async def arrived(fake: Any, n: int) -> None:
    """Until the fake has `n` requests (each logged as it arrives)."""
    async with asyncio.timeout(5):
        while calls(fake) < n:
            await asyncio.sleep(0.005)


async def test_a_slow_older_answer_does_not_overwrite_a_newer_one(
        limited_openai: Any, fake_openai: Any, start_daemon: Any) -> None:
    """Two requests in flight: the first asked (5 requests left then) answers after the
    second (none left). The last answer to arrive used to win, and the model was called
    into its 429; the answer to the request sent last is the news."""
    a = await limited_openai(limits=FIVE_LEFT)
    b = await fake_openai()
    clock = ManualClock()
    d = await start_daemon(pair_config(a, b), clock=clock)
    a.push("slow:0.3")
    slow = asyncio.create_task(chat(d))
    await arrived(a, 1)
    a.limits = OPENAI_SPENT
    clock.advance(1)
    assert (await chat(d)).headers["x-failoverd-model"] == PRIMARY
    assert (await slow).headers["x-failoverd-model"] == PRIMARY  # arrives last, older news
    resp = await chat(d)
    assert resp.headers["x-failoverd-model"] == FALLBACK
    assert resp.headers["x-failoverd-failover"] == f"{PRIMARY}>{FALLBACK}:unavailable"
    assert calls(a) == 2
    assert (await status(d))["models"][PRIMARY]["upstream_limits"]["requests_remaining"] == 0


async def test_an_answer_to_a_request_sent_before_a_reload_is_not_kept(
        limited_openai: Any, fake_openai: Any, start_daemon: Any) -> None:
    """A reload that changes the provider (another key, perhaps another account) starts the
    model's knowledge fresh; an answer to a call made under the old settings, arriving
    after, used to bring the old account's spent budget back."""
    a = await limited_openai(limits=OPENAI_SPENT)
    b = await fake_openai()
    clock = ManualClock()
    d = await start_daemon(pair_config(a, b), clock=clock)
    a.push("slow:0.3")
    slow = asyncio.create_task(chat(d))
    await arrived(a, 1)
    clock.advance(1)
    path = Path(d.sup.config_path)
    path.write_text(path.read_text().replace(f'base_url = "{a.url}"',
                                             f'base_url = "{a.url}"\nheaders = {{ x-t = "1" }}'))
    assert (await d.http.post("/v1/reload")).status_code == 200
    assert (await slow).headers["x-failoverd-model"] == PRIMARY
    assert "upstream_limits" not in (await status(d))["models"][PRIMARY]
    assert (await chat(d)).headers["x-failoverd-model"] == PRIMARY  # told by its own answer
    assert (await chat(d)).headers["x-failoverd-model"] == FALLBACK
    assert calls(a) == 2


async def test_a_duration_counts_from_when_the_request_was_sent(
        limited_openai: Any, http_client: HttpClient) -> None:
    """The figures are the rate limiter's when it admitted the request; a non-streamed
    answer comes once the whole completion is made. "20s" counted from the answer's arrival
    skipped the model for as long as the generation took after the real reset."""
    fake = await limited_openai(limits=OPENAI_SPENT)
    fake.push("slow:0.2")
    clock = ManualClock()
    reg, cfg = registry(providers(a=fake.url), clock)
    call = asyncio.create_task(answer(http_client, reg, cfg))
    await arrived(fake, 1)
    clock.advance(15)  # the generation took 15 s
    await call
    assert reg.available("a/m") == (False, "upstream_rpm")
    assert reg.retry_in("a/m") == pytest.approx(5)
    clock.advance(5)
    assert reg.available("a/m") == (True, None)


def _prompt(tokens: int) -> dict[str, Any]:
    """A chat request whose estimate is within a few tokens above `tokens`."""
    words = "lorem ipsum dolor sit amet "
    n = 1
    while estimate({"messages": [{"role": "user", "content": words * n}]}) < tokens:
        n += 1
    return {"messages": [{"role": "user", "content": words * n}]}


@pytest.mark.parametrize("step", [-3600.0, 600.0])
async def test_a_wall_clock_step_after_the_answer_moves_no_reset(
        limited_anthropic: Any, http_client: HttpClient, step: float) -> None:
    """Anthropic's reset is a time of day, parsed when first needed (a request over the
    tokens left): a wall clock stepped in between (back an hour: skipped for the hour;
    forward: not skipped at all) moved it."""
    clock = SteppedClock()
    fake = await limited_anthropic(limits=anthropic_limits(clock, input_tokens="1000"))
    reg, cfg = registry(providers(a=("anthropic", fake.url)), clock)
    await answer(http_client, reg, cfg)
    clock.step_wall(step)
    upstreamlimits.ask(_prompt(3000))
    assert reg.available("a/m") == (False, "upstream_tpm")
    assert reg.retry_in("a/m") == pytest.approx(15)
    upstreamlimits.ask(None)


async def test_anthropic_token_counts_are_rounded_to_the_thousand(
        limited_anthropic: Any, http_client: HttpClient) -> None:
    """Anthropic rounds its remaining tokens to the nearest thousand: "0" may be 499 left,
    "1000" 1,499. Every request used to be skipped on a "0", and a prompt just over the count
    too, though either may be served."""
    clock = ManualClock()
    fake = await limited_anthropic(limits=anthropic_limits(clock, input_tokens="0"))
    reg, cfg = registry(providers(a=("anthropic", fake.url)), clock)
    await answer(http_client, reg, cfg)
    upstreamlimits.ask({"messages": HELLO})
    assert reg.available("a/m") == (True, None)
    upstreamlimits.ask(_prompt(500))
    assert reg.available("a/m") == (False, "upstream_tpm")
    fake.limits = anthropic_limits(clock, input_tokens="1000")
    await answer(http_client, reg, cfg)
    upstreamlimits.ask(_prompt(1300))
    assert reg.available("a/m") == (True, None)
    upstreamlimits.ask(_prompt(1500))
    assert reg.available("a/m") == (False, "upstream_tpm")
    upstreamlimits.ask(None)


async def test_the_ceiling_is_one_for_json_and_stray_keys(
        limited_openai: Any, http_client: HttpClient) -> None:
    """The quick ceiling counted a tool's or schema's JSON at one token a byte, and an image
    part with a "text" key by that text: a request over the remaining tokens went to the
    model (and its 429) because the ceiling said it fit without estimating it."""
    fake = await limited_openai()
    clock = ManualClock()
    reg, cfg = registry(providers(a=fake.url), clock)
    tools = {"messages": HELLO, "tools": [{"type": "function", "function": {
        "name": "f", "description": "aA" * 1500, "parameters": {"type": "object"}}}]}
    digits = {"messages": HELLO, "response_format": {"type": "json_schema", "json_schema": {
        "name": "s", "schema": {"enum": list(range(10)) * 300}}}}
    images = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://x/a.png"}, "text": ""}] * 5}]}
    # remaining tokens between the old ceiling (3,139; 6,107; 23) and the estimate
    for body, left in ((tools, 3200), (digits, 6150), (images, 3000)):
        assert estimate(body) > left
        assert upstreamlimits._ceiling(body) >= estimate(body)
        fake.limits = {**OPENAI_SPENT, "x-ratelimit-remaining-requests": "9",
                       "x-ratelimit-remaining-tokens": str(left)}
        await answer(http_client, reg, cfg)
        upstreamlimits.ask(body)
        assert reg.available("a/m") == (False, "upstream_tpm")
    upstreamlimits.ask(None)


async def test_a_job_scheduled_while_a_request_is_routed_does_not_measure_it(
        limited_openai: Any, http_client: HttpClient) -> None:
    """A task started while a request is routed inherits its context, the request with it:
    the prober's recovery job, which a request's failure schedules through APScheduler, saw
    that request's size against the tokens left (upstream_tpm) and put the recovery off."""
    fake = await limited_openai(limits=OPENAI_SHORT)  # 2,000 tokens left
    clock = ManualClock()
    reg, cfg = registry(providers(a=fake.url), clock)
    await answer(http_client, reg, cfg)
    upstreamlimits.ask(_prompt(3000))
    assert reg.available("a/m") == (False, "upstream_tpm")
    seen: asyncio.Future[tuple[bool, str | None]] = asyncio.get_running_loop().create_future()

    async def job() -> None:
        seen.set_result(reg.available("a/m"))

    scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
    scheduler.start()
    try:
        scheduler.add_job(job, DateTrigger(run_date=datetime.now(UTC)))
        assert await asyncio.wait_for(seen, 5) == (True, None)
    finally:
        scheduler.shutdown(wait=False)
    assert reg.available("a/m") == (False, "upstream_tpm")  # the routing task still does
    upstreamlimits.ask(None)


def test_a_plain_reset_that_can_only_be_an_epoch_is_read_as_one() -> None:
    """x-ratelimit-reset-requests as a plain number was seconds from now, whatever its size:
    a server of OpenAI's headers that writes the reset as an epoch (as the plain
    X-RateLimit-Reset is) skipped the model for the hour MAX_RESET cuts it to."""
    clock = ManualClock()
    store = upstreamlimits.UpstreamLimits(clock)
    for model, reset in (("s", clock.time() + 9), ("ms", (clock.time() + 9) * 1000), ("d", 9)):
        store.seen("openai", model, {"x-ratelimit-remaining-requests": "0",
                                     "x-ratelimit-reset-requests": str(int(reset))})
        assert store.wait(model, clock.monotonic()) == pytest.approx(9, abs=1), model


async def test_a_task_that_adopts_the_request_measures_it(
        limited_openai: Any, http_client: HttpClient) -> None:
    """A task the routing task starts to route the same request (a hedged attempt's lane)
    says so with adopt(), and measures it; one that only inherited the context does not."""
    fake = await limited_openai(limits=OPENAI_SHORT)  # 2,000 tokens left
    clock = ManualClock()
    reg, cfg = registry(providers(a=fake.url), clock)
    await answer(http_client, reg, cfg)
    upstreamlimits.ask(_prompt(3000))

    async def lane(adopting: bool) -> tuple[bool, str | None]:
        if adopting:
            upstreamlimits.adopt()
        return reg.available("a/m")

    assert await asyncio.create_task(lane(True)) == (False, "upstream_tpm")
    assert await asyncio.create_task(lane(False)) == (True, None)
    assert reg.available("a/m") == (False, "upstream_tpm")
    upstreamlimits.ask(None)
