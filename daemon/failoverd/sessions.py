"""Per-session routing memory: pinned preferences and sticky failovers, bounded in memory.

A session is named by the client (header ``x-failoverd-session``, else OpenAI ``user`` or
Anthropic ``metadata.user_id``). For each one the store keeps:

- a pinned preference: a model id or chain name set with ``POST /v1/sessions/{key}``;
- a sticky failover: after a request asked for model A first and was served by B at time t,
  the session prefers B until t + sticky_seconds, then tries its primary again. Requests in
  between do not flap back to A after each B success.

The sticky failover wins over the pin while it lasts; setting a new pin clears it.

Memory is bounded twice: at most ``max_entries`` sessions (least recently used evicted
first) and each expires ``ttl`` seconds after its last use, pinned or not. Expired sessions
are dropped lazily, on access and from the cold end of the LRU order on every write.

Keys are kept as given (they are shown back by GET /v1/sessions) but capped at
`MAX_KEY_LENGTH` characters: a longer key keeps its first 200 characters followed by ``#``
and 32 hex digits of its SHA-256, so long keys stay distinct while memory stays bounded.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Container
from dataclasses import dataclass, replace
from typing import Any

from failoverd.clock import Clock

logger = logging.getLogger(__name__)

MAX_KEY_LENGTH = 256
_KEEP_PREFIX = 200


def normalize_key(key: str) -> str:
    """The stored form of a session key (the key itself, capped; see the module docstring)."""
    if len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{key[:_KEEP_PREFIX]}#{digest}"


@dataclass(frozen=True, slots=True)
class Sticky:
    """A failover the session sticks to: asked for ``from_model``, served by ``model``."""

    from_model: str
    model: str
    since: float  # monotonic
    until: float  # monotonic


@dataclass(frozen=True, slots=True)
class Session:
    """One session's state; snapshots are immutable, the store replaces them."""

    key: str
    preference: str | None = None
    sticky: Sticky | None = None
    last_used: float = 0.0  # monotonic


