"""sd_notify: tell systemd about readiness, status, reloads, shutdown, and keep its watchdog fed.

A thin layer over the ``sdnotify`` package, which only holds a datagram socket and writes
strings to it. What it lacks, added here:

- the address comes from an injected environment (``sdnotify`` reads ``os.environ`` itself), and
  abstract-namespace addresses (``@name``) are translated for ``connect()``;
- text is sent as UTF-8 (``sdnotify`` encodes Latin-1 and silently drops anything else);
- a send that fails (no socket yet, systemd gone, queue full) is logged once per outage and
  counted, never raised into the daemon, and the connection is retried on the next message;
- the protocol messages themselves: ``RELOADING=1`` with ``MONOTONIC_USEC``,
  ``STOPPING=1`` with ``EXTEND_TIMEOUT_USEC``, a one-line
  ``STATUS``, the watchdog interval from ``WATCHDOG_USEC``/``WATCHDOG_PID``, and a watchdog
  coroutine that pings from the event loop so a wedged loop stops the pings.

Without ``NOTIFY_SOCKET`` (not started by systemd, or ``Type=simple``), every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

import sdnotify  # no type information; ignore_missing_imports in pyproject.toml

from failoverd.clock import Clock, SystemClock

logger = logging.getLogger(__name__)

# systemd reads one datagram per message; a STATUS line is for humans in `systemctl status`,
# so anything longer than this is noise that only risks hitting the datagram size limit.
STATUS_MAX_CHARS = 512

# sd_notify() in libsystemd blocks; a bounded wait keeps a stuck manager from stalling the
# event loop for more than this (the message is then counted as failed).
SEND_TIMEOUT = 1.0

Sleep = Callable[[float], Awaitable[None]]


class _Transport(sdnotify.SystemdNotifier):  # type: ignore[misc]
    """sdnotify's notifier on a socket we connected (it can only read ``os.environ``)."""

    def __init__(self, sock: socket.socket) -> None:
        # Skip SystemdNotifier.__init__, which would connect to os.environ's NOTIFY_SOCKET.
        # debug=True makes notify() raise, so failures reach us to be logged and counted.
        self.debug = True
        self.socket = sock


def _socket_address(value: str) -> str | None:
    """The ``connect()`` address for a NOTIFY_SOCKET value, or None when unsupported."""
    if value.startswith("@"):
        # Abstract namespace: the kernel wants a leading NUL instead of systemd's '@'.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # systemd >= 254 may pass "vsock:CID:PORT" to a VM; a local daemon never sees one.
    return None


def _wire(text: str) -> str:
    # sdnotify encodes with Latin-1; this round trip makes that encoding yield UTF-8 bytes.
    # errors="replace": a lone surrogate in a status text must not raise into the daemon.
    return text.encode("utf-8", errors="replace").decode("latin-1")


