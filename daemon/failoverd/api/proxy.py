"""POST /v1/chat/completions, /v1/messages and /v1/responses: one proxy handler, three API
shapes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from failoverd import clients, requestid
from failoverd.api import accesslog
from failoverd.api.access import client_of
from failoverd.api.body import read_json
from failoverd.api.drain import STREAM_ENCODER, STREAM_OPENER, STREAM_RESPONSE
from failoverd.api.fronts import ANTHROPIC, OPENAI, RESPONSES, FrontEnd
from failoverd.api.replies import JSON, header_value, outcome_headers, retry_after_header
from failoverd.api.service import SERVICE
from failoverd.dispatch import Outcome, StreamStart
from failoverd.errors import ContextRefused, NoModelAvailable, RequestError, UpstreamError
from failoverd.failures import FailureReason
from failoverd.providers.base import Chunk
from failoverd.requestid import REQUEST_ID
from failoverd.runtime import Runtime
from failoverd.service import Route, Service
from failoverd.sessions import normalize_key
from failoverd.timeouts import timeout

logger = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes")
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no"}


def pinned(request: web.Request) -> bool:
    """Whether the request asks for its model alone (header x-failoverd-no-fallback)."""
    return request.headers.get("x-failoverd-no-fallback", "").lower() in _TRUE


def request_deadline(svc: Service, rt: Runtime, request: web.Request, outcome: Outcome) -> float:
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
        outcome.client_deadline = budget < rt.config.routing.deadline
    return svc.clock.monotonic() + budget


def exhausted(front: FrontEnd, svc: Service, exc: NoModelAvailable,
              outcome: Outcome) -> web.Response:
    """Every candidate failed or was skipped: DESIGN.md's 503."""
    svc.metrics.exhausted()
    headers = outcome_headers(outcome)
    headers["Retry-After"] = retry_after_header(exc.retry_after)
    if exc.attempts and all(a.reason == FailureReason.INCAPABLE for a in exc.attempts):
        # no model can ever serve it (too long, lacking a capability): the OpenAI and
        # Anthropic SDKs obey this and do not send it again for nothing
        headers["x-should-retry"] = "false"
    return front.error(
        503, "no_model_available",
        f"no model available: {len(exc.attempts)} candidate(s) failed or were skipped",
        "no_model_available", headers=headers, attempts=[a.as_dict() for a in exc.attempts])


def failed(front: FrontEnd, svc: Service, rt: Runtime, exc: UpstreamError,
           outcome: Outcome) -> web.Response:
    """A failure that ends the request without trying further candidates."""
    headers = outcome_headers(outcome)
    # the access log names the upstream answer the client got: this one (requestid.py)
    outcome.upstream_request_id = exc.upstream_request_id
    svc.metrics.failed(exc.model, "bad_request" if exc.reason is FailureReason.BAD_REQUEST
                       else "context_overflow" if isinstance(exc, ContextRefused)
                       else "aborted")
    if exc.reason is FailureReason.BAD_REQUEST:
        provider = rt.config.providers.get(exc.provider)
        if exc.body and provider is not None and provider.kind == front.name:
            # same API on both sides: the client gets the upstream error unchanged
            return web.Response(body=exc.body, status=exc.status or 400, headers=headers,
                                content_type=header_value(exc.content_type.split(";")[0])
                                or JSON)
        return front.error(exc.status or 400, "invalid_request_error", exc.message,
                           "upstream_bad_request", headers=headers, model=exc.model)
    # a hook aborted the failover, or the context policy said fail (OpenAI's code for a
    # request too long for the model: what SDKs and agents look for)
    code = ("context_length_exceeded" if isinstance(exc, ContextRefused)
            else "failover_aborted")
    status = exc.status or 502
    return front.error(status, str(exc.reason), exc.message, code,
                       headers=headers, messages=outcome.notices, model=exc.model)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What a proxied endpoint does with one admitted request: its answer, or it raises
# RequestError, NoModelAvailable or UpstreamError for `proxied` to answer
Serve = Callable[[web.Request, Service, Runtime, Outcome], Awaitable[web.StreamResponse]]


