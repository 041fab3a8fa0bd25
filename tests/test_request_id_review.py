"""Request ids under attack: pipelined requests on one connection, hostile client ids and
upstream ids (log-line forging), same-model retries, hedges that fail, an upstream error
passed on, ids across processes, and what the SDKs read."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from typing import Any

import anthropic
import httpx2
import pytest
from aiohttp import web

from failoverd import requestid
from tests.fakes.base import fake_fixture
from tests.helpers import HELLO, sse_payloads, until
from tests.test_audio import AUDIO, Whisper
from tests.test_fastpath import ASK, NO_PROBES, connect, fast, post, read_answer
from tests.test_request_id import MADE, IdOpenAI, _stamping, access, events, two_config

ACCESS = "failoverd.access"


def one_openai(a: Any, more: str = "") -> str:
    return f"""access_log = true
[providers.a]
kind = "openai"
base_url = "{a.url}"
[models."a/m"]
provider = "a"
max_retries = 0
{more}
{NO_PROBES}"""


evil_openai = fake_fixture(IdOpenAI, "evil_openai")


async def test_pipelined_requests_keep_their_own_ids(
        evil_openai: Any, start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    a = await evil_openai()
    d = await start_daemon(one_openai(a))
    before = fast(d).served
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ASK, headers="X-Request-Id: p-1\r\n") + post(ASK)
                     + post(ASK, headers="x-request-id: p-3\r\n"))
        answers = [await read_answer(reader) for _ in range(3)]
    assert fast(d).served - before == 3
    ids = [x.headers["x-request-id"] for x in answers]
    assert ids[0] == "p-1" and ids[2] == "p-3" and MADE.fullmatch(ids[1])
    assert [line["request_id"] for _, line in access(caplog)] == ids
    assert [line["upstream_request_id"] for _, line in access(caplog)] == a.sent


async def test_an_upstream_id_cannot_forge_fields_of_the_text_access_log(
        evil_openai: Any, start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    a = await evil_openai(rid="x 200 model=evil uid=4242 #")
    d = await start_daemon(one_openai(a))
    ok = await d.http.post("/v1/chat/completions", json=ASK)
    assert ok.status_code == 200
    (text, line), = access(caplog)
    assert "uid=4242" not in text and "model=evil" not in text
    assert re.fullmatch(r"POST /v1/chat/completions 200 model=a/m attempts=1 failover=- "
                        r"rid=\S+ [0-9.]+ms uid=\S+", text), text
    assert line["upstream_request_id"] is None


async def test_a_wrong_method_on_a_proxied_path_answers_with_the_id(
        evil_openai: Any, start_daemon: Any) -> None:
    a = await evil_openai()
    d = await start_daemon(one_openai(a))
    resp = await d.http.get("/v1/chat/completions", headers={"x-request-id": "get-1"})
    assert resp.status_code == 405
    assert resp.headers.get("x-request-id") == "get-1"


async def test_hostile_client_ids_on_the_raw_socket(evil_openai: Any,
                                                    start_daemon: Any) -> None:
    """A folded line, a repeated field (aiohttp's path: the first is taken, as from_head
    does), a bare CR (aiohttp's 400): never a header injected into the answer."""
    a = await evil_openai()
    d = await start_daemon(one_openai(a))
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ASK, headers="X-Request-Id: a\r\n Injected: 1\r\n"))
        folded = await read_answer(reader)
    assert "injected" not in folded.headers
    if folded.status == 200:
        assert MADE.fullmatch(folded.headers["x-request-id"])
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ASK, headers="X-Request-Id: d-1\r\nX-Request-Id: d-2\r\n"))
        twice = await read_answer(reader)
    assert twice.status == 200 and twice.headers.getall("x-request-id") == ["d-1"]
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ASK, headers="X-Request-Id: c\rInjected: 1\r\n"))
        bare = await read_answer(reader)
    assert bare.status == 400 and "injected" not in bare.headers


