"""POST /v1/audio/transcriptions with stream=true, end to end: the real daemon, real clients
over its Unix socket (httpx and the official openai SDK), and OpenAI-compatible
speech-to-text servers as real aiohttp servers that read the form with aiohttp's parser and
send OpenAI's transcript events one by one, each after the first held back until the test
opens a gate. So a test knows the client got the first delta before the upstream sent the
rest; that every failure before the first event fails over (a status, a model refusing
stream as incapable, an error event, a 200 that is no event stream, no event in time); that
whisper-1's answer to a stream it ignores goes on as a one-delta stream; that a failure
after the first event (or a stop's cut) ends the stream with an error event, a failure
counting against the model; and the simulated kind's word-by-word stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web
from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent

from failoverd.config import ModelConfig, ProviderConfig
from failoverd.errors import RequestError
from failoverd.http1 import HttpClient
from failoverd.providers.base import AttemptLimits
from failoverd.providers.gemini import GeminiProvider
from failoverd.translate import audio as wire
from tests.fakes.base import cut
from tests.fakes.scripted import Scripted, pair_fixture
from tests.helpers import breaker, first_bytes, metric, providers

AUDIO = b"RIFF\x00\x01WAVEfmt " + bytes(range(256)) * 125  # 32012 bytes: a second of audio
EVENT_STREAM = "text/event-stream"

Step = Callable[[web.Request, "Stt"], Awaitable[web.StreamResponse]]


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def delta(text: str) -> bytes:
    return sse({"type": "transcript.text.delta", "delta": text})


USAGE = {"type": "tokens", "input_tokens": 14, "output_tokens": 3, "total_tokens": 17,
         "input_token_details": {"text_tokens": 0, "audio_tokens": 14}}
DONE = sse({"type": "transcript.text.done", "text": "The build is green.", "usage": USAGE})
EVENTS = [delta("The"), delta(" build is"), delta(" green."), DONE]
ERROR = sse({"error": {"message": "The server had an error while processing your request.",
                       "type": "server_error"}})


class Stt(Scripted):
    """An OpenAI-compatible /v1/audio/{task} server whose answers stream (tests/fakes/
    scripted.py): the forms it got are kept; `sent` counts the pieces written."""

    route = "/v1/audio/{task}"

    def __init__(self, default: Step | None = None) -> None:
        super().__init__(default or pieces(EVENTS))
        self.forms: list[dict[str, Any]] = []

    async def keep(self, request: web.Request) -> None:
        form = await request.post()
        self.forms.append({k: (v.filename, v.file.read()) if isinstance(v, web.FileField)
                           else v for k, v in form.items()})


async def _pieces(request: web.Request, stt: Stt, parts: list[bytes], content_type: str,
                  then_cut: bool) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": content_type})  # chunked
    await resp.prepare(request)
    try:
        for i, part in enumerate(parts):
            if i:
                await stt.gate.wait()
            await resp.write(part)
            stt.sent += 1
        if then_cut:
            await stt.gate.wait()
            return cut(request, resp)
        await resp.write_eof()
    except ConnectionResetError:
        return resp
    stt.finished.set()
    return resp


def pieces(parts: list[bytes], content_type: str = EVENT_STREAM, *,
           then_cut: bool = False) -> Step:
    """Streams `parts`, the second and later once the gate is open; `then_cut`: the
    connection dies (once the gate is open) instead of the body ending."""
    return lambda request, stt: _pieces(request, stt, parts, content_type, then_cut)


def answer(status_code: int, body: Any, content_type: str = "application/json") -> Step:
    """A whole answer at once, whatever was asked (a dict is sent as JSON)."""
    raw = orjson.dumps(body) if isinstance(body, dict) else body

    async def step(request: web.Request, stt: Stt) -> web.StreamResponse:
        return web.Response(status=status_code, body=raw,
                            headers={"Content-Type": content_type})
    return step


async def silent(request: web.Request, stt: Stt) -> web.StreamResponse:
    """Headers, then no event (until the gate opens, at the test's end)."""
    resp = web.StreamResponse(headers={"Content-Type": EVENT_STREAM})
    await resp.prepare(request)
    await stt.gate.wait()
    return resp


def events(raw: bytes) -> list[dict[str, Any]]:
    """An event stream's events (data lines only; names, if any, dropped)."""
    out = []
    for block in raw.split(b"\n\n"):
        data = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
        if data:
            out.append(orjson.loads(b"\n".join(data)))
    return out


def config(a: Stt, b: Stt, *, head: str = "", a_more: str = "") -> str:
    return f"""{head}
{providers(a=a.url, b=b.url)}
[providers.s]
kind = "simulated"
[models."a/ears"]
provider = "a"
name = "gpt-4o-mini-transcribe"
capabilities = ["transcription"]
max_retries = 0
{a_more}
[models."b/ears"]
provider = "b"
name = "gpt-4o-transcribe"
capabilities = ["transcription"]
max_retries = 0
[models."s/ears"]
provider = "s"
capabilities = ["transcription"]
[models."s/chat"]
provider = "s"
[chains.ears]
models = ["a/ears", "b/ears"]
[routing]
primary = "s/chat"
retry_after_max = 0
when_all_unavailable = "fail"
[probes]
kind = "none"
"""


pair = pair_fixture(Stt, config)


ASK: dict[str, Any] = {"data": {"model": "ears", "stream": "true"},
                       "files": {"file": ("memo.wav", AUDIO, "audio/wav")}}


async def transcribe(d: Any, **data: str) -> httpx.Response:
    """A whole streamed transcription's answer."""
    return await d.http.post("/v1/audio/transcriptions", data={**ASK["data"], **data},
                             files=ASK["files"])


# ------------------------------------------------------------------ events as they come


async def test_the_first_delta_reaches_the_client_before_the_upstream_sent_the_rest(
        pair: Any) -> None:
    a, b, d = pair
    async with d.http.stream("POST", "/v1/audio/transcriptions", **ASK) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"] == EVENT_STREAM
        assert resp.headers["x-failoverd-model"] == "a/ears"
        assert resp.headers["x-failoverd-attempts"] == "1"
        got, rest = await first_bytes(resp, len(EVENTS[0]))
        assert got == EVENTS[0]
        assert a.sent == 1 and not a.finished.is_set()  # the rest not sent yet
        a.gate.set()
        async for data in rest:
            got += data
    assert got == b"".join(EVENTS)
    # the upstream got the client's form, stream=true and its own model name, asked for events
    assert a.forms[0]["stream"] == "true" and a.forms[0]["model"] == "gpt-4o-mini-transcribe"
    assert a.forms[0]["file"] == ("memo.wav", AUDIO)
    assert a.accepts == [EVENT_STREAM] and b.forms == []
    assert await breaker(d, "a/ears") == ("closed", 0)
    assert await metric(d, 'failoverd_requests_total{model="a/ears",outcome="ok"} 1')


async def test_named_events_logprobs_and_segments_pass_as_they_came(pair: Any) -> None:
    """An upstream's event names and fields failoverd does not know (logprobs, the diarizing
    model's segments) go on untouched; the stream ends at the done event, a [DONE] after
    it is not passed on."""
    a, _, d = pair
    parts = [b"event: transcript.text.delta\n" + sse({
                 "type": "transcript.text.delta", "delta": "Hi",
                 "logprobs": [{"token": "Hi", "bytes": [72, 105], "logprob": -0.01}]}),
             sse({"type": "transcript.text.segment", "id": "seg_0", "start": 0.0, "end": 0.5,
                  "speaker": "A", "text": "Hi"}),
             b"event: transcript.text.done\n" + DONE, b"data: [DONE]\n\n"]
    a.script = [pieces(parts, "text/event-stream; charset=utf-8")]
    a.gate.set()
    resp = await transcribe(d, response_format="diarized_json")
    assert resp.content == b"".join(parts[:3])
    assert a.forms[0]["response_format"] == "diarized_json"


# ------------------------------------------------------------------ failover before the first


@pytest.mark.parametrize(("step", "reason"), [
    (answer(429, {"error": {"message": "Rate limit reached for requests", "type": "requests",
                            "code": "rate_limit_exceeded"}}), "rate_limit"),
    # a model that cannot stream refuses the field: another model may stream
    (answer(400, {"error": {"message": "Streaming is not supported for whisper-1",
                            "type": "invalid_request_error", "param": "stream",
                            "code": "unsupported_value"}}), "incapable"),
    # a local FastAPI server that knows no `stream` field
    (answer(422, {"detail": [{"loc": ["body", "stream"], "msg": "extra fields not permitted",
                              "type": "value_error.extra"}]}), "incapable"),
    # an error event first
    (pieces([ERROR]), "server_error"),
    # a 200 that is no event stream and no transcript: a proxy's page
    (answer(200, b"<html><body>502 Bad Gateway</body></html>", "text/html"),
     "invalid_response"),
    # an error inside a 200 (whisper.cpp's server answers so)
    (answer(200, {"error": "failed to read WAV file"}), "incapable"),
    # an event stream that ends before any event
    (pieces([b": keep-alive\n\n"]), "invalid_response"),
])
async def test_failures_before_the_first_event_fail_over(pair: Any, step: Step,
                                                         reason: str) -> None:
    a, b, d = pair
    a.script = [step]
    b.gate.set()
    resp = await transcribe(d)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-failover"] == f"a/ears>b/ears:{reason}"
    assert resp.headers["x-failoverd-model"] == "b/ears"
    assert resp.content == b"".join(EVENTS)
    if reason == "incapable":  # not the model's failure
        assert await breaker(d, "a/ears") == ("closed", 0)


async def test_no_first_event_in_time_fails_over(start_daemon: Any) -> None:
    """Headers and then nothing: the first event must come within first_token_timeout."""
    a, b = await Stt().start(), await Stt().start()
    try:
        d = await start_daemon(config(a, b, a_more="first_token_timeout = 0.2"))
        a.script = [silent]
        b.gate.set()
        resp = await transcribe(d)
        assert resp.headers["x-failoverd-failover"] == "a/ears>b/ears:timeout"
        assert resp.content == b"".join(EVENTS)
    finally:
        await a.close()
        await b.close()


async def test_the_clients_bad_file_is_its_400_and_no_failover(pair: Any) -> None:
    """A 400 that does not name stream is the client's, passed on unchanged."""
    a, b, d = pair
    a.script = [answer(400, {"error": {"message": "Invalid file format. Supported formats: "
                                                  "['flac', 'mp3', 'wav']",
                                       "type": "invalid_request_error", "param": None}})]
    resp = await transcribe(d)
    assert resp.status_code == 400 and "Invalid file format" in resp.text
    assert b.forms == []


async def test_a_stream_ignored_goes_on_as_one_delta(pair: Any) -> None:
    """whisper-1 ignores stream and answers the whole transcript (as OpenAI's documentation
    says): the client still gets the stream it asked for, one delta and the done event, from
    the model it asked for; a token usage goes in the done event, whisper-1's seconds not."""
    a, b, d = pair
    a.script = [answer(200, {"text": "The build is green.", "usage": USAGE}),
                answer(200, {"text": "Hello.", "usage": {"type": "duration", "seconds": 2}}),
                answer(200, b"Plain words.\n", "text/plain; charset=utf-8")]
    resp = await transcribe(d)
    assert resp.headers["x-failoverd-model"] == "a/ears" and resp.headers["content-type"] \
        == EVENT_STREAM
    assert events(resp.content) == [
        {"type": "transcript.text.delta", "delta": "The build is green."},
        {"type": "transcript.text.done", "text": "The build is green.", "usage": USAGE}]
    resp = await transcribe(d)
    assert events(resp.content)[-1] == {"type": "transcript.text.done", "text": "Hello."}
    resp = await transcribe(d, response_format="text")
    assert [e.get("delta", e.get("text")) for e in events(resp.content)] == ["Plain words."] * 2
    assert b.forms == []


# ------------------------------------------------------------------ after the first event


async def test_a_cut_after_the_first_event_ends_with_an_error_event(
        pair: Any, caplog: pytest.LogCaptureFixture) -> None:
    """No failover once an event went out: the stream ends with an OpenAI-style error
    event, and the model is charged for it."""
    a, b, d = pair
    a.script = [pieces(EVENTS[:2], then_cut=True)]
    caplog.set_level(logging.WARNING, logger="failoverd.api.audio")
    async with d.http.stream("POST", "/v1/audio/transcriptions", **ASK) as resp:
        got, rest = await first_bytes(resp, len(EVENTS[0]))
        a.gate.set()
        async for data in rest:  # ends cleanly: the error event is its last
            got += data
    got_events = events(got)
    assert got_events[:2] == events(EVENTS[0] + EVENTS[1])
    assert got_events[2]["error"]["type"] == "invalid_response"
    assert len(got_events) == 3 and b.forms == []
    assert await breaker(d, "a/ears") == ("closed", 1)
    assert await metric(d, 'failoverd_requests_total{model="a/ears",outcome="stream_error"} 1')
    assert any("transcript from a/ears failed after the first event: invalid_response"
               in r.getMessage() for r in caplog.records)


async def test_an_error_event_after_the_first_ends_the_stream(pair: Any) -> None:
    a, _, d = pair
    a.script = [pieces([EVENTS[0], ERROR])]
    a.gate.set()
    resp = await transcribe(d)
    got = events(resp.content)
    assert got[0] == {"type": "transcript.text.delta", "delta": "The"}
    assert got[1]["error"]["type"] == "server_error" and len(got) == 2
    assert await metric(d, 'failoverd_requests_total{model="a/ears",outcome="stream_error"} 1')


async def test_a_stop_ends_a_transcript_stream_with_an_error_event(start_daemon: Any) -> None:
    """A stop's cut after shutdown_timeout ends the stream with the shutting_down event."""
    a, b = await Stt().start(), await Stt().start()
    try:
        d = await start_daemon(config(a, b, head="shutdown_timeout = 0.3"))
        async with d.http.stream("POST", "/v1/audio/transcriptions", **ASK) as resp:
            got, rest = await first_bytes(resp, len(EVENTS[0]))
            d.sup.request_stop()
            async for data in rest:
                got += data
        assert events(got)[0] == {"type": "transcript.text.delta", "delta": "The"}
        assert events(got)[-1]["error"]["type"] == "shutting_down"
        await asyncio.wait_for(d.task, 10)
        requests = d.sup.service.metrics.requests
        assert requests.get(("a/ears", "cancelled")) == 1 and ("a/ears", "ok") not in requests
    finally:
        await a.close()
        await b.close()


# ------------------------------------------------------------------ the official SDK


async def test_the_sdk_iterates_the_events_after_a_failover(pair: Any) -> None:
    a, b, d = pair
    a.script = [answer(400, {"error": {"message": "Streaming is not supported for whisper-1",
                                       "type": "invalid_request_error", "param": "stream"}})]
    b.gate.set()
    stream = await d.openai.audio.transcriptions.create(
        model="ears", file=("memo.wav", AUDIO, "audio/wav"), stream=True)
    got = [event async for event in stream]
    assert [type(e) for e in got] == [TranscriptionTextDeltaEvent] * 3 + [
        TranscriptionTextDoneEvent]
    assert "".join(e.delta for e in got[:3] if isinstance(e, TranscriptionTextDeltaEvent)) \
        == "The build is green."
    done = got[-1]
    assert isinstance(done, TranscriptionTextDoneEvent) and done.usage is not None
    assert done.text == "The build is green." and done.usage.total_tokens == 17
    assert b.forms[0]["stream"] == "true"


async def test_the_sdk_sees_a_cut_stream_as_an_error(pair: Any) -> None:
    a, _, d = pair
    a.script = [pieces(EVENTS[:1], then_cut=True)]
    stream = await d.openai.audio.transcriptions.create(
        model="a/ears", file=("memo.wav", AUDIO, "audio/wav"), stream=True)
    first = await stream.__anext__()
    assert isinstance(first, TranscriptionTextDeltaEvent) and first.delta == "The"
    a.gate.set()
    with pytest.raises(openai.APIError, match="stream cut"):
        await stream.__anext__()


# ------------------------------------------------------------------ the simulated kind


async def test_the_simulated_kind_streams_word_by_word(pair: Any) -> None:
    _, _, d = pair
    resp = await transcribe(d, model="s/ears")
    assert resp.status_code == 200 and resp.headers["content-type"] == EVENT_STREAM
    got = events(resp.content)
    text = f"[s/ears] simulated transcript of {len(AUDIO)} bytes of audio."
    assert [e["delta"] for e in got[:-1]] == ["[s/ears]"] + [
        " " + w for w in text.split(" ")[1:]]
    assert got[-1] == {"type": "transcript.text.done", "text": text, "usage": {
        "type": "tokens", "input_tokens": 11, "output_tokens": 8, "total_tokens": 19,
        "input_token_details": {"audio_tokens": 11, "text_tokens": 0}}}


# ------------------------------------------------------------------ refusals


async def test_streams_the_api_has_not_are_refused(pair: Any) -> None:
    a, _, d = pair
    resp = await d.http.post("/v1/audio/translations", data={"model": "ears", "stream": "true"},
                             files=ASK["files"])
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "stream"
    for fmt in ("srt", "vtt", "verbose_json"):
        resp = await transcribe(d, response_format=fmt)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "response_format"
    assert a.forms == []
    # stream=false is an ordinary transcription
    a.script = [answer(200, {"text": "whole"})]
    resp = await transcribe(d, stream="false")
    assert resp.json() == {"text": "whole"} and a.forms[0]["stream"] == "false"


async def test_a_kind_without_transcriptions_is_incapable_of_a_stream(
        http_client: HttpClient) -> None:
    """Adapters without a transcription endpoint (Anthropic, Gemini, Ollama, Bedrock) refuse
    a stream at once, as a RequestError: the dispatcher's incapable, the chain goes on."""
    provider = GeminiProvider(ProviderConfig(name="g", kind="gemini",
                                             base_url="http://127.0.0.1:9"), http_client)
    limits = AttemptLimits(total=1, connect=1, first_token=1, idle=1)
    with pytest.raises(RequestError, match="Gemini's API has no audio transcription endpoint"):
        provider.stream_transcript({}, ModelConfig(id="g/m", provider="g", name="m"), limits)


def test_refusals_of_the_stream_field_are_told_from_the_clients_file() -> None:
    refusals = [b'{"error": {"message": "Streaming is not supported for whisper-1"}}',
                b'{"error": {"message": "bad value", "param": "stream"}}',
                b'{"detail": [{"loc": ["body", "stream"], "msg": "extra fields"}]}',
                b"stream is not supported by this server",
                b"Unexpected field: stream=true"]
    files = [b'{"error": {"message": "could not decode the audio stream"}}',
             b'{"error": {"message": "Invalid file format.", "param": null}}',
             b'{"error": {"message": "Audio stream is corrupt"}}']
    assert all(wire.refuses_stream(r) for r in refusals)
    assert not any(wire.refuses_stream(f) for f in files)
