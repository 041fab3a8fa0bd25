"""The aiohttp application: routes and the per-request guards shared by every handler."""

from __future__ import annotations

from aiohttp import web

from failoverd.api import control
from failoverd.api.access import guard
from failoverd.api.chat import chat_completions
from failoverd.api.service import SERVICE, Service


def make_app(service: Service) -> web.Application:
    # client_max_size is enforced by our own body reader (413 naming max_body_bytes)
    # The access guard is always installed: allowed_uids and the TCP token may change on reload.
    app = web.Application(client_max_size=2**62, middlewares=[guard])
    app[SERVICE] = service
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", control.models)
    app.router.add_get("/v1/health", control.health)
    app.router.add_get("/metrics", control.metrics)
    return app