async def test_a_passed_on_upstream_error_has_one_id_the_requests(
        evil_openai: Any, start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    a = await evil_openai(default="bad_param")
    d = await start_daemon(one_openai(a))
    for query in ("", "?via=aiohttp"):
        async with connect(d.socket) as (reader, writer):
            target = f"/v1/chat/completions{query}"
            writer.write(post(ASK, target, headers="x-request-id: bad-1\r\n"))
            answer = await read_answer(reader)
        assert answer.status == 400
        assert answer.headers.getall("x-request-id") == ["bad-1"]
    # the refused attempt's upstream id is in the line: what the provider's support needs
    assert [line["upstream_request_id"] for _, line in access(caplog)] == a.sent


async def test_retries_name_the_attempt_that_served_or_failed_last(
        evil_openai: Any, start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    a = await evil_openai()
    b = await evil_openai(rid="req_b")
    d = await start_daemon("access_log = true\n" + two_config(a, b).replace(
        'provider = "a"\nmax_retries = 0', 'provider = "a"\nmax_retries = 1'))
    a.push("server_error")
    ok = await d.http.post("/v1/chat/completions", json=ASK)
    assert ok.headers["x-failoverd-attempts"] == "2"
    assert access(caplog)[-1][1]["upstream_request_id"] == a.sent[1]
    a.push("server_error", "server_error")
    over = await d.http.post("/v1/chat/completions", json=ASK)
    assert over.headers["x-failoverd-model"] == "b/m"
    failover, = events(d, "model:failover")
    assert failover["upstream_request_id"] == a.sent[3]  # the last failed attempt's
    assert access(caplog)[-1][1]["upstream_request_id"] == b.sent[0]
    # as /v1/events shows it
    recent = await d.http.get("/v1/events", params={"recent": "1"})
    shown, = [e for e in sse_payloads(recent.content) if e["type"] == "model:failover"]
    assert (shown["request_id"], shown["upstream_request_id"]) == (
        over.headers["x-request-id"], a.sent[3])


async def test_a_hedge_whose_lanes_both_fail_lists_each_id_in_order(
        evil_openai: Any, start_daemon: Any) -> None:
    a = await evil_openai(rid="req_slow")
    b = await evil_openai(rid="req_fast")
    d = await start_daemon(two_config(a, b, a_model="hedge_after = 0.05"))
    a.default = "late:0.3:server_error"  # the hedge's lane (b) fails first
    b.default = "server_error"
    resp = await d.http.post("/v1/chat/completions", json={**ASK, "model": "a/m"},
                             headers={"x-request-id": "hf-1"})
    assert resp.status_code == 503 and resp.headers["x-request-id"] == "hf-1"
    attempts = resp.json()["error"]["attempts"]
    # in the order they failed: the hedge's lane first, then the slow original
    assert [(x["model"], x["upstream_request_id"]) for x in attempts] == [
        ("b/m", b.sent[0]), ("a/m", a.sent[0])], attempts
    exhausted, = events(d, "chain:exhausted")
    assert exhausted["request_id"] == "hf-1"


def test_made_ids_differ_across_processes_and_forks() -> None:
    """Two interpreters and a forked child: three prefixes."""
    code = ("import os, sys\nfrom failoverd import requestid\nprint(requestid.new())\n"
            "sys.stdout.flush()\npid = os.fork()\n"
            "if pid == 0:\n    print(requestid.new()); sys.stdout.flush(); os._exit(0)\n"
            "os.waitpid(pid, 0)\nprint(requestid.new())\n")
    outputs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, timeout=20).stdout.split() for _ in range(2)]
    ids = [i for out in outputs for i in out]
    assert all(MADE.fullmatch(i) for i in ids) and len(set(ids)) == 6
    # the parent's counter goes on, the child's prefix is its own
    for parent, child, after in outputs:
        assert parent.split("-")[0] == after.split("-")[0] != child.split("-")[0]
        assert after.endswith("-2") and child.endswith("-1")
    assert outputs[0][0].split("-")[0] != outputs[1][0].split("-")[0]


def test_making_or_keeping_an_id_is_cheap() -> None:
    """Well under a microsecond or two each (a loose bound, for slow CI)."""
    from timeit import timeit
    runs = 20000
    assert timeit(requestid.new, number=runs) / runs < 5e-6
    assert timeit(lambda: requestid.of("req_0123456789abcdef"), number=runs) / runs < 5e-6


