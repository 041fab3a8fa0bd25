"""Hedged requests end to end: the daemon on a Unix socket, fake OpenAI upstreams on
127.0.0.1 whose latency the tests set, the openai SDK and raw HTTP as clients.

hedge_after is about real upstream latency (a loop timer, as the upstream calls' own
timeouts), so the fakes take tens of milliseconds where a test needs a model to be slow."""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from failoverd.clock import ManualClock
from tests.fakes.base import fake_fixture
from tests.fakes.bedrock import API_KEY
from tests.fakes.openai import FakeOpenAI, Logged
from tests.helpers import HELLO, breaker, chat, metric, sse_json, until
from tests.mosquitto import Mosquitto, Recorder, requires_mosquitto
from tests.mosquitto import mosquitto as mosquitto  # the fixture
from tests.test_audio import Whisper
from tests.test_bedrock_cache_resend import cacheless_bedrock as cacheless_bedrock
from tests.test_bedrock_caching_thinking import KEY_ENV, SONNET_45
from tests.test_bedrock_caching_thinking import config as bedrock_config
from tests.test_events_e2e import sse
from tests.test_prompt_caching import tool_loop
from tests.test_sdk_clients import anthropic_client
from tests.test_stream_review import WatchedOpenAI, raw_stream
from tests.test_upstream_limits import OPENAI_SHORT, OPENAI_SPENT, LimitedOpenAI
from tests.test_upstream_limits_e2e import skips

A, B, C = "a/gpt-a", "b/gpt-b", "c/gpt-c"

# fake OpenAI upstreams that notice when the daemon drops their connection (`gone`)
watched_openai = fake_fixture(WatchedOpenAI, "watched_openai")
limited_openai = fake_fixture(LimitedOpenAI, "limited_openai")


def config(*fakes: FakeOpenAI, routing: str = "hedge_after = 0.05", models: str = "",
           fallbacks: str = "", timeout: float = 10) -> str:
    """Models a/gpt-a, b/gpt-b (and c/gpt-c) on the fakes, in that order, no retries;
    `models` adds keys to every model (one string) or per model (a dict as text is not
    TOML: give `models` as lines ending each model's table)."""
    names = [A, B, C][:len(fakes)]
    body = ""
    for name, fake in zip(names, fakes, strict=True):
        p = name[0]
        body += (f'[providers.{p}]\nkind = "openai"\nbase_url = "{fake.url}"\n'
                 f'timeout = {timeout}\n'
                 f'[models."{name}"]\nprovider = "{p}"\nmax_retries = 0\n')
        body += _model_extra(models, name)
    chain = fallbacks or orjson.dumps(names[1:]).decode()
    return f"""{body}
[routing]
primary = "{A}"
fallbacks = {chain}
when_all_unavailable = "fail"
deadline = 10
{routing}
[probes]
kind = "none"
"""


def _model_extra(models: str, name: str) -> str:
    # `models`: lines "<model id>: key = value" for one model
    lines = [line.split(": ", 1)[1] for line in models.splitlines()
             if line.startswith(f"{name}: ")]
    return "".join(f"{line}\n" for line in lines)


def hedged_events(d: Any) -> list[dict[str, Any]]:
    """The model:hedged events' fields; each names its request (request_id, checked here and
    left out: tests/test_request_id.py follows it)."""
    out = []
    for e in d.sup.service.bus.recent():
        if e.type == "model:hedged":
            fields = dict(e.fields)
            assert isinstance(fields.pop("request_id"), str)
            out.append(fields)
    return out


def event_types(d: Any) -> list[str]:
    return [e.type for e in d.sup.service.bus.recent()]


