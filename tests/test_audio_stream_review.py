"""Review probes of the streamed audio answers (speech, transcriptions): a client that goes
away mid-audio, upstream events split at every byte, a huge single event, content types
with parameters or in capitals, and a 200 whose first bytes are tiny. Real aiohttp upstreams
(tests/test_speech_stream.py's Tts), the daemon in-process, httpx over its Unix socket."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from aiohttp import web

from failoverd.translate import speech
from tests.fakes.base import event_stream
from tests.fakes.scripted import pair_fixture
from tests.test_speech_stream import (
    ASK,
    DONE,
    EVENTS,
    PIECES,
    Tts,
    answer,
    audio,
    breaker,
    config,
    events,
    first_bytes,
    silent,
)
from tests.test_transcription_stream import ASK as STT_ASK
from tests.test_transcription_stream import DONE as STT_DONE
from tests.test_transcription_stream import EVENTS as STT_EVENTS
from tests.test_transcription_stream import Stt, transcribe
from tests.test_transcription_stream import answer as stt_answer
from tests.test_transcription_stream import config as stt_config
from tests.test_transcription_stream import delta as stt_delta
from tests.test_transcription_stream import events as stt_events
from tests.test_transcription_stream import pieces as stt_pieces

SSE_ASK = {**ASK, "stream_format": "sse"}


pair = pair_fixture(Tts, config)


async def test_a_client_gone_mid_audio_is_counted_once_and_frees_everything(
        pair: Any) -> None:
    """The client hangs up after the first audio: the upstream's connection is closed (its
    next write fails), the request is counted once as cancelled (no stream_error, no ok),
    the breaker is untouched and nothing stays in flight."""
    a, _, d = pair
    gone = asyncio.Event()

    async def step(request: web.Request, tts: Tts) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await resp.prepare(request)
        await resp.write(PIECES[0])
        await tts.gate.wait()
        try:
            for _ in range(200):  # the failoverd side must be closed by now
                await resp.write(bytes(65536))
                await asyncio.sleep(0)
        except ConnectionError:  # reset, or lost while waiting to drain
            gone.set()
        return resp

    a.script = [step]
    async with d.http.stream("POST", "/v1/audio/speech", json=ASK) as resp:
        await first_bytes(resp, len(PIECES[0]))
    # the client is gone; failoverd notices at its next write, once the upstream sends more
    a.gate.set()
    await asyncio.wait_for(gone.wait(), 5)
    svc = d.sup.service
    for _ in range(100):
        if svc.inflight == 0 and svc.metrics.requests.get(("a/tts", "cancelled")):
            break
        await asyncio.sleep(0.01)
    requests = svc.metrics.requests
    assert requests.get(("a/tts", "cancelled")) == 1
    assert ("a/tts", "ok") not in requests and ("a/tts", "stream_error") not in requests
    assert svc.inflight == 0
    assert await breaker(d, "a/tts") == ("closed", 0)


async def test_events_split_at_every_byte_pass_whole(pair: Any) -> None:
    """An upstream that writes its events a byte at a time (each its own TCP write):
    every event reaches the client whole, named events too."""
    a, _, d = pair
    named = b"event: speech.audio.delta\n" + EVENTS[0]
    raw = named + EVENTS[1] + DONE

    async def step(request: web.Request, tts: Tts) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "Text/Event-Stream; charset=utf-8"})
        await resp.prepare(request)
        for i in range(len(raw)):
            await resp.write(raw[i:i + 1])
        await resp.write_eof()
        return resp

    a.script = [step]
    resp = await d.http.post("/v1/audio/speech", json=SSE_ASK)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "a/tts"
    assert resp.content == raw


async def test_a_huge_single_event_is_cut_at_the_audio_limit(
        pair: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """One event of many data lines that never ends (no blank line) must not be held in
    memory past the most audio one answer may bring: the stream ends with an error event at
    the limit, not after the idle timeout with everything buffered."""
    monkeypatch.setattr(speech, "MAX_AUDIO", 50_000)
    a, _, d = pair
    line = b"data: " + b"A" * 1000 + b"\n"

    async def step(request: web.Request, tts: Tts) -> web.StreamResponse:
        resp = await event_stream(request)
        await resp.write(EVENTS[0])
        await resp.write(line * 200)  # the event goes on (no blank line) and then waits
        await tts.gate.wait()
        return resp

    a.script = [step]
    async with asyncio.timeout(3):
        resp = await d.http.post("/v1/audio/speech", json=SSE_ASK)
    got = events(resp.content.split(b"\n\n", 1)[1])
    assert got and "error" in got[-1]


@pytest.mark.parametrize("content_type", [
    "Application/JSON; charset=utf-8", "TEXT/HTML;charset=UTF-8", "application/problem+json",
])
async def test_a_200_with_a_textual_content_type_in_any_case_fails_over(
        pair: Any, content_type: str) -> None:
    a, b, d = pair
    a.script = [answer(200, b"\x00\x01 not audio \x02", content_type)]
    b.gate.set()
    resp = await d.http.post("/v1/audio/speech", json=ASK)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "b/tts"
    assert resp.headers["x-failoverd-failover"].startswith("a/tts>b/tts:")
    assert resp.content == b"".join(PIECES)


@pytest.mark.parametrize("pieces", [
    [b"{", b'"error": {"message": "voice failed"}}'],
    [b" ", b"\n{\"detail\": \"Voice not loaded\"}"],
    [b"<", b"html><body>502</body></html>"],
], ids=["brace", "space", "html"])
async def test_a_tiny_first_chunk_then_an_error_fails_over(pair: Any,
                                                          pieces: list[bytes]) -> None:
    """The first chunk is one byte; what follows tells it is an error, not audio."""
    a, b, d = pair
    a.script = [audio(pieces, "audio/mpeg")]
    a.gate.set()
    b.gate.set()
    resp = await d.http.post("/v1/audio/speech", json=ASK)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "b/tts"
    assert resp.content == b"".join(PIECES)


async def test_no_content_type_raw_audio_still_streams(pair: Any) -> None:
    a, _, d = pair

    async def step(request: web.Request, tts: Tts) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        resp.headers.popall("Content-Type", None)
        for piece in PIECES:
            await resp.write(piece)
        await resp.write_eof()
        return resp

    a.script = [step]
    async with d.http.stream("POST", "/v1/audio/speech", json=ASK) as resp:
        assert resp.headers["x-failoverd-model"] == "a/tts"
        got = b"".join([data async for data in resp.aiter_raw()])
    assert got == b"".join(PIECES)


async def test_a_slow_client_is_cut_after_stream_idle_timeout(start_daemon: Any) -> None:
    """A client that stops reading while the upstream is fast: the daemon holds a bounded
    buffer, cuts the client after stream_idle_timeout, closes the upstream's connection and
    counts the request once as cancelled, never against the model."""
    a, b = await Tts().start(), await Tts().start()
    gone = asyncio.Event()

    async def step(request: web.Request, tts: Tts) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await resp.prepare(request)
        try:
            await resp.write(PIECES[0])
            for _ in range(1024):  # 64 MiB: far more than any buffer on the way holds
                await resp.write(bytes(65536))
                tts.sent += 65536
        except ConnectionError:  # reset, or lost while waiting to drain
            gone.set()
        return resp

    try:
        d = await start_daemon(config(a, b, a_more="stream_idle_timeout = 0.3"))
        a.script = [step]
        async with d.http.stream("POST", "/v1/audio/speech", json=ASK) as resp:
            await first_bytes(resp, len(PIECES[0]))
            await asyncio.wait_for(gone.wait(), 10)  # the client reads nothing meanwhile
        assert a.sent < 32 * 1024 * 1024
        svc = d.sup.service
        for _ in range(200):
            if svc.inflight == 0:
                break
            await asyncio.sleep(0.01)
        assert svc.inflight == 0
        assert svc.metrics.requests.get(("a/tts", "cancelled")) == 1
        assert ("a/tts", "stream_error") not in svc.metrics.requests
        assert await breaker(d, "a/tts") == ("closed", 0)
    finally:
        await a.close()
        await b.close()


async def test_an_upstream_that_stalls_after_the_first_audio_is_cut_unfinished(
        start_daemon: Any) -> None:
    """The first bytes, then silence: after stream_idle_timeout the body is left unfinished
    and the stall counts against the model, once, as a stream_error."""
    a, b = await Tts().start(), await Tts().start()
    try:
        d = await start_daemon(config(a, b, a_more="stream_idle_timeout = 0.2"))
        a.script = [audio(PIECES)]  # the gate stays shut: the rest never comes
        async with d.http.stream("POST", "/v1/audio/speech", json=ASK) as resp:
            got, rest = await first_bytes(resp, len(PIECES[0]))
            with pytest.raises(httpx.RemoteProtocolError):
                async for data in rest:
                    got += data
        assert got == PIECES[0]
        assert await breaker(d, "a/tts") == ("closed", 1)
        requests = d.sup.service.metrics.requests
        assert requests.get(("a/tts", "stream_error")) == 1
        assert ("a/tts", "ok") not in requests and ("a/tts", "cancelled") not in requests
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("speech_events", [False, True], ids=["transcript", "speech"])
async def test_done_sentinel_before_the_done_event_is_an_unfinished_stream(
        start_daemon: Any, speech_events: bool) -> None:
    """`data: [DONE]` before the done event ends the upstream's stream as a cut does: the
    client must not take it for a whole answer (no done event, no text, no usage), so it
    ends with an error event and counts as a stream_error, as the end of the body does."""
    if speech_events:
        a, b = await Tts().start(), await Tts().start()
        d = await start_daemon(config(a, b))
        a.script = [audio([EVENTS[0], b"data: [DONE]\n\n"], "text/event-stream")]
        a.gate.set()
        resp = await d.http.post("/v1/audio/speech", json=SSE_ASK)
        model = "a/tts"
    else:
        a, b = await Stt().start(), await Stt().start()
        d = await start_daemon(stt_config(a, b))
        a.script = [stt_pieces([STT_EVENTS[0], b"data: [DONE]\n\n"])]
        a.gate.set()
        resp = await transcribe(d, model="a/ears")
        model = "a/ears"
    try:
        assert resp.status_code == 200
        got = events(resp.content.split(b"\n\n", 1)[1]) if speech_events else \
            stt_events(resp.content)[1:]
        assert len(got) == 1 and "error" in got[0], resp.content
        assert d.sup.service.metrics.requests.get((model, "stream_error")) == 1
    finally:
        await a.close()
        await b.close()


# ------------------------------------------------------------------ transcriptions


ears = pair_fixture(Stt, stt_config, "ears")


async def test_the_hop_past_a_model_that_refuses_stream_leaves_its_breaker_alone(
        ears: Any) -> None:
    a, b, d = ears
    a.script = [stt_answer(400, {"error": {"message": "Streaming is not supported for "
                                           "whisper-1", "type": "invalid_request_error",
                                           "param": "stream"}})] * 3
    b.gate.set()
    for _ in range(3):
        resp = await transcribe(d)
        assert resp.headers["x-failoverd-failover"] == "a/ears>b/ears:incapable"
        assert resp.headers["x-failoverd-model"] == "b/ears"
        assert stt_events(resp.content)[-1]["type"] == "transcript.text.done"
    assert await breaker(d, "a/ears") == ("closed", 0)
    requests = d.sup.service.metrics.requests
    assert requests.get(("b/ears", "ok")) == 3 and ("a/ears", "ok") not in requests


@pytest.mark.parametrize("flag", ["TRUE", " 1 ", "True"])
async def test_stream_flags_in_any_case_stream_and_go_as_sent(ears: Any, flag: str) -> None:
    a, _, d = ears
    a.gate.set()
    resp = await transcribe(d, model="a/ears", stream=flag)
    assert resp.headers["content-type"] == "text/event-stream"
    assert stt_events(resp.content)[-1]["type"] == "transcript.text.done"
    assert a.forms[0]["stream"] == flag


async def test_a_delta_that_says_error_is_no_error(ears: Any) -> None:
    a, _, d = ears
    a.script = [stt_pieces([stt_delta("error"), stt_delta(" error"), STT_DONE])]
    a.gate.set()
    resp = await transcribe(d, model="a/ears")
    assert [e.get("delta") for e in stt_events(resp.content)[:2]] == ["error", " error"]
    assert d.sup.service.metrics.requests.get(("a/ears", "ok")) == 1


async def test_a_client_gone_mid_transcript_is_counted_once(ears: Any) -> None:
    a, _, d = ears
    gone = asyncio.Event()

    async def step(request: web.Request, stt: Stt) -> web.StreamResponse:
        resp = await event_stream(request)
        await resp.write(STT_EVENTS[0])
        await stt.gate.wait()
        try:
            for _ in range(2000):
                await resp.write(stt_delta(" word" * 100))
                await asyncio.sleep(0)
        except ConnectionError:  # reset, or lost while waiting to drain
            gone.set()
        return resp

    a.script = [step]
    async with d.http.stream("POST", "/v1/audio/transcriptions",
                             data={"model": "a/ears", "stream": "true"},
                             files=STT_ASK["files"]) as resp:
        await first_bytes(resp, len(STT_EVENTS[0]))
    a.gate.set()
    await asyncio.wait_for(gone.wait(), 5)
    svc = d.sup.service
    for _ in range(100):
        if svc.inflight == 0:
            break
        await asyncio.sleep(0.01)
    assert svc.inflight == 0
    assert svc.metrics.requests.get(("a/ears", "cancelled")) == 1
    assert ("a/ears", "ok") not in svc.metrics.requests
    assert ("a/ears", "stream_error") not in svc.metrics.requests
    assert await breaker(d, "a/ears") == ("closed", 0)


async def test_a_raw_audio_cut_logs_no_server_error(
        pair: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The unfinished body is left on purpose: no "Error handling request" from aiohttp's
    server (the daemon's own log stays one warning)."""
    a, _, d = pair
    a.script = [audio(PIECES[:1], then_cut=True)]
    caplog.set_level(logging.DEBUG)
    async with d.http.stream("POST", "/v1/audio/speech", json=ASK) as resp:
        got, rest = await first_bytes(resp, len(PIECES[0]))
        a.gate.set()
        with pytest.raises(httpx.RemoteProtocolError):
            async for data in rest:
                got += data
    await asyncio.sleep(0.05)  # aiohttp's server ends its handler after the client saw the cut
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_a_client_deadline_during_the_wait_for_audio_spares_the_breaker(
        pair: Any) -> None:
    """x-failoverd-deadline shorter than first_token_timeout cuts the wait for the first
    audio: a timeout for the client, not the model's failure."""
    a, _, d = pair
    a.script = [silent]
    resp = await d.http.post("/v1/audio/speech", json=ASK,
                             headers={"x-failoverd-deadline": "0.3",
                                      "x-failoverd-no-fallback": "true"})
    assert resp.status_code == 503, resp.text  # no model available, as for chat
    assert resp.json()["error"]["attempts"][0]["reason"] == "timeout"
    assert await breaker(d, "a/tts") == ("closed", 0)