def proxied(front: FrontEnd, serve: Serve) -> Handler:
    """The frame every proxied request runs in, whatever its endpoint: the max_inflight
    refusal and the in-flight count, the configuration it keeps to its end, and the answers
    (in `front`'s shape) and counts of what ends it early: bad input, no model available, an
    upstream refusal or an aborted failover, the client going away."""
    async def handle(request: web.Request) -> web.StreamResponse:
        svc = request.app[SERVICE]
        rt = svc.runtime  # this request's configuration, even if a reload swaps it meanwhile
        limit = rt.config.daemon.max_inflight
        if svc.inflight >= limit:
            svc.metrics.rejected("overloaded")
            return front.error(503, "overloaded", f"failoverd is at max_inflight ({limit}); "
                               "retry shortly", "overloaded", headers={"Retry-After": "1"})
        # [clients.<name>] (clients.py): nothing looked up when none is configured
        client = client_of(request, svc)
        if client is not None:
            if rt.config.daemon.access_log:
                request[accesslog.CLIENT] = client.name
            limited = svc.clients.admit(client)
            if limited is not None:
                return client_limited(front, limited)
        svc.inflight += 1
        outcome = Outcome(request_id=request.get(REQUEST_ID))
        if rt.config.daemon.access_log:
            request[accesslog.OUTCOME] = outcome  # for its line (api/accesslog.py)
        current = clients.CURRENT.set(client) if client is not None else None
        status, counted = 500, False
        try:
            response = await serve(request, svc, rt, outcome)
            status = response.status
            return response
        except clients.OverBudget as exc:
            status, counted = 429, True
            return client_limited(front, exc.limited)
        except clients.Forbidden as exc:
            status = 403
            return front.error(403, "permission_denied", exc.message, exc.code, exc.param,
                               client=exc.client)
        except RequestError as exc:
            status = exc.status
            svc.metrics.rejected("bad_input")
            return front.error(exc.status, "invalid_request_error", exc.message, exc.code,
                               exc.param)
        except NoModelAvailable as exc:
            status = 503
            return exhausted(front, svc, exc, outcome)
        except UpstreamError as exc:
            response = failed(front, svc, rt, exc, outcome)
            status = response.status  # as answered (a bad_request without a status is 400)
            return response
        except asyncio.CancelledError:
            status = 499
            svc.metrics.cancelled(outcome.model)  # the client went away (or a stop cut it)
            raise
        finally:
            svc.inflight -= 1
            if client is not None:
                if current is not None:
                    clients.CURRENT.reset(current)
                svc.clients.release(client, status, outcome.cost, counted=counted)

    return handle


def client_limited(front: FrontEnd, limited: clients.Limited) -> web.Response:
    """A client at one of its limits: a 429 in the client's API shape, with Retry-After.
    Rate limits are OpenAI's "requests"/rate_limit_exceeded (Anthropic's rate_limit_error);
    a spending cap is OpenAI's insufficient_quota, which SDKs are told not to retry."""
    headers = {"Retry-After": retry_after_header(limited.retry_after)}
    cost = limited.limit.startswith("max_cost")
    if cost:  # OpenAI's and Anthropic's SDKs obey it: no retries until the period ends
        headers["x-should-retry"] = "false"
    type_ = ("rate_limit" if front is ANTHROPIC  # its rate_limit_error
             else "insufficient_quota" if cost else "requests")
    return front.error(429, type_, limited.message,
                       "insufficient_quota" if cost else "rate_limit_exceeded",
                       headers=headers, client=limited.client, limit=limited.limit)


def handler(front: FrontEnd) -> Handler:
    """A chat endpoint (`front`'s API): plain and streamed completions."""
    async def serve(request: web.Request, svc: Service, rt: Runtime,
                    outcome: Outcome) -> web.StreamResponse:
        raw = await read_json(request, rt.config.daemon.max_body_bytes)
        body = front.canonical(raw)
        pin = pinned(request)
        session = request.headers.get("x-failoverd-session") or front.session_key(raw)
        if session:  # capped once, so events and hooks carry the key the store keeps
            session = normalize_key(session)
        route = svc.route(rt, body, pin, session)
        svc.note_skipped(outcome, route)
        deadline = request_deadline(svc, rt, request, outcome)
        if body.get("stream"):
            return await relay(request, front, svc, rt, body, route, deadline, outcome,
                               session, raw)
        completion = await rt.dispatcher.complete(body, route.candidates, deadline,
                                                  outcome, session, route.needs)
        svc.served(outcome, session, route)
        outcome.cost = svc.usage(outcome.model, completion.body.get("usage"))
        answer = front.answer(completion, outcome.model, outcome.notices, raw)
        return web.Response(body=answer,
                            content_type=JSON, headers=outcome_headers(outcome, route.header))

    return proxied(front, serve)


class ClientStalled(Exception):
    """The streaming client stopped reading for longer than the model's stream_idle_timeout."""


class StreamClient:
    """Writes to a streaming client, bounded in time once the client falls behind.

    A client that stays connected but stops reading would otherwise hold its request (the
    model's concurrency slot, the upstream connection, an in-flight unit) for as long as it
    likes: aiohttp's writes wait for the socket without a limit. A write can only block when
    bytes are already waiting in the transport's buffer (or the chunk is large), and such a
    write gets the model's ``stream_idle_timeout``: the patience the daemon has with a silent
    upstream. A client that keeps up pays one buffer-size check per chunk.
    """

    __slots__ = ("resp", "transport", "limit", "_now")

    def __init__(self, request: web.Request, resp: web.StreamResponse, limit: float) -> None:
        self.resp, self.transport, self.limit = resp, request.transport, limit
        # the fast path's stream writes a chunk with no coroutine while the client keeps up
        self._now: Callable[[bytes], bool] | None = getattr(resp, "write_now", None)

    def write_now(self, data: bytes) -> bool:
        """Writes at once if that cannot wait (see FastStream.write_now): True when done,
        False when `write` is to be awaited."""
        return self._now is not None and len(data) <= 16384 and self._now(data)

    async def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and (transport.get_write_buffer_size() or len(data) > 16384):
            await self._bounded(self.resp.write(data))
        else:
            await self.resp.write(data)

    async def tell(self, data: bytes) -> None:
        """Best effort (an error event): the client may be gone or stalled already."""
        with contextlib.suppress(ConnectionResetError, ClientStalled):
            await self.write(data)

    async def end(self) -> None:
        await self._bounded(self.resp.write_eof())

    async def _bounded(self, write: Awaitable[None]) -> None:
        try:
            with timeout(self.limit):
                await write
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()  # cut: what it has not read is lost either way
            raise ClientStalled from None


