"""Reading and validating client request bodies: every problem named, nothing guessed."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import StreamReader, web

from failoverd.api.service import SERVICE
from failoverd.errors import RequestError
from failoverd.timeouts import timeout

_ORJSON_DEPTH = 254  # orjson.dumps' recursion limit
# what a client may send: headroom for the levels a translation adds (Gemini's tools)
MAX_DEPTH = 200
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# request fields checked for their JSON type, in this order
_TYPED: tuple[tuple[str, tuple[type, ...], str], ...] = (
    ("stream", (bool,), "a boolean"), ("max_tokens", (int,), "an integer"),
    ("max_completion_tokens", (int,), "an integer"), ("n", (int,), "an integer"),
    ("temperature", (int, float), "a number"), ("tools", (list,), "an array"))
# The body as JSON, when whoever built the request has parsed it already (api/fastpath.py
# parses it to see whether the request streams): read_json does not parse it twice.
PRELOADED = web.RequestKey("preloaded_body", dict[str, Any])


async def read_bytes(request: web.Request, max_bytes: int,
                     expected: str = "a JSON object") -> bytes:
    """The whole request body; 413 past `max_bytes` (checked as it arrives), 408 when it
    stalls, 400 when there is none (naming what was `expected`)."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise RequestError(f"request body of {length} bytes exceeds max_body_bytes "
                           f"({max_bytes})", status=413, code="request_too_large")
    content = request.content
    if content.is_eof():
        # the whole body has arrived (the common case of a small one): take it as it is,
        # without the chunked reader's coroutines
        raw = content.read_nowait()
        if len(raw) > max_bytes:
            raise RequestError(f"request body exceeds max_body_bytes ({max_bytes})",
                               status=413, code="request_too_large")
    else:
        raw = await _read_capped(content, max_bytes, request.app[SERVICE].client_idle_timeout)
    if not raw:
        raise RequestError(f"request body is empty; expected {expected}")
    return raw


