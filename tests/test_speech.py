"""POST /v1/audio/speech end to end: the official openai SDK over the Unix socket, the real
daemon, and OpenAI-compatible text-to-speech servers as real aiohttp servers (OpenAI's, and
a Kokoro-style local one with other voices): failover between speech models, each model's
voice mapping, the audio and its content type, an error inside a 200, refusals."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web

from failoverd import config as config_mod
from failoverd.errors import ConfigError
from tests.fakes.base import AppServer
from tests.helpers import providers

MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 4


class Voice(AppServer):
    """An OpenAI-compatible /v1/audio/speech server that knows some voices: it answers
    `audio` for a voice it has, OpenAI's 400 for one it has not, or the next scripted
    status (429, or 200 with an error body as some local servers do)."""

    def __init__(self, voices: set[str], audio: bytes = MP3) -> None:
        self.voices = voices
        self.audio = audio
        self.script: list[int | str] = []
        self.bodies: list[dict[str, Any]] = []

    async def start(self) -> Voice:
        app = web.Application()
        app.router.add_post("/v1/audio/speech", self._speak)
        await self._serve(app)
        return self

    async def _speak(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.bodies.append(body)
        step = self.script.pop(0) if self.script else 200
        if step == 429:
            return web.json_response({"error": {
                "message": "Rate limit reached for requests", "type": "requests",
                "code": "rate_limit_exceeded"}}, status=429)
        if step == "error_in_200":
            return web.json_response({"error": "voice model failed to load"})
        if body["voice"] not in self.voices:
            return web.json_response({"error": {
                "message": f"Invalid value: '{body['voice']}'. Supported values are: "
                           f"{sorted(self.voices)}.", "type": "invalid_request_error",
                "param": "voice", "code": "invalid_value"}}, status=400)
        return web.Response(body=self.audio + body["voice"].encode(),
                            content_type="audio/mpeg")


@pytest.fixture
async def rig(start_daemon: Any) -> Any:
    cloud = await Voice({"alloy", "nova"}).start()
    local = await Voice({"af_bella", "af_heart"}).start()
    d = await start_daemon(f"""
{providers(cloud=cloud.url, local=local.url)}
[models."cloud/tts"]
provider = "cloud"
name = "gpt-4o-mini-tts"
capabilities = ["speech"]
max_retries = 0
[models."local/kokoro"]
provider = "local"
name = "kokoro"
capabilities = ["speech"]
voices = {{ alloy = "af_bella", "*" = "af_heart" }}
[models."cloud/chat"]
provider = "cloud"
[routing]
primary = "cloud/chat"
retry_after_max = 0
when_all_unavailable = "fail"
[probes]
kind = "none"
""")
    yield cloud, local, d
    await cloud.close()
    await local.close()


async def test_the_sdk_gets_speech_after_a_failover_in_the_fallbacks_voice(rig: Any) -> None:
    cloud, local, d = rig
    cloud.script = [429]
    raw = await d.openai.audio.speech.with_raw_response.create(
        model="gpt-4o-mini-tts", input="The build is green.", voice="alloy", speed=1.25)
    assert raw.headers["x-failoverd-model"] == "local/kokoro"
    assert raw.headers["x-failoverd-failover"] == "cloud/tts>local/kokoro:rate_limit"
    assert raw.headers["content-type"] == "audio/mpeg"
    assert raw.content == MP3 + b"af_bella"  # the client's alloy is the local server's af_bella
    (sent,) = local.bodies
    assert sent == {"model": "kokoro", "input": "The build is green.", "voice": "af_bella",
                    "speed": 1.25}
    assert cloud.bodies[0]["voice"] == "alloy" and cloud.bodies[0]["model"] == "gpt-4o-mini-tts"
    # a voice the table does not name takes its "*"
    cloud.script = [429]
    raw = await d.openai.audio.speech.with_raw_response.create(
        model="cloud/tts", input="hi", voice="nova")
    assert raw.content == MP3 + b"af_heart"


async def test_formats_and_the_default(rig: Any) -> None:
    cloud, _, d = rig
    for fmt, content_type in (("wav", "audio/wav"), ("opus", "audio/ogg"),
                              ("flac", "audio/flac"), ("pcm", "audio/pcm")):
        resp = await d.http.post("/v1/audio/speech", json={
            "model": "default", "input": "hi", "voice": "alloy", "response_format": fmt})
        assert resp.status_code == 200 and resp.headers["content-type"] == content_type
        assert resp.headers["x-failoverd-model"] == "cloud/tts"
    assert cloud.bodies[-1]["response_format"] == "pcm"


async def test_an_error_inside_a_200_is_no_audio(rig: Any) -> None:
    cloud, local, d = rig
    cloud.script = ["error_in_200"]
    resp = await d.http.post("/v1/audio/speech", json={"model": "cloud/tts", "input": "hi",
                                                       "voice": "alloy"})
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-failover"].startswith("cloud/tts>local/kokoro:")
    assert resp.content == MP3 + b"af_bella"


async def test_an_unknown_voice_is_the_clients_400(rig: Any) -> None:
    cloud, local, d = rig
    resp = await d.http.post("/v1/audio/speech", json={"model": "cloud/tts", "input": "hi",
                                                       "voice": "echo"})
    assert resp.status_code == 400
    assert "Invalid value: 'echo'" in resp.json()["error"]["message"]
    assert local.bodies == []  # the client's mistake: no failover


async def test_refusals_name_the_problem(rig: Any) -> None:
    _, _, d = rig
    cases = [
        ({"model": "cloud/tts", "voice": "alloy"}, "input"),
        ({"model": "cloud/tts", "input": "  ", "voice": "alloy"}, "input"),
        ({"model": "cloud/tts", "input": "hi"}, "voice"),
        ({"model": "cloud/tts", "input": "hi", "voice": "alloy", "response_format": "ogg"},
         "response_format"),
        ({"model": "cloud/tts", "input": "hi", "voice": "alloy", "speed": 9}, "speed"),
        # sse streams now (tests/test_speech_stream.py): only an unknown framing is refused
        ({"model": "cloud/tts", "input": "hi", "voice": "alloy", "stream_format": "ws"},
         "stream_format"),
        ({"model": "cloud/chat", "input": "hi", "voice": "alloy"}, "model"),
    ]
    for body, param in cases:
        resp = await d.http.post("/v1/audio/speech", json=body)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["param"] == param, (body, resp.text)
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "local/kokoro", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.json()["error"]["code"] == "model_not_chat"
    assert "POST /v1/audio/speech" in resp.json()["error"]["message"]


def test_voices_are_for_speech_models_and_name_voices() -> None:
    base = '[providers.s]\nkind = "simulated"\n[models."s/m"]\nprovider = "s"\n'
    with pytest.raises(ConfigError) as info:
        config_mod.loads(base + 'voices = { alloy = "af_bella" }\n', env={})
    assert info.value.problems == [
        'models."s/m".voices: only for a speech model (capabilities = ["speech"])']
    with pytest.raises(ConfigError) as info:
        config_mod.loads(base + 'capabilities = ["speech"]\nvoices = { alloy = "" }\n', env={})
    assert info.value.problems == ['models."s/m".voices.alloy: a voice name, mapped to a '
                                   'non-empty voice of this model']
    with pytest.raises(ConfigError) as info:
        config_mod.loads(base.replace('"simulated"', '"anthropic"') + 'capabilities = '
                         '["speech"]\n', env={})
    assert any("has no text-to-speech API" in p for p in info.value.problems)


async def test_the_simulated_voice_answers_wav_of_silence(start_daemon: Any) -> None:
    d = await start_daemon('[providers.s]\nkind = "simulated"\n[models."s/voice"]\n'
                           'provider = "s"\ncapabilities = ["speech"]\n[probes]\nkind = "none"\n')
    resp = await d.http.post("/v1/audio/speech", json={
        "model": "s/voice", "input": "five words to say here", "voice": "any",
        "response_format": "wav"})
    assert resp.status_code == 200 and resp.headers["content-type"] == "audio/wav"
    audio = resp.content
    assert audio[:4] == b"RIFF" and audio[8:16] == b"WAVEfmt "
    assert int.from_bytes(audio[40:44], "little") == len(audio) - 44 == 2 * 16000 * 6 // 3


async def test_an_upstream_name_two_speech_models_share_is_no_ambiguity(
        start_daemon: Any) -> None:
    """tts-1 at two providers: any speech model may stand in for another, so the name means
    those two first (in file order), then the others, not a 404."""
    a, b = await Voice({"alloy"}).start(), await Voice({"alloy"}).start()
    try:
        d = await start_daemon(f"""
{providers(a=a.url, b=b.url)}
[models."a/tts"]
provider = "a"
name = "tts-1"
capabilities = ["speech"]
max_retries = 0
[models."b/tts"]
provider = "b"
name = "tts-1"
capabilities = ["speech"]
[routing]
retry_after_max = 0
[probes]
kind = "none"
""")
        a.script = [429]
        resp = await d.http.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi",
                                                           "voice": "alloy"})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-failoverd-failover"] == "a/tts>b/tts:rate_limit"
        assert [b["model"] for b in a.bodies + b.bodies] == ["tts-1", "tts-1"]
    finally:
        await a.close()
        await b.close()
