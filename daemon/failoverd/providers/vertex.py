"""Google Cloud Vertex AI adapter: Gemini models (publisher ``google``), Claude models
(publisher ``anthropic``) and Model Garden's models as a service of one project and location.

A model whose name starts with ``claude`` is Anthropic's: its requests are Anthropic Messages
bodies without ``model`` and with ``"anthropic_version": "vertex-2023-10-16"``, posted to
``{base}/v1/projects/{project}/locations/{region}/publishers/anthropic/models/{model}:rawPredict``
(``:streamRawPredict`` with ``"stream": true``), and the answers are the Messages API's,
streamed as its server-sent events: the Anthropic adapter's translation and stream reading
serve them (`VertexClaude`). Any other model is Google's: ``.../publishers/google/models/
{model}:generateContent`` (``:streamGenerateContent?alt=sse``) with the Gemini API's wire
format, served by the Gemini adapter's (`VertexGemini`); embedding models by ``:predict``. A
model named with its publisher (``meta/llama-3.3-70b-instruct-maas``) is one of Model Garden's
models as a service, served by Vertex's OpenAI-compatible ``.../endpoints/openapi/chat/
completions`` and the OpenAI adapter's wire format (`VertexOpenAI`).
``anthropic-beta`` features travel as on api.anthropic.com, in the ``anthropic-beta`` header
(the provider's ``headers``): Vertex reads it there.

Every request carries ``Authorization: Bearer`` with an access token from the provider's
Google credentials (googlecreds.py), fetched or refreshed as the request is made; failing to
get one is an ``auth`` failure of the call, or a ``connection`` one when the token endpoint
did not answer or failed. A 401 makes the source drop the token it was sent with, and the
call is made again at once with a new one, as google-auth's AuthorizedSession does (an
``auth`` failure would close every model of the provider for auth_open_seconds over a token
revoked early), within what is left of the attempt's time; a 401 for a token fetched for a
refusal a minute ago or less is the credentials' trouble: ``auth``. Waiting for a token counts
in the attempt's time, which is cut to the request's deadline. A provider that names no project
and gets its tokens from the metadata server takes that server's project, asked at its first
call (googlecreds.ProjectSource: once, then kept) within the same time: until it is known the
sub-adapters' URLs name none (`VertexProvider._locate`).

Errors come in two shapes: Google's ``{"error": {"code", "message", "status", "details"}}``
(sometimes as a one-element list), which Vertex's front answers for both publishers (quotas,
permissions, unknown models), and Anthropic's ``{"type": "error", "error": {...}}`` from
Claude itself (``overloaded_error`` 529, ``invalid_request_error`` 400). Google's are read as
the Gemini adapter reads them, with Vertex's own words first (`vertex_reason`): a model this
project may not call here and any other ``FAILED_PRECONDITION`` (the project's state, never
the request) are the model's ``not_found``; 499 ``CANCELLED`` (the backend giving up under
load) a ``server_error``.

The ``models`` probe is a one-token call (as for Bedrock): Vertex's publisher-model listing
is another API that says nothing of whether this project may call the model here.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, TypeVar
from urllib.parse import quote

import orjson

from failoverd.clock import Clock
from failoverd.config import ModelConfig, ProbeKind, ProviderConfig
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.googlecreds import (
    AccessToken,
    GoogleCredentialsError,
    MetadataServer,
    ProjectSource,
    TokenSource,
    open_project,
    open_source,
)
from failoverd.http1 import HttpClient, Response
from failoverd.providers.anthropic import AnthropicProvider
from failoverd.providers.base import AttemptLimits, Chunk, Completion, Lacking
from failoverd.providers.gemini import GeminiProvider, classify_gemini, error_details
from failoverd.providers.http import (
    all_or_none,
    fetch,
    json_or_none,
    open_stream,
    parse_retry_after,
    probe_limits,
    upstream_error,
)
from failoverd.providers.openai import OpenAIProvider
from failoverd.timeouts import timeout_at
from failoverd.tokens import text_tokens
from failoverd.translate import embeddings
from failoverd.translate.anthropic import canonical_to_anthropic

T = TypeVar("T")

ANTHROPIC_VERSION = "vertex-2023-10-16"
# instances per :predict call: text-embedding-005 and text-multilingual-embedding-002 take
# 250, gemini-embedding-001 one
EMBED_BATCH = 250
# and 20,000 input tokens a call (a 400 beyond): texts are spread over calls by failoverd's
# estimate of their tokens, with room for the estimate's error
EMBED_TOKENS = 15000
EMBED_CALLS = 8  # :predict calls at once for one request
# the token a request was sent with, read when its answer is a 401 (per task: concurrent
# requests each have theirs)
_SENT: contextvars.ContextVar[AccessToken | None] = contextvars.ContextVar(
    "vertex_token", default=None)

# Vertex's words for a model this project cannot call here, whatever the status: "Project
# `123` is not allowed to use Publisher Model `projects/.../models/claude-...`" (a 400
# FAILED_PRECONDITION until the model is enabled in Model Garden), "Publisher model ... is
# not servable in region ...", "... was not found or your project does not have access to
# it", and the IAM denial that cannot tell a missing model from a missing permission
# ("Permission 'aiplatform.endpoints.predict' denied on resource '//aiplatform.googleapis.com/
# projects/.../publishers/google/models/gemini-9' (or it may not exist).") — one model's
# breaker pays, not the provider (as Bedrock's adapter does for an IAM denial naming the model)
_MODEL_MARKERS = ("not allowed to use publisher model", "not servable in region",
                  "or it may not exist", "does not have access to it")


async def _close(chunks: AsyncIterator[Chunk]) -> None:
    if isinstance(chunks, AsyncGenerator):
        await chunks.aclose()


def model_id(model: ModelConfig) -> str:
    """`model`'s Vertex model id: its name without a resource path's
    ``publishers/<publisher>/models/`` (or ``models/``) before it."""
    name = model.name
    for prefix in ("publishers/anthropic/models/", "publishers/google/models/", "models/"):
        name = name.removeprefix(prefix)
    return name


def is_claude(model: ModelConfig) -> bool:
    """Whether Vertex serves `model` as Anthropic's (publisher ``anthropic``)."""
    return model_id(model).startswith("claude")