async def read_json(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object; 413 past `max_bytes`, 400 for anything not an object."""
    raw = await read_bytes(request, max_bytes)
    body: Any = request.get(PRELOADED)
    if body is None:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError(f"request body must be a JSON object, got {_json_type(body)}")
    # orjson reads 1024 levels of nesting but writes only 254: a body in between would fail
    # at every candidate's adapter, as a 503. Only a body with that many brackets can be so
    # deep, so most bodies are never serialised here.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        nested: Any = body
        for _ in range(_ORJSON_DEPTH - MAX_DEPTH):  # fails beyond MAX_DEPTH, not 254
            nested = [nested]
        try:
            orjson.dumps(nested)
        except orjson.JSONEncodeError:
            raise RequestError(f"request body nests JSON deeper than {MAX_DEPTH} levels") \
                from None
    return body


async def _read_capped(content: StreamReader, max_bytes: int, idle: float) -> bytes:
    # read() returns what is buffered, not the whole body: collect it, with the cap enforced
    # as it arrives (a chunked body has no Content-Length to check up front), and a body
    # that stalls for `idle` seconds ends the request (aiohttp's server would wait on it, a
    # file descriptor and a task held, until the stop)
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            with timeout(idle):
                chunk = await content.readany()
        except TimeoutError:
            raise stalled_body(idle) from None
        if not chunk:
            break
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(f"request body exceeds max_body_bytes ({max_bytes})",
                               status=413, code="request_too_large")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def stalled_body(idle: float) -> RequestError:
    """The 408 for a request body that stopped arriving for `idle` seconds (both servers)."""
    return RequestError(f"request body stalled: nothing arrived for {idle:g} s", status=408,
                        code="request_timeout")


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", int: "a number",
            float: "a number", bool: "a boolean", type(None): "null"}.get(type(value), "?")


def _expect(body: dict[str, Any], key: str, kinds: tuple[type, ...], what: str) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise RequestError(f"'{key}' must be {what}, got {_json_type(value)}", param=key)


def _check_part(part: Any, where: str) -> None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise RequestError(f"'{where}' must be an object with a 'type'", param=where)
    kind = part["type"]
    if kind == "text" and not isinstance(part.get("text"), str):
        raise RequestError(f"'{where}.text' must be a string, got {_json_type(part.get('text'))}",
                           param=f"{where}.text")
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else None
        if not isinstance(url, str):
            raise RequestError(f"'{where}.image_url.url' must be a string",
                               param=f"{where}.image_url.url")


def _check_message(message: Any, i: int) -> None:
    """Every check of messages[i], in order: raises RequestError for the first problem."""
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise RequestError(f"'{where}' must be an object, got {_json_type(message)}",
                           param=where)
    role = message.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise RequestError(f"'{where}.role' must be one of {', '.join(sorted(_ROLES))}; "
                           f"got {role!r}", param=f"{where}.role")
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        raise RequestError(f"'{where}.content' must be a string or an array of parts, "
                           f"got {_json_type(content)}", param=f"{where}.content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            _check_part(part, f"{where}.content[{j}]")
    calls = message.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise RequestError(f"'{where}.tool_calls' must be an array, got "
                               f"{_json_type(calls)}", param=f"{where}.tool_calls")
        for j, call in enumerate(calls):
            if not isinstance(call, dict) or not isinstance(call.get("function", {}), dict):
                raise RequestError(f"'{where}.tool_calls[{j}]' must be an object whose "
                                   "'function' is an object",
                                   param=f"{where}.tool_calls[{j}]")


def validate_chat(body: dict[str, Any]) -> None:
    """Checks an OpenAI Chat Completions request enough to route it safely."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(f"'model' must be a string, got {_json_type(model)}", param="model")
    messages = body.get("messages")
    if messages is None:
        raise RequestError("'messages' is required", param="messages")
    if not isinstance(messages, list):
        raise RequestError(f"'messages' must be an array, got {_json_type(messages)}",
                           param="messages")
    if not messages:
        raise RequestError("'messages' must not be empty", param="messages")
    for i, message in enumerate(messages):
        # the common message (a known role, text content, no tool calls) passes at a glance;
        # any other gets every check, in order, so the first problem is the one named
        if isinstance(message, dict):
            role = message.get("role")
            content = message.get("content")
            if isinstance(role, str) and role in _ROLES \
                    and (content is None or isinstance(content, str)) \
                    and message.get("tool_calls") is None:
                continue
        _check_message(message, i)
    for key in ("stream_options", "response_format"):
        if body.get(key) is not None:
            _expect(body, key, (dict,), "an object")
    fmt = body.get("response_format")
    if isinstance(fmt, dict):
        if not isinstance(fmt.get("type"), str):
            raise RequestError("'response_format.type' must be a string",
                               param="response_format.type")
        if fmt.get("json_schema") is not None and not isinstance(fmt["json_schema"], dict):
            raise RequestError("'response_format.json_schema' must be an object",
                               param="response_format.json_schema")
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, str) and not (
            isinstance(choice, dict) and all(isinstance(v, dict) for k, v in choice.items()
                                              if k in ("function", "allowed_tools", "custom"))):
        raise RequestError("'tool_choice' must be a string or an object whose 'function' is "
                           "an object", param="tool_choice")
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and all(isinstance(x, str) for x in stop)):
        raise RequestError(f"'stop' must be a string or an array of strings, got "
                           f"{_json_type(stop)}", param="stop")
    for key, kinds, what in _TYPED:
        if body.get(key) is not None:
            _expect(body, key, kinds, what)
    for i, tool in enumerate(body.get("tools") or ()):
        # every provider refuses these; caught here they are a 400, not a 503 naming each
        # candidate's adapter
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or not isinstance(tool.get("type", ""), str) or (
                "function" in tool and not (isinstance(fn, dict)
                                            and isinstance(fn.get("name"), str))):
            raise RequestError(f"'tools[{i}]' must be an object with a string 'type', whose "
                               "'function' is an object with a string 'name'",
                               param=f"tools[{i}]")
    _expect(body, "user", (str,), "a string")
    for key in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise RequestError(f"'{key}' must be at least 1, got {value}", param=key)
