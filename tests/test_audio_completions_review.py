"""Review of speech to text (POST /v1/audio/transcriptions, /translations), legacy text
completions (POST /v1/completions) and model kinds, end to end: the real daemon on its Unix
socket, real clients (httpx, the openai SDK, aiohttp's form writer, hand-written uploads) and
OpenAI-compatible upstreams as real aiohttp servers that read the form with aiohttp's own
multipart parser, as the servers failoverd forwards to do.

Passing tests pin what works and is worth keeping: uploads as real clients write them reach
every upstream intact (boundary, Content-Length, field order, file bytes, filename, the
upstream's model name); a client's bad files neither fail over nor count against any breaker;
a transcription failover's hook event and its abort; a reload that changes a model's kind
under an in-flight upload; a completions stream cut by a stop, ended without [DONE], or cut by
the upstream, each answered in OpenAI's shape and counted once; a hook aborting a completions
failover. The tests of the defects the review found pass since they were fixed.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
import pytest
from aiohttp import web

from failoverd.errors import RequestError
from failoverd.translate import audio
from tests.conftest import daemon_toml
from tests.fakes.base import AppServer, event_stream
from tests.fakes.ollama import FakeOllama
from tests.helpers import providers, status, until

# audio whose bytes look like multipart framing: CRLFs, dashes, a blank line, a header line
AUDIO = (b"RIFF\x00\x01WAVEfmt \r\n--\r\n\r\nContent-Disposition: form-data; name=\"x\"\r\n"
         + bytes(range(256)) * 8)
A, B = "a/whisper", "b/whisper"
Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Upstream(AppServer):
    """An OpenAI-compatible server: /v1/audio/{task} reads the form with aiohttp's parser and
    answers in its response_format; /v1/completions answers a text completion. A request takes
    the next scripted reply of its path, if any."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.audio_script: list[Reply] = []
        self.text_script: list[Reply] = []
        self.forms: list[list[tuple[str, Any]]] = []  # each form's fields, in order
        self.headers: list[dict[str, str]] = []
        self.texts: list[dict[str, Any]] = []

    async def start(self) -> Upstream:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/audio/{task}", self._audio)
        app.router.add_post("/v1/completions", self._text)
        app.router.add_get("/v1/models", self._no_listing)
        await self._serve(app)
        return self

    def form(self, i: int = -1) -> dict[str, Any]:
        return dict(self.forms[i])

    async def _no_listing(self, request: web.Request) -> web.StreamResponse:
        # whisper.cpp's server has no model listing: its error handler's 404
        return web.Response(status=404, text=f"File Not Found ({request.path})")

    async def _audio(self, request: web.Request) -> web.StreamResponse:
        self.headers.append(dict(request.headers))
        fields: list[tuple[str, Any]] = []
        for key, value in (await request.post()).items():
            if isinstance(value, web.FileField):
                fields.append((key, (value.filename, value.file.read())))
            else:
                fields.append((key, value))
        self.forms.append(fields)
        if self.audio_script:
            return await self.audio_script.pop(0)(request)
        form = dict(fields)
        text = f"{self.name} heard {len(form['file'][1])} bytes as {form['model']}"
        if form.get("response_format") in ("text", "srt", "vtt"):
            return web.Response(text=text, content_type="text/plain")
        return web.json_response({"text": text})

    async def _text(self, request: web.Request) -> web.StreamResponse:
        self.texts.append(await request.json())
        if self.text_script:
            return await self.text_script.pop(0)(request)
        return web.json_response(text_answer(self.name))


def text_answer(name: str) -> dict[str, Any]:
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": name,
            "choices": [{"text": f" from {name}", "index": 0, "logprobs": None,
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}}


def reply(body: Any, status_code: int = 200, **headers: str) -> Reply:
    async def answer(request: web.Request) -> web.StreamResponse:
        if isinstance(body, str):
            return web.Response(text=body, status=status_code, content_type="text/plain",
                                headers=headers)
        return web.json_response(body, status=status_code, headers=headers)
    return answer


