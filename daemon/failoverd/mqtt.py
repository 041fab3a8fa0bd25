"""MQTT publisher (aiomqtt 2.x): status, retained per-model state and events.

Topics (DESIGN.md "Events"), with ``P = <topic_prefix>/<node>``:

* ``P/status``: ``online`` / ``offline``, retained, QoS 1. ``offline`` is also the Last Will,
  and is published explicitly on clean shutdown (the broker only sends a will on an unclean
  disconnect).
* ``P/models/<percent-encoded id>/state``: retained JSON, QoS 1; republished after every
  reconnect because the broker may have restarted without persistence.
* ``P/events/<category>/<action>``: the event JSON, QoS 1, not retained. Under MQTT v5 it
  carries ``content_type = application/json`` and a message expiry of
  :data:`EVENT_EXPIRY_SECONDS` (an hour: a subscriber that was away for longer gets no stale
  failover storm).

The daemon never waits on the broker: :meth:`MqttPublisher.publish_event` and
:meth:`MqttPublisher.set_model_state` are synchronous and only touch in-memory buffers. A
background task connects (MQTT v5, falling back to 3.1.1 when the broker refuses v5), drains
the buffers in order and reconnects with jittered exponential backoff. An event leaves the
buffer only after the broker acknowledged its QoS 1 publish, so nothing buffered is lost on a
broker restart (at-least-once: an event in flight when the connection broke is sent again).
Up to :data:`PIPELINE` event publishes wait for their acknowledgements at once, the next
sent as each is acknowledged, so a slow broker or a busy loop costs no round trip per event.
The buffer holds ``queue_size`` events; when full the oldest is dropped and counted.

aiomqtt and paho exceptions are translated here, logged, and never leave this module.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiomqtt
import orjson
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from failoverd import discovery
from failoverd.clock import Clock
from failoverd.config import MqttConfig
from failoverd.events import Event, EventBus

logger = logging.getLogger(__name__)

EVENT_EXPIRY_SECONDS = 3600
PIPELINE = 32  # event publishes awaiting their acknowledgement at once
# Stopping while not connected: how long a connection attempt under way may still take (a
# broker that accepted TCP but never answers CONNECT must not hold shutdown for `timeout`).
STOP_CONNECTING_GRACE = 1.0
_REFUSED_PROTOCOL_CODES = frozenset({1, 132})  # 3.1.1 "unacceptable protocol", v5 0x84


class MqttUnavailable(Exception):
    """Internal: one connection attempt or session ended; the run loop backs off and retries."""


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Jittered exponential backoff: ``min(maximum, initial * 2**attempt)``, scaled by 0.5-1.0.

    The jitter keeps many daemons that lost the same broker from reconnecting in lockstep.
    """
    base = min(maximum, initial * 2.0 ** min(attempt, 32))
    return base * (0.5 + 0.5 * rng.random())


def model_topic_id(model_id: str) -> str:
    """A model id as one topic level: '/', '+', '#' and '%' percent-encoded."""
    return quote(model_id, safe="")


@dataclass(frozen=True, slots=True)
class MqttStats:
    """A snapshot for /metrics and /v1/status."""

    connected: bool
    queued: int  # events waiting for the broker
    states_pending: int  # retained messages (model states, discovery) not yet (re)published
    dropped: int
    published: int
    reconnects: int
    connect_failures: int
    protocol: str  # "5", "3.1.1" or "" before the first connection
    connected_since: float | None  # wall time
    last_error: str
    refused: int = 0  # publishes the broker acknowledged with an error (v5: e.g. an ACL)

    def as_dict(self) -> dict[str, Any]:
        """/v1/status's ``mqtt`` object; ``enabled`` as when MQTT is off (``{"enabled":
        false}``), so a script can test it either way."""
        return {"enabled": True, **{name: getattr(self, name) for name in self.__slots__}}


