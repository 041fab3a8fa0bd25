"""Anthropic Messages API adapter (``POST /v1/messages``).

Requests are translated from the canonical form (failoverd.translate.anthropic), answers and
stream events back into it. Failures are classified from Anthropic's error bodies
(``{"type": "error", "error": {"type": "overloaded_error", ...}}``), with the shared HTTP
classification as the fallback for bodies from proxies and gateways.

A request Anthropic cannot express (``n`` > 1, JSON response formats, ...) never reaches
the network: it fails as ``incapable``, so the router moves on to a model that can serve it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, cast

import orjson

from failoverd.config import ModelConfig, ProbeKind, ProviderConfig
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import HttpClient, Response
from failoverd.providers.base import AttemptLimits, Chunk, Completion, Lacking, ends_in_prefill
from failoverd.providers.http import (
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
from failoverd.timeouts import timeout_at
from failoverd.translate.anthropic import (
    DEFAULT_MAX_TOKENS,
    AnthropicStreamDecoder,
    anthropic_to_canonical_response,
    canonical_to_anthropic,
)

logger = logging.getLogger(__name__)

API_VERSION = "2023-06-01"
# what POST /v1/messages/count_tokens takes besides model (it refuses the others, max_tokens
# and stream among them, as extra inputs)
COUNTED_FIELDS = ("messages", "system", "tools", "tool_choice", "thinking", "mcp_servers")

# error.type -> reason, when the type alone decides
_TYPE_REASONS = {
    "overloaded_error": FailureReason.OVERLOADED,
    "rate_limit_error": FailureReason.RATE_LIMIT,
    "authentication_error": FailureReason.AUTH,
    "permission_error": FailureReason.AUTH,
    "not_found_error": FailureReason.NOT_FOUND,
    "billing_error": FailureReason.BILLING,
    # over the 32 MB a Messages request may have (Cloudflare's 413, before the API sees it):
    # a byte limit, not the context window, so any other model may take the request, whatever
    # its window (images and documents make the bytes); no fault of this model either
    "request_too_large": FailureReason.INCAPABLE,
    "timeout_error": FailureReason.TIMEOUT,
    "api_error": FailureReason.SERVER_ERROR,
}


def error_details(raw: bytes) -> tuple[str, str]:
    """(message, error type) from an Anthropic error body, tolerant of proxies' bodies."""
    body = json_or_none(raw)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or ""), str(err.get("type") or err.get("code") or "")
        if isinstance(err, str):
            return err, ""
    return raw[:300].decode("utf-8", "replace").strip(), ""


# invalid_request_error 400s that are about the account or the model, not the request (as
# api.anthropic.com words them): the account's ran out or was switched off, so every model of
# the provider fails alike; a max_tokens above this model's output limit another model may take
_ACCOUNT_400S = (
    ("credit balance", FailureReason.BILLING),  # "Your credit balance is too low to access..."
    # the organization's monthly spend limit: "You have reached your specified API usage
    # limits. You will regain access on 2026-04-01 at 00:00 UTC."
    ("specified api usage limits", FailureReason.BILLING),
    ("organization has been disabled", FailureReason.AUTH),
    # "max_tokens: 100000 > 64000, which is the maximum allowed number of output tokens for
    # claude-sonnet-4-5-20250929"
    ("maximum allowed number of output tokens", FailureReason.INCAPABLE),
)


def classify_error(status: int, message: str, error_type: str) -> FailureReason:
    """An Anthropic failure's reason: the error type first, message text for the 400s.

    "Your credit balance is too low", the spend limit, a disabled organization and a
    max_tokens over the model's limit arrive as 400 invalid_request_errors (`_ACCOUNT_400S`);
    "prompt is too long" likewise, told apart by the shared context markers.
    """
    low = message.lower()
    for marker, account_reason in _ACCOUNT_400S:
        if marker in low:
            return account_reason
    reason = _TYPE_REASONS.get(error_type)
    if reason is not None:
        return reason
    if status == 413:
        return FailureReason.INCAPABLE  # the same limit, in whatever body Cloudflare sent
    if error_type == "invalid_request_error" and not 400 <= status < 500:
        status = 400  # an invalid_request_error inside a 200 stream or a gateway's 5xx
    return classify(status, message, error_type)


