"""Which models may serve a request, in which order: pure code over the configuration."""

from __future__ import annotations

from failoverd.catalog import ModelKind
from failoverd.config import Config
from failoverd.errors import RequestError

# what a model of each kind serves, for the errors that send a client there
_ENDPOINT = {"chat": "POST /v1/chat/completions", "embeddings": "POST /v1/embeddings",
             "transcription": "POST /v1/audio/transcriptions", "speech": "POST /v1/audio/speech"}
_NOUN = {"chat": "a chat model", "embeddings": "an embedding model",
         "transcription": "a transcription model", "speech": "a speech model"}
_PLURAL = {"chat": "chat models", "embeddings": "embedding models",
           "transcription": "transcription models", "speech": "speech models"}
_CODE = {"chat": "model_not_chat", "embeddings": "model_not_embedding",
         "transcription": "model_not_transcription", "speech": "model_not_speech"}


def resolve(config: Config, requested: str) -> tuple[str, ...]:
    """The ordered candidates for a chat request's `model`.

    - "" or "default": the default chain (primary + fallbacks).
    - a chain name: that chain.
    - a pool name: its models (balance.py orders them), then the default chain without them.
    - a model id: that model first, then the default chain without it.
    - an upstream model name that exactly one chat model uses (e.g. "gpt-5" for
      "openai/gpt-5"): as its model id, so unmodified programs keep working; one that
      several models of one pool use (two keys of gpt-5): as that pool.

    An embedding or transcription model (or a chain of them) is refused: it cannot chat.
    """
    if requested in ("", "default"):
        chain = config.default_chain
        if not chain:
            raise no_chat_model()
    elif requested in config.chains:
        chain = config.chains[requested].models
        _of_kind(config, requested, chain[0], "chain", "chat")
    elif (pool := _pool(config, requested, "chat")) is not None:
        members = config.pools[pool].models
        _of_kind(config, requested, members[0], "pool", "chat")
        chain = (*members, *(m for m in config.default_chain if m not in members))
    elif requested in config.models:
        _of_kind(config, requested, requested, "model", "chat")
        chain = config.fallbacks_for(requested)
    else:
        chain = config.fallbacks_for(_by_name(config, requested, "chat"))
    return chain


def _pool(config: Config, requested: str, kind: ModelKind) -> str | None:
    """The pool `requested` asks for: its name, or the upstream name of two or more models of
    `kind` that are all in one pool (two keys of gpt-5), the operator's word that they are the
    same model; None otherwise (a model id is that model)."""
    if requested in config.pools:
        return requested
    if not config.pools or requested in config.models:
        return None
    named = {m.id for m in config.models.values() if m.name == requested and m.kind == kind}
    if len(named) < 2:
        return None
    return next((p.name for p in config.pools.values() if named <= set(p.models)), None)


def pool_names(config: Config) -> frozenset[str]:
    """Every `model` that asks for a pool: the pools' names and the upstream names their
    models share (see _pool)."""
    shared = {(config.models[m].name, config.models[m].kind)
              for p in config.pools.values() for m in p.models}
    return frozenset(config.pools).union(
        name for name, kind in shared if _pool(config, name, kind) is not None)


def no_chat_model() -> RequestError:
    """The answer to a chat request when no model is a chat model."""
    return RequestError("no chat model is configured (every [models] entry is an embedding, "
                        "transcription or speech model)", status=404, param="model",
                        code="model_not_found")


def resolve_embeddings(config: Config, requested: str) -> tuple[str, ...]:
    """The ordered candidates for an embeddings request's `model`: an embedding model alone
    (vectors of different models are not comparable, so there is no default chain to fall
    over to), or a chain of embedding models, whose listing them together is the operator's
    word that their vectors are interchangeable (the same model at two providers); an
    upstream model name that exactly one embedding model uses counts as its id."""
    if requested in config.chains:
        chain = config.chains[requested].models
        _of_kind(config, requested, chain[0], "chain", "embeddings")
        return chain
    pool = _pool(config, requested, "embeddings")
    if pool is not None:  # the operator's word too: one model, several places
        chain = config.pools[pool].models
        _of_kind(config, requested, chain[0], "pool", "embeddings")
        return chain
    if requested in config.models:
        _of_kind(config, requested, requested, "model", "embeddings")
        return (requested,)
    _not_default(config, requested, "embeddings")
    return (_by_name(config, requested, "embeddings"),)