class SessionStore:
    """LRU + TTL bounded map of session key to Session. Not thread-safe: one event loop."""

    def __init__(self, clock: Clock, max_entries: int = 10_000, ttl: float = 86_400.0,
                 sticky_seconds: float = 300.0) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._clock = clock
        self.max_entries = max_entries
        self.ttl = ttl
        # A config reload changes it with set_sticky_seconds.
        self.sticky_seconds = sticky_seconds
        self._entries: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        self._expire(self._clock.monotonic())
        return len(self._entries)

    def get(self, key: str) -> Session | None:
        """The session's current state, or None; an active sticky failover past its end is
        cleared. Reading does not count as use."""
        now = self._clock.monotonic()
        key = normalize_key(key)
        session = self._entries.get(key)
        if session is None:
            return None
        if now - session.last_used >= self.ttl:
            del self._entries[key]
            return None
        if session.sticky is not None and now >= session.sticky.until:
            session = replace(session, sticky=None)
            self._entries[key] = session
        return session

    def set_preference(self, key: str, target: str | None) -> Session:
        """Pins a model id or chain name (None unpins); clears any sticky failover."""
        now = self._clock.monotonic()
        key = normalize_key(key)
        current = self.get(key) or Session(key)
        session = replace(current, preference=target, sticky=None, last_used=now)
        self._put(key, session, now)
        return session

    def delete(self, key: str) -> bool:
        """Forgets a session; True when there was one (an expired one no longer counts)."""
        live = self.get(key) is not None  # drops it if it expired
        self._entries.pop(normalize_key(key), None)
        return live

    def note_served(self, key: str, requested_head: str, served_model: str,
                    now: float | None = None) -> None:
        """Records which model served a request whose chain began with ``requested_head``.

        A different model means the request failed over: the session sticks to it for
        sticky_seconds. Served by the head itself, an existing record is only touched, so
        a sticky window is never extended by its own successes. Served by the model a sticky
        window had failed over from, the window ends early. When the sticky fallback itself
        fails over, the new window keeps the model the session first failed over from, so
        its requests go on avoiding that one.
        """
        now = self._clock.monotonic() if now is None else now
        key = normalize_key(key)
        current = self.get(key)
        if served_model == requested_head:
            if current is not None:
                self._put(key, replace(current, last_used=now), now)
            return
        if current is not None and current.sticky is not None \
                and served_model == current.sticky.from_model:
            # The sticky fallback failed and the session's own primary answered: home again.
            self._put(key, replace(current, sticky=None, last_used=now), now)
            return
        if self.sticky_seconds <= 0:
            if current is not None:
                self._put(key, replace(current, last_used=now), now)
            return
        origin = requested_head
        if current is not None and current.sticky is not None \
                and requested_head == current.sticky.model:
            # The sticky fallback failed in turn: the session's requests still start at the
            # model it first failed over from, and it is that one they must keep avoiding.
            origin = current.sticky.from_model
        sticky = Sticky(from_model=origin, model=served_model, since=now,
                        until=now + self.sticky_seconds)
        self._put(key, replace(current or Session(key), sticky=sticky, last_used=now), now)
        logger.debug("session sticks to %s for %.0fs after failing over from %s",
                     served_model, self.sticky_seconds, requested_head)

    def set_sticky_seconds(self, seconds: float) -> int:
        """A reload's new sticky_seconds: running sticky windows end no later than it says
        (since + seconds; 0 ends them now), a longer one applies to new failovers only.
        Returns how many windows were shortened."""
        self.sticky_seconds = seconds
        shortened = 0
        for key, session in list(self._entries.items()):
            sticky = session.sticky
            if sticky is not None and sticky.since + seconds < sticky.until:
                end = sticky.since + seconds
                self._entries[key] = replace(
                    session, sticky=replace(sticky, until=end) if seconds > 0 else None)
                shortened += 1
        return shortened

    def forget_missing(self, models: Container[str], chains: Container[str]) -> int:
        """After a reload: drops pins to models or chains (and pools, given with the chains)
        that no longer exist and sticky windows involving a removed model (no request can go
        there, and a session must not show them as preferred). Returns how many sessions
        changed."""
        changed = 0
        for key, session in list(self._entries.items()):
            preference, sticky = session.preference, session.sticky
            if preference is not None and preference not in models \
                    and preference not in chains:
                preference = None
            if sticky is not None and (sticky.model not in models
                                       or sticky.from_model not in models):
                sticky = None
            if preference != session.preference or sticky is not session.sticky:
                self._entries[key] = replace(session, preference=preference, sticky=sticky)
                changed += 1
        return changed

    def preferred(self, key: str) -> str | None:
        """What the session should try first: its sticky fallback while that lasts, else
        its pinned preference, else None (the request's own model decides)."""
        session = self.get(key)
        if session is None:
            return None
        if session.sticky is not None:
            return session.sticky.model
        return session.preference

    def as_dict(self, key: str) -> dict[str, Any] | None:
        """JSON-ready form for ``GET /v1/sessions/{key}``; times are wall-clock epoch seconds."""
        session = self.get(key)
        if session is None:
            return None
        now = self._clock.monotonic()
        to_wall = self._clock.time() - now
        sticky: dict[str, Any] | None = None
        if session.sticky is not None:
            s = session.sticky
            sticky = {
                "from_model": s.from_model,
                "model": s.model,
                "since": s.since + to_wall,
                "until": s.until + to_wall,
                "remaining": max(0.0, s.until - now),
            }
        return {
            "key": session.key,
            "preference": session.preference,
            "preferred": sticky["model"] if sticky else session.preference,
            "sticky": sticky,
            "last_used": session.last_used + to_wall,
            "expires": session.last_used + self.ttl + to_wall,
        }

    def _put(self, key: str, session: Session, now: float) -> None:
        self._entries[key] = session
        self._entries.move_to_end(key)
        self._expire(now)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            logger.debug("session store full (%d): evicted the least recently used session",
                         self.max_entries)

    def _expire(self, now: float) -> None:
        # Use order is also expiry order (TTL runs from last use), so expired sessions
        # gather at the cold end and this stops at the first live one.
        while self._entries:
            key, oldest = next(iter(self._entries.items()))
            if now - oldest.last_used < self.ttl:
                break
            del self._entries[key]
