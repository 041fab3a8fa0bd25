"""POST /v1/chat/completions: the OpenAI front end."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from failoverd.api.body import read_json, validate_chat
from failoverd.api.replies import (
    JSON,
    no_model_available,
    openai_error,
    outcome_headers,
    overloaded,
    request_error,
    upstream_passthrough,
)
from failoverd.api.service import SERVICE, Service
from failoverd.dispatch import Outcome, StreamStart
from failoverd.errors import NoModelAvailable, RequestError, UpstreamError
from failoverd.failures import FailureReason
from failoverd.runtime import Runtime
from failoverd.service import Route

logger = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes")
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no"}


def request_deadline(svc: Service, rt: Runtime, request: web.Request) -> float:
    budget = rt.config.routing.deadline
    header = request.headers.get("x-failoverd-deadline")
    if header:
        try:
            budget = float(header)
        except ValueError:
            budget = -1.0
        if not 0 < budget < 86400:
            raise RequestError(f"header x-failoverd-deadline must be seconds in (0, 86400), "
                               f"got {header!r}", param="x-failoverd-deadline")
    return svc.clock.monotonic() + budget


def routing_inputs(request: web.Request, body: dict[str, Any]) -> tuple[bool, str | None]:
    pin = request.headers.get("x-failoverd-no-fallback", "").lower() in _TRUE
    session = request.headers.get("x-failoverd-session") or body.get("user") or None
    return pin, session


def aborted(exc: UpstreamError, outcome: Outcome) -> web.Response:
    """The client's answer when a failover hook aborted (or a non-failover reason ended it)."""
    if exc.reason is FailureReason.BAD_REQUEST:
        return upstream_passthrough(exc, outcome)
    return openai_error(exc.status or 502, exc.message, str(exc.reason), "failover_aborted",
                        headers=outcome_headers(outcome), messages=outcome.notices,
                        model=exc.model)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICE]
    rt = svc.runtime  # this request's configuration, even if a reload swaps it meanwhile
    limit = rt.config.daemon.max_inflight
    if svc.inflight >= limit:
        svc.metrics.rejected("overloaded")
        return overloaded(limit)
    svc.inflight += 1
    outcome = Outcome()
    try:
        body = await read_json(request, rt.config.daemon.max_body_bytes)
        validate_chat(body)
        pin, session = routing_inputs(request, body)
        route = svc.route(rt, body, pin, session)
        outcome = svc.outcome_for(route)
        deadline = request_deadline(svc, rt, request)
        if body.get("stream"):
            return await _stream(request, svc, rt, body, route, deadline, outcome, session)
        completion = await rt.dispatcher.complete(body, route.candidates, deadline, outcome,
                                                  session, route.needs)
        svc.served(outcome, session, route)
        if outcome.notices:
            # hook messages travel in the body too, for clients that never see headers
            completion.body["failoverd"] = {"notices": outcome.notices}
            completion.raw = None
        return web.Response(body=completion.to_bytes(), content_type=JSON,
                            headers=outcome_headers(outcome, route.header))
    except RequestError as exc:
        svc.metrics.rejected("bad_input")
        return request_error(exc)
    except NoModelAvailable as exc:
        svc.metrics.exhausted()
        return no_model_available(exc, outcome)
    except UpstreamError as exc:
        return aborted(exc, outcome)
    finally:
        svc.inflight -= 1


async def _stream(request: web.Request, svc: Service, rt: Runtime, body: dict[str, Any],
                  route: Route, deadline: float, outcome: Outcome,
                  session: str | None) -> web.StreamResponse:
    start: StreamStart = await rt.dispatcher.stream(body, route.candidates, deadline, outcome,
                                                    session, route.needs)
    svc.served(outcome, session, route)
    resp = web.StreamResponse(headers={**_SSE_HEADERS, **outcome_headers(outcome, route.header)})
    error: UpstreamError | None = None
    try:
        await resp.prepare(request)
        if outcome.notices:
            start.first.data["failoverd"] = {"notices": outcome.notices}
            start.first.raw = None
        await resp.write(b"data: " + start.first.to_bytes() + b"\n\n")
        async for chunk in start.rest:
            await resp.write(b"data: " + chunk.to_bytes() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
    except UpstreamError as exc:
        # after the first chunk a failover is no longer invisible: end with an error event
        error = exc
        logger.warning("stream from %s failed after the first chunk: %s", outcome.model,
                       exc.reason)
        payload = openai_error(502, exc.message, str(exc.reason), str(exc.reason)).body
        assert isinstance(payload, bytes)
        try:
            await resp.write(b"data: " + payload + b"\n\n")
        except ConnectionResetError:
            pass
    except (ConnectionResetError, asyncio.CancelledError) as exc:
        error = UpstreamError(FailureReason.CANCELLED, "client went away", model=outcome.model)
        if isinstance(exc, asyncio.CancelledError):
            raise
    finally:
        aclose = getattr(start.rest, "aclose", None)
        if aclose is not None:
            await aclose()
        rt.dispatcher.stream_finished(outcome.model, start, error)
    await resp.write_eof()
    return resp
