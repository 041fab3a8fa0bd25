"""Responses in the client's API shape: headers, errors, the all-candidates-failed 503."""

from __future__ import annotations

import math
import re
from typing import Any

import orjson
from aiohttp import web

from failoverd.dispatch import Outcome
from failoverd.errors import RequestError

JSON = "application/json"
# Clients cap a header line (aiohttp 8190 bytes, Node 16 KiB): a longer notice would make them
# drop an answer that was served. The body carries the notices in full.
MAX_NOTICE_HEADER = 4000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def json_response(data: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON,
                        headers=headers)


def header_value(text: str) -> str:
    """`text` fit for a header value: aiohttp refuses to send control characters (CR, LF,
    NUL, ESC, ...), and the answer would be lost after it was served."""
    return text if text.isprintable() else _CONTROL.sub(" ", text)  # the common case first


def outcome_headers(outcome: Outcome, route: str | None = None) -> dict[str, str]:
    headers = {"x-failoverd-attempts": str(outcome.upstream_attempts)}
    if outcome.model:  # nothing served (an error answer): no model to name
        headers["x-failoverd-model"] = header_value(outcome.model)
    if route:
        headers["x-failoverd-route"] = route
    if outcome.failovers:
        headers["x-failoverd-failover"] = header_value(",".join(outcome.failovers))
    if outcome.hedges:  # hedged attempts (hedge.py)
        headers["x-failoverd-hedge"] = header_value(",".join(outcome.hedges))
    if outcome.cost > 0:  # a non-streamed answer at a priced model: what it cost
        headers["x-failoverd-cost"] = usd_text(outcome.cost)
    if outcome.notices:
        # header values must stay on one line and in latin-1 (hook messages may be anything)
        text = header_value(" | ".join(outcome.notices))
        if len(text) > MAX_NOTICE_HEADER:
            text = text[:MAX_NOTICE_HEADER - 3] + "..."
        headers["x-failoverd-notice"] = text.encode("latin-1", "replace").decode("latin-1")
    return headers


def usd_text(amount: float) -> str:
    """USD in plain decimals to the nano-dollar, no trailing zeros ("0.0015", "2.5")."""
    return f"{amount:.9f}".rstrip("0").rstrip(".") or "0"


def openai_error(status: int, message: str, type_: str, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None,
                 **extra: Any) -> web.Response:
    error: dict[str, Any] = {"message": message, "type": type_, "param": param, "code": code}
    error.update(extra)
    return json_response({"error": error}, status, headers)


def request_error(exc: RequestError) -> web.Response:
    return openai_error(exc.status, exc.message, "invalid_request_error", exc.code, exc.param)


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))

