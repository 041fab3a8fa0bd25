"""Review of text to speech, models.<id>.max_tpm and the per-model tokens and cost of
/v1/status and `failoverctl status`, end to end against the real daemon: OpenAI-compatible
speech servers as real aiohttp servers that answer as real ones (and the proxies before them)
do, simulated time for the minute of max_tpm, and the real failoverctl."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from failoverd import config as config_mod
from failoverd.cli.ctl import _usd
from failoverd.clock import ManualClock
from failoverd.errors import ConfigError
from failoverd.window import SlidingSum
from tests.fakes.base import AppServer
from tests.helpers import HELLO, breaker, chat, failoverctl, providers, status, until
from tests.test_max_rpm import CONFIG as RPM

MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 4

Step = Callable[[dict[str, Any]], web.StreamResponse]


def audio(body: dict[str, Any]) -> web.StreamResponse:
    return web.Response(body=MP3 + str(body.get("voice")).encode(), content_type="audio/mpeg")


class Speaker(AppServer):
    """An OpenAI-compatible /v1/audio/speech server: each request takes the next scripted
    answer (else `default`; OpenAI's 400 for a voice not in `voices`), and every body it got
    is kept; a models listing only with `listing` (many local TTS servers have none)."""

    def __init__(self, default: Step = audio, *, voices: set[str] | None = None,
                 listing: bool = False) -> None:
        self.default = default
        self.voices = voices
        self.listing = listing
        self.script: list[Step] = []
        self.bodies: list[dict[str, Any]] = []

    async def start(self) -> Speaker:
        app = web.Application(client_max_size=1024**2)
        app.router.add_post("/v1/audio/speech", self._speak)
        if self.listing:
            app.router.add_get("/v1/models", self._models)
        await self._serve(app)
        return self

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"object": "list", "data": [{"id": "tts-1"}, {"id": "kokoro"}]})

    async def _speak(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.bodies.append(body)
        step = self.script.pop(0) if self.script else self.default
        if self.voices is not None and step is audio and body.get("voice") not in self.voices:
            return web.json_response({"error": {
                "message": f"Invalid value: {body.get('voice')!r}. Supported values are: "
                           f"{sorted(self.voices)}.", "type": "invalid_request_error",
                "param": "voice", "code": "invalid_value"}}, status=400)
        return step(body)


def answer(code: int, body: bytes, content_type: str) -> Step:
    """A scripted answer: this status, body and Content-Type, whatever was asked."""
    return lambda _: web.Response(status=code, body=body,
                                  headers={"Content-Type": content_type})


def speech_config(a: Speaker, b: Speaker, *, more: str = "") -> str:
    return f"""
{providers(a=a.url, b=b.url)}
[models."a/tts"]
provider = "a"
name = "tts-1"
capabilities = ["speech"]
max_retries = 0
[models."b/kokoro"]
provider = "b"
name = "kokoro"
capabilities = ["speech"]
max_retries = 0
voices = {{ alloy = "af_bella", "*" = "af_heart" }}
[models."s/chat"]
provider = "s"
[providers.s]
kind = "simulated"
[routing]
primary = "s/chat"
retry_after_max = 0
when_all_unavailable = "fail"
[probes]
kind = "none"
{more}
"""


@pytest.fixture
async def pair(start_daemon: Any) -> Any:
    a, b = await Speaker().start(), await Speaker().start()
    d = await start_daemon(speech_config(a, b))
    yield a, b, d
    await a.close()
    await b.close()


async def speak(d: Any, **body: Any) -> Any:
    return await d.http.post("/v1/audio/speech", json={"model": "a/tts", "input": "hello",
                                                       "voice": "alloy", **body})


# ------------------------------------------------------------------ speech: what is audio


async def test_html_from_a_proxy_in_a_200_is_no_audio(pair: Any) -> None:
    """A captive portal or a misrouted reverse proxy answers 200 with an HTML page: that is
    no audio for the client's player, and the next speech model should speak instead."""
    a, b, d = pair
    a.script = [answer(200, b"<!DOCTYPE html><html><body>Sign in</body></html>",
                       "text/html; charset=utf-8")]
    resp = await speak(d)
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == "b/kokoro"
    assert resp.content == MP3 + b"af_bella"


async def test_a_json_200_without_an_error_key_is_no_audio(pair: Any) -> None:
    """FastAPI servers (Kokoro-FastAPI, openedai-speech) speak of failures as {"detail": ...};
    any JSON object in a 200 is no audio, whatever its keys."""
    a, b, d = pair
    a.script = [answer(200, b'{"detail": "voice model is still loading"}', "application/json")]
    resp = await speak(d)
    assert resp.headers["x-failoverd-model"] == "b/kokoro"
    assert resp.content == MP3 + b"af_bella"


async def test_an_error_inside_a_200_after_whitespace_is_no_audio(pair: Any) -> None:
    a, b, d = pair
    a.script = [answer(200, b'\n{"error": {"message": "engine crashed"}}', "application/json")]
    resp = await speak(d)
    assert resp.headers["x-failoverd-model"] == "b/kokoro"


# ------------------------------------------------------------------ speech: voices, refusals


async def test_a_voice_object_is_mapped_as_a_voice_name_is(pair: Any) -> None:
    """README: `voice` is a name or an object with its id, and each upstream gets the
    request "with its own model name and voice": a fallback with a voices table must not be
    sent the client's OpenAI voice object untouched (Kokoro has no alloy)."""
    a, b, d = pair
    a.script = [answer(429, b'{"error": {"message": "Rate limit reached"}}', "application/json")]
    resp = await speak(d, voice={"id": "alloy"})
    assert resp.headers["x-failoverd-model"] == "b/kokoro"
    assert b.bodies[-1]["voice"] in ("af_bella", {"id": "af_bella"})


async def test_response_format_of_the_wrong_type_is_the_clients_400(pair: Any) -> None:
    a, _, d = pair
    for fmt in (["mp3"], {"type": "mp3"}):
        resp = await speak(d, response_format=fmt)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == "response_format"
    assert a.bodies == []


async def test_a_voice_without_a_name_or_a_string_id_is_refused(pair: Any) -> None:
    a, _, d = pair
    for voice in ({}, {"id": 3}, {"name": "alloy"}, ""):
        resp = await speak(d, voice=voice)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "voice", voice
    assert a.bodies == []


async def test_a_413_from_one_speech_model_leaves_the_others_to_try(pair: Any) -> None:
    """OpenAI's TTS takes 4096 characters, a local server more: one model's 413 (input too
    long for it) is no reason to skip every other speech model, which declare no context
    window (the transcription adapter learnt this; speech calls the chat classifier)."""
    a, b, d = pair
    a.script = [answer(413, b'{"error": {"message": "Request Entity Too Large"}}',
                       "application/json")]
    resp = await speak(d, input="word " * 2000)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "b/kokoro"
    assert await breaker(d, "a/tts") == ("closed", 0)


async def test_input_too_long_for_one_model_in_a_400_leaves_the_others_to_try(pair: Any) -> None:
    """OpenAI's 400 for a TTS input over 4096 characters (string_above_max_length) is
    classified context_overflow: with speech models declaring no window it must not skip
    the model that takes longer input."""
    a, b, d = pair
    a.script = [answer(400, orjson.dumps({"error": {
        "message": "string too long. Expected a string with maximum length 4096, but got a "
                   "string with length 9000 instead.", "type": "invalid_request_error",
        "param": "input", "code": "string_above_max_length"}}), "application/json")]
    resp = await speak(d, input="x" * 9000)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "b/kokoro"


async def test_one_clients_bad_requests_open_no_breaker(start_daemon: Any) -> None:
    """An unknown voice is one client's mistake: passed on, never failed over, and however
    often it comes, the model stays closed for everyone else."""
    a, b = await Speaker(voices={"alloy"}).start(), await Speaker().start()
    try:
        d = await start_daemon(speech_config(a, b, more="[breaker]\nfailure_threshold = 2\n"))
        for _ in range(4):
            resp = await speak(d, voice="no-such-voice")
            assert resp.status_code == 400
            assert resp.json()["error"]["param"] == "voice"
        assert b.bodies == []
        assert await breaker(d, "a/tts") == ("closed", 0)
        assert (await speak(d)).headers["x-failoverd-model"] == "a/tts"
    finally:
        await a.close()
        await b.close()


async def test_instructions_and_speed_reach_the_upstream_unchanged(pair: Any) -> None:
    a, _, d = pair
    resp = await speak(d, instructions="Speak like a lighthouse keeper.", speed=0.25,
                       response_format="flac")
    assert resp.status_code == 200 and resp.headers["content-type"] == "audio/flac"
    assert a.bodies == [{"model": "tts-1", "input": "hello", "voice": "alloy",
                         "instructions": "Speak like a lighthouse keeper.", "speed": 0.25,
                         "response_format": "flac"}]


async def test_a_long_recording_arrives_whole(pair: Any) -> None:
    """Ten minutes of 16 kHz PCM (19 MB): the audio is passed on byte for byte (streamed as
    it comes: chunked, with no Content-Length, see tests/test_speech_stream.py)."""
    a, _, d = pair
    pcm = bytes(range(256)) * (19_200_000 // 256)
    a.script = [answer(200, pcm, "audio/pcm")]
    resp = await speak(d, response_format="pcm")
    assert resp.status_code == 200 and resp.headers["content-type"] == "audio/pcm"
    assert resp.headers["transfer-encoding"] == "chunked" and resp.content == pcm


async def test_a_speech_server_without_a_models_listing_answers_its_probe(
        start_daemon: Any) -> None:
    a, b = await Speaker().start(), await Speaker(listing=True).start()
    try:
        d = await start_daemon(speech_config(a, b))
        for model in ("a/tts", "b/kokoro"):
            resp = await d.http.post(f"/v1/models/{model}/probe", json={"kind": "chat"})
            assert resp.status_code == 200, resp.text
            assert (await status(d))["models"][model]["last_probe"]["ok"] is True
        assert a.bodies == [] and b.bodies == []  # a probe speaks no audio
    finally:
        await a.close()
        await b.close()


async def test_health_reports_the_speech_kind_apart(pair: Any) -> None:
    _, _, d = pair
    await d.http.post("/v1/models/a/tts/open", json={})
    await d.http.post("/v1/models/b/kokoro/open", json={})
    body = (await d.http.get("/v1/health")).json()
    assert (body["status"], body["chat"], body["speech"]) == ("degraded", "ok", "down")


async def test_the_simulated_voices_formats_leave_the_request_to_the_others(
        start_daemon: Any) -> None:
    """The simulated voice speaks wav and pcm only; a client asking for mp3 (the default)
    made no mistake: another speech model speaks mp3, so the refusal is this model's
    incapability (fail over), not the client's 400."""
    cloud = await Speaker().start()
    try:
        d = await start_daemon(f"""
[providers.demo]
kind = "simulated"
[providers.cloud]
kind = "openai"
base_url = "{cloud.url}"
[models."demo/voice"]
provider = "demo"
capabilities = ["speech"]
[models."cloud/tts"]
provider = "cloud"
name = "tts-1"
capabilities = ["speech"]
[probes]
kind = "none"
""")
        resp = await d.http.post("/v1/audio/speech", json={
            "model": "default", "input": "hello", "voice": "alloy"})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-failoverd-model"] == "cloud/tts"
        assert resp.headers["content-type"] == "audio/mpeg" and resp.content == MP3 + b"alloy"
    finally:
        await cloud.close()


# ------------------------------------------------------------------ max_tpm


def test_the_minutes_sum_leaves_by_whole_seconds() -> None:
    """SlidingSum buckets by the second: a bucket counts until its second is 60 seconds
    old, and wait_below says exactly when enough has left (at the bucket edges too)."""
    window = SlidingSum(60.0)
    window.add(10.0, 30)  # the bucket of second 10, from its first instant ...
    window.add(10.999, 20)  # ... to its last
    window.add(25.5, 40)
    assert window.wait_below(91, 30.0) == 0.0  # 90 < 91
    assert window.wait_below(90, 30.0) == 40.0  # at the limit is past it: second 10 leaves at 70
    assert window.wait_below(41, 69.999) == pytest.approx(0.001)
    assert window.total == 90  # still counted in its last instant
    assert window.wait_below(41, 70.0) == 0.0 and window.total == 40
    # two buckets must leave before the sum is under the limit: the later one decides
    window.add(71.0, 5)
    assert window.wait_below(5, 72.0) == 60.0 - (72.0 - 71.0)
    assert window.wait_below(6, 72.0) == 85.0 - 72.0
    assert window.wait_below(1, 131.0) == 0.0 and window.total == 0


def tpm_config(**urls: str) -> str:
    """One model of each upstream kind, each with a max_tpm too large to reach."""
    return f"""
[providers.oai]
kind = "openai"
base_url = "{urls['oai']}"
stream_usage = true
{providers(ant=("anthropic", urls['ant']), gem=("gemini", urls['gem']))}
api_key_env = "GEMINI_KEY"
[providers.oll]
kind = "ollama"
base_url = "{urls['oll']}"
[models."oai/gpt"]
provider = "oai"
max_tpm = 1000000
[models."oai/embed"]
provider = "oai"
capabilities = ["embeddings"]
max_tpm = 1000000
[models."ant/claude"]
provider = "ant"
max_tpm = 1000000
[models."gem/gemini-2.5-flash"]
provider = "gem"
max_tpm = 1000000
[models."oll/qwen"]
provider = "oll"
max_tpm = 1000000
[routing]
primary = "oai/gpt"
when_all_unavailable = "fail"
[probes]
kind = "none"
"""


async def test_every_upstream_kinds_usage_counts_against_its_minute(
        start_daemon: Any, fake_openai: Any, fake_anthropic: Any, fake_gemini: Any,
        fake_ollama: Any) -> None:
    """Anthropic's, Gemini's and Ollama's usage as translated, plain and streamed (OpenAI's
    streams with stream_usage, for clients that did not ask), and embeddings: each model's
    minute holds what its answers reported (prompt + completion), as /v1/status's tokens do."""
    urls = {"oai": (await fake_openai()).url, "ant": (await fake_anthropic()).url,
            "gem": (await fake_gemini()).url, "oll": (await fake_ollama()).url}
    d = await start_daemon(tpm_config(**urls), env={"GEMINI_KEY": "k"}, clock=ManualClock())
    chat = ("oai/gpt", "ant/claude", "gem/gemini-2.5-flash", "oll/qwen")
    for model in chat:
        resp = await d.http.post("/v1/chat/completions",
                                 json={"model": model, "messages": HELLO})
        assert resp.status_code == 200, resp.text
        async with d.http.stream("POST", "/v1/chat/completions", json={
                "model": model, "messages": HELLO, "stream": True}) as streamed:
            await streamed.aread()
    resp = await d.http.post("/v1/messages", json={
        "model": "ant/claude", "max_tokens": 50, "messages": HELLO})
    assert resp.status_code == 200, resp.text
    resp = await d.http.post("/v1/embeddings", json={"model": "oai/embed",
                                                     "input": "a few words to embed"})
    assert resp.status_code == 200, resp.text
    models = (await status(d))["models"]
    for model in (*chat, "oai/embed"):
        entry = models[model]
        used = entry["tokens"].get("prompt", 0) + entry["tokens"].get("completion", 0)
        assert used > 0 and entry["tokens_last_minute"] == used, (model, entry)


def test_max_tpm_on_a_speech_model_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.loads('[providers.s]\nkind = "simulated"\n[models."s/voice"]\n'
                         'provider = "s"\ncapabilities = ["speech"]\nmax_tpm = 1000\n', env={})
    assert any(p.startswith('models."s/voice".max_tpm') for p in info.value.problems)


TPM = RPM.replace("max_rpm = 2", "max_tpm = 30")


async def use_up(d: Any, clock: ManualClock) -> int:
    used = 0
    while used < 30:
        resp = await chat(d)
        assert resp.headers["x-failoverd-model"] == "free/flash"
        used += resp.json()["usage"]["total_tokens"]
        clock.advance(1)
    return used


async def test_a_reload_that_changes_max_tpm_keeps_the_minute(start_daemon: Any,
                                                              short_dir: Path) -> None:
    clock = ManualClock()
    d = await start_daemon(TPM, clock=clock)
    used = await use_up(d, clock)
    path = short_dir / "d.toml"
    path.write_text(path.read_text().replace("max_tpm = 30", f"max_tpm = {used + 1}"))
    assert (await d.http.post("/v1/reload")).json()["ok"] is True
    assert (await status(d))["models"]["free/flash"]["tokens_last_minute"] == used
    assert (await chat(d)).headers["x-failoverd-model"] == "free/flash"  # under the new limit
    assert (await chat(d)).headers["x-failoverd-model"] == "paid/pro"
    # lowered below what the minute holds: skipped at once
    path.write_text(path.read_text().replace(f"max_tpm = {used + 1}", "max_tpm = 5"))
    assert (await d.http.post("/v1/reload")).json()["ok"] is True
    assert (await chat(d)).headers["x-failoverd-model"] == "paid/pro"
    # removed: no limit, nothing kept
    path.write_text(path.read_text().replace("max_tpm = 5\n", ""))
    assert (await d.http.post("/v1/reload")).json()["ok"] is True
    assert "tokens_last_minute" not in (await status(d))["models"]["free/flash"]
    assert (await chat(d)).headers["x-failoverd-model"] == "free/flash"


async def test_the_queue_waits_for_the_minute_to_free_tokens(start_daemon: Any) -> None:
    """when_all_unavailable = "queue": a request for a model past its max_tpm is answered at
    once while the minute frees its tokens later than the queue could wait (Retry-After says
    when); within the queue's reach it waits, and is served by the model once the minute's
    usage has aged out."""
    clock = ManualClock()
    d = await start_daemon(TPM.replace('when_all_unavailable = "fail"',
                                       'when_all_unavailable = "queue"\nqueue_timeout = 2'),
                           clock=clock)
    await use_up(d, clock)
    resp = await chat(d, **{"x-failoverd-no-fallback": "1"})
    assert resp.status_code == 503
    wait = int(resp.headers["retry-after"])
    assert 2 < wait <= 60
    clock.advance(wait - 1)  # now within the queue's 2 s
    pending = asyncio.create_task(chat(d, **{"x-failoverd-no-fallback": "1"}))
    await until(lambda: d.sup.service.inflight == 1)  # in, and waiting in the queue
    await asyncio.sleep(0.05)
    assert not pending.done()
    # the waiting request sleeps (in real time) no longer than the known wait; the minute's
    # tokens are gone by then on the simulated clock
    clock.advance(2)
    resp = await asyncio.wait_for(pending, 10)
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "free/flash"


# ------------------------------------------------------------------ status and failoverctl


def priced(n: int, *, cost: str = "cost = { input = 1.0, output = 2.0 }") -> str:
    """n simulated models, the even ones with `cost`."""
    out = '[providers.sim]\nkind = "simulated"\n'
    for i in range(n):
        out += f'[models."sim/model-{i:02d}"]\nprovider = "sim"\n'
        if i % 2 == 0:
            out += cost + "\n"
    return out + '[routing]\nprimary = "sim/model-00"\n[probes]\nkind = "none"\n'


async def ask_model(d: Any, model: str) -> dict[str, Any]:
    resp = await d.http.post("/v1/chat/completions", json={"model": model, "messages": HELLO})
    assert resp.status_code == 200, resp.text
    usage: dict[str, Any] = resp.json()["usage"]
    return usage


async def test_every_model_has_the_same_status_fields(start_daemon: Any) -> None:
    """A monitor reads models.<id>.cost_usd and the tokens of each kind whatever the model
    has done: they are there before any answer too; cost_usd is a number for a model with a
    cost (0.0 before it served), null for one without (no price is no $0)."""
    d = await start_daemon(priced(3))
    await ask_model(d, "sim/model-00")
    models = (await status(d))["models"]
    for entry in models.values():
        assert isinstance(entry["tokens"], dict)
        assert all(type(v) is int and v >= 0 for v in entry["tokens"].values())
    assert isinstance(models["sim/model-00"]["cost_usd"], float)
    assert models["sim/model-01"]["cost_usd"] is None
    assert models["sim/model-02"]["cost_usd"] == 0.0


async def test_tokens_always_carry_the_four_kinds(start_daemon: Any) -> None:
    d = await start_daemon(priced(2))
    usage = await ask_model(d, "sim/model-00")
    models = (await status(d))["models"]
    assert models["sim/model-00"]["tokens"] == {
        "prompt": usage["prompt_tokens"], "completion": usage["completion_tokens"],
        "cache_read": 0, "cache_write": 0}
    assert models["sim/model-01"]["tokens"] == {
        "prompt": 0, "completion": 0, "cache_read": 0, "cache_write": 0}


async def test_a_cheap_priced_model_that_served_shows_its_cost(start_daemon: Any) -> None:
    d = await start_daemon(priced(1, cost="cost = { input = 0.02, output = 0.02 }"))
    usage = await ask_model(d, "sim/model-00")
    spent = usage["total_tokens"] * 0.02 / 1e6  # a few millionths of a cent
    entry = (await status(d))["models"]["sim/model-00"]
    assert entry["cost_usd"] == pytest.approx(spent, rel=1e-3)
    code, out, _ = await failoverctl(d.socket, "status")
    assert code == 0
    assert next(line for line in out.splitlines() if line.startswith("MODEL")).endswith("COST")
    row = next(line for line in out.splitlines() if line.startswith("sim/model-00"))
    assert row.split()[-1] != "$0.0000"  # some precision that shows what it cost


async def test_failoverctl_status_lines_up_many_models(start_daemon: Any) -> None:
    d = await start_daemon(priced(24))
    spent = 0.0
    for i in (0, 2, 3, 22):
        usage = await ask_model(d, f"sim/model-{i:02d}")
        if i % 2 == 0:
            spent += (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
    code, out, _ = await failoverctl(d.socket, "status")
    assert code == 0, out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("MODEL"))
    rows = [line for line in lines if line.startswith("sim/model-")]
    assert len(rows) == 24
    column = header.index("COST")
    # the cells line up under their header: a cost, or "-" for a model without a price
    assert all(row[column] == ("$" if int(row[10:12]) % 2 == 0 else "-") for row in rows)
    totals = next(line for line in lines if line.startswith("tokens since start:"))
    assert totals.endswith("; cost " + _usd(spent))
    code, out, _ = await failoverctl(d.socket, "status", "--json")
    assert code == 0 and orjson.loads(out)["models"]["sim/model-03"]["cost_usd"] is None


async def test_the_totals_since_the_start_survive_a_reload(start_daemon: Any,
                                                           short_dir: Path) -> None:
    d = await start_daemon(priced(3))
    for model in ("sim/model-00", "sim/model-02"):
        await ask_model(d, model)
    code, before, _ = await failoverctl(d.socket, "status")
    totals = next(line for line in before.splitlines() if line.startswith("tokens since"))
    path = short_dir / "d.toml"
    text = path.read_text()
    path.write_text(text[:text.index('[models."sim/model-02"]')]
                    + text[text.index("[routing]"):])
    assert (await d.http.post("/v1/reload")).json()["ok"] is True
    code, after, _ = await failoverctl(d.socket, "status")
    assert totals in after.splitlines()