def resolve_transcription(config: Config, requested: str) -> tuple[str, ...]:
    """The ordered candidates for an audio transcription's `model`: a transcript is text,
    whichever model wrote it, so a transcription model (by id, or by an upstream name that
    exactly one has) is followed by the other transcription models in file order, a chain
    of them is that chain, and "default" is all of them in file order."""
    return _any_of_kind(config, requested, "transcription")


def resolve_speech(config: Config, requested: str) -> tuple[str, ...]:
    """The ordered candidates for a text-to-speech request: as for transcriptions, any
    speech model may stand in for another (each with its own voice, see the model's
    `voices`)."""
    return _any_of_kind(config, requested, "speech")


def _any_of_kind(config: Config, requested: str, kind: ModelKind) -> tuple[str, ...]:
    everyone = tuple(m.id for m in config.models.values() if m.kind == kind)
    if requested in ("", "default"):
        if not everyone:
            raise RequestError(f"no {kind} model is configured (a [models] entry with "
                               f"capabilities = [\"{kind}\"])", status=404,
                               param="model", code="model_not_found")
        return everyone
    if requested in config.chains:
        chain = config.chains[requested].models
        _of_kind(config, requested, chain[0], "chain", kind)
        return chain
    pool = _pool(config, requested, kind)
    if pool is not None:
        chain = config.pools[pool].models
        _of_kind(config, requested, chain[0], "pool", kind)
        return (*chain, *(m for m in everyone if m not in chain))
    if requested not in config.models:
        # an upstream name several of them have (tts-1 at two providers) is no ambiguity
        # here, where any may stand in: those first, in file order
        named = tuple(m for m in everyone if config.models[m].name == requested)
        if len(named) > 1:
            return (*named, *(m for m in everyone if m not in named))
        requested = _by_name(config, requested, kind)
    _of_kind(config, requested, requested, "model", kind)
    return (requested, *(m for m in everyone if m != requested))


def _by_name(config: Config, requested: str, kind: ModelKind) -> str:
    matches = [m.id for m in config.models.values()
               if m.name == requested and m.kind == kind]
    if len(matches) != 1:
        what = "is ambiguous" if matches else "is not a configured model or chain"
        raise RequestError(f"model {requested!r} {what}{_known(config, kind)}",
                           status=404, param="model", code="model_not_found")
    return matches[0]


def _known(config: Config, kind: ModelKind) -> str:
    models = [m.id for m in config.models.values() if m.kind == kind]
    chains = [name for name, c in config.chains.items()
              if config.models[c.models[0]].kind == kind]
    pools = [name for name, p in config.pools.items()
             if config.models[p.models[0]].kind == kind]
    known = [*models, *chains, *pools]
    if kind == "chat" and config.default_chain:
        known.append("default")
    return f"; known: {', '.join(known[:20])}" if known else "; none is configured"


def _of_kind(config: Config, requested: str, model_id: str, what: str,
             kind: ModelKind) -> None:
    """Raises for a model (or a chain, by its first model) of another kind than the
    endpoint serves, naming the endpoint that serves it."""
    actual = config.models[model_id].kind
    if actual == kind:
        return
    if kind == "chat":
        which = (f"holds {_PLURAL[actual]}" if what in ("chain", "pool")
                 else f"is {_NOUN[actual]}")
        message = f"{what} {requested!r} {which}: call {_ENDPOINT[actual]}"
    elif what in ("chain", "pool"):
        message = f"{what} {requested!r} is a {what} of {_PLURAL[actual]}"
    else:
        message = (f"model {requested!r} is not {_NOUN[kind]} (its capabilities lack "
                   f"'{kind}')")
    raise RequestError(message, param="model", code=_CODE[kind])


def _not_default(config: Config, requested: str, kind: ModelKind) -> None:
    if requested in ("", "default", "auto"):
        raise RequestError(f"model {requested!r} names the chat models; name "
                           f"{_NOUN[kind]} or a chain of them{_known(config, kind)}",
                           param="model", code=_CODE[kind])
