"""POST /v1/audio/transcriptions and /translations end to end: the official openai SDK and curl
over the Unix socket, the real daemon, and OpenAI-compatible upstreams as real aiohttp servers
that read the multipart form as OpenAI's and Groq's servers do (aiohttp's own form parser) and
answer in each response_format; failover between transcription models, the form as it
reached the upstream, refusals, and the multipart parser on malformed uploads."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from failoverd.translate import audio
from tests.fakes.base import AppServer
from tests.helpers import status

AUDIO = b"RIFF\x00\x01WAVEfmt \r\n--not-a-boundary\r\n" + bytes(range(256)) * 8

RATE_LIMIT = {"error": {"message": "Rate limit reached for model `whisper-large-v3` in "
                        "organization `org_x` on seconds of audio per hour (ASPH): Limit "
                        "7200, Used 7190, Requested 30. Please try again in 1m40s.",
                        "type": "seconds", "code": "rate_limit_exceeded"}}


class Whisper(AppServer):
    """An OpenAI-compatible speech-to-text server: reads the form with aiohttp's parser,
    logs it, and answers the next scripted status (200 by default) in the form's format."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.script: list[int] = []
        self.forms: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []

    async def start(self) -> Whisper:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/audio/{task}", self._handle)
        await self._serve(app)
        return self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        fields: dict[str, Any] = {}
        for key, value in form.items():
            if isinstance(value, web.FileField):
                fields[key] = (value.filename, value.file.read(), value.content_type)
            else:
                fields[key] = value
        fields["_task"] = request.match_info["task"]
        self.forms.append(fields)
        self.headers.append(dict(request.headers))
        code = self.script.pop(0) if self.script else 200
        if code == 429:
            return web.json_response(RATE_LIMIT, status=429)
        if code != 200:
            return web.json_response({"error": {"message": "Invalid file format.",
                                                "type": "invalid_request_error"}}, status=code)
        text = f"{self.name} heard {len(fields['file'][1])} bytes as {fields['model']}"
        fmt = fields.get("response_format", "json")
        if fmt == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        if fmt == "vtt":
            return web.Response(text=f"WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n{text}\n",
                                content_type="text/vtt")
        if fmt == "verbose_json":
            return web.json_response({"task": "transcribe", "language": "english",
                                      "duration": 1.5, "text": text, "segments": []})
        return web.json_response({"text": text})


@pytest.fixture
async def rig(start_daemon: Any) -> Any:
    groq, oai = await Whisper("groq").start(), await Whisper("openai").start()
    d = await start_daemon(f"""
[providers.groq]
kind = "openai"
base_url = "{groq.url}"
api_key_env = "GROQ_KEY"
[providers.oai]
kind = "openai"
base_url = "{oai.url}"
api_key_env = "OAI_KEY"
[models."groq/whisper"]
provider = "groq"
name = "whisper-large-v3-turbo"
capabilities = ["transcription"]
max_retries = 0
[models."oai/whisper"]
provider = "oai"
name = "whisper-1"
capabilities = ["transcription"]
[models."oai/chat"]
provider = "oai"
[chains.ears]
models = ["oai/whisper", "groq/whisper"]
[routing]
primary = "oai/chat"
retry_after_max = 0.2
when_all_unavailable = "fail"
[probes]
kind = "chat"
interval = 3600
""", env={"GROQ_KEY": "gsk-groq", "OAI_KEY": "sk-oai"})
    yield groq, oai, d
    await groq.close()
    await oai.close()


