"""Request ids: one per proxied request, and the ids the upstreams gave its attempts.

A request keeps the client's ``x-request-id`` when it is sane (1-128 visible ASCII
characters: no space, no control character, nothing past 0x7e), else gets one made here:
a random per-process prefix and a counter (``<16 hex>-<counter in hex>``), unique across
restarts and hosts with no system call per request. The id goes back in the answer's
``x-request-id`` (and ``request-id`` on /v1/messages, where Anthropic's SDKs read it:
`stamp`) and into the access log line and the events the request causes.

Each upstream attempt records the id its provider returned in the answer's head (OpenAI and
compatible servers and Azure ``x-request-id``, Anthropic ``request-id``, Bedrock
``x-amzn-requestid``, Azure API Management ``apim-request-id``; Gemini, Vertex AI and
Ollama document none, and none is made up; one that is not sane by the client's rule is
dropped, as it would go into the text access log): the dispatcher opens a `Seen` per attempt
(`watch`) and the HTTP edge (providers/http.py) fills it (`upstream`) from the head of every
answer, 200 or not. A context variable carries it, so no adapter passes it along; a hedged
lane runs in a task of its own, with its own.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import re
from collections.abc import MutableMapping
from typing import Protocol

from aiohttp import web

HEADER = "x-request-id"
# the header Anthropic's SDKs read as a response's request id (`_request_id`,
# APIStatusError.request_id, as Anthropic's API sends it): /v1/messages answers have it too
ANTHROPIC_HEADER = "request-id"
MAX_LENGTH = 128
# the request's id, set in front of every proxied request (api/drain.py)
REQUEST_ID = web.RequestKey("request_id", str)
# where providers put the id of an answer, in the order they are looked for (Azure OpenAI
# sends both x-request-id and apim-request-id: x-request-id is taken, the header OpenAI's
# SDKs read as a response's request id)
UPSTREAM_HEADERS = ("x-request-id", "request-id", "x-amzn-requestid", "apim-request-id")
# a head's x-request-id field (for the answers the fast path makes before a handler runs)
_HEAD_FIELD = re.compile(rb"\r\nx-request-id:[ \t]*([^\r\n]*)", re.IGNORECASE)

_prefix = ""
_counter = itertools.count(1)


def _reseed() -> None:
    """A new prefix and counter: at import, and in a forked child (which must not repeat
    its parent's ids)."""
    global _prefix, _counter
    _prefix = os.urandom(8).hex() + "-"
    _counter = itertools.count(1)


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new() -> str:
    """An id made here: the process's random prefix and the next number."""
    return f"{_prefix}{next(_counter):x}"


def sane(value: str) -> bool:
    """Whether a client's id is kept: 1-128 visible ASCII characters."""
    return (0 < len(value) <= MAX_LENGTH and value.isascii() and value.isprintable()
            and " " not in value)


def of(client: str | None) -> str:
    """The request's id: the client's `x-request-id` when sane, else a new one."""
    if client is not None and sane(client):
        return client
    return new()


def stamp(headers: MutableMapping[str, str], rid: str, anthropic: bool) -> None:
    """Puts the request's id on an answer: in x-request-id, and in request-id too for an
    Anthropic-shaped one (/v1/messages)."""
    headers[HEADER] = rid
    if anthropic:
        headers[ANTHROPIC_HEADER] = rid


def from_head(data: bytes) -> str:
    """The id of a request known only by its raw head (a body that stalled, a request
    still arriving at the drain): its x-request-id if sane, else a new one."""
    head = data[:data.find(b"\r\n\r\n") + 2] if b"\r\n\r\n" in data else data
    found = _HEAD_FIELD.search(head)
    return of(found.group(1).decode("latin-1").rstrip(" \t") if found else None)


class _Headers(Protocol):
    def first(self, names: tuple[str, ...]) -> str | None: ...


def upstream_id(headers: _Headers) -> str | None:
    """The request id an upstream's answer carries (capped at 128 characters), or None:
    also for one that is not a sane id (a space or a control character would let an
    upstream forge fields of the text access log line that shows it)."""
    value = headers.first(UPSTREAM_HEADERS)
    if value is None:
        return None
    value = value[:MAX_LENGTH]
    return value if sane(value) else None


class Seen:
    """The upstream request id of one attempt, once its answer's head has arrived."""

    __slots__ = ("id",)

    def __init__(self) -> None:
        self.id: str | None = None


_ATTEMPT: contextvars.ContextVar[Seen | None] = contextvars.ContextVar(
    "failoverd_upstream_request_id", default=None)


def watch() -> Seen:
    """A new attempt in this task: what `upstream` records from now on goes to the Seen
    returned (a hedged lane's task, with a context of its own, has its own)."""
    seen = Seen()
    _ATTEMPT.set(seen)
    return seen


def upstream(headers: _Headers) -> None:
    """Records the id of an upstream answer's head for the attempt being made (if any:
    a probe's call has none)."""
    seen = _ATTEMPT.get()
    if seen is not None:
        seen.id = upstream_id(headers)
