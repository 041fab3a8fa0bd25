"""Request ids end to end: the client's x-request-id kept (or one made), returned on every
answer of the proxied endpoints on both paths (the fast path and aiohttp's), in the access
log and the events a request causes; and the ids the upstreams gave each attempt, in the
503's attempts, the model:failover event and the access log."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp
import httpx
import pytest
from aiohttp import web

from failoverd import requestid
from failoverd.http1.parser import Headers
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import fake_fixture
from tests.fakes.bedrock import fake_bedrock
from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO, tcp_listener, until
from tests.test_bedrock_e2e import AWS_ENV
from tests.test_bedrock_e2e import daemon_config as bedrock_config
from tests.test_fastpath import ASK, NO_PROBES, connect, fast, own_daemon, post, read_answer

__all__ = ["fake_bedrock"]  # the fixture
ACCESS = "failoverd.access"
MADE = re.compile(r"[0-9a-f]{16}-[0-9a-f]+")  # an id failoverd made


def _stamping(header: str, prefix: str, sent: list[str]) -> Any:
    """An on_response_prepare signal that gives every answer an id, as the real API does."""
    numbers = itertools.count(1)

    async def stamp(request: web.Request, response: web.StreamResponse) -> None:
        rid = f"{prefix}{next(numbers):06d}"
        sent.append(rid)
        response.headers[header] = rid

    return stamp


class _Stamped:
    """A fake that gives every answer an id in `header` (`rid` and a number; `sent`, in
    order), as the real API does."""

    header: ClassVar[str]
    rid: str
    sent: list[str]

    async def _serve(self, app: web.Application, path: str = "/v1", **kwargs: Any) -> None:
        app.on_response_prepare.append(_stamping(self.header, self.rid, self.sent))
        await super()._serve(app, path, **kwargs)  # type: ignore[misc]  # a FakeServer's


@dataclass
class IdOpenAI(_Stamped, FakeOpenAI):
    """The fake OpenAI, with OpenAI's `x-request-id` on every answer."""

    header: ClassVar[str] = "x-request-id"
    rid: str = "req_oa"
    sent: list[str] = field(default_factory=list, kw_only=True)


@dataclass
class IdAnthropic(_Stamped, FakeAnthropic):
    """The fake Anthropic, with Anthropic's `request-id` on every answer."""

    header: ClassVar[str] = "request-id"
    rid: str = "req_01an"
    sent: list[str] = field(default_factory=list, kw_only=True)


id_openai = fake_fixture(IdOpenAI, "id_openai")
id_anthropic = fake_fixture(IdAnthropic, "id_anthropic")


def two_config(a: Any, b: Any, *, b_kind: str = "openai", head: str = "",
               more: str = "", a_model: str = "") -> str:
    """a/m (OpenAI) first, b/m (`b_kind`) after it; never probes, fails when all are down."""
    return f"""{head}
[providers.a]
kind = "openai"
base_url = "{a.url}"
[providers.b]
kind = "{b_kind}"
base_url = "{b.url}"
[models."a/m"]
provider = "a"
max_retries = 0
{a_model}
[models."b/m"]
provider = "b"
name = "claude-sonnet-4-5"
max_retries = 0
{more}
[routing]
primary = "a/m"
fallbacks = ["b/m"]
retry_after_max = 0
when_all_unavailable = "fail"
{NO_PROBES}"""


def access(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, Any]]]:
    return [(r.getMessage(), r.access) for r in caplog.records  # type: ignore[attr-defined]
            if r.name == ACCESS]


def events(d: Any, type_: str) -> list[dict[str, Any]]:
    return [e.fields for e in d.sup.service.bus.recent() if e.type == type_]


# ---------------------------------------------------------------------- the ids themselves