async def test_a_slow_primary_is_hedged_and_the_fast_fallback_wins(
        start_daemon: Any, fake_openai: Any, watched_openai: Any) -> None:
    a = await watched_openai(default="slow:5", reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(config(a, b))
    started = time.monotonic()
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO, extra_headers={"x-failoverd-session": "s1"})
    took = time.monotonic() - started
    answer = raw.parse()
    assert answer.choices[0].message.content == "from b"
    assert took < 1.0  # not the primary's 5 s
    assert raw.headers["x-failoverd-model"] == B
    assert raw.headers["x-failoverd-attempts"] == "2"  # both upstream calls
    assert raw.headers["x-failoverd-hedge"] == f"{A}>{B}:won"
    assert "x-failoverd-failover" not in raw.headers  # a hedge is not a failover
    # the primary's call was cut: its connection closed, not left to run for 5 s
    await asyncio.wait_for(a.gone.wait(), 2)
    assert len(a.chat_requests()) == 1 and len(b.chat_requests()) == 1
    # the cancelled attempt is no failure of the primary's: its breaker is untouched
    assert await breaker(d, A) == ("closed", 0)
    health = d.sup.service.health
    assert health.inflight(A) == 0 and health.inflight(B) == 0
    events = hedged_events(d)
    assert events == [{"from_model": A, "to_model": B, "after": 0.05, "winner": B,
                       "outcome": "won", "session": "s1"}]
    assert "model:failover" not in event_types(d)
    assert await metric(
        d, f'failoverd_hedges_total{{model="{A}",to_model="{B}",outcome="won"}} 1')
    assert await metric(d, f'failoverd_requests_total{{model="{B}",outcome="ok"}} 1')
    # the winner's usage is counted, once
    assert await metric(d, f'failoverd_tokens_total{{model="{B}",kind="prompt"}} 9')
    # a hedge does not make the session sticky: the next request starts at the primary
    a.default = "ok"
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO, extra_headers={"x-failoverd-session": "s1"})
    assert raw.headers["x-failoverd-model"] == A


async def test_a_hedge_that_wins_after_the_original_failed_makes_the_session_sticky(
        start_daemon: Any, fake_openai: Any) -> None:
    # the primary fails (a 500 after 0.15 s) while its hedge, started at 0.05 s, is still on
    # its way: unhedged, that failure would have been a failover and the session would
    # stick to the fallback; so it does after the hedge
    a = await fake_openai(default="late:0.15:server_error", reply="from a")
    b = await fake_openai(default="slow:0.4", reply="from b")
    d = await start_daemon(config(a, b))
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO, extra_headers={"x-failoverd-session": "s2"})
    assert raw.parse().choices[0].message.content == "from b"
    assert raw.headers["x-failoverd-hedge"] == f"{A}>{B}:won"
    assert await breaker(d, A) == ("closed", 1)  # the primary's failure counted
    a.default = "ok"
    b.default = "ok"
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO, extra_headers={"x-failoverd-session": "s2"})
    assert raw.headers["x-failoverd-model"] == B  # sticky, as after a failover
    assert len(a.chat_requests()) == 1
    # another session, never failed, starts at the primary
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO, extra_headers={"x-failoverd-session": "s3"})
    assert raw.headers["x-failoverd-model"] == A


async def test_a_fast_primary_is_not_hedged(
        start_daemon: Any, fake_openai: Any, watched_openai: Any) -> None:
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(config(a, b, routing="hedge_after = 0.3"))
    for _ in range(3):
        resp = await chat(d)
        assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == A
        assert "x-failoverd-hedge" not in resp.headers
        assert resp.headers["x-failoverd-attempts"] == "1"
    assert len(a.chat_requests()) == 3 and b.chat_requests() == []
    assert hedged_events(d) == []
    assert "failoverd_hedges_total{" not in (await d.http.get("/metrics")).text


async def test_the_primary_answering_first_makes_the_hedge_lose(
        start_daemon: Any, fake_openai: Any, watched_openai: Any) -> None:
    a = await fake_openai(default="slow:0.15", reply="from a")
    b = await watched_openai(default="slow:5", reply="from b")
    d = await start_daemon(config(a, b))
    resp = await chat(d)
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] \
        == "from a"
    assert resp.headers["x-failoverd-model"] == A
    assert resp.headers["x-failoverd-hedge"] == f"{A}>{B}:lost"
    assert resp.headers["x-failoverd-attempts"] == "2"
    await asyncio.wait_for(b.gone.wait(), 2)  # the hedge's call was cut
    assert await breaker(d, B) == ("closed", 0)
    assert hedged_events(d)[0]["winner"] == A
    assert await metric(
        d, f'failoverd_hedges_total{{model="{A}",to_model="{B}",outcome="lost"}} 1')


