"""Provider adapters, one module per upstream API, all behind the Provider protocol."""

from __future__ import annotations

import importlib

from failoverd.clock import Clock
from failoverd.config import ProviderConfig
from failoverd.http1 import HttpClient
from failoverd.providers.base import Provider

# kind -> (module, class): a module is imported when a provider of its kind is configured
# (an adapter pulls in its translation and credential modules, needed only when used)
_ADAPTERS = {
    "openai": ("openai", "OpenAIProvider"),
    "anthropic": ("anthropic", "AnthropicProvider"),
    "gemini": ("gemini", "GeminiProvider"),
    "ollama": ("ollama", "OllamaProvider"),
    "bedrock": ("bedrock", "BedrockProvider"),
    "vertex": ("vertex", "VertexProvider"),
    "simulated": ("simulated", "SimulatedProvider"),
}
# the adapters with time of their own (credentials that expire, a remembered refusal) take
# the daemon's clock
_CLOCKED = frozenset({"bedrock", "vertex"})


def make_provider(config: ProviderConfig, client: HttpClient,
                  clock: Clock | None = None) -> Provider:
    """Builds the adapter for a provider's kind; `clock`: the daemon's (the system's when
    None)."""
    try:
        module, name = _ADAPTERS[config.kind]
    except KeyError:
        raise ValueError(f"provider kind {config.kind!r} has no adapter yet") from None
    adapter = getattr(importlib.import_module(f"failoverd.providers.{module}"), name)
    made: Provider = (adapter(config, client, clock=clock) if config.kind in _CLOCKED
                      else adapter(config, client))
    return made
