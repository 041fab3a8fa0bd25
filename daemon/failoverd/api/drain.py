"""Request tracking for the graceful drain, and the access guard, in front of every request.

Every request passes the access guard (SO_PEERCRED allow-list on the Unix socket, bearer
token on loopback TCP) and is tracked, so a stop can wait for in-flight requests and cut the
stragglers with an answer the client understands. Not as an aiohttp middleware: see
`RequestTracker.install`.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from failoverd import requestid
from failoverd.api import accesslog
from failoverd.api.access import refusal
from failoverd.api.fronts import ANTHROPIC, OPENAI, StreamEncoder
from failoverd.api.service import SERVICE, Service
from failoverd.requestid import REQUEST_ID
from failoverd.translate.anthropic_stream import error_event as anthropic_error_event

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The streaming response of a request, set by the handler once it has prepared one.
STREAM_RESPONSE = web.RequestKey("stream_response", web.StreamResponse)
# ... and its encoder: a cut ends the stream with an error event in the client's API shape
STREAM_ENCODER = web.RequestKey("stream_encoder", StreamEncoder)


class StreamOpener(abc.ABC):
    """Makes the response a streamed answer is written to, where aiohttp's server does not
    write it (api/fastpath.py); requests from aiohttp's server have none."""

    __slots__ = ()

    @abc.abstractmethod
    def open_stream(self, headers: dict[str, str]) -> web.StreamResponse: ...


STREAM_OPENER = web.RequestKey("stream_opener", StreamOpener)

class RequestTracker:
    """Knows every request being handled, so a stop can drain them and cut the stragglers.

    Installed in front of the application's request handling. A handler cut at
    the drain deadline is cancelled; the tracker turns that cancellation into an answer the
    client can understand: a 503 if nothing was sent yet, else an error event that ends the
    stream cleanly (OpenAI or Anthropic shape, by path).
    """

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.cutting = False
        self._entry: Handler | None = None

    def install(self, app: web.Application) -> None:
        """Puts the access guard and the tracking in front of every request `app` serves,
        routed or not (a 404 is refused to a peer without access too).

        Not as a middleware: with any middleware installed, aiohttp runs every request
        through it and through a layer of its own (which only restores
        `match_info.current_app`, for sub-applications this daemon does not have) — two
        coroutines and a handler-chain lookup per request, about 5% of a proxied
        request's CPU. The application's entry point, which aiohttp's server is built
        with when the runner is set up, is wrapped instead; call this before that.
        """
        handle = self.wrap(app._handle, app[SERVICE])
        # object.__setattr__: aiohttp's debug mode warns on any attribute set on an app
        object.__setattr__(app, "_handle", handle)
        self._entry = handle

    def wrap(self, routed: Handler, service: Service) -> Handler:
        """`routed` behind the access guard and the drain tracking: what aiohttp's server
        runs for every request (`install`) and the fast path for the requests it serves
        (api/fastpath.py)."""
        tasks = self.tasks
        proxied = accesslog.PATHS

        def handle(request: web.Request) -> Awaitable[web.StreamResponse]:
            # not a coroutine itself: without the access log, no frame of its own
            if request.path in proxied:  # its id, for its answer, log line and events
                request[REQUEST_ID] = requestid.of(request.headers.get(requestid.HEADER))
                if service.runtime.config.daemon.access_log and accesslog.logs(request.path):
                    return accesslog.around(request, guarded)
            return guarded(request)

        async def guarded(request: web.Request) -> web.StreamResponse:
            refused = refusal(request, service)
            if refused is not None:
                return _stamped(request, refused)
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                return _stamped(request, await routed(request))
            except asyncio.CancelledError:
                if not self.cutting:
                    raise
                task.uncancel()  # the cancellation was ours and is answered here
                return _stamped(request, await _cut_reply(request,
                                                          request.get(STREAM_RESPONSE)))
            finally:
                tasks.discard(task)

        return handle

    def guards(self, server: web.Server | None) -> bool:
        """Whether `server` (the runner's, after setup) hands every request to the guard.

        `install` relies on how aiohttp builds its server from the application; an aiohttp
        that built it otherwise would serve without the access guard, so the supervisor
        checks this and refuses to start instead.
        """
        handler = getattr(server, "request_handler", None)
        return handler is not None and handler is self._entry

    def pending(self) -> set[asyncio.Task[Any]]:
        return {t for t in self.tasks if not t.done()}


def _stamped(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """`response` with the request's x-request-id (a proxied request's; a stream's head,
    sent already, has it from api/proxy.py)."""
    rid = request.get(REQUEST_ID)
    if rid is not None and not response.prepared:
        requestid.stamp(response.headers, rid, request.path == "/v1/messages")
    return response


# After daemon.shutdown_timeout, or at once on a second SIGTERM.
_SHUTDOWN_MESSAGE = "failoverd is shutting down: the request was cut before it finished; retry it"


def shutting_down(anthropic: bool) -> web.Response:
    """The 503 for a request the stop cut before its answer began (it closes the connection)."""
    headers = {"Connection": "close", "Retry-After": "1"}
    if anthropic:  # overloaded_error: what Anthropic clients retry on
        return ANTHROPIC.error(503, "overloaded", _SHUTDOWN_MESSAGE, headers=headers)
    return OPENAI.error(503, "shutting_down", _SHUTDOWN_MESSAGE, "shutting_down",
                        headers=headers)


async def _cut_reply(request: web.Request,
                     resp: web.StreamResponse | None) -> web.StreamResponse:
    anthropic = request.path.startswith("/v1/messages")
    if resp is None or not resp.prepared:
        return shutting_down(anthropic)
    if resp.content_type == "text/event-stream":
        encoder = request.get(STREAM_ENCODER)
        if anthropic:
            event = anthropic_error_event("overloaded_error", _SHUTDOWN_MESSAGE)
        elif encoder is not None:  # the Responses API's error and response.failed events
            event = encoder.error("shutting_down", _SHUTDOWN_MESSAGE)
        else:
            event = OPENAI.encoder("").error("shutting_down", _SHUTDOWN_MESSAGE)
        try:
            await resp.write(event)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client is gone, or the response already ended
    return resp


