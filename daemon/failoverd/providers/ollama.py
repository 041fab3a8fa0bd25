"""Ollama native adapter (`/api/chat` with NDJSON streaming, `/api/tags` for probes).

Requests and answers are translated by failoverd.translate.ollama; this module is the HTTP
edge. Ollama's errors are `{"error": "<text>"}`: 404 for a model that was never pulled, 503
"server busy" when its request queue is full, 500 for load failures (out of memory, ...);
during a stream an error arrives as one more NDJSON line.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from failoverd.config import ModelConfig, ProbeKind, ProviderConfig
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import HttpClient, Response
from failoverd.providers.base import AttemptLimits, Chunk, Completion, Lacking, ends_in_prefill
from failoverd.providers.http import (
    classify,
    classify_in_band,
    fetch,
    finish_stream,
    json_or_none,
    lines,
    open_stream,
    parse_retry_after,
    probe_get,
    probe_limits,
    read_limited,
    request_headers,
    upstream_error,
)
from failoverd.translate import completions, embeddings
from failoverd.translate import ollama as translate

logger = logging.getLogger(__name__)


def error_message(raw: bytes) -> str:
    """The text of an Ollama error body (`{"error": "..."}`), or the start of the raw body."""
    body = json_or_none(raw)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return raw[:300].decode("utf-8", "replace").strip()


# Ollama's words for a prompt longer than the context: "the input length exceeds the context
# length" (a 500 from older servers), "request (N tokens) exceeds the available context size
# (M tokens), try increasing it" (type exceed_context_size_error, with `truncate: false`),
# "the prompt is longer than the context length ..." (with `shift: false`); in a stream they
# arrive as an error line. Whatever the status, a larger window is the cure.
_CONTEXT_MARKERS = ("exceeds the context length", "longer than the context length",
                    "exceeds the available context size", "exceed_context_size")


def classify_ollama(status: int | None, message: str) -> FailureReason:
    """An Ollama error in DESIGN.md's terms; `status` None for an error inside a 200."""
    if any(m in message.lower() for m in _CONTEXT_MARKERS):
        return FailureReason.CONTEXT_OVERFLOW
    return classify_in_band(message) if status is None else classify(status, message)


