"""The health registry's state in the state file: what a snapshot holds and how it is restored.

A snapshot holds every model's breaker and every provider's running auth or billing block, with
wall-clock times, each entry next to the fingerprint of the settings it was earned under (see
``fingerprint.py``) and the salt of those fingerprints::

    {"version": 1, "saved_at": <wall>, "salt": <hex>,
     "breakers": {<model id>: {<Breaker.snapshot()>, "settings": <fingerprint>}},
     "providers": {<name>: {"state": "auth" | "billing", "since": <wall>, "until": <wall>,
                            "settings": <fingerprint>}},
     "budgets": {"model:<id>" | "provider:<name>": <Budgets.snapshot() entry>},
     "quotas": {<model id>: <Quotas.snapshot() entry>}}

The spending under "budgets" (``budget.py``) is kept whatever the settings: it is money spent;
so are the calls and tokens of the last minute under "quotas" (``quota.py``: max_rpm, max_tpm).

``restore`` skips unknown models and providers, malformed entries, and entries saved under other
settings (a new API key, URL or model config), so a restart after fixing a key tries the
provider again. A file from before fingerprints (no salt, no "settings") is taken as it is.
Writing and reading the file itself is ``statefile.py``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Container, Mapping
from typing import Any, TypeGuard

from failoverd.breaker import Breaker
from failoverd.clock import Clock
from failoverd.config import Config
from failoverd.fingerprint import SALT_BYTES, fingerprint, new_salt

logger = logging.getLogger(__name__)

STATE_VERSION = 1

Block = tuple[str, float, float]
"""A provider's auth or billing block: ``(state, since, until)``."""

Prints = dict[str, dict[str, str]]
"""Fingerprints of the configured settings by kind ("models", "providers") and name."""


class Fingerprints:
    """The salt of the state files this process writes, and the fingerprints of the configured
    settings under it, computed once per config."""

    __slots__ = ("salt", "_config", "_prints")

    def __init__(self) -> None:
        self.salt = new_salt()
        self._config: Config | None = None
        self._prints: Prints = {}

    def of(self, config: Config, salt: str | None = None) -> Prints:
        """Fingerprints of every configured model (with its provider) and provider, under
        `salt` (a saved file's) or this process's salt."""
        if salt is None or salt == self.salt:
            if config is not self._config:
                self._config, self._prints = config, _prints(config, self.salt)
            return self._prints
        return _prints(config, salt)


def snapshot(fingerprints: Fingerprints, config: Config, saved_at: float,
             breakers: Mapping[str, Breaker], blocks: Mapping[str, Block]) -> dict[str, Any]:
    """The state file's content: the `breakers` by model id and the providers' running `blocks`
    (wall-clock times), taken at wall time `saved_at` under `config`."""
    prints = fingerprints.of(config)
    return {
        "version": STATE_VERSION,
        "saved_at": round(saved_at, 3),
        "salt": fingerprints.salt,
        "breakers": {mid: {**b.snapshot(), "settings": prints["models"][mid]}
                     for mid, b in breakers.items()},
        "providers": {name: {"state": state, "since": since, "until": until,
                             "settings": prints["providers"][name]}
                      for name, (state, since, until) in blocks.items()},
    }


def restore(data: Mapping[str, Any], fingerprints: Fingerprints, config: Config, clock: Clock,
            breakers: Mapping[str, Breaker], providers: Container[str]) -> dict[str, Block]:
    """Loads a ``snapshot()`` into `breakers` and returns the blocks of `providers` it holds
    that are still running (monotonic times), for the caller to apply.

    Nothing is restored from a file of another version.
    """
    if data.get("version") != STATE_VERSION:
        logger.warning("state file version %r not understood; starting fresh",
                       data.get("version"))
        return {}
    salt = data.get("salt")
    prints = fingerprints.of(config, salt) if _is_salt(salt) else None
    # a wall clock now behind the one that saved (no real-time clock, NTP not synced
    # yet) must not stretch the periods by its error: they resume from the save at worst
    saved_at = data.get("saved_at")
    if not isinstance(saved_at, int | float) or isinstance(saved_at, bool):
        saved_at = None
    saved_breakers = data.get("breakers")
    if isinstance(saved_breakers, Mapping):
        for model_id, snap in saved_breakers.items():
            breaker = breakers.get(model_id)
            if breaker is None or not isinstance(snap, Mapping):
                continue
            if not _same_settings(snap, prints, "models", model_id):
                logger.info("breaker state of %s not restored: the model or its provider "
                            "is configured differently than when it was saved", model_id)
                continue
            breaker.restore(snap, saved_at)
    saved_providers = data.get("providers")
    if not isinstance(saved_providers, Mapping):
        return {}
    mono, wall = clock.monotonic(), clock.time()
    if saved_at is not None:
        wall = max(wall, float(saved_at))
    blocks: dict[str, Block] = {}
    for name, entry in saved_providers.items():
        if name not in providers or not isinstance(entry, Mapping):
            continue
        if not _same_settings(entry, prints, "providers", name):
            logger.info("credential state of provider %s not restored: it is configured "
                        "differently (key, URL or options) than when it was saved", name)
            continue
        try:
            state = str(entry["state"])
            until = float(entry["until"])
            since = float(entry.get("since", wall))
        except (KeyError, TypeError, ValueError):
            logger.warning("ignoring unusable credential state for provider %s", name)
            continue
        if state in ("auth", "billing") and until > wall:
            blocks[name] = (state, mono + (since - wall), mono + (until - wall))
    return blocks


def _prints(config: Config, salt: str) -> Prints:
    return {
        "providers": {name: fingerprint(salt, p) for name, p in config.providers.items()},
        "models": {mid: fingerprint(salt, m, config.providers.get(m.provider))
                   for mid, m in config.models.items()},
    }


def _is_salt(value: Any) -> TypeGuard[str]:
    return isinstance(value, str) and len(value) == 2 * SALT_BYTES and all(
        c in "0123456789abcdef" for c in value)


def _same_settings(entry: Mapping[str, Any], prints: Prints | None, kind: str,
                   name: str) -> bool:
    """Whether a saved entry was earned under the current settings; entries of a file from
    before fingerprints (no salt, no "settings") are trusted as they were then."""
    saved = entry.get("settings")
    if saved is None and prints is None:
        return True
    return prints is not None and saved == prints[kind].get(name)
