"""Shared HTTP edge for the adapters: exception mapping, status classification, stream reading.

This is where the HTTP client's exceptions end: everything leaving this module is an
UpstreamError.
"""

from __future__ import annotations

import asyncio
import email.utils
import errno
import re
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from typing import Any, TypeVar

import orjson

from failoverd import requestid
from failoverd.config import ProviderConfig
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import HttpClientError, PayloadError, Requester, Response
from failoverd.providers.base import AttemptLimits, RateLimitSink
from failoverd.timeouts import timeout, timeout_at

T = TypeVar("T")

MAX_ERROR_BODY = 64 * 1024
# the most data one server-sent event may hold (a whole image or audio clip fits)
MAX_EVENT = 64 * 1024 * 1024

_CONTEXT_MARKERS = (
    "context_length_exceeded", "context length", "context window", "maximum context",
    "too many tokens", "prompt is too long", "input is too long", "reduce the length",
    "tokens exceeds", "exceeds the maximum number of tokens", "input token count",
    "string_above_max_length", "request too large", "context limit",
    # llama.cpp's server: "request (4390 tokens) exceeds the available context size (4096
    # tokens)", type exceed_context_size_error; Kimi: "exceeded model token limit: 8192"
    "available context size", "exceed_context_size", "context size has been exceeded",
    "exceeded model token limit",
    # llama.cpp's embeddings: "input (1024 tokens) is too large to process. increase the
    # physical batch size (current batch size: 512)", a 500
    "too large to process", "physical batch size",
)
# llama.cpp's server said the same with a 500 (before b6400, and "Context size has been
# exceeded." when a generation fills the window): words no other server error uses
_SERVER_CONTEXT_MARKERS = ("available context size", "exceed_context_size",
                           "context size has been exceeded", "too large to process",
                           "physical batch size")
_FILTER_MARKERS = (
    "content_filter", "content_policy", "content policy", "content management policy",
    "safety system", "safety reasons", "safety filter", "flagged", "responsible ai",
    "prohibited_content", "blocklist",
    "content filtering",  # Anthropic: "Output blocked by content filtering policy" (a 400)
)
# a model that lacks a feature the request uses (Ollama "... does not support tools", vLLM's
# "auto" tool choice without --enable-auto-tool-choice, OpenAI's "Unsupported parameter:
# 'temperature' is not supported with this model.", Gemini's "Developer instruction is not
# enabled for models/gemma-3-27b-it"): another model may have it
_UNSUPPORTED_MARKERS = ("does not support", "not supported by this model",
                        "not supported with this model", "unsupported_parameter",
                        "not enabled for models/", "--enable-auto-tool-choice",
                        "not supported in the v1/completions")
_BILLING_MARKERS = (
    "insufficient_quota", "billing", "credit balance", "payment required", "quota exceeded",
    "exceeded your current quota", "insufficient balance", "insufficient_balance",
    "arrearage", "account balance",
)
_OVERLOAD_MARKERS = ("overload", "capacity", "unavailable", "busy")
_RATE_MARKERS = ("rate limit", "rate_limit", "too many requests", "resource_exhausted",
                 "requests per", "tokens per")
_NOT_FOUND_MARKERS = ("model_not_found", "does not exist", "not found", "no such model",
                      "unknown model")


def _quota_or_rate(message: str, code: str) -> FailureReason | None:
    """BILLING or RATE_LIMIT when the error speaks of either, else None.

    The provider's code goes first, then rate-limit words, then billing words anywhere:
    OpenAI's rate-limit message for an account without a payment method ends "Visit
    https://platform.openai.com/account/billing to add a payment method", and that is still
    a rate limit (code rate_limit_exceeded), while insufficient_quota is billing whatever
    the text says.
    """
    code_text = code.lower()
    if any(m in code_text for m in _BILLING_MARKERS):
        return FailureReason.BILLING
    text = f"{code_text} {message.lower()}"
    if any(m in text for m in _RATE_MARKERS):
        return FailureReason.RATE_LIMIT
    if any(m in text for m in _BILLING_MARKERS):
        return FailureReason.BILLING
    return None