def is_open(model: ModelConfig) -> bool:
    """Whether `model` is named with its publisher (``meta/llama-3.3-70b-instruct-maas``,
    ``deepseek-ai/deepseek-r1-0528-maas``): a Model Garden model served by Vertex's
    OpenAI-compatible endpoint."""
    return "/" in model_id(model)


def google_error(raw: bytes) -> bool:
    """Whether an error body is Google's shape (not Anthropic's)."""
    body = json_or_none(raw)
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and ("status" in error or "code" in error) \
        and body.get("type") != "error"


def vertex_reason(http_status: int, message: str, status: str, info: str) -> FailureReason:
    """A Google-shaped Vertex error's reason: Vertex's own words, then the Gemini API's."""
    low = message.lower()
    if status != "RESOURCE_EXHAUSTED" and http_status in (400, 403, 404) \
            and any(m in low for m in _MODEL_MARKERS):
        return FailureReason.NOT_FOUND
    if info == "BILLING_DISABLED":
        return FailureReason.BILLING
    if status == "CANCELLED" or http_status == 499:
        # "The operation was cancelled." (reason backendError): Vertex's backend giving up
        # under load; failoverd's own cancelling is never read back as an answer
        return FailureReason.SERVER_ERROR
    if status == "FAILED_PRECONDITION" and "billing" not in low:
        # the project's state, never the request ("Precondition check failed.": a partner
        # model not enabled, its terms not accepted, an organization policy), which no
        # retry cures until someone fixes it: this model is out, the request goes on
        return FailureReason.NOT_FOUND
    return classify_gemini(http_status, message, status, info)


