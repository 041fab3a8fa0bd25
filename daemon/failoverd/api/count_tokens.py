"""POST /v1/messages/count_tokens: Anthropic's token count, for the model a request would go
to now.

Anthropic clients call it to manage their context (Claude Code does, with `?beta=true`, and
counts wrongly without it). When the model a messages request would be sent to now is on an
Anthropic provider (or is Claude on Vertex AI or Amazon Bedrock), that provider's own count
is passed on (`x-failoverd-count: upstream`); for any other model, or when that call fails,
failoverd's estimate answers (the one that matches requests to context windows;
`x-failoverd-count: estimate`). A count is a question about a request, not one: it feeds no
breaker and counts in no request metric.
"""

from __future__ import annotations

import logging

from aiohttp import web

from failoverd import clients, requirements
from failoverd.api.access import client_of
from failoverd.api.body import read_json
from failoverd.api.fronts import ANTHROPIC
from failoverd.api.proxy import pinned
from failoverd.api.replies import json_response
from failoverd.api.service import SERVICE
from failoverd.errors import RequestError, UpstreamError
from failoverd.failures import FailureReason
from failoverd.providers.base import TokenCounter
from failoverd.sessions import normalize_key

logger = logging.getLogger(__name__)

COUNT_TIMEOUT = 10.0  # seconds for the upstream count, at most (the provider's timeout if less)


async def count_tokens(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    rt = svc.runtime
    # a [clients.<name>] kept to its models counts only on those (no limit is spent: a count
    # is no request)
    client = client_of(request, svc)
    current = clients.CURRENT.set(client) if client is not None else None
    try:
        raw = await read_json(request, rt.config.daemon.max_body_bytes)
        # the endpoint's body has no max_tokens (Anthropic refuses one): any checks the rest
        body = ANTHROPIC.canonical({**raw, "max_tokens": 1})
        session = request.headers.get("x-failoverd-session")
        # which model would serve: a count is no request, so it takes no pool's turn
        route = svc.route(rt, body, pinned(request), normalize_key(session) if session else None,
                          preview=True)
    except clients.Forbidden as exc:
        return ANTHROPIC.error(403, "permission_denied", exc.message, exc.code, exc.param,
                               client=exc.client)
    except RequestError as exc:
        svc.metrics.rejected("bad_input")
        return ANTHROPIC.error(exc.status, "invalid_request_error", exc.message, exc.code,
                               exc.param)
    finally:
        if current is not None:
            clients.CURRENT.reset(current)
    candidates = route.candidates
    model_id = next((m for m in candidates if svc.health.available(m)[0]),
                    candidates[0] if candidates else None)
    headers = {"x-failoverd-count": "estimate"}
    if model_id is not None:
        headers["x-failoverd-model"] = model_id
        model = rt.config.models[model_id]
        provider = rt.providers.get(model.provider)
        if isinstance(provider, TokenCounter) and provider.counts_tokens(model):
            try:
                count = await provider.count_tokens(
                    raw, model, min(COUNT_TIMEOUT, provider.config.timeout))
            except UpstreamError as exc:
                if exc.reason is FailureReason.BAD_REQUEST:
                    # the body itself is wrong for Anthropic: a messages call would fail alike
                    return ANTHROPIC.error(exc.status or 400, "invalid_request_error",
                                           exc.message, headers=headers)
                logger.info("count_tokens on %s failed (%s: %s); answering the estimate",
                            model_id, exc.reason, exc.message)
            else:
                headers["x-failoverd-count"] = "upstream"
                return json_response({"input_tokens": count}, headers=headers)
    needs = route.needs if route.needs is not None else requirements.infer(body)
    return json_response({"input_tokens": needs.prompt_tokens}, headers=headers)
