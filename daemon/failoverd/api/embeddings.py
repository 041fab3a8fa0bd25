"""POST /v1/embeddings: OpenAI's Embeddings API, down an embedding model's candidates.

An embedding model (``capabilities = ["embeddings"]``) is called alone, with its same-model
retries; a chain of embedding models fails over down the chain (the operator's word that
their vectors are interchangeable). Breakers, probes, events, hooks, metrics and the
``x-failoverd-*`` headers work as for chat.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from failoverd.api.body import read_json
from failoverd.api.fronts import OPENAI
from failoverd.api.proxy import exhausted, failed, pinned, request_deadline
from failoverd.api.replies import JSON, outcome_headers
from failoverd.api.service import SERVICE
from failoverd.dispatch import Outcome
from failoverd.errors import NoModelAvailable, RequestError, UpstreamError
from failoverd.translate import embeddings as wire


async def embeddings(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICE]
    rt = svc.runtime  # this request's configuration, even if a reload swaps it meanwhile
    limit = rt.config.daemon.max_inflight
    if svc.inflight >= limit:
        svc.metrics.rejected("overloaded")
        return OPENAI.error(503, "overloaded", f"failoverd is at max_inflight ({limit}); "
                            "retry shortly", "overloaded", headers={"Retry-After": "1"})
    svc.inflight += 1
    outcome = Outcome()
    try:
        body = wire.validate(await read_json(request, rt.config.daemon.max_body_bytes))
        candidates = svc.embedding_route(rt, body["model"], pinned(request))
        deadline = request_deadline(svc, rt, request, outcome)
        answer = await rt.dispatcher.embed(body, candidates, deadline, outcome)
        svc.metrics.served(outcome.model)
        usage = answer.body.get("usage")
        # Gemini reports no tokens: its answer says 0, which no real input costs
        svc.metrics.usage(outcome.model, usage if isinstance(usage, dict)
                          and usage.get("prompt_tokens") else None)
        return web.Response(body=answer.to_bytes(), content_type=JSON,
                            headers=outcome_headers(outcome))
    except RequestError as exc:
        svc.metrics.rejected("bad_input")
        return OPENAI.error(exc.status, "invalid_request_error", exc.message, exc.code,
                            exc.param)
    except NoModelAvailable as exc:
        return exhausted(OPENAI, svc, exc, outcome)
    except UpstreamError as exc:
        return failed(OPENAI, svc, rt, exc, outcome)
    except asyncio.CancelledError:
        svc.metrics.cancelled(outcome.model)
        raise
    finally:
        svc.inflight -= 1
