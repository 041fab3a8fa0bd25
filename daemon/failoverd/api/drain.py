"""Request tracking for the graceful drain, and the access guard, as one middleware.

Every request passes the access guard (SO_PEERCRED allow-list on the Unix socket, bearer
token on loopback TCP) and is tracked, so a stop can wait for in-flight requests and cut the
stragglers with an answer the client understands. One middleware, not two: each layer costs
a coroutine per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from failoverd.api.access import refusal
from failoverd.api.fronts import ANTHROPIC, OPENAI
from failoverd.translate.anthropic_stream import error_event as anthropic_error_event

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The streaming response of a request, set by the handler once it has prepared one.
STREAM_RESPONSE = web.RequestKey("stream_response", web.StreamResponse)

class RequestTracker:
    """Knows every request being handled, so a stop can drain them and cut the stragglers.

    Installed as the application's only middleware. A handler cut at
    the drain deadline is cancelled; the tracker turns that cancellation into an answer the
    client can understand: a 503 if nothing was sent yet, else an error event that ends the
    stream cleanly (OpenAI or Anthropic shape, by path).
    """

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.cutting = False

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self.middleware)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = refusal(request)
        if refused is not None:
            return refused
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            return await handler(request)
        except asyncio.CancelledError:
            if not self.cutting:
                raise
            task.uncancel()  # the cancellation was ours and is answered here
            return await _cut_reply(request, request.get(STREAM_RESPONSE))
        finally:
            self.tasks.discard(task)

    def pending(self) -> set[asyncio.Task[Any]]:
        return {t for t in self.tasks if not t.done()}


# After daemon.shutdown_timeout, or at once on a second SIGTERM.
_SHUTDOWN_MESSAGE = "failoverd is shutting down: the request was cut before it finished; retry it"


async def _cut_reply(request: web.Request,
                     resp: web.StreamResponse | None) -> web.StreamResponse:
    anthropic = request.path.startswith("/v1/messages")
    if resp is None or not resp.prepared:
        headers = {"Connection": "close", "Retry-After": "1"}
        if anthropic:  # overloaded_error: what Anthropic clients retry on
            return ANTHROPIC.error(503, "overloaded", _SHUTDOWN_MESSAGE, headers=headers)
        return OPENAI.error(503, "shutting_down", _SHUTDOWN_MESSAGE, "shutting_down",
                            headers=headers)
    if resp.content_type == "text/event-stream":
        if anthropic:
            event = anthropic_error_event("overloaded_error", _SHUTDOWN_MESSAGE)
        else:
            event = OPENAI.encoder("").error("shutting_down", _SHUTDOWN_MESSAGE)
        try:
            await resp.write(event)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client is gone, or the response already ended
    return resp


