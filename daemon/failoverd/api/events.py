"""GET /v1/events: server-sent events of the event bus for local clients without MQTT."""

from __future__ import annotations

import asyncio

from aiohttp import web

from failoverd.api.replies import openai_error
from failoverd.api.service import SERVICE
from failoverd.events import Event, Subscription

KEEPALIVE_SECONDS = 15.0
# handler_cancellation (the supervisor turns it on) cancels this handler once aiohttp sees the
# connection lost; a GET has no body to tell us more, so the transport is also looked at this
# often: a departed client's subscription is released promptly whichever notices first, never
# only at the next failed keepalive write.
DISCONNECT_POLL_SECONDS = 0.5
SUBSCRIPTION_SIZE = 1000
_RECENT = ("1", "true", "yes")
_LIVE = ("", "0", "false", "no")


def sse(event: Event) -> bytes:
    """One event in text/event-stream framing: its id (for Last-Event-ID), type and JSON."""
    return (f"id: {event.id}\nevent: {event.type}\n".encode() + b"data: " + event.to_json()
            + b"\n\n")


class EventStream:
    """One live /v1/events client, as ``Service.streams`` holds it (closed on shutdown)."""

    def __init__(self, sub: Subscription, request: web.Request) -> None:
        self.sub = sub
        self._request = request

    @property
    def dropped(self) -> int:
        """Events this client lost for reading too slowly."""
        return self.sub.dropped

    def close(self) -> None:
        """Ends the stream: at once if it waits for events; a client that left bytes unread
        would keep its handler in a write, so its connection is cut."""
        self.sub.close()
        transport = self._request.transport
        if transport is not None and transport.get_write_buffer_size():
            transport.abort()


async def events(request: web.Request) -> web.StreamResponse:
    """Streams events as they happen. `?recent=1` sends the recent ring and ends;
    `Last-Event-ID` (or `?after=`) replays what a reconnecting client missed."""
    svc = request.app[SERVICE]
    recent = request.query.get("recent", "").strip().lower()
    if recent not in _RECENT and recent not in _LIVE:
        # an unrecognised value streamed live, and a script that asked for the ring waited
        # for an end that never comes
        return openai_error(400, f"'recent' must be 1 (the recent events, then the end) or 0 "
                            f"(the live stream), got {request.query['recent']!r}",
                            "invalid_request_error", "invalid_request_error", param="recent")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    after = request.headers.get("Last-Event-ID") or request.query.get("after")
    if recent in _RECENT:
        for event in svc.bus.recent(after):
            await resp.write(sse(event))
        await resp.write_eof()
        return resp
    sub = svc.bus.subscribe(SUBSCRIPTION_SIZE)
    stream = EventStream(sub, request)
    svc.streams.add(stream)
    try:
        if after:
            for event in svc.bus.recent(after):
                await resp.write(sse(event))
        await resp.write(b": connected\n\n")
        loop = asyncio.get_running_loop()
        last_write = loop.time()
        it = sub.__aiter__()
        while not _client_gone(request):
            try:
                event = await asyncio.wait_for(it.__anext__(), DISCONNECT_POLL_SECONDS)
            except TimeoutError:
                if loop.time() - last_write >= KEEPALIVE_SECONDS:
                    await resp.write(b": keepalive\n\n")
                    last_write = loop.time()
                continue
            except StopAsyncIteration:
                break
            await resp.write(sse(event))
            last_write = loop.time()
    except ConnectionResetError:
        pass
    finally:
        svc.streams.discard(stream)  # what it lost stays counted by the bus
        sub.close()
    return resp


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()
