"""Events: one object per failover, breaker transition, probe result, reload or hook failure.

The router, breakers, prober and supervisor call :meth:`EventBus.emit` from plain synchronous
code on the request path; it never blocks and never raises. Consumers attach in two ways:

* sync listeners (:meth:`EventBus.listen`) are called inline by ``emit``: the MQTT publisher's
  bounded queue, the hook runner's task spawner and the audit log. They must be cheap and must
  not block; an exception from one is logged and does not reach the emitter.
* async subscriptions (:meth:`EventBus.subscribe`), for ``GET /v1/events`` SSE clients: each has
  its own bounded queue; a slow client loses its oldest events (counted) and never slows the
  daemon down.

The bus also keeps a ring of the most recent events, so an SSE client that reconnects with
``Last-Event-ID`` can catch up. ``emit`` must be called from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, Literal

import orjson

from failoverd.clock import Clock

logger = logging.getLogger(__name__)
audit_logger = logging.getLogger("failoverd.audit")

# DESIGN.md "Events": every type the daemon emits (and budget:reached, README "Spending caps").
EVENT_TYPES = (
    "model:failover",
    "breaker:opened",
    "breaker:half_open",
    "breaker:closed",
    "probe:failed",
    "probe:recovered",
    "provider:credentials",
    "chain:exhausted",
    "config:reloaded",
    "config:rejected",
    "hook:failed",
    "budget:reached",
    "model:hedged",  # README "Hedged requests" (hedge.py)
    "client:limited",  # a [clients.<name>] limit refused a request (clients.py)
)

RESERVED_KEYS = frozenset({"id", "type", "time", "node"})

Listener = Callable[["Event"], None]

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _default(value: Any) -> Any:
    # Fields come from many modules; an odd value must not make an event unpublishable.
    return str(value)


def utf8_safe(text: str) -> str:
    """`text` as JSON can carry it: a lone surrogate (a file name or environment value that is
    not UTF-8, decoded with surrogateescape) cannot be encoded, so it becomes its escape,
    `\udcff`, instead of failing the whole line or answer."""
    return text.encode("utf-8", "backslashreplace").decode()


def _plain(value: Any) -> Any:
    """`value` with string keys, strings that encode as UTF-8 and integers inside 64 bits
    (others become strings)."""
    if isinstance(value, dict):
        return {utf8_safe(k if isinstance(k, str) else str(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return utf8_safe(value)
    if isinstance(value, int) and not isinstance(value, bool) and not (
            -(2**63) <= value < 2**64):
        return str(value)
    return value


@dataclass(frozen=True, slots=True)
class Event:
    """One event: ``{"id", "type", "time", "node", **fields}`` on the wire.

    ``id`` is a ULID (26 Crockford base-32 characters, lexicographically sortable by time and,
    within one bus, strictly increasing); ``time`` is ISO 8601 UTC with milliseconds.
    """

    id: str
    type: str
    time: str
    node: str
    fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def category(self) -> str:
        """The part of ``type`` before ':' (``model`` for ``model:failover``)."""
        return self.type.partition(":")[0]

    @property
    def action(self) -> str:
        """The part of ``type`` after ':' (``failover`` for ``model:failover``)."""
        category, sep, action = self.type.partition(":")
        return action if sep else ""

    def as_dict(self) -> dict[str, Any]:
        """The wire shape: fixed keys first, then the fields."""
        return {"id": self.id, "type": self.type, "time": self.time, "node": self.node,
                **self.fields}

    def to_json(self) -> bytes:
        """The event as compact JSON (UTF-8); values orjson cannot encode become strings."""
        data = self.as_dict()
        try:
            return orjson.dumps(data, default=_default)
        except orjson.JSONEncodeError:
            # what `default` never sees: integers beyond 64 bits, keys that are not strings,
            # strings that are not UTF-8
            return orjson.dumps(_plain(data), default=lambda v: utf8_safe(str(v)))


def iso_time(epoch: float) -> str:
    """``2023-11-14T22:13:20.123Z`` for a Unix time."""
    text = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return text.removesuffix("+00:00") + "Z"


class _UlidGenerator:
    """Monotonic ULIDs: 48-bit milliseconds + 80 random bits, incremented within one ms."""

    def __init__(self) -> None:
        self._last_ms = -1
        self._last_rand = 0

    def __call__(self, epoch: float) -> str:
        ms = max(int(epoch * 1000), self._last_ms)  # a wall clock stepping back keeps ids sorted
        if ms == self._last_ms:
            rand = (self._last_rand + 1) & ((1 << 80) - 1)
        else:
            rand = int.from_bytes(os.urandom(10), "big")
        self._last_ms, self._last_rand = ms, rand
        value = (ms << 80) | rand
        return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


class Subscription:
    """An async iterator of events with its own bounded queue.

    When the queue is full the oldest event is dropped and counted in :attr:`dropped`, so a
    slow consumer never holds the bus up. Iteration ends after :meth:`close`.
    """

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._bus = bus
        self._queue: collections.deque[Event] = collections.deque(maxlen=maxsize)
        self._wakeup: asyncio.Event | None = None  # created lazily, inside the loop
        self.dropped = 0
        self.closed = False

    def _put(self, event: Event) -> None:
        if self.closed:
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            self._bus.dropped += 1
        self._queue.append(event)  # a full deque with maxlen discards its oldest item
        if self._wakeup is not None:
            self._wakeup.set()

    def get_nowait(self) -> Event | None:
        """The next queued event, or None."""
        return self._queue.popleft() if self._queue else None

    def __len__(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """Stops iteration and detaches from the bus."""
        if not self.closed:
            self.closed = True
            self._bus.unsubscribe(self)
            if self._wakeup is not None:
                self._wakeup.set()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._queue:
                return self._queue.popleft()
            if self.closed:
                raise StopAsyncIteration
            if self._wakeup is None:
                self._wakeup = asyncio.Event()
            self._wakeup.clear()
            await self._wakeup.wait()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class EventBus:
    """Creates events and fans them out to listeners and subscriptions.

    ``history`` is the size of the ring of recent events kept for late SSE clients.
    """

    def __init__(self, node: str, clock: Clock, *, history: int = 256) -> None:
        self.node = node
        self._clock = clock
        self._ulid = _UlidGenerator()
        self._listeners: list[Listener] = []
        self._subscriptions: list[Subscription] = []
        self._recent: collections.deque[Event] = collections.deque(maxlen=max(history, 0))
        self.emitted: collections.Counter[str] = collections.Counter()
        self.listener_errors = 0
        # events subscriptions lost for reading too slowly, gone subscriptions included (a
        # count that fell with every client that left would hide a loss from a scrape)
        self.dropped = 0

    def emit(self, type: str, **fields: Any) -> Event:
        """Creates an event and delivers it; never blocks, never raises into the caller."""
        clash = RESERVED_KEYS.intersection(fields)
        if clash:
            logger.warning("event %s: dropping reserved field names %s", type, sorted(clash))
            fields = {k: v for k, v in fields.items() if k not in RESERVED_KEYS}
        now = self._clock.time()
        event = Event(id=self._ulid(now), type=type, time=iso_time(now), node=self.node,
                      fields=MappingProxyType(dict(fields)))
        self.publish(event)
        return event

    def publish(self, event: Event) -> None:
        """Delivers an already-built event (e.g. one relayed from elsewhere)."""
        self.emitted[event.type] += 1
        self._recent.append(event)
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                # A sink's bug must not fail a request: log it and carry on.
                self.listener_errors += 1
                logger.exception("event listener %r failed on %s", listener, event.type)
        for sub in tuple(self._subscriptions):
            sub._put(event)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Calls ``listener(event)`` inline on every emit; returns a function that detaches it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        """A new async subscription holding at most ``maxsize`` undelivered events."""
        sub = Subscription(self, maxsize)
        self._subscriptions.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Detaches a subscription (idempotent); its iteration ends once drained."""
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)
        if not sub.closed:
            sub.close()

    def recent(self, after_id: str | None = None) -> list[Event]:
        """Events still in the ring, oldest first; only those after ``after_id`` if given.

        ULIDs sort by creation, so an id older than the ring returns the whole ring.
        """
        if after_id is None:
            return list(self._recent)
        return [e for e in self._recent if e.id > after_id]

    def stats(self) -> dict[str, Any]:
        """Counters for /metrics and /v1/status."""
        return {
            "emitted": dict(self.emitted),
            "subscribers": len(self._subscriptions),
            "dropped": self.dropped,
            "listener_errors": self.listener_errors,
        }


