"""`[clients.<name>]` read and checked: who a client is (`uids`, its own TCP token) and what
it may do (`models`, `max_rpm`, `max_concurrency`, `max_cost_per_day`/`_month`); clients.py
keeps the counts. Also how a request offers a token (`offered_tokens`), for the daemon-wide
TCP token (api/access.py) and a client's alike.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from failoverd.credentials import read_secret
from failoverd.tomlreader import Section

if TYPE_CHECKING:
    from failoverd.catalog import ModelConfig

__all__ = ["GLOB", "MAX_UID", "RESERVED", "ClientConfig", "offered_tokens", "read_clients",
           "token_key"]

MAX_UID = 2 ** 32 - 2
# an entry of `models` with one of these is a glob
GLOB = frozenset("*?[")
# the names that are neither a model, a chain nor a pool that `models` may hold
RESERVED = ("default", "auto")


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """One `[clients.<name>]` table."""

    name: str
    uids: tuple[int, ...] = ()
    tcp_token: str = field(default="", repr=False)
    models: tuple[str, ...] | None = None  # None: any model
    max_rpm: int = 0  # 0: no limit (as every limit below)
    max_concurrency: int = 0
    max_cost_per_day: float = 0.0
    max_cost_per_month: float = 0.0


def token_key(token: str | bytes) -> bytes:
    """What tokens are looked up by: a digest, so a dict lookup times nothing of the token."""
    raw = token.encode("utf-8", "surrogateescape") if isinstance(token, str) else token
    return hashlib.sha256(raw).digest()


def offered_tokens(headers: Mapping[str, str]) -> Iterator[str]:
    """The tokens a request carries: as a bearer (OpenAI clients' api_key, Anthropic's
    auth_token), then as x-api-key (Anthropic clients' api_key: ANTHROPIC_API_KEY=<token>
    with ANTHROPIC_BASE_URL)."""
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        yield token
    key = headers.get("x-api-key")
    if key:
        yield key


def read_clients(top: Section, env: Mapping[str, str], models: Mapping[str, ModelConfig],
                 groups: Iterable[str], allowed_uids: tuple[int, ...],
                 daemon_token: str) -> dict[str, ClientConfig]:
    """Every `[clients.<name>]` table; `groups`: the chain and pool names. Problems go to the
    section's list, each naming its key."""
    out: dict[str, ClientConfig] = {}
    csec = top.table("clients")
    uid_of: dict[int, str] = {}
    token_of: dict[bytes, str] = {}
    names = {*models, *groups, *RESERVED}
    for name in csec.data:
        csec.seen.add(name)
        csec.plain_name(name, "a client name")
        sec = csec.table(name)
        uids = sec.get("uids", list, [])
        if any(isinstance(u, bool) or not isinstance(u, int) or not 0 <= u <= MAX_UID
               for u in uids):
            sec.problem("uids", f"must be a list of user ids (integers from 0 to {MAX_UID})")
            uids = []
        for uid in uids:
            if uid in uid_of and uid_of[uid] != name:
                sec.problem("uids", f"uid {uid} is already client {uid_of[uid]!r}'s: a peer "
                            "is one client")
            uid_of.setdefault(uid, name)
            if allowed_uids and uid not in allowed_uids:
                sec.problem("uids", f"uid {uid} is not in daemon.allowed_uids: its requests "
                            "would be refused")
        token = read_secret(sec, "tcp_token", env)
        if token:
            key = token_key(token)
            if key in token_of:
                sec.problem("tcp_token", f"is also client {token_of[key]!r}'s token: a token "
                            "is one client")
            elif daemon_token and token == daemon_token:
                sec.problem("tcp_token", "is daemon.tcp_token: that token is every TCP "
                            "client's, not this one's")
            token_of.setdefault(key, name)
        if not uids and not token and not any(
                sec.data.get(f"tcp_token_{k}") for k in ("env", "file", "credential")):
            sec.problem("", "names no one: set uids or tcp_token_env/_file/_credential")
        allowed = sec.strings("models", None)
        if allowed == ():  # LiteLLM's empty list is every model: here it would be none
            sec.problem("models", "is empty: leave it out for every model (a client that "
                        "may use nothing is better removed)")
        for i, entry in enumerate(allowed or ()):
            if GLOB.isdisjoint(entry):
                if entry not in names:
                    sec.problems.append(f"{sec.key_path('models')}[{i}]: no model, chain or "
                                        f"pool {entry!r}")
            elif not fnmatch.filter(names, entry):
                sec.problems.append(f"{sec.key_path('models')}[{i}]: {entry!r} matches no "
                                    "model, chain or pool")
        day = sec.number("max_cost_per_day", 0.0)
        month = sec.number("max_cost_per_month", 0.0)
        if (day or month) and not any(m.priced for m in models.values()):
            sec.problem("max_cost_per_day" if day else "max_cost_per_month",
                        "needs models with prices (cost.input, cost.output): without them "
                        "nothing costs anything and the cap would never apply")
        cfg = ClientConfig(
            name=name, uids=tuple(uids), tcp_token=token, models=allowed,
            max_rpm=sec.integer("max_rpm", 0, maximum=1_000_000),
            max_concurrency=sec.integer("max_concurrency", 0, maximum=1_000_000),
            max_cost_per_day=day, max_cost_per_month=month)
        sec.finish()
        out[name] = cfg
    return out