def classify(status: int, message: str = "", code: str = "") -> FailureReason:
    """Maps an upstream HTTP error to a reason, per DESIGN.md's table.

    `message` and `code` come from the provider's error body (adapters extract them); the
    text is only inspected here, at the edge.
    """
    text = f"{code} {message}".lower()
    if 400 <= status < 500 and "request too large" in text and "per min" in text:
        # Groq's 413 and OpenAI's 429 "Request too large for model ... on tokens per minute
        # (TPM): Limit 6000, Requested 14368": the request alone is over the per-minute quota,
        # so no wait makes it fit here, while a model with a larger quota (or none) takes it
        # whatever its context window; not this model's fault (no breaker count)
        return FailureReason.INCAPABLE
    if 400 <= status < 500 and ("max_tokens_per_request" in text
                                or "tokens per request" in text):
        # OpenAI's embeddings 400 "Requested 301234 tokens, max 300000 tokens per request":
        # a cap on one request, not a rate ("tokens per" min) nor the window, which another
        # model may not have; no breaker count (one client's batch must not open the model)
        return FailureReason.INCAPABLE
    if status == 429:
        quota_or_rate = _quota_or_rate(message, code)
        if quota_or_rate is None and "overload" in text:
            # Kimi's 429 engine_overloaded_error "The engine is currently overloaded, please
            # try again later": capacity, retried with backoff, not a quota of the account
            return FailureReason.OVERLOADED
        return quota_or_rate or FailureReason.RATE_LIMIT
    if status == 402:
        return FailureReason.BILLING
    if status in (401, 403):
        if any(m in text for m in _BILLING_MARKERS):
            return FailureReason.BILLING
        return FailureReason.AUTH
    if status == 404:
        return FailureReason.NOT_FOUND
    if status == 408:
        return FailureReason.TIMEOUT
    if status == 413:
        return FailureReason.CONTEXT_OVERFLOW
    if status >= 500 and any(m in text for m in _SERVER_CONTEXT_MARKERS):
        return FailureReason.CONTEXT_OVERFLOW
    if status == 529:
        return FailureReason.OVERLOADED
    if status == 503:
        if any(m in text for m in _OVERLOAD_MARKERS) or not text.strip():
            return FailureReason.OVERLOADED
        return FailureReason.SERVER_ERROR
    if status >= 500:
        if any(m in text for m in _RATE_MARKERS):
            return FailureReason.RATE_LIMIT
        return FailureReason.SERVER_ERROR
    if 400 <= status < 500:
        if any(m in text for m in _CONTEXT_MARKERS):
            return FailureReason.CONTEXT_OVERFLOW
        if any(m in text for m in _FILTER_MARKERS):
            return FailureReason.CONTENT_FILTER
        quota_or_rate = _quota_or_rate(message, code)
        if quota_or_rate is not None:
            return quota_or_rate
        if any(m in text for m in _UNSUPPORTED_MARKERS):
            return FailureReason.INCAPABLE
        return FailureReason.BAD_REQUEST
    return FailureReason.INVALID_RESPONSE


_AUTH_MARKERS = ("invalid_api_key", "invalid api key", "authentication", "unauthorized",
                 "permission")


def classify_in_band(message: str = "", code: str = "") -> FailureReason:
    """An error that arrived inside a 200 (a stream's error event, an error body): there is
    no status to go by, so the provider's code and words decide; unknown is server_error."""
    quota_or_rate = _quota_or_rate(message, code)
    if quota_or_rate is not None:
        return quota_or_rate
    text = f"{code} {message}".lower()
    for markers, reason in ((_CONTEXT_MARKERS, FailureReason.CONTEXT_OVERFLOW),
                            (_FILTER_MARKERS, FailureReason.CONTENT_FILTER),
                            (_AUTH_MARKERS, FailureReason.AUTH),
                            (("overload",), FailureReason.OVERLOADED)):
        if any(m in text for m in markers):
            return reason
    return FailureReason.SERVER_ERROR