# --------------------------------------------------------------------------- audit log


def text_value(value: Any) -> str:
    """A field value as the text audit line shows it (bare word, or JSON)."""
    if isinstance(value, str) and value and not any(c.isspace() or c in '"=' for c in value):
        return utf8_safe(value)  # a lone surrogate escaped as in the quoted values
    if value is None:
        return "null"
    try:
        return orjson.dumps(value, default=_default).decode()
    except orjson.JSONEncodeError:
        # a lone surrogate (a name that is not UTF-8), an integer beyond 64 bits: as to_json
        return orjson.dumps(_plain(value), default=lambda v: utf8_safe(str(v))).decode()


def audit_line(event: Event, log_format: Literal["text", "json"] = "text") -> str:
    """One log line for an event.

    text: ``event model:failover from_model=a to_model=b reason=rate_limit`` (values with
    spaces, quotes or '=' are JSON-quoted, so the line stays machine-splittable);
    json: the event's JSON object.
    """
    if log_format == "json":
        return event.to_json().decode()
    parts = [f"event {event.type}"]
    parts.extend(f"{key}={text_value(value)}" for key, value in event.fields.items())
    return " ".join(parts)


class AuditLog:
    """A bus listener writing one INFO line per event to the ``failoverd.audit`` logger."""

    def __init__(self, log_format: Literal["text", "json"] = "text",
                 log: logging.Logger = audit_logger) -> None:
        self.log_format = log_format
        self._log = log

    def __call__(self, event: Event) -> None:
        self._log.info("%s", audit_line(event, self.log_format))

    def attach(self, bus: EventBus) -> Callable[[], None]:
        """Registers on ``bus``; returns the detach function."""
        return bus.listen(self)
