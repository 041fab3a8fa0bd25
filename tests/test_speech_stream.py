"""POST /v1/audio/speech streams, end to end: the real daemon, real clients over its Unix
socket, and OpenAI-compatible text-to-speech servers as real aiohttp servers that send their
audio (or OpenAI's server-sent events) piece by piece, each piece after the first held back
until the test opens a gate. So a test knows the client got the first audio before the
upstream sent the rest; that every failure before the first audio still fails over; that
one after it leaves the client an unfinished body (raw audio) or an error event (events)
and counts against the model; the size limit while streaming; a slow client's back-pressure
reaching the upstream; and the simulated voice's streams."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web

from failoverd.translate import speech
from tests.fakes.base import cut
from tests.fakes.scripted import Scripted, pair_fixture
from tests.helpers import breaker, first_bytes, metric, providers

MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 4  # 1034 bytes
PIECES = [MP3, b"\xff\xfb" + bytes(range(256)) * 8, b"\xff\xfb" + bytes(range(255, -1, -1)) * 8]

Step = Callable[[web.Request, "Tts"], Awaitable[web.StreamResponse]]


class Tts(Scripted):
    """An OpenAI-compatible /v1/audio/speech server whose answers stream (tests/fakes/
    scripted.py): the bodies it got are kept; `sent` counts the bytes written."""

    route = "/v1/audio/speech"

    def __init__(self, default: Step | None = None) -> None:
        super().__init__(default or audio(PIECES))
        self.bodies: list[dict[str, Any]] = []

    async def keep(self, request: web.Request) -> None:
        self.bodies.append(orjson.loads(await request.read()))


async def _pieces(request: web.Request, tts: Tts, pieces: list[bytes], content_type: str,
                  *, then_cut: bool = False) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": content_type})  # chunked
    await resp.prepare(request)
    try:
        for i, piece in enumerate(pieces):
            if i:
                await tts.gate.wait()
            await resp.write(piece)
            tts.sent += len(piece)
        if then_cut:
            await tts.gate.wait()
            return cut(request, resp)
        await resp.write_eof()
    except ConnectionResetError:
        return resp  # failoverd hung up (it had enough)
    tts.finished.set()
    return resp


def audio(pieces: list[bytes], content_type: str = "audio/mpeg", *,
          then_cut: bool = False) -> Step:
    """Streams `pieces` as a chunked body, the second and later once the gate is open;
    `then_cut`: the connection dies (once the gate is open) instead of the body ending."""
    return lambda request, tts: _pieces(request, tts, pieces, content_type, then_cut=then_cut)


async def silent(request: web.Request, tts: Tts) -> web.StreamResponse:
    """A 200 whose audio never comes (until the gate opens, at the test's end)."""
    resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
    await resp.prepare(request)
    await tts.gate.wait()
    return resp


def answer(status_code: int, body: bytes, content_type: str) -> Step:
    """A whole answer at once, whatever was asked."""
    async def step(request: web.Request, tts: Tts) -> web.StreamResponse:
        return web.Response(status=status_code, body=body, headers={"Content-Type": content_type})
    return step


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def delta(audio_bytes: bytes) -> bytes:
    return sse({"type": "speech.audio.delta", "audio": base64.b64encode(audio_bytes).decode()})


DONE = sse({"type": "speech.audio.done",
            "usage": {"input_tokens": 5, "output_tokens": 40, "total_tokens": 45}})
EVENTS = [delta(PIECES[0]), delta(PIECES[1]), DONE]


def events(raw: bytes) -> list[dict[str, Any]]:
    """An event stream's events, each one data line."""
    out = []
    for block in raw.split(b"\n\n"):
        if block.strip():
            assert block.startswith(b"data: "), block
            out.append(orjson.loads(block[6:]))
    return out


def config(a: Tts, b: Tts, *, head: str = "", a_more: str = "", more: str = "") -> str:
    return f"""{head}
{providers(a=a.url, b=b.url)}
[providers.s]
kind = "simulated"
[models."a/tts"]
provider = "a"
name = "gpt-4o-mini-tts"
capabilities = ["speech"]
max_retries = 0
{a_more}
[models."b/tts"]
provider = "b"
name = "kokoro"
capabilities = ["speech"]
max_retries = 0
[models."s/voice"]
provider = "s"
capabilities = ["speech"]
[models."s/chat"]
provider = "s"
[routing]
primary = "s/chat"
retry_after_max = 0
when_all_unavailable = "fail"
[probes]
kind = "none"
{more}
"""


pair = pair_fixture(Tts, config)


ASK = {"model": "a/tts", "input": "The build is green.", "voice": "alloy"}


# ------------------------------------------------------------------ raw audio


async def test_the_first_audio_reaches_the_client_before_the_upstream_sent_the_rest(
        pair: Any) -> None:
    a, _, d = pair
    async with d.http.stream("POST", "/v1/audio/speech", json=ASK) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "audio/mpeg"
        assert resp.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in resp.headers
        assert resp.headers["x-failoverd-model"] == "a/tts"
        assert resp.headers["x-failoverd-attempts"] == "1"
        got, rest = await first_bytes(resp, len(PIECES[0]))
        assert got == PIECES[0]
        assert a.sent == len(PIECES[0]) and not a.finished.is_set()  # the rest not yet sent
        a.gate.set()
        async for data in rest:
            got += data
    assert got == b"".join(PIECES)
    assert a.accepts == ["*/*"]
    assert await breaker(d, "a/tts") == ("closed", 0)
    assert await metric(d, 'failoverd_requests_total{model="a/tts",outcome="ok"} 1')


@pytest.mark.parametrize(("step", "reason"), [
    (answer(429, b'{"error": {"message": "Rate limit reached for requests", '
                 b'"type": "requests", "code": "rate_limit_exceeded"}}', "application/json"),
     "rate_limit"),
    # an error inside a 200 that calls itself audio, sent in pieces (a local server's)
    (audio([b'  {"error": "voice model failed', b' to load"}'], "audio/mpeg"), "server_error"),
    # FastAPI servers' {"detail": ...}, with its own content type
    (answer(200, b'{"detail": "Voice not loaded"}', "application/json"), "server_error"),
    # an HTML page from a proxy in the way
    (answer(200, b"<html><body>502 Bad Gateway</body></html>", "text/html"),
     "invalid_response"),
    (audio([b"<!DOCTYPE html>" + b" " * 100, b"<html>captive portal</html>"],
           "application/octet-stream"), "invalid_response"),
    # a text too long for this model: another may take it
    (answer(413, b'{"error": {"message": "Request Entity Too Large"}}', "application/json"),
     "incapable"),
])
async def test_failures_before_the_first_audio_fail_over(pair: Any, step: Step,
                                                         reason: str) -> None:
    a, b, d = pair
    a.script = [step]
    a.gate.set()
    b.gate.set()
    resp = await d.http.post("/v1/audio/speech", json=ASK)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-failover"] == f"a/tts>b/tts:{reason}"
    assert resp.headers["x-failoverd-model"] == "b/tts"
    assert resp.content == b"".join(PIECES)


async def test_no_first_audio_in_time_fails_over(start_daemon: Any) -> None:
    """Headers and then silence: the first audio must come within first_token_timeout."""
    a, b = await Tts().start(), await Tts().start()
    try:
        d = await start_daemon(config(a, b, a_more="first_token_timeout = 0.2"))
        a.script = [silent]
        b.gate.set()
        resp = await d.http.post("/v1/audio/speech", json=ASK)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-failoverd-failover"] == "a/tts>b/tts:timeout"
        assert resp.content == b"".join(PIECES)
    finally:
        await a.close()
        await b.close()


async def test_a_cut_after_the_first_audio_leaves_the_body_unfinished(
        pair: Any, caplog: pytest.LogCaptureFixture) -> None:
    """No failover is possible once audio went out: the client sees an incomplete body (no
    last chunk), never a short file passing for the whole; the model is charged for it."""
    a, b, d = pair
    a.script = [audio(PIECES[:1], then_cut=True)]
    caplog.set_level(logging.WARNING, logger="failoverd.api.audio")
    async with d.http.stream("POST", "/v1/audio/speech", json=ASK) as resp:
        assert resp.headers["x-failoverd-model"] == "a/tts"
        got, rest = await first_bytes(resp, len(PIECES[0]))
        a.gate.set()
        with pytest.raises(httpx.RemoteProtocolError):
            async for data in rest:
                got += data
    assert got == PIECES[0]
    assert b.bodies == []
    assert await breaker(d, "a/tts") == ("closed", 1)
    assert await metric(d, 'failoverd_requests_total{model="a/tts",outcome="stream_error"} 1')
    assert any("failed after the first audio: invalid_response" in r.getMessage()
               for r in caplog.records)


async def test_the_size_limit_ends_a_stream_unfinished(
        pair: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The most audio one answer may bring (64 MiB, what the upstream client reads whole)
    holds while streaming: past it the stream ends as a cut one does."""
    monkeypatch.setattr(speech, "MAX_AUDIO", 50_000)
    a, _, d = pair
    a.script = [audio([MP3] + [bytes(20_000)] * 5)]
    async with d.http.stream("POST", "/v1/audio/speech", json=ASK) as resp:
        assert resp.headers["x-failoverd-model"] == "a/tts"
        got, rest = await first_bytes(resp, len(MP3))
        a.gate.set()
        with pytest.raises(httpx.RemoteProtocolError):
            async for data in rest:
                got += data
    assert len(MP3) <= len(got) <= 50_000
    assert await breaker(d, "a/tts") == ("closed", 1)


async def test_a_slow_client_holds_the_upstream_back(pair: Any) -> None:
    """Back-pressure: a client that reads nothing makes failoverd stop reading the upstream
    (a bounded buffer), so a long recording is not read ahead into memory; it all arrives
    once the client reads again."""
    a, _, d = pair
    big = bytes(range(256)) * (128 * 1024)  # 32 MiB in 64 KiB pieces
    a.script = [audio([MP3] + [big[i:i + 65536] for i in range(0, len(big), 65536)])]
    a.gate.set()
    async with d.http.stream("POST", "/v1/audio/speech", json=ASK) as resp:
        got, rest = await first_bytes(resp, len(MP3))
        # the client reads nothing now: the upstream's writes must stall well short of the end
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(a.finished.wait(), 0.5)
        assert a.sent < len(big) // 2
        parts = [got]
        async for data in rest:
            parts.append(data)
    assert b"".join(parts) == MP3 + big


@pytest.mark.parametrize("sse_format", [False, True], ids=["audio", "sse"])
async def test_a_stop_cuts_a_speech_stream_as_unfinished(start_daemon: Any,
                                                         sse_format: bool) -> None:
    """A stop's cut after shutdown_timeout: raw audio is left unfinished (never ended as if
    whole), an event stream ends with the shutting_down error event."""
    a, b = await Tts().start(), await Tts().start()
    try:
        d = await start_daemon(config(a, b, head="shutdown_timeout = 0.3"))
        a.script = [audio(EVENTS, "text/event-stream") if sse_format else audio(PIECES)]
        body = {**ASK, "stream_format": "sse"} if sse_format else ASK
        async with d.http.stream("POST", "/v1/audio/speech", json=body) as resp:
            got, rest = await first_bytes(resp, len(EVENTS[0] if sse_format else PIECES[0]))
            d.sup.request_stop()
            if sse_format:
                async for data in rest:
                    got += data
                assert events(got)[-1]["error"]["type"] == "shutting_down"
            else:
                with pytest.raises(httpx.RemoteProtocolError):
                    async for data in rest:
                        got += data
                assert got == PIECES[0]
        await asyncio.wait_for(d.task, 10)
        requests = d.sup.service.metrics.requests
        assert requests.get(("a/tts", "cancelled")) == 1 and ("a/tts", "ok") not in requests
    finally:
        await a.close()
        await b.close()


# ------------------------------------------------------------------ server-sent events


async def test_events_are_passed_on_as_they_come(pair: Any) -> None:
    a, _, d = pair
    a.script = [audio(EVENTS, "text/event-stream")]
    async with d.http.stream("POST", "/v1/audio/speech",
                             json={**ASK, "stream_format": "sse"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "text/event-stream"
        assert resp.headers["x-failoverd-model"] == "a/tts"
        got, rest = await first_bytes(resp, len(EVENTS[0]))
        assert got == EVENTS[0] and not a.finished.is_set()
        a.gate.set()
        async for data in rest:
            got += data
    assert got == b"".join(EVENTS)
    assert a.bodies[0]["stream_format"] == "sse" and a.accepts == ["text/event-stream"]
    assert await metric(d, 'failoverd_requests_total{model="a/tts",outcome="ok"} 1')


async def test_named_events_and_the_end_of_the_stream_pass_as_they_came(pair: Any) -> None:
    """An upstream that names its events keeps their names; the stream ends at the done
    event even if the upstream adds [DONE] after it (it is not passed on)."""
    a, _, d = pair
    named = [b"event: speech.audio.delta\n" + EVENTS[0], b"event: speech.audio.done\n" + DONE]
    a.script = [audio([*named, b"data: [DONE]\n\n"], "text/event-stream; charset=utf-8")]
    a.gate.set()
    resp = await d.http.post("/v1/audio/speech", json={**ASK, "stream_format": "sse"})
    assert resp.content == b"".join(named)


async def test_a_model_that_cannot_stream_events_leaves_them_to_another(pair: Any) -> None:
    """tts-1 refuses stream_format sse with a 400; a server that ignores it answers raw
    audio: either is incapable (no breaker count), and the next speech model streams."""
    a, b, d = pair
    b.default = audio(EVENTS, "text/event-stream")
    b.gate.set()
    a.script = [answer(400, orjson.dumps({"error": {
        "message": "stream_format 'sse' is not available for tts-1",
        "type": "invalid_request_error", "param": "stream_format",
        "code": "invalid_value"}}), "application/json")]
    resp = await d.http.post("/v1/audio/speech", json={**ASK, "stream_format": "sse"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-failover"] == "a/tts>b/tts:incapable"
    assert resp.content == b"".join(EVENTS)
    a.script = [audio(PIECES)]  # ignored stream_format: raw audio is no event stream
    a.gate.set()
    resp = await d.http.post("/v1/audio/speech", json={**ASK, "stream_format": "sse"})
    assert resp.headers["x-failoverd-failover"] == "a/tts>b/tts:incapable"
    assert [e["type"] for e in events(resp.content)] == [
        "speech.audio.delta", "speech.audio.delta", "speech.audio.done"]
    assert await breaker(d, "a/tts") == ("closed", 0)


async def test_an_error_event_first_fails_over_and_later_ends_the_stream(pair: Any) -> None:
    a, b, d = pair
    b.default = audio(EVENTS, "text/event-stream")
    a.gate.set()
    b.gate.set()
    error = sse({"error": {"message": "The server had an error", "type": "server_error"}})
    a.script = [audio([error], "text/event-stream")]
    resp = await d.http.post("/v1/audio/speech", json={**ASK, "stream_format": "sse"})
    assert resp.headers["x-failoverd-failover"] == "a/tts>b/tts:server_error"
    assert resp.content == b"".join(EVENTS)
    # after the first event: an error event ends the stream, as a chat stream's does
    a.script = [audio([EVENTS[0], error], "text/event-stream")]
    resp = await d.http.post("/v1/audio/speech", json={**ASK, "stream_format": "sse"})
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "a/tts"
    got = events(resp.content)
    assert got[0]["type"] == "speech.audio.delta"
    assert got[1]["error"]["type"] == "server_error"
    assert await metric(d, 'failoverd_requests_total{model="a/tts",outcome="stream_error"} 1')


# ------------------------------------------------------------------ the simulated voice


async def test_the_simulated_voice_streams_wav(pair: Any) -> None:
    _, _, d = pair
    body = {"model": "s/voice", "input": "five words to say here", "voice": "any",
            "response_format": "wav"}
    async with d.http.stream("POST", "/v1/audio/speech", json=body) as resp:
        assert resp.headers["transfer-encoding"] == "chunked"
        wav = await resp.aread()
    assert wav[:4] == b"RIFF" and len(wav) == 44 + 2 * 16000 * 6 // 3


async def test_the_simulated_voice_speaks_openais_events(pair: Any) -> None:
    _, _, d = pair
    body = {"model": "s/voice", "input": "five words to say here", "voice": "any",
            "response_format": "pcm", "stream_format": "sse"}
    resp = await d.http.post("/v1/audio/speech", json=body)
    assert resp.status_code == 200 and resp.headers["content-type"] == "text/event-stream"
    got = events(resp.content)
    assert {e["type"] for e in got[:-1]} == {"speech.audio.delta"} and len(got) > 2
    pcm = b"".join(base64.b64decode(e["audio"]) for e in got[:-1])
    assert pcm == bytes(2 * 16000 * 6 // 3)
    assert got[-1] == {"type": "speech.audio.done", "usage": {
        "input_tokens": 6, "output_tokens": 100, "total_tokens": 106}}