def not_found_is_model(message: str) -> bool:
    """Whether a 404's text is about the model (vs. a wrong base_url path)."""
    low = message.lower()
    return any(m in low for m in _NOT_FOUND_MARKERS)


def parse_retry_after(headers: Any, now: float | None = None) -> float | None:
    """Seconds from `Retry-After` (delta or HTTP date) or OpenAI's `retry-after-ms`."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)", re.ASCII)
_GO_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TRY_AGAIN = re.compile(r"try again in ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)", re.IGNORECASE)


def go_duration(text: str) -> float | None:
    """Seconds in a Go-style duration ("120ms", "1.5s", "6m0s", "1h2m3s"), as OpenAI and Groq
    write their rate-limit waits; None for anything else."""
    text = text.strip()
    # the forms most answers carry ("12ms", "1.5s"), read on every answer: without the regex
    if text.endswith("ms"):
        number = text[:-2]
        if number.replace(".", "", 1).isdigit() and number.isascii():
            return float(number) / 1000.0
    elif text.endswith("s") and text[:-1].replace(".", "", 1).isdigit() and text.isascii():
        return float(text[:-1])
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


def rate_limit_wait(message: str, headers: Any) -> float | None:
    """The wait a 429 without Retry-After states otherwise (OpenAI, Groq): its message's
    "Please try again in 7m12s", else the x-ratelimit-reset-* of the exhausted limits."""
    found = _TRY_AGAIN.search(message)
    if found:
        return go_duration(found.group(1))
    waits = [go_duration(headers.get(f"x-ratelimit-reset-{kind}") or "")
             for kind in ("requests", "tokens")
             if headers.get(f"x-ratelimit-remaining-{kind}") == "0"]
    known = [w for w in waits if w is not None]
    return max(known) if known else None


def request_headers(config: ProviderConfig, base: dict[str, str], key_name: str,
                    key_value: str) -> dict[str, str]:
    """An adapter's request headers: `base`, then the API key (`key_name: key_value`, the
    kind's own way, or the whole key in the configured `api_key_header`), then the
    provider's extra `headers`."""
    headers = dict(base)
    if config.api_key:
        if config.api_key_header:
            headers[config.api_key_header] = config.api_key
        else:
            headers[key_name] = key_value
    headers.update(dict(config.headers))
    return headers