def text_chunk(text: str, finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "cmpl-s", "object": "text_completion", "created": 1, "model": "m",
        "choices": [{"text": text, "index": 0, "logprobs": None,
                     "finish_reason": finish}]}) + b"\n\n"


def sse(*events: bytes, hold: asyncio.Event | None = None) -> Reply:
    """A text completion stream of `events`; `hold`: then wait for it (a stream that goes on)."""
    async def answer(request: web.Request) -> web.StreamResponse:
        resp = await event_stream(request)
        for event in events:
            await resp.write(event)
        if hold is not None:
            await hold.wait()
        return resp
    return answer


def config(a: Upstream, b: Upstream, head: str = "", tail: str = "") -> str:
    return f"""{head}
{providers(a=a.url, b=b.url)}
[providers.sim]
kind = "simulated"
[models."{A}"]
provider = "a"
name = "whisper-1"
capabilities = ["transcription"]
max_retries = 0
[models."{B}"]
provider = "b"
name = "whisper-local"
capabilities = ["transcription"]
max_retries = 0
[models."a/instruct"]
provider = "a"
name = "gpt-3.5-turbo-instruct"
max_retries = 0
[models."b/instruct"]
provider = "b"
name = "qwen2.5-coder"
max_retries = 0
[models."sim/chat"]
provider = "sim"
[chains.ears]
models = ["{A}", "{B}"]
[routing]
primary = "a/instruct"
fallbacks = ["b/instruct", "sim/chat"]
retry_after_max = 0.2
when_all_unavailable = "fail"
[probes]
kind = "none"
{tail}"""


@pytest.fixture
async def upstreams() -> Any:
    a, b = await Upstream("a").start(), await Upstream("b").start()
    yield a, b
    await a.close()
    await b.close()


@pytest.fixture
async def rig(upstreams: Any, start_daemon: Any) -> Any:
    a, b = upstreams
    d = await start_daemon(config(a, b))
    return a, b, d


async def transcribe(d: Any, model: str = "ears", **data: str) -> Any:
    return await d.http.post("/v1/audio/transcriptions", files={"file": ("memo.wav", AUDIO)},
                             data={"model": model, **data})


def count(d: Any, model: str, outcome: str) -> int:
    value: int = d.sup.service.metrics.requests.get((model, outcome), 0)
    return value


# -------------------------------------------------------------- uploads as clients send them


BOUNDARY = "XyZ-42"
FIRST_MODEL = ["model", "file", "language"]


def handmade(*parts: tuple[list[str], bytes], preamble: bytes = b"",
             epilogue: bytes = b"") -> bytes:
    """A form written by hand: each part's header lines, its value; no CRLF after the
    closing boundary unless the epilogue has one."""
    out = preamble
    for headers, value in parts:
        out += f"--{BOUNDARY}\r\n".encode() + "".join(h + "\r\n" for h in headers).encode() \
            + b"\r\n" + value + b"\r\n"
    return out + f"--{BOUNDARY}--".encode() + epilogue


MODEL_PART = (['content-disposition: form-data; name="model"'], b"ears")
LANGUAGE_PART = (['Content-Disposition: form-data; name="language"'], b"de")


def file_part(filename: str = "memo.wav", *extra: str) -> tuple[list[str], bytes]:
    return ([f'Content-Disposition: form-data; name="file"; filename="{filename}"', *extra],
            AUDIO)


async def aiohttp_form() -> tuple[bytes, str]:
    """What aiohttp's FormData writes: a text/plain part for `model`, the file's own type."""
    form = aiohttp.FormData()
    form.add_field("model", "ears")
    form.add_field("file", AUDIO, filename="memo.wav", content_type="audio/wav")
    form.add_field("language", "de")
    payload = form()
    chunks: list[bytes] = []

    class Sink:
        async def write(self, data: bytes) -> None:
            chunks.append(bytes(data))

    await payload.write(Sink())  # type: ignore[arg-type]
    return b"".join(chunks), payload.content_type


