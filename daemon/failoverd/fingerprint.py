"""Fingerprints of configured settings, so persisted state is only reused for the same settings.

A reload keeps a model's breaker only when the model and its provider are unchanged (equal
config dataclasses, API key included). A restart must apply the same rule to the state file:
an operator who fixed a wrong API key and restarted expects the provider to be tried again,
not to stay blocked for ``auth_open_seconds``. The state file therefore stores, next to each
breaker and each provider's credential state, a keyed hash of the settings it was earned
under; ``restore`` drops the entries whose hash no longer matches.

The hash is BLAKE2b keyed with a random salt stored in the same file: the file never holds
anything an API key could be checked against without the salt, and fingerprints from
different files are not comparable (they do not need to be).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import os
from typing import Any

import orjson

SALT_BYTES = 16


def new_salt() -> str:
    """A fresh salt, hex-encoded for the JSON state file."""
    return os.urandom(SALT_BYTES).hex()


def fingerprint(salt: str, *settings: Any) -> str:
    """A keyed hash of `settings` (config dataclasses and plain values), hex-encoded.

    Equal settings give equal fingerprints under the same salt; any field change (the API
    key, a timeout, a header) gives a different one.
    """
    data = orjson.dumps([_canonical(item) for item in settings])
    return hashlib.blake2b(data, key=bytes.fromhex(salt), digest_size=16).hexdigest()


def _canonical(value: Any) -> Any:
    """A JSON-able, order-stable form; dataclass fields include those hidden from repr."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # fields at their default are left out: a setting added in a new release (at its
        # default in every file written before it) does not make an upgrade forget the state
        return [type(value).__name__,
                *([f.name, _canonical(getattr(value, f.name))] for f in dataclasses.fields(value)
                  if not _at_default(f, getattr(value, f.name)))]
    if isinstance(value, enum.Enum):
        return _canonical(value.value)
    if isinstance(value, (frozenset, set)):
        return sorted((_canonical(v) for v in value), key=orjson.dumps)
    if isinstance(value, (tuple, list)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return sorted(([str(k), _canonical(v)] for k, v in value.items()), key=lambda kv: kv[0])
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def _at_default(f: dataclasses.Field[Any], value: Any) -> bool:
    if f.default is not dataclasses.MISSING:
        return bool(value == f.default)
    if f.default_factory is not dataclasses.MISSING:
        return bool(value == f.default_factory())
    return False