def test_made_ids_are_unique_and_carry_the_process_prefix() -> None:
    ids = [requestid.new() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(MADE.fullmatch(i) for i in ids)
    assert len({i.split("-")[0] for i in ids}) == 1  # one prefix per process


@pytest.mark.parametrize("client", [
    "abc", "req_0123-ABCD.xyz:/+=~!", "x" * 128,
])
def test_a_sane_client_id_is_kept(client: str) -> None:
    assert requestid.of(client) == client


@pytest.mark.parametrize("client", [
    None, "", "two words", "tab\there", "x" * 129, "caf\u00e9", "nul\x00", "del\x7f",
    "line\nbreak", "surrogate\udcff",
])
def test_an_insane_client_id_is_replaced(client: str | None) -> None:
    made = requestid.of(client)
    assert made != client and MADE.fullmatch(made)


def test_a_raw_head_gives_its_id() -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Request-ID:  abc-1 \r\n\r\n{"
    assert requestid.from_head(head) == "abc-1"
    assert MADE.fullmatch(requestid.from_head(b"POST /v1/chat/completions HTTP/1.1\r\n"))
    # a field of the body, not the head, is not it
    assert MADE.fullmatch(requestid.from_head(b"POST / HTTP/1.1\r\n\r\n\r\nx-request-id: no"))


def test_the_upstream_headers_of_each_provider() -> None:
    assert requestid.upstream_id(Headers({"x-request-id": "req_oa"})) == "req_oa"
    assert requestid.upstream_id(Headers({"request-id": "req_01an"})) == "req_01an"
    assert requestid.upstream_id(Headers({"x-amzn-requestid": "0f3c-bed"})) == "0f3c-bed"
    assert requestid.upstream_id(Headers({"apim-request-id": "az-1"})) == "az-1"
    # Azure sends both: x-request-id is the one taken
    assert requestid.upstream_id(Headers({"apim-request-id": "az-1",
                                          "x-request-id": "az-2"})) == "az-2"
    assert requestid.upstream_id(Headers({"content-type": "application/json"})) is None
    assert requestid.upstream_id(Headers({"x-request-id": "r" * 300})) == "r" * 128


# ---------------------------------------------------------------------- end to end


async def test_a_failover_carries_the_client_id_and_each_upstream_id(
        id_openai: Any, id_anthropic: Any, start_daemon: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """The openai SDK's request, its id kept through a failover from OpenAI (a 429 with
    x-request-id) to Anthropic (request-id): the answer, the model:failover event and the
    access log line name them all."""
    caplog.set_level(logging.INFO, logger=ACCESS)
    a = await id_openai(default="rate_limit")
    b = await id_anthropic()
    d = await start_daemon("access_log = true\n" + two_config(a, b, b_kind="anthropic"))
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO, extra_headers={"X-Request-Id": "client-42"})
    assert raw.headers["x-request-id"] == "client-42"
    assert raw.headers["x-failoverd-model"] == "b/m"
    failover, = events(d, "model:failover")
    assert failover["request_id"] == "client-42"
    assert failover["upstream_request_id"] == a.sent[0]  # the failed attempt's
    (text, line), = access(caplog)
    assert line["request_id"] == "client-42"
    assert line["upstream_request_id"] == b.sent[0]  # the serving attempt's
    assert f" rid=client-42 upstream_rid={b.sent[0]} " in text


async def test_every_candidate_failed_lists_each_attempts_upstream_id(
        id_openai: Any, id_anthropic: Any, start_daemon: Any) -> None:
    """The 503's attempts: each with the id its upstream answered with; a model called
    without one (a simulated one) or not called at all has null."""
    a = await id_openai(default="server_error")
    b = await id_anthropic(default="overloaded")
    d = await start_daemon(two_config(a, b, b_kind="anthropic", more="""
[providers.sim]
kind = "simulated"
simulate_failure = "rate_limit"
[models."sim/m"]
provider = "sim"
max_retries = 0
[chains.all]
models = ["a/m", "b/m", "sim/m"]"""))
    resp = await d.http.post("/v1/chat/completions", json={"model": "all", "messages": HELLO})
    assert resp.status_code == 503
    rid = resp.headers["x-request-id"]
    assert MADE.fullmatch(rid)
    attempts = resp.json()["error"]["attempts"]
    assert [(x["model"], x["upstream_request_id"]) for x in attempts] == [
        ("a/m", a.sent[-1]), ("b/m", b.sent[-1]), ("sim/m", None)]
    exhausted, = events(d, "chain:exhausted")
    assert exhausted["request_id"] == rid
    assert exhausted["attempts"] == attempts


async def test_both_paths_answer_with_the_id_served_streamed_or_refused(
        id_openai: Any, start_daemon: Any) -> None:
    """The fast path (plain requests) and aiohttp's (a query string sends it there), for
    answers served, streamed, refused for bad input, and on /v1/messages and
    /v1/embeddings."""
    a = await id_openai()
    d = await start_daemon(f"""
[providers.a]
kind = "openai"
base_url = "{a.url}"
[models."a/m"]
provider = "a"
[models."a/e"]
provider = "a"
capabilities = ["embeddings"]
{NO_PROBES}""")
    before = fast(d).served
    for query in ("", "?via=aiohttp"):
        sent = {"x-request-id": f"c{query or '-fast'}"}
        ok = await d.http.post(f"/v1/chat/completions{query}", json=ASK, headers=sent)
        assert (ok.status_code, ok.headers["x-request-id"]) == (200, sent["x-request-id"])
        async with d.http.stream("POST", f"/v1/chat/completions{query}",
                                 json={**ASK, "stream": True}, headers=sent) as stream:
            assert stream.headers["x-request-id"] == sent["x-request-id"]
            await stream.aread()
        bad = await d.http.post(f"/v1/chat/completions{query}", content=b"{",
                                headers={"content-type": "application/json", **sent})
        assert (bad.status_code, bad.headers["x-request-id"]) == (400, sent["x-request-id"])
        made = await d.http.post(f"/v1/messages{query}", json={
            "model": "a/m", "max_tokens": 10, "messages": HELLO})
        assert made.status_code == 200 and MADE.fullmatch(made.headers["x-request-id"])
        embed = await d.http.post(f"/v1/embeddings{query}",
                                  json={"model": "a/e", "input": "x"},
                                  headers={"x-request-id": "two words"})
        assert embed.status_code == 200 and MADE.fullmatch(embed.headers["x-request-id"])
    assert fast(d).served - before == 5  # the plain ones went the fast path
    # not a proxied endpoint: no id
    assert "x-request-id" not in (await d.http.get("/v1/health")).headers


async def test_refusals_before_any_upstream_carry_the_id(
        id_openai: Any, start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    """413 (too large a body), 503 overloaded (max_inflight), 404 of an unknown model: each
    with the id, and the access log says it."""
    caplog.set_level(logging.INFO, logger=ACCESS)
    a = await id_openai(default="slow:5")
    d = await start_daemon(f"""access_log = true
max_inflight = 1
max_body_bytes = 2048
[providers.a]
kind = "openai"
base_url = "{a.url}"
[models."a/m"]
provider = "a"
{NO_PROBES}""")
    big = await d.http.post("/v1/chat/completions", json={**ASK, "x": "y" * 4096},
                            headers={"x-request-id": "big"})
    assert (big.status_code, big.headers["x-request-id"]) == (413, "big")
    slow = asyncio.create_task(d.http.post("/v1/chat/completions", json=ASK))
    await until(lambda: d.sup.service.inflight == 1)
    busy = await d.http.post("/v1/chat/completions", json=ASK,
                             headers={"x-request-id": "busy"})
    assert (busy.status_code, busy.headers["x-request-id"]) == (503, "busy")
    slow.cancel()
    await asyncio.gather(slow, return_exceptions=True)
    lines = {line["request_id"]: line["status"] for _, line in access(caplog)}
    assert lines["big"] == 413 and lines["busy"] == 503


async def test_a_request_still_arriving_at_the_drain_gets_its_id(
        id_openai: Any, start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The fast path's own 503 for a body still arriving at the drain: the id of its head."""
    caplog.set_level(logging.INFO, logger=ACCESS)
    a = await id_openai()
    d = await start_daemon(f"""access_log = true
[providers.a]
kind = "openai"
base_url = "{a.url}"
[models."a/m"]
provider = "a"
{NO_PROBES}""")
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ASK, headers="X-Request-Id: late-1\r\n")[:-10])
        await until(lambda: any(c.need for c in fast(d).connections))
        d.sup.request_stop()
        answer = await read_answer(reader)
        assert (answer.status, answer.headers["x-request-id"]) == (503, "late-1")
    await d.stop()
    assert [(line["status"], line["request_id"]) for _, line in access(caplog)] == [
        (503, "late-1")]
    assert a.sent == []


async def test_a_hedge_and_its_event_carry_the_id(id_openai: Any, start_daemon: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """model:hedged names the request; the access log the upstream id of the hedge that
    served."""
    caplog.set_level(logging.INFO, logger=ACCESS)
    a = await id_openai(default="slow:5", rid="req_slow")
    b = await id_openai(rid="req_fast")
    d = await start_daemon("access_log = true\n" + two_config(
        a, b, a_model="hedge_after = 0.05"))
    resp = await d.http.post("/v1/chat/completions", json=ASK,
                             headers={"x-request-id": "hedged-1"})
    assert resp.status_code == 200 and resp.headers["x-failoverd-hedge"] == "a/m>b/m:won"
    assert resp.headers["x-request-id"] == "hedged-1"
    hedged, = events(d, "model:hedged")
    assert hedged["request_id"] == "hedged-1"
    _, line = access(caplog)[0]
    assert (line["request_id"], line["upstream_request_id"]) == ("hedged-1", b.sent[0])


async def test_the_aiohttp_client_sees_the_id_on_a_stream_to_messages(
        id_anthropic: Any, start_daemon: Any) -> None:
    """An Anthropic stream over aiohttp's client on the Unix socket: the head holds it."""
    b = await id_anthropic()
    d = await start_daemon(f"""
[providers.b]
kind = "anthropic"
base_url = "{b.url}"
[models."b/m"]
provider = "b"
name = "claude-sonnet-4-5"
{NO_PROBES}""")
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=d.socket)) as s:
        async with s.post("http://failoverd/v1/messages", json={
                "model": "b/m", "max_tokens": 10, "messages": HELLO, "stream": True},
                headers={"x-request-id": "anth-7"}) as resp:
            assert resp.status == 200
            assert resp.headers["x-request-id"] == "anth-7"
            body = await resp.read()
    assert b"message_stop" in body


async def test_bedrock_ids_reach_the_failover_event_and_the_access_log(
        fake_bedrock: Any, id_openai: Any, start_daemon: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    """Bedrock's x-amzn-RequestId: on its throttling error (the model:failover event), and
    on the stream it serves (the access log)."""
    caplog.set_level(logging.INFO, logger=ACCESS)
    fake = await fake_bedrock()
    backup = await id_openai()
    d = await start_daemon("access_log = true\n" + bedrock_config(fake, backup.url),
                           env=AWS_ENV)
    async with d.http.stream("POST", "/v1/chat/completions", json={**ASK, "stream": True},
                             headers={"x-request-id": "br-1"}) as stream:
        assert stream.headers["x-failoverd-model"] == "bedrock/sonnet"
        await stream.aread()
    fake.push("throttled", "throttled")  # the attempt and its same-model retry
    failed_over = await d.http.post("/v1/chat/completions", json=ASK)
    assert failed_over.headers["x-failoverd-model"] == "backup/gpt"
    failover, = events(d, "model:failover")
    assert failover["upstream_request_id"] == "0f3c1e6a-fake-4bd7-9d2c-bedrock00001"
    lines = [line for _, line in access(caplog)]
    assert [(x["request_id"] == "br-1", x["upstream_request_id"]) for x in lines] == [
        (True, "0f3c1e6a-fake-4bd7-9d2c-bedrock00002"), (False, backup.sent[0])]


async def test_the_tcp_listener_stamps_its_answers_and_refusals(
        id_openai: Any, start_daemon: Any, short_dir: Any) -> None:
    """The loopback TCP listener: its 401 (no token) and its answers carry the id."""
    a = await id_openai()
    port, lines = tcp_listener(short_dir)
    await start_daemon(lines + f"""
[providers.a]
kind = "openai"
base_url = "{a.url}"
[models."a/m"]
provider = "a"
{NO_PROBES}""")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as tcp:
        refused = await tcp.post("/v1/chat/completions", json=ASK,
                                 headers={"x-request-id": "tcp-0"})
        assert (refused.status_code, refused.headers["x-request-id"]) == (401, "tcp-0")
        served = await tcp.post("/v1/chat/completions", json=ASK, headers={
            "x-request-id": "tcp-1", "authorization": "Bearer s3cret"})
        assert (served.status_code, served.headers["x-request-id"]) == (200, "tcp-1")
    assert a.sent and len(a.sent) == 1


async def test_a_stream_that_breaks_is_logged_with_its_request_id(
        id_openai: Any, start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The warning for a stream that failed after its first chunk names the request."""
    caplog.set_level(logging.WARNING, logger="failoverd.api.proxy")
    a = await id_openai(default="stream_error")
    d = await start_daemon(f"""
[providers.a]
kind = "openai"
base_url = "{a.url}"
[models."a/m"]
provider = "a"
{NO_PROBES}""")
    async with d.http.stream("POST", "/v1/chat/completions", json={**ASK, "stream": True},
                             headers={"x-request-id": "broken-1"}) as stream:
        assert stream.headers["x-request-id"] == "broken-1"
        await stream.aread()
    assert any(r.getMessage().startswith("stream from a/m failed after the first chunk: ")
               and r.getMessage().endswith(" (request broken-1)") for r in caplog.records)


async def test_responses_completions_and_speech_answer_with_the_id(start_daemon: Any) -> None:
    """The other proxied endpoints: /v1/responses and /v1/completions (fast path), and
    /v1/audio/speech (aiohttp's path), its audio streamed and a refusal of bad input."""
    d = await start_daemon(f"""
[providers.s]
kind = "simulated"
[models."s/m"]
provider = "s"
[models."s/tts"]
provider = "s"
capabilities = ["speech"]
{NO_PROBES}""")
    asks = {"/v1/responses": {"model": "s/m", "input": "hi"},
            "/v1/completions": {"model": "s/m", "prompt": "hi"},
            "/v1/audio/speech": {"model": "s/tts", "input": "hi", "voice": "alloy",
                                 "response_format": "wav"}}
    for path, body in asks.items():
        ok = await d.http.post(path, json=body, headers={"x-request-id": f"ok{path}"})
        assert (ok.status_code, ok.headers["x-request-id"]) == (200, f"ok{path}"), ok.text
        bad = await d.http.post(path, json={**body, "model": 7})
        assert bad.status_code == 400 and MADE.fullmatch(bad.headers["x-request-id"])


async def test_a_same_model_retry_is_logged_with_its_request_id(
        id_openai: Any, start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="failoverd.dispatch")
    a = await id_openai()
    a.push("server_error")
    d = await start_daemon(f"""
[providers.a]
kind = "openai"
base_url = "{a.url}"
[models."a/m"]
provider = "a"
max_retries = 1
{NO_PROBES}""")
    ok = await d.http.post("/v1/chat/completions", json=ASK, headers={"x-request-id": "rt-1"})
    assert ok.status_code == 200 and ok.headers["x-failoverd-attempts"] == "2"
    assert any(r.getMessage().startswith("retrying a/m after server_error in ")
               and r.getMessage().endswith(" (request rt-1)") for r in caplog.records)


async def test_a_stalled_body_gets_the_id_of_its_head(id_openai: Any, short_dir: Any) -> None:
    """The fast path's 408 for a body that stopped arriving (its idle_timeout, a loop timer
    of 0.2 s here): the x-request-id its head sent."""
    a = await id_openai()
    body = f"""
[providers.a]
kind = "openai"
base_url = "{a.url}"
[models."a/m"]
provider = "a"
{NO_PROBES}"""
    async with own_daemon(short_dir, body) as (_, sock), connect(sock) as (reader, writer):
        writer.write(post(ASK, headers="x-request-id: stall-1\r\n")[:-5])
        answer = await read_answer(reader)
    assert (answer.status, answer.headers["x-request-id"]) == (408, "stall-1")
    assert a.sent == []


async def test_a_hedged_stream_logs_the_serving_lanes_upstream_id(
        id_openai: Any, start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The slow lane's head (and its id) came first, its first chunk never: the line names
    the id of the lane that served, each lane keeping its own."""
    caplog.set_level(logging.INFO, logger=ACCESS)
    a = await id_openai(default="comments:5", rid="req_slow")
    b = await id_openai(rid="req_fast")
    d = await start_daemon("access_log = true\n" + two_config(
        a, b, a_model="hedge_after = 0.05"))
    async with d.http.stream("POST", "/v1/chat/completions", json={**ASK, "stream": True},
                             headers={"x-request-id": "hs-1"}) as stream:
        assert stream.headers["x-failoverd-hedge"] == "a/m>b/m:won"
        await stream.aread()
    assert a.sent and b.sent
    _, line = access(caplog)[0]
    assert (line["request_id"], line["upstream_request_id"]) == ("hs-1", b.sent[0])
