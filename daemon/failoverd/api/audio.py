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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from failoverd.api.body import read_bytes, read_json
from failoverd.api.fronts import OPENAI
from failoverd.api.proxy import pinned, proxied, request_deadline
from failoverd.api.replies import outcome_headers
from failoverd.dispatch import Outcome
from failoverd.runtime import Runtime
from failoverd.service import Service
from failoverd.translate import audio as wire
from failoverd.translate import speech


def _serve(task: str) -> Callable[[web.Request, Service, Runtime, Outcome],
                                  Awaitable[web.StreamResponse]]:
    async def serve(request: web.Request, svc: Service, rt: Runtime,
                    outcome: Outcome) -> web.StreamResponse:
        raw = await read_bytes(request, rt.config.daemon.max_body_bytes,
                               "a multipart/form-data upload")
        form = wire.parse(raw, request.headers.get("Content-Type", ""))
        candidates = svc.audio_route(rt, form.model, pinned(request))
        deadline = request_deadline(svc, rt, request, outcome)
        answer = await rt.dispatcher.transcribe({"form": form, "task": task}, candidates,
                                                deadline, outcome)
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
    answer = await rt.dispatcher.speak(body, candidates, deadline, outcome)
    svc.metrics.served(outcome.model)
    headers = outcome_headers(outcome)
    headers["Content-Type"] = speech.content_type(body)
    return web.Response(body=answer.to_bytes(), headers=headers)


speak = proxied(OPENAI, _speak)