def _completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def tagged(name: str) -> str:
    """A model name with Ollama's implicit `:latest` tag made explicit."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class OllamaProvider(Lacking):
    """Adapter for Ollama's native chat API."""

    api = "Ollama's API"

    def __init__(self, config: ProviderConfig, client: HttpClient) -> None:
        self.config = config
        self._client = client.via(config.proxy)
        base = config.base_url.rstrip("/")
        self._chat_url = f"{base}/api/chat"
        self._tags_url = f"{base}/api/tags"
        self._embed_url = f"{base}/api/embed"
        self._generate_url = f"{base}/api/generate"
        # a key: Ollama behind an authenticating proxy, or ollama.com
        headers = request_headers(
            config, {"Content-Type": "application/json", "Accept": "application/json"},
            "Authorization", f"Bearer {config.api_key}")
        self._headers = headers
        self._stream_headers = {**headers, "Accept": "application/x-ndjson"}

    # ------------------------------------------------------------------ errors

    async def _failure(self, resp: Response, model: str) -> UpstreamError:
        raw = await read_limited(resp)
        message = error_message(raw)
        return upstream_error(
            classify_ollama(resp.status, message), message or f"HTTP {resp.status}",
            status=resp.status, provider=self.config.name, model=model,
            retry_after=parse_retry_after(resp.headers), body=raw,
            content_type=resp.headers.get("Content-Type", "application/json"))

    def _payload(self, body: dict[str, Any], model: ModelConfig, stream: bool) -> bytes:
        return orjson.dumps(translate.to_request(body, model.name, stream=stream,
                                                 context_window=model.context_window))

    # ------------------------------------------------------------------ calls

    async def _post(self, url: str, data: bytes, limits: AttemptLimits,
                    model: str) -> dict[str, Any]:
        """Ollama's JSON object answer to a call (not streamed); the error it may carry in
        a 200 raised as the failure it names, a body that is no object as invalid_response."""
        name = self.config.name
        raw = await fetch(self._client, "POST", url, headers=self._headers, data=data,
                          total=limits.total, connect=limits.connect, failure=self._failure,
                          provider=name, model=model)
        parsed = json_or_none(raw)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            raise upstream_error(classify_ollama(None, parsed["error"]), parsed["error"],
                                 status=200, provider=name, model=model, body=raw)
        if not isinstance(parsed, dict):
            raise self._incomplete(model)
        return parsed

    def _line(self, line: bytes, model: str) -> dict[str, Any] | None:
        """A streamed NDJSON line's object (None for a blank line); an unparsable line, or
        the error line Ollama ends a failing stream with, raised as its failure."""
        if not line.strip():
            return None
        obj = json_or_none(line)
        if not isinstance(obj, dict):
            raise upstream_error(FailureReason.INVALID_RESPONSE, "unparsable stream line",
                                 status=200, provider=self.config.name, model=model)
        if isinstance(obj.get("error"), str):
            raise upstream_error(classify_ollama(None, obj["error"]), obj["error"],
                                 status=200, provider=self.config.name, model=model)
        return obj

    def _incomplete(self, model: str) -> UpstreamError:
        return upstream_error(FailureReason.INVALID_RESPONSE,
                              "200 with an unparsable or incomplete body", status=200,
                              provider=self.config.name, model=model)

    async def complete(self, body: dict[str, Any], model: ModelConfig,
                       limits: AttemptLimits) -> Completion:
        parsed = await self._post(self._chat_url, self._payload(body, model, stream=False),
                                  limits, model.id)
        if not parsed.get("done") or not isinstance(parsed.get("message"), dict):
            raise self._incomplete(model.id)
        message = parsed["message"]
        if not (message.get("content") or message.get("tool_calls")):
            self._check_empty(body, parsed, bool(message.get("thinking")), model.id)
        return Completion(translate.to_completion(parsed, model.name))

    def _check_empty(self, body: dict[str, Any], final: dict[str, Any], thought: bool,
                     model: str) -> None:
        """Raises for a finished answer without text or a tool call, which another model may
        answer: done_reason "load" (Ollama only loaded the model, as for a request without a
        user message) or a thinking model that put everything in `thinking`. A cut one
        (done_reason "length") is an answer, and so is an empty continuation of a prefill."""
        reason = final.get("done_reason")
        if reason == "length" or ends_in_prefill(body):
            return
        if reason == "load":
            why = "200 without any answer: the model was only loaded (done_reason load)"
        elif thought:
            why = "200 without any answer: only thinking, no content"
        else:
            why = "200 without any answer (no content, no tool call)"
        raise upstream_error(FailureReason.INVALID_RESPONSE, why, status=200,
                             provider=self.config.name, model=model)

    async def stream(self, body: dict[str, Any], model: ModelConfig,
                     limits: AttemptLimits) -> AsyncIterator[Chunk]:
        data = self._payload(body, model, stream=True)
        name = self.config.name
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        translator = translate.StreamTranslator(model.name, include_usage=include_usage)
        first_deadline = asyncio.get_running_loop().time() + limits.first_token
        resp = await open_stream(self._client, self._chat_url, data=data,
                                 headers=self._stream_headers, first_deadline=first_deadline,
                                 connect=limits.connect, failure=self._failure, provider=name,
                                 model=model.id)
        # chunks are held back until one carries an answer: an empty finish fails over
        # before the first chunk, as complete() does
        held: list[dict[str, Any]] = []
        answered = thought = False
        try:
            async for line in lines(resp, first_deadline, limits.idle, name, model.id):
                obj = self._line(line, model.id)
                if obj is None:
                    continue
                chunks = translator.feed(obj)
                if not answered:
                    message = obj.get("message")
                    if isinstance(message, dict):
                        answered = bool(message.get("content") or message.get("tool_calls"))
                        thought = thought or bool(message.get("thinking"))
                    if not answered and translator.done:
                        self._check_empty(body, obj, thought, model.id)
                        answered = True  # an empty answer that is one
                    held.extend(chunks)
                    if not answered:
                        continue
                    chunks, held = held, []
                for chunk in chunks:
                    yield Chunk.of(chunk)
                if translator.done:
                    return
            raise upstream_error(FailureReason.INVALID_RESPONSE, "stream ended before done",
                                 status=200, provider=name, model=model.id)
        finally:
            finish_stream(resp, translator.done)

    async def embed(self, body: dict[str, Any], model: ModelConfig,
                    limits: AttemptLimits) -> Completion:
        """Ollama's /api/embed: text inputs (token ids are an OpenAI extension), vectors
        back as OpenAI's answer. ``truncate: false``: an input longer than the model's
        context is refused (context_overflow), as OpenAI refuses it, not embedded without
        its end."""
        texts = embeddings.texts(body, "Ollama's /api/embed")
        payload: dict[str, Any] = {"model": model.name, "input": texts, "truncate": False}
        if body.get("dimensions"):
            payload["dimensions"] = body["dimensions"]
        name = self.config.name
        parsed = await self._post(self._embed_url, orjson.dumps(payload), limits, model.id)
        vectors = parsed.get("embeddings")
        if not embeddings.vectors_ok(vectors, len(texts)):
            raise upstream_error(FailureReason.INVALID_RESPONSE,
                                 "200 without the embeddings asked for", status=200,
                                 provider=name, model=model.id)
        assert isinstance(vectors, list)
        ignored = embeddings.ignored_dimensions([len(v) for v in vectors],
                                                body.get("dimensions"))
        if ignored is not None:  # Ollama before 0.11 has no dimensions
            raise upstream_error(FailureReason.INCAPABLE, ignored, status=200, provider=name,
                                 model=model.id)
        tokens = parsed.get("prompt_eval_count")
        return Completion(embeddings.answer(vectors, body, model.name,
                                            tokens if type(tokens) is int else 0))

    async def complete_text(self, body: dict[str, Any], model: ModelConfig,
                            limits: AttemptLimits) -> Completion:
        """A legacy text completion by /api/generate (translate/ollama.py to_generate)."""
        data = orjson.dumps(translate.to_generate(body, model.name, stream=False,
                                                  context_window=model.context_window))
        parsed = await self._post(self._generate_url, data, limits, model.id)
        if not parsed.get("done") or not isinstance(parsed.get("response"), str):
            raise self._incomplete(model.id)
        if parsed.get("done_reason") == "load":
            raise upstream_error(FailureReason.INVALID_RESPONSE, "200 without any answer: the "
                                 "model was only loaded (done_reason load)", status=200,
                                 provider=self.config.name, model=model.id)
        return Completion(translate.generate_answer(parsed, parsed["response"], model.name,
                                                    _completion_id()))

    async def stream_text(self, body: dict[str, Any], model: ModelConfig,
                          limits: AttemptLimits) -> AsyncIterator[Chunk]:
        """A streamed legacy text completion: /api/generate's NDJSON lines as
        text_completion chunks (usage on a last choices-less chunk when asked for)."""
        data = orjson.dumps(translate.to_generate(body, model.name, stream=True,
                                                  context_window=model.context_window))
        name = self.config.name
        first_deadline = asyncio.get_running_loop().time() + limits.first_token
        resp = await open_stream(self._client, self._generate_url, data=data,
                                 headers=self._stream_headers, first_deadline=first_deadline,
                                 connect=limits.connect, failure=self._failure, provider=name,
                                 model=model.id)
        cid, created, done, said = _completion_id(), int(time.time()), False, False
        try:
            async for line in lines(resp, first_deadline, limits.idle, name, model.id):
                obj = self._line(line, model.id)
                if obj is None:
                    continue
                piece = obj.get("response")
                if obj.get("done"):
                    if obj.get("done_reason") == "load" and not said and not piece:
                        raise upstream_error(FailureReason.INVALID_RESPONSE, "200 without any "
                                             "answer: the model was only loaded (done_reason "
                                             "load)", status=200, provider=name,
                                             model=model.id)
                    done = True
                    finish = translate.finish_reason(obj.get("done_reason"), False)
                    yield Chunk.of(completions.chunk(piece if isinstance(piece, str) else "",
                                                     finish, model.name, cid, created))
                    # always: the OpenAI front leaves it out for a client that did not ask,
                    # and failoverd_tokens_total counts it
                    yield Chunk.of(completions.chunk("", None, model.name, cid, created,
                                                     translate.usage(obj)))
                    return
                if isinstance(piece, str) and piece:
                    said = True
                    yield Chunk.of(completions.chunk(piece, None, model.name, cid, created))
            raise upstream_error(FailureReason.INVALID_RESPONSE, "stream ended before done",
                                 status=200, provider=name, model=model.id)
        finally:
            finish_stream(resp, done)

    def default_output(self, model: ModelConfig) -> int | None:
        return None  # the upstream's own limit applies

    async def probe(self, model: ModelConfig, kind: ProbeKind,
                    timeout: float,  # noqa: ASYNC109 - the Provider protocol's signature
                    max_tokens: int) -> None:
        if kind == "none":
            return
        if kind == "models":
            await self._probe_tags(model, timeout)
            return
        body = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": max_tokens}
        await self.complete(body, model, probe_limits(timeout, self.config.connect_timeout))

    async def _probe_tags(self, model: ModelConfig, limit: float) -> None:
        name = self.config.name
        raw = await probe_get(self._client, self._tags_url, headers=self._headers,
                              timeout=limit, config=self.config, failure=self._failure,
                              model=model.id)
        listing = json_or_none(raw)
        if not isinstance(listing, dict) or not isinstance(listing.get("models"), list):
            raise upstream_error(FailureReason.INVALID_RESPONSE, "unparsable /api/tags answer",
                                 status=200, provider=name, model=model.id)
        have = {tagged(str(m.get(key))) for m in listing["models"] if isinstance(m, dict)
                for key in ("name", "model") if m.get(key)}
        if tagged(model.name) not in have:
            raise upstream_error(FailureReason.NOT_FOUND,
                                 f"model {model.name!r} is not pulled on this Ollama server",
                                 status=404, provider=name, model=model.id)