async def test_the_access_line_of_a_stream_is_written_at_its_end(
        start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    """One access line per streamed speech answer, written when the audio ends (not when
    the headers went out), naming the model that served and the hop before it."""
    a, b = await Tts().start(), await Tts().start()
    try:
        d = await start_daemon(config(a, b, head="access_log = true"))
        caplog.set_level(logging.INFO, logger="failoverd.access")
        a.script = [answer(500, b'{"error": {"message": "boom"}}', "application/json")]

        def lines() -> list[dict[str, Any]]:
            return [r.access for r in caplog.records  # type: ignore[attr-defined]
                    if r.name == "failoverd.access"]

        async with d.http.stream("POST", "/v1/audio/speech", json=ASK) as resp:
            got, rest = await first_bytes(resp, len(PIECES[0]))
            assert resp.headers["x-failoverd-model"] == "b/tts"
            assert lines() == []  # the audio is still coming
            b.gate.set()
            async for data in rest:
                got += data
        assert got == b"".join(PIECES)
        for _ in range(100):
            if lines():
                break
            await asyncio.sleep(0.01)
        (line,) = lines()
        assert (line["status"], line["model"], line["path"]) == (200, "b/tts", "/v1/audio/speech")
        assert line["failover"] is not None and line["failover"].startswith("a/tts>b/tts")
    finally:
        await a.close()
        await b.close()


async def test_the_sdk_streams_speech_after_a_failover(pair: Any) -> None:
    """The official SDK's streamed speech (with_streaming_response) gets the second model's
    audio piece by piece, and its headers name the hop."""
    a, b, d = pair
    a.script = [answer(503, b'{"error": {"message": "overloaded"}}', "application/json")]
    async with d.openai.audio.speech.with_streaming_response.create(
            model="a/tts", voice="alloy", input="The build is green.") as resp:
        assert resp.headers["x-failoverd-model"] == "b/tts"
        assert resp.headers["x-failoverd-failover"].startswith("a/tts>b/tts:")
        it = resp.iter_bytes()
        got = await it.__anext__()
        assert b.sent == len(PIECES[0]) and PIECES[0].startswith(got)
        b.gate.set()
        async for data in it:
            got += data
    assert got == b"".join(PIECES)


async def test_the_sdk_reads_speech_events_split_at_every_byte(pair: Any) -> None:
    a, _, d = pair
    raw = b"".join(EVENTS)

    async def step(request: web.Request, tts: Tts) -> web.StreamResponse:
        resp = await event_stream(request)
        for i in range(len(raw)):
            await resp.write(raw[i:i + 1])
        await resp.write_eof()
        return resp

    a.script = [step]
    async with d.openai.audio.speech.with_streaming_response.create(
            model="a/tts", voice="alloy", input="The build is green.",
            stream_format="sse") as resp:
        body = b"".join([data async for data in resp.iter_bytes()])
    got = events(body)
    assert [e["type"] for e in got] == ["speech.audio.delta"] * 2 + ["speech.audio.done"]


async def test_a_client_gone_while_its_writes_wait_is_cancelled_not_the_models_fault(
        pair: Any) -> None:
    """The client stops reading (failoverd's writes wait for it, paused), then hangs up:
    aiohttp wakes the waiting write with a plain ConnectionError("Connection lost"), which
    is the client's leaving all the same: counted once as cancelled, not as a broken
    stream against the model's breaker."""
    a, _, d = pair
    gone = asyncio.Event()
    enough = asyncio.Event()

    async def step(request: web.Request, tts: Tts) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
        await resp.prepare(request)
        try:
            await resp.write(PIECES[0])
            for _ in range(1024):
                await resp.write(bytes(65536))
                tts.sent += 65536
                if tts.sent >= 3 * 1024 * 1024:  # well past every buffer of failoverd's
                    enough.set()
        except ConnectionError:
            gone.set()
        return resp

    a.script = [step]
    async with d.http.stream("POST", "/v1/audio/speech", json=ASK) as resp:
        await first_bytes(resp, len(PIECES[0]))
        await asyncio.wait_for(enough.wait(), 10)  # the client has read nothing since
    await asyncio.wait_for(gone.wait(), 10)
    svc = d.sup.service
    for _ in range(200):
        if svc.inflight == 0:
            break
        await asyncio.sleep(0.01)
    requests = svc.metrics.requests
    assert ("a/tts", "stream_error") not in requests
    assert requests.get(("a/tts", "cancelled")) == 1
    assert await breaker(d, "a/tts") == ("closed", 0)


@pytest.mark.parametrize("refusal", [
    answer(400, b'{"error": {"message": "stream_format sse is not supported for tts-1", '
                b'"type": "invalid_request_error", "param": "stream_format"}}',
           "application/json"),
    audio(PIECES[:1], "audio/mpeg"),  # ignored stream_format: raw audio
], ids=["400", "raw-audio"])
async def test_the_hop_past_a_voice_without_events_leaves_its_breaker_alone(
        pair: Any, refusal: Any) -> None:
    a, b, d = pair
    a.script = [refusal] * 3
    b.default = audio(EVENTS, "text/event-stream")
    b.gate.set()
    for _ in range(3):
        resp = await d.http.post("/v1/audio/speech", json=SSE_ASK)
        assert [e["type"] for e in events(resp.content)][-1] == "speech.audio.done"
        assert resp.headers["x-failoverd-failover"] == "a/tts>b/tts:incapable"
        assert resp.headers["x-failoverd-model"] == "b/tts"
    assert await breaker(d, "a/tts") == ("closed", 0)
    requests = d.sup.service.metrics.requests
    assert requests.get(("b/tts", "ok")) == 3 and ("a/tts", "ok") not in requests


@pytest.mark.parametrize("sse_format", [False, True], ids=["audio", "sse"])
async def test_gzipped_streams_reach_the_client_decoded(pair: Any, sse_format: bool) -> None:
    """An upstream that compresses its stream (Content-Encoding: gzip, as aiohttp servers
    and proxies may): the client gets the audio (or events) decoded, never gzip bytes under
    an audio content type."""
    a, _, d = pair
    parts = EVENTS if sse_format else PIECES

    async def step(request: web.Request, tts: Tts) -> web.StreamResponse:
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream" if sse_format else "audio/mpeg"})
        resp.enable_compression(web.ContentCoding.gzip)
        await resp.prepare(request)
        for part in parts:
            await resp.write(part)
        await resp.write_eof()
        return resp

    a.script = [step]
    resp = await d.http.post("/v1/audio/speech", json=SSE_ASK if sse_format else ASK)
    assert resp.status_code == 200, resp.text
    assert "content-encoding" not in resp.headers
    assert resp.content == b"".join(parts)


@pytest.mark.parametrize("content_type", ["application/json", "Text/Plain; charset=utf-8"])
async def test_a_whole_answer_with_an_unreadable_file_error_hops_without_a_breaker_count(
        ears: Any, content_type: str) -> None:
    """whisper.cpp's server ignores stream and answers its error inside a 200: a format it
    cannot read is incapable (the next model may), whatever the content type says."""
    a, b, d = ears
    a.script = [stt_answer(200, b'{"error": "failed to read WAV file"}', content_type)] * 3
    b.gate.set()
    for _ in range(3):
        resp = await transcribe(d)
        assert resp.headers["x-failoverd-failover"] == "a/ears>b/ears:incapable"
        assert stt_events(resp.content)[-1]["type"] == "transcript.text.done"
    assert await breaker(d, "a/ears") == ("closed", 0)


async def test_crlf_framed_events_pass_as_events(pair: Any) -> None:
    """Events framed with CRLF (as some servers frame them) reach the client as the same
    events, each whole."""
    a, _, d = pair
    a.script = [audio([e.replace(b"\n", b"\r\n") for e in EVENTS], "text/event-stream")]
    a.gate.set()
    resp = await d.http.post("/v1/audio/speech", json=SSE_ASK)
    assert events(resp.content) == events(b"".join(EVENTS))


async def test_pcm_that_begins_with_a_brace_byte_streams_at_once(pair: Any) -> None:
    """Raw PCM may begin with any byte, 0x7B ("{") too: its first audio must not wait for
    64 KiB (or the whole answer) as if it might be a JSON error. An error body is a JSON
    object, whose "{" is followed by a quote, whitespace or "}"."""
    a, _, d = pair
    first = b"{\x01" + bytes(range(256)) * 4
    a.script = [audio([first, PIECES[1]], "audio/pcm")]
    try:
        async with asyncio.timeout(3), d.http.stream(  # the headers wait for the first audio
                "POST", "/v1/audio/speech", json={**ASK, "response_format": "pcm"}) as resp:
            got, rest = await first_bytes(resp, len(first))
            assert got == first and not a.finished.is_set()
            a.gate.set()
            async for data in rest:
                got += data
    finally:
        a.gate.set()
    assert got == first + PIECES[1]
