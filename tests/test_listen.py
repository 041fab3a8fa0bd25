"""Listening sockets: binding the configured path, socket activation, peer credentials."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator

import pytest

from failoverd.errors import FailoverdError
from failoverd.listen import ListenError, activated_sockets, bind_unix, peer_uid


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # pytest's tmp_path can exceed the 107-byte limit of a Unix socket path.
    path = tempfile.mkdtemp(prefix="fo-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _roundtrip(server: socket.socket, path: str) -> bytes:
    """Connect to ``path``, accept on ``server``, send a byte through: proves it is live."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        server.settimeout(5)
        client.connect(path)
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"k")
            return client.recv(1)


# --- bind_unix --------------------------------------------------------------------------------


def test_bind_creates_parent_applies_mode_and_listens(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "run", "failoverd", "failoverd.sock")
    old_umask = os.umask(0o077)  # as under the unit's UMask=0077
    try:
        sock = bind_unix(path, 0o660)
    finally:
        os.umask(old_umask)
    with sock:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o755
        assert not sock.get_inheritable()
        assert _roundtrip(sock, path) == b"k"


@pytest.mark.parametrize("mode", [0o600, 0o666])
def test_bind_applies_the_configured_mode(sock_dir: str, mode: int) -> None:
    path = os.path.join(sock_dir, "s.sock")
    with bind_unix(path, mode):
        assert stat.S_IMODE(os.stat(path).st_mode) == mode


