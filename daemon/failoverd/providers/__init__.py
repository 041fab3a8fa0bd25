"""Provider adapters, one module per upstream API, all behind the Provider protocol."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp

from failoverd.config import ProviderConfig
from failoverd.providers.base import Provider

Factory = Callable[[ProviderConfig, aiohttp.ClientSession], Provider]


def _factories() -> dict[str, Factory]:
    from failoverd.providers.openai import OpenAIProvider
    from failoverd.providers.simulated import SimulatedProvider

    table: dict[str, Any] = {"openai": OpenAIProvider, "simulated": SimulatedProvider}
    try:  # adapters of later work plug in here
        from failoverd.providers.anthropic import AnthropicProvider
        table["anthropic"] = AnthropicProvider
    except ImportError:
        pass
    try:
        from failoverd.providers.gemini import GeminiProvider
        table["gemini"] = GeminiProvider
    except ImportError:
        pass
    try:
        from failoverd.providers.ollama import OllamaProvider
        table["ollama"] = OllamaProvider
    except ImportError:
        pass
    return table


def make_provider(config: ProviderConfig, session: aiohttp.ClientSession) -> Provider:
    """Builds the adapter for a provider's kind."""
    factories = _factories()
    try:
        factory = factories[config.kind]
    except KeyError:
        raise ValueError(f"provider kind {config.kind!r} has no adapter yet") from None
    return factory(config, session)