def _usage(chunk: Chunk, usage: Any) -> Any:
    """The usage a chunk reports, else the one before: OpenAI-compatible chunks (raw) are
    looked into only when they hold one (not ``"usage": null``, which OpenAI puts in every
    chunk when asked for usage)."""
    raw = chunk.raw
    if raw is None or b'"usage":{' in raw or b'"usage": {' in raw:
        return chunk.data.get("usage") or usage
    return usage


async def relay(request: web.Request, front: FrontEnd, svc: Service, rt: Runtime,
                body: dict[str, Any], route: Route, deadline: float, outcome: Outcome,
                session: str | None, raw: dict[str, Any], *,
                text: bool = False) -> web.StreamResponse:
    """A streamed answer: the first chunk from the candidates (a failover before it is
    invisible but for the headers), then every chunk to the client as it comes, ended by
    an error event if the stream breaks. `text`: a legacy text completion's stream."""
    start: StreamStart = await rt.dispatcher.stream(body, route.candidates, deadline, outcome,
                                                    session, route.needs, text=text)
    svc.note_session(outcome, session, route)  # sticky from the first chunk on
    encoder = front.encoder(outcome.model, raw)
    headers = {**_SSE_HEADERS, **outcome_headers(outcome, route.header)}
    if outcome.request_id is not None:  # the head goes out now (api/drain.py stamps the rest)
        requestid.stamp(headers, outcome.request_id, front is ANTHROPIC)
    opener = request.get(STREAM_OPENER)
    resp = opener.open_stream(headers) if opener is not None else web.StreamResponse(
        headers=headers)
    request[STREAM_RESPONSE] = resp  # so a shutdown cut can end it with an error event
    request[STREAM_ENCODER] = encoder
    client = StreamClient(request, resp, rt.config.models[outcome.model].stream_idle_timeout)
    error: UpstreamError | None = None
    usage = _usage(start.first, None)
    try:
        await resp.prepare(request)
        if outcome.notices:
            start.first.data["failoverd"] = {"notices": outcome.notices}
            start.first.raw = None
        await client.write(encoder.chunk(start.first))
        async for chunk in start.rest:
            data = encoder.chunk(chunk)
            # (empty: a chunk the client is not to get; never written, as an empty chunk
            # of a chunked body would end it)
            if data and not client.write_now(data):
                await client.write(data)
            usage = _usage(chunk, usage)
        await client.write(encoder.end())
    except UpstreamError as exc:
        # after the first chunk a failover is no longer invisible: end with an error event
        error = exc
        logger.warning("stream from %s failed after the first chunk: %s (request %s)",
                       outcome.model, exc.reason, outcome.request_id)
        await client.tell(encoder.error(str(exc.reason), exc.message))
    except (ConnectionResetError, ClientStalled, asyncio.CancelledError) as exc:
        error = UpstreamError(FailureReason.CANCELLED, "client went away", model=outcome.model)
        if usage is not None:  # the answer was made, and is billed, all the same
            outcome.cost = svc.usage(outcome.model, usage)
        if isinstance(exc, asyncio.CancelledError):
            raise
        if isinstance(exc, ClientStalled):
            logger.warning("stream from %s cut: the client read nothing for %gs (request %s)",
                           outcome.model, client.limit, outcome.request_id)
        svc.metrics.cancelled(outcome.model)
        return resp
    except Exception as exc:
        # an upstream chunk the translation did not foresee: end the stream with an error
        # event rather than a broken connection, and count it against the model
        logger.exception("stream from %s could not be translated (request %s)", outcome.model,
                         outcome.request_id)
        error = UpstreamError(FailureReason.INVALID_RESPONSE,
                              f"unusable stream chunk: {type(exc).__name__}",
                              model=outcome.model)
        await client.tell(encoder.error(str(error.reason), error.message))
    finally:
        try:
            aclose = getattr(start.rest, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:  # even if closing is cancelled: the permit (a half-open trial) comes back
            rt.dispatcher.stream_finished(outcome.model, start, error)
    try:
        await client.end()
    except (ConnectionResetError, ClientStalled):
        svc.metrics.cancelled(outcome.model)  # gone just before the end: nothing more to tell
        if usage is not None:
            outcome.cost = svc.usage(outcome.model, usage)
        return resp
    # counted once the stream is over: a stream that broke after its first chunk is no "ok"
    svc.metrics.stream_ended(outcome.model, ok=error is None)
    if error is None or usage is not None:
        outcome.cost = svc.usage(outcome.model, usage)
    return resp


chat_completions = handler(OPENAI)
messages = handler(ANTHROPIC)
responses = handler(RESPONSES)
