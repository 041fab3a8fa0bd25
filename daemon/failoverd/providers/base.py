"""The Provider seam: what every adapter (openai, anthropic, gemini, ollama, simulated) offers.

The canonical internal form is the OpenAI Chat Completions shape: requests are the
OpenAI request body as a dict, responses a `chat.completion` dict, stream events
`chat.completion.chunk` dicts. Adapters for other APIs translate to and from it and
classify every failure into a FailureReason (raising UpstreamError) at their edge.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import orjson

from failoverd.config import ModelConfig, ProbeKind, ProviderConfig
from failoverd.errors import RequestError


@dataclass(slots=True)
class Completion:
    """A non-streaming answer in the canonical (OpenAI chat.completion) shape.

    `raw` holds the upstream bytes when they already are that shape, so an OpenAI front end
    can pass them through without re-serialising.
    """

    body: dict[str, Any]
    raw: bytes | None = None

    def to_bytes(self) -> bytes:
        return self.raw if self.raw is not None else orjson.dumps(self.body)


@dataclass(slots=True)
class Chunk:
    """One streamed event in the canonical (chat.completion.chunk) shape.

    Adapters speaking OpenAI hand over `raw` (the SSE data payload) and parse lazily; others
    build `data` directly.
    """

    raw: bytes | None = None
    _data: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            parsed = orjson.loads(self.raw or b"{}")
            self._data = parsed if isinstance(parsed, dict) else {}
        return self._data

    def to_bytes(self) -> bytes:
        return self.raw if self.raw is not None else orjson.dumps(self._data)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Chunk:
        return cls(None, data)


def ends_in_prefill(body: dict[str, Any]) -> bool:
    """Whether a (canonical) request ends in an assistant message: a prefill the model
    continues, which an empty answer may complete."""
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    return isinstance(last, dict) and last.get("role") == "assistant"


@dataclass(frozen=True, slots=True)
class AttemptLimits:
    """Time limits for one upstream attempt, already cut to the request's deadline."""

    total: float  # non-streaming: the whole call
    connect: float
    first_token: float  # streaming: until the first chunk
    idle: float  # streaming: between chunks after the first
    # the request's notices (its answer's `failoverd.notices`), where an adapter tells the
    # client what it did to the request on its own (a resend without cache points); None
    # outside a client's request (probes)
    notices: list[str] | None = None
    # where the adapter hands its upstream's rate-limit headers (the health registry's
    # upstreamlimits.UpstreamLimits); None: not read (probes, a provider with
    # rate_limit_headers = false, kinds whose upstreams send none: the dispatcher decides)
    upstream: RateLimitSink | None = None


class RateLimitSink(Protocol):
    """Takes the rate-limit headers of the answers to a model (see upstreamlimits.py)."""

    def start(self) -> float:
        """A stamp taken before the request is sent, handed back to `seen`."""
        ...

    def seen(self, family: str, model_id: str, headers: Any, sent: float | None = None) -> None:
        """`family`: whose headers the upstream sends ("openai", "anthropic"); `sent`: the
        request's `start` stamp."""
        ...