async def given(body: bytes, content_type: str) -> tuple[bytes, str]:
    return body, content_type


# name: (the upload, the filename the upstream must see, the fields' order)
UPLOADS: dict[str, tuple[Callable[[], Awaitable[tuple[bytes, str]]], str, list[str]]] = {
    "quoted boundary, odd-case headers, no final CRLF": (lambda: given(
        handmade(MODEL_PART, file_part("memo.wav", "CONTENT-TYPE: audio/wav"), LANGUAGE_PART),
        f'Multipart/Form-Data; Boundary="{BOUNDARY}"'), "memo.wav", FIRST_MODEL),
    "preamble and epilogue, file first, no file Content-Type": (lambda: given(
        handmade(file_part(), MODEL_PART, LANGUAGE_PART, preamble=b"a preamble\r\n",
                 epilogue=b"\r\nan epilogue\r\n"),
        f"multipart/form-data; boundary={BOUNDARY}"), "memo.wav", ["file", "model", "language"]),
    "a browser's UTF-8 filename": (lambda: given(
        handmade(MODEL_PART, file_part("Sprachmemo \u00e4\u00f6.wav", "Content-Type: audio/wav"),
                 LANGUAGE_PART),
        f"multipart/form-data; boundary={BOUNDARY}"), "Sprachmemo \u00e4\u00f6.wav", FIRST_MODEL),
    "aiohttp's FormData": (aiohttp_form, "memo.wav", FIRST_MODEL),
}


@pytest.mark.parametrize("case", list(UPLOADS))
async def test_uploads_as_clients_write_them_reach_the_upstream_intact(
        rig: Any, case: str) -> None:
    a, _, d = rig
    make, filename, order = UPLOADS[case]
    body, content_type = await make()
    resp = await d.http.post("/v1/audio/transcriptions", content=body,
                             headers={"Content-Type": content_type})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"text": f"a heard {len(AUDIO)} bytes as whisper-1"}
    # the same fields in the client's order, `model` the upstream's own, the bytes untouched
    assert [name for name, _ in a.forms[0]] == order
    form = a.form()
    assert form["file"] == (filename, AUDIO)
    assert (form["model"], form["language"]) == ("whisper-1", "de")
    framing = a.headers[0]
    # the client's own boundary again: no byte of its fields can hold it
    assert framing["Content-Type"].startswith("multipart/form-data; boundary=")
    assert int(framing["Content-Length"]) > len(AUDIO)
    assert "Transfer-Encoding" not in framing


async def test_the_openai_sdk_upload_with_every_field(rig: Any) -> None:
    a, _, d = rig
    raw = await d.openai.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("memo.m4a", AUDIO), language="en", prompt="Names: Zo\u00eb.",
        temperature=0, response_format="text", timestamp_granularities=["segment", "word"])
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    assert raw.headers["x-failoverd-model"] == A
    fields = a.forms[0]
    assert [v for k, v in fields if k == "timestamp_granularities[]"] == ["segment", "word"]
    assert dict(fields)["prompt"] == "Names: Zo\u00eb." and dict(fields)["file"][0] == "memo.m4a"