async def test_a_stream_late_to_its_first_chunk_is_hedged_and_the_client_sees_one_stream(
        start_daemon: Any, fake_openai: Any, watched_openai: Any) -> None:
    # the primary has answered 200 and sends only SSE comments (OpenRouter's "PROCESSING")
    a = await watched_openai(default="comments:5", reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(config(a, b))
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "default", "messages": HELLO, "stream": True})
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == B
    assert resp.headers["x-failoverd-hedge"] == f"{A}>{B}:won"
    assert resp.headers["x-failoverd-attempts"] == "2"
    assert resp.text.count("data: [DONE]") == 1
    chunks = sse_json(resp.text)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c["choices"])
    assert text == "from b"  # one clean stream, nothing of the primary's
    assert ": PROCESSING" not in resp.text
    await asyncio.wait_for(a.gone.wait(), 2)
    assert await breaker(d, A) == ("closed", 0)
    assert d.sup.service.health.inflight(A) == 0
    await until(lambda: d.sup.service.health.inflight(B) == 0)


async def test_when_both_fail_the_chain_goes_on(
        start_daemon: Any, fake_openai: Any, watched_openai: Any) -> None:
    # a times out at its provider's 0.3 s; its hedge b fails at once; c serves
    a = await fake_openai(default="hang")
    b = await fake_openai(default="server_error")
    c = await fake_openai(reply="from c")
    d = await start_daemon(config(a, b, c, timeout=0.3))
    resp = await chat(d)
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == C
    assert resp.headers["x-failoverd-hedge"] == f"{A}>{B}:failed"
    assert resp.headers["x-failoverd-attempts"] == "3"
    # the hop to c follows the pair's last failure (a's timeout)
    assert resp.headers["x-failoverd-failover"] == f"{A}>{C}:timeout"
    # both failures were counted as usual
    assert (await breaker(d, A))[1] == 1 and (await breaker(d, B))[1] == 1
    assert [e for e in event_types(d) if e == "model:failover"] == ["model:failover"]
    assert hedged_events(d)[0]["winner"] is None
    assert len(c.chat_requests()) == 1 and len(b.chat_requests()) == 1


async def test_both_failing_with_nothing_left_is_the_503_listing_both(
        start_daemon: Any, fake_openai: Any, watched_openai: Any) -> None:
    a = await fake_openai(default="hang")
    b = await fake_openai(default="rate_limit_long")
    d = await start_daemon(config(a, b, timeout=0.2))
    resp = await chat(d)
    assert resp.status_code == 503
    attempts = resp.json()["error"]["attempts"]
    assert [(x["model"], x["reason"]) for x in attempts] == [
        (B, "rate_limit"), (A, "timeout")]
    assert resp.headers["x-failoverd-hedge"] == f"{A}>{B}:failed"
    assert resp.headers["x-failoverd-attempts"] == "2"


async def test_the_hedge_goes_to_the_next_available_candidate_and_never_waits(
        start_daemon: Any, fake_openai: Any, watched_openai: Any) -> None:
    a = await fake_openai(default="slow:0.15", reply="from a")
    b = await fake_openai(reply="from b")
    c = await fake_openai(reply="from c")
    d = await start_daemon(config(a, b, c))
    assert (await d.http.post(f"/v1/models/{B}/open")).status_code == 200
    resp = await chat(d)
    assert resp.headers["x-failoverd-model"] == C  # b is open: skipped, not waited for
    assert resp.headers["x-failoverd-hedge"] == f"{A}>{C}:won"
    assert b.chat_requests() == []
    # nothing available to hedge to: the primary alone, however slow
    assert (await d.http.post(f"/v1/models/{C}/open")).status_code == 200
    resp = await chat(d)
    assert resp.headers["x-failoverd-model"] == A
    assert "x-failoverd-hedge" not in resp.headers
    assert resp.headers["x-failoverd-attempts"] == "1"
    assert b.chat_requests() == [] and len(c.chat_requests()) == 1


async def test_a_candidate_at_its_max_concurrency_is_not_hedged_to(
        start_daemon: Any, fake_openai: Any, watched_openai: Any) -> None:
    a = await fake_openai(default="slow:0.15", reply="from a")
    b = await fake_openai(default="slow:0.4", reply="from b")
    d = await start_daemon(config(a, b, models=f"{B}: max_concurrency = 1"))
    busy = asyncio.create_task(chat(d, B, **{"x-failoverd-no-fallback": "1"}))
    await until(lambda: len(b.chat_requests()) == 1)
    resp = await chat(d)
    assert resp.headers["x-failoverd-model"] == A
    assert "x-failoverd-hedge" not in resp.headers
    assert (await busy).headers["x-failoverd-model"] == B
    assert len(b.chat_requests()) == 1


