"""Google Gemini adapter (generativelanguage v1beta: generateContent, streamGenerateContent).

Requests and answers are translated by failoverd.translate.gemini; this module is the HTTP
edge: URLs, the x-goog-api-key header, SSE reading and the classification of Gemini's error
bodies (`{"error": {"code", "message", "status", "details"}}`), which need more than the
status code: Gemini answers 400 for a bad API key and 429 RESOURCE_EXHAUSTED with billing
words for plain per-minute quotas. A 400 that refuses the replayed thought signatures (made
by another Gemini model) is answered at once with the request again, placeholders instead.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any
from urllib.parse import quote

import orjson

from failoverd.config import ModelConfig, ProbeKind, ProviderConfig
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import HttpClient, Response
from failoverd.providers.base import AttemptLimits, Chunk, Completion, Lacking
from failoverd.providers.http import (
    all_or_none,
    classify,
    fetch,
    finish_stream,
    json_or_none,
    open_stream,
    parse_retry_after,
    probe_get,
    probe_limits,
    read_limited,
    request_headers,
    sse_events,
    upstream_error,
)
from failoverd.translate import embeddings
from failoverd.translate import gemini as translate

logger = logging.getLogger(__name__)

GEMINI_EMBED_BATCH = 100  # batchEmbedContents' limit on requests per call
_RETRY_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_AUTH_MARKERS = ("api key not valid", "api_key_invalid", "api key expired", "api key not found",
                 "location is not supported")
# RESOURCE_EXHAUSTED that no wait cures: a quota of zero (the model needs a paid plan),
# depleted prepaid credits (a 402 since 2026, a 429 before) and the billing account's
# monthly spending cap ("Your billing account has exceeded its monthly spending cap")
_BILLING_EXHAUSTED = ("limit: 0", "prepayment credits", "credits are depleted", "spending cap")


def error_details(raw: bytes) -> tuple[str, str, float | None, str, int | None]:
    """(message, status name, RetryInfo delay in seconds, ErrorInfo reason, code) of an error
    body."""
    body = json_or_none(raw)
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(body, list) and body and isinstance(body[0], dict):
        err = body[0].get("error")  # streamed errors sometimes arrive as a one-element array
    if not isinstance(err, dict):
        return raw[:300].decode("utf-8", "replace").strip(), "", None, "", None
    delay: float | None = None
    reason = ""
    for detail in err.get("details") or ():
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith("RetryInfo"):
            match = _RETRY_DELAY.match(str(detail.get("retryDelay", "")))
            delay = float(match.group(1)) if match else None
        elif kind.endswith("ErrorInfo"):
            reason = str(detail.get("reason") or "")
    code = err.get("code")
    return (str(err.get("message") or ""), str(err.get("status") or ""), delay, reason,
            code if isinstance(code, int) else None)


def classify_gemini(http_status: int, message: str, status: str, info_reason: str = ""
                    ) -> FailureReason:
    """Gemini's error in DESIGN.md's terms; the generic table after Gemini's own quirks."""
    text = f"{message} {info_reason}".lower()
    if http_status == 402:
        return FailureReason.BILLING
    if status == "RESOURCE_EXHAUSTED" or http_status == 429:
        # free-tier quotas say "check your plan and billing details" on every 429: that
        # alone is a rate limit, only the money-side exhaustions are billing
        if any(m in text for m in _BILLING_EXHAUSTED):
            return FailureReason.BILLING
        return FailureReason.RATE_LIMIT
    if any(m in text for m in _AUTH_MARKERS):
        return FailureReason.AUTH
    if status in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return classify(403, message, status)
    if status == "UNAVAILABLE":
        return FailureReason.OVERLOADED
    if status == "DEADLINE_EXCEEDED":
        return FailureReason.TIMEOUT
    if status == "FAILED_PRECONDITION" and "billing" in text:
        return FailureReason.BILLING
    return classify(http_status, message, status)


