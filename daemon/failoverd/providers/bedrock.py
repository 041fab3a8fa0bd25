"""Amazon Bedrock adapter: the Bedrock Runtime's Converse API (``POST /model/{modelId}/converse``
and ``/converse-stream``).

Requests and answers are translated by failoverd.translate.bedrock; this module is the HTTP
edge: URLs (the model id or inference profile percent-encoded in the path, ``:`` as ``%3A``,
as the AWS SDKs send it), authentication, the event stream of ``converse-stream``
(providers/eventstream.py). The endpoint is the provider's ``base_url``, chosen when the
configuration is read: given, else the one the environment or the AWS profile in use
configures (awsendpoints.py), else ``https://bedrock-runtime.<region>.amazonaws.com``.
Bedrock's errors are classified in providers/bedrock_errors.py.

Authentication is either a Bedrock API key (``Authorization: Bearer``) or, without one, AWS
Signature Version 4 (service ``bedrock``, providers/sigv4.py), a fresh signature for every
request with the credentials its source (awscreds.py: the environment, the shared credentials
file, a container's or the EC2 instance's role) holds then; failing to get them is an ``auth``
failure of the call, or a ``connection`` one when a credential endpoint did not answer or
failed (a 5xx): that says nothing of the credentials and must not block the provider.

A refusal of the request's cachePoint blocks (`cache_refusal`: only Bedrock's own words for
it, never any ValidationException) is not the model's failure: the same request goes again at
once without them, within the same attempt, and the model serves it. "This model takes none"
is remembered (`UNCACHED_SECONDS`, and until a reload builds a new adapter), so its next
requests go without them and pay no refused round trip; a refusal of this request's points
(too many, one after a reasoning block) is not. Each such call is counted in
``failoverd_upstream_resends_total`` (metrics.RESENT): it is no failover and no retry.

Anthropic's token count (POST /v1/messages/count_tokens) is Bedrock's CountTokens for Claude
(`count_tokens`): the ``converse`` form of its input, the very Converse request a messages
request would be (no maxTokens to invent, as the ``invokeModel`` form's Anthropic body needs),
for the foundation model id, as CountTokens refuses inference profiles ("us.anthropic...").
A refusal for the model (not counted there, or no bedrock:CountTokens on it) is remembered
(`UNCOUNTED_SECONDS`): the estimate answers meanwhile, with no call.

Bedrock's model listing is on another host (the control plane), under another permission a
runtime-only role may lack, and knows nothing of inference profiles; so the `models` probe is
a one-token Converse call: it proves the endpoint, the credentials, and that this model (or
profile) answers, for a handful of tokens.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any
from urllib.parse import quote

import orjson

from failoverd.awscreds import AwsCredentials, AwsCredentialsError
from failoverd.awsruntime import CredentialSource, open_source
from failoverd.clock import Clock, SystemClock
from failoverd.config import ModelConfig, ProbeKind, ProviderConfig
from failoverd.errors import RequestError, UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import HttpClient, HttpClientError, Response
from failoverd.http1.client import target
from failoverd.metrics import RESENT
from failoverd.providers.base import AttemptLimits, Chunk, Completion, Lacking, ends_in_prefill
from failoverd.providers.bedrock_errors import (
    CacheRefused,
    cache_refusal,
    classify_error,
    error_message,
    error_type,
)
from failoverd.providers.eventstream import Decoder, FrameError, Message
from failoverd.providers.http import (
    fetch,
    finish_stream,
    json_or_none,
    open_stream,
    parse_retry_after,
    probe_limits,
    read_limited,
    redact_keys,
    request_headers,
    upstream_error,
)
from failoverd.providers.sigv4 import Signer
from failoverd.timeouts import timeout, timeout_at
from failoverd.translate import bedrock as translate
from failoverd.translate.anthropic_front import anthropic_to_canonical
from failoverd.translate.anthropic_request import DEFAULT_MAX_TOKENS
from failoverd.translate.bedrock_stream import StreamTranslator

logger = logging.getLogger(__name__)

SERVICE = "bedrock"  # the SigV4 signing name of the Bedrock Runtime
# how long a model that refused cache points ("this model takes none") gets none: short, as
# the same words have come now and then for models that do cache (a Claude Code session would
# pay full input price all along), and the price of asking again is one refused call
UNCACHED_SECONDS = 600.0
EVENT_STREAM = "application/vnd.amazon.eventstream"
# how long a model whose count Bedrock refused for the model (it counts none for it, or the
# role may not call bedrock:CountTokens on it) answers failoverd's estimate without asking
UNCOUNTED_SECONDS = 600.0
# what a CountTokens `converse` input takes of a Converse request (no inferenceConfig)
_COUNTED_KEYS = ("messages", "system", "toolConfig", "additionalModelRequestFields")
# a cross-region inference profile's geography before the model id ("us.", "eu.", "apac.",
# "us-gov.", "global."): CountTokens takes foundation models only
_PROFILE_PREFIX = re.compile(r"^[a-z]{2,6}(?:-[a-z]+)?\.(?=anthropic\.)")



def count_model_id(name: str) -> str | None:
    """The foundation model CountTokens counts for a model name (an id, an inference profile or
    an ARN): Claude's id, without a profile's geography (the tokenizer is the model's); None for
    the models CountTokens counts none of (all but Claude's, and an application inference
    profile or provisioned throughput, whose ARN names no model)."""
    base = _PROFILE_PREFIX.sub("", name.rsplit("/", 1)[-1])
    return base if base.startswith("anthropic.claude") else None


def _still(until: dict[str, float], name: str, clock: Clock) -> bool:
    """Whether `name` is remembered in `until` (by the monotonic time it is forgotten at)
    still; one past its time is forgotten now."""
    end = until.get(name)
    if end is None:
        return False
    if clock.monotonic() < end:
        return True
    del until[name]
    return False


class BedrockProvider(Lacking):
    """Adapter for Amazon Bedrock's Converse API (the Bedrock Runtime)."""

    api = "Bedrock's Converse API"

    def __init__(self, config: ProviderConfig, client: HttpClient, *,
                 now: Callable[[], float] = time.time, clock: Clock | None = None) -> None:
        self.config = config
        self._client = client.via(config.proxy)
        self._base = config.base_url.rstrip("/")
        self._now = now
        self._clock = clock or SystemClock()
        # models that refused cache points ("this model takes none"), by Bedrock model id:
        # until when (monotonic) their requests go without them
        self._uncached: dict[str, float] = {}
        # models Bedrock counted none for, by Bedrock model id: until when (monotonic)
        self._uncounted: dict[str, float] = {}
        base = {"Content-Type": "application/json", "Accept": "application/json"}
        # SigV4: the credentials' source, and the signer of the credentials it gave last
        self._credentials: CredentialSource | None = None
        self._signer: tuple[AwsCredentials, Signer] | None = None
        if config.api_key:
            base = request_headers(config, base, "Authorization", f"Bearer {config.api_key}")
        else:
            base = request_headers(config, base, "", "")
            if config.aws is not None:
                # the instance's and container's credential endpoints are local: no proxy
                self._credentials = open_source(config.aws, client=client, clock=clock)
        self._headers = base
        self._stream_headers = {**base, "Accept": EVENT_STREAM}

    def _url(self, model: ModelConfig, operation: str) -> str:
        # every reserved character encoded, ':' and '/' (of an ARN) included, as the SDKs do
        return f"{self._base}/model/{quote(model.name, safe='-._~')}/{operation}"

    async def _signed(self, url: str, headers: dict[str, str], data: bytes,
                      model: str) -> tuple[dict[str, str], AwsCredentials | None]:
        """The request's headers, signed, and the credentials that signed them (None with an
        API key): an ExpiredTokenException refuses those, not whichever signed last."""
        if self._credentials is None:
            return headers, None
        try:
            credentials = await self._credentials.get()
        except AwsCredentialsError as exc:
            # an endpoint down or failing says nothing of the credentials: the models'
            # breakers count it; a refusal blocks the provider, as a refused key does
            reason = FailureReason.CONNECTION if exc.transient else FailureReason.AUTH
            raise upstream_error(reason, f"no AWS credentials to sign with: {exc}",
                                 status=None, provider=self.config.name, model=model) from exc
        if self._signer is None or self._signer[0] is not credentials:
            self._signer = (credentials, Signer(
                credentials.access_key_id, credentials.secret_access_key, self.config.region,
                SERVICE, credentials.session_token, now=self._now))
        tgt = target(url)
        return {**headers, **self._signer[1].sign("POST", url, headers, data,
                                                  host=tgt.host_header)}, credentials

    # ------------------------------------------------------------------ errors

    def _error(self, status: int | None, raw: bytes, kind: str, model: str, *,
               headers: Any = None, retry_after: float | None = None,
               content_type: str = "application/json",
               signed_with: AwsCredentials | None = None) -> UpstreamError:
        message, body = error_message(raw)
        kind = kind or error_type(headers, body)
        kind = kind[:1].upper() + kind[1:]  # a stream's throttlingException, as the header's
        reason = classify_error(status, message, kind)
        if kind == "ExpiredTokenException" and self._credentials is not None \
                and signed_with is not None and self._credentials.refused(signed_with):
            # temporary credentials revoked or expired early, or a credentials file rewritten
            # meanwhile: the next request signs with new ones, so this blocks nothing (an
            # auth block would close every model of the provider for auth_open_seconds). The
            # request's own credentials: others may have replaced them while it was under way
            reason = FailureReason.CONNECTION
        if kind == "UnknownOperationException" or (
                reason is FailureReason.NOT_FOUND and status == 404 and not kind):
            # a path Bedrock does not know: a wrong base_url, which every model shares, or
            # without one a wrong endpoint setting (AWS_ENDPOINT_URL_BEDROCK_RUNTIME, ...)
            message = (f"{message or 'not found'} ({self._base}: check base_url, or without "
                       "it the AWS endpoint settings: AWS_ENDPOINT_URL_BEDROCK_RUNTIME, "
                       "AWS_ENDPOINT_URL, the profile's services and endpoint_url)")
        text = f"{kind}: {message}" if kind and message else (message or kind
                                                              or f"HTTP {status}")
        scope = cache_refusal(status, message, kind)
        if scope is not None:
            refused = CacheRefused(reason, redact_keys(text)[:500], status=status,
                                    provider=self.config.name, model=model, body=raw,
                                    content_type=content_type)
            refused.scope = scope
            return refused
        return upstream_error(reason, text, status=status, provider=self.config.name,
                              model=model, retry_after=retry_after, body=raw,
                              content_type=content_type)

    def _failure(self, signed_with: AwsCredentials | None
                 ) -> Callable[[Response, str], Awaitable[UpstreamError]]:
        """The reading of a request's error answer, knowing what signed the request."""

        async def failure(resp: Response, model: str) -> UpstreamError:
            raw = await read_limited(resp)
            return self._error(resp.status, raw, "", model, headers=resp.headers,
                               retry_after=parse_retry_after(resp.headers),
                               content_type=resp.headers.get("Content-Type",
                                                             "application/json"),
                               signed_with=signed_with)

        return failure

    def _invalid(self, message: str, model: str) -> UpstreamError:
        return upstream_error(FailureReason.INVALID_RESPONSE, message, status=200,
                              provider=self.config.name, model=model)

    # ------------------------------------------------------------------ calls

    def _payload(self, body: dict[str, Any], model: ModelConfig, *,
                 cache_points: bool = True) -> bytes:
        # a TranslationError goes up as it is: the candidate is incapable, no call is made
        return orjson.dumps(translate.to_request(body, max_output_tokens=model.max_output_tokens,
                                                 model=model.name, cache_points=cache_points))

    def _caches(self, model: ModelConfig) -> bool:
        """Whether the model's requests may carry cache points now (no refusal remembered;
        past its time, ask again: it may have gained prompt caching)."""
        return not _still(self._uncached, model.name, self._clock)

    def _without_cache(self, refused: CacheRefused, body: dict[str, Any],
                       model: ModelConfig, sent: bytes, limits: AttemptLimits) -> bytes:
        """The request again without cache points, after their refusal (told to the client
        in the answer's notices); raises the refusal when the request had none (nothing to
        drop: not about its points after all)."""
        plain = self._payload(body, model, cache_points=False)
        if plain == sent:
            raise refused
        if refused.scope == "model":
            if model.name not in self._uncached:
                logger.info("%s takes no cache points (%s): its requests go without them for "
                            "%.0fs", model.id, refused.message, UNCACHED_SECONDS)
            self._uncached[model.name] = self._clock.monotonic() + UNCACHED_SECONDS
        else:
            logger.info("%s refused this request's cache points (%s): sent again without them",
                        model.id, refused.message)
        RESENT[(model.id, "cache_points")] += 1
        if limits.notices is not None:
            limits.notices.append(f"{model.id}: refused the request's cache points; sent again "
                                  "without them (not cached)")
        return plain

    async def _converse(self, url: str, data: bytes, total: float, connect: float,
                        model: ModelConfig) -> bytes:
        headers, signed_with = await self._signed(url, self._headers, data, model.id)
        return await fetch(self._client, "POST", url, headers=headers, data=data, total=total,
                           connect=connect, failure=self._failure(signed_with),
                           provider=self.config.name, model=model.id)

    async def complete(self, body: dict[str, Any], model: ModelConfig,
                       limits: AttemptLimits) -> Completion:
        data = self._payload(body, model, cache_points=self._caches(model))
        url = self._url(model, "converse")
        loop = asyncio.get_running_loop()
        end = loop.time() + limits.total
        try:
            raw = await self._converse(url, data, limits.total, limits.connect, model)
        except CacheRefused as refused:
            data = self._without_cache(refused, body, model, data, limits)
            # the same attempt: the refusal came at once, within the attempt's time limit
            left = max(end - loop.time(), 0.0)
            raw = await self._converse(url, data, left, min(limits.connect, left), model)
        parsed = json_or_none(raw)
        if not isinstance(parsed, dict) or not isinstance(parsed.get("output"), dict):
            raise self._invalid("200 with an unparsable or empty body", model.id)
        completion = translate.to_completion(parsed, model.name)
        choice = completion["choices"][0]
        message = choice["message"]
        if not (message.get("content") or message.get("tool_calls")) \
                and choice["finish_reason"] == "stop" and not ends_in_prefill(body):
            raise self._invalid(f"200 without any answer (stopReason "
                                f"{parsed.get('stopReason')})", model.id)
        return Completion(completion)

    def counts_tokens(self, model: ModelConfig) -> bool:
        # past its time, ask again: the role or the model may count
        return count_model_id(model.name) is not None and not _still(self._uncounted,
                                                                      model.name, self._clock)

    async def count_tokens(self, body: dict[str, Any], model: ModelConfig,
                           timeout: float) -> int:  # noqa: ASYNC109 - TokenCounter's signature
        """Bedrock's own count (CountTokens, ``POST /model/{modelId}/count-tokens``) of an
        Anthropic Messages count body: its ``converse`` input, the Converse request failoverd
        would send for it (without cache points, which count nothing), for the foundation model
        of the model's id or profile (`count_model_id`), within `timeout` (signing included)."""
        name = count_model_id(model.name)
        if name is None:
            raise upstream_error(FailureReason.INCAPABLE,
                                 f"Bedrock counts no tokens for {model.name}", status=None,
                                 provider=self.config.name, model=model.id)
        try:
            # the endpoint's body has no max_tokens: the model's, for a thinking budget to fit
            canonical = anthropic_to_canonical(
                {**body, "max_tokens": model.max_output_tokens or DEFAULT_MAX_TOKENS})
            converse = translate.to_request(canonical, model=model.name, cache_points=False)
        except RequestError as exc:  # nothing Converse can express: the estimate answers
            raise upstream_error(FailureReason.INCAPABLE, f"not countable: {exc.message}",
                                 status=None, provider=self.config.name,
                                 model=model.id) from exc
        data = orjson.dumps({"input": {"converse": {
            k: converse[k] for k in _COUNTED_KEYS if k in converse}}})
        url = f"{self._base}/model/{quote(name, safe='-._~')}/count-tokens"
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        try:
            with timeout_at(end):
                headers, signed_with = await self._signed(url, self._headers, data, model.id)
        except TimeoutError as exc:
            raise upstream_error(FailureReason.TIMEOUT, "no AWS credentials within the count's "
                                 "time limit", status=None, provider=self.config.name,
                                 model=model.id) from exc
        left = max(end - loop.time(), 0.0)
        try:
            raw = await fetch(self._client, "POST", url, headers=headers, data=data, total=left,
                              connect=min(left, self.config.connect_timeout),
                              failure=self._failure(signed_with), provider=self.config.name,
                              model=model.id)
        except UpstreamError as exc:
            if exc.reason in (FailureReason.INCAPABLE, FailureReason.NOT_FOUND):
                # "The provided model doesn't support counting tokens." (a model or region
                # without it), or no bedrock:CountTokens on it: no count to ask for a while
                logger.info("%s: Bedrock counts no tokens for %s (%s): estimates for %.0fs",
                            model.id, name, exc.message, UNCOUNTED_SECONDS)
                self._uncounted[model.name] = self._clock.monotonic() + UNCOUNTED_SECONDS
            raise
        parsed = json_or_none(raw)
        count = parsed.get("inputTokens") if isinstance(parsed, dict) else None
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise self._invalid("CountTokens answered without inputTokens", model.id)
        return count

    async def _read(self, resp: Response, decoder: Decoder, deadline: float | None,
                    idle: float, model: str) -> list[Message] | None:
        """The next messages of the stream (None at its end): the first by `deadline` (loop
        time), later ones within `idle` seconds each."""
        name = self.config.name
        while True:
            try:
                if deadline is not None:
                    with timeout_at(deadline):
                        data = await resp.read_upto(decoder.needed)
                else:
                    with timeout(idle):
                        data = await resp.read_upto(decoder.needed)
                if not data:
                    if decoder.pending:
                        raise self._invalid("stream cut inside an event", model)
                    return None
                messages = decoder.feed(data)
            except TimeoutError as exc:
                what = "no first token" if deadline is not None else "stream idle"
                raise upstream_error(FailureReason.TIMEOUT, f"{what} within the time limit",
                                     status=None, provider=name, model=model) from exc
            except FrameError as exc:
                raise self._invalid(f"corrupt event stream: {exc}", model) from exc
            except (HttpClientError, OSError) as exc:
                raise upstream_error(FailureReason.INVALID_RESPONSE, f"stream cut: {exc}",
                                     status=None, provider=name, model=model) from exc
            if messages:
                return messages

    def _event(self, message: Message, translator: StreamTranslator, model: str,
               signed_with: AwsCredentials | None) -> list[dict[str, Any]]:
        kind = message.message_type
        if kind == "exception":
            raise self._error(None, message.payload,
                              str(message.headers.get(":exception-type") or ""), model,
                              signed_with=signed_with)
        if kind == "error":
            text = str(message.headers.get(":error-message") or "")
            raise self._error(None, orjson.dumps({"message": text}),
                              str(message.headers.get(":error-code") or ""), model,
                              signed_with=signed_with)
        if kind != "event":
            return []
        event = json_or_none(message.payload)
        if not isinstance(event, dict):
            raise self._invalid("unparsable stream event", model)
        return translator.feed(message.event_type, event)

    async def stream(self, body: dict[str, Any], model: ModelConfig,
                     limits: AttemptLimits) -> AsyncIterator[Chunk]:
        first_deadline = asyncio.get_running_loop().time() + limits.first_token
        data = self._payload(body, model, cache_points=self._caches(model))
        chunks = self._stream(body, data, model, limits, first_deadline)
        try:
            first = await anext(chunks, None)
        except CacheRefused as refused:
            # before the first chunk (nothing held back was sent): again without them, by
            # the same first-token deadline
            data = self._without_cache(refused, body, model, data, limits)
            chunks = self._stream(body, data, model, limits, first_deadline)
            first = await anext(chunks, None)
        async with aclosing(chunks):
            if first is None:
                return
            yield first
            async for chunk in chunks:
                yield chunk

    async def _stream(self, body: dict[str, Any], data: bytes, model: ModelConfig,
                      limits: AttemptLimits, first_deadline: float
                      ) -> AsyncGenerator[Chunk, None]:
        """One ConverseStream call of `data`, its first chunk by `first_deadline`."""
        url = self._url(model, "converse-stream")
        options = body.get("stream_options")
        translator = StreamTranslator(
            model.name, include_usage=isinstance(options, dict)
            and bool(options.get("include_usage")))
        headers, signed_with = await self._signed(url, self._stream_headers, data, model.id)
        resp = await open_stream(self._client, url, data=data, headers=headers,
                                 first_deadline=first_deadline, connect=limits.connect,
                                 failure=self._failure(signed_with),
                                 provider=self.config.name, model=model.id)
        decoder = Decoder()
        clean = False
        # chunks are held back until the model begins its answer (text, a tool call or
        # reasoning): an exception before it (throttled, overloaded) or an empty answer still
        # fails over
        held: list[dict[str, Any]] = []
        try:
            while not translator.done:
                started = translator.content_started
                messages = await self._read(resp, decoder, None if started else first_deadline,
                                            limits.idle, model.id)
                if messages is None:
                    break
                for message in messages:
                    chunks = self._event(message, translator, model.id, signed_with)
                    if not translator.content_started:
                        held.extend(chunks)
                        continue
                    for chunk in (*held, *chunks):
                        yield Chunk.of(chunk)
                    held.clear()
            if not translator.stopped:
                raise self._invalid("stream ended before messageStop", model.id)
            if not translator.content_started and not ends_in_prefill(body) \
                    and translate.finish_reason(translator.stop_reason, False) == "stop":
                raise self._invalid("200 stream without any answer (stopReason "
                                    f"{translator.stop_reason})", model.id)
            clean = True  # read to its metadata event or to its end
            for chunk in (*held, *translator.finish()):
                yield Chunk.of(chunk)
        finally:
            finish_stream(resp, clean)

    def default_output(self, model: ModelConfig) -> int | None:
        return model.max_output_tokens  # sent as maxTokens when the request sets none

    async def probe(self, model: ModelConfig, kind: ProbeKind,
                    timeout: float,  # noqa: ASYNC109 - the Provider protocol's signature
                    max_tokens: int) -> None:
        if kind == "none":
            return
        # `models`: one token (see the module's docstring); `chat`: the configured few
        tokens = 1 if kind == "models" else max_tokens
        probe = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": tokens}
        await self.complete(probe, model, probe_limits(timeout, self.config.connect_timeout))