async def test_the_sdks_read_failoverds_id_as_the_responses_request_id(
        evil_openai: Any, start_daemon: Any) -> None:
    """openai's `_request_id` reads x-request-id, anthropic's `request-id`: both get the
    request's id (the one in the access log), served, streamed and refused, on both
    paths; the upstream's own id stays in the log line."""
    a = await evil_openai()
    d = await start_daemon(one_openai(a))
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="a/m", messages=HELLO, extra_headers={"x-request-id": "oa-1"})
    assert raw.parse()._request_id == "oa-1"
    claude = anthropic.AsyncAnthropic(
        api_key="unused", base_url="http://failoverd", max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=d.socket)))
    async with claude:
        message = await claude.messages.create(model="a/m", max_tokens=10, messages=HELLO,
                                               extra_headers={"x-request-id": "an-1"})
        assert message._request_id == "an-1"
        async with claude.messages.stream(model="a/m", max_tokens=10, messages=HELLO,
                                          extra_headers={"x-request-id": "an-2"}) as stream:
            assert stream.request_id == "an-2"
            await stream.get_final_message()
        a.push("server_error")
        with pytest.raises(anthropic.APIStatusError) as refused:
            await claude.messages.create(model="a/m", max_tokens=10, messages=HELLO,
                                         extra_headers={"x-request-id": "an-3"})
        assert refused.value.status_code == 503 and refused.value.request_id == "an-3"
    # aiohttp's path too (a query string sends it there), and not on the OpenAI endpoints
    ask = {"model": "a/m", "max_tokens": 10, "messages": HELLO}
    slow = await d.http.post("/v1/messages?via=aiohttp", json=ask)
    assert slow.headers["request-id"] == slow.headers["x-request-id"]
    assert "request-id" not in (await d.http.post("/v1/chat/completions", json=ASK)).headers


async def test_a_timeout_names_the_head_that_came_or_none(
        evil_openai: Any, start_daemon: Any) -> None:
    """A stream whose head (with its id) came but no first token within
    first_token_timeout: model:failover names that id; a plain request that got no head
    at all: null, and no id of an earlier request is reused."""
    a = await evil_openai(default="comments:5")
    b = await evil_openai(rid="req_b")
    config = two_config(a, b, a_model="first_token_timeout = 0.1")
    d = await start_daemon(config.replace(f'base_url = "{a.url}"',
                                          f'base_url = "{a.url}"\ntimeout = 0.2'))
    async with d.http.stream("POST", "/v1/chat/completions", json={**ASK, "stream": True},
                             headers={"x-request-id": "ft-1"}) as stream:
        assert stream.headers["x-failoverd-model"] == "b/m"
        await stream.aread()
    a.default = "hang"
    ok = await d.http.post("/v1/chat/completions", json=ASK, headers={"x-request-id": "ft-2"})
    assert ok.headers["x-failoverd-model"] == "b/m"
    first, second = events(d, "model:failover")
    assert (first["request_id"], first["reason"], first["upstream_request_id"]) == (
        "ft-1", "timeout", a.sent[0])
    assert (second["request_id"], second["reason"], second["upstream_request_id"]) == (
        "ft-2", "timeout", None)


async def test_pipelined_into_aiohttps_path_and_nothing_forwarded_upstream(
        evil_openai: Any, start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A fast-path request, then one aiohttp's path serves (a query string) on the same
    connection: each its own id; the client's id is not sent to the upstream."""
    caplog.set_level(logging.INFO, logger=ACCESS)
    a = await evil_openai()
    d = await start_daemon(one_openai(a))
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ASK, headers="X-Request-Id: q-1\r\n")
                     + post(ASK, "/v1/chat/completions?x=1")
                     + post(ASK, "/v1/chat/completions?x=2", headers="X-Request-Id: q-3\r\n"))
        answers = [await read_answer(reader) for _ in range(3)]
    ids = [x.headers["x-request-id"] for x in answers]
    assert ids[0] == "q-1" and MADE.fullmatch(ids[1]) and ids[2] == "q-3"
    assert [line["request_id"] for _, line in access(caplog)] == ids
    assert all("x-request-id" not in {k.lower() for k in r.headers} for r in a.requests)


