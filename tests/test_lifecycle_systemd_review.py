"""Lifecycle review with real processes, as systemd drives them: a SIGHUP that came while the
daemon was starting, sockets passed by systemd that cannot serve, and a state file holding
values the daemon would crash on.

Reuses test_lifecycle's `launch` (the `failoverd` console script with a fake NOTIFY_SOCKET).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from tests.helpers import tcp_listener
from tests.test_lifecycle import (  # noqa: F401 - launch is a fixture
    REPLY,
    Launch,
    NotifySocket,
    chat,
    launch,
    toml,
)

ACTIVATE = shutil.which("systemd-socket-activate")
needs_activate = pytest.mark.skipif(ACTIVATE is None,
                                    reason="systemd-socket-activate is not installed")


async def _open_fifo_for_writing(path: Path, proc: asyncio.subprocess.Process) -> int:
    """The write end of the FIFO, once the daemon has opened its read end (it blocks there)."""
    async with asyncio.timeout(10):
        while True:
            assert proc.returncode is None, "the daemon exited before reading its config"
            try:
                return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
            await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- SIGHUP at start


async def test_sighup_while_starting_is_a_reload_not_the_end(short_dir: Path, fake_openai,
                                                             launch: Launch) -> None:  # noqa: F811
    # SIGHUP's default action ends the process, and systemd counts that as a clean exit, so
    # Restart=on-failure did not bring the daemon back. Here it arrives while the daemon is
    # reading its config: the config file is a FIFO the test holds until the signal is sent.
    a = await fake_openai()
    b = await fake_openai()
    first = toml(short_dir, {"a": a})
    second = toml(short_dir, {"a": a, "b": b})
    fifo = short_dir / "d.toml"
    os.mkfifo(fifo)
    d = await launch("", config=fifo, wait_ready=False)
    fd = await _open_fifo_for_writing(fifo, d.proc)
    d.signal(signal.SIGHUP)
    await asyncio.sleep(0.1)  # a signal ends the process at once if nothing catches it
    if d.proc.returncode is not None:
        os.close(fd)
        pytest.fail(f"SIGHUP while starting ended the daemon: exit {d.proc.returncode}")
    try:
        os.write(fd, first.encode())
    finally:
        os.close(fd)
    # what the operator wrote before the SIGHUP: the reload must pick it up
    staged = short_dir / "staged.toml"
    staged.write_text(second)
    os.replace(staged, fifo)
    ready = asyncio.create_task(d.notify.expect("READY=1"))
    exited = asyncio.create_task(d.proc.wait())
    await asyncio.wait((ready, exited), timeout=10, return_when=asyncio.FIRST_COMPLETED)
    ready.cancel()
    exited.cancel()
    assert d.proc.returncode is None, f"exited {d.proc.returncode}:\n{d.log_text()}"
    i = await d.notify.expect("READY=1")
    j = await d.notify.expect("RELOADING=1", after=i + 1, timeout=5)
    await d.notify.expect("READY=1", after=j + 1, timeout=5)
    client = d.client()
    models = (await client.get("/v1/status")).json()["models"]
    assert sorted(models) == ["a/gpt-a", "b/gpt-b"]
    assert (await chat(client))[:2] == (200, REPLY)
    d.signal(signal.SIGTERM)
    assert await d.exit_code() == 0
    assert d.notify.lifecycle() == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]


# --------------------------------------------------------------------------- socket activation

# Execs argv with one socket of the given kind as fd 3 and LISTEN_PID naming itself, as systemd
# does (systemd-socket-activate cannot pass a connection without forking a child per client).
_LAUNCHER = """
import os, socket, sys
kind, path, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
if kind == "datagram":
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
else:  # "connection": what Accept=yes passes
    s, peer = socket.socketpair()
    peer.set_inheritable(True)  # stays open in the daemon: the connection is not at EOF
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="api")
os.execv(argv[0], argv)
"""


@needs_activate
async def test_two_passed_sockets_are_served_and_left_to_systemd(
        short_dir: Path, fake_openai, launch: Launch) -> None:  # noqa: F811
    a = await fake_openai()
    passed = short_dir / "act.sock"
    port, tcp = tcp_listener(short_dir)
    tcp = tcp.split("\n", 1)[1]  # the token only: the TCP socket comes from systemd
    assert ACTIVATE is not None
    d = await launch(toml(short_dir, {"a": a}, daemon=tcp), wait_ready=False, argv=[
        ACTIVATE, "-l", str(passed), "-l", f"127.0.0.1:{port}", "--fdname=api:tcp",
        "-E", f"NOTIFY_SOCKET={short_dir / 'd-0.ntf'}"])
    async with asyncio.timeout(5):
        while not passed.exists():
            await asyncio.sleep(0.02)
    d.socket = str(passed)
    assert (await chat(d.client()))[:2] == (200, REPLY)  # the first client starts the daemon
    await d.notify.expect("READY=1", timeout=5)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as over_tcp:
        assert (await over_tcp.get("/v1/status")).status_code == 401
        r = await over_tcp.get("/v1/status", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
    log = d.log_text()
    assert "fd 3 api AF_UNIX" in log and "fd 4 tcp AF_INET" in log
    d.signal(signal.SIGTERM)
    assert await d.exit_code() == 0
    assert passed.exists()  # systemd's file (RemoveOnStop= decides), not ours to unlink
    assert not (short_dir / "d.sock").exists()  # daemon.socket is ignored


async def test_listen_pid_of_another_process_binds_daemon_socket(
        short_dir: Path, fake_openai, launch: Launch) -> None:  # noqa: F811
    # inherited from a socket-activated parent: not ours, so the configured path is bound
    a = await fake_openai()
    d = await launch(toml(short_dir, {"a": a}),
                     argv=["env", "LISTEN_PID=1", "LISTEN_FDS=1", "LISTEN_FDNAMES=x"])
    assert (await chat(d.client()))[:2] == (200, REPLY)
    assert "passed by systemd" not in d.log_text()
    d.signal(signal.SIGTERM)
    assert await d.exit_code() == 0
    assert not (short_dir / "d.sock").exists()  # ours: removed at a clean stop


@pytest.mark.parametrize("kind", ["datagram", "connection"])
async def test_a_passed_socket_that_cannot_listen_fails_the_start_clearly(
        short_dir: Path, fake_openai, launch: Launch, kind: str) -> None:  # noqa: F811
    # ListenDatagram= ended in a traceback; with Accept=yes the daemon said READY=1 on a
    # connection and never accepted anything
    a = await fake_openai()
    d = await launch(toml(short_dir, {"a": a}), wait_ready=False,
                     argv=[sys.executable, "-c", _LAUNCHER, kind, str(short_dir / "x.sock")])
    assert await d.exit_code() == 1
    log = d.log_text()
    assert "failoverd: systemd passed file descriptor 3" in log
    assert "ListenStream= with Accept=no" in log
    assert "Traceback" not in log
    assert "READY=1" not in d.notify.messages
    assert not (short_dir / "d.sock").exists()  # daemon.socket was not bound either


# --------------------------------------------------------------------------- state file


@pytest.mark.parametrize(("key", "value"), [("open_until", 1e13), ("open_count", 10**29)])
async def test_a_state_file_with_numbers_out_of_range_is_set_aside(
        short_dir: Path, fake_openai, launch: Launch, key: str, value: float) -> None:  # noqa: F811
    # a breaker open until the year 318857 made the prober's date arithmetic overflow, an open
    # count beyond 64 bits the first save: the daemon stopped at every start, a restart loop
    a = await fake_openai()
    text = toml(short_dir, {"a": a})
    d = await launch(text)
    r = await d.client().post("/v1/models/a/gpt-a/open", json={"seconds": 600})
    assert r.json()["state"] == "forced_open"
    d.signal(signal.SIGTERM)
    assert await d.exit_code() == 0
    path = short_dir / "d-state" / "state.json"
    saved = orjson.loads(path.read_bytes())
    saved["breakers"]["a/gpt-a"].update({"state": "open", key: value})
    path.write_text(json.dumps(saved))  # orjson cannot write an integer beyond 64 bits

    again = await launch(text, name="d", config=d.config)
    log = again.log_text()
    assert f"state file {path} is corrupt (breakers.a/gpt-a.{key} = " in log
    assert (short_dir / "d-state" / "state.json.corrupt").exists()
    client = again.client()
    assert (await client.get("/v1/status")).json()["models"]["a/gpt-a"]["state"] == "closed"
    assert (await chat(client))[:2] == (200, REPLY)
    again.signal(signal.SIGTERM)
    assert await again.exit_code() == 0
    assert orjson.loads(path.read_bytes())["breakers"]["a/gpt-a"]["state"] == "closed"


# --------------------------------------------------------------------------- sd_notify, signals


async def test_abstract_notify_socket_and_sigint(short_dir: Path, fake_openai,
                                                 launch: Launch) -> None:  # noqa: F811
    a = await fake_openai()
    abstract = NotifySocket(Path(f"\0failoverd-test-{os.getpid()}-{short_dir.name}"))
    try:
        d = await launch(toml(short_dir, {"a": a}), wait_ready=False,
                         argv=["env", "NOTIFY_SOCKET=@" + abstract.path[1:]])
        await abstract.expect("READY=1")
        assert (await chat(d.client()))[:2] == (200, REPLY)
        d.signal(signal.SIGINT)
        await abstract.expect("STOPPING=1", timeout=5)
        assert await d.exit_code() == 0
        assert [m.split("\n")[0] for m in abstract.messages] == ["READY=1", "STOPPING=1"]
        assert d.notify.messages == []  # the fixture's socket was overridden
    finally:
        await abstract.close()


async def test_watchdog_is_fed_through_the_drain_and_sighup_there_is_ignored(
        short_dir: Path, fake_openai, launch: Launch) -> None:  # noqa: F811
    # a drain up to shutdown_timeout (30 s) is as long as WatchdogSec=: the pings must go on
    a = await fake_openai(default="slow_stream:0.1")
    d = await launch(toml(short_dir, {"a": a}, daemon="shutdown_timeout = 10\n"),
                     env={"WATCHDOG_USEC": "100000"})
    stream = asyncio.create_task(chat(d.client(), stream=True))
    async with asyncio.timeout(5):
        while not a.chat_requests():
            await asyncio.sleep(0.01)
    d.signal(signal.SIGTERM)
    stopping = await d.notify.expect("STOPPING=1", timeout=5)
    ping = await d.notify.expect("WATCHDOG=1", after=stopping + 1, timeout=2)
    await d.notify.expect("WATCHDOG=1", after=ping + 1, timeout=2)
    assert not stream.done()
    d.signal(signal.SIGHUP)  # a reload while stopping: nothing to do, and no death by SIGHUP
    assert (await stream)[:2] == (200, REPLY + "[DONE]")
    assert await d.exit_code() == 0
    assert d.notify.lifecycle() == ["READY=1", "STOPPING=1"]


async def test_sighup_storm_under_load_on_both_listeners(short_dir: Path, fake_openai,
                                                         launch: Launch) -> None:  # noqa: F811
    a = await fake_openai(default="slow_stream:0.02")
    b = await fake_openai()
    port, tcp = tcp_listener(short_dir)
    d = await launch(toml(short_dir, {"a": a, "b": b}, daemon=tcp))
    unix = d.client()
    r = await unix.post("/v1/models/b/gpt-b/open")
    assert r.json()["state"] == "forced_open"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10,
                                 headers={"Authorization": "Bearer s3cret"}) as over_tcp:
        streams = [asyncio.create_task(chat(c, stream=True, model="a/gpt-a"))
                   for c in (unix, over_tcp) for _ in range(4)]
        async with asyncio.timeout(5):
            while len(a.chat_requests()) < 8:
                await asyncio.sleep(0.01)
        for _ in range(30):
            d.signal(signal.SIGHUP)
            await asyncio.sleep(0.005)
        results = await asyncio.gather(*streams)
        assert [r[:2] for r in results] == [(200, REPLY + "[DONE]")] * 8
        # both listeners still serve, with the token still asked for on TCP
        assert (await chat(over_tcp, model="a/gpt-a"))[:2] == (200, REPLY)
        assert (await over_tcp.get("/v1/status", headers={"Authorization": ""})
                ).status_code == 401
    # every RELOADING=1 got its READY=1, and the breaker forced open survived them all
    lifecycle = d.notify.lifecycle()
    async with asyncio.timeout(5):
        while lifecycle[-1] != "READY=1":
            await asyncio.sleep(0.01)
            lifecycle = d.notify.lifecycle()
    assert lifecycle[0] == "READY=1" and lifecycle.count("RELOADING=1") >= 1
    assert lifecycle[1:] == ["RELOADING=1", "READY=1"] * lifecycle.count("RELOADING=1")
    assert (await unix.get("/v1/status")).json()["models"]["b/gpt-b"]["state"] == "forced_open"
    d.signal(signal.SIGTERM)
    assert await d.exit_code() == 0


async def test_stopping_asks_systemd_for_the_time_the_drain_may_take(
        short_dir: Path, fake_openai, launch: Launch) -> None:  # noqa: F811
    # shutdown_timeout = 50 against the unit's TimeoutStopSec=45: SIGKILL came mid-drain (no
    # error for the streams cut, no MQTT offline, no state saved); EXTEND_TIMEOUT_USEC covers it
    a = await fake_openai()
    d = await launch(toml(short_dir, {"a": a}, daemon="shutdown_timeout = 50\n"))
    d.signal(signal.SIGTERM)
    stopping = d.notify.messages[await d.notify.expect("STOPPING=1", timeout=5)]
    assert stopping.split("\n") == ["STOPPING=1", "EXTEND_TIMEOUT_USEC=60000000"]
    assert await d.exit_code() == 0
