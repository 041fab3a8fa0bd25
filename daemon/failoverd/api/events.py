"""GET /v1/events: server-sent events of the event bus for local clients without MQTT."""

from __future__ import annotations

import asyncio

from aiohttp import web

from failoverd.api.service import SERVICE
from failoverd.events import Event

KEEPALIVE_SECONDS = 15.0
SUBSCRIPTION_SIZE = 1000


def sse(event: Event) -> bytes:
    return (f"id: {event.id}\nevent: {event.type}\n".encode() + b"data: " + event.to_json()
            + b"\n\n")


async def events(request: web.Request) -> web.StreamResponse:
    """Streams events as they happen. `?recent=1` sends the recent ring and ends;
    `Last-Event-ID` (or `?after=`) replays what a reconnecting client missed."""
    svc = request.app[SERVICE]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    after = request.headers.get("Last-Event-ID") or request.query.get("after")
    if request.query.get("recent") in ("1", "true"):
        for event in svc.bus.recent(after):
            await resp.write(sse(event))
        await resp.write_eof()
        return resp
    sub = svc.bus.subscribe(SUBSCRIPTION_SIZE)
    svc.streams.add(sub)
    try:
        if after:
            for event in svc.bus.recent(after):
                await resp.write(sse(event))
        await resp.write(b": connected\n\n")
        it = sub.__aiter__()
        while True:
            try:
                event = await asyncio.wait_for(it.__anext__(), KEEPALIVE_SECONDS)
            except TimeoutError:
                await resp.write(b": keepalive\n\n")
                continue
            except StopAsyncIteration:
                break
            await resp.write(sse(event))
    except ConnectionResetError:
        pass
    finally:
        svc.streams.discard(sub)
        if sub.dropped:
            svc.metrics.events_dropped += sub.dropped
        sub.close()
    return resp
