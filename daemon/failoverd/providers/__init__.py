"""Provider adapters, one module per upstream API, all behind the Provider protocol."""

from __future__ import annotations

from collections.abc import Callable

from failoverd.clock import Clock
from failoverd.config import ProviderConfig
from failoverd.http1 import HttpClient
from failoverd.providers.base import Provider

Factory = Callable[[ProviderConfig, HttpClient, Clock | None], Provider]


def _factories() -> dict[str, Factory]:
    # imported here: each adapter pulls in its translation module, needed only when used
    from failoverd.providers.anthropic import AnthropicProvider
    from failoverd.providers.bedrock import BedrockProvider
    from failoverd.providers.gemini import GeminiProvider
    from failoverd.providers.ollama import OllamaProvider
    from failoverd.providers.openai import OpenAIProvider
    from failoverd.providers.simulated import SimulatedProvider
    from failoverd.providers.vertex import VertexProvider

    # the adapters with time of their own (credentials that expire, a remembered refusal)
    # take the daemon's clock
    return {"openai": lambda c, h, _: OpenAIProvider(c, h),
            "anthropic": lambda c, h, _: AnthropicProvider(c, h),
            "gemini": lambda c, h, _: GeminiProvider(c, h),
            "ollama": lambda c, h, _: OllamaProvider(c, h),
            "bedrock": lambda c, h, clock: BedrockProvider(c, h, clock=clock),
            "vertex": lambda c, h, clock: VertexProvider(c, h, clock=clock),
            "simulated": lambda c, h, _: SimulatedProvider(c, h)}


def make_provider(config: ProviderConfig, client: HttpClient,
                  clock: Clock | None = None) -> Provider:
    """Builds the adapter for a provider's kind; `clock`: the daemon's (the system's when
    None)."""
    factories = _factories()
    try:
        factory = factories[config.kind]
    except KeyError:
        raise ValueError(f"provider kind {config.kind!r} has no adapter yet") from None
    return factory(config, client, clock)
