"""POST /v1/audio/transcriptions and /v1/audio/translations: OpenAI's speech-to-text, a file
upload (multipart/form-data), down a transcription model's candidates; and POST
/v1/audio/speech, text to speech down a speech model's (each with its own voice).

A transcript is text whichever model wrote it, so a transcription model is followed by the
other transcription models (or a chain of them is used, or "default": all of them). The
form goes to OpenAI-compatible upstreams (OpenAI, Groq, local whisper servers) as the client
sent it, `model` set to the upstream's name, and the answer comes back in the form's
response_format. Breakers, retries, the deadline, failover, events, hooks, metrics and the
``x-failoverd-*`` headers work as for chat. Served by aiohttp's server (the fast path takes
JSON bodies only).

Speech streams as a chat does: the headers wait for the first audio (a failover before it is
invisible but for them), then the audio (or OpenAI's server-sent events) goes on as it
comes. A failure after that cuts raw audio short (its chunked body is left unfinished) and
ends an event stream with an error event. A transcription asked with ``stream=true`` streams
its events in the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from failoverd import requestid
from failoverd.api.body import read_bytes, read_json
from failoverd.api.drain import STREAM_RESPONSE
from failoverd.api.fronts import OPENAI
from failoverd.api.proxy import ClientStalled, StreamClient, pinned, proxied, request_deadline
from failoverd.api.replies import outcome_headers
from failoverd.dispatch import Outcome, StreamStart
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.runtime import Runtime
from failoverd.service import Service
from failoverd.translate import audio as wire
from failoverd.translate import speech

logger = logging.getLogger(__name__)

_EVENT_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _serve(task: str) -> Callable[[web.Request, Service, Runtime, Outcome],
                                  Awaitable[web.StreamResponse]]:
    async def serve(request: web.Request, svc: Service, rt: Runtime,
                    outcome: Outcome) -> web.StreamResponse:
        raw = await read_bytes(request, rt.config.daemon.max_body_bytes,
                               "a multipart/form-data upload")
        form = wire.parse(raw, request.headers.get("Content-Type", ""), task)
        candidates = svc.audio_route(rt, form.model, pinned(request))
        deadline = request_deadline(svc, rt, request, outcome)
        body = {"form": form, "task": task}
        if form.stream:
            start = await rt.dispatcher.stream_transcript(body, candidates, deadline, outcome)
            headers = outcome_headers(outcome)
            headers["Content-Type"] = speech.EVENT_STREAM
            return await _relay(request, svc, rt, outcome, start, headers, events=True,
                                what="transcript", first="event")
        answer = await rt.dispatcher.transcribe(body, candidates, deadline, outcome)
        svc.metrics.served(outcome.model)
        headers = outcome_headers(outcome)
        headers["Content-Type"] = wire.CONTENT_TYPES[form.response_format]
        return web.Response(body=answer.to_bytes(), headers=headers)

    return serve


transcriptions = proxied(OPENAI, _serve("transcriptions"))
translations = proxied(OPENAI, _serve("translations"))


async def _speak(request: web.Request, svc: Service, rt: Runtime,
                 outcome: Outcome) -> web.StreamResponse:
    body = speech.validate(await read_json(request, rt.config.daemon.max_body_bytes))
    candidates = svc.speech_route(rt, body.get("model") or "", pinned(request))
    deadline = request_deadline(svc, rt, request, outcome)
    start = await rt.dispatcher.speak(body, candidates, deadline, outcome)
    headers = outcome_headers(outcome)
    headers["Content-Type"] = speech.content_type(body)
    return await _relay(request, svc, rt, outcome, start, headers,
                        events=speech.wants_events(body), what="speech", first="audio")


async def _relay(request: web.Request, svc: Service, rt: Runtime, outcome: Outcome,
                 start: StreamStart, headers: dict[str, str], *, events: bool, what: str,
                 first: str) -> web.StreamResponse:
    """Passes a stream whose `first` chunk (audio, an event) has come on to the client as it
    comes; `events`: it is server-sent events (ended with an error event on a failure),
    else raw audio (left unfinished). `what` names it in the log."""
    if events:
        headers.update(_EVENT_HEADERS)
    if outcome.request_id is not None:  # the head goes out now (api/drain.py stamps the rest)
        headers[requestid.HEADER] = outcome.request_id
    resp = web.StreamResponse(headers=headers)
    request[STREAM_RESPONSE] = resp  # a stop's cut ends an event stream with an error event
    client = StreamClient(request, resp, rt.config.models[outcome.model].stream_idle_timeout)
    error: UpstreamError | None = None
    try:
        await resp.prepare(request)
        await client.write(start.first.to_bytes())
        async for chunk in start.rest:
            await client.write(chunk.to_bytes())
    except UpstreamError as exc:
        error = exc
        logger.warning("%s from %s failed after the first %s: %s (request %s)", what,
                       outcome.model, first, exc.reason, outcome.request_id)
    except (ConnectionResetError, ClientStalled, asyncio.CancelledError) as exc:
        error = UpstreamError(FailureReason.CANCELLED, "client went away", model=outcome.model)
        if isinstance(exc, asyncio.CancelledError):
            if not events and resp.prepared:
                _cut(request)  # a stop's cut: what went out must not pass for the whole audio
            raise
        if isinstance(exc, ClientStalled):
            logger.warning("%s from %s cut: the client read nothing for %gs (request %s)",
                           what, outcome.model, client.limit, outcome.request_id)
        svc.metrics.cancelled(outcome.model)
        return resp
    except Exception as exc:
        logger.exception("%s from %s could not be passed on (request %s)", what,
                         outcome.model, outcome.request_id)
        error = UpstreamError(FailureReason.INVALID_RESPONSE,
                              f"unusable {what} chunk: {type(exc).__name__}",
                              model=outcome.model)
    finally:
        try:
            aclose = getattr(start.rest, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:  # even if closing is cancelled: the permit (a half-open trial) comes back
            rt.dispatcher.stream_finished(outcome.model, start, error)
    if error is not None:
        svc.metrics.stream_ended(outcome.model, ok=False)
        if not events:
            # raw audio has no way to tell of a failure: the body ends unfinished (no last
            # chunk), so the client knows the audio is incomplete
            _cut(request)
            return resp
        # an event stream ends with an error event, as a chat stream does
        await client.tell(OPENAI.encoder("").error(str(error.reason), error.message))
    try:
        await client.end()
    except (ConnectionResetError, ClientStalled):
        if error is None:
            svc.metrics.cancelled(outcome.model)  # gone just before the end
        return resp
    if error is None:
        svc.metrics.stream_ended(outcome.model, ok=True)
    return resp


def _cut(request: web.Request) -> None:
    """Ends the connection under a streamed answer, so its chunked body stays unfinished;
    at once (an abort) when bytes still wait to be sent to a client that may never read
    them."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    if transport.get_write_buffer_size():
        transport.abort()
    else:
        transport.close()


speak = proxied(OPENAI, _speak)
