"""OpenAI-compatible Chat Completions adapter.

Covers OpenAI and every server that speaks its API: LM Studio, vLLM, Ollama's /v1, DeepSeek,
Kimi, GLM, MiniMax. The canonical form is this API's shape, so requests only get the upstream
model name and responses pass through byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

import orjson

from failoverd.config import ModelConfig, ProbeKind, ProviderConfig
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import HttpClient, Response
from failoverd.providers.base import AttemptLimits, Chunk, Completion
from failoverd.providers.http import (
    Failure,
    classify,
    classify_in_band,
    fetch,
    finish_stream,
    json_or_none,
    not_found_is_model,
    open_stream,
    parse_retry_after,
    probe_get,
    probe_limits,
    rate_limit_wait,
    read_limited,
    request_headers,
    sse_events,
    upstream_error,
)
from failoverd.providers.openai_audio import OpenAIAudio
from failoverd.translate import completions, embeddings
from failoverd.translate.gemini import DUMMY_THOUGHT_SIGNATURE

logger = logging.getLogger(__name__)

_STREAM_ONLY_KEYS = ("stream", "stream_options")

# MiniMax's status codes in the base_resp of a 200 that carries no answer (its error body)
_MINIMAX_CODES = {
    1002: FailureReason.RATE_LIMIT, 1039: FailureReason.RATE_LIMIT,  # requests, tokens
    1004: FailureReason.AUTH, 2049: FailureReason.AUTH,  # authentication, invalid key
    1008: FailureReason.BILLING, 2056: FailureReason.BILLING,  # balance, plan limit
    1026: FailureReason.CONTENT_FILTER, 1027: FailureReason.CONTENT_FILTER,  # sensitive
}

# GLM's (Zhipu: open.bigmodel.cn, api.z.ai) business codes in error.code, which decide whatever
# the HTTP status (docs.bigmodel.cn/cn/api/api-code): its messages are often Chinese
# ("余额不足或无可用资源包,请充值。" with a 429 is no rate limit but an empty account)
_GLM_CODES = {
    "1113": FailureReason.BILLING,  # in arrears / insufficient balance (a 429)
    "1309": FailureReason.BILLING,  # the GLM Coding Plan expired
    "1261": FailureReason.CONTEXT_OVERFLOW,  # Prompt 超长 / prompt exceeds max length
    "1301": FailureReason.CONTENT_FILTER,  # unsafe or sensitive input or output
    "1302": FailureReason.RATE_LIMIT, "1303": FailureReason.RATE_LIMIT,  # concurrency, rate
    "1304": FailureReason.RATE_LIMIT,  # the day's call limit
    "1308": FailureReason.RATE_LIMIT, "1310": FailureReason.RATE_LIMIT,  # usage caps, reset
    "1305": FailureReason.OVERLOADED, "1312": FailureReason.OVERLOADED,  # the model is busy
}


def _glm_reason(code: str) -> FailureReason | None:
    """The reason of a GLM business code (`code` as error_details gives it), if it is one."""
    return _GLM_CODES.get(code.partition(" ")[0])


def error_details(raw: bytes) -> tuple[str, str]:
    """(message, code) from an OpenAI-style error body; tolerant of the variants in the wild."""
    body = json_or_none(raw)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            message = str(err.get("message") or err.get("msg") or "")
            code = " ".join(str(err.get(k)) for k in ("code", "type") if err.get(k))
            return message, code
        if isinstance(err, str):
            return err, ""
        if isinstance(body.get("message"), str):
            return body["message"], str(body.get("code") or "")
    return raw[:300].decode("utf-8", "replace").strip(), ""


# canonical message fields only the Anthropic adapter reads
_ANTHROPIC_ONLY = ("thinking_blocks", "cache_control", "anthropic_order")


# Google's own OpenAI-compatible endpoint, the one OpenAI-shaped upstream that reads Gemini's
# thought signatures on tool calls (`extra_content.google.thought_signature`)
GOOGLE_OPENAI_HOST = "generativelanguage.googleapis.com"


def _anthropic_only(message: Any, *, signatures: bool = False) -> bool:
    """Whether a canonical message has fields this upstream refuses: ``thinking_blocks``, or a
    ``cache_control`` on the message, a content part or a tool call, which only Anthropic
    takes; and, unless `signatures` (Google's endpoint), a tool call's ``extra_content``
    (Gemini's thought signature)."""
    if not isinstance(message, dict):
        return False
    if "thinking_blocks" in message or "cache_control" in message \
            or "anthropic_order" in message:
        return True
    content = message.get("content")
    if isinstance(content, list) and any(
            isinstance(p, dict) and "cache_control" in p for p in content):
        return True
    calls = message.get("tool_calls")
    return isinstance(calls, list) and any(
        isinstance(c, dict) and ("cache_control" in c
                                 or (not signatures and "extra_content" in c))
        for c in calls)


# the reasoning_content of a tool-calling turn that has none to give (another provider served
# it without reasoning): DeepSeek refuses an empty one as it refuses a missing one
REASONING_PLACEHOLDER = "."


def _with_reasoning(messages: list[Any]) -> list[Any]:
    """Every assistant turn with tool calls given a reasoning_content: its own, else the text
    of its thinking (an Anthropic client's, or Anthropic's), else a placeholder."""
    out = []
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "assistant" and m.get("tool_calls"):
            reasoning = m.get("reasoning_content")
            if not (isinstance(reasoning, str) and reasoning):
                blocks = m.get("thinking_blocks")
                text = "".join(str(b.get("thinking") or "") for b in blocks
                               if isinstance(b, dict)) if isinstance(blocks, list) else ""
                m = {**m, "reasoning_content": text or REASONING_PLACEHOLDER}
        out.append(m)
    return out


def _placeholder_signatures(messages: list[Any]) -> list[Any]:
    """Towards Google's endpoint: each assistant turn's first tool call without a thought
    signature (a loop begun on another provider) gets Gemini's documented placeholder, as
    the Gemini adapter gives it; Gemini 3 refuses a replayed call without one."""
    out = []
    for m in messages:
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        if m.get("role") == "assistant" and isinstance(calls, list) and calls \
                and isinstance(calls[0], dict) and not _signed_call(calls[0]):
            first = {**calls[0], "extra_content": {
                "google": {"thought_signature": DUMMY_THOUGHT_SIGNATURE}}}
            m = {**m, "tool_calls": [first, *calls[1:]]}
        out.append(m)
    return out


def _signed_call(call: dict[str, Any]) -> bool:
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    return isinstance(google, dict) and bool(google.get("thought_signature"))


def _without_cache(item: Any) -> Any:
    if isinstance(item, dict) and "cache_control" in item:
        return {k: v for k, v in item.items() if k != "cache_control"}
    return item


def _openai_call(call: Any, signatures: bool) -> Any:
    if isinstance(call, dict) and ("cache_control" in call
                                   or (not signatures and "extra_content" in call)):
        return {k: v for k, v in call.items()
                if k != "cache_control" and (signatures or k != "extra_content")}
    return call


def _openai_message(message: dict[str, Any], *, signatures: bool = False) -> dict[str, Any]:
    out = {k: v for k, v in message.items() if k not in _ANTHROPIC_ONLY}
    if isinstance(out.get("content"), list):
        out["content"] = [_without_cache(p) for p in out["content"]]
    if isinstance(out.get("tool_calls"), list):
        out["tool_calls"] = [_openai_call(c, signatures) for c in out["tool_calls"]]
    return out


def _has_image(message: Any) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("type") == "image_url" for p in content)


def _tool_images_to_user(messages: list[Any]) -> list[Any]:
    """Images in tool results (a canonical extension: Claude Code's screenshots) moved where
    OpenAI takes them, a user message: OpenAI refuses them in a tool message ("Image URLs are
    only allowed for messages with role 'user'"), a 400 that would end the agent's session
    on failover. A tool message keeps its text; the images follow the run of tool messages,
    at the start of the user message there (which Anthropic's turn puts after its results)
    or in one of their own, so tool messages still follow their tool calls."""
    out: list[Any] = []
    held: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role == "tool" and _has_image(message):
            parts = message["content"]
            held.extend(p for p in parts if isinstance(p, dict) and p.get("type") == "image_url")
            text = [p for p in parts if not (isinstance(p, dict) and p.get("type") == "image_url")]
            out.append({**message, "content": text or "(the result is the image that follows)"})
            continue
        if held and role != "tool":
            if role == "user":
                content = message.get("content")
                rest = [{"type": "text", "text": content}] if isinstance(content, str) \
                    else list(content or [])
                message = {**message, "content": held + rest}
            else:
                out.append({"role": "user", "content": held})
            held = []
        out.append(message)
    if held:
        out.append({"role": "user", "content": held})
    return out


# opens a stream: (body, model, limits, first-chunk deadline) -> the 200 response
_Opener = Callable[[dict[str, Any], ModelConfig, AttemptLimits, float], Awaitable[Response]]


class OpenAIProvider:
    """Adapter for OpenAI-compatible `/chat/completions` endpoints."""

    def __init__(self, config: ProviderConfig, client: HttpClient) -> None:
        self.config = config
        self.client = client.via(config.proxy)
        self._chat_url = f"{config.base_url}/chat/completions"
        # Gemini's thought signatures on tool calls go to Google's own endpoint only, which
        # wants them back (Gemini 3 refuses a tool loop without); everyone else refuses them
        self._signatures = urlsplit(config.base_url).hostname == GOOGLE_OPENAI_HOST
        self._models_url = f"{config.base_url}/models"
        self._embeddings_url = f"{config.base_url}/embeddings"
        self._completions_url = f"{config.base_url}/completions"
        self.audio_url = f"{config.base_url}/audio"
        headers = request_headers(
            config, {"Content-Type": "application/json", "Accept": "application/json"},
            "Authorization", f"Bearer {config.api_key}")
        self.headers = headers
        self._stream_headers = {**headers, "Accept": "text/event-stream"}
        # models that refused a tool loop without each turn's reasoning_content (DeepSeek's
        # thinking mode): learned from their 400, then sent it with every request
        self.reasoning_back: set[str] = set()
        # embedding models that cannot send base64 vectors (learned from their answer), asked
        # for floats that failoverd encodes
        self.floats_only: set[str] = set()
        self._speech = OpenAIAudio(self)  # transcriptions and speech (openai_audio.py)

    def _mended(self, exc: UpstreamError, body: dict[str, Any], model: ModelConfig,
                stream: bool) -> bytes:
        """The request again, when ``exc`` is a model asking for its reasoning back in a tool
        loop, seen for the first time: from now on it gets it (see _with_reasoning). Any
        other error is raised as it is. The refusal came at once, so the attempt's limits,
        already cut to the request's deadline, hold for the second call too."""
        if exc.status != 400 or model.id in self.reasoning_back \
                or "reasoning_content" not in exc.message:
            raise exc
        self.reasoning_back.add(model.id)
        logger.info("%s wants each tool-calling turn's reasoning_content back: sending it from "
                    "now on (%s)", model.id, exc.message)
        return self._payload(body, model, stream=stream)

    def _post(self, data: bytes, limits: AttemptLimits,
              model_id: str) -> Coroutine[Any, Any, bytes]:
        # the call's coroutine itself (no frame of its own on the hot path)
        return fetch(self.client, "POST", self._chat_url, headers=self.headers, data=data,
                     total=limits.total, connect=limits.connect, failure=self.failure,
                     provider=self.config.name, model=model_id,
                     seen=limits.upstream)

    def call(self, url: str, data: bytes, limits: AttemptLimits, model_id: str, *,
              failure: Failure | None = None,
              headers: dict[str, str] | None = None) -> Coroutine[Any, Any, bytes]:
        """A POST of the endpoints other than chat (embeddings, completions, audio): the
        body of its 200, within the attempt's limits; `failure` the adapter's unless given."""
        return fetch(self.client, "POST", url, headers=headers or self.headers, data=data,
                     total=limits.total, connect=limits.connect,
                     failure=failure or self.failure, provider=self.config.name,
                     model=model_id, seen=limits.upstream)

    def _open(self, data: bytes, limits: AttemptLimits, first_deadline: float,
              model_id: str) -> Coroutine[Any, Any, Response]:
        return open_stream(self.client, self._chat_url, data=data,
                           headers=self._stream_headers, first_deadline=first_deadline,
                           connect=limits.connect, failure=self.failure,
                           provider=self.config.name, model=model_id,
                           seen=limits.upstream)

    # ------------------------------------------------------------------ errors

    async def failure(self, resp: Response, model: str) -> UpstreamError:
        return self.failure_of(resp.status, resp.headers, await read_limited(resp), model)

    def failure_of(self, status: int, headers: Any, raw: bytes, model: str) -> UpstreamError:
        """The failure an error answer (`status`, its headers and body) tells."""
        message, code = error_details(raw)
        reason = _glm_reason(code) or classify(status, message, code)
        if reason is FailureReason.NOT_FOUND and not not_found_is_model(f"{message} {code}"):
            # a 404 on the path itself means a wrong base_url, which every model shares
            message = message or f"404 from {self._chat_url}: check base_url"
        retry_after = parse_retry_after(headers)
        if retry_after is None and reason is FailureReason.RATE_LIMIT:
            retry_after = rate_limit_wait(message, headers)
        return upstream_error(
            reason, message or f"HTTP {status}", status=status,
            provider=self.config.name, model=model, retry_after=retry_after, body=raw,
            content_type=headers.get("Content-Type", "application/json"),
        )

    # ------------------------------------------------------------------ calls

    def _payload(self, body: dict[str, Any], model: ModelConfig, stream: bool) -> bytes:
        payload = dict(body)
        payload["model"] = model.name
        payload.pop("failoverd", None)
        messages = payload.get("messages")
        if model.id in self.reasoning_back and isinstance(messages, list):
            payload["messages"] = messages = _with_reasoning(messages)
        signatures = self._signatures
        if isinstance(messages, list) and any(
                _anthropic_only(m, signatures=signatures) for m in messages):
            # Anthropic's signed thinking and prompt-caching breakpoints (kept for Anthropic
            # upstreams) and Gemini's thought signatures (kept for Gemini): OpenAI refuses
            # unknown message fields, and no other model uses them
            payload["messages"] = [
                _openai_message(m, signatures=signatures)
                if _anthropic_only(m, signatures=signatures) else m for m in messages]
        messages = payload.get("messages")
        if signatures and isinstance(messages, list):
            payload["messages"] = messages = _placeholder_signatures(messages)
        if isinstance(messages, list) and any(
                isinstance(m, dict) and m.get("role") == "tool" and _has_image(m)
                for m in messages):
            payload["messages"] = _tool_images_to_user(messages)
        if "cache_control" in payload:
            del payload["cache_control"]
        tools = payload.get("tools")
        if isinstance(tools, list) and any(
                isinstance(t, dict) and "cache_control" in t for t in tools):
            payload["tools"] = [_without_cache(t) for t in tools]
        if "reasoning" in model.capabilities and "max_tokens" in payload \
                and "max_completion_tokens" not in payload:
            # OpenAI's reasoning models refuse max_tokens; requests translated from other
            # APIs (or written for older models) carry it
            payload["max_completion_tokens"] = payload.pop("max_tokens")
        if stream:
            payload["stream"] = True
            self._ask_usage(payload)
        else:
            for key in _STREAM_ONLY_KEYS:
                payload.pop(key, None)
        return orjson.dumps(payload)

    async def complete(self, body: dict[str, Any], model: ModelConfig,
                       limits: AttemptLimits) -> Completion:
        try:
            raw = await self._post(self._payload(body, model, stream=False), limits, model.id)
        except UpstreamError as exc:
            raw = await self._post(self._mended(exc, body, model, False), limits, model.id)
        parsed = json_or_none(raw)
        if not isinstance(parsed, dict) or not parsed.get("choices"):
            raise self.body_error(raw, parsed, model.id, "200 with an unparsable or empty body")
        return Completion(parsed, raw)

    def body_error(self, raw: bytes, parsed: Any, model: str, otherwise: str) -> UpstreamError:
        """An error body inside a 200, classified by its code and text (an in-band
        insufficient_quota is billing); `otherwise` names a body that is no error either."""
        if isinstance(parsed, dict) and "error" in parsed:
            message, code = error_details(raw)
            return upstream_error(_glm_reason(code) or classify_in_band(message, code), message,
                                  status=200, provider=self.config.name, model=model, body=raw)
        base = parsed.get("base_resp") if isinstance(parsed, dict) else None
        status_code = base.get("status_code") if isinstance(base, dict) else None
        if isinstance(base, dict) and isinstance(status_code, int) and status_code:
            message = str(base.get("status_msg") or f"MiniMax status {status_code}")
            reason = _MINIMAX_CODES.get(status_code) or classify_in_band(message)
            return upstream_error(reason, message, status=200, provider=self.config.name,
                                  model=model, body=raw)
        return upstream_error(FailureReason.INVALID_RESPONSE, otherwise, status=200,
                              provider=self.config.name, model=model)

    def chunk_error(self, payload: bytes, model: str) -> UpstreamError | None:
        """The error a stream's event carries, if any: OpenAI's {"error": {...}}, OpenRouter's
        chunk with a top-level error and finish_reason "error", vLLM's {"object": "error"};
        None when "error" was only a word in an answer (a tool's name)."""
        parsed = json_or_none(payload)
        if isinstance(parsed, dict) and not parsed.get("error") \
                and parsed.get("object") != "error":
            return None
        message, code = error_details(payload)
        return upstream_error(_glm_reason(code) or classify_in_band(message, code), message,
                              status=200, provider=self.config.name, model=model)

    def stream(self, body: dict[str, Any], model: ModelConfig,
               limits: AttemptLimits) -> AsyncIterator[Chunk]:
        return self._streamed(self._open_chat, body, model, limits)

    async def _open_chat(self, body: dict[str, Any], model: ModelConfig, limits: AttemptLimits,
                         first_deadline: float) -> Response:
        try:
            return await self._open(self._payload(body, model, stream=True), limits,
                                    first_deadline, model.id)
        except UpstreamError as exc:
            return await self._open(self._mended(exc, body, model, True), limits,
                                    first_deadline, model.id)

    async def _streamed(self, opener: _Opener, body: dict[str, Any], model: ModelConfig,
                        limits: AttemptLimits) -> AsyncIterator[Chunk]:
        """A stream `opener` opens, its events as chunks up to [DONE] (or a finished last
        event); its error events and cuts raised as failures. The one generator between
        the upstream's events and the dispatcher, for chats and text completions alike."""
        first_deadline = asyncio.get_running_loop().time() + limits.first_token
        resp = await opener(body, model, limits, first_deadline)
        name = self.config.name
        clean = False
        try:
            if resp.headers.get("Content-Type", "").split(";")[0].strip().lower() \
                    == "application/json":
                # a 200 with a JSON body instead of an event stream: a vendor's or a gateway's
                # error (quota, balance), which would otherwise read as an empty stream
                raw = await read_limited(resp)
                raise self.body_error(raw, json_or_none(raw), model.id,
                                       "200 with a JSON body instead of an event stream")
            payload = b""
            async for _event, payload in sse_events(resp, first_deadline, limits.idle,
                                                    name, model.id):
                if payload == b"[DONE]":
                    clean = True
                    return
                # anywhere in the event: OpenRouter's comes after id, object, model, provider
                if b'"error"' in payload:
                    error = self.chunk_error(payload, model.id)
                    if error is not None:
                        raise error
                yield Chunk(payload)
            if _finished(payload):
                # no [DONE] after the answer's end: llama.cpp before b3750, TGI before 2.1.1,
                # mistral.rs before 0.5 and others end the body there
                clean = True
                return
            raise upstream_error(FailureReason.INVALID_RESPONSE, "stream ended before [DONE]",
                                 status=200, provider=name, model=model.id)
        finally:
            finish_stream(resp, clean)

    def _embed_post(self, body: dict[str, Any], model: ModelConfig,
                    limits: AttemptLimits) -> Coroutine[Any, Any, bytes]:
        payload = dict(body)
        payload["model"] = model.name
        if payload.get("encoding_format") == "base64" and model.id in self.floats_only:
            payload["encoding_format"] = "float"  # converted back for the client
        return self.call(self._embeddings_url, orjson.dumps(payload), limits, model.id)

    def _base64_refused(self, body: dict[str, Any], model: ModelConfig, why: str) -> bool:
        """Whether a request for base64 vectors failed for the base64 (`why`: the upstream's
        error, or its answer), seen for the first time: from now on the model is asked for
        floats, which failoverd encodes (vLLM before 0.6 and some gateways refuse base64
        with a 400, others answer an empty list; the official SDKs ask for it by default)."""
        if body.get("encoding_format") != "base64" or model.id in self.floats_only:
            return False
        self.floats_only.add(model.id)
        logger.info("%s cannot send base64 embeddings: asking for floats from now on (%s)",
                    model.id, why)
        return True

    async def embed(self, body: dict[str, Any], model: ModelConfig,
                    limits: AttemptLimits) -> Completion:
        try:
            raw = await self._embed_post(body, model, limits)
        except UpstreamError as exc:
            text = exc.message.lower()
            if exc.status is None or exc.status < 400 or not (
                    "base64" in text or "encoding_format" in text) \
                    or not self._base64_refused(body, model, exc.message):
                raise
            raw = await self._embed_post(body, model, limits)
        parsed = json_or_none(raw)
        if not embeddings.is_answer(parsed, embeddings.count(body)):
            if isinstance(parsed, dict) and parsed.get("data") == [] \
                    and self._base64_refused(body, model, "an empty list of embeddings"):
                return await self.embed(body, model, limits)
            raise self.body_error(raw, parsed, model.id,
                                   "200 without the embeddings asked for")
        try:
            converted = embeddings.conform(parsed, body.get("encoding_format"))
            lengths = [embeddings.dimensions_of(d["embedding"]) for d in parsed["data"]] \
                if body.get("dimensions") else []
        except ValueError as exc:
            raise upstream_error(FailureReason.INVALID_RESPONSE, f"200 with an unusable "
                                 f"embedding: {exc}", status=200, provider=self.config.name,
                                 model=model.id) from None
        ignored = embeddings.ignored_dimensions(lengths, body.get("dimensions"))
        if ignored is not None:
            raise upstream_error(FailureReason.INCAPABLE, ignored, status=200,
                                 provider=self.config.name, model=model.id)
        # a server that ignored encoding_format: the answer as converted
        return Completion(parsed) if converted else Completion(parsed, raw)

    def _ask_usage(self, payload: dict[str, Any]) -> None:
        """With stream_usage, a stream's request asks for its usage (for
        failoverd_tokens_total); the OpenAI front leaves the usage chunk out for the client
        that did not ask (api/fronts.py)."""
        options = payload.get("stream_options")
        if self.config.stream_usage and not (
                isinstance(options, dict) and options.get("include_usage")):
            payload["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                         "include_usage": True}

    def _text_payload(self, body: dict[str, Any], model: ModelConfig, stream: bool) -> bytes:
        payload = dict(body)
        payload["model"] = model.name
        if stream:
            payload["stream"] = True
            self._ask_usage(payload)
        else:
            for key in _STREAM_ONLY_KEYS:
                payload.pop(key, None)
        return orjson.dumps(payload)

    async def _text_failure(self, resp: Response, model: str) -> UpstreamError:
        """A text completion's failure: a 404 or 405 says this server (or this model) has no
        legacy completions (OpenAI's chat models: "This is a chat model and not supported in
        the v1/completions endpoint"; Groq and others lack the path), which is incapable of
        the request, not a model that is gone: its breaker, which chat shares, stays as it
        is."""
        error = await self.failure(resp, model)
        if resp.status in (404, 405):
            error.reason = FailureReason.INCAPABLE
            error.message = f"no text completions here ({resp.status}: {error.message})"
        return error

    async def complete_text(self, body: dict[str, Any], model: ModelConfig,
                            limits: AttemptLimits) -> Completion:
        raw = await self.call(self._completions_url, self._text_payload(body, model, False),
                               limits, model.id, failure=self._text_failure)
        parsed = json_or_none(raw)
        if not completions.is_answer(parsed):
            raise self.body_error(raw, parsed, model.id, "200 without a text completion")
        return Completion(parsed, raw)

    def stream_text(self, body: dict[str, Any], model: ModelConfig,
                    limits: AttemptLimits) -> AsyncIterator[Chunk]:
        return self._streamed(self._open_text, body, model, limits)

    def _open_text(self, body: dict[str, Any], model: ModelConfig, limits: AttemptLimits,
                   first_deadline: float) -> Coroutine[Any, Any, Response]:
        return open_stream(self.client, self._completions_url,
                           data=self._text_payload(body, model, True),
                           headers=self._stream_headers, first_deadline=first_deadline,
                           connect=limits.connect, failure=self._text_failure,
                           provider=self.config.name, model=model.id,
                           seen=limits.upstream)

    # ------------------------------------------------------------------ audio

    def transcribe(self, body: dict[str, Any], model: ModelConfig,
                   limits: AttemptLimits) -> Coroutine[Any, Any, Completion]:
        return self._speech.transcribe(body, model, limits)

    def stream_transcript(self, body: dict[str, Any], model: ModelConfig,
                          limits: AttemptLimits) -> AsyncIterator[Chunk]:
        return self._speech.stream_transcript(body, model, limits)

    def speak(self, body: dict[str, Any], model: ModelConfig,
              limits: AttemptLimits) -> AsyncIterator[Chunk]:
        return self._speech.speak(body, model, limits)

    def default_output(self, model: ModelConfig) -> int | None:
        return None  # the upstream's own limit applies

    async def probe(self, model: ModelConfig, kind: ProbeKind, timeout: float,
                    max_tokens: int) -> None:
        if kind == "none":
            return
        if kind == "models":
            await probe_get(self.client, self._models_url, headers=self.headers, timeout=timeout,
                            config=self.config, failure=self.failure, model=model.id)
            return
        body: dict[str, Any] = {"messages": [{"role": "user", "content": "ping"}]}
        if "reasoning" in model.capabilities:
            body["max_completion_tokens"] = max_tokens
            body["reasoning_effort"] = "low"
        else:
            body["max_tokens"] = max_tokens
        await self.complete(body, model, probe_limits(timeout, self.config.connect_timeout))


def _finished(payload: bytes) -> bool:
    """Whether a stream's last event ended the answer: its choices all have a finish_reason,
    or it is the usage-only chunk (stream_options.include_usage) that follows them."""
    parsed = json_or_none(payload)
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    if not isinstance(choices, list):
        return False
    if not choices:
        return isinstance(parsed, dict) and parsed.get("usage") is not None
    return all(isinstance(c, dict) and c.get("finish_reason") for c in choices)