async def test_no_hedge_for_a_pinned_request(
        start_daemon: Any, fake_openai: Any, watched_openai: Any) -> None:
    a = await fake_openai(default="slow:0.2", reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(config(a, b))
    asking = asyncio.create_task(chat(d, A, **{"x-failoverd-no-fallback": "1"}))
    await until(lambda: len(a.chat_requests()) == 1)
    assert lanes() == []  # nothing to hedge to: the attempt runs in the request's task
    resp = await asking
    assert resp.headers["x-failoverd-model"] == A
    assert "x-failoverd-hedge" not in resp.headers and b.chat_requests() == []


async def test_no_hedge_starts_past_the_deadline(
        start_daemon: Any, fake_openai: Any, watched_openai: Any) -> None:
    a = await fake_openai(default="slow:0.15", reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(config(a, b, routing="hedge_after = 0.3"))
    # the client's deadline ends before hedge_after: no hedge could start in time
    resp = await chat(d, **{"x-failoverd-deadline": "0.25"})
    assert resp.headers["x-failoverd-model"] == A
    assert "x-failoverd-hedge" not in resp.headers and b.chat_requests() == []


async def test_the_deadline_ends_both_attempts(
        start_daemon: Any, fake_openai: Any, watched_openai: Any) -> None:
    a = await watched_openai(default="hang")
    b = await fake_openai(default="hang")
    d = await start_daemon(config(a, b))
    started = time.monotonic()
    resp = await chat(d, **{"x-failoverd-deadline": "0.3"})
    took = time.monotonic() - started
    assert resp.status_code == 503 and took < 0.8
    attempts = resp.json()["error"]["attempts"]
    assert sorted(x["model"] for x in attempts) == [A, B]
    assert {x["reason"] for x in attempts} == {"timeout"}
    assert resp.headers["x-failoverd-hedge"] == f"{A}>{B}:failed"
    # the client's short deadline cut them: not the models' failures
    assert await breaker(d, A) == ("closed", 0) and await breaker(d, B) == ("closed", 0)


async def test_a_client_going_away_cancels_both_attempts(
        start_daemon: Any, fake_openai: Any, watched_openai: Any) -> None:
    a = await watched_openai(default="comments:5")
    b = await watched_openai(default="comments:5")
    d = await start_daemon(config(a, b))
    _, writer = await raw_stream(d.socket, "/v1/chat/completions", {
        "model": "default", "messages": HELLO, "stream": True})
    await until(lambda: len(b.chat_requests()) == 1)  # the hedge is under way
    writer.close()
    await asyncio.wait_for(a.gone.wait(), 2)
    await asyncio.wait_for(b.gone.wait(), 2)
    health = d.sup.service.health
    await until(lambda: health.inflight(A) == 0 and health.inflight(B) == 0)
    assert await breaker(d, A) == ("closed", 0) and await breaker(d, B) == ("closed", 0)
    await until(lambda: hedged_events(d) != [])
    assert hedged_events(d)[0]["outcome"] == "cancelled"
    assert hedged_events(d)[0]["winner"] is None


@pytest.mark.parametrize(("routing", "models", "hedged"), [
    ("hedge_after = 0", f"{A}: hedge_after = 0.05", True),   # on for the slow model only
    ("hedge_after = 0.05", f"{A}: hedge_after = 0", False),  # off for it
    ("hedge_after = 5", f"{A}: hedge_after = 0.05", True),   # sooner for it
])
async def test_a_models_hedge_after_overrides_routings(
        start_daemon: Any, fake_openai: Any, routing: str, models: str, hedged: bool) -> None:
    a = await fake_openai(default="slow:0.25", reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(config(a, b, routing=routing, models=models))
    resp = await chat(d)
    assert resp.headers["x-failoverd-model"] == (B if hedged else A)
    assert ("x-failoverd-hedge" in resp.headers) is hedged
    assert len(b.chat_requests()) == int(hedged)


async def test_a_hooks_model_hedged_subscription_gets_the_event(
        start_daemon: Any, fake_openai: Any, tmp_path: Any) -> None:
    out = tmp_path / "events"
    hook = tmp_path / "hook"
    hook.write_text(f"#!/bin/sh\ncat >> {out}\necho >> {out}\n")
    hook.chmod(0o755)
    a = await fake_openai(default="slow:5")
    b = await fake_openai(reply="from b")
    d = await start_daemon(config(a, b) + f'[[hooks]]\nevents = ["model:hedged", '
                           f'"model:failover"]\nexec = ["{hook}"]\n')
    resp = await chat(d)
    assert resp.headers["x-failoverd-model"] == B
    await until(lambda: out.exists() and out.read_text().strip() != "")
    lines = [orjson.loads(x) for x in out.read_text().splitlines() if x.strip()]
    assert [x["type"] for x in lines] == ["model:hedged"]  # no model:failover hook run
    assert lines[0]["to_model"] == B and lines[0]["outcome"] == "won"


async def test_embeddings_are_hedged_within_their_chain(
        start_daemon: Any, fake_openai: Any) -> None:
    a = await fake_openai(default="slow:5")
    b = await fake_openai()
    d = await start_daemon(f"""
[providers.a]
kind = "openai"
base_url = "{a.url}"
[providers.b]
kind = "openai"
base_url = "{b.url}"
[models."a/embed"]
provider = "a"
name = "text-embedding-3-small"
capabilities = ["embeddings"]
[models."b/embed"]
provider = "b"
name = "text-embedding-3-small"
capabilities = ["embeddings"]
[chains.vectors]
models = ["a/embed", "b/embed"]
[routing]
hedge_after = 0.05
when_all_unavailable = "fail"
[probes]
kind = "none"
""")
    raw = await d.openai.embeddings.with_raw_response.create(model="vectors", input="hi")
    assert len(raw.parse().data[0].embedding) == 8
    assert raw.headers["x-failoverd-model"] == "b/embed"
    assert raw.headers["x-failoverd-hedge"] == "a/embed>b/embed:won"
    assert len(a.embedding_requests()) == 1 and len(b.embedding_requests()) == 1


class SlowWhisper(Whisper):
    """The speech-to-text fake, answering after `delay` seconds."""

    def __init__(self, name: str, delay: float) -> None:
        super().__init__(name)
        self.delay = delay

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(self.delay)
        return await super()._handle(request)


async def test_transcriptions_are_never_hedged(start_daemon: Any) -> None:
    slow, fast = await SlowWhisper("slow", 0.25).start(), await Whisper("fast").start()
    try:
        d = await start_daemon(f"""
[providers.s]
kind = "openai"
base_url = "{slow.url}"
[providers.f]
kind = "openai"
base_url = "{fast.url}"
[models."s/whisper"]
provider = "s"
name = "whisper-1"
capabilities = ["transcription"]
[models."f/whisper"]
provider = "f"
name = "whisper-1"
capabilities = ["transcription"]
[models."s/chat"]
provider = "s"
[chains.ears]
models = ["s/whisper", "f/whisper"]
[routing]
primary = "s/chat"
hedge_after = 0.05
when_all_unavailable = "fail"
[probes]
kind = "none"
""")
        raw = await d.openai.audio.transcriptions.with_raw_response.create(
            model="ears", file=("a.wav", b"RIFF0000WAVEfmt "))
        assert raw.headers["x-failoverd-model"] == "s/whisper"
        assert "x-failoverd-hedge" not in raw.headers
        assert len(slow.forms) == 1 and fast.forms == []  # one transcription made, not two
    finally:
        await slow.close()
        await fast.close()


@requires_mosquitto
async def test_model_hedged_reaches_mqtt_and_the_event_stream(
        start_daemon: Any, fake_openai: Any, mosquitto: Mosquitto) -> None:
    a = await fake_openai(default="slow:5")
    b = await fake_openai(reply="from b")
    mqtt = f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {mosquitto.port}\n'
    async with Recorder(mosquitto.port, "failoverd/hedges/events/#") as rec:
        d = await start_daemon(f'node = "hedges"\n{mqtt}{config(a, b)}')
        async with sse(d) as stream:
            await stream.until_connected()
            resp = await chat(d)
            assert resp.headers["x-failoverd-model"] == B
            live = await stream.next()
        await rec.wait_for(lambda msgs: any(m.topic.value.endswith("/model/hedged")
                                            for m in msgs))
    assert live is not None and live["event"] == "model:hedged"
    assert live["data"]["winner"] == B and live["data"]["outcome"] == "won"
    [message] = rec.on("failoverd/hedges/events/model/hedged")
    assert isinstance(message.payload, bytes)
    published = orjson.loads(message.payload)
    assert published["id"] == live["id"] and published["from_model"] == A
    assert [m.topic.value for m in rec.messages] == ["failoverd/hedges/events/model/hedged"]


async def test_a_losers_notice_does_not_reach_the_client(
        start_daemon: Any, cacheless_bedrock: Any, fake_openai: Any) -> None:
    # the primary's Bedrock refuses the cache points; the adapter notes it and sends the
    # request again, which is slow: the hedge to the backup wins, and the notice (about an
    # answer that was never served) used to reach the client all the same
    fake, backup = await cacheless_bedrock(), await fake_openai()
    fake.uncached.add(SONNET_45)
    fake.default = "slow:5"
    body = bedrock_config(fake, backup.url).replace("[routing]\n",
                                                    "[routing]\nhedge_after = 0.05\n")
    d = await start_daemon(body, env={KEY_ENV: API_KEY})
    client = anthropic_client(d.socket)
    try:
        raw = await client.messages.with_raw_response.create(**tool_loop("default"))
    finally:
        await client.close()
    assert raw.headers["x-failoverd-model"] == "backup/gpt"
    assert raw.headers["x-failoverd-hedge"] == "bedrock/sonnet45>backup/gpt:won"
    assert len(fake.requests) == 2  # refused with cache points, then sent again: cancelled
    assert "x-failoverd-notice" not in raw.headers
    assert "failoverd" not in raw.http_response.json()


@dataclass
class HalfAnswerOpenAI(WatchedOpenAI):
    """The fake OpenAI whose next `half` answers send their headers and half the body, then
    stall; it notes the client port of every request (a new connection or a reused one)."""

    half: int = 0
    ports: list[int] = field(default_factory=list, kw_only=True)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.ports.append(peer[1] if peer else 0)
        if not self.half:
            return await super()._chat(request)
        self.half -= 1
        body = orjson.loads(await request.read())
        self.requests.append(Logged(request.path, dict(request.headers), body))
        answer = orjson.dumps(self._completion(body))
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = len(answer)
        await resp.prepare(request)
        await resp.write(answer[:len(answer) // 2])
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.gone.set()
            raise
        return resp


half_answer_openai = fake_fixture(HalfAnswerOpenAI, "half_answer_openai")


async def test_a_loser_cut_mid_answer_is_not_pooled_half_read(
        start_daemon: Any, half_answer_openai: Any, fake_openai: Any) -> None:
    # the primary's answer stalls halfway through its body; the hedge wins; the primary's
    # connection, cancelled mid-body, must be closed: pooled, the next request on it would
    # read the rest of the old answer as its own
    a = await half_answer_openai(reply="from a", half=1)
    b = await fake_openai(reply="from b")
    d = await start_daemon(config(a, b, timeout=2))
    resp = await chat(d)
    assert resp.headers["x-failoverd-model"] == B
    assert resp.headers["x-failoverd-hedge"] == f"{A}>{B}:won"
    await asyncio.wait_for(a.gone.wait(), 2)
    for _ in range(2):
        resp = await chat(d)
        assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == A
        assert resp.json()["choices"][0]["message"]["content"] == "from a"
        assert "x-failoverd-hedge" not in resp.headers
    assert a.ports[1] != a.ports[0] and a.ports[2] == a.ports[1]  # a new one, then pooled
    assert d.sup.service.health.inflight(A) == 0


async def test_a_candidate_the_hedge_passes_over_is_not_counted_as_skipped(
        start_daemon: Any, fake_openai: Any, limited_openai: Any) -> None:
    # b's last answer said it has no requests left this minute: the hedge passes it over for
    # c, and that is no skip of b's (failoverd_upstream_limit_skips_total), which the chain
    # would count again if it came to b
    a = await fake_openai(reply="from a")
    b = await limited_openai(limits=OPENAI_SPENT, reply="from b")
    c = await fake_openai(reply="from c")
    d = await start_daemon(config(a, b, c), clock=ManualClock())
    assert (await chat(d, B, **{"x-failoverd-no-fallback": "1"})).status_code == 200
    skipped = await skips(d, B, "upstream_rpm")
    a.default = "slow:0.15"
    resp = await chat(d)
    assert resp.headers["x-failoverd-hedge"] == f"{A}>{C}:won"
    assert len(b.chat_requests()) == 1  # not called
    assert await skips(d, B, "upstream_rpm") == skipped


async def test_a_losing_hedge_gives_back_its_half_open_trial_and_counts_in_its_minute(
        start_daemon: Any, fake_openai: Any, watched_openai: Any) -> None:
    # b's breaker is half-open with one trial: the hedge takes it, loses, and must give it
    # back (else b stays half-open with its trial gone, never called again); its call counts
    # in b's max_rpm minute all the same
    a = await fake_openai(reply="from a")
    b = await watched_openai(reply="from b")
    clock = ManualClock()
    d = await start_daemon(config(a, b, models=f"{B}: max_rpm = 3") +
                           "[breaker]\nfailure_threshold = 1\nopen_seconds = 30\n", clock=clock)
    b.push("server_error")
    assert (await chat(d, B, **{"x-failoverd-no-fallback": "1"})).status_code == 503  # call 1
    assert (await breaker(d, B))[0] == "open"
    clock.advance(34)  # past open_seconds and its jitter (10%), within the minute
    a.default, b.default = "slow:0.15", "slow:5"
    resp = await chat(d)
    assert resp.headers["x-failoverd-model"] == A
    assert resp.headers["x-failoverd-hedge"] == f"{A}>{B}:lost"  # call 2
    await asyncio.wait_for(b.gone.wait(), 2)
    assert await breaker(d, B) == ("half_open", 1)  # no outcome: still on trial
    assert d.sup.service.health.inflight(B) == 0
    b.default = "ok"
    resp = await chat(d, B, **{"x-failoverd-no-fallback": "1"})  # call 3: the trial
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == B
    assert (await breaker(d, B))[0] == "closed"
    resp = await chat(d, B, **{"x-failoverd-no-fallback": "1"})
    assert resp.status_code == 503  # the minute's three calls are made
    assert resp.json()["error"]["attempts"][0]["message"] == "max_rpm"


async def test_a_client_leaving_a_plain_hedged_call_leaves_no_task_or_exception_behind(
        start_daemon: Any, watched_openai: Any, caplog: pytest.LogCaptureFixture) -> None:
    a = await watched_openai(default="slow:5")
    b = await watched_openai(default="slow:5")
    d = await start_daemon(config(a, b))
    _, writer = await raw_stream(d.socket, "/v1/chat/completions", {
        "model": "default", "messages": HELLO})
    await until(lambda: len(b.chat_requests()) == 1)
    assert len(lanes()) == 2  # the two attempts, each a task of its own
    writer.close()
    await asyncio.wait_for(a.gone.wait(), 2)
    await asyncio.wait_for(b.gone.wait(), 2)
    health = d.sup.service.health
    await until(lambda: health.inflight(A) == 0 and health.inflight(B) == 0)
    await until(lambda: hedged_events(d) != [])
    assert [e["outcome"] for e in hedged_events(d)] == ["cancelled"]
    assert await breaker(d, A) == ("closed", 0) and await breaker(d, B) == ("closed", 0)
    gc.collect()
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if r.name == "asyncio"], \
        [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert lanes() == []


def lanes() -> list[asyncio.Task[Any]]:
    """The running tasks of hedged attempts (hedge.run's lanes)."""
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") in (
        "Dispatcher._try_model", "run.<locals>.hedge")]


async def test_a_hedged_attempt_is_measured_against_its_upstreams_token_budget(
        start_daemon: Any, fake_openai: Any, limited_openai: Any) -> None:
    a = await limited_openai(limits=OPENAI_SHORT)  # 2,000 tokens left for 6 minutes
    b = await fake_openai()
    d = await start_daemon(config(a, b, routing="hedge_after = 5"), clock=ManualClock())
    assert (await chat(d)).headers["x-failoverd-model"] == A  # its answer tells the budget
    big = await d.http.post("/v1/chat/completions", json={"model": "default", "messages": [
        {"role": "user", "content": "lorem ipsum dolor sit amet " * 800}]})  # ~2,400 tokens
    assert big.headers["x-failoverd-model"] == B  # as with hedging off: a skipped, not called
    assert len(a.chat_requests()) == 1
