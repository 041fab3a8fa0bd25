"""The daemon's lifecycle with real processes.

`failoverd --config FILE` runs as a subprocess and gets real signals; a datagram socket plays
systemd's NOTIFY_SOCKET; `systemd-socket-activate` passes a listening socket; the fake OpenAI
upstream runs in the test's event loop (so nothing here may block the loop).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import stat
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO, until

_BIN = Path(sys.executable).parent / "failoverd"
FAILOVERD = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "failoverd.cli.daemon"]
REPLY = "Hello from the fake upstream"
SHUTDOWN_MESSAGE = "failoverd is shutting down: the request was cut before it finished; retry it"


# --------------------------------------------------------------------------- helpers

class NotifySocket:
    """A fake systemd NOTIFY_SOCKET: records every datagram the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[str] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self.sock, 65536)
            self.messages.append(data.decode())
            self._arrived.set()

    async def expect(self, prefix: str, *, after: int = 0, timeout: float = 10.0) -> int:
        """Index of the first message at or after `after` that starts with `prefix`."""
        async with asyncio.timeout(timeout):
            while True:
                for i in range(after, len(self.messages)):
                    if self.messages[i].startswith(prefix):
                        return i
                self._arrived.clear()
                await self._arrived.wait()

    def lifecycle(self) -> list[str]:
        """The state messages' first lines, without watchdog pings and status updates."""
        return [m.split("\n")[0] for m in self.messages
                if not m.startswith(("WATCHDOG=", "STATUS="))]

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        self.sock.close()


@dataclass
class Daemon:
    """A failoverd process started by the test."""

    proc: asyncio.subprocess.Process
    dir: Path
    socket: str
    config: Path
    notify: NotifySocket
    log: Path
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, timeout: float = 10.0) -> httpx.AsyncClient:
        c = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=self.socket),
                              base_url="http://failoverd", timeout=timeout)
        self.clients.append(c)
        return c

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def reload(self, text: str | None = None) -> str:
        """Rewrites the config (if given), sends SIGHUP and waits for the READY that ends it."""
        if text is not None:
            self.config.write_text(text)
        mark = len(self.notify.messages)
        self.signal(signal.SIGHUP)
        i = await self.notify.expect("RELOADING=1", after=mark, timeout=5)
        j = await self.notify.expect("READY=1", after=i, timeout=5)
        return self.notify.messages[j]

    async def exit_code(self, timeout: float = 10.0) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


Launch = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def launch(short_dir: Path) -> AsyncIterator[Launch]:
    """Starts `failoverd --config FILE` and waits for READY=1 on a fake NOTIFY_SOCKET."""
    started: list[Daemon] = []
    notifies: list[NotifySocket] = []

    async def start(text: str, *, env: dict[str, str] | None = None, name: str = "d",
                    argv: list[str] | None = None, wait_ready: bool = True,
                    config: Path | None = None) -> Daemon:
        path = config or short_dir / f"{name}.toml"
        if config is None:
            path.write_text(text)
        notify = NotifySocket(short_dir / f"{name}-{len(notifies)}.ntf")
        notifies.append(notify)
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_"))}
        full_env.update(NOTIFY_SOCKET=notify.path, **(env or {}))
        log = short_dir / f"{name}-{len(notifies)}.log"
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *(argv or []), *FAILOVERD, "--config", str(path), env=full_env,
                stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err)
        d = Daemon(proc, short_dir, str(short_dir / f"{name}.sock"), path, notify, log)
        started.append(d)
        if wait_ready:
            ready = asyncio.create_task(notify.expect("READY=1"))
            exited = asyncio.create_task(proc.wait())
            await asyncio.wait((ready, exited), timeout=10, return_when=asyncio.FIRST_COMPLETED)
            for task in (ready, exited):
                task.cancel()
            await asyncio.gather(ready, exited, return_exceptions=True)
            assert proc.returncode is None, f"exited {proc.returncode}:\n{d.log_text()}"
            assert ready.done() and not ready.cancelled(), "no READY=1:\n" + d.log_text()
        return d

    yield start
    for d in started:
        for c in d.clients:
            await c.aclose()
        if d.proc.returncode is None:
            d.proc.kill()
            await d.proc.wait()
    for n in notifies:
        await n.close()
    for d in started:
        # whatever the test did, the daemon handled it without a crash or unhandled error
        assert "Traceback" not in d.log_text(), d.log_text()
        assert "ERROR" not in d.log_text().replace("ERROR failoverd.supervisor: config rejected",
                                                   ""), d.log_text()