def json_or_none(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


# Key-shaped words in upstream error text: OpenAI's "Incorrect API key provided: sk-proj-abc1
# ****wxyz" shows part of the key, other vendors echo it whole. The text travels to clients
# (attempts lists), logs, events, hooks and MQTT, so these never leave the adapter edge.
_KEY_LIKE = re.compile(
    r"\b(?:sk|rk|gsk|xai|hf)[-_][A-Za-z0-9_\-*]{8,}"  # sk-..., sk-ant-..., gsk_...
    r"|\bAIza[A-Za-z0-9_\-]{20,}"  # Google API keys
    r"|[A-Za-z0-9_\-]*\*{4,}[A-Za-z0-9_\-]*")  # a masked key: first and last characters
_REDACTED = "[redacted]"
# request headers whose values are credentials, to be cut out of any error text verbatim
_SECRET_HEADER_WORDS = ("auth", "key", "token", "secret")


def redact_keys(text: str) -> str:
    """`text` without anything shaped like an API key."""
    return _KEY_LIKE.sub(_REDACTED, text)


def hide_credentials(exc: UpstreamError, headers: Mapping[str, str]) -> UpstreamError:
    """`exc` with the credentials sent in `headers` cut out of its message and body: a key
    without a recognisable shape, echoed back by the upstream, is caught here."""
    for name, value in headers.items():
        if not any(w in name.lower() for w in _SECRET_HEADER_WORDS):
            continue
        secret = value.removeprefix("Bearer ").removeprefix("Basic ").strip()
        if len(secret) < 8:
            continue  # too short to search for without hitting ordinary words
        message = exc.message.replace(secret, _REDACTED)
        # the message was cut at 500 characters, maybe inside the key
        cut = next((n for n in range(len(secret) - 1, 7, -1)
                    if message.endswith(secret[:n])), 0)
        if cut:
            message = message[:-cut] + _REDACTED
        if message != exc.message:
            exc.message = message
            exc.args = (f"{exc.reason}: {message}",)
        if exc.body is not None and secret.encode() in exc.body:
            exc.body = exc.body.replace(secret.encode(), _REDACTED.encode())
    return exc


def upstream_error(reason: FailureReason, message: str, *, status: int | None,
                   provider: str, model: str, retry_after: float | None = None,
                   body: bytes | None = None, content_type: str = "application/json"
                   ) -> UpstreamError:
    # keep messages short: they travel into attempts lists, logs and events
    return UpstreamError(reason, redact_keys(message)[:500], status=status, provider=provider,
                         model=model, retry_after=retry_after, body=body,
                         content_type=content_type)


# what a client call raises for a network, protocol or timeout problem
_MAPPED = (TimeoutError, HttpClientError, OSError)

Failure = Callable[[Response, str], Awaitable[UpstreamError]]
"""An adapter's reading of a non-200 answer (response, model id) into an UpstreamError."""


# errors that say failoverd itself ran out of something (descriptors, memory, local ports)
_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                           errno.EADDRNOTAVAIL})


def _local_cause(exc: BaseException) -> OSError | None:
    """The OSError of failoverd's own resources behind `exc` (itself or its causes), if any."""
    seen: BaseException | None = exc
    for _ in range(4):  # the client wraps an OSError once or twice
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in _LOCAL_ERRNOS:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def mapped_error(exc: BaseException, provider: str, model: str) -> UpstreamError:
    """The UpstreamError for a client / socket / timeout exception (one of `_MAPPED`)."""
    local = _local_cause(exc)
    if local is not None:
        error = upstream_error(FailureReason.CONNECTION,
                               f"failoverd is out of resources: {local.strerror or local}",
                               status=None, provider=provider, model=model)
        error.local = True
        return error
    # TimeoutError first: ConnectTimeout is one too
    if isinstance(exc, TimeoutError):
        return upstream_error(FailureReason.TIMEOUT, "upstream did not answer in time",
                              status=None, provider=provider, model=model)
    if isinstance(exc, PayloadError):
        return upstream_error(FailureReason.INVALID_RESPONSE, f"response cut: {exc}",
                              status=None, provider=provider, model=model)
    return upstream_error(FailureReason.CONNECTION, f"{type(exc).__name__}: {exc}",
                          status=None, provider=provider, model=model)


async def fetch(client: Requester, method: str, url: str, *,
                headers: Mapping[str, str], data: bytes | None = None, total: float,
                connect: float, failure: Failure, provider: str, model: str,
                seen: RateLimitSink | None = None, family: str = "openai") -> bytes:
    """The body of a 200 answer, read in full within `total` seconds.

    Any other status raises the adapter's `failure`; the client's exceptions end here, as
    UpstreamErrors (the mapping is inline rather than a context manager: this is the
    non-streaming hot path). `seen` takes a 200's rate-limit headers (of `family`): an error
    answer's wait is the failure's own (its Retry-After, which the breaker and the same-model
    retry go by).
    """
    resp: Response | None = None
    sent = seen.start() if seen is not None else 0.0
    try:
        with timeout(total):
            resp = await client.request(method, url, data=data, headers=headers,
                                        connect_timeout=connect)
            requestid.upstream(resp.headers)  # the attempt's upstream id, 200 or not
            if resp.status != 200:
                raise hide_credentials(await failure(resp, model), headers)
            if seen is not None:
                seen.seen(family, model, resp.headers, sent)
            return await resp.read()  # gives the connection back to the pool
    except BaseException as exc:
        _end(resp, exc)
        if isinstance(exc, _MAPPED) and not isinstance(exc, UpstreamError):
            raise mapped_error(exc, provider, model) from exc
        raise