def one_line(text: str, limit: int = STATUS_MAX_CHARS) -> str:
    """``text`` as a single line of at most ``limit`` characters, for ``STATUS=``."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return flat


class Notifier:
    """Sends sd_notify messages to the service manager; a no-op without ``NOTIFY_SOCKET``.

    ``env`` is read once, here. ``clock`` must be the real monotonic clock in production:
    systemd compares ``MONOTONIC_USEC`` with its own CLOCK_MONOTONIC.
    """

    def __init__(self, env: Mapping[str, str] | None = None, clock: Clock | None = None) -> None:
        env = os.environ if env is None else env
        self._clock: Clock = clock if clock is not None else SystemClock()
        raw = env.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(raw) if raw else None
        if raw and self._address is None:
            logger.warning("NOTIFY_SOCKET %r is not a Unix socket address; sd_notify disabled", raw)
        self._watchdog_usec = env.get("WATCHDOG_USEC", "")
        self._watchdog_pid = env.get("WATCHDOG_PID", "")
        self._transport: _Transport | None = None
        self._failing = False
        self.send_errors = 0
        """Messages that could not be delivered (each one logged only at the start of an outage)."""

    @property
    def enabled(self) -> bool:
        """True when started with a usable NOTIFY_SOCKET."""
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """Startup (or a reload) is complete: ``READY=1``, optionally with a status line."""
        fields = ["READY=1"]
        if status is not None:
            fields.append("STATUS=" + one_line(status))
        return self.notify("\n".join(fields))

    def status(self, text: str) -> bool:
        """A one-line summary for ``systemctl status``; newlines and runs of spaces collapse."""
        return self.notify("STATUS=" + one_line(text))

    def reloading(self) -> bool:
        """A reload begins: ``RELOADING=1`` with ``MONOTONIC_USEC``; send :meth:`ready` after it.

        ``Type=notify-reload`` needs the timestamp to tell this reload from an earlier one.
        """
        usec = round(self._clock.monotonic() * 1_000_000)
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self, needs: float | None = None) -> bool:
        """Shutdown begins: ``STOPPING=1``; with ``needs`` (seconds) also
        ``EXTEND_TIMEOUT_USEC``, so systemd waits that long even past ``TimeoutStopSec=``."""
        if needs is None or needs <= 0:
            return self.notify("STOPPING=1")
        return self.notify(f"STOPPING=1\nEXTEND_TIMEOUT_USEC={round(needs * 1_000_000)}")

    def watchdog(self) -> bool:
        """Feed the watchdog: ``WATCHDOG=1``."""
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of ``WATCHDOG_USEC``), or None when no watchdog is ours.

        Like sd_watchdog_enabled(): the watchdog applies to us only when ``WATCHDOG_PID`` is
        unset or names this process (a child that inherited the variables must not ping).
        """
        if not self.enabled or not self._watchdog_usec:
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            logger.warning("ignoring WATCHDOG_USEC=%r: not an integer", self._watchdog_usec)
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                pid = int(self._watchdog_pid)
            except ValueError:
                logger.warning("ignoring watchdog: WATCHDOG_PID=%r is not a pid",
                               self._watchdog_pid)
                return None
            if pid != os.getpid():
                return None
        return usec / 2 / 1_000_000

    async def watchdog_loop(self, interval: float, *, sleep: Sleep = asyncio.sleep) -> None:
        """Send ``WATCHDOG=1`` now and every ``interval`` seconds until cancelled.

        The ping is sent from this coroutine, on the event loop, on purpose: if the loop is
        blocked the pings stop and systemd restarts the daemon. ``sleep`` is injectable for tests.
        """
        if interval <= 0:
            raise ValueError("watchdog interval must be positive")
        if not self.enabled:
            return
        while True:
            self.watchdog()
            await sleep(interval)

    def notify(self, state: str) -> bool:
        """Send one raw message (``KEY=value`` lines). True if delivered; never raises."""
        if self._address is None:
            return False
        try:
            self._connected().notify(_wire(state))
        except OSError as exc:
            self._fail(exc)
            return False
        if self._failing:
            self._failing = False
            logger.info("sd_notify delivered again after %d failed messages", self.send_errors)
        return True

    def close(self) -> None:
        """Close the socket; a later message reconnects."""
        if self._transport is not None:
            self._transport.socket.close()
            self._transport = None

    def _connected(self) -> _Transport:
        if self._transport is None:
            assert self._address is not None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.settimeout(SEND_TIMEOUT)
                sock.connect(self._address)
            except OSError:
                sock.close()
                raise
            self._transport = _Transport(sock)
        return self._transport

    def _fail(self, exc: OSError) -> None:
        self.send_errors += 1
        # A connected datagram socket stays bound to the old peer; reconnect next time.
        self.close()
        if not self._failing:
            self._failing = True
            logger.warning("sd_notify failed, systemd will not see state changes: %s", exc)
        else:
            logger.debug("sd_notify still failing: %s", exc)