def toml(d: Path, fakes: dict[str, FakeOpenAI], *, daemon: str = "", extra: str = "",
         name: str = "d") -> str:
    """A config with one provider and one model `<key>/gpt-<key>` per fake, first is primary."""
    parts = [f'[daemon]\nsocket = "{d}/{name}.sock"\nstate_dir = "{d}/{name}-state"\n{daemon}']
    for key, fake in fakes.items():
        parts.append(f'[providers.{key}]\nkind = "openai"\nbase_url = "{fake.url}"\n'
                     f'[models."{key}/gpt-{key}"]\nprovider = "{key}"\n')
    first = next(iter(fakes))
    parts.append(f'[routing]\nprimary = "{first}/gpt-{first}"\nfallbacks_from_models = true\n'
                 f'deadline = 20\n{extra}')
    if "[probes]" not in extra:
        parts.append('[probes]\nkind = "none"\nrecovery_kind = "none"\n')
    return "\n".join(parts)


async def chat(client: httpx.AsyncClient, *, stream: bool = False, model: str = "default",
               headers: dict[str, str] | None = None) -> tuple[int, str, httpx.Headers]:
    """One chat request: (status, answer text or error body, headers)."""
    body = {"model": model, "messages": HELLO, "stream": stream}
    if not stream:
        r = await client.post("/v1/chat/completions", json=body, headers=headers)
        if r.status_code != 200:
            return r.status_code, r.text, r.headers
        return 200, r.json()["choices"][0]["message"]["content"], r.headers
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        raw = (await r.aread()).decode()
    return r.status_code, sse_text(raw), r.headers


async def anthropic_stream(client: httpx.AsyncClient,
                           model: str) -> tuple[int, list[tuple[str, Any]]]:
    """A streaming Anthropic Messages request: (status, [(event name, data)])."""
    body = {"model": model, "max_tokens": 64, "messages": HELLO, "stream": True}
    async with client.stream("POST", "/v1/messages", json=body) as r:
        raw = (await r.aread()).decode()
    events = []
    for block in raw.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((fields.get("event", ""), orjson.loads(fields.get("data", "null"))))
    return r.status_code, events


def sse_text(raw: str) -> str:
    """Concatenated deltas of an SSE answer, plus "[DONE]" or the error message at the end."""
    out = []
    for line in raw.splitlines():
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            out.append("[DONE]")
            continue
        chunk = orjson.loads(data)
        if "error" in chunk:
            out.append("[ERROR " + chunk["error"]["message"] + "]")
            continue
        for choice in chunk["choices"]:
            out.append(choice["delta"].get("content") or "")
    return "".join(out)


