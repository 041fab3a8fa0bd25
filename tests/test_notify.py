"""sd_notify wrapper: a fake NOTIFY_SOCKET (a datagram socket we bind) receives the messages."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator

import pytest

from failoverd.clock import ManualClock
from failoverd.notify import STATUS_MAX_CHARS, Notifier


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # pytest's tmp_path can exceed the 107-byte limit of a Unix socket path.
    path = tempfile.mkdtemp(prefix="fo-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.fixture
def systemd(sock_dir: str) -> Iterator[tuple[str, socket.socket]]:
    path = os.path.join(sock_dir, "notify")
    sock = _receiver(path)
    yield path, sock
    sock.close()


def _pending(sock: socket.socket) -> list[bytes]:
    """Every datagram already queued, without waiting for more."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(65536))
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(5)


def test_messages_arrive_in_order(systemd: tuple[str, socket.socket]) -> None:
    path, sock = systemd
    clock = ManualClock(start=4321.25)
    n = Notifier(env={"NOTIFY_SOCKET": path}, clock=clock)
    assert n.enabled

    assert n.ready()
    assert n.status("3/4 models healthy, 1 failover in the last minute")
    assert n.reloading()
    assert n.ready()
    assert n.watchdog()
    assert n.stopping()
    n.close()

    assert [sock.recv(4096) for _ in range(6)] == [
        b"READY=1",
        b"STATUS=3/4 models healthy, 1 failover in the last minute",
        b"RELOADING=1\nMONOTONIC_USEC=4321250000",
        b"READY=1",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]
    assert n.send_errors == 0


def test_reloading_uses_the_real_monotonic_clock_by_default(
    systemd: tuple[str, socket.socket],
) -> None:
    # systemd compares MONOTONIC_USEC with its own CLOCK_MONOTONIC.
    path, sock = systemd
    n = Notifier(env={"NOTIFY_SOCKET": path})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    n.close()
    first, second = sock.recv(4096).split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) < before + 5_000_000


def test_status_is_one_line_and_utf8(systemd: tuple[str, socket.socket]) -> None:
    path, sock = systemd
    n = Notifier(env={"NOTIFY_SOCKET": path})
    n.status("degraded:\n  anthropic open\r\nREADY=1 ✓ café")
    n.status("x" * (STATUS_MAX_CHARS * 2))
    n.ready(status="serving\non /run/failoverd/failoverd.sock")
    n.close()
    # A newline would let a status text inject another assignment (here READY=1).
    assert sock.recv(4096) == "STATUS=degraded: anthropic open READY=1 ✓ café".encode()
    long = sock.recv(65536).decode()
    assert long.startswith("STATUS=xxx") and len(long) == len("STATUS=") + STATUS_MAX_CHARS
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving on /run/failoverd/failoverd.sock"


def test_abstract_namespace_socket() -> None:
    name = f"failoverd-test-{uuid.uuid4().hex}"
    sock = _receiver("\0" + name)
    try:
        n = Notifier(env={"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        n.close()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_without_notify_socket_everything_is_a_noop() -> None:
    n = Notifier(env={"WATCHDOG_USEC": "30000000"})
    assert not n.enabled
    assert n.ready() is False
    assert n.status("x") is False
    assert n.reloading() is False
    assert n.watchdog() is False
    assert n.stopping() is False
    assert n.watchdog_interval() is None
    assert n.send_errors == 0


def test_unsupported_address_disables(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="failoverd.notify"):
        n = Notifier(env={"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert n.ready() is False
    assert "vsock:2:1234" in caplog.text


def test_send_failures_are_counted_logged_once_and_recover(
    sock_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = os.path.join(sock_dir, "notify")
    n = Notifier(env={"NOTIFY_SOCKET": path})
    with caplog.at_level(logging.DEBUG, logger="failoverd.notify"):
        # Nobody bound there yet: connect fails; the daemon must not notice.
        assert n.ready() is False
        assert n.status("still nobody") is False
        assert n.send_errors == 2
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1

        sock = _receiver(path)
        try:
            assert n.watchdog() is True
            assert sock.recv(4096) == b"WATCHDOG=1"
            assert "delivered again" in caplog.text

            # The manager goes away after we connected: the connected socket fails, then a new
            # manager socket at the same path is found again.
            sock.close()
            os.unlink(path)
            assert n.watchdog() is False
            assert n.send_errors == 3
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 2  # a new outage is logged once more
            sock = _receiver(path)
            assert n.stopping() is True
            assert sock.recv(4096) == b"STOPPING=1"
        finally:
            sock.close()
            n.close()


@pytest.mark.parametrize(
    ("watchdog_pid", "expected"),
    [
        (None, 15.0),
        ("ours", 15.0),
        ("other", None),
        ("junk", None),
    ],
)
def test_watchdog_interval(watchdog_pid: str | None, expected: float | None) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}
    if watchdog_pid == "ours":
        env["WATCHDOG_PID"] = str(os.getpid())
    elif watchdog_pid == "other":
        env["WATCHDOG_PID"] = str(os.getpid() + 1)
    elif watchdog_pid == "junk":
        env["WATCHDOG_PID"] = "x"
    assert Notifier(env=env).watchdog_interval() == expected


@pytest.mark.parametrize("usec", [None, "", "0", "abc"])
def test_no_watchdog_interval_without_a_valid_watchdog_usec(usec: str | None) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    assert Notifier(env=env).watchdog_interval() is None


async def test_watchdog_loop_pings_then_waits_the_interval(
    systemd: tuple[str, socket.socket],
) -> None:
    path, sock = systemd
    n = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000"})
    interval = n.watchdog_interval()
    assert interval == 10.0
    waits: list[float] = []
    third_wait = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            third_wait.set()
            await asyncio.Event().wait()  # until cancelled
        await asyncio.sleep(0)

    task = asyncio.create_task(n.watchdog_loop(interval, sleep=fake_sleep))
    await asyncio.wait_for(third_wait.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    n.close()
    assert waits == [10.0, 10.0, 10.0]
    assert _pending(sock) == [b"WATCHDOG=1"] * 3


async def test_watchdog_loop_without_notify_socket_returns() -> None:
    n = Notifier(env={})
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    await asyncio.wait_for(n.watchdog_loop(1.0, sleep=sleep), 5)
    assert slept == []  # no NOTIFY_SOCKET: nothing to ping, the loop ends at once


async def test_watchdog_loop_rejects_a_bad_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        await Notifier(env={"NOTIFY_SOCKET": "/nonexistent"}).watchdog_loop(0)


def test_default_env_is_the_process_environment(
    systemd: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, sock = systemd
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    n = Notifier()
    assert n.ready()
    n.close()
    assert sock.recv(4096) == b"READY=1"
