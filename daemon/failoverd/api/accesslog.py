"""The access log (daemon.access_log): one line per proxied request, on the logger
``failoverd.access``; with log_format = "json" its fields are the line's ``request``
object."""

from __future__ import annotations

import logging

from aiohttp import web

from failoverd.dispatch import Outcome
from failoverd.listen import peer_uid

ACCESS_LOG = logging.getLogger("failoverd.access")


def log_request(request: web.Request, seconds: float, response: web.StreamResponse | None,
                outcome: Outcome) -> None:
    """One access log line for a proxied request (daemon.access_log): who asked what, the
    answer's status (499: the client went away first), the model that served, the upstream
    attempts and failover hops, and how long it took. Never the prompt, nor a key."""
    uid = peer_uid(request.transport)
    fields = {
        "method": request.method, "path": request.path,
        "status": response.status if response is not None else 499,
        "model": outcome.model or None, "attempts": outcome.upstream_attempts,
        "failover": ",".join(outcome.failovers) or None,
        "ms": round(seconds * 1000, 1), "uid": uid,
    }
    ACCESS_LOG.info("%s %s %s model=%s attempts=%d failover=%s %.1fms uid=%s",
                    fields["method"], fields["path"], fields["status"], fields["model"] or "-",
                    fields["attempts"], fields["failover"] or "-", fields["ms"],
                    "-" if uid is None else uid, extra={"access": fields})