async def test_the_sdk_transcribes_after_a_rate_limited_first_model(rig: Any) -> None:
    groq, oai, d = rig
    groq.script = [429]
    raw = await d.openai.audio.transcriptions.with_raw_response.create(
        model="whisper-large-v3-turbo", file=("memo.wav", AUDIO, "audio/wav"),
        language="en", prompt="A voice memo.", temperature=0.2)
    assert raw.headers["x-failoverd-model"] == "oai/whisper"
    assert raw.headers["x-failoverd-failover"] == "groq/whisper>oai/whisper:rate_limit"
    assert raw.parse().text == f"openai heard {len(AUDIO)} bytes as whisper-1"
    # each upstream got the client's form, its own model name and its own key
    for server, name, key in ((groq, "whisper-large-v3-turbo", "gsk-groq"),
                              (oai, "whisper-1", "sk-oai")):
        (form,) = server.forms
        assert form["model"] == name and form["_task"] == "transcriptions"
        assert form["file"] == ("memo.wav", AUDIO, "audio/wav")
        assert (form["language"], form["prompt"], form["temperature"]) == (
            "en", "A voice memo.", "0.2")
        assert server.headers[0]["Authorization"] == f"Bearer {key}"
    # the 429's wait (1m40s, over retry_after_max) was no same-model retry
    assert len(groq.forms) == 1
    entry = (await status(d))["models"]["groq/whisper"]
    assert entry["consecutive_failures"] == 1


async def test_formats_translations_chains_and_the_default(rig: Any) -> None:
    groq, oai, d = rig
    resp = await d.http.post("/v1/audio/transcriptions", files={"file": ("a.wav", AUDIO)},
                             data={"model": "ears", "response_format": "text"})
    assert resp.headers["content-type"] == "text/plain; charset=utf-8"
    assert resp.text.strip() == f"openai heard {len(AUDIO)} bytes as whisper-1"
    resp = await d.http.post("/v1/audio/transcriptions",
                             files={"file": ("a.wav", AUDIO)},
                             data={"model": "default", "response_format": "vtt"})
    assert resp.headers["content-type"] == "text/vtt; charset=utf-8"
    assert resp.text.startswith("WEBVTT") and resp.headers["x-failoverd-model"] == "groq/whisper"
    verbose = await d.openai.audio.transcriptions.create(
        model="oai/whisper", file=("a.wav", AUDIO), response_format="verbose_json")
    assert verbose.duration == 1.5 and verbose.language == "english"
    # (the SDK's audio.translations is deprecated: its request, as the SDK sends it)
    resp = await d.http.post("/v1/audio/translations", files={"file": ("a.wav", AUDIO)},
                             data={"model": "oai/whisper"})
    assert "heard" in resp.json()["text"] and oai.forms[-1]["_task"] == "translations"


async def test_an_upstream_400_is_the_clients_and_no_failover(rig: Any) -> None:
    groq, oai, d = rig
    oai.script = [400]
    with pytest.raises(openai.BadRequestError) as info:
        await d.openai.audio.transcriptions.create(model="ears", file=("a.txt", b"not audio"))
    assert "Invalid file format" in str(info.value)
    assert groq.forms == []


