"""Which models may serve a request, in which order: pure code over the configuration."""

from __future__ import annotations

from failoverd.config import Config
from failoverd.errors import RequestError


def resolve(config: Config, requested: str) -> tuple[str, ...]:
    """The ordered candidates for a request's `model`.

    - "" or "default": the default chain (primary + fallbacks).
    - a chain name: that chain.
    - a model id: that model first, then the default chain without it.
    - an upstream model name that exactly one model uses (e.g. "gpt-5" for "openai/gpt-5"):
      as its model id, so unmodified programs keep working.
    """
    if requested in ("", "default"):
        chain = config.default_chain
    elif requested in config.chains:
        chain = config.chains[requested].models
    elif requested in config.models:
        chain = config.fallbacks_for(requested)
    else:
        matches = [m.id for m in config.models.values() if m.name == requested]
        if len(matches) != 1:
            known = ", ".join([*config.models, *config.chains, "default"][:20])
            what = "is ambiguous" if matches else "is not a configured model or chain"
            raise RequestError(f"model {requested!r} {what}; known: {known}",
                               status=404, param="model", code="model_not_found")
        chain = config.fallbacks_for(matches[0])
    return chain