class _Auth:
    """The access tokens of a vertex provider, shared by its two publishers' adapters."""

    def __init__(self, config: ProviderConfig, client: HttpClient, clock: Clock | None) -> None:
        self.provider = config.name
        self.tokens: TokenSource | None = None
        self.extra: dict[str, str] = {}
        # no project configured, the metadata server's tokens: its project, asked once
        self.project: ProjectSource | None = None
        if not config.project and isinstance(config.google, MetadataServer):
            self.project = open_project(config.google, client=client, clock=clock)
        if config.google is not None:
            self.tokens = open_source(config.google, client=client, proxy=config.proxy,
                                      clock=clock)
            quota = config.google.quota_project_id
            if quota:  # as google-auth sends it: the project billed for a user's calls
                self.extra["x-goog-user-project"] = quota

    async def located(self, model_id: str) -> str | None:
        """The metadata server's project when the provider names none (None when it does):
        failing to get it fails the call as a token would (``auth``, ``connection`` when
        the server did not answer)."""
        if self.project is None:
            return None
        try:
            return await self.project.get()
        except GoogleCredentialsError as exc:
            reason = FailureReason.CONNECTION if exc.transient else FailureReason.AUTH
            raise upstream_error(reason, str(exc), status=None, provider=self.provider,
                                 model=model_id) from exc

    async def headers(self, base: Mapping[str, str], model: ModelConfig) -> dict[str, str]:
        return await self.headers_for(base, model.id)

    async def headers_for(self, base: Mapping[str, str], model_id: str) -> dict[str, str]:
        headers = {**self.extra, **base}
        if self.tokens is None:
            return headers
        try:
            token = await self.tokens.get()
        except GoogleCredentialsError as exc:
            # an endpoint down or failing says nothing of the credentials: the models'
            # breakers count it; a refusal blocks the provider, as a refused key does
            reason = FailureReason.CONNECTION if exc.transient else FailureReason.AUTH
            raise upstream_error(reason, f"no Google access token: {exc}", status=None,
                                 provider=self.provider, model=model_id) from exc
        _SENT.set(token)
        headers["Authorization"] = f"Bearer {token.token}"
        return headers

    def checked(self, exc: UpstreamError) -> UpstreamError:
        """`exc`, as a connection failure when it is a 401 for a token the source dropped
        for it (the next call has a new one: see `stale`)."""
        token = _SENT.get()
        if exc.status == 401 and self.tokens is not None and token is not None \
                and self.tokens.refused(token):
            exc.reason = FailureReason.CONNECTION
            exc.args = (f"{exc.reason}: {exc.message}",)
        return exc

    @staticmethod
    def stale(exc: UpstreamError) -> bool:
        """Whether `exc` is a 401 that `checked` took for a stale token: the call is made
        again at once with a new one, as google-auth's AuthorizedSession does."""
        return exc.status == 401 and exc.reason is FailureReason.CONNECTION


def _location_url(config: ProviderConfig, project: str) -> str:
    base = config.base_url.rstrip("/").removesuffix("/v1")
    return f"{base}/v1/projects/{quote(project, safe=':.-')}/locations/{config.region}"


def _publisher_url(config: ProviderConfig, publisher: str, project: str) -> str:
    return f"{_location_url(config, project)}/publishers/{publisher}/models"


def _google_failure(provider: str, status: int, raw: bytes, model: str, headers: Any,
                    content_type: str, base: str) -> UpstreamError:
    message, status_name, delay, info, code = error_details(raw)
    effective = (code or 500) if status == 200 else status
    reason = vertex_reason(effective, message, status_name, info)
    if reason is FailureReason.NOT_FOUND and not status_name:
        # a path Vertex does not know (an HTML 404 of Google's front): a wrong base_url
        message = f"{message[:200] or 'not found'} ({base}: check base_url)"
    retry_after = parse_retry_after(headers) if headers is not None else None
    return upstream_error(reason, message or f"HTTP {status}", status=status,
                          provider=provider, model=model,
                          retry_after=retry_after if retry_after is not None else delay,
                          body=raw, content_type=content_type)


class VertexClaude(AnthropicProvider):
    """Claude on Vertex AI: the Anthropic adapter with Vertex's URLs, body and tokens."""

    api = "Claude on Vertex AI"

    def __init__(self, config: ProviderConfig, client: HttpClient, auth: _Auth) -> None:
        super().__init__(config, client)
        self._auth = auth
        self.locate(config.project)
        # the version goes in the body on Vertex
        self._headers.pop("anthropic-version", None)
        self._stream_headers.pop("anthropic-version", None)

    def locate(self, project: str) -> None:
        """The URLs of `project` (the metadata server's, once known, when none is given)."""
        self._models = _publisher_url(self.config, "anthropic", project)
        self._messages_url = self._models  # what a 404's hint names
        # the model goes in the body here (the Anthropic SDK's AnthropicVertex does the same)
        self._count_url = f"{self._models}/count-tokens:rawPredict"

    def _endpoint(self, model: ModelConfig, stream: bool) -> str:
        # "@" stays as it is (claude-sonnet-4-5@20250929), as the SDKs send it
        name = quote(model_id(model), safe="-._~@")
        return f"{self._models}/{name}:{'streamRawPredict' if stream else 'rawPredict'}"

    async def _request_headers(self, stream: bool, model: ModelConfig) -> Mapping[str, str]:
        return await self._auth.headers(self._stream_headers if stream else self._headers,
                                        model)

    def _count_fields(self, model: ModelConfig) -> dict[str, Any]:
        return {"model": model_id(model), "anthropic_version": ANTHROPIC_VERSION}

    def _payload(self, body: dict[str, Any], model: ModelConfig, stream: bool) -> bytes:
        payload = canonical_to_anthropic(body, model.name, self.default_output(model),
                                         max_output_tokens=model.max_output_tokens)
        payload.pop("model", None)  # in the URL
        payload["anthropic_version"] = ANTHROPIC_VERSION
        if stream:
            payload["stream"] = True
        return orjson.dumps(payload)

    def _error(self, status: int, raw: bytes, model: str, *, retry_after: float | None = None,
               content_type: str = "application/json") -> UpstreamError:
        if google_error(raw):
            exc = _google_failure(self.config.name, status, raw, model, None, content_type,
                                  self._models)
            if retry_after is not None:
                exc.retry_after = retry_after
        else:
            exc = super()._error(status, raw, model, retry_after=retry_after,
                                 content_type=content_type)
        return self._auth.checked(exc)