class AnthropicProvider(Lacking):
    """Adapter for Anthropic's Messages API (and gateways that speak it)."""

    api = "Anthropic's API"

    def __init__(self, config: ProviderConfig, client: HttpClient) -> None:
        self.config = config
        self._client = client.via(config.proxy)
        base = config.base_url.rstrip("/")
        # the vendor SDK's base_url has no /v1; accept one given anyway
        base = base.removesuffix("/v1")
        self._messages_url = f"{base}/v1/messages"
        self._models_url = f"{base}/v1/models"
        self._count_url = f"{base}/v1/messages/count_tokens"
        self._headers = request_headers(
            config, {"content-type": "application/json", "accept": "application/json",
                     "anthropic-version": API_VERSION}, "x-api-key", config.api_key)
        self._stream_headers = {**self._headers, "accept": "text/event-stream"}

    def _endpoint(self, model: ModelConfig, stream: bool) -> str:
        """Where a Messages request for `model` goes (the Vertex adapter's URL differs)."""
        return self._messages_url

    async def _request_headers(self, stream: bool, model: ModelConfig) -> Mapping[str, str]:
        """A Messages request's headers (the Vertex adapter's carry a fresh access token)."""
        return self._stream_headers if stream else self._headers

    # ------------------------------------------------------------------ errors

    def _error(self, status: int, raw: bytes, model: str, *, retry_after: float | None = None,
               content_type: str = "application/json") -> UpstreamError:
        message, error_type = error_details(raw)
        reason = classify_error(status, message, error_type)
        if reason is FailureReason.NOT_FOUND and "model" not in message.lower():
            # a 404 on the path itself means a wrong base_url, which every model shares
            message = f"{message or 'not found'} ({self._messages_url}: check base_url)"
        return upstream_error(reason, message or f"HTTP {status}", status=status,
                              provider=self.config.name, model=model,
                              retry_after=retry_after, body=raw, content_type=content_type)

    async def _failure(self, resp: Response, model: str) -> UpstreamError:
        raw = await read_limited(resp)
        return self._error(resp.status, raw, model, retry_after=parse_retry_after(resp.headers),
                           content_type=resp.headers.get("Content-Type", "application/json"))

    # ------------------------------------------------------------------ calls

    def _payload(self, body: dict[str, Any], model: ModelConfig, stream: bool) -> bytes:
        # a TranslationError goes up as it is: the router records this candidate as incapable
        # (no upstream attempt made) and moves on
        payload = canonical_to_anthropic(
            body, model.name, self.default_output(model),
            max_output_tokens=model.max_output_tokens)
        if stream:
            payload["stream"] = True
        return orjson.dumps(payload)

    async def complete(self, body: dict[str, Any], model: ModelConfig,
                       limits: AttemptLimits) -> Completion:
        data = self._payload(body, model, stream=False)
        name = self.config.name
        raw = await fetch(self._client, "POST", self._endpoint(model, False),
                          headers=await self._request_headers(False, model), data=data,
                          total=limits.total, connect=limits.connect, failure=self._failure,
                          provider=name, model=model.id,
                          seen=limits.upstream,
                          family="anthropic")
        parsed = json_or_none(raw)
        if not isinstance(parsed, dict) or parsed.get("type") != "message":
            if isinstance(parsed, dict) and parsed.get("type") == "error":
                raise self._error(200, raw, model.id)
            raise upstream_error(FailureReason.INVALID_RESPONSE,
                                 "200 with an unparsable or empty body", status=200,
                                 provider=name, model=model.id)
        self._check_answer(body, parsed.get("stop_reason"), parsed.get("stop_details"),
                           _answers(parsed), model.id)
        return Completion(anthropic_to_canonical_response(parsed, model.name))

    def _check_answer(self, body: dict[str, Any], stop_reason: Any, stop_details: Any,
                      answered: bool, model: str) -> None:
        """Raises for a 200 that is no answer to give a client while another model may have one.

        ``stop_reason: "refusal"`` is the safety classifiers declining (Anthropic's guidance:
        retry on a fallback model): content_filter. No text and no tool call with end_turn is
        the empty answer Anthropic documents (mostly after tool results): invalid_response,
        unless the request ends in an assistant prefill, which the empty answer completes.
        """
        if stop_reason == "refusal":
            raise upstream_error(FailureReason.CONTENT_FILTER, _refusal_message(stop_details),
                                 status=200, provider=self.config.name, model=model)
        if stop_reason == "end_turn" and not answered and not ends_in_prefill(body):
            raise upstream_error(FailureReason.INVALID_RESPONSE,
                                 "200 without any answer (no content, end_turn)", status=200,
                                 provider=self.config.name, model=model)

    def _decode(self, decoder: AnthropicStreamDecoder, event: str, payload: bytes,
                model: ModelConfig) -> list[dict[str, Any]]:
        data = json_or_none(payload)
        if not isinstance(data, dict):
            raise upstream_error(FailureReason.INVALID_RESPONSE, "unparsable stream event",
                                 status=200, provider=self.config.name, model=model.id)
        if event == "error" or data.get("type") == "error":
            raise self._error(200, payload, model.id)
        return decoder.feed(event, data)

    async def stream(self, body: dict[str, Any], model: ModelConfig,
                     limits: AttemptLimits) -> AsyncIterator[Chunk]:
        data = self._payload(body, model, stream=True)
        name = self.config.name
        first_deadline = asyncio.get_running_loop().time() + limits.first_token
        options = body.get("stream_options")
        decoder = AnthropicStreamDecoder(
            model.name, include_usage=isinstance(options, dict)
            and bool(options.get("include_usage")))
        resp = await open_stream(self._client, self._endpoint(model, True), data=data,
                                 headers=await self._request_headers(True, model),
                                 first_deadline=first_deadline,
                                 connect=limits.connect, failure=self._failure, provider=name,
                                 model=model.id,
                                 seen=limits.upstream,
                                 family="anthropic")
        clean = False
        stack = contextlib.AsyncExitStack()
        try:
            pending: list[dict[str, Any]] = []
            events = cast(AsyncGenerator[tuple[str, bytes], None],
                          sse_events(resp, first_deadline, limits.idle, name, model.id))
            await stack.enter_async_context(contextlib.aclosing(events))
            # message_start and ping come before the model produced anything, and an
            # overloaded error may still follow them: hold chunks back until a content
            # block starts, so such a failure happens before the first chunk and the
            # router can still fail over
            try:
                with timeout_at(first_deadline):
                    async for event, payload in events:
                        pending.extend(self._decode(decoder, event, payload, model))
                        if decoder.content_started or decoder.stopped:
                            break
            except TimeoutError as exc:
                raise upstream_error(FailureReason.TIMEOUT, "no first token within the time "
                                     "limit", status=None, provider=name,
                                     model=model.id) from exc
            if decoder.stopped and not decoder.content_started:
                # nothing was streamed yet: a refusal or an empty answer still fails over
                self._check_answer(body, decoder.stop_reason, decoder.stop_details, False,
                                   model.id)
            for chunk in pending:
                yield Chunk.of(chunk)
            if not decoder.stopped:
                async for event, payload in events:
                    for chunk in self._decode(decoder, event, payload, model):
                        yield Chunk.of(chunk)
                    if decoder.stopped:
                        break
            if not decoder.stopped:
                raise upstream_error(FailureReason.INVALID_RESPONSE,
                                     "stream ended before message_stop", status=200,
                                     provider=name, model=model.id)
            clean = True
        finally:
            await stack.aclose()
            finish_stream(resp, clean)

    def default_output(self, model: ModelConfig) -> int:
        return model.max_output_tokens or DEFAULT_MAX_TOKENS

    def counts_tokens(self, model: ModelConfig) -> bool:
        return True

    def _count_fields(self, model: ModelConfig) -> dict[str, Any]:
        """What a count's body says besides the counted fields (Vertex adds its version)."""
        return {"model": model.name}

    async def count_tokens(self, body: dict[str, Any], model: ModelConfig,
                           timeout: float) -> int:
        """Anthropic's own count of an Anthropic Messages body's input tokens for `model`
        (POST /v1/messages/count_tokens); only the fields that endpoint takes are sent."""
        payload = {k: body[k] for k in COUNTED_FIELDS if k in body}
        payload.update(self._count_fields(model))
        raw = await fetch(self._client, "POST", self._count_url,
                          headers=await self._request_headers(False, model),
                          data=orjson.dumps(payload), total=timeout,
                          connect=min(timeout, self.config.connect_timeout),
                          failure=self._failure, provider=self.config.name, model=model.id)
        parsed = json_or_none(raw)
        count = parsed.get("input_tokens") if isinstance(parsed, dict) else None
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise upstream_error(FailureReason.INVALID_RESPONSE,
                                 "count_tokens answered without input_tokens", status=200,
                                 provider=self.config.name, model=model.id)
        return count

    async def probe(self, model: ModelConfig, kind: ProbeKind, timeout: float,
                    max_tokens: int) -> None:
        if kind == "none":
            return
        if kind == "models":
            await probe_get(self._client, self._models_url, headers=self._headers, timeout=timeout,
                            config=self.config, failure=self._failure, model=model.id)
            return
        # no reasoning_effort: a probe's few tokens are below Anthropic's thinking minimum
        body: dict[str, Any] = {"messages": [{"role": "user", "content": "ping"}],
                                "max_tokens": max_tokens}
        await self.complete(body, model, probe_limits(timeout, self.config.connect_timeout))


def _answers(message: dict[str, Any]) -> bool:
    """Whether a Messages response has text or a tool call (thinking alone answers nothing)."""
    return any(isinstance(b, dict) and (b.get("type") == "tool_use" or (
        b.get("type") == "text" and b.get("text"))) for b in message.get("content") or [])


def _refusal_message(details: Any) -> str:
    text = "declined by Anthropic's safety classifiers (stop_reason refusal)"
    if isinstance(details, dict):
        extra = ": ".join(str(details[k]) for k in ("category", "explanation") if details.get(k))
        if extra:
            text += f": {extra}"
    return text