class Provider(Protocol):
    """An upstream API. Raises failoverd.errors.UpstreamError for every failure."""

    config: ProviderConfig

    async def complete(self, body: dict[str, Any], model: ModelConfig,
                       limits: AttemptLimits) -> Completion:
        """One non-streaming chat completion; `body` is the canonical request."""
        ...

    def stream(self, body: dict[str, Any], model: ModelConfig,
               limits: AttemptLimits) -> AsyncIterator[Chunk]:
        """A streaming chat completion as an async generator of canonical chunks.

        Failures before the first chunk raise UpstreamError from the first `__anext__`
        (so the router can still fail over); later failures raise it mid-iteration.
        The generator ends after the upstream's final event ([DONE] or equivalent).
        """
        ...

    async def embed(self, body: dict[str, Any], model: ModelConfig,
                    limits: AttemptLimits) -> Completion:
        """Embeddings for an embedding model: `body` is the OpenAI Embeddings request
        (translate/embeddings.py validated it), the answer OpenAI's list of embeddings, in
        the encoding the request asks for. A request this API cannot express raises
        RequestError (the next candidate may serve it)."""
        ...

    async def complete_text(self, body: dict[str, Any], model: ModelConfig,
                            limits: AttemptLimits) -> Completion:
        """A legacy text completion (`POST /v1/completions`): `body` is OpenAI's request
        (translate/completions.py validated it), the answer its ``text_completion``. An API
        without one raises RequestError (the next candidate may serve it)."""
        ...

    def stream_text(self, body: dict[str, Any], model: ModelConfig,
                    limits: AttemptLimits) -> AsyncIterator[Chunk]:
        """A streamed legacy text completion, as `stream` streams a chat: chunks are
        ``text_completion`` events."""
        ...

    async def transcribe(self, body: dict[str, Any], model: ModelConfig,
                         limits: AttemptLimits) -> Completion:
        """Audio to text for a transcription model: ``body["form"]`` is the client's form
        (translate/audio.py), ``body["task"]`` ``transcriptions`` or ``translations``; the
        answer is the upstream's, in the form's response_format (`raw`, and `body` its
        JSON, or ``{"text": ...}`` for the text formats)."""
        ...

    def stream_transcript(self, body: dict[str, Any], model: ModelConfig,
                          limits: AttemptLimits) -> AsyncIterator[Chunk]:
        """A transcription asked with ``stream=true``, streamed as `stream` streams a chat:
        `body` as for `transcribe` (its form streams, its task is ``transcriptions``); each
        chunk's `raw` is the next of OpenAI's server-sent events, framed
        (``transcript.text.delta`` ..., ``transcript.text.done`` last). The first chunk is an
        event for certain: an answer that is none raises from the first `__anext__`."""
        ...

    def speak(self, body: dict[str, Any], model: ModelConfig,
              limits: AttemptLimits) -> AsyncIterator[Chunk]:
        """Text to speech for a speech model, streamed as `stream` streams a chat: `body` is
        OpenAI's request (translate/speech.py validated it); each chunk's `raw` is the next
        piece of the audio (in the request's response_format), or with ``stream_format:
        "sse"`` the next server-sent event, framed. The first chunk is audio (or an event)
        for certain: an answer that is none raises from the first `__anext__`."""
        ...

    def default_output(self, model: ModelConfig) -> int | None:
        """The max_tokens this adapter sends when the request sets none (Anthropic requires
        one), which the request's context check must leave room for; None: the upstream's
        own limit applies."""
        ...

    async def probe(self, model: ModelConfig, kind: ProbeKind, timeout: float,
                    max_tokens: int) -> None:
        """A health probe: `models` lists models (reachability + auth), `chat` asks for a
        few tokens. Returns on success, raises UpstreamError otherwise."""
        ...


@runtime_checkable
class TokenCounter(Protocol):
    """An adapter with the upstream's own token count of an Anthropic Messages body
    (POST /v1/messages/count_tokens asks it, else answers failoverd's estimate)."""

    def counts_tokens(self, model: ModelConfig) -> bool:
        """Whether the upstream counts for this model."""
        ...

    async def count_tokens(self, body: dict[str, Any], model: ModelConfig,
                           timeout: float) -> int: ...


class Lacking:
    """What an adapter's API has no endpoint for refuses at once, before any call: a
    RequestError, so the candidate is incapable and the chain goes on (the configuration
    already keeps embedding, transcription and speech models off kinds without them). An
    adapter names its API in `api` and defines the endpoints it has, which take precedence."""

    api = "this API"

    def _lacks(self, what: str) -> RequestError:
        return RequestError(f"{self.api} has no {what}", param="model")

    async def embed(self, body: dict[str, Any], model: ModelConfig,
                    limits: AttemptLimits) -> Completion:
        raise self._lacks("embeddings endpoint")

    async def complete_text(self, body: dict[str, Any], model: ModelConfig,
                            limits: AttemptLimits) -> Completion:
        raise self._lacks("text completions (POST /v1/completions): chat only")

    def stream_text(self, body: dict[str, Any], model: ModelConfig,
                    limits: AttemptLimits) -> AsyncIterator[Chunk]:
        raise self._lacks("text completions (POST /v1/completions): chat only")

    async def transcribe(self, body: dict[str, Any], model: ModelConfig,
                         limits: AttemptLimits) -> Completion:
        raise self._lacks("audio transcription endpoint")

    def stream_transcript(self, body: dict[str, Any], model: ModelConfig,
                          limits: AttemptLimits) -> AsyncIterator[Chunk]:
        raise self._lacks("audio transcription endpoint")

    def speak(self, body: dict[str, Any], model: ModelConfig,
              limits: AttemptLimits) -> AsyncIterator[Chunk]:
        raise self._lacks("text-to-speech endpoint")