def _within(limits: AttemptLimits, left: float) -> AttemptLimits:
    """`limits` cut to the `left` seconds of the attempt (a call made again after a 401)."""
    left = max(left, 0.001)
    # replace(): whatever else the limits carry (the request's notices) goes along
    return replace(limits, total=min(limits.total, left), connect=min(limits.connect, left),
                   first_token=min(limits.first_token, left))


def _batches(texts: list[str], size: int) -> list[list[str]]:
    """`texts` in order, in calls of at most `size` texts and `EMBED_TOKENS` estimated tokens
    (a text over that alone is a call of its own, refused or not by its model's limit)."""
    batches: list[list[str]] = []
    batch: list[str] = []
    tokens = 0
    for text in texts:
        count = text_tokens(text)
        if batch and (len(batch) >= size or tokens + count > EMBED_TOKENS):
            batches.append(batch)
            batch, tokens = [], 0
        batch.append(text)
        tokens += count
    if batch:
        batches.append(batch)
    return batches


class VertexGemini(GeminiProvider):
    """Gemini on Vertex AI: the Gemini adapter with Vertex's URLs and tokens."""

    api = "Gemini on Vertex AI"

    def __init__(self, config: ProviderConfig, client: HttpClient, auth: _Auth) -> None:
        super().__init__(config, client)
        self._auth = auth
        self.locate(config.project)

    def locate(self, project: str) -> None:
        """The URLs of `project` (as VertexClaude.locate)."""
        self._models = _publisher_url(self.config, "google", project)

    def _model_url(self, model: ModelConfig) -> str:
        return f"{self._models}/{quote(model_id(model), safe='-._~@')}"

    async def _request_headers(self, stream: bool, model: ModelConfig) -> Mapping[str, str]:
        return await self._auth.headers(self._stream_headers if stream else self._headers,
                                        model)

    def _error(self, status: int, raw: bytes, model: str, headers: Any = None,
               content_type: str = "application/json") -> UpstreamError:
        return self._auth.checked(_google_failure(self.config.name, status, raw, model,
                                                  headers, content_type, self._models))

    async def embed(self, body: dict[str, Any], model: ModelConfig,
                    limits: AttemptLimits) -> Completion:
        """``:predict`` with one instance per text input (`EMBED_BATCH` a call and about
        `EMBED_TOKENS` tokens, one for gemini-embedding models), ``dimensions`` as
        outputDimensionality, ``autoTruncate`` off: a text over the model's limit fails as
        OpenAI's would, never cut silently. The token count is the sum of the predictions'
        statistics."""
        texts = embeddings.texts(body, "Vertex AI's text embeddings")
        parameters: dict[str, Any] = {"autoTruncate": False}
        if body.get("dimensions"):
            parameters["outputDimensionality"] = body["dimensions"]
        batches = _batches(texts, 1 if model_id(model).startswith("gemini-embedding")
                           else EMBED_BATCH)
        gate = asyncio.Semaphore(EMBED_CALLS)

        async def one(batch: list[str]) -> tuple[list[Any], int]:
            async with gate:
                return await self._predict(batch, parameters, model, limits)

        results = await all_or_none(one(batch) for batch in batches)
        vectors = [v for result, _ in results for v in result]
        ignored = embeddings.ignored_dimensions([len(v) for v in vectors],
                                                body.get("dimensions"))
        if ignored is not None:
            raise upstream_error(FailureReason.INCAPABLE, ignored, status=200,
                                 provider=self.config.name, model=model.id)
        return Completion(embeddings.answer(vectors, body, model.name,
                                            sum(tokens for _, tokens in results)))

    async def _predict(self, texts: list[str], parameters: dict[str, Any], model: ModelConfig,
                       limits: AttemptLimits) -> tuple[list[Any], int]:
        name = self.config.name
        payload = {"instances": [{"content": text} for text in texts],
                   "parameters": parameters}
        raw = await fetch(self._client, "POST", f"{self._model_url(model)}:predict",
                          headers=await self._request_headers(False, model),
                          data=orjson.dumps(payload), total=limits.total,
                          connect=limits.connect, failure=self._failure, provider=name,
                          model=model.id)
        parsed = json_or_none(raw)
        predictions = parsed.get("predictions") if isinstance(parsed, dict) else None
        vectors: list[Any] | None = None
        tokens = 0
        if isinstance(predictions, list):
            vectors = []
            for item in predictions:
                found = item.get("embeddings") if isinstance(item, dict) else None
                vectors.append(found.get("values") if isinstance(found, dict) else None)
                stats = found.get("statistics") if isinstance(found, dict) else None
                count = stats.get("token_count") if isinstance(stats, dict) else None
                if isinstance(count, int | float) and not isinstance(count, bool):
                    tokens += int(count)
        if not embeddings.vectors_ok(vectors, len(texts)):
            raise upstream_error(FailureReason.INVALID_RESPONSE,
                                 "200 without the embeddings asked for", status=200,
                                 provider=name, model=model.id)
        assert vectors is not None
        return vectors, tokens