def connect_refused(path: str) -> bool:
    """True when nothing accepts on the Unix socket `path` any more."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    except BlockingIOError:
        return False  # queued: a listener exists
    finally:
        s.close()
    return False


# --------------------------------------------------------------------------- sd_notify

async def test_notify_ready_status_watchdog_reload_stopping(short_dir, fake_openai,
                                                            launch) -> None:
    a = await fake_openai(default="server_error")
    b = await fake_openai()
    d = await launch(toml(short_dir, {"a": a, "b": b}), env={"WATCHDOG_USEC": "200000"})
    # READY=1 only once the socket accepts: connecting right after it must succeed
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.connect(d.socket)
    probe.close()
    ready = d.notify.messages[await d.notify.expect("READY=1")]
    assert "STATUS=2/2 models healthy, 0 failovers in the last minute" in ready
    assert len([ln for ln in ready.split("\n") if ln.startswith("STATUS=")]) == 1

    status, text, headers = await chat(d.client())
    assert (status, text) == (200, REPLY)
    assert headers["x-failoverd-failover"] == "a/gpt-a>b/gpt-b:server_error"

    # watchdog at half of WATCHDOG_USEC: 0.1 s
    first = await d.notify.expect("WATCHDOG=1", timeout=2)
    for _ in range(3):
        first = await d.notify.expect("WATCHDOG=1", after=first + 1, timeout=2)

    before = time.monotonic()
    mark = len(d.notify.messages)
    reloaded = await d.reload()
    reloading = d.notify.messages[await d.notify.expect("RELOADING=1", after=mark)]
    usec = int(reloading.split("MONOTONIC_USEC=")[1])
    assert abs(usec / 1e6 - before) < 5  # both are CLOCK_MONOTONIC
    assert "STATUS=2/2 models healthy, 1 failovers in the last minute" in reloaded

    d.signal(signal.SIGTERM)
    await d.notify.expect("STOPPING=1", timeout=5)
    assert await d.exit_code() == 0
    assert d.notify.lifecycle() == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]


async def test_the_daemon_settles_its_heap_once_up(short_dir, fake_openai, launch) -> None:
    """The daemon's process (never an in-process test supervisor) freezes its start-up
    objects once ready and keeps serving: heap.py."""
    a = await fake_openai()
    d = await launch(toml(short_dir, {"a": a}), env={"FAILOVERD_LOG_LEVEL": "DEBUG"})
    await until(lambda: "objects frozen" in d.log_text())
    found = re.search(r"DEBUG failoverd\.heap: (\d+) start-up objects frozen; collector "
                      r"thresholds 10000/10/10$", d.log_text(), re.MULTILINE)
    assert found is not None, d.log_text()
    assert int(found[1]) > 10_000  # modules, classes, functions
    for _ in range(3):
        assert (await chat(d.client()))[:2] == (200, REPLY)
    d.signal(signal.SIGTERM)
    assert await d.exit_code() == 0


async def test_watchdog_of_another_pid_is_not_fed(short_dir, fake_openai, launch) -> None:
    a = await fake_openai()
    d = await launch(toml(short_dir, {"a": a}),
                     env={"WATCHDOG_USEC": "100000", "WATCHDOG_PID": "1"})
    status, _, _ = await chat(d.client())
    assert status == 200
    await asyncio.sleep(0.4)  # eight would-be ping periods
    assert "WATCHDOG=1" not in d.notify.messages
    d.signal(signal.SIGTERM)
    assert await d.exit_code() == 0
    assert "watchdog enabled" not in d.log_text()


# --------------------------------------------------------------------------- socket activation

@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed")
async def test_socket_activation_serves_on_the_passed_socket(short_dir, fake_openai,
                                                             launch) -> None:
    a = await fake_openai()
    passed = str(short_dir / "act.sock")
    notify_path = short_dir / "d-0.ntf"  # what launch() names its first notify socket
    d = await launch(toml(short_dir, {"a": a}), wait_ready=False, argv=[
        "systemd-socket-activate", "-l", passed, "-E", f"NOTIFY_SOCKET={notify_path}"])
    async with asyncio.timeout(5):
        while not os.path.exists(passed):  # systemd-socket-activate is listening
            await asyncio.sleep(0.02)
    d.socket = passed
    # the first connection makes systemd-socket-activate exec the daemon; it queues meanwhile
    status, text, _ = await chat(d.client())
    assert (status, text) == (200, REPLY)
    await d.notify.expect("READY=1", timeout=5)
    assert not os.path.exists(short_dir / "d.sock")  # daemon.socket is ignored
    assert "socket(s) passed by systemd" in d.log_text()
    d.signal(signal.SIGTERM)  # systemd-socket-activate exec'ed: this pid is the daemon
    assert await d.exit_code() == 0


# --------------------------------------------------------------------------- reload

PROBES = '[probes]\ninterval = 0.3\njitter = 0\nkind = "models"\nrecovery_kind = "none"\n'


async def test_reload_under_load_loses_no_request(short_dir, fake_openai, launch) -> None:
    a = await fake_openai(default="slow:0.01")
    b = await fake_openai()
    c = await fake_openai()
    two = toml(short_dir, {"a": a, "b": b}, extra=PROBES)
    three = toml(short_dir, {"a": a, "b": b, "c": c}, extra=PROBES)
    d = await launch(two)
    client = d.client()
    results: list[tuple[int, str]] = []
    reloads = 0

    async def reloader() -> None:
        nonlocal reloads
        for i in range(6):
            ready = await d.reload(three if i % 2 == 0 else two)
            assert "READY=1" in ready
            reloads += 1
            await asyncio.sleep(0.03)  # let requests start on this configuration

    async def worker(n: int) -> None:
        done = 0
        while done < 10 or reloads < 6:
            stream = (n + done) % 3 == 0
            model = "b/gpt-b" if (n + done) % 4 == 0 else "default"
            status, text, _ = await chat(client, stream=stream, model=model)
            results.append((status, text))
            done += 1

    await asyncio.gather(reloader(), *(worker(n) for n in range(20)))
    assert len(results) >= 200
    assert [r for r in results if r[0] != 200] == []
    expected = {REPLY, REPLY + "[DONE]"}
    assert [r for r in results if r[1] not in expected] == []
    assert reloads == 6 and "config rejected" not in d.log_text()

    # c comes back with this reload (its state was dropped with it): listed, then probed
    assert reloads % 2 == 0  # the last one removed c
    probed = len([r for r in c.requests if r.path == "/v1/models"])
    await d.reload(three)
    entry = (await client.get("/v1/status")).json()["models"]["c/gpt-c"]
    async with asyncio.timeout(5):
        while entry["last_probe"] is None:
            await asyncio.sleep(0.05)
            entry = (await client.get("/v1/status")).json()["models"]["c/gpt-c"]
    assert entry["last_probe"]["ok"] is True
    assert len([r for r in c.requests if r.path == "/v1/models"]) > probed

    # in flight on c while a reload removes c: both finish on the config they started with
    c.push("slow:0.5", "slow_stream:0.1")
    pinned = {"x-failoverd-no-fallback": "1"}
    slow = asyncio.create_task(chat(client, model="c/gpt-c", headers=pinned))
    streaming = asyncio.create_task(chat(client, stream=True, model="c/gpt-c", headers=pinned))
    async with asyncio.timeout(5):
        while len(c.chat_requests()) < 2:
            await asyncio.sleep(0.01)
    await d.reload(two)
    assert "c/gpt-c" not in (await client.get("/v1/status")).json()["models"]
    for task in (slow, streaming):
        status_code, text, headers = await task
        assert status_code == 200 and text.startswith(REPLY)
        assert headers["x-failoverd-model"] == "c/gpt-c"

    # breaker state survives a reload for an unchanged model
    r = await client.post("/v1/models/b/gpt-b/open")
    assert r.json()["state"] == "forced_open"
    await d.reload(three)
    assert (await client.get("/v1/status")).json()["models"]["b/gpt-b"]["state"] == "forced_open"

    d.signal(signal.SIGTERM)
    assert await d.exit_code() == 0


async def test_invalid_config_on_reload_keeps_serving(short_dir, fake_openai, launch) -> None:
    a = await fake_openai()
    good = toml(short_dir, {"a": a})
    d = await launch(good)
    client = d.client()
    broken = good.replace("[daemon]\n", "[daemon]\nbogus = 1\n").replace(
        'primary = "a/gpt-a"', 'primary = "nope/x"')
    await d.reload(broken)
    assert (await chat(client))[:2] == (200, REPLY)
    events = (await client.get("/v1/events", params={"recent": "1"})).text
    rejected = [orjson.loads(line[6:]) for line in events.splitlines()
                if line.startswith("data: ") and b"config:rejected" in line.encode()]
    assert len(rejected) == 1
    problems = rejected[0]["problems"]
    assert "daemon.bogus: unknown key" in problems
    assert any(p.startswith("routing.primary:") for p in problems)
    log = d.log_text()
    for problem in problems:
        assert problem in log

    r = await client.post("/v1/reload")
    assert r.status_code == 422
    assert r.json()["ok"] is False and r.json()["problems"] == problems

    await d.reload("[daemon\nthis is not toml")
    assert d.proc.returncode is None
    assert (await chat(client))[:2] == (200, REPLY)
    r = await client.post("/v1/reload")
    assert r.status_code == 422 and "not valid TOML" in r.json()["problems"][0]
    assert list((await client.get("/v1/status")).json()["models"]) == ["a/gpt-a"]

    d.config.write_text(good)
    r = await client.post("/v1/reload")
    assert r.status_code == 200 and r.json()["ok"] is True
    d.signal(signal.SIGTERM)
    assert await d.exit_code() == 0


# --------------------------------------------------------------------------- graceful stop

async def test_sigterm_drains_slow_streams(short_dir, fake_openai, launch) -> None:
    a = await fake_openai(default="slow_stream:0.15")
    d = await launch(toml(short_dir, {"a": a}, daemon="shutdown_timeout = 5\n"))
    client = d.client()
    streams = [asyncio.create_task(chat(client, stream=True)) for _ in range(4)]
    async with asyncio.timeout(5):
        while len(a.chat_requests()) < 4:
            await asyncio.sleep(0.01)
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    await d.notify.expect("STOPPING=1", timeout=5)
    async with asyncio.timeout(2):
        while not connect_refused(d.socket):
            await asyncio.sleep(0.01)
    assert not all(s.done() for s in streams)  # refused while the streams still run
    results = await asyncio.gather(*streams)
    assert results and all(r[:2] == (200, REPLY + "[DONE]") for r in results)
    assert await d.exit_code(timeout=5) == 0
    assert time.monotonic() - started < 5
    assert (short_dir / "d-state" / "state.json").exists()
    assert "all in-flight requests finished" in d.log_text()


async def test_sigterm_cuts_what_outlives_shutdown_timeout(short_dir, fake_openai,
                                                           launch) -> None:
    a = await fake_openai(default="slow_stream:1")
    b = await fake_openai(default="slow:5")
    d = await launch(toml(short_dir, {"a": a, "b": b}, daemon="shutdown_timeout = 0.3\n"))
    client = d.client()
    stream = asyncio.create_task(chat(client, stream=True, model="a/gpt-a"))
    plain = asyncio.create_task(chat(client, model="b/gpt-b",
                                     headers={"x-failoverd-no-fallback": "1"}))
    anthropic = asyncio.create_task(anthropic_stream(client, "a/gpt-a"))
    async with asyncio.timeout(5):
        while not (len(a.chat_requests()) == 2 and b.chat_requests()):
            await asyncio.sleep(0.01)
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    status, text, _ = await stream
    assert status == 200
    assert text.endswith("[ERROR " + SHUTDOWN_MESSAGE + "]")
    assert "[DONE]" not in text
    status, body, _ = await plain
    assert status == 503 and orjson.loads(body)["error"]["code"] == "shutting_down"
    status, events = await anthropic
    assert status == 200
    assert events[0][0] == "message_start" and "message_stop" not in [e for e, _ in events]
    assert events[-1][0] == "error"
    assert events[-1][1]["error"]["type"] == "overloaded_error"
    assert events[-1][1]["error"]["message"].startswith("failoverd is shutting down")
    assert await d.exit_code(timeout=5) == 0
    assert time.monotonic() - started < 3
    assert "cutting 3 request(s)" in d.log_text()
    assert (short_dir / "d-state" / "state.json").exists()


async def test_sigterm_is_not_held_up_by_a_client_that_stopped_reading(
        short_dir, fake_openai, launch) -> None:
    a = await fake_openai(reply=" ".join(["x" * 200] * 20_000))  # ~4 MB of chunks
    d = await launch(toml(short_dir, {"a": a}, daemon="shutdown_timeout = 0.3\n"))
    reader, writer = await asyncio.open_unix_connection(str(short_dir / "d.sock"))
    try:
        body = orjson.dumps({"model": "default", "messages": HELLO, "stream": True})
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        async with asyncio.timeout(5):
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        # the client reads nothing more: within the 0.3 s drain the daemon's writes fill the
        # socket buffers (4 MB against a few hundred KB) and block
        started = time.monotonic()
        d.signal(signal.SIGTERM)
        assert await d.exit_code(timeout=10) == 0
        assert time.monotonic() - started < 4  # 0.3 s drain + at most 1 s for the cut's write
        assert "cutting 1 request(s)" in d.log_text()
    finally:
        writer.close()


async def test_second_sigterm_cuts_the_drain_short(short_dir, fake_openai, launch) -> None:
    a = await fake_openai(default="slow_stream:1")
    d = await launch(toml(short_dir, {"a": a}, daemon="shutdown_timeout = 30\n"))
    stream = asyncio.create_task(chat(d.client(), stream=True))
    async with asyncio.timeout(5):
        while not a.chat_requests():
            await asyncio.sleep(0.01)
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    await d.notify.expect("STOPPING=1", timeout=5)
    assert not stream.done()  # draining: it would be allowed 30 s
    d.signal(signal.SIGTERM)
    status, text, _ = await stream
    assert status == 200 and text.endswith("[ERROR " + SHUTDOWN_MESSAGE + "]")
    assert await d.exit_code(timeout=5) == 0
    assert time.monotonic() - started < 3
    assert "SIGTERM again: cutting the drain short" in d.log_text()


# --------------------------------------------------------------------------- socket file, CLI

async def test_stale_socket_is_replaced_and_live_one_refused(short_dir, fake_openai,
                                                              launch) -> None:
    a = await fake_openai()
    text = toml(short_dir, {"a": a}, daemon='socket_mode = "0600"\n')
    killed = await launch(text)
    killed.signal(signal.SIGKILL)
    assert await killed.exit_code() == -signal.SIGKILL
    assert os.path.exists(killed.socket)  # left behind

    d = await launch(text)
    assert (await chat(d.client()))[:2] == (200, REPLY)
    assert "removing stale socket file" in d.log_text()
    assert stat.S_IMODE(os.stat(d.socket).st_mode) == 0o600  # daemon.socket_mode

    second = await launch("", config=d.config, wait_ready=False)
    assert await second.exit_code(timeout=5) == 1
    log = second.log_text()
    assert f"failoverd: {d.socket} is in use: another failoverd seems to be running" in log
    assert "READY=1" not in second.notify.messages
    assert (await chat(d.client()))[:2] == (200, REPLY)  # the live one is untouched
    d.signal(signal.SIGTERM)
    assert await d.exit_code() == 0
    assert not os.path.exists(d.socket)  # a clean stop removes its socket file


async def run_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *FAILOVERD, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_check_config_exit_codes_and_problems(short_dir, fake_openai) -> None:
    a = await fake_openai()
    good = toml(short_dir, {"a": a})
    path = short_dir / "c.toml"
    path.write_text(good)
    rc, out = await run_cli("--config", str(path), "--check-config")
    assert rc == 0 and f"{path}: ok" in out
    path.write_text(good.replace("[daemon]\n", "[daemon]\nbogus = 1\n").replace(
        'primary = "a/gpt-a"', 'primary = "nope/x"'))
    rc, out = await run_cli("--config", str(path), "--check-config")
    assert rc == 2
    assert "  daemon.bogus: unknown key" in out
    assert "  routing.primary: " in out
    # the daemon itself refuses to start on it with the same list and exit status 2
    # (failoverd.service: RestartPreventExitStatus=2, no restart loop)
    rc, out = await run_cli("--config", str(path))
    assert rc == 2 and "  daemon.bogus: unknown key" in out
    assert not (short_dir / "d.sock").exists()
