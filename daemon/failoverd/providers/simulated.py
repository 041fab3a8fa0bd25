"""The `simulated` provider kind: deterministic local answers, no network.

For the demo and for trying a configuration without API keys. `simulate_latency` delays each
answer; `simulate_failure` makes every call fail with that reason, so a demo chain shows a
failover.

Answers have OpenAI's wire format, as an OpenAI-compatible upstream's would: ``n`` choices
(each its own deterministic text; more than :data:`MAX_N` is a 400, as OpenAI's), streamed
choice by choice, and a last choices-less usage chunk when ``stream_options.include_usage``
asks for one.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
import time
import wave
from collections.abc import AsyncIterator
from typing import Any

from failoverd.config import ModelConfig, ProbeKind, ProviderConfig
from failoverd.errors import RequestError, UpstreamError
from failoverd.failures import FailureReason
from failoverd.providers.base import AttemptLimits, Chunk, Completion
from failoverd.translate import audio, completions, embeddings, inputs, speech

MAX_N = 128  # OpenAI's own limit on n
SIMULATED_DIMENSIONS = 64  # an embedding's length unless the request asks for `dimensions`
MAX_DIMENSIONS = 4096
MAX_VALUES = 1 << 20  # inputs x dimensions of one answer
SPOKEN_WORD = 2 * 16000 // 3  # bytes of speech a chunk: a word's third of a second

_STATUS = {
    FailureReason.RATE_LIMIT: 429, FailureReason.OVERLOADED: 529,
    FailureReason.SERVER_ERROR: 500, FailureReason.AUTH: 401, FailureReason.BILLING: 402,
    FailureReason.NOT_FOUND: 404, FailureReason.CONTEXT_OVERFLOW: 400,
    FailureReason.CONTENT_FILTER: 400, FailureReason.BAD_REQUEST: 400,
}


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or ()):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content
                                if isinstance(p, dict) and p.get("type") == "text")
    return ""


class SimulatedProvider:
    """Answers every request locally and deterministically."""

    def __init__(self, config: ProviderConfig, client: Any = None) -> None:
        self.config = config

    async def _behave(self, model: ModelConfig) -> None:
        if self.config.simulate_latency:
            await asyncio.sleep(self.config.simulate_latency)
        reason = self.config.simulate_failure
        if reason is not None:
            raise UpstreamError(
                reason, f"simulated {reason} from provider {self.config.name}",
                status=_STATUS.get(reason), provider=self.config.name, model=model.id,
                retry_after=1.0 if reason is FailureReason.RATE_LIMIT else None,
            )

    def _choices(self, body: dict[str, Any], model: ModelConfig) -> int:
        """How many choices the request asks for; more than OpenAI allows is its 400."""
        n = body.get("n")
        if n is None:
            return 1
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
            raise UpstreamError(
                FailureReason.BAD_REQUEST,
                f"Invalid 'n': expected an integer from 1 to {MAX_N}, got {n!r}.",
                status=400, provider=self.config.name, model=model.id)
        return n

    @staticmethod
    def _answers(body: dict[str, Any], model: ModelConfig, n: int) -> tuple[list[str], str]:
        """``n`` texts (the first one as for n = 1) and the completion id."""
        said = _last_user_text(body)
        words = len(said.split())
        digests = [hashlib.sha256((f"{model.id}\0{said}" + (f"\0{i}" if i else ""))
                                  .encode()).hexdigest()[:12] for i in range(n)]
        texts = [f"[{model.id}] simulated answer {digest}: your message had {words} "
                 f"word{'s' if words != 1 else ''}." for digest in digests]
        return texts, f"chatcmpl-sim-{digests[0]}"

    @staticmethod
    def _usage(body: dict[str, Any], texts: list[str]) -> dict[str, int]:
        prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages") or ()
                     if isinstance(m, dict)) // 4 + 1
        completion = sum(len(text) // 4 + 1 for text in texts)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    async def complete(self, body: dict[str, Any], model: ModelConfig,
                       limits: AttemptLimits) -> Completion:
        n = self._choices(body, model)
        await self._behave(model)
        texts, cid = self._answers(body, model, n)
        return Completion({
            "id": cid, "object": "chat.completion", "created": int(time.time()),
            "model": model.name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"} for i, text in enumerate(texts)],
            "usage": self._usage(body, texts),
        })

    async def stream(self, body: dict[str, Any], model: ModelConfig,
                     limits: AttemptLimits) -> AsyncIterator[Chunk]:
        n = self._choices(body, model)
        await self._behave(model)
        texts, cid = self._answers(body, model, n)
        created = int(time.time())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> Chunk:
            return Chunk.of({"id": cid, "object": "chat.completion.chunk", "created": created,
                             "model": model.name, "choices": choices, **extra})

        for index, text in enumerate(texts):  # choice after choice, each with its own index
            yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                          "finish_reason": None}])
            for i, word in enumerate(text.split(" ")):
                yield chunk([{"index": index, "delta": {"content": word if i == 0 else " " + word},
                              "finish_reason": None}])
            yield chunk([{"index": index, "delta": {}, "finish_reason": "stop"}])
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            yield chunk([], usage=self._usage(body, texts))

    async def embed(self, body: dict[str, Any], model: ModelConfig,
                    limits: AttemptLimits) -> Completion:
        await self._behave(model)
        items = inputs.items(body["input"])
        dimensions = body.get("dimensions") or SIMULATED_DIMENSIONS
        if dimensions > MAX_DIMENSIONS or len(items) * dimensions > MAX_VALUES:
            # the vectors are made on the event loop: bounded, as a real server bounds them
            raise UpstreamError(FailureReason.BAD_REQUEST,
                                f"Invalid 'dimensions': at most {MAX_DIMENSIONS}, and at most "
                                f"{MAX_VALUES} values in all, got {len(items)} x {dimensions}.",
                                status=400, provider=self.config.name, model=model.id)
        vectors = [_vector(f"{model.id}\0{item}", dimensions) for item in items]
        tokens = sum(len(str(item)) // 4 + 1 for item in items)
        return Completion(embeddings.answer(vectors, body, model.name, tokens))

    def _texts(self, body: dict[str, Any], model: ModelConfig) -> tuple[list[str], str]:
        """A legacy completion's answers (one per prompt and `n`): deterministic words, at
        most `max_tokens` of them (OpenAI's default 16), and the completion id."""
        n = self._choices(body, model)
        value = body["prompt"]
        prompts = inputs.items(value)
        limit = completions.max_tokens(body)
        texts = []
        for i, prompt in enumerate(prompts * n):
            digest = hashlib.sha256(f"{model.id}\0{prompt}\0{body.get('suffix') or ''}\0{i}"
                                    .encode()).hexdigest()
            words = [f" w{digest[k:k + 4]}" for k in range(0, 48, 4)]
            texts.append("".join(words[:limit]))
        return texts, f"cmpl-sim-{hashlib.sha256(str(value).encode()).hexdigest()[:12]}"

    @staticmethod
    def _finish(text: str, body: dict[str, Any]) -> str:
        return "length" if text.count(" ") >= completions.max_tokens(body) else "stop"

    async def complete_text(self, body: dict[str, Any], model: ModelConfig,
                            limits: AttemptLimits) -> Completion:
        texts, cid = self._texts(body, model)
        await self._behave(model)
        return Completion({
            "id": cid, "object": "text_completion", "created": int(time.time()),
            "model": model.name,
            "choices": [{"text": t, "index": i, "logprobs": None,
                         "finish_reason": self._finish(t, body)} for i, t in enumerate(texts)],
            "usage": _text_usage(body, texts)})

    async def stream_text(self, body: dict[str, Any], model: ModelConfig,
                          limits: AttemptLimits) -> AsyncIterator[Chunk]:
        texts, cid = self._texts(body, model)
        await self._behave(model)
        created = int(time.time())
        for index, text in enumerate(texts):
            for word in text.split(" ")[1:]:
                yield Chunk.of({"id": cid, "object": "text_completion", "created": created,
                                "model": model.name, "choices": [{
                                    "text": " " + word, "index": index, "logprobs": None,
                                    "finish_reason": None}]})
            yield Chunk.of({"id": cid, "object": "text_completion", "created": created,
                            "model": model.name, "choices": [{
                                "text": "", "index": index, "logprobs": None,
                                "finish_reason": self._finish(text, body)}]})
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            yield Chunk.of(completions.chunk("", None, model.name, cid, created,
                                             _text_usage(body, texts)))

    async def transcribe(self, body: dict[str, Any], model: ModelConfig,
                         limits: AttemptLimits) -> Completion:
        form: audio.Form = body["form"]
        await self._behave(model)
        size = form.audio_bytes
        text = _heard(body, model)
        fmt = form.response_format
        if fmt == "json":
            return Completion({"text": text})
        if fmt in ("verbose_json", "diarized_json"):
            seconds = round(size / 32000, 2)  # 16 kHz, 16-bit mono
            return Completion({"task": "translate" if body["task"] == "translations"
                               else "transcribe",
                               "language": "english", "duration": seconds, "text": text,
                               "segments": [{"id": 0, "start": 0.0, "end": seconds,
                                             "text": text}]})
        if fmt == "srt":
            raw = f"1\n00:00:00,000 --> 00:00:01,000\n{text}\n\n"
        elif fmt == "vtt":
            raw = f"WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n{text}\n\n"
        else:
            raw = text
        return Completion({"text": text}, raw.encode())

    async def stream_transcript(self, body: dict[str, Any], model: ModelConfig,
                                limits: AttemptLimits) -> AsyncIterator[Chunk]:
        """The transcript as OpenAI's events, a word a delta, then the done event; its usage
        10 tokens a second of audio (16 kHz, 16-bit mono) in, a token a word out."""
        await self._behave(model)
        text = _heard(body, model)
        words = text.split(" ")
        for i, word in enumerate(words):
            yield Chunk(audio.delta(word if i == 0 else " " + word))
        seconds = body["form"].audio_bytes / 32000
        audio_tokens = math.ceil(seconds * 10)
        yield Chunk(audio.done(text, {
            "type": "tokens", "input_tokens": audio_tokens, "output_tokens": len(words),
            "total_tokens": audio_tokens + len(words),
            "input_token_details": {"audio_tokens": audio_tokens, "text_tokens": 0}}))

    async def speak(self, body: dict[str, Any], model: ModelConfig,
                    limits: AttemptLimits) -> AsyncIterator[Chunk]:
        """Silence as long as the text would take to say (a word a third of a second), as
        WAV or raw PCM (16 kHz, 16-bit mono): real audio a player takes, for demos. Streamed
        a word's time of it at a time; with stream_format "sse", as OpenAI's events, the
        usage of the last one the input at four characters a token and 50 audio tokens a
        second."""
        fmt = body.get("response_format", "mp3")
        if fmt not in ("wav", "pcm"):
            # another speech model may speak it: incapable, the chain goes on
            raise RequestError(f"the simulated voice speaks wav or pcm only, not {fmt}",
                               param="response_format")
        await self._behave(model)
        words = min(len(str(body["input"]).split()), 600)
        samples = b"\0\0" * (16000 * (words + 1) // 3)
        audio = samples if fmt == "pcm" else _wav(samples)
        events = speech.wants_events(body)
        for start in range(0, len(audio), SPOKEN_WORD):
            piece = audio[start:start + SPOKEN_WORD]
            yield Chunk(speech.delta(piece) if events else piece)
        if events:
            yield Chunk(speech.done(len(str(body["input"])) // 4 + 1, len(samples) // 640))

    def default_output(self, model: ModelConfig) -> int | None:
        return None  # the upstream's own limit applies

    async def probe(self, model: ModelConfig, kind: ProbeKind, timeout: float,
                    max_tokens: int) -> None:
        if kind != "none":
            await self._behave(model)


def _heard(body: dict[str, Any], model: ModelConfig) -> str:
    """The simulated transcript (or translation) of a form's audio."""
    what = "translation" if body["task"] == "translations" else "transcript"
    return f"[{model.id}] simulated {what} of {body['form'].audio_bytes} bytes of audio."


def _wav(samples: bytes) -> bytes:
    """16 kHz 16-bit mono `samples` as a WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(samples)
    return out.getvalue()


def _text_usage(body: dict[str, Any], texts: list[str]) -> dict[str, int]:
    """A text completion's usage: the prompt at four characters a token, a word each."""
    prompt = len(str(body["prompt"])) // 4 + 1
    completion = sum(t.count(" ") for t in texts)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _vector(seed: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for `seed`: the same text always embeds the same way."""
    raw = b""
    block = 0
    while len(raw) < dimensions * 2:
        raw += hashlib.sha256(f"{seed}\0{block}".encode()).digest()
        block += 1
    values = [int.from_bytes(raw[2 * i:2 * i + 2], "little") / 32767.5 - 1.0
              for i in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]
