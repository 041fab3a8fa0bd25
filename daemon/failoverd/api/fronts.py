"""The client-facing API shapes: OpenAI Chat Completions, Anthropic Messages and OpenAI
Responses.

A front end turns the client's body into the canonical request, and canonical answers,
stream chunks and errors back into the client's shape. The proxy handler (api/proxy.py) does
everything else the same way for all of them.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson
from aiohttp import web

from failoverd.api.body import validate_chat
from failoverd.api.replies import JSON, openai_error
from failoverd.failures import FailureReason
from failoverd.providers.base import Chunk, Completion
from failoverd.translate.anthropic import (
    AnthropicStreamEncoder,
    anthropic_error_body,
    anthropic_error_type,
    anthropic_to_canonical,
    canonical_to_anthropic_response,
)
from failoverd.translate.responses_front import responses_to_canonical
from failoverd.translate.responses_response import canonical_to_responses, response_echo
from failoverd.translate.responses_stream import ResponsesStreamEncoder


class StreamEncoder(Protocol):
    def chunk(self, chunk: Chunk) -> bytes: ...
    def end(self) -> bytes: ...
    def error(self, type_: str, message: str) -> bytes: ...


class FrontEnd(Protocol):
    name: str

    def canonical(self, body: dict[str, Any]) -> dict[str, Any]:
        """The canonical request; raises RequestError / TranslationError naming the field."""
        ...

    def session_key(self, body: dict[str, Any]) -> str | None: ...

    def answer(self, completion: Completion, model_id: str, notices: list[str],
               request: dict[str, Any] | None = None) -> bytes:
        """The client's answer; `request` is the client's own body (settings to repeat)."""
        ...

    def encoder(self, model_id: str, request: dict[str, Any] | None = None
                ) -> StreamEncoder: ...

    def error(self, status: int, type_: str, message: str, code: str | None = None,
              param: str | None = None, headers: dict[str, str] | None = None,
              **extra: Any) -> web.Response: ...


class _OpenAIStream:
    __slots__ = ()

    def chunk(self, chunk: Chunk) -> bytes:
        data = chunk.to_bytes()
        if b"\n" in data or b"\r" in data:
            # an upstream event sent over several data: lines (valid SSE) arrives joined by
            # newlines; passed through as it is, each line after the first would lose its
            # "data: " prefix and break the client's parsing
            data = orjson.dumps(chunk.data)
        return b"data: " + data + b"\n\n"

    def end(self) -> bytes:
        return b"data: [DONE]\n\n"

    def error(self, type_: str, message: str) -> bytes:
        payload = {"error": {"message": message, "type": type_, "param": None, "code": type_}}
        return b"data: " + orjson.dumps(payload) + b"\n\n"


class _OpenAIStreamWithoutUsage(_OpenAIStream):
    """For a client that did not ask for ``stream_options.include_usage``: a usage-only chunk
    (choices empty; what an OpenAI-compatible upstream with ``stream_usage = true`` is asked
    for, so that failoverd_tokens_total counts the stream) is not passed on."""

    __slots__ = ()

    def chunk(self, chunk: Chunk) -> bytes:
        raw = chunk.raw
        if (raw is None or b'"choices":[]' in raw or b'"choices": []' in raw) \
                and chunk.data.get("choices") == [] and chunk.data.get("usage") is not None:
            return b""
        return super().chunk(chunk)


_OPENAI_STREAM = _OpenAIStream()
_OPENAI_STREAM_WITHOUT_USAGE = _OpenAIStreamWithoutUsage()


def _asked_for_usage(request: dict[str, Any] | None) -> bool:
    options = request.get("stream_options") if isinstance(request, dict) else None
    return isinstance(options, dict) and bool(options.get("include_usage"))


class OpenAIFront:
    """OpenAI Chat Completions: already canonical, so answers pass through byte for byte."""

    name = "openai"

    def canonical(self, body: dict[str, Any]) -> dict[str, Any]:
        validate_chat(body)
        return body

    def session_key(self, body: dict[str, Any]) -> str | None:
        user = body.get("user")
        return user if isinstance(user, str) and user else None

    def answer(self, completion: Completion, model_id: str, notices: list[str],
               request: dict[str, Any] | None = None) -> bytes:
        if notices:
            # hook messages travel in the body too, for clients that never see headers
            completion.body["failoverd"] = {"notices": notices}
            completion.raw = None
        return completion.to_bytes()

    def encoder(self, model_id: str, request: dict[str, Any] | None = None
                ) -> StreamEncoder:
        return _OPENAI_STREAM if _asked_for_usage(request) else _OPENAI_STREAM_WITHOUT_USAGE

    def error(self, status: int, type_: str, message: str, code: str | None = None,
              param: str | None = None, headers: dict[str, str] | None = None,
              **extra: Any) -> web.Response:
        return openai_error(status, message, type_, code, param, headers, **extra)


class _AnthropicStream:
    __slots__ = ("_encoder",)

    def __init__(self, model_id: str) -> None:
        self._encoder = AnthropicStreamEncoder(model_id)

    def chunk(self, chunk: Chunk) -> bytes:
        return self._encoder.feed(chunk.data)

    def end(self) -> bytes:
        return self._encoder.finish()

    def error(self, type_: str, message: str) -> bytes:
        # Anthropic clients act on Anthropic's error types (overloaded_error, api_error, ...)
        return self._encoder.error_event(_anthropic_type(type_, 502), message)


class AnthropicFront:
    """Anthropic Messages, translated to and from the canonical form."""

    name = "anthropic"

    def canonical(self, body: dict[str, Any]) -> dict[str, Any]:
        canonical = anthropic_to_canonical(body)
        validate_chat(canonical)
        return canonical

    def session_key(self, body: dict[str, Any]) -> str | None:
        meta = body.get("metadata")
        user = meta.get("user_id") if isinstance(meta, dict) else None
        return user if isinstance(user, str) and user else None

    def answer(self, completion: Completion, model_id: str, notices: list[str],
               request: dict[str, Any] | None = None) -> bytes:
        body = canonical_to_anthropic_response(completion.body, model_id)
        if notices:
            body["failoverd"] = {"notices": notices}
        return orjson.dumps(body)

    def encoder(self, model_id: str, request: dict[str, Any] | None = None
                ) -> StreamEncoder:
        return _AnthropicStream(model_id)

    def error(self, status: int, type_: str, message: str, code: str | None = None,
              param: str | None = None, headers: dict[str, str] | None = None,
              **extra: Any) -> web.Response:
        body = anthropic_error_body(_anthropic_type(type_, status), message)
        body["error"].update(extra)
        if param:
            body["error"]["param"] = param
        return web.Response(body=orjson.dumps(body), status=status, content_type=JSON,
                            headers=headers)


_ANTHROPIC_TYPES = {
    "invalid_request_error": "invalid_request_error", "overloaded": "overloaded_error",
    "permission_denied": "permission_error", "authentication_error": "authentication_error",
    "no_model_available": "no_model_available",
}


# Anthropic names a bad request by its status: 404 not_found_error, 413 request_too_large
_ANTHROPIC_REQUEST_TYPES = {404: "not_found_error", 413: "request_too_large"}


def _anthropic_type(type_: str, status: int) -> str:
    if type_ == "invalid_request_error":
        return _ANTHROPIC_REQUEST_TYPES.get(status, type_)
    if type_ in _ANTHROPIC_TYPES:
        return _ANTHROPIC_TYPES[type_]
    try:
        return anthropic_error_type(FailureReason(type_))
    except ValueError:
        return "api_error" if status >= 500 else "invalid_request_error"


class _ResponsesStream:
    __slots__ = ("_encoder",)

    def __init__(self, model_id: str, request: dict[str, Any] | None) -> None:
        self._encoder = ResponsesStreamEncoder(model_id, response_echo(request))

    def chunk(self, chunk: Chunk) -> bytes:
        return self._encoder.feed(chunk.data)

    def end(self) -> bytes:
        return self._encoder.finish()

    def error(self, type_: str, message: str) -> bytes:
        return self._encoder.error_event(type_, message)


class ResponsesFront:
    """OpenAI Responses API, served statelessly (failoverd.translate.responses_front says
    what is refused and why); errors are in OpenAI's shape."""

    name = "responses"

    def canonical(self, body: dict[str, Any]) -> dict[str, Any]:
        canonical = responses_to_canonical(body)
        validate_chat(canonical)
        return canonical

    def session_key(self, body: dict[str, Any]) -> str | None:
        for key in ("user", "safety_identifier"):
            user = body.get(key)
            if isinstance(user, str) and user:
                return user
        return None

    def answer(self, completion: Completion, model_id: str, notices: list[str],
               request: dict[str, Any] | None = None) -> bytes:
        body = canonical_to_responses(completion.body, model_id, response_echo(request))
        if notices:
            body["failoverd"] = {"notices": notices}
        return orjson.dumps(body)

    def encoder(self, model_id: str, request: dict[str, Any] | None = None
                ) -> StreamEncoder:
        return _ResponsesStream(model_id, request)

    def error(self, status: int, type_: str, message: str, code: str | None = None,
              param: str | None = None, headers: dict[str, str] | None = None,
              **extra: Any) -> web.Response:
        return openai_error(status, message, type_, code, param, headers, **extra)


OPENAI = OpenAIFront()
ANTHROPIC = AnthropicFront()
RESPONSES = ResponsesFront()
