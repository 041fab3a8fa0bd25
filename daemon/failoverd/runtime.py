"""One configuration's worth of wiring: config, provider adapters, dispatcher.

A reload builds a new Runtime and swaps it in one assignment; a request keeps the Runtime it
started with until it ends, so in-flight requests finish on their own configuration.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from failoverd import router
from failoverd.balance import Balancer
from failoverd.clock import Clock
from failoverd.config import Config
from failoverd.dispatch import Dispatcher, Health
from failoverd.http1 import HttpClient
from failoverd.providers import make_provider
from failoverd.providers.base import Provider

RESOLVED_MAX = 1024  # bound on Runtime's memo of resolved "model" names
Resolver = Callable[[Config, str], tuple[str, ...]]


@dataclass(slots=True)
class Runtime:
    config: Config
    providers: dict[str, Provider]
    dispatcher: Dispatcher
    screening: bool  # some model declares capabilities or a context window
    balancer: Balancer  # spreads requests over the pools' models
    # router.resolve's answers: a request's "model" names one of a few models or chains,
    # each resolved once per configuration, not per request (valid names only, bounded)
    _resolved: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # the other kinds' resolvers' answers, by (resolver, requested), bounded the same way
    _resolved_other: dict[tuple[Resolver, str], tuple[str, ...]] = field(
        default_factory=dict)

    def resolve(self, requested: str) -> tuple[str, ...]:
        """The candidates for a request's "model" (raises like ``router.resolve``)."""
        known = self._resolved.get(requested)
        if known is None:
            known = router.resolve(self.config, requested)  # raises for an unknown model
            if len(self._resolved) < RESOLVED_MAX:
                self._resolved[requested] = known
        return known

    def resolve_embeddings(self, requested: str) -> tuple[str, ...]:
        """The candidates for an embeddings request (router.resolve_embeddings)."""
        return self._resolve_with(router.resolve_embeddings, requested)

    def resolve_transcription(self, requested: str) -> tuple[str, ...]:
        """The candidates for an audio request (router.resolve_transcription)."""
        return self._resolve_with(router.resolve_transcription, requested)

    def resolve_speech(self, requested: str) -> tuple[str, ...]:
        """The candidates for a text-to-speech request (router.resolve_speech)."""
        return self._resolve_with(router.resolve_speech, requested)

    def _resolve_with(self, resolver: Resolver, requested: str) -> tuple[str, ...]:
        key = (resolver, requested)
        known = self._resolved_other.get(key)
        if known is None:
            known = resolver(self.config, requested)
            if len(self._resolved_other) < RESOLVED_MAX:
                self._resolved_other[key] = known
        return known


def build_runtime(config: Config, client: HttpClient, clock: Clock,
                  health: Health | None, rng: random.Random | None = None) -> Runtime:
    providers = {name: make_provider(p, client, clock) for name, p in config.providers.items()}
    dispatcher = Dispatcher(config, providers, clock=clock, health=health, rng=rng)
    screening = any((m.capabilities_declared or m.context_window) and m.chat
                    for m in config.models.values())
    names = router.pool_names(config)
    if health is None:
        balancer = Balancer(config.pools, available=lambda _: True, inflight=lambda _: 0,
                            rng=rng, names=names)
    else:
        balancer = Balancer(config.pools, available=lambda m: health.available(m)[0],
                            inflight=health.inflight, rng=rng, names=names)
    return Runtime(config, providers, dispatcher, screening, balancer)
