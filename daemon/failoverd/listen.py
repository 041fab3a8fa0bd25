"""The listening socket: inherited from systemd (socket activation) or bound by us.

- :func:`activated_sockets` takes the sockets systemd passed (``LISTEN_FDS``/``LISTEN_PID``,
  file descriptors from 3), as ``sd_listen_fds(1)`` does.
- :func:`bind_unix` binds the configured path itself: it removes a stale socket file left by a
  crashed daemon but refuses to take over a path where another process is still accepting.
- :func:`peer_uid` reads a connected client's uid (``SO_PEERCRED``) for ``daemon.allowed_uids``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import MutableMapping

from failoverd.errors import ListenError

__all__ = ["ListenError", "activated_sockets", "bind_unix", "family", "peer_uid"]

logger = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3
"""The first file descriptor systemd passes (sd-daemon.h)."""

DEFAULT_BACKLOG = 128

# How long the liveness probe of an existing socket file may wait: a live daemon with a full
# accept queue makes connect() block rather than fail.
_PROBE_TIMEOUT = 1.0

# struct ucred from <sys/socket.h>: pid_t pid, uid_t uid, gid_t gid (all 32-bit on Linux).
_UCRED = struct.Struct("iII")

# sun_path is 108 bytes including the terminating NUL.
_SUN_PATH_MAX = 107


def activated_sockets(env: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The sockets systemd passed to this process, in order; empty when not socket-activated.

    Honoured only when ``LISTEN_PID`` is this process's pid. ``LISTEN_PID``, ``LISTEN_FDS``
    and ``LISTEN_FDNAMES`` are removed from ``env`` in every case (``sd_listen_fds(1)``), so
    hook processes do not believe the sockets are theirs. The descriptors are made
    close-on-exec for the same reason.
    """
    env = os.environ if env is None else env
    pid_text = env.get("LISTEN_PID", "")
    fds_text = env.get("LISTEN_FDS", "")
    names_text = env.get("LISTEN_FDNAMES", "")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)

    if not pid_text:
        return []
    try:
        pid = int(pid_text)
    except ValueError:
        raise ListenError(f"LISTEN_PID={pid_text!r} is not a process id") from None
    if pid != os.getpid():
        # Inherited from a parent that was socket-activated: not ours.
        return []
    try:
        count = int(fds_text)
    except ValueError:
        raise ListenError(f"LISTEN_FDS={fds_text!r} is not a number") from None
    if count < 0:
        raise ListenError(f"LISTEN_FDS={count} is negative")

    sockets: list[socket.socket] = []
    try:
        for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
            os.set_inheritable(fd, False)
            sockets.append(socket.socket(fileno=fd))
            _check_listening(sockets[-1])
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(
            f"systemd passed file descriptor {fd}, but it is unusable: {exc}") from exc
    except ListenError:
        for sock in sockets:
            sock.close()
        raise
    names = names_text.split(":") if names_text else []
    for i, sock in enumerate(sockets):
        logger.info(
            "using socket passed by systemd: fd %d %s %s",
            sock.fileno(),
            names[i] if i < len(names) else "",
            _describe(sock),
        )
    return sockets


