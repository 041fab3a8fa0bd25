"""One configuration's worth of wiring: config, provider adapters, dispatcher.

A reload builds a new Runtime and swaps it in one assignment; a request keeps the Runtime it
started with until it ends, so in-flight requests finish on their own configuration.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from failoverd.clock import Clock
from failoverd.config import Config
from failoverd.dispatch import Dispatcher, Health
from failoverd.http1 import HttpClient
from failoverd.providers import make_provider
from failoverd.providers.base import Provider


@dataclass(slots=True)
class Runtime:
    config: Config
    providers: dict[str, Provider]
    dispatcher: Dispatcher
    screening: bool  # some model declares capabilities or a context window


def build_runtime(config: Config, client: HttpClient, clock: Clock,
                  health: Health | None, rng: random.Random | None = None) -> Runtime:
    providers = {name: make_provider(p, client) for name, p in config.providers.items()}
    dispatcher = Dispatcher(config, providers, clock=clock, health=health, rng=rng)
    screening = any(m.capabilities_declared or m.context_window
                    for m in config.models.values())
    return Runtime(config, providers, dispatcher, screening)