class VertexOpenAI(OpenAIProvider):
    """Model Garden's models as a service (Llama, DeepSeek, Qwen, Mistral...) by Vertex's
    OpenAI-compatible Chat Completions endpoint (``.../endpoints/openapi/chat/completions``,
    the model named with its publisher); the OpenAI adapter with Vertex's URL and tokens."""

    api = "Vertex AI's OpenAI-compatible endpoint"

    def __init__(self, config: ProviderConfig, client: HttpClient, auth: _Auth) -> None:
        super().__init__(config, client)
        self._auth = auth
        self.locate(config.project)

    def locate(self, project: str) -> None:
        """The URL of `project` (as VertexClaude.locate)."""
        self._chat_url = (f"{_location_url(self.config, project)}"
                          "/endpoints/openapi/chat/completions")

    async def _post(self, data: bytes, limits: AttemptLimits, model_id: str) -> bytes:
        return await fetch(self.client, "POST", self._chat_url,
                           headers=await self._auth.headers_for(self.headers, model_id),
                           data=data, total=limits.total, connect=limits.connect,
                           failure=self.failure, provider=self.config.name, model=model_id)

    async def _open(self, data: bytes, limits: AttemptLimits, first_deadline: float,
                    model_id: str) -> Response:
        return await open_stream(
            self.client, self._chat_url, data=data,
            headers=await self._auth.headers_for(self._stream_headers, model_id),
            first_deadline=first_deadline, connect=limits.connect, failure=self.failure,
            provider=self.config.name, model=model_id)

    def failure_of(self, status: int, headers: Any, raw: bytes, model: str) -> UpstreamError:
        if google_error(raw):
            exc = _google_failure(self.config.name, status, raw, model, headers,
                                  headers.get("Content-Type", "application/json"),
                                  self._chat_url)
        else:
            exc = super().failure_of(status, headers, raw, model)
        return self._auth.checked(exc)


