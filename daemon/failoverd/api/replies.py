"""Responses in the client's API shape: headers, errors, the all-candidates-failed 503."""

from __future__ import annotations

import math
from typing import Any

import orjson
from aiohttp import web

from failoverd.dispatch import Outcome
from failoverd.errors import NoModelAvailable, RequestError, UpstreamError

JSON = "application/json"


def json_response(data: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=JSON,
                        headers=headers)


def outcome_headers(outcome: Outcome, route: str | None = None) -> dict[str, str]:
    headers = {"x-failoverd-model": outcome.model,
               "x-failoverd-attempts": str(outcome.upstream_attempts)}
    if route:
        headers["x-failoverd-route"] = route
    if outcome.failovers:
        headers["x-failoverd-failover"] = ",".join(outcome.failovers)
    if outcome.notices:
        # header values must stay on one line and in latin-1
        text = " | ".join(outcome.notices).replace("\r", " ").replace("\n", " ")
        headers["x-failoverd-notice"] = text.encode("latin-1", "replace").decode("latin-1")
    return headers


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


def no_model_available(exc: NoModelAvailable, outcome: Outcome) -> web.Response:
    headers = outcome_headers(outcome)
    headers.pop("x-failoverd-model", None)
    headers["Retry-After"] = retry_after_header(exc.retry_after)
    return openai_error(
        503, f"no model available: {len(exc.attempts)} candidate(s) failed or were skipped",
        "no_model_available", "no_model_available", headers=headers,
        attempts=[a.as_dict() for a in exc.attempts])


def upstream_passthrough(exc: UpstreamError, outcome: Outcome) -> web.Response:
    """A bad_request goes back to the client as the upstream said it."""
    headers = outcome_headers(outcome)
    if exc.body:
        return web.Response(body=exc.body, status=exc.status or 400, headers=headers,
                            content_type=exc.content_type.split(";")[0] or JSON)
    return openai_error(exc.status or 400, exc.message, "invalid_request_error",
                        str(exc.reason), headers=headers)


def overloaded(limit: int) -> web.Response:
    return openai_error(503, f"failoverd is at max_inflight ({limit}); retry shortly",
                        "overloaded", "overloaded", headers={"Retry-After": "1"})