class IdWhisper(Whisper):
    """test_audio's speech-to-text server, with Groq's and OpenAI's x-request-id."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.sent: list[str] = []

    async def _serve(self, app: web.Application, *args: Any, **kwargs: Any) -> None:
        app.on_response_prepare.append(_stamping("x-request-id", f"req_{self.name}_",
                                                 self.sent))
        await super()._serve(app, *args, **kwargs)


async def test_a_transcription_failover_names_each_upstreams_id(
        start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS)
    oai, groq = await IdWhisper("oai").start(), await IdWhisper("groq").start()
    try:
        await _transcribe_over(oai, groq, start_daemon, caplog)
    finally:
        await oai.close()
        await groq.close()


async def _transcribe_over(oai: IdWhisper, groq: IdWhisper, start_daemon: Any,
                           caplog: pytest.LogCaptureFixture) -> None:
    d = await start_daemon(f"""access_log = true
[providers.groq]
kind = "openai"
base_url = "{groq.url}"
[providers.oai]
kind = "openai"
base_url = "{oai.url}"
[models."oai/whisper"]
provider = "oai"
capabilities = ["transcription"]
max_retries = 0
[models."groq/whisper"]
provider = "groq"
capabilities = ["transcription"]
max_retries = 0
[chains.ears]
models = ["oai/whisper", "groq/whisper"]
{NO_PROBES}""")
    oai.script.append(429)
    resp = await d.http.post("/v1/audio/transcriptions", data={"model": "ears"},
                             files={"file": ("a.wav", AUDIO, "audio/wav")},
                             headers={"x-request-id": "ears-1"})
    assert resp.status_code == 200 and resp.headers["x-request-id"] == "ears-1", resp.text
    failover, = events(d, "model:failover")
    assert (failover["request_id"], failover["upstream_request_id"]) == ("ears-1", oai.sent[0])
    (_, line), = access(caplog)
    assert (line["request_id"], line["upstream_request_id"]) == ("ears-1", groq.sent[0])


async def test_a_clients_refusals_carry_the_id(evil_openai: Any, start_daemon: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """[clients.<name>]'s 403 (a model outside its list) and 429 (past its max_rpm), on the
    fast path and aiohttp's."""
    caplog.set_level(logging.INFO, logger=ACCESS)
    a = await evil_openai()
    d = await start_daemon(one_openai(a, f"""[models."a/other"]
provider = "a"
[clients.me]
uids = [{os.getuid()}]
models = ["a/m"]
max_rpm = 2"""))
    for query in ("", "?via=aiohttp"):
        denied = await d.http.post(f"/v1/chat/completions{query}",
                                   json={**ASK, "model": "a/other"},
                                   headers={"x-request-id": f"deny{query}"})
        assert (denied.status_code, denied.headers["x-request-id"]) == (403, f"deny{query}")
    for query in ("", "?via=aiohttp", ""):
        resp = await d.http.post(f"/v1/chat/completions{query}",
                                 json={**ASK, "model": "a/m"},
                                 headers={"x-request-id": f"rpm{query}"})
        assert resp.headers["x-request-id"] == f"rpm{query}"
    assert resp.status_code == 429
    assert {line["request_id"]: line["status"] for _, line in access(caplog)}["rpm"] == 429


async def test_a_messages_request_still_arriving_at_the_drain_gets_both_headers(
        evil_openai: Any, start_daemon: Any) -> None:
    """The fast path's own 503 for an Anthropic request whose body is still arriving:
    x-request-id and request-id, the id of its head."""
    a = await evil_openai()
    d = await start_daemon(one_openai(a))
    ask = {"model": "a/m", "max_tokens": 10, "messages": HELLO}
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ask, "/v1/messages", headers="X-Request-Id: late-an\r\n")[:-10])
        await until(lambda: any(c.need for c in fast(d).connections))
        d.sup.request_stop()
        answer = await read_answer(reader)
    assert answer.status == 503
    assert (answer.headers["x-request-id"], answer.headers["request-id"]) == (
        "late-an", "late-an")
    assert a.sent == []
