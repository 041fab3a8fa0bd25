"""The access log (daemon.access_log): one line per proxied request, on the logger
``failoverd.access``; with log_format = "json" its fields are the line's ``request``
object.

Written around the access guard and the drain tracking (api/drain.py), so every way a
proxied request ends has its line: served, refused by failoverd (bad input, overloaded, no
model), refused by the access guard (401/403), cut by a stop (503), left by its client (499),
failed inside failoverd (500); and the fast path's 408 for a body that stalled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from failoverd.dispatch import Outcome
from failoverd.listen import peer_uid
from failoverd.requestid import REQUEST_ID

ACCESS_LOG = logging.getLogger("failoverd.access")
# the request's outcome (model, attempts, failover hops), left by the proxy handler
OUTCOME = web.RequestKey("access_outcome", Outcome)
# the [clients.<name>] the request came from (clients.py), left by the proxy handler
CLIENT = web.RequestKey("access_client", str)
PATHS = frozenset({
    "/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/completions",
    "/v1/embeddings", "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/audio/speech",
})


def logs(path: str) -> bool:
    """Whether a request to `path` gets a line (the proxied endpoints)."""
    return path.partition("?")[0] in PATHS and ACCESS_LOG.isEnabledFor(logging.INFO)


async def around(request: web.Request,
                 handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                 ) -> web.StreamResponse:
    """Runs `handler` and writes the request's line when it ends, however it ends."""
    started = time.perf_counter()
    uid = peer_uid(request.transport)  # now: a client that leaves takes its socket along
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = 499  # nginx's "client closed request"
        raise
    finally:
        write(request.method, request.path, status, request.get(OUTCOME),
              time.perf_counter() - started, uid, request.get(REQUEST_ID),
              request.get(CLIENT))


def write(method: str, path: str, status: int, outcome: Outcome | None, seconds: float,
          uid: int | None, request_id: str | None = None, client: str | None = None) -> None:
    """One line: who asked what, the answer's status, the model that served, the upstream
    attempts, failover hops and hedges, the request's id and its serving upstream's, how
    long it took. Never the prompt, a query, nor a key."""
    fields: dict[str, Any] = {
        "method": method, "path": path.partition("?")[0], "status": status,
        "model": (outcome.model or None) if outcome is not None else None,
        "attempts": outcome.upstream_attempts if outcome is not None else 0,
        "failover": (",".join(outcome.failovers) or None) if outcome is not None else None,
        "ms": round(seconds * 1000, 1), "uid": uid,
        # what the answer cost (USD) at the serving model's prices; null without them
        "cost_usd": round(outcome.cost, 9) if outcome is not None and outcome.cost else None,
        # its hedges (x-failoverd-hedge: `from>to:outcome`, hedge.py); null when none
        "hedge": (",".join(outcome.hedges) or None) if outcome is not None else None,
        # the request's id (x-request-id, requestid.py) and the one the upstream gave the
        # answer the client got: the serving attempt's, or an upstream error passed on
        # (null: no such answer, or its upstream sent no sane id)
        "request_id": request_id,
        "upstream_request_id": outcome.upstream_request_id if outcome is not None else None,
        "client": client,  # its [clients.<name>]; null: a peer that matches none
    }
    # a hedge and an upstream id only on the lines that have one: the others keep their shape
    upstream = fields["upstream_request_id"]
    ACCESS_LOG.info("%s %s %s model=%s attempts=%d failover=%s%s rid=%s%s %.1fms uid=%s%s",
                    fields["method"], fields["path"], fields["status"], fields["model"] or "-",
                    fields["attempts"], fields["failover"] or "-",
                    f" hedge={fields['hedge']}" if fields["hedge"] else "",
                    request_id or "-", f" upstream_rid={upstream}" if upstream else "",
                    fields["ms"], "-" if uid is None else uid,
                    f" client={client}" if client else "", extra={"access": fields})