@pytest.mark.parametrize(("mangle", "words"), [
    (lambda raw: raw.replace(b"\r\n", b"\n"), "lines end in LF alone"),
    (lambda raw: raw.replace(f"--{BOUNDARY}--".encode(), b""), "cut"),
    (lambda raw: raw.replace(b'name="file"; filename="memo.wav"', b'name="file"'),
     "'file' is required"),
])
async def test_a_malformed_upload_is_a_400_naming_it_and_no_upstream_call(
        rig: Any, mangle: Callable[[bytes], bytes], words: str) -> None:
    a, b, d = rig
    resp = await d.http.post("/v1/audio/transcriptions",
                             content=mangle(handmade(MODEL_PART, file_part())),
                             headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert resp.status_code == 400 and words in resp.json()["error"]["message"], resp.text
    assert a.forms == b.forms == []
    assert count(d, "", "no_model_available") == 0


# ---------------------------------------------------------------------- upstream errors


async def test_a_clients_bad_files_neither_fail_over_nor_open_a_breaker(rig: Any) -> None:
    """OpenAI's 400 for a file it cannot decode is the client's: passed on as it is, no other
    model tried, and however often it comes no breaker counts it."""
    a, b, d = rig
    bad = {"error": {"message": "Invalid file format. Supported formats: ['flac', 'm4a', "
                                "'mp3', 'mp4', 'mpeg', 'mpga', 'oga', 'ogg', 'wav', 'webm']",
                     "type": "invalid_request_error", "param": None, "code": None}}
    a.audio_script = [reply(bad, 400) for _ in range(5)]
    for _ in range(5):
        resp = await transcribe(d)
        assert resp.status_code == 400 and resp.json() == bad
    assert b.forms == []
    entry = (await status(d))["models"][A]
    assert (entry["state"], entry["consecutive_failures"]) == ("closed", 0)
    assert count(d, A, "bad_request") == 5


async def test_a_hook_sees_and_aborts_a_transcription_failover(
        upstreams: Any, start_daemon: Any, tmp_path: Path) -> None:
    a, b = upstreams
    seen, hook = tmp_path / "seen", tmp_path / "hook"
    hook.write_text(f"#!/bin/sh\ncat >> '{seen}'\n"
                    'echo \'{"abort": true, "messages": ["no second upload"]}\'\n')
    hook.chmod(0o755)
    d = await start_daemon(config(a, b, tail=f'[[hooks]]\nevents = ["model:failover"]\n'
                                             f'exec = ["{hook}"]\ntimeout = 5\n'))
    limited = {"error": {"message": "Rate limit reached for model `whisper-large-v3` on "
                                    "seconds of audio per hour (ASPH): Limit 7200, Used 7190, "
                                    "Requested 30. Please try again in 1m40s.",
                         "type": "seconds", "code": "rate_limit_exceeded"}}
    a.audio_script = [reply(limited, 429)]
    resp = await transcribe(d)
    assert resp.status_code == 429 and resp.json()["error"]["code"] == "failover_aborted"
    assert resp.headers["x-failoverd-notice"] == "no second upload"
    assert b.forms == []
    event = orjson.loads(seen.read_bytes())
    assert {k: event[k] for k in ("type", "from_model", "to_model", "reason", "status",
                                  "session", "session_tokens")} == {
        "type": "model:failover", "from_model": A, "to_model": B, "reason": "rate_limit",
        "status": 429, "session": None, "session_tokens": None}
    assert count(d, A, "aborted") == 1 and count(d, A, "ok") == 0


# ---------------------------------------------------------------------- kinds and reloads


async def test_a_reload_that_changes_a_kind_under_an_inflight_upload(
        upstreams: Any, start_daemon: Any, short_dir: Path) -> None:
    """The upload in flight ends on the configuration it began with; afterwards the model
    serves its new kind only, and a session pinned to it chats down the default chain."""
    a, b = upstreams
    d = await start_daemon(config(a, b))
    resp = await d.http.post("/v1/sessions/s1", json={"model": "b/instruct"})
    assert resp.status_code == 200, resp.text
    gate = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await gate.wait()
        return web.json_response({"text": "late but fine"})

    a.audio_script = [slow]
    pending = asyncio.create_task(transcribe(d, A))
    await until(lambda: len(a.forms) == 1)
    # whisper becomes a chat model, b/instruct a transcription one
    swapped = config(a, b)
    for old, new in (
            ('name = "whisper-1"\ncapabilities = ["transcription"]', 'name = "whisper-1"'),
            ('name = "qwen2.5-coder"', 'name = "qwen2.5-coder"\ncapabilities = ["transcription"]'),
            ('primary = "a/instruct"\nfallbacks = ["b/instruct", "sim/chat"]',
             'primary = "sim/chat"\nfallbacks = []'),
            (f'models = ["{A}", "{B}"]', f'models = ["{B}", "b/instruct"]')):
        assert swapped.count(old) == 1, old
        swapped = swapped.replace(old, new)
    (short_dir / "d.toml").write_text(daemon_toml(d.socket, str(short_dir / "d-state"),
                                                  swapped))
    resp = await d.http.post("/v1/reload")
    assert resp.status_code == 200, resp.text
    gate.set()
    done = await asyncio.wait_for(pending, 5)
    assert done.status_code == 200 and done.json() == {"text": "late but fine"}
    resp = await transcribe(d, A)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "model_not_transcription"
    resp = await d.http.post("/v1/chat/completions", headers={"x-failoverd-session": "s1"},
                             json={"model": "default",
                                   "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200, resp.text
    assert (resp.headers["x-failoverd-model"], resp.headers["x-failoverd-attempts"]) == (
        "sim/chat", "1")
    resp = await transcribe(d, "b/instruct")
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "b/instruct"


async def test_each_kind_keeps_to_its_endpoints(rig: Any) -> None:
    """/v1/select previews a transcription model's or chain's own route (its endpoint's
    candidates); "default" there is chat's; health and the Anthropic model list keep the
    kinds apart."""
    _, _, d = rig
    for name in (A, "ears"):
        resp = await d.http.post("/v1/select", json={"model": name})
        assert resp.status_code == 200, resp.text
        models = [c["model"] for c in resp.json()["candidates"]]
        assert models and all(d.sup.service.runtime.config.models[m].kind == "transcription"
                              for m in models)
    resp = await d.http.post("/v1/select", json={"model": "default"})
    assert [c["model"] for c in resp.json()["candidates"]] == [
        "a/instruct", "b/instruct", "sim/chat"]
    health = (await d.http.get("/v1/health")).json()
    assert (health["chat"], health["transcription"]) == ("ok", "ok")
    listed = (await d.http.get("/v1/models", headers={"anthropic-version": "2023-06-01"}))
    assert [m["id"] for m in listed.json()["data"]] == ["a/instruct", "b/instruct", "sim/chat"]
    resp = await d.http.post("/v1/completions", json={"model": A, "prompt": "p"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "model_not_chat"


# ---------------------------------------------------------------------- completions


async def complete_stream(d: Any, **body: Any) -> tuple[httpx.Response, bytes]:
    async with d.http.stream("POST", "/v1/completions",
                             json={"prompt": "def f(", **body, "stream": True}) as resp:
        return resp, await resp.aread()


def payloads(raw: bytes) -> list[Any]:
    return [line[6:].decode() if line == b"data: [DONE]" else orjson.loads(line[6:])
            for line in raw.split(b"\n") if line.startswith(b"data: ")]


async def test_a_stop_cuts_a_completions_stream_with_an_openai_error_event(
        upstreams: Any, start_daemon: Any) -> None:
    a, b = upstreams
    d = await start_daemon(config(a, b, head="shutdown_timeout = 0.3"))
    hold = asyncio.Event()
    a.text_script = [sse(text_chunk(" x"), hold=hold)]
    async with d.http.stream("POST", "/v1/completions",
                             json={"model": "a/instruct", "prompt": "p", "stream": True}) as resp:
        lines = resp.aiter_lines()
        assert (await anext(lines)).startswith("data: ")
        d.sup.request_stop()
        rest = [line async for line in lines]
    events = [orjson.loads(line[6:]) for line in rest if line.startswith("data: {")]
    assert events[-1]["error"]["type"] == "shutting_down", rest
    assert "data: [DONE]" not in rest
    await asyncio.wait_for(d.task, 10)
    hold.set()
    assert count(d, "a/instruct", "cancelled") == 1
    assert count(d, "a/instruct", "ok") == count(d, "a/instruct", "stream_error") == 0


async def test_a_finished_stream_without_done_is_ended_and_counted_once(rig: Any) -> None:
    a, _, d = rig
    a.text_script = [sse(text_chunk(" x"), text_chunk("", "stop"))]
    resp, raw = await complete_stream(d, model="a/instruct")
    assert resp.status_code == 200
    assert payloads(raw)[-1] == "[DONE]" and [p["choices"][0]["finish_reason"]
                                              for p in payloads(raw)[:-1]] == [None, "stop"]
    assert count(d, "a/instruct", "ok") == 1


async def test_a_stream_cut_before_its_end_is_an_error_event_counted_once(rig: Any) -> None:
    a, b, d = rig
    a.text_script = [sse(text_chunk(" x"))]
    resp, raw = await complete_stream(d, model="a/instruct")
    assert resp.status_code == 200 and "x-failoverd-failover" not in resp.headers
    *_, last = payloads(raw)
    assert last["error"]["type"] == "invalid_response", last
    assert b.texts == []
    assert count(d, "a/instruct", "stream_error") == 1 and count(d, "a/instruct", "ok") == 0
    assert (await status(d))["models"]["a/instruct"]["consecutive_failures"] == 1


async def test_a_hook_aborts_a_completions_failover(
        upstreams: Any, start_daemon: Any, tmp_path: Path) -> None:
    a, b = upstreams
    hook = tmp_path / "hook"
    hook.write_text("#!/bin/sh\ncat > /dev/null\necho '{\"abort\": true}'\n")
    hook.chmod(0o755)
    d = await start_daemon(config(a, b, tail=f'[[hooks]]\nevents = ["model:failover"]\n'
                                             f'exec = ["{hook}"]\ntimeout = 5\n'))
    a.text_script = [reply({"error": {"message": "The server had an error",
                                      "type": "server_error"}}, 500)]
    resp = await d.http.post("/v1/completions", json={"model": "a/instruct", "prompt": "p"})
    assert resp.status_code == 500 and resp.json()["error"]["code"] == "failover_aborted"
    assert b.texts == [] and len(a.texts) == 1
    assert count(d, "a/instruct", "aborted") == 1


async def test_a_clients_short_deadline_cuts_a_completion_not_held_against_the_model(
        rig: Any) -> None:
    a, b, d = rig
    gate = asyncio.Event()

    async def hang(request: web.Request) -> web.StreamResponse:
        await gate.wait()
        return web.json_response(text_answer("a"))

    a.text_script = [hang]
    resp = await d.http.post("/v1/completions", headers={"x-failoverd-deadline": "0.3"},
                             json={"model": "a/instruct", "prompt": "p"})
    gate.set()
    assert resp.status_code == 503, resp.text
    (attempt,) = resp.json()["error"]["attempts"]
    assert attempt["reason"] == "timeout" and b.texts == []
    assert (await status(d))["models"]["a/instruct"]["consecutive_failures"] == 0


# ---------------------------------------------------------------------- defects


async def test_default_transcriptions_stay_on_transcription_models_after_a_chat_rotation(
        rig: Any) -> None:
    a, b, d = rig
    resp = await d.http.post("/v1/chains/default/next")
    assert resp.status_code == 200 and resp.json()["head"] == "b/instruct"
    resp = await transcribe(d, "default")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] in (A, B), resp.headers


async def test_a_file_too_large_for_one_model_fails_over_to_the_next(rig: Any) -> None:
    a, b, d = rig
    a.audio_script = [reply({"error": {
        "message": "Maximum content size limit (26214400) exceeded (26255446 bytes read)",
        "type": "server_error", "param": None, "code": None}}, 413)]
    resp = await transcribe(d)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == B
    assert len(b.forms) == 1


@pytest.mark.parametrize("fmt", [
    "json",
    *(fmt
      for fmt in ("text", "srt", "vtt")),
])
async def test_an_error_inside_a_200_is_no_transcript(rig: Any, fmt: str) -> None:
    a, b, d = rig
    a.audio_script = [reply({"error": "failed to read audio data"})]
    resp = await transcribe(d, response_format=fmt)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == B
    assert "error" not in resp.text and "b heard" in resp.text


async def test_one_clients_unreadable_files_do_not_open_a_whisper_cpp_breaker(
        rig: Any) -> None:
    a, b, d = rig
    a.audio_script = [reply({"error": "failed to read WAV file"}) for _ in range(3)]
    for _ in range(3):
        resp = await transcribe(d)
        assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == B, resp.text
    entry = (await status(d))["models"][A]
    assert (entry["state"], entry["consecutive_failures"]) == ("closed", 0), entry


def test_a_form_of_tiny_parts_costs_no_more_than_its_body() -> None:
    raw = (b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nm'
           + b"\r\n--b\r\nx" * 250_000)
    tracemalloc.start()
    try:
        with pytest.raises(RequestError):
            audio.parse(raw, "multipart/form-data; boundary=b")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(raw), f"{peak / len(raw):.1f}x the body"


def test_parsing_an_upload_copies_its_audio_once() -> None:
    big = bytes(range(256)) * (8 * 1024 * 1024 // 256)
    request = httpx.Request("POST", "http://x/", files={"file": ("a.wav", big)},
                            data={"model": "m"})
    raw = request.read()
    tracemalloc.start()
    try:
        form = audio.parse(raw, request.headers["content-type"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert form.audio_bytes == len(big)
    assert peak < 1.5 * len(big), f"{peak / len(big):.1f}x the audio"


def ollama_config(ol: FakeOllama, a: Upstream) -> str:
    return f"""
{providers(ol=("ollama", ol.url), a=a.url)}
[models."ol/coder"]
provider = "ol"
name = "qwen2.5-coder:1.5b"
[models."a/instruct"]
provider = "a"
name = "gpt-3.5-turbo-instruct"
[routing]
primary = "ol/coder"
fallbacks = ["a/instruct"]
when_all_unavailable = "fail"
[probes]
kind = "none"
"""


async def test_an_empty_fim_prompt_does_not_open_an_ollama_breaker(
        fake_ollama: Any, upstreams: Any, start_daemon: Any) -> None:
    a, _ = upstreams
    d = await start_daemon(ollama_config(await fake_ollama(), a))
    for _ in range(3):
        resp = await d.http.post("/v1/completions", json={
            "model": "ol/coder", "prompt": "", "suffix": "\nif __name__ == '__main__':\n",
            "max_tokens": 8})
        assert resp.status_code == 200, resp.text
    entry = (await status(d))["models"]["ol/coder"]
    assert (entry["state"], entry["consecutive_failures"]) == ("closed", 0), entry


async def test_max_tokens_zero_is_never_an_unlimited_ollama_generation(
        fake_ollama: Any, upstreams: Any, start_daemon: Any) -> None:
    a, _ = upstreams
    ol = await fake_ollama()
    d = await start_daemon(ollama_config(ol, a))
    resp = await d.http.post("/v1/completions", json={"model": "ol/coder", "prompt": "def f(",
                                                      "max_tokens": 0})
    assert resp.status_code == 200, resp.text
    sent = [r.body["options"].get("num_predict") for r in ol.generate_requests()]
    assert 0 not in sent, sent


async def test_a_whisper_server_without_a_models_listing_stays_usable(
        upstreams: Any, start_daemon: Any) -> None:
    a, b = upstreams  # neither lists models, as whisper.cpp's server does not
    d = await start_daemon(config(a, b).replace('[probes]\nkind = "none"',
                                                '[probes]\nkind = "models"\ninterval = 3600'))
    resp = await d.http.post(f"/v1/models/{B}/probe")
    assert resp.status_code in (200, 502), resp.text
    assert (await status(d))["models"][B]["state"] == "closed"
    resp = await transcribe(d, B)
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == B, resp.text
