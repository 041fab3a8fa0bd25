"""The aiohttp application: routes, and what ends with the app (event streams)."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from failoverd.api import control
from failoverd.api.audio import speak, transcriptions, translations
from failoverd.api.completions import completions
from failoverd.api.count_tokens import count_tokens
from failoverd.api.drain import STREAM_RESPONSE
from failoverd.api.embeddings import embeddings
from failoverd.api.events import events
from failoverd.api.fronts import ANTHROPIC, OPENAI
from failoverd.api.proxy import chat_completions, messages, responses
from failoverd.api.reloads import ReloadRecord
from failoverd.api.service import SERVICE, Service

logger = logging.getLogger(__name__)


def make_app(service: Service) -> web.Application:
    # client_max_size is enforced by our own body reader (413 naming max_body_bytes)
    # the supervisor installs the access guard and drain tracking (api/drain.py)
    app = web.Application(client_max_size=2**62, middlewares=[_json_errors])
    app[SERVICE] = service
    reloads = ReloadRecord(service.bus, service.clock.time)
    app[control.RELOADS] = reloads
    service.metrics.gauges.append(reloads.gauges)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/audio/translations", translations)
    app.router.add_post("/v1/audio/speech", speak)
    app.router.add_get("/v1/models", control.models)
    app.router.add_get("/v1/health", control.health)
    app.router.add_get("/v1/status", control.status)
    # model ids, chain names and session keys may contain '/' and ':'
    app.router.add_post(r"/v1/models/{id:.+}/{action:reset|open|probe}", control.model_action)
    app.router.add_get(r"/v1/models/{id:.+}", control.model)
    app.router.add_post(r"/v1/chains/{name:.+}/{action:next|reset}", control.chain_action)
    app.router.add_post("/v1/select", control.select)
    app.router.add_get("/v1/sessions/{key:.+}", control.session_get)
    app.router.add_post("/v1/sessions/{key:.+}", control.session_set)
    app.router.add_delete("/v1/sessions/{key:.+}", control.session_delete)
    app.router.add_post("/v1/reload", control.reload)
    app.router.add_get("/v1/events", events)
    app.router.add_get("/metrics", control.metrics)
    app.on_shutdown.append(_close_event_streams)
    app.on_cleanup.append(_forget_reloads)
    return app


async def _forget_reloads(app: web.Application) -> None:
    """The service may outlive this app: detach the record from its bus and metrics."""
    reloads, metrics = app[control.RELOADS], app[SERVICE].metrics
    reloads.detach()
    if reloads.gauges in metrics.gauges:
        metrics.gauges.remove(reloads.gauges)


async def _close_event_streams(app: web.Application) -> None:
    """Event streams never end by themselves: end them so the drain does not wait on them."""
    for sub in list(app[SERVICE].streams):
        sub.close()


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An unknown path or method, or a defect in a handler, gets a JSON error in the client's
    API shape (aiohttp's own pages are text/plain, which SDKs cannot read): a 404 or 405
    naming what failoverd serves instead, or a 500 (logged, and counted as internal_error as
    the fast path counts its own)."""
    front = ANTHROPIC if request.path.startswith("/v1/messages") else OPENAI
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        if exc.text is not None and not exc.text.startswith(f"{exc.status}: "):
            raise  # a handler's own, not the router's
        where = f"{request.method} {request.path}"
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            return front.error(405, "invalid_request_error",
                               f"{where}: method not allowed here (allowed: {allowed})",
                               "method_not_allowed", headers={"Allow": allowed})
        return front.error(404, "invalid_request_error",
                           f"{where}: failoverd serves no such endpoint (proxied: POST "
                           "/v1/chat/completions, POST /v1/messages, POST /v1/responses, "
                           "POST /v1/completions, POST /v1/embeddings, POST "
                           "/v1/audio/transcriptions, POST /v1/audio/translations and POST "
                           "/v1/audio/speech)",
                           "unknown_url")
    except web.HTTPException:
        raise  # an answer of aiohttp's own
    except Exception:
        logger.exception("error serving %s %s", request.method, request.path)
        request.app[SERVICE].metrics.failed("", "internal_error")
        stream = request.get(STREAM_RESPONSE)
        if stream is not None and stream.prepared:
            raise  # a stream's head is out: no 500 can follow (aiohttp closes it)
        return front.error(500, "internal_error", "internal error in failoverd; see its log",
                           "internal_error")