class VertexProvider(Lacking):
    """Adapter for Vertex AI: Claude models by the Anthropic publisher's rawPredict, models
    named with their publisher by the OpenAI-compatible endpoint, the others by Gemini's
    generateContent (see the module's docstring)."""

    api = "Vertex AI"

    def __init__(self, config: ProviderConfig, client: HttpClient, *,
                 clock: Clock | None = None) -> None:
        self.config = config
        self._auth = auth = _Auth(config, client, clock)
        self._claude = VertexClaude(config, client, auth)
        self._gemini = VertexGemini(config, client, auth)
        self._models_open = VertexOpenAI(config, client, auth)
        self._located = auth.project is None  # nothing to ask the metadata server

    async def _locate(self, model: ModelConfig) -> None:
        """The sub-adapters' URLs with the metadata server's project, at the first call of a
        provider that names none."""
        if self._located:
            return
        project = await self._auth.located(model.id)
        if project is not None and not self._located:
            for adapter in (self._claude, self._gemini, self._models_open):
                adapter.locate(project)
            self._located = True

    def _for(self, model: ModelConfig) -> AnthropicProvider | GeminiProvider | VertexOpenAI:
        if is_claude(model):
            return self._claude
        return self._models_open if is_open(model) else self._gemini

    # A 401 for a token revoked or expired early is answered at once with the call again and
    # a new token, within what is left of the attempt's time; a second 401 is the
    # credentials' (`auth`), and is raised. Waiting for a token counts in the attempt's time
    # (`total`, already cut to the request's deadline): a token endpoint that does not answer
    # must not hold a request past its deadline.

    async def _attempt(self, model: ModelConfig, limits: AttemptLimits,
                       call: Callable[[AttemptLimits], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        end = loop.time() + limits.total
        try:
            with timeout_at(end):
                await self._locate(model)
                try:
                    return await call(limits)
                except UpstreamError as exc:
                    if not self._auth.stale(exc):
                        raise
                return await call(_within(limits, end - loop.time()))
        except TimeoutError:
            raise upstream_error(FailureReason.TIMEOUT, f"no answer within {limits.total:g} s "
                                 "(the access token's fetch included)", status=None,
                                 provider=self.config.name, model=model.id) from None

    async def complete(self, body: dict[str, Any], model: ModelConfig,
                       limits: AttemptLimits) -> Completion:
        adapter = self._for(model)
        return await self._attempt(model, limits,
                                   lambda left: adapter.complete(body, model, left))

    async def stream(self, body: dict[str, Any], model: ModelConfig,
                     limits: AttemptLimits) -> AsyncIterator[Chunk]:
        # the first chunk's time limit (the token's fetch included) is the router's
        adapter = self._for(model)
        loop = asyncio.get_running_loop()
        end = loop.time() + limits.first_token
        if not self._located:  # the first call: the metadata server's project first
            try:
                with timeout_at(end):
                    await self._locate(model)
            except TimeoutError:
                raise upstream_error(FailureReason.TIMEOUT, "no project from the metadata "
                                     f"server within {limits.first_token:g} s", status=None,
                                     provider=self.config.name, model=model.id) from None
            limits = _within(limits, end - loop.time())
        chunks = adapter.stream(body, model, limits)
        try:
            first = await anext(chunks)
        except UpstreamError as exc:
            await _close(chunks)
            if not self._auth.stale(exc):
                raise
            chunks = adapter.stream(body, model, _within(limits, end - loop.time()))
            first = await anext(chunks)
        except StopAsyncIteration:  # pragma: no cover - the adapters raise for no answer
            return
        try:
            yield first
            async for chunk in chunks:
                yield chunk
        finally:
            await _close(chunks)

    async def embed(self, body: dict[str, Any], model: ModelConfig,
                    limits: AttemptLimits) -> Completion:
        if is_claude(model) or is_open(model):
            raise self._lacks("embeddings endpoint for Claude and Model Garden models")
        return await self._attempt(model, limits,
                                   lambda left: self._gemini.embed(body, model, left))

    def counts_tokens(self, model: ModelConfig) -> bool:
        return is_claude(model)

    async def count_tokens(self, body: dict[str, Any], model: ModelConfig,
                           timeout: float) -> int:
        """Claude's own count on Vertex (count-tokens:rawPredict, the token's fetch and a
        new token after a 401 within `timeout`); a Gemini model has none here (`incapable`:
        the caller answers its estimate)."""
        if not is_claude(model):
            raise self._lacks("Anthropic token count for Gemini models")
        limits = probe_limits(timeout, self.config.connect_timeout)
        return await self._attempt(
            model, limits, lambda left: self._claude.count_tokens(body, model, left.total))

    def default_output(self, model: ModelConfig) -> int | None:
        return self._for(model).default_output(model)

    async def probe(self, model: ModelConfig, kind: ProbeKind,
                    timeout: float,  # noqa: ASYNC109 - the Provider protocol's signature
                    max_tokens: int) -> None:
        if kind == "none":
            return
        limits = probe_limits(timeout, self.config.connect_timeout)
        if model.embedding:
            await self.embed({"input": ["ping"], "model": model.name}, model, limits)
            return
        # `models`: one token (see the module's docstring); `chat`: the configured few
        tokens = 1 if kind == "models" else max_tokens
        probe = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": tokens}
        await self.complete(probe, model, limits)