def _end(resp: Response | None, exc: BaseException) -> None:
    """Ends a response that raised: an error answer (its body read) keeps its connection; a
    timeout, cancellation or broken read closes it, which also tells the upstream to stop
    generating."""
    if resp is None:
        return
    if isinstance(exc, UpstreamError):
        resp.release()
    else:
        resp.close()


async def open_stream(client: Requester, url: str, *, data: bytes,
                      headers: Mapping[str, str], first_deadline: float, connect: float,
                      failure: Failure, provider: str, model: str,
                      seen: RateLimitSink | None = None, family: str = "openai") -> Response:
    """POSTs a streaming request: its 200 response, headers received before `first_deadline`.

    Any other status raises the adapter's `failure`. On any exception the response is ended
    (see `_end`); on success the caller owns it and ends it with `finish_stream`. `seen`
    takes the 200 head's rate-limit headers (of `family`; trailers are not read).
    """
    resp: Response | None = None
    sent = seen.start() if seen is not None else 0.0
    try:
        with timeout_at(first_deadline):
            resp = await client.request("POST", url, data=data, headers=headers,
                                        connect_timeout=connect)
            requestid.upstream(resp.headers)
            if resp.status != 200:
                raise hide_credentials(await failure(resp, model), headers)
            if seen is not None:
                seen.seen(family, model, resp.headers, sent)
    except BaseException as exc:
        _end(resp, exc)
        if isinstance(exc, _MAPPED) and not isinstance(exc, UpstreamError):
            raise mapped_error(exc, provider, model) from exc
        raise
    return resp


async def all_or_none(calls: Iterable[Awaitable[T]]) -> list[T]:
    """The results of `calls`, made at once, in their order. The first failure (or a
    cancellation) cancels the others, and is raised once they have ended."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def finish_stream(resp: Response, clean: bool) -> None:
    """Ends a stream's response: a fully read one gives its connection back to the pool; any
    other is closed, since the connection is in an unknown state."""
    if clean:
        resp.release()
    else:
        resp.close()


async def probe_get(client: Requester, url: str, *, headers: Mapping[str, str], timeout: float,
                    config: ProviderConfig, failure: Failure, model: str) -> bytes:
    """A probe's GET (a models listing): `timeout` for everything, connecting within both
    limits, as `probe_limits` sets them for a chat probe."""
    return await fetch(client, "GET", url, headers=headers, total=timeout,
                       connect=min(timeout, config.connect_timeout), failure=failure,
                       provider=config.name, model=model)


def probe_limits(timeout: float, connect_timeout: float) -> AttemptLimits:
    """The limits of a chat probe: `timeout` for everything, connecting within both limits."""
    return AttemptLimits(total=timeout, connect=min(timeout, connect_timeout),
                         first_token=timeout, idle=timeout)


async def read_limited(resp: Response, limit: int = MAX_ERROR_BODY) -> bytes:
    """Reads at most `limit` bytes of an (error) body."""
    return await resp.read_upto(limit)


async def _more(resp: Response, got_first: bool, first_deadline: float, idle: float,
                provider: str, model: str) -> None:
    """Waits for more of a stream: the first token until `first_deadline` (loop time), then
    at most `idle` seconds per wait; a timeout or a cut is the stream's UpstreamError."""
    try:
        if got_first:
            with timeout(idle):
                await resp.more()
        else:
            with timeout_at(first_deadline):
                await resp.more()
    except TimeoutError as exc:
        what = "stream idle" if got_first else "no first token"
        raise upstream_error(FailureReason.TIMEOUT, f"{what} within the time limit",
                             status=None, provider=provider, model=model) from exc
    except (HttpClientError, OSError) as exc:
        raise _cut(exc, provider, model) from exc


