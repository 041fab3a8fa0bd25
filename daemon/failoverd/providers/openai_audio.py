"""The audio endpoints of OpenAI-compatible servers: transcriptions and translations
(`/audio/transcriptions`, `/audio/translations`, streamed as OpenAI's transcript events when
asked) and speech (`/audio/speech`: audio streamed as it comes, or OpenAI's speech events).

Part of the openai adapter (providers/openai.py), which owns the connection, headers and error
reading these share with its chat calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from typing import Any, Protocol

import orjson

from failoverd.config import ModelConfig, ProviderConfig
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import Requester, Response
from failoverd.providers.base import AttemptLimits, Chunk, Completion
from failoverd.providers.http import (
    MAX_ERROR_BODY,
    MAX_EVENT,
    Failure,
    chunks,
    finish_stream,
    json_or_none,
    open_stream,
    read_limited,
    sse_events,
    upstream_error,
)
from failoverd.translate import audio, speech

__all__ = ["OpenAIAudio"]


class _Adapter(Protocol):
    """What the audio calls share with the openai adapter."""

    config: ProviderConfig
    client: Requester
    headers: dict[str, str]
    audio_url: str

    async def failure(self, resp: Response, model: str) -> UpstreamError: ...

    def body_error(self, raw: bytes, parsed: Any, model: str,
                   otherwise: str) -> UpstreamError: ...

    def chunk_error(self, payload: bytes, model: str) -> UpstreamError | None: ...

    def call(self, url: str, data: bytes, limits: AttemptLimits, model_id: str, *,
             failure: Failure | None = None,
             headers: dict[str, str] | None = None) -> Coroutine[Any, Any, bytes]: ...


class OpenAIAudio:
    """Transcriptions and speech of one openai-kind provider."""

    def __init__(self, adapter: _Adapter) -> None:
        self._p = adapter

    async def _audio_failure(self, resp: Response, model: str) -> UpstreamError:
        """An audio call's failure: a file too large for this server (OpenAI's 25 MB 413,
        Groq's) is no context window, and another transcription model may take it."""
        error = await self._p.failure(resp, model)
        if resp.status == 413 or error.reason is FailureReason.CONTEXT_OVERFLOW:
            error.reason = FailureReason.INCAPABLE
        return error

    async def transcribe(self, body: dict[str, Any], model: ModelConfig,
                         limits: AttemptLimits) -> Completion:
        form: audio.Form = body["form"]
        data, content_type = form.encode(model.name)
        raw = await self._p.call(f"{self._p.audio_url}/{body['task']}", data, limits, model.id,
                               failure=self._audio_failure,
                               headers={**self._p.headers, "Content-Type": content_type,
                                        "Accept": "*/*"})
        return self._transcript(raw, form.response_format, model.id)

    def _transcript(self, raw: bytes, fmt: str, model: str) -> Completion:
        """A 200's transcript in the response_format `fmt`, or the failure it is."""
        parsed = json_or_none(raw) if raw[:1] == b"{" else None
        if isinstance(parsed, dict) and "error" in parsed:
            # an error inside a 200 (whisper.cpp's server answers so), whatever the format
            error = self._p.body_error(raw, parsed, model, "")
            if any(m in error.message.lower() for m in audio.UNREADABLE_MARKERS):
                # this server cannot read the file's format; another may: not its fault
                error.reason = FailureReason.INCAPABLE
            raise error
        if audio.CONTENT_TYPES[fmt] != "application/json":
            return Completion({"text": raw.decode("utf-8", "replace")}, raw)
        if not isinstance(parsed, dict) or not isinstance(parsed.get("text"), str):
            raise self._p.body_error(raw, parsed, model, "200 without a transcript")
        return Completion(parsed, raw)

    async def _transcript_failure(self, resp: Response, model: str) -> UpstreamError:
        """A streamed transcription's failure: as an audio call's, and a refusal of the
        `stream` field (a model or server that cannot stream transcriptions) is incapable:
        another model may stream as asked."""
        error = await self._audio_failure(resp, model)
        if resp.status in (400, 422) and audio.refuses_stream(error.body or b""):
            error.reason = FailureReason.INCAPABLE
        return error

    async def stream_transcript(self, body: dict[str, Any], model: ModelConfig,
                                limits: AttemptLimits) -> AsyncIterator[Chunk]:
        """OpenAI's transcription events, each passed on as it came, up to
        transcript.text.done; an error event raised as a failure. A server that ignores
        `stream` (whisper-1 does, as its documentation says) answers the whole transcript:
        it goes on as one delta and the done event, the stream the client asked for."""
        form: audio.Form = body["form"]
        data, content_type = form.encode(model.name)
        first_deadline = asyncio.get_running_loop().time() + limits.first_token
        resp = await open_stream(
            self._p.client, f"{self._p.audio_url}/transcriptions", data=data,
            headers={**self._p.headers, "Content-Type": content_type,
                     "Accept": speech.EVENT_STREAM},
            first_deadline=first_deadline, connect=limits.connect,
            failure=self._transcript_failure, provider=self._p.config.name, model=model.id)
        clean = False
        try:
            media = speech.media_type(resp.headers.get("Content-Type", ""))
            if media == speech.EVENT_STREAM:
                reader = self._events(resp, model.id, first_deadline, limits.idle,
                                      audio.DONE, MAX_EVENT)
            elif media in ("application/json", "text/plain"):
                reader = self._whole_transcript(resp, form, model.id, first_deadline,
                                                limits.idle)
            else:
                raise self._speech_error(await read_limited(resp), model.id,
                                         f"200 with {media or 'no content type'} instead of "
                                         "an event stream")
            async with contextlib.aclosing(reader) as pieces:
                async for piece in pieces:
                    yield Chunk(piece)
            clean = True
        finally:
            finish_stream(resp, clean)

    async def _events(self, resp: Response, model: str, first_deadline: float, idle: float,
                      done: str, max_event: int) -> AsyncGenerator[bytes, None]:
        """A 200's server-sent events, each framed again as it came, up to the event of type
        `done`; an error event raised as a failure, and so is a stream that ends before it
        (at the end of its body or at a `[DONE]`)."""
        async for name, payload in sse_events(resp, first_deadline, idle, self._p.config.name,
                                              model, max_event=max_event):
            if payload == b"[DONE]":
                break  # before the done event: the answer is as unfinished as a cut one
            if b'"error"' in payload:
                error = self._p.chunk_error(payload, model)
                if error is not None:
                    raise error
            yield speech.relayed(name, payload)
            if speech.is_done(payload, done):
                return
        raise upstream_error(FailureReason.INVALID_RESPONSE, f"stream ended before {done}",
                             status=200, provider=self._p.config.name, model=model)

    async def _whole_transcript(self, resp: Response, form: audio.Form, model: str,
                                first_deadline: float,
                                idle: float) -> AsyncGenerator[bytes, None]:
        """A 200 with the whole transcript (the server ignored `stream`), read within the
        stream's time limits, as a delta with all of its text and the done event."""
        parts: list[bytes] = []
        size = 0
        async with contextlib.aclosing(chunks(resp, first_deadline, idle, self._p.config.name,
                                              model)) as pieces:
            async for data in pieces:
                size += len(data)
                if size > audio.MAX_TRANSCRIPT:
                    raise upstream_error(FailureReason.INVALID_RESPONSE,
                                         f"a transcript of more than {audio.MAX_TRANSCRIPT} "
                                         "bytes", status=200, provider=self._p.config.name,
                                         model=model)
                parts.append(data)
        answer = self._transcript(b"".join(parts), form.response_format, model)
        text = str(answer.body["text"]).strip()
        usage = answer.body.get("usage")
        logprobs = answer.body.get("logprobs")
        yield audio.delta(text)
        # only a token count is the done event's usage (whisper-1 tells seconds of audio)
        yield audio.done(text,
                         usage if isinstance(usage, dict) and usage.get("type") == "tokens"
                         else None,
                         logprobs if isinstance(logprobs, list) else None)

    async def _speech_failure(self, resp: Response, model: str) -> UpstreamError:
        """A speech call's failure: as an audio call's, and a refusal that names
        stream_format (a model or server without OpenAI's events) is incapable: another
        model may stream as asked."""
        error = await self._audio_failure(resp, model)
        if resp.status in (400, 422) and b"stream_format" in (error.body or b""):
            error.reason = FailureReason.INCAPABLE
        return error

    def _speech_error(self, raw: bytes, model: str, why: str) -> UpstreamError:
        """The failure a 200 without audio (or events) is: the error inside it, FastAPI
        servers' {"detail": ...} too, else `why`."""
        parsed = json_or_none(raw.strip())
        if isinstance(parsed, dict) and ("error" in parsed or "detail" in parsed):
            if "error" not in parsed:
                parsed = {"error": {"message": str(parsed["detail"])}}
            return self._p.body_error(orjson.dumps(parsed), parsed, model, why)
        return upstream_error(FailureReason.INVALID_RESPONSE, why, status=200,
                              provider=self._p.config.name, model=model)

    async def speak(self, body: dict[str, Any], model: ModelConfig,
                    limits: AttemptLimits) -> AsyncIterator[Chunk]:
        events = speech.wants_events(body)
        first_deadline = asyncio.get_running_loop().time() + limits.first_token
        resp = await open_stream(
            self._p.client, f"{self._p.audio_url}/speech",
            data=orjson.dumps(speech.for_model(body, model)),
            headers={**self._p.headers, "Accept": speech.EVENT_STREAM if events else "*/*"},
            first_deadline=first_deadline, connect=limits.connect,
            failure=self._speech_failure, provider=self._p.config.name, model=model.id)
        reader = self._speech_events if events else self._audio
        clean = False
        try:
            size = 0
            async with contextlib.aclosing(reader(resp, body, model.id, first_deadline,
                                                  limits.idle)) as pieces:
                async for piece in pieces:
                    size += len(piece)
                    if size > speech.MAX_AUDIO:
                        raise upstream_error(
                            FailureReason.INVALID_RESPONSE,
                            f"more than {speech.MAX_AUDIO} bytes of audio", status=200,
                            provider=self._p.config.name, model=model.id)
                    yield Chunk(piece)
            clean = True
        finally:
            finish_stream(resp, clean)

    async def _audio(self, resp: Response, body: dict[str, Any], model: str,
                     first_deadline: float, idle: float) -> AsyncGenerator[bytes, None]:
        """A 200's audio as it comes, once its first bytes are audio for certain: what may
        be an error body instead (JSON, HTML) is read whole first, at most MAX_ERROR_BODY."""
        media = speech.media_type(resp.headers.get("Content-Type", ""))
        if speech.textual(media):
            raise self._speech_error(await read_limited(resp), model,
                                     f"200 with {media} instead of audio")
        async with contextlib.aclosing(chunks(resp, first_deadline, idle, self._p.config.name,
                                              model)) as pieces:
            head = b""
            whole = True
            async for data in pieces:
                head += data
                if len(head) >= MAX_ERROR_BODY or (
                        len(head) >= speech.HEAD and not speech.may_be_text(head, body)):
                    whole = False
                    break
            why = speech.not_audio(head, body, whole=whole)
            if why is not None:
                raise self._speech_error(head, model, why)
            yield head
            async for data in pieces:
                yield data

    async def _speech_events(self, resp: Response, body: dict[str, Any], model: str,
                             first_deadline: float,
                             idle: float) -> AsyncGenerator[bytes, None]:
        """A 200's server-sent events (stream_format "sse"), each framed again as it came,
        up to speech.audio.done; an error event raised as a failure. A server that answers
        anything but events (raw audio: it ignored stream_format) cannot stream as asked."""
        media = speech.media_type(resp.headers.get("Content-Type", ""))
        if media != speech.EVENT_STREAM:
            if speech.textual(media):
                raise self._speech_error(await read_limited(resp), model,
                                         f"200 with {media} instead of an event stream")
            raise upstream_error(FailureReason.INCAPABLE,
                                 f"answered {media or 'no content type'} to stream_format "
                                 "sse: no server-sent events", status=200,
                                 provider=self._p.config.name, model=model)
        async with contextlib.aclosing(self._events(resp, model, first_deadline, idle,
                                                    speech.DONE, speech.MAX_AUDIO)) as events:
            async for event in events:
                yield event