class MqttPublisher:
    """Publishes status, model state and events to one broker; see the module docstring.

    Use as an async context manager (starts the background task, and on exit flushes what it
    can, publishes ``offline`` and disconnects), or call :meth:`run` in a task and
    :meth:`stop` later. ``bus``, when given, is listened to for events.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        node: str,
        bus: EventBus | None,
        clock: Clock,
        rng: random.Random | None = None,
        *,
        keepalive: int = 30,
        timeout: float = 10.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.cfg = cfg
        self.node = node
        self._bus = bus
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._keepalive = keepalive
        self._timeout = timeout  # CONNACK / PUBACK wait
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        base = f"{cfg.topic_prefix}/{node}"
        self.status_topic = f"{base}/status"
        self._model_base = f"{base}/models"
        self._budget_base = f"{base}/budgets"
        self._event_base = f"{base}/events"
        self._queue: collections.deque[Event] = collections.deque()
        self._states: dict[str, bytes] = {}  # model id -> latest payload; b"" = clear retained
        self._dirty: dict[str, None] = {}  # ordered set of model ids still to publish
        # other retained messages by topic (Home Assistant discovery); b"" = clear retained
        self._topics: dict[str, bytes] = {}
        self._topics_dirty: dict[str, None] = {}
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        self._flush_budget = 0.0
        self._sent = 0  # events at the head of the queue published and awaiting their PUBACK
        self._task: asyncio.Task[None] | None = None
        self._detach: Any = None
        self._v5 = True
        self.dropped = 0
        self.published = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.refused = 0
        self._sessions = 0
        self._session_was_up = False  # resets the backoff after a working connection
        self._protocol = ""
        self._connected_since: float | None = None
        self._last_error = ""

    # ------------------------------------------------------------------ sync API (request path)

    def publish_event(self, event: Event) -> None:
        """Queues an event; never blocks. When the buffer is full the oldest is dropped."""
        if len(self._queue) >= self.cfg.queue_size:
            self._queue.popleft()
            if self._sent:  # it was in flight: the window's count of queued events shrinks
                self._sent -= 1
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                logger.warning("mqtt buffer full (%d): dropped %d events so far",
                               self.cfg.queue_size, self.dropped)
        self._queue.append(event)
        self._wakeup.set()

    def set_model_state(self, model_id: str, state: dict[str, Any]) -> None:
        """Stores a model's latest state and schedules its retained publish; never blocks."""
        self._states[model_id] = orjson.dumps(state, default=str)
        self._dirty[model_id] = None
        self._wakeup.set()

    def clear_model_state(self, model_id: str) -> None:
        """Removes a model's retained state topic (e.g. the model left the config)."""
        if model_id in self._states:
            self._states[model_id] = b""
            self._dirty[model_id] = None
            self._wakeup.set()

    def model_state_topic(self, model_id: str) -> str:
        return f"{self._model_base}/{model_topic_id(model_id)}/state"

    def budget_topic(self, scope: str, name: str, period: str) -> str:
        """A spending cap's retained state: `<prefix>/<node>/budgets/<scope>/<name>/<period>`
        (the name as one topic level, as model ids are)."""
        return f"{self._budget_base}/{scope}/{model_topic_id(name)}/{period}"

    @property
    def budget_filter(self) -> str:
        return f"{self._budget_base}/#"

    def set_retained(self, messages: dict[str, bytes]) -> None:
        """The other retained messages (topic -> payload) to keep on the broker: those
        given are (re)published when changed, those no longer given are cleared; never
        blocks."""
        for topic, payload in self._topics.items():
            if topic not in messages and payload:
                self._topics[topic] = b""
                self._topics_dirty[topic] = None
        for topic, payload in messages.items():
            if self._topics.get(topic) != payload:
                self._topics[topic] = payload
                self._topics_dirty[topic] = None
        if self._topics_dirty:
            self._wakeup.set()

    def stats(self) -> MqttStats:
        """Counters and connection state."""
        return MqttStats(
            connected=self._connected.is_set(), queued=len(self._queue),
            states_pending=len(self._dirty) + len(self._topics_dirty), dropped=self.dropped,
            published=self.published, reconnects=self.reconnects,
            connect_failures=self.connect_failures, protocol=self._protocol,
            connected_since=self._connected_since, last_error=self._last_error,
            refused=self.refused,
        )

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> MqttPublisher:
        self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def start(self) -> None:
        """Starts the background task (and listens to the bus, if any)."""
        if self._task is None:
            if self._bus is not None:
                self._detach = self._bus.listen(self.publish_event)
            self._task = asyncio.create_task(self.run(), name="mqtt-publisher")

    async def stop(self, grace: float = 5.0) -> None:
        """Flushes queued events for up to half of ``grace`` seconds, publishes ``offline``
        and disconnects; cancels whatever is left when ``grace`` runs out. Not connected,
        it waits at most :data:`STOP_CONNECTING_GRACE` for a connection attempt under way."""
        if self._detach is not None:
            self._detach()
            self._detach = None
        if not self._connected.is_set():
            grace = min(grace, STOP_CONNECTING_GRACE)
        self._flush_budget = grace / 2
        self._stopping.set()
        self._wakeup.set()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=grace)
        if not done:
            logger.warning("mqtt: shutdown timed out after %.1fs; %d events not published",
                           grace, len(self._queue))
            task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not done:
                return
            raise

    async def wait_connected(self) -> None:
        """Returns once connected (for startup diagnostics and tests; the daemon never waits)."""
        await self._connected.wait()

    async def run(self) -> None:
        """Connects, publishes and reconnects until :meth:`stop`."""
        attempt = 0
        while not self._stopping.is_set():
            try:
                await self._session()
                return
            except Exception as exc:
                # MqttUnavailable is the broker going away; anything else is a bug here, and it
                # must not end publishing for the rest of the daemon's life: log it, reconnect
                if not isinstance(exc, MqttUnavailable):
                    logger.exception("mqtt: publisher failed; reconnecting")
                self._last_error = str(exc) or type(exc).__name__
                if self._session_was_up:
                    attempt = 0
                delay = backoff_delay(attempt, self._backoff_initial, self._backoff_max,
                                      self._rng)
                attempt += 1
                logger.warning("mqtt: %s; retrying in %.2fs (%d events queued)",
                               exc, delay, len(self._queue))
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except TimeoutError:
                pass

    # ------------------------------------------------------------------ internals

    def _client(self, v5: bool) -> aiomqtt.Client:
        cfg = self.cfg
        unix = bool(cfg.socket)
        will = aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True)
        client = aiomqtt.Client(
            cfg.socket if unix else cfg.host,
            cfg.port,  # paho validates it even for a Unix socket, then ignores it
            transport="unix" if unix else "tcp",
            username=cfg.username or None,
            password=cfg.password or None,
            identifier=f"failoverd-{self.node}-{self._rng.getrandbits(32):08x}",
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=will,
            keepalive=self._keepalive,
            timeout=self._timeout,
            logger=logging.getLogger(f"{__name__}.paho"),
        )
        # aiomqtt completes a publish on any PUBACK and drops its reason code; under v5 a
        # broker says there that it refused the message (an ACL: 0x87 "Not authorized"),
        # which would otherwise pass for published, in silence, forever.
        paho = client._client  # noqa: SLF001 - the one place the reason code is seen
        acknowledged: Any = paho.on_publish  # aiomqtt's own, which completes the publish

        def on_publish(c: Any, userdata: Any, mid: int, rc: Any, properties: Any) -> None:
            if getattr(rc, "is_failure", False):
                self._publish_refused(rc)
            acknowledged(c, userdata, mid, rc, properties)

        paho.on_publish = on_publish
        # up to PIPELINE publishes await their PUBACK by design: aiomqtt warns past 10
        client.pending_calls_threshold = PIPELINE
        return client

    def _publish_refused(self, rc: Any) -> None:
        self.refused += 1
        self._last_error = (f"broker refused a publish: {rc} (check its ACL for "
                            f"{self.cfg.topic_prefix}/{self.node}/#)")
        if self.refused == 1 or self.refused % 100 == 0:
            logger.error("mqtt: %s; %d refused so far", self._last_error, self.refused)

    async def _connect(self) -> aiomqtt.Client:
        """A connected client; v5 first, then 3.1.1 if the broker refuses v5."""
        try:
            client = self._client(self._v5)
            await client.__aenter__()
            return client
        except MqttConnectError as exc:
            code = getattr(exc.rc, "value", exc.rc)
            if not (self._v5 and code in _REFUSED_PROTOCOL_CODES):
                self.connect_failures += 1
                raise MqttUnavailable(f"broker refused the connection: {exc}") from None
            logger.info("mqtt: broker refused MQTT v5; using 3.1.1")
            self._v5 = False
        except (aiomqtt.MqttError, OSError, ValueError) as exc:
            self.connect_failures += 1
            raise MqttUnavailable(f"cannot connect to {self._where()}: {exc}") from None
        try:
            client = self._client(False)
            await client.__aenter__()
            return client
        except (aiomqtt.MqttError, OSError, ValueError) as exc:
            self.connect_failures += 1
            raise MqttUnavailable(f"cannot connect to {self._where()}: {exc}") from None

    def _where(self) -> str:
        return self.cfg.socket or f"{self.cfg.host}:{self.cfg.port}"

    async def _session(self) -> None:
        """One connection: online, every retained state, then events until stop or failure."""
        self._session_was_up = False
        client = await self._connect()
        try:
            self._sessions += 1
            if self._sessions > 1:
                self.reconnects += 1
            self._protocol = "5" if self._v5 else "3.1.1"
            self._connected_since = self._clock.time()
            self._session_was_up = True
            logger.info("mqtt: connected to %s (MQTT %s)", self._where(), self._protocol)
            await self._publish(client, self.status_topic, b"online", retain=True)
            # this node's retained topics failoverd no longer keeps (a model or a spending
            # cap gone while the daemon was stopped) come back here and are cleared
            await client.subscribe(self.budget_filter, qos=1)
            if self.cfg.discovery:
                for pattern in discovery.config_filters(self.cfg, self.node):
                    await client.subscribe(pattern, qos=1)
            self._connected.set()
            self._dirty = dict.fromkeys(self._states)  # the broker may have lost them
            self._topics_dirty = dict.fromkeys(self._topics)
            drain = asyncio.create_task(self._drain(client), name="mqtt-drain")
            watch = asyncio.create_task(self._watch(client), name="mqtt-watch")
            try:
                done, _ = await asyncio.wait({drain, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (drain, watch):
                    task.cancel()
                await asyncio.gather(drain, watch, return_exceptions=True)
            for task in done:
                task.result()  # MqttUnavailable from either, or a clean return from drain
        finally:
            self._connected.clear()
            self._connected_since = None
            await self._close(client)

    async def _close(self, client: aiomqtt.Client) -> None:
        try:
            await client.__aexit__(None, None, None)
        except (aiomqtt.MqttError, OSError) as exc:
            logger.debug("mqtt: disconnect: %s", exc)

    async def _watch(self, client: aiomqtt.Client) -> None:
        # The iterator raises on disconnection, which cancels a drain that may be waiting on
        # a PUBACK that will never come. Its only messages are this node's retained spending
        # caps, and discovery configs when discovery is on (see _stale_config).
        try:
            async for message in client.messages:
                self._stale_config(message)
        except aiomqtt.MqttError as exc:
            raise MqttUnavailable(f"connection to {self._where()} lost: {exc}") from None

    def _stale_config(self, message: aiomqtt.Message) -> None:
        """A retained message of this node's on the broker that is no longer ours (a discovery
        config or a spending cap's state, of a model or cap removed while the daemon was
        stopped): cleared, or Home Assistant would keep its sensor for ever. Our own
        publishes come back unretained and are let be."""
        payload = message.payload
        if not (message.retain and isinstance(payload, bytes | bytearray) and payload):
            return
        topic = message.topic.value
        if topic not in self._topics:
            logger.info("mqtt: clearing a retained message no longer configured (%s)", topic)
            self._topics[topic] = b""
            self._topics_dirty[topic] = None
            self._wakeup.set()

    async def _drain(self, client: aiomqtt.Client) -> None:
        while not self._stopping.is_set():
            await self._publish_pending(client)
            if self._stopping.is_set():
                break
            self._wakeup.clear()
            if not (self._queue or self._dirty or self._topics_dirty):
                await self._wakeup.wait()
        try:
            async with asyncio.timeout(self._flush_budget):
                await self._publish_pending(client, flushing=True)
        except TimeoutError:
            logger.warning("mqtt: %d events left unpublished at shutdown", len(self._queue))
        await self._publish(client, self.status_topic, b"offline", retain=True)
        logger.info("mqtt: published offline; disconnecting")

    async def _publish_pending(self, client: aiomqtt.Client, *, flushing: bool = False) -> None:
        """Publishes dirty states, then queued events in order, until both are empty."""
        while flushing or not self._stopping.is_set():
            if self._topics_dirty:
                # first: a removed model's sensor goes before its state topic is cleared
                # (Home Assistant would render its template on the empty state)
                topic = next(iter(self._topics_dirty))
                payload = self._topics[topic]
                await self._publish(client, topic, payload, retain=True, json=bool(payload))
                if self._topics.get(topic) is payload:  # unchanged while we awaited
                    self._topics_dirty.pop(topic, None)
                    if not payload:
                        del self._topics[topic]
            elif self._dirty:
                model_id = next(iter(self._dirty))
                payload = self._states[model_id]
                topic = f"{self._model_base}/{model_topic_id(model_id)}/state"
                await self._publish(client, topic, payload, retain=True, json=bool(payload))
                if self._states.get(model_id) is payload:  # unchanged while we awaited
                    self._dirty.pop(model_id, None)
                    if not payload:
                        del self._states[model_id]
            elif self._queue:
                await self._publish_events(client, flushing)
            else:
                return

    async def _publish_events(self, client: aiomqtt.Client, flushing: bool) -> None:
        """Publishes queued events in order with up to PIPELINE awaiting their acknowledgement
        at once, until the queue is empty or a model state is due (or stop, unless flushing).

        A window, not batches: the next event goes out as soon as the oldest in flight is
        acknowledged. mosquitto by default (set_tcp_nodelay false) holds every PUBACK of a
        burst after the first until our TCP ACK, which Linux delays up to 40 ms; a batch that
        waited for all of its acknowledgements waited that out every time (about 800 events/s,
        an event storm overflowing the queue of a healthy broker), while the publish sent on
        the first acknowledgement carries the ACK. Each event leaves the queue, in order, once
        the broker acknowledged it and every event before it.
        """
        window: collections.deque[tuple[Event, asyncio.Task[None]]] = collections.deque()
        self._sent = 0
        try:
            while True:
                while (len(window) < PIPELINE and self._sent < len(self._queue)
                       and not self._dirty and (flushing or not self._stopping.is_set())):
                    event = self._queue[self._sent]
                    try:
                        payload = event.to_json()
                    except Exception:
                        # our bug, not the broker's: drop this one event (counted), keep the rest
                        logger.exception("mqtt: event %s %s cannot be encoded; dropped",
                                         event.id, event.type)
                        del self._queue[self._sent]
                        self.dropped += 1
                        continue
                    topic = f"{self._event_base}/{quote(event.category, safe='')}/" \
                            f"{quote(event.action, safe='')}"
                    # each task hands its message to paho before its first await, in creation
                    # order: the broker receives them in queue order
                    window.append((event, asyncio.create_task(self._publish(
                        client, topic, payload, json=True, expiry=EVENT_EXPIRY_SECONDS))))
                    self._sent += 1
                if not window:
                    return
                event, task = window[0]
                await task
                window.popleft()
                self.published += 1
                # Overflow may have evicted it while in flight; then it is already gone.
                if self._queue and self._queue[0] is event:
                    self._queue.popleft()
                    self._sent -= 1
        finally:
            self._sent = 0  # unacknowledged events are sent again on the next connection
            for _, task in window:
                task.cancel()
            await asyncio.gather(*(task for _, task in window), return_exceptions=True)

    async def _publish(self, client: aiomqtt.Client, topic: str, payload: bytes, *,
                       retain: bool = False, json: bool = False, expiry: int = 0) -> None:
        properties = None
        if self._v5 and (json or expiry):
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if json:
                properties.ContentType = "application/json"
            if expiry:
                properties.MessageExpiryInterval = expiry
        try:
            await client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        except (aiomqtt.MqttError, OSError, ValueError) as exc:
            raise MqttUnavailable(f"publish to {topic} failed: {exc}") from None