def bind_unix(path: str, mode: int, *, backlog: int = DEFAULT_BACKLOG) -> socket.socket:
    """A listening Unix stream socket at ``path`` with permissions ``mode`` (e.g. ``0o660``).

    Creates a missing parent directory (mode 0755). An existing socket file nobody accepts
    on is stale and removed; one where a process still accepts is refused, as is any other
    kind of file. The mode is applied before ``listen()``, so no client can connect while
    the file still has the umask's permissions.
    """
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise ListenError(f"socket path {path!r} is longer than the {_SUN_PATH_MAX} bytes "
                          "a Unix socket address can hold")
    _ensure_parent(path)
    _remove_stale(path)

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"cannot bind {path}: created by another process just now; "
                              "is another failoverd starting?") from exc
        raise ListenError(f"cannot bind {path}: {exc.strerror or exc}") from exc
    try:
        os.chmod(path, mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        _unlink_quietly(path)
        raise ListenError(f"cannot listen on {path}: {exc.strerror or exc}") from exc
    logger.info("listening on %s (mode %04o)", path, mode)
    return sock


def _socket_of(conn: object) -> object:
    """The socket of a connection given as the socket or its asyncio transport (aiohttp's
    ``request.transport``); None when it is gone. Duck-typed: uvloop's transports are not
    asyncio.BaseTransport subclasses (with an isinstance test every uid read None on
    uvloop, and allowed_uids refused everyone), and asyncio hands out a TransportSocket
    wrapper, not a socket.socket."""
    get_extra_info = getattr(conn, "get_extra_info", None)
    return get_extra_info("socket") if get_extra_info is not None else conn


def family(conn: socket.socket | asyncio.BaseTransport | None) -> int | None:
    """The address family of a connection (AF_UNIX, AF_INET, AF_INET6), None when gone."""
    found = getattr(_socket_of(conn), "family", None)
    return None if found is None else int(found)


def peer_uid(conn: socket.socket | asyncio.BaseTransport | None) -> int | None:
    """The uid of the process at the other end of a Unix stream connection.

    Takes the socket or the asyncio transport (aiohttp's ``request.transport``). None when
    the connection is not a Unix socket (the TCP listener) or is already gone.
    """
    sock = _socket_of(conn)
    getsockopt = getattr(sock, "getsockopt", None)
    if getattr(sock, "family", None) != socket.AF_UNIX or getsockopt is None:
        return None
    try:
        raw = getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    _pid, uid, _gid = _UCRED.unpack(raw)
    return int(uid)


def _ensure_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(parent):
        return
    try:
        os.makedirs(parent, mode=0o755, exist_ok=True)
        # makedirs' mode is filtered by the umask (0077 under the unit), but clients must be able
        # to traverse to the socket: the socket's own mode is what restricts access.
        os.chmod(parent, 0o755)  # noqa: S103
    except OSError as exc:
        raise ListenError(f"cannot create the socket directory {parent}: "
                          f"{exc.strerror or exc}") from exc


def _remove_stale(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenError(f"cannot inspect {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"{path} exists and is not a socket; refusing to replace it")

    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(_PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # nobody accepts there: a leftover from a daemon that did not clean up
    except FileNotFoundError:
        return  # removed meanwhile
    except (TimeoutError, BlockingIOError) as exc:
        # Unix sockets answer EAGAIN (or block until the timeout) when the accept queue is full.
        raise ListenError(f"{path} is in use (a process is listening there but not accepting); "
                          "another failoverd seems to be running") from exc
    except OSError as exc:
        # EACCES and the like: we cannot tell whether it is live, so do not touch it.
        raise ListenError(f"cannot check whether {path} is in use: {exc.strerror or exc}") from exc
    else:
        raise ListenError(f"{path} is in use: another failoverd seems to be running "
                          "(or another program listens there); stop it or choose another "
                          "daemon.socket")
    finally:
        probe.close()
    logger.warning("removing stale socket file %s", path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ListenError(f"cannot remove stale socket {path}: {exc.strerror or exc}") from exc


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _check_listening(sock: socket.socket) -> None:
    """Like ``sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1)``: a listening stream socket.

    A datagram socket (``ListenDatagram=``) ended the start in a traceback; a connection
    (``Accept=yes``) was taken for a listener: READY=1, and nothing was ever accepted.
    """
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if (sock.family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)
            and sock.type == socket.SOCK_STREAM and listening):
        return
    raise ListenError(f"systemd passed file descriptor {sock.fileno()} ({_describe(sock)}, "
                      f"{socket.SocketKind(sock.type).name}, "
                      f"{'listening' if listening else 'not listening'}): failoverd needs a "
                      "listening Unix or TCP stream socket (ListenStream= with Accept=no)")


def _describe(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        name = "?"
    return f"{socket.AddressFamily(sock.family).name} {name!r}"
