"""Which models may serve a request, in which order: pure code over the configuration."""

from __future__ import annotations

from failoverd.config import Config
from failoverd.errors import RequestError


def resolve(config: Config, requested: str) -> tuple[str, ...]:
    """The ordered candidates for a chat request's `model`.

    - "" or "default": the default chain (primary + fallbacks).
    - a chain name: that chain.
    - a model id: that model first, then the default chain without it.
    - an upstream model name that exactly one chat model uses (e.g. "gpt-5" for
      "openai/gpt-5"): as its model id, so unmodified programs keep working.

    An embedding model (or a chain of them) is refused: it cannot answer a chat.
    """
    if requested in ("", "default"):
        chain = config.default_chain
        if not chain:
            raise no_chat_model()
    elif requested in config.chains:
        chain = config.chains[requested].models
        _not_embedding(config, requested, chain[0], "chain")
    elif requested in config.models:
        _not_embedding(config, requested, requested, "model")
        chain = config.fallbacks_for(requested)
    else:
        chain = config.fallbacks_for(_by_name(config, requested, embedding=False))
    return chain


def no_chat_model() -> RequestError:
    """The answer to a chat request when every model is an embedding model."""
    return RequestError("no chat model is configured (every [models] entry is an embedding "
                        "model)", status=404, param="model", code="model_not_found")


def resolve_embeddings(config: Config, requested: str) -> tuple[str, ...]:
    """The ordered candidates for an embeddings request's `model`: an embedding model alone
    (vectors of different models are not comparable, so there is no default chain to fall
    over to), or a chain of embedding models, whose listing them together is the operator's
    word that their vectors are interchangeable (the same model at two providers); an
    upstream model name that exactly one embedding model uses counts as its id."""
    if requested in config.chains:
        chain = config.chains[requested].models
        if not config.models[chain[0]].embedding:
            raise _not_for_embeddings(f"chain {requested!r} is a chain of chat models")
        return chain
    if requested in config.models:
        if not config.models[requested].embedding:
            raise _not_for_embeddings(f"model {requested!r} is not an embedding model (its "
                                      "capabilities lack 'embeddings')")
        return (requested,)
    if requested in ("", "default", "auto"):
        raise _not_for_embeddings(f"model {requested!r} names the chat models; name an "
                                  "embedding model or a chain of them"
                                  + _known(config, embedding=True))
    return (_by_name(config, requested, embedding=True),)


def _by_name(config: Config, requested: str, *, embedding: bool) -> str:
    matches = [m.id for m in config.models.values()
               if m.name == requested and m.embedding == embedding]
    if len(matches) != 1:
        what = "is ambiguous" if matches else "is not a configured model or chain"
        raise RequestError(f"model {requested!r} {what}{_known(config, embedding=embedding)}",
                           status=404, param="model", code="model_not_found")
    return matches[0]


def _known(config: Config, *, embedding: bool) -> str:
    models = [m.id for m in config.models.values() if m.embedding == embedding]
    chains = [name for name, c in config.chains.items()
              if config.models[c.models[0]].embedding == embedding]
    known = [*models, *chains] if embedding or not config.default_chain \
        else [*models, *chains, "default"]
    return f"; known: {', '.join(known[:20])}" if known else "; none is configured"


def _not_embedding(config: Config, requested: str, model_id: str, what: str) -> None:
    if config.models[model_id].embedding:
        which = "holds embedding models" if what == "chain" else "is an embedding model"
        raise RequestError(f"{what} {requested!r} {which}: call POST /v1/embeddings",
                           param="model", code="model_not_chat")


def _not_for_embeddings(message: str) -> RequestError:
    return RequestError(message, param="model", code="model_not_embedding")
