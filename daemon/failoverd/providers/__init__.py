"""Provider adapters, one module per upstream API, all behind the Provider protocol."""

from __future__ import annotations

from collections.abc import Callable

from failoverd.config import ProviderConfig
from failoverd.http1 import HttpClient
from failoverd.providers.base import Provider

Factory = Callable[[ProviderConfig, HttpClient], Provider]


def _factories() -> dict[str, Factory]:
    # imported here: each adapter pulls in its translation module, needed only when used
    from failoverd.providers.anthropic import AnthropicProvider
    from failoverd.providers.bedrock import BedrockProvider
    from failoverd.providers.gemini import GeminiProvider
    from failoverd.providers.ollama import OllamaProvider
    from failoverd.providers.openai import OpenAIProvider
    from failoverd.providers.simulated import SimulatedProvider
    from failoverd.providers.vertex import VertexProvider

    return {"openai": OpenAIProvider, "anthropic": AnthropicProvider, "gemini": GeminiProvider,
            "ollama": OllamaProvider, "bedrock": BedrockProvider, "vertex": VertexProvider,
            "simulated": SimulatedProvider}


def make_provider(config: ProviderConfig, client: HttpClient) -> Provider:
    """Builds the adapter for a provider's kind."""
    factories = _factories()
    try:
        factory = factories[config.kind]
    except KeyError:
        raise ValueError(f"provider kind {config.kind!r} has no adapter yet") from None
    return factory(config, client)
