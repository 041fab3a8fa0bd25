"""A Bedrock model that refuses the request's cache points keeps the request: it goes again at
once without them, and the model serves it.

Before, the refusal ("You invoked an unsupported model, or your request did not allow prompt
caching") failed over as `incapable`: a model that answers fine without caching was skipped
for every request that had a breakpoint (every Claude Code turn). Now the adapter sends the
same request again without its cachePoint blocks, within the same attempt (no failover, no
breaker count, counted in failoverd_upstream_resends_total), and remembers "this model takes
none" for a while, so its next requests go without them and pay no refused call. A refusal of
this request's points only (too many, Claude's own words passed on) is mended for the request
and not remembered. Any other ValidationException behaves as before.

The fake Bedrock Runtime is the other tests' (tests/fakes/bedrock.py), here in a Region where
some models have no prompt caching yet although failoverd's id rule says they do: it answers
their cache points with Bedrock's 400 ValidationException, and others' with scripted
refusals, as the real service words them.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from failoverd.clock import ManualClock
from failoverd.config import ModelConfig
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import HttpClient
from failoverd.providers.base import AttemptLimits
from failoverd.providers.bedrock import UNCACHED_SECONDS, cache_refusal, classify_error
from failoverd.translate.anthropic import anthropic_to_canonical
from tests.fakes.base import fake_fixture
from tests.fakes.bedrock import (
    API_KEY,
    ERRORS,
    NO_CACHING,
    FakeBedrock,
    Logged,
    _prompt_blocks,
    event,
    exception,
)
from tests.test_bedrock_caching_thinking import KEY_ENV, SONNET_45, config
from tests.test_prompt_caching import tool_loop
from tests.test_provider_bedrock import provider_for
from tests.test_sdk_clients import anthropic_client

TOO_MANY = ("The model returned the following errors: A maximum of 4 blocks with cache_control "
            "may be provided. Found 5.")
AFTER_REASONING = ("Cache point cannot be inserted after reasoning block. Please remove the "
                   "invalid cache point and try again.")
NO_EXPLICIT = "You do not have access to explicit prompt caching"
LIMITS = AttemptLimits(total=5, connect=2, first_token=5, idle=5)
RESENDS = re.compile(r'^failoverd_upstream_resends_total\{model="bedrock/sonnet45",'
                     r'why="cache_points"\} (\d+)$', re.MULTILINE)


def has_points(body: Any) -> bool:
    return isinstance(body, dict) and any("cachePoint" in b for b in _prompt_blocks(body))


@dataclass
class CachelessBedrock(FakeBedrock):
    """The fake Bedrock Runtime where the `uncached` models have no prompt caching (their
    cache points get Bedrock's 400), and requests with cache points first get the scripted
    `refusals` ((status, error type, message), one each; status 200: a stream's exception
    frame after its messageStart)."""

    uncached: set[str] = field(default_factory=set, kw_only=True)
    refusals: deque[tuple[int, str, str]] = field(default_factory=deque, kw_only=True)

    async def _converse(self, request: web.Request) -> web.StreamResponse:
        model = request.match_info["model"]
        body = orjson.loads(await request.read())
        if has_points(body) and (model in self.uncached or self.refusals):
            self.requests.append(Logged(request.raw_path, model, dict(request.headers), body))
            status, kind, message = self.refusals.popleft() if self.refusals \
                else (400, "ValidationException", NO_CACHING)
            if status == 200:
                resp = web.StreamResponse(headers={
                    "Content-Type": "application/vnd.amazon.eventstream"})
                await resp.prepare(request)
                await resp.write(event("messageStart", {"role": "assistant"}))
                await resp.write(exception(kind, message))
                return resp
            return self._aws_error(status, kind, orjson.dumps({"message": message}))
        return await super()._converse(request)


cacheless_bedrock = fake_fixture(CachelessBedrock, "cacheless_bedrock")


@pytest.fixture
async def rig(cacheless_bedrock: Callable[..., Awaitable[CachelessBedrock]], fake_openai: Any,
              start_daemon: Any) -> Any:
    fake, backup = await cacheless_bedrock(), await fake_openai()
    d = await start_daemon(config(fake, backup.url), env={KEY_ENV: API_KEY})
    client = anthropic_client(d.socket)
    yield fake, backup, d, client
    await client.close()


async def resends(d: Any) -> int:
    """failoverd_upstream_resends_total of bedrock/sonnet45 (process-wide: compare deltas)."""
    text = (await d.http.get("/metrics")).text
    match = RESENDS.search(text)
    assert "failoverd_failovers_total{" not in text  # nothing failed over, ever
    return int(match[1]) if match else 0


def sent(fake: CachelessBedrock, since: int) -> list[bool]:
    """Whether each request to the fake since the `since`-th carried cache points."""
    return [has_points(r.body) for r in fake.requests[since:]]


async def post_stream(d: Any, body: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    resp = await d.http.post("/v1/messages", content=orjson.dumps({**body, "stream": True}),
                             headers={"content-type": "application/json",
                                      "anthropic-version": "2023-06-01"})
    return resp, [orjson.loads(line[6:]) for line in resp.text.splitlines()
                  if line.startswith("data: ")]


# ------------------------------------------------------------------ end to end


async def test_a_model_without_caching_serves_without_cache_points_and_is_remembered(
        rig: Any) -> None:
    fake, backup, d, client = rig
    fake.uncached.add(SONNET_45)
    before = await resends(d)
    raw = await client.messages.with_raw_response.create(**tool_loop("default"))
    answer = await raw.parse()
    # the same model answered, in one attempt: no failover, the backup never asked
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet45"
    assert raw.headers["x-failoverd-attempts"] == "1"
    assert "x-failoverd-failover" not in raw.headers
    assert answer.content[0].text == "Hello from the fake Bedrock"
    assert backup.requests == []
    # the client is told why its prompt was not cached, in the header and the answer
    notice = ("bedrock/sonnet45: refused the request's cache points; sent again without them "
              "(not cached)")
    assert raw.headers["x-failoverd-notice"] == notice
    assert raw.http_response.json()["failoverd"]["notices"] == [notice]
    # refused with its cache points, then the same request without them (and only that)
    assert sent(fake, 0) == [True, False]
    first, again = fake.requests[0].body, fake.requests[1].body
    strip = orjson.loads(orjson.dumps(first).replace(b',{"cachePoint":{"type":"default"}}', b""))
    assert again == strip
    assert await resends(d) == before + 1
    # the next request goes without them at once: no refused call
    raw = await client.messages.with_raw_response.create(**tool_loop("default"))
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet45"
    assert sent(fake, 2) == [False]
    assert "x-failoverd-notice" not in raw.headers  # nothing was sent again
    assert await resends(d) == before + 1
    # nothing counted against the model: its breaker stays closed, no failure in its window
    state = (await d.http.get("/v1/status")).json()["models"]["bedrock/sonnet45"]
    assert state["breaker_state"] == "closed" and state["open_count"] == 0


async def test_a_reload_forgets_it(rig: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake, backup, d, client = rig
    monkeypatch.setenv(KEY_ENV, API_KEY)  # what a reload reads the key from
    fake.uncached.add(SONNET_45)
    await client.messages.create(**tool_loop("default"))
    assert sent(fake, 0) == [True, False]
    assert (await d.http.post("/v1/reload")).status_code == 200
    fake.uncached.clear()  # the Region has it now
    answer = await client.messages.create(**tool_loop("default"))
    assert sent(fake, 2) == [True]  # asked again with them, and cached
    assert answer.usage.cache_creation_input_tokens
    assert backup.requests == []


async def test_a_stream_is_sent_again_before_anything_reached_the_client(rig: Any) -> None:
    fake, backup, d, _ = rig
    fake.uncached.add(SONNET_45)
    before = await resends(d)
    resp, events = await post_stream(d, tool_loop("default"))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "bedrock/sonnet45"
    assert "x-failoverd-failover" not in resp.headers
    assert resp.headers["x-failoverd-notice"].startswith("bedrock/sonnet45: refused the")
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    text = "".join(e["delta"].get("text", "") for e in events
                   if e["type"] == "content_block_delta")
    assert text == "Hello from the fake Bedrock"
    assert [r.path.rsplit("/", 1)[-1] for r in fake.requests] == ["converse-stream"] * 2
    assert sent(fake, 0) == [True, False]
    assert backup.requests == []
    assert await resends(d) == before + 1
    resp, events = await post_stream(d, tool_loop("default"))
    assert resp.status_code == 200 and sent(fake, 2) == [False]


async def test_a_refusal_in_the_stream_before_its_content_is_mended_too(rig: Any) -> None:
    """An exception frame after the 200 (validationException), before any content: nothing
    reached the client yet, so the request goes again without its cache points."""
    fake, backup, d, _ = rig
    fake.refusals.append((200, "validationException", NO_CACHING))
    resp, events = await post_stream(d, tool_loop("default"))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "bedrock/sonnet45"
    assert "x-failoverd-failover" not in resp.headers and backup.requests == []
    assert events[-1]["type"] == "message_stop"
    assert sent(fake, 0) == [True, False]


@pytest.mark.parametrize("refusal", [
    (403, "AccessDeniedException", NO_CACHING),  # some accounts get it so
    (403, "AccessDeniedException", NO_EXPLICIT),
    (400, "ValidationException", "Malformed input request: #/system/1: extraneous key "
                                 "[cachePoint] is not permitted, please reformat your input "
                                 "and try again."),
])
async def test_other_words_for_a_model_without_caching(rig: Any,
                                                       refusal: tuple[int, str, str]) -> None:
    fake, backup, d, client = rig
    fake.refusals.append(refusal)
    raw = await client.messages.with_raw_response.create(**tool_loop("default"))
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet45"
    assert "x-failoverd-failover" not in raw.headers and backup.requests == []
    await client.messages.create(**tool_loop("default"))
    assert sent(fake, 0) == [True, False, False]  # remembered


@pytest.mark.parametrize("message", [TOO_MANY, AFTER_REASONING])
async def test_a_refusal_of_this_requests_points_is_mended_not_remembered(
        rig: Any, message: str) -> None:
    """The model caches, but Claude refused these points: this request goes again without
    them, and the next one has its points again (the model is not taken for one without
    caching)."""
    fake, backup, d, client = rig
    before = await resends(d)
    fake.refusals.append((400, "ValidationException", message))
    raw = await client.messages.with_raw_response.create(**tool_loop("default"))
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet45"
    assert "x-failoverd-failover" not in raw.headers and backup.requests == []
    answer = await client.messages.create(**tool_loop("default"))
    assert sent(fake, 0) == [True, False, True]
    assert answer.usage.cache_creation_input_tokens
    assert await resends(d) == before + 1


async def test_another_validation_exception_behaves_as_before(rig: Any) -> None:
    fake, backup, d, client = rig
    before = await resends(d)
    fake.push("validation")  # "extraneous key [foo]": the client's 400, no resend
    resp = await d.http.post("/v1/messages", content=orjson.dumps(tool_loop("default")),
                             headers={"content-type": "application/json",
                                      "anthropic-version": "2023-06-01"})
    assert resp.status_code == 400
    assert "extraneous key [foo]" in resp.text
    assert len(fake.requests) == 1 and backup.requests == []
    fake.push("no_tools")  # a feature the model lacks: fails over as incapable, as before
    raw = await client.messages.with_raw_response.create(**tool_loop("default"))
    assert raw.headers["x-failoverd-failover"] == "bedrock/sonnet45>backup/gpt:incapable"
    assert len(fake.requests) == 2 and len(backup.requests) == 1
    assert sent(fake, 0) == [True, True]  # the model still gets its cache points
    text = (await d.http.get("/metrics")).text
    match = RESENDS.search(text)
    assert (int(match[1]) if match else 0) == before


# ------------------------------------------------------------------ the adapter


async def test_the_memory_lasts_uncached_seconds(
        cacheless_bedrock: Callable[..., Awaitable[CachelessBedrock]]) -> None:
    fake = await cacheless_bedrock()
    fake.uncached.add(SONNET_45)
    clock = ManualClock()
    model = ModelConfig(id="bedrock/sonnet45", provider="bedrock", name=SONNET_45)
    body = anthropic_to_canonical(tool_loop(SONNET_45))
    async with HttpClient() as client:
        provider = provider_for(fake, client, api_key=API_KEY, clock=clock)
        await provider.complete(body, model, LIMITS)
        clock.advance(UNCACHED_SECONDS - 1)
        await provider.complete(body, model, LIMITS)
        assert sent(fake, 0) == [True, False, False]
        clock.advance(1)  # time to ask again: it may have gained prompt caching
        await provider.complete(body, model, LIMITS)
        assert sent(fake, 3) == [True, False]


async def test_a_request_without_cache_points_is_not_sent_again(
        cacheless_bedrock: Callable[..., Awaitable[CachelessBedrock]]) -> None:
    """The refusal's words with no cache point of ours to drop: raised as before."""
    fake = await cacheless_bedrock()
    fake.push("no_caching_403")
    model = ModelConfig(id="bedrock/sonnet45", provider="bedrock", name=SONNET_45)
    async with HttpClient() as client:
        provider = provider_for(fake, client, api_key=API_KEY)
        with pytest.raises(UpstreamError) as caught:
            await provider.complete({"messages": [{"role": "user", "content": "hi"}]}, model,
                                    LIMITS)
    assert caught.value.reason is FailureReason.INCAPABLE and caught.value.status == 403
    assert len(fake.requests) == 1


@pytest.mark.parametrize("status,kind,message,scope", [
    (400, "ValidationException", NO_CACHING, "model"),
    (400, "ValidationException", NO_CACHING.replace("model,", "model"), "model"),
    (403, "AccessDeniedException", NO_CACHING, "model"),
    (None, "validationException", NO_CACHING, "model"),  # an exception frame of a stream
    (403, "AccessDeniedException", NO_EXPLICIT, "model"),
    (400, "ValidationException", "Malformed input request: #/messages/0/content/1: "
                                 "extraneous key [cachePoint] is not permitted", "model"),
    (400, "ValidationException", TOO_MANY, "request"),
    (400, "ValidationException", AFTER_REASONING, "request"),
    (400, "ValidationException", "The model returned the following errors: a ttl='1h' "
                                 "cache_control block must not come after a ttl='5m' "
                                 "cache_control block.", "request"),
    # anything else is none of these
    (400, "ValidationException", "Operation not allowed", None),
    (400, "ValidationException", "Input is too long for requested model.", None),
    (400, "ValidationException", "This model doesn't support tool use in streaming mode.", None),
    (400, "ValidationException", orjson.loads(ERRORS["validation"][2])["message"], None),
    (429, "ThrottlingException", NO_CACHING, None),
    (500, "InternalServerException", NO_CACHING, None),
    (403, "AccessDeniedException", TOO_MANY, None),
])
def test_which_refusals_are_about_cache_points(status: int | None, kind: str, message: str,
                                               scope: str | None) -> None:
    assert cache_refusal(status, message, kind) == scope


def test_explicit_caching_denied_is_no_auth_block() -> None:
    """Were it not mended (no cache point to drop), the account's "no access to explicit
    prompt caching" is the candidate's incapability, not auth for every model."""
    assert classify_error(403, NO_EXPLICIT, "AccessDeniedException") is FailureReason.INCAPABLE


async def test_the_daemon_clock_ends_the_memory(
        cacheless_bedrock: Callable[..., Awaitable[CachelessBedrock]], fake_openai: Any,
        start_daemon: Any) -> None:
    """The adapter runs on the daemon's clock: simulated time ends the remembered refusal."""
    fake, backup = await cacheless_bedrock(), await fake_openai()
    clock = ManualClock()
    d = await start_daemon(config(fake, backup.url), env={KEY_ENV: API_KEY}, clock=clock)
    client = anthropic_client(d.socket)
    try:
        fake.uncached.add(SONNET_45)
        await client.messages.create(**tool_loop("default"))
        fake.uncached.clear()
        await client.messages.create(**tool_loop("default"))
        assert sent(fake, 0) == [True, False, False]  # remembered: none sent
        clock.advance(UNCACHED_SECONDS)
        await client.messages.create(**tool_loop("default"))
        assert sent(fake, 3) == [True]  # asked again with them
        assert backup.requests == []
    finally:
        await client.close()
