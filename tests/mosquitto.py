"""Test helpers: a real mosquitto on a free loopback port, a gateable TCP proxy in front of it,
and a recording MQTT subscriber.

Import from test modules (``from tests.mosquitto import ...``); tests needing the broker use the
``mosquitto`` fixture, which skips with a reason when the binary is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest


def find_mosquitto() -> str | None:
    """The broker binary: PATH first, then Debian's /usr/sbin."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


MOSQUITTO = find_mosquitto()
requires_mosquitto = pytest.mark.skipif(
    MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto)")


def hold_port(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1:`port` (0: any) with SO_REUSEADDR, not listening:
    connections to it are refused, and no other socket gets the port as its source."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class Mosquitto:
    """One broker process on 127.0.0.1:<port>, no persistence: a restart forgets everything."""

    def __init__(self, workdir: Path, port: int | None = None,
                 unix_socket: str | None = None) -> None:
        assert MOSQUITTO is not None
        # the port stays bound (not listening) whenever the broker is down, so that a client
        # retrying it cannot get it as its own source port (TCP self-connect); mosquitto
        # binds with SO_REUSEADDR, which a bound but not listening socket allows
        self._holder: socket.socket | None = hold_port(port or 0)
        self.port = int(self._holder.getsockname()[1])
        self.host = "127.0.0.1"
        self.unix_socket = unix_socket
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        extra = f"listener 0 {unix_socket}\n" if unix_socket else ""
        if os.geteuid() == 0:
            extra += "user root\n"  # else it drops to "mosquitto", which cannot bind in our tmp
        self.conf.write_text(
            f"persistence false\nlistener {self.port} 127.0.0.1\n{extra}allow_anonymous true\n"
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 5.0) -> None:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: "
                                   f"{self.log.read_text() if self.log.exists() else ''}")
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.host, self.port), timeout=0.2):
                if self._holder is not None:
                    self._holder.close()
                    self._holder = None
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not listen on {self.port} in {timeout}s")
            time.sleep(0.02)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=5)
        self.proc = None
        if self._holder is None:
            self._holder = hold_port(self.port)

    def release_port(self) -> None:
        if self._holder is not None:
            self._holder.close()
            self._holder = None

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        """Kills the broker and starts a fresh one on the same port."""
        self.kill()
        self.start()


@contextlib.contextmanager
def running(broker: Mosquitto) -> Iterator[Mosquitto]:
    """`broker` started, then killed and its port released (for fixtures of brokers with a
    configuration of their own)."""
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()
        broker.release_port()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running broker, stopped after the test."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    with running(Mosquitto(tmp_path)) as broker:
        yield broker


class TcpProxy:
    """A loopback TCP proxy to the broker that the test can close and reopen on its port.

    With ``refuse_v5`` it answers an MQTT v5 CONNECT the way a 3.1.1-only broker does
    (CONNACK return code 1) and forwards everything else. With ``latency`` every chunk from
    the broker is held that long (a slow link: each acknowledgement is late).
    """

    def __init__(self, upstream_port: int, *, refuse_v5: bool = False,
                 latency: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.refuse_v5 = refuse_v5
        self.latency = latency
        self.refused_v5 = 0
        self._server: asyncio.Server | None = None
        # While not listening, the port stays bound (not listening: connections are refused).
        # Were it free, a client retrying 127.0.0.1:<port> could get that same port as its
        # ephemeral source and connect to itself (TCP self-connect), taking the port away.
        self._holder: socket.socket | None = hold_port(0)
        self.port = int(self._holder.getsockname()[1])
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        sock, self._holder = self._holder, None
        assert sock is not None, "already open"
        self._server = await asyncio.start_server(self._handle, sock=sock)

    async def close_listener(self) -> None:
        """Stops accepting (new clients get ECONNREFUSED); live connections keep going."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            self._holder = hold_port(self.port)

    async def close(self) -> None:
        await self.close_listener()
        if self._holder is not None:
            self._holder.close()
            self._holder = None
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            first = b""
            if self.refuse_v5:
                first = await reader.read(4096)
                # CONNECT: fixed header, remaining length, "\x00\x04MQTT", protocol level
                idx = first.find(b"\x00\x04MQTT")
                if idx >= 0 and first[idx + 6] == 5:
                    self.refused_v5 += 1
                    writer.write(b"\x20\x02\x00\x01")
                    await writer.drain()
                    return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            self._writers.add(up_writer)
            up_writer.write(first)
            pipes = {asyncio.create_task(self._pipe(reader, up_writer)),
                     asyncio.create_task(self._pipe(up_reader, writer, self.latency))}
            try:
                # One side ended: end both, as a broker's death ends its clients' connections.
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for p in pipes:
                    p.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
                up_writer.close()
                self._writers.discard(up_writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a cancelled handler must return quietly (asyncio's stream callback checks it)
        finally:
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    latency: float = 0.0) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if latency:
                    await asyncio.sleep(latency)  # the simulated link, not a wait for a timer
                writer.write(data)
                await writer.drain()


class Recorder:
    """A real MQTT v5 subscriber recording every message it gets."""

    def __init__(self, port: int, topic: str = "#", host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.topic = topic
        self.messages: list[aiomqtt.Message] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Recorder:
        self._task = asyncio.create_task(self._run())
        async with asyncio.timeout(5):
            await self._ready.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        async with aiomqtt.Client(self.host, self.port,
                                  protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(self.topic, qos=1)
            self._ready.set()
            async for message in client.messages:
                self.messages.append(message)
                self._changed.set()

    def on(self, topic: str) -> list[aiomqtt.Message]:
        return [m for m in self.messages if m.topic.value == topic]

    async def wait_for(self, predicate: Callable[[list[aiomqtt.Message]], bool],
                       timeout: float = 5.0) -> list[aiomqtt.Message]:
        """Returns the messages once ``predicate(messages)`` holds; fails after ``timeout``."""
        async with asyncio.timeout(timeout):
            while not predicate(self.messages):
                self._changed.clear()
                await self._changed.wait()
        return self.messages


async def retained(port: int, topic_filter: str, host: str = "127.0.0.1",
                   ) -> dict[str, aiomqtt.Message]:
    """Every retained message under ``topic_filter`` as a fresh subscriber sees it.

    Deterministic without waiting on a timer: the broker sends retained messages right after
    SUBACK, so once our own marker publish comes back, all of them have arrived.
    """
    marker = f"test-marker/{os.getpid()}/{time.monotonic_ns()}"
    found: dict[str, aiomqtt.Message] = {}
    async with asyncio.timeout(5), aiomqtt.Client(
            host, port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(topic_filter, qos=1)
        await client.subscribe(marker, qos=1)
        await client.publish(marker, b"x", qos=1)
        async for message in client.messages:
            if message.topic.value == marker:
                break
            if message.retain:
                found[message.topic.value] = message
    return found


@contextlib.asynccontextmanager
async def recording(port: int, topic: str = "#") -> AsyncIterator[Recorder]:
    async with Recorder(port, topic) as rec:
        yield rec
