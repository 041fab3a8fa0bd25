"""POST /v1/embeddings: OpenAI's Embeddings API, down an embedding model's candidates.

An embedding model (``capabilities = ["embeddings"]``) is called alone, with its same-model
retries; a chain of embedding models fails over down the chain (the operator's word that
their vectors are interchangeable). Breakers, probes, events, hooks, metrics and the
``x-failoverd-*`` headers work as for chat.
"""

from __future__ import annotations

from aiohttp import web

from failoverd.api.body import read_json
from failoverd.api.fronts import OPENAI
from failoverd.api.proxy import pinned, proxied, request_deadline
from failoverd.api.replies import JSON, outcome_headers
from failoverd.dispatch import Outcome
from failoverd.runtime import Runtime
from failoverd.service import Service
from failoverd.translate import embeddings as wire


async def _embed(request: web.Request, svc: Service, rt: Runtime,
                 outcome: Outcome) -> web.StreamResponse:
    body = wire.validate(await read_json(request, rt.config.daemon.max_body_bytes))
    candidates = svc.embedding_route(rt, body["model"], pinned(request))
    deadline = request_deadline(svc, rt, request, outcome)
    answer = await rt.dispatcher.embed(body, candidates, deadline, outcome)
    svc.metrics.served(outcome.model)
    usage = answer.body.get("usage")
    # Gemini reports no tokens: its answer says 0, which no real input costs
    outcome.cost = svc.usage(outcome.model, usage if isinstance(usage, dict)
                             and usage.get("prompt_tokens") else None)
    return web.Response(body=answer.to_bytes(), content_type=JSON,
                        headers=outcome_headers(outcome))


embeddings = proxied(OPENAI, _embed)