class GeminiProvider(Lacking):
    """Adapter for the Gemini API (`generateContent` / `streamGenerateContent?alt=sse`)."""

    api = "Gemini's API"

    def __init__(self, config: ProviderConfig, client: HttpClient) -> None:
        self.config = config
        self._client = client.via(config.proxy)
        base = config.base_url.rstrip("/")
        # accept base URLs spelled with the version, as some SDKs do
        self._base = base if base.endswith(("/v1beta", "/v1")) else f"{base}/v1beta"
        headers = request_headers(
            config, {"Content-Type": "application/json", "Accept": "application/json"},
            "x-goog-api-key", config.api_key)
        self._headers = headers
        self._stream_headers = {**headers, "Accept": "text/event-stream"}

    def _model_url(self, model: ModelConfig) -> str:
        name = model.name.removeprefix("models/")
        return f"{self._base}/models/{quote(name, safe='-._~')}"

    async def _request_headers(self, stream: bool, model: ModelConfig) -> Mapping[str, str]:
        """A request's headers (the Vertex adapter's carry a fresh access token)."""
        return self._stream_headers if stream else self._headers

    # ------------------------------------------------------------------ errors

    def _error(self, status: int, raw: bytes, model: str, headers: Any = None,
               content_type: str = "application/json") -> UpstreamError:
        message, status_name, delay, info, code = error_details(raw)
        # an error inside a 200 (mid-stream) is classified by the code it carries
        effective = (code or 500) if status == 200 else status
        reason = classify_gemini(effective, message, status_name, info)
        retry_after = parse_retry_after(headers) if headers is not None else None
        return upstream_error(
            reason, message or f"HTTP {status}", status=status, provider=self.config.name,
            model=model, retry_after=retry_after if retry_after is not None else delay,
            body=raw, content_type=content_type)

    async def _failure(self, resp: Response, model: str) -> UpstreamError:
        raw = await read_limited(resp)
        return self._error(resp.status, raw, model, resp.headers,
                           resp.headers.get("Content-Type", "application/json"))

    def _payload(self, body: dict[str, Any], *, signatures: bool = True) -> bytes:
        return orjson.dumps(translate.to_request(body, signatures=signatures))

    def _unsigned(self, exc: UpstreamError, body: dict[str, Any], sent: bytes,
                  model: str) -> bytes:
        """The request with the placeholder in place of the replayed thought signatures, when
        Gemini refused them ("Corrupted thought signature.": another model made them, as
        after a failover between Gemini models, or they went stale); any other error, or one
        with none to replace, is raised as it is. The refusal came at once, so the attempt's
        limits, already cut to the request's deadline, hold for the second call too."""
        text = exc.message.lower()
        if exc.status != 400 or not ("thought signature" in text
                                     or "thought_signature" in text):
            raise exc
        plain = self._payload(body, signatures=False)
        if plain == sent:
            raise exc
        logger.info("%s refused the replayed thought signatures, sending the placeholder "
                    "instead (%s)", model, exc.message)
        return plain

    # ------------------------------------------------------------------ calls

    async def complete(self, body: dict[str, Any], model: ModelConfig,
                       limits: AttemptLimits) -> Completion:
        data = self._payload(body)
        name = self.config.name
        url = f"{self._model_url(model)}:generateContent"
        headers = await self._request_headers(False, model)

        def post(data: bytes) -> Coroutine[Any, Any, bytes]:
            return fetch(self._client, "POST", url, headers=headers, data=data,
                         total=limits.total, connect=limits.connect, failure=self._failure,
                         provider=name, model=model.id)

        try:
            raw = await post(data)
        except UpstreamError as exc:
            raw = await post(self._unsigned(exc, body, data, model.id))
        parsed = json_or_none(raw)
        if isinstance(parsed, dict) and "error" in parsed:
            raise self._error(200, raw, model.id)
        if not isinstance(parsed, dict):
            raise upstream_error(FailureReason.INVALID_RESPONSE, "200 with an unparsable body",
                                 status=200, provider=name, model=model.id)
        self._check_blocked(parsed, model.id)
        completion = translate.to_completion(parsed, model.name)
        if not any(_has_output(c) for c in completion["choices"]):
            raise upstream_error(FailureReason.INVALID_RESPONSE, "200 without any answer",
                                 status=200, provider=name, model=model.id)
        return Completion(completion)

    def _check_blocked(self, response: dict[str, Any], model: str) -> None:
        why = translate.blocked(response)
        if why is not None:
            raise upstream_error(FailureReason.CONTENT_FILTER, why, status=200,
                                 provider=self.config.name, model=model)

    async def stream(self, body: dict[str, Any], model: ModelConfig,
                     limits: AttemptLimits) -> AsyncIterator[Chunk]:
        data = self._payload(body)
        name = self.config.name
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        translator = translate.StreamTranslator(model.name, include_usage=include_usage,
                                                expected=int(body.get("n") or 1))
        first_deadline = asyncio.get_running_loop().time() + limits.first_token
        url = f"{self._model_url(model)}:streamGenerateContent?alt=sse"
        headers = await self._request_headers(True, model)

        def open_(data: bytes) -> Coroutine[Any, Any, Response]:
            return open_stream(self._client, url, data=data, headers=headers,
                               first_deadline=first_deadline, connect=limits.connect,
                               failure=self._failure, provider=name, model=model.id)

        try:
            resp = await open_(data)
        except UpstreamError as exc:
            resp = await open_(self._unsigned(exc, body, data, model.id))
        # chunks are held back until one carries an answer: an empty STOP (or
        # MALFORMED_FUNCTION_CALL) fails over before the first token, as complete() does
        held: list[dict[str, Any]] = []
        answered = False
        try:
            async for _event, payload in sse_events(resp, first_deadline, limits.idle,
                                                    name, model.id):
                event = json_or_none(payload)
                if not isinstance(event, dict):
                    raise upstream_error(FailureReason.INVALID_RESPONSE,
                                         "unparsable stream event", status=200,
                                         provider=name, model=model.id)
                if "error" in event:
                    raise self._error(200, payload, model.id)
                self._check_blocked(event, model.id)
                held.extend(translator.feed(event))
                answered = answered or any(_chunk_answers(c) for c in held)
                if answered:
                    for chunk in held:
                        yield Chunk.of(chunk)
                    held.clear()
            if not translator.complete:
                raise upstream_error(FailureReason.INVALID_RESPONSE,
                                     "stream ended without a finishReason", status=200,
                                     provider=name, model=model.id)
            if not answered:
                raise upstream_error(FailureReason.INVALID_RESPONSE,
                                     "200 stream without any answer", status=200,
                                     provider=name, model=model.id)
            for chunk in translator.finish():
                yield Chunk.of(chunk)
        finally:
            finish_stream(resp, translator.complete)

    async def embed(self, body: dict[str, Any], model: ModelConfig,
                    limits: AttemptLimits) -> Completion:
        """batchEmbedContents: one request per text input (token ids are OpenAI's own),
        `dimensions` as outputDimensionality; Gemini reports no token usage. Gemini takes at
        most 100 requests per call: more inputs go in several calls at once, and the first
        failure fails them all."""
        texts = embeddings.texts(body, "Gemini's batchEmbedContents")
        extra: dict[str, Any] = {}
        if body.get("dimensions"):
            extra["outputDimensionality"] = body["dimensions"]
        batches = [texts[i:i + GEMINI_EMBED_BATCH]
                   for i in range(0, len(texts), GEMINI_EMBED_BATCH)]
        if len(batches) == 1:
            vectors = await self._embed_batch(texts, extra, model, limits)
        else:
            results = await all_or_none(self._embed_batch(batch, extra, model, limits)
                                        for batch in batches)
            vectors = [v for result in results for v in result]
        ignored = embeddings.ignored_dimensions([len(v) for v in vectors],
                                                body.get("dimensions"))
        if ignored is not None:  # a model without outputDimensionality (embedding-001)
            raise upstream_error(FailureReason.INCAPABLE, ignored, status=200,
                                 provider=self.config.name, model=model.id)
        return Completion(embeddings.answer(vectors, body, model.name, 0))

    async def _embed_batch(self, texts: list[str], extra: dict[str, Any], model: ModelConfig,
                           limits: AttemptLimits) -> list[Any]:
        name = self.config.name
        resource = f"models/{model.name.removeprefix('models/')}"
        payload = {"requests": [{"model": resource, "content": {"parts": [{"text": text}]},
                                 **extra} for text in texts]}
        raw = await fetch(self._client, "POST", f"{self._model_url(model)}:batchEmbedContents",
                          headers=self._headers, data=orjson.dumps(payload),
                          total=limits.total, connect=limits.connect,
                          failure=self._failure, provider=name, model=model.id)
        parsed = json_or_none(raw)
        if isinstance(parsed, dict) and "error" in parsed:
            raise self._error(200, raw, model.id)
        items = parsed.get("embeddings") if isinstance(parsed, dict) else None
        vectors: list[Any] | None = [item.get("values") if isinstance(item, dict) else None
                                     for item in items] if isinstance(items, list) else None
        if not embeddings.vectors_ok(vectors, len(texts)):
            raise upstream_error(FailureReason.INVALID_RESPONSE,
                                 "200 without the embeddings asked for", status=200,
                                 provider=name, model=model.id)
        assert vectors is not None
        return vectors

    def default_output(self, model: ModelConfig) -> int | None:
        return None  # the upstream's own limit applies

    async def probe(self, model: ModelConfig, kind: ProbeKind,
                    timeout: float,  # noqa: ASYNC109 - the Provider protocol's signature
                    max_tokens: int) -> None:
        if kind == "none":
            return
        if kind == "models":
            # the model's own entry: reachability, the key, and that the model exists
            await probe_get(self._client, self._model_url(model), headers=self._headers,
                            timeout=timeout, config=self.config, failure=self._failure,
                            model=model.id)
            return
        body = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": max_tokens}
        await self.complete(body, model, probe_limits(timeout, self.config.connect_timeout))


def _has_output(choice: dict[str, Any]) -> bool:
    # a cut-off or filtered answer may be empty and still is an answer; an empty STOP is not
    message = choice["message"]
    return bool(message.get("content") or message.get("tool_calls")
                or choice["finish_reason"] in ("length", "content_filter"))


def _chunk_answers(chunk: dict[str, Any]) -> bool:
    # the streamed counterpart of _has_output: text, a tool call, or a cut/filtered finish
    return any(choice["delta"].get("content") or choice["delta"].get("tool_calls")
               or choice["finish_reason"] in ("length", "content_filter")
               for choice in chunk["choices"])