def test_stale_socket_file_is_replaced(sock_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    path = os.path.join(sock_dir, "s.sock")
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(path)
    crashed.listen()
    crashed.close()  # the file stays behind, as after a crash
    with caplog.at_level(logging.WARNING, logger="failoverd.listen"):
        sock = bind_unix(path, 0o660)
    with sock:
        assert f"removing stale socket file {path}" in caplog.text
        assert _roundtrip(sock, path) == b"k"


def test_live_socket_is_not_stolen(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s.sock")
    with bind_unix(path, 0o660) as running:
        inode = os.stat(path).st_ino
        with pytest.raises(ListenError, match="another failoverd seems to be running"):
            bind_unix(path, 0o660)
        assert os.stat(path).st_ino == inode
        # The liveness probe was a real connection: the running daemon sees it close at once.
        running.settimeout(5)
        probe, _ = running.accept()
        with probe:
            assert probe.recv(1) == b""
        assert _roundtrip(running, path) == b"k"


def test_live_socket_with_a_full_queue_is_not_stolen(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s.sock")
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(path)
    busy.listen(0)
    clients = []
    try:
        # Fill the accept queue of a server that never accepts.
        for _ in range(4):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.setblocking(False)
            clients.append(c)
            try:
                c.connect(path)
            except BlockingIOError:
                break
        with pytest.raises(ListenError, match="in use"):
            bind_unix(path, 0o660)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        for c in clients:
            c.close()
        busy.close()


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_path_that_is_not_a_socket_is_refused(sock_dir: str, kind: str) -> None:
    path = os.path.join(sock_dir, "s.sock")
    if kind == "file":
        with open(path, "w") as f:
            f.write("precious")
    else:
        os.mkdir(path)
    with pytest.raises(ListenError, match="not a socket"):
        bind_unix(path, 0o660)
    if kind == "file":
        with open(path) as f:
            assert f.read() == "precious"
    else:
        assert os.path.isdir(path)


def test_too_long_path_is_a_clear_error(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "x" * 120 + ".sock")
    with pytest.raises(ListenError, match="longer than"):
        bind_unix(path, 0o660)


def test_listen_error_is_a_failoverd_error() -> None:
    assert issubclass(ListenError, FailoverdError)


# --- peer_uid ---------------------------------------------------------------------------------


def test_peer_uid_of_a_socketpair() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_uid(a) == os.getuid()
        assert peer_uid(b) == os.getuid()


async def test_peer_uid_from_an_asyncio_transport(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "s.sock")
    seen: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(peer_uid(writer.transport))
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_unix_server(handle, sock=bind_unix(path, 0o600))
    async with server:
        _, writer = await asyncio.open_unix_connection(path)
        assert await asyncio.wait_for(seen, 5) == os.getuid()
        writer.close()
        await writer.wait_closed()


async def test_peer_uid_is_none_over_tcp() -> None:
    seen: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(peer_uid(writer.transport))
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(seen, 5) is None
        writer.close()
        await writer.wait_closed()
    assert peer_uid(None) is None


# --- activated_sockets ------------------------------------------------------------------------


def test_not_activated_without_listen_pid() -> None:
    env = {"PATH": "/usr/bin"}
    assert activated_sockets(env) == []
    assert env == {"PATH": "/usr/bin"}


def test_listen_pid_of_another_process_is_ignored_and_unset() -> None:
    # Inherited from a socket-activated parent: the fds are not ours; touch none of them.
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    assert activated_sockets(env) == []
    assert env == {}


@pytest.mark.parametrize(
    ("pid", "fds", "message"),
    [("abc", "1", "LISTEN_PID"), ("ours", "two", "LISTEN_FDS"), ("ours", "-1", "negative")],
)
def test_malformed_activation_variables(pid: str, fds: str, message: str) -> None:
    env = {"LISTEN_PID": str(os.getpid()) if pid == "ours" else pid, "LISTEN_FDS": fds}
    with pytest.raises(ListenError, match=message):
        activated_sockets(env)
    assert env == {}


# Runs in a child so that fds 3.. of the test runner are never touched: the child puts a
# listening socket on fd 3 (and 4), sets LISTEN_PID to its own pid, and reports as JSON.
_CHILD = textwrap.dedent(
    """
    import json, os, socket, sys
    from failoverd.listen import activated_sockets, ListenError

    kind, path = sys.argv[1], sys.argv[2]
    # Hold fds 3 and 4 so that the sockets below get other numbers and can be dup2'ed there.
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(2)]
    assert held == [3, 4], held
    if kind == "pipe":
        r, w = os.pipe()
        os.dup2(r, 3)
        count = 1
    else:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(path)
        srv.listen()
        os.dup2(srv.fileno(), 3)  # dup2 makes fd 3 inheritable, as systemd leaves it
        srv.close()
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        os.dup2(tcp.fileno(), 4)
        tcp.close()
        count = 2
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(count),
                      LISTEN_FDNAMES="api:tcp")
    try:
        socks = activated_sockets()
    except ListenError as exc:
        print(json.dumps({"error": str(exc)}))
        sys.exit(0)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(path)
    conn, _ = socks[0].accept()
    print(json.dumps({
        "fds": [s.fileno() for s in socks],
        "families": [s.family.name for s in socks],
        "inheritable": [s.get_inheritable() for s in socks],
        "env_left": sorted(k for k in os.environ if k.startswith("LISTEN_")),
        "posix_env_left": [os.getenv(k) for k in ("LISTEN_PID", "LISTEN_FDS")],
        "accepted": conn is not None,
    }))
    """
)


def _run_child(kind: str, path: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, path],
        capture_output=True, text=True, timeout=20, check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_activated_sockets_are_taken_from_fd_3(sock_dir: str) -> None:
    report = _run_child("sockets", os.path.join(sock_dir, "a.sock"))
    assert report == {
        "fds": [3, 4],
        "families": ["AF_UNIX", "AF_INET"],
        "inheritable": [False, False],
        "env_left": [],
        "posix_env_left": [None, None],
        "accepted": True,
    }


def test_activated_fd_that_is_not_a_socket_is_an_error(sock_dir: str) -> None:
    report = _run_child("pipe", os.path.join(sock_dir, "a.sock"))
    assert "file descriptor 3" in str(report["error"])


_ACTIVATED_SERVER = textwrap.dedent(
    """
    import json, os
    from failoverd.listen import activated_sockets, peer_uid

    socks = activated_sockets()
    conn, _ = socks[0].accept()
    conn.sendall(json.dumps({
        "count": len(socks), "fd": socks[0].fileno(), "peer_uid": peer_uid(conn),
        "listen_pid_left": os.getenv("LISTEN_PID"),
    }).encode())
    conn.close()
    """
)


@pytest.mark.systemd
def test_systemd_socket_activate_passes_fd_3(sock_dir: str) -> None:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is not installed")
    path = os.path.join(sock_dir, "act.sock")
    proc = subprocess.Popen(
        [tool, "-l", path, sys.executable, "-c", _ACTIVATED_SERVER],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        # It prints "Listening on PATH as 3." once the socket exists, then waits for a client.
        line = proc.stderr.readline()
        assert "Listening on" in line, line
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(15)
            client.connect(path)
            data = b""
            while chunk := client.recv(4096):
                data += chunk
        assert json.loads(data) == {
            "count": 1, "fd": 3, "peer_uid": os.getuid(), "listen_pid_left": None,
        }
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