async def test_refusals_name_the_problem(rig: Any) -> None:
    _, _, d = rig
    cases = [
        ({"data": {"model": "oai/chat"}, "files": {"file": ("a.wav", AUDIO)}}, 400,
         "model_not_transcription"),
        ({"data": {"model": "oai/whisper"}, "files": {"audio": ("a.wav", AUDIO)}}, 400,
         "'file' is required"),
        ({"data": {"model": "oai/whisper"}, "files": {"file": ("a.wav", b"")}}, 400,
         "'file' is empty"),
        ({"files": {"file": ("a.wav", AUDIO)}}, 400, "'model' is required"),
        ({"data": {"model": "oai/whisper", "response_format": "mp3"},
          "files": {"file": ("a.wav", AUDIO)}}, 400, "'response_format' must be one of"),
        # streamed transcriptions are served (tests/test_transcription_stream.py); a
        # format no streaming model answers, a stream flag that is no boolean, are not
        ({"data": {"model": "oai/whisper", "stream": "true", "response_format": "srt"},
          "files": {"file": ("a.wav", AUDIO)}}, 400, "streamed transcription's"),
        ({"data": {"model": "oai/whisper", "stream": "yes"},
          "files": {"file": ("a.wav", AUDIO)}}, 400, "'stream' must be true or false"),
        ({"json": {"model": "oai/whisper"}}, 400, "must be multipart/form-data"),
        ({"data": {"model": "nope"}, "files": {"file": ("a.wav", AUDIO)}}, 404,
         "is not a configured model"),
    ]
    for kwargs, code, words in cases:
        resp = await d.http.post("/v1/audio/transcriptions", **kwargs)
        assert resp.status_code == code, (kwargs, resp.text)
        assert words in resp.text, (kwargs, resp.text)
    # OpenAI's translations do not stream
    resp = await d.http.post("/v1/audio/translations", data={"model": "oai/whisper",
                                                             "stream": "true"},
                             files={"file": ("a.wav", AUDIO)})
    assert resp.status_code == 400 and "translations do not stream" in resp.text
    assert resp.json()["error"]["param"] == "stream"
    # a chat request cannot name a transcription model either
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "oai/whisper", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "model_not_chat"
    assert "POST /v1/audio/transcriptions" in resp.json()["error"]["message"]


async def test_a_chat_probe_of_a_transcription_model_lists_models(rig: Any) -> None:
    """A probe has no speech to send: a `chat` probe of a transcription model lists the
    provider's models instead (reachability and the key), never uploads anything, and takes
    a 404 there (a speech server without a listing) for an answer."""
    groq, _, d = rig
    resp = await d.http.post("/v1/models/groq/whisper/probe")
    # the fake, as whisper.cpp's server, has no GET /models: its 404 says it answered
    assert resp.status_code == 200, resp.text
    assert groq.forms == []
    assert (await status(d))["models"]["groq/whisper"]["last_probe"]["ok"] is True


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_curl_uploads_a_file(rig: Any, tmp_path: Any) -> None:
    _, oai, d = rig
    path = tmp_path / "memo.mp3"
    path.write_bytes(AUDIO)
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "--unix-socket", d.socket, "http://failoverd/v1/audio/transcriptions",
        "-F", f"file=@{path}", "-F", "model=oai/whisper", stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    assert orjson.loads(out) == {"text": f"openai heard {len(AUDIO)} bytes as whisper-1"}
    assert oai.forms[0]["file"][0] == "memo.mp3"


# ---------------------------------------------------------------------- the form parser


def form_of(**files: Any) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", files=files, data={"model": "m"})
    return request.read(), request.headers["content-type"]


def test_the_parser_round_trips_what_clients_send() -> None:
    raw, content_type = form_of(file=("a b\"c.wav", AUDIO, "audio/wav"))
    form = audio.parse(raw, content_type)
    assert form.model == "m" and form.response_format == "json"
    again = audio.parse(*form.encode("whisper-1"))
    assert again.model == "whisper-1"
    (file,) = [f for f in again.fields if f.name == "file"]
    # the client's own escaping of the name (httpx's %22, as browsers do) is kept as sent
    assert (file.filename, file.value, file.content_type) == ("a b%22c.wav", AUDIO, "audio/wav")


@pytest.mark.parametrize("mangle, words", [
    (lambda raw: raw[:-10], "cut"),
    (lambda raw: raw.replace(b"\r\n\r\n", b"\r\n", 1), "no blank line"),
    (lambda raw: raw.replace(b"Content-Disposition", b"X-Other", 1), "no Content-Disposition"),
    (lambda raw: b"nothing here", "boundary is not in it"),
])
def test_the_parser_names_a_malformed_upload(mangle: Any, words: str) -> None:
    raw, content_type = form_of(file=("a.wav", AUDIO))
    with pytest.raises(audio.RequestError) as info:
        audio.parse(mangle(raw), content_type)
    assert words in info.value.message
    with pytest.raises(audio.RequestError, match="no boundary"):
        audio.parse(raw, "multipart/form-data")