def _cut(exc: BaseException, provider: str, model: str) -> UpstreamError:
    return upstream_error(FailureReason.INVALID_RESPONSE, f"stream cut: {exc}", status=None,
                          provider=provider, model=model)


# The two readers below take every line that is already in (`buffered_line`) and wait (with
# `_more`, under the stream's time limits) only when none is: lines that came in one read cost
# no wait each. sse_events does not read through `lines`: an async generator in between would
# cost a suspension per line, twice per event.


async def lines(resp: Response, first_deadline: float, idle: float,
                provider: str, model: str) -> AsyncIterator[bytes]:
    """Yields the response's lines (without line endings), blank lines included.

    The first non-blank line must arrive before `first_deadline` (loop time); after that, a
    gap longer than `idle` seconds is a timeout.
    """
    got_first = False
    while True:
        try:
            line = resp.buffered_line()
        except HttpClientError as exc:
            raise _cut(exc, provider, model) from exc
        if line is None:
            await _more(resp, got_first, first_deadline, idle, provider, model)
            continue
        if not line:
            return
        line = line.rstrip(b"\r\n")
        # an SSE comment (": PROCESSING", as OpenRouter sends while it waits) is not a token
        if line and not got_first and not line.startswith(b":"):
            got_first = True
        yield line


async def chunks(resp: Response, first_deadline: float, idle: float, provider: str,
                 model: str, size: int = 64 * 1024) -> AsyncGenerator[bytes, None]:
    """Yields the response's body as it comes in (audio), at most `size` bytes at a time.
    Time limits as for `lines`: the first bytes before `first_deadline`, then gaps of at
    most `idle` seconds."""
    got_first = False
    while True:
        data = resp.buffered(size)
        if data is None:
            await _more(resp, got_first, first_deadline, idle, provider, model)
            continue
        if not data:
            return
        got_first = True
        yield data


async def sse_events(resp: Response, first_deadline: float, idle: float,
                     provider: str, model: str, *,
                     max_event: int = MAX_EVENT) -> AsyncIterator[tuple[str, bytes]]:
    """Server-sent events as (event name, data) pairs; multi-line data joined with newlines.
    Time limits as for `lines`; an event of more than `max_event` bytes of data (one that
    never ends) is an invalid answer, not held in memory until the idle timeout."""
    event = ""
    data: list[bytes] = []
    size = 0
    got_first = False
    while True:
        try:
            line = resp.buffered_line()
        except HttpClientError as exc:
            raise _cut(exc, provider, model) from exc
        if line is None:
            await _more(resp, got_first, first_deadline, idle, provider, model)
            continue
        if not line:
            break
        line = line.rstrip(b"\r\n")
        if not line:
            if data:
                yield event, b"\n".join(data)
            event, data, size = "", [], 0
            continue
        if not got_first and not line.startswith(b":"):
            got_first = True  # a comment (": PROCESSING") is not a token
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
            size += len(value)
            if size > max_event:
                raise upstream_error(FailureReason.INVALID_RESPONSE,
                                     f"an event of more than {max_event} bytes", status=200,
                                     provider=provider, model=model)
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode("utf-8", "replace")
        elif line.startswith(b"error:"):
            # llama.cpp's server streamed a failure as an `error:` field (then [DONE]), which
            # SSE readers drop: an error event in OpenAI's shape instead
            event = "error"
            data.append(b'{"error":' + line[6:].strip() + b"}")
        # comments (":") and other fields (id, retry) are not used by any provider
    if data:
        yield event, b"\n".join(data)
