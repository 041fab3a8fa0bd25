"""POST /v1/completions: OpenAI's legacy Completions API (a prompt to continue; `suffix` for
fill-in-the-middle), plain and streamed, down a chat request's candidates.

OpenAI-compatible upstreams take the request as it is and their answers pass through;
Ollama's native /api/generate is translated; Anthropic and Gemini have no such API (their
candidates are incapable of it, and the chain goes on). Breakers, retries, the deadline,
failover, events, hooks, metrics and the ``x-failoverd-*`` headers work as for chat; sessions
and ``auto`` routing, which read chat messages, do not apply.
"""

from __future__ import annotations

from aiohttp import web

from failoverd.api.body import read_json
from failoverd.api.fronts import OPENAI
from failoverd.api.proxy import pinned, proxied, relay, request_deadline
from failoverd.api.replies import JSON, outcome_headers
from failoverd.dispatch import Outcome
from failoverd.runtime import Runtime
from failoverd.service import Route, Service
from failoverd.translate import completions as wire


async def _complete(request: web.Request, svc: Service, rt: Runtime,
                    outcome: Outcome) -> web.StreamResponse:
    body = wire.validate(await read_json(request, rt.config.daemon.max_body_bytes))
    route = Route(svc.text_route(rt, body.get("model") or "", pinned(request)), None)
    deadline = request_deadline(svc, rt, request, outcome)
    if body.get("stream"):
        return await relay(request, OPENAI, svc, rt, body, route, deadline, outcome, None,
                           body, text=True)
    answer = await rt.dispatcher.complete_text(body, route.candidates, deadline, outcome)
    svc.metrics.served(outcome.model)
    outcome.cost = svc.usage(outcome.model, answer.body.get("usage"))
    return web.Response(body=OPENAI.answer(answer, outcome.model, outcome.notices, body),
                        content_type=JSON, headers=outcome_headers(outcome))


completions = proxied(OPENAI, _complete)
