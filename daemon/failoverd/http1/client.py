"""A lean HTTP/1.1 client for upstream calls: keep-alive pool, TLS, connect timeout.

failoverd's upstream traffic is simple — a POST with a JSON body, a JSON or SSE/NDJSON answer
— and it is the hot path: a general-purpose client (aiohttp's) cost about half of the proxy's
CPU per request. This one writes each request in one `write`, parses answers with
`parser.ResponseParser`, and keeps idle connections per (scheme, host, port), newest first.

Deliberately not supported: proxies, redirects, cookies, HTTP/2, Expect: 100-continue.
Total and per-read deadlines belong to the caller (`asyncio.timeout`); a request cancelled
before its answer is complete closes its connection.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Mapping
from types import TracebackType
from urllib.parse import quote, urlsplit

from failoverd.http1.connection import Connection, Response
from failoverd.http1.errors import ConnectError, ConnectTimeout, ServerDisconnected

Key = tuple[str, str, int]
_SWEEP_EVERY = 10.0
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


class Target:
    """A URL split once: its pool key, Host header and request target."""

    __slots__ = ("key", "host", "port", "tls", "host_header", "path")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        default = 443 if self.tls else 80
        self.port = parts.port or default
        self.key: Key = (parts.scheme, self.host, self.port)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default else f"{host}:{self.port}"
        # percent-encode what may not stand in a request line (a model id with a space in a
        # Gemini URL); existing %-escapes are kept
        path = quote(parts.path or "/", safe=_PATH_SAFE)
        self.path = path + (f"?{quote(parts.query, safe=_QUERY_SAFE)}" if parts.query else "")


@functools.lru_cache(maxsize=1024)
def target(url: str) -> Target:
    """`Target(url)`, cached: adapters call a handful of URLs over and over."""
    return Target(url)


def encode_request(method: str, tgt: Target, headers: Mapping[str, str], data: bytes | None,
                   user_agent: str) -> bytes:
    """The request's bytes: head, then body. Raises ValueError on a header with CR or LF."""
    parts = [f"{method} {tgt.path} HTTP/1.1\r\nHost: {tgt.host_header}\r\n"]
    seen_agent = seen_encoding = False
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} contains a line break or a colon")
        lower = name.lower()
        if lower in ("host", "content-length", "transfer-encoding", "connection"):
            continue  # framing is ours to set
        seen_agent = seen_agent or lower == "user-agent"
        seen_encoding = seen_encoding or lower == "accept-encoding"
        parts.append(f"{name}: {value}\r\n")
    if not seen_agent:
        parts.append(f"User-Agent: {user_agent}\r\n")
    if not seen_encoding:
        parts.append("Accept-Encoding: gzip, deflate\r\n")
    if data is not None:
        parts.append(f"Content-Length: {len(data)}\r\n\r\n")
        return "".join(parts).encode() + data
    parts.append("\r\n")
    return "".join(parts).encode()


class HttpClient:
    """Pooled HTTP/1.1 connections to upstreams. Use as an async context manager (or call
    `aclose`) so that every connection is closed on shutdown."""

    def __init__(self, *, user_agent: str = "failoverd", keepalive_timeout: float = 60.0,
                 max_idle_per_host: int = 64, ssl_context: ssl.SSLContext | None = None) -> None:
        self.user_agent = user_agent
        self.keepalive_timeout = keepalive_timeout
        self.max_idle_per_host = max_idle_per_host
        self._ssl = ssl_context
        self._idle: dict[Key, list[Connection]] = {}
        self._all: set[Connection] = set()
        self._closed = False
        self._swept_at = 0.0
        self.connects = 0  # connections opened (a pool that works keeps this low)

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes every connection, idle or busy."""
        self._closed = True
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
        # let the transports run connection_lost before the loop goes away
        await asyncio.sleep(0)

    @property
    def idle_connections(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def request(self, method: str, url: str, *, headers: Mapping[str, str],
                      data: bytes | None = None, connect_timeout: float) -> Response:
        """Sends a request; returns its Response once the head arrived.

        The caller must end the response (`read()` to the end, `release()` or `close()`).
        A reused keep-alive connection that the server had closed is retried once on a
        fresh one, as long as not a byte of an answer came back on it.
        """
        if self._closed:
            raise ConnectError("the HTTP client is closed")
        tgt = target(url)
        payload = encode_request(method, tgt, headers, data, self.user_agent)
        expect_body = method != "HEAD"
        conn = self._take(tgt.key)
        if conn is not None:
            try:
                return await conn.send(payload, expect_body=expect_body)
            except ServerDisconnected as exc:
                if exc.got_bytes:
                    raise
        if self._closed:  # closed while the reused connection failed
            raise ConnectError("the HTTP client is closed")
        conn = await self._connect(tgt, connect_timeout)
        return await conn.send(payload, expect_body=expect_body)

    # ------------------------------------------------------------------ pool

    def _take(self, key: Key) -> Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self.keepalive_timeout:
                conn.close()
                continue
            return conn
        return None

    def _release(self, conn: Connection) -> None:
        if self._closed or conn.closed:
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle_per_host:
            conn.close()
            return
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        idle.append(conn)
        if conn.idle_since - self._swept_at > _SWEEP_EVERY:
            self._sweep(conn.idle_since)

    def _sweep(self, now: float) -> None:
        """Closes connections idle for longer than the keep-alive timeout (the oldest sit
        at the front of each list)."""
        self._swept_at = now
        for idle in self._idle.values():
            while idle and now - idle[0].idle_since > self.keepalive_timeout:
                idle.pop(0).close()

    def _lost(self, conn: Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    async def _connect(self, tgt: Target, timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        context = self._context() if tgt.tls else None
        where = f"{tgt.host}:{tgt.port}"
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(tgt.key, self._release, self._lost), tgt.host, tgt.port,
                    ssl=context, server_hostname=tgt.host if context else None)
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {where} took longer than {timeout:g}s") \
                from None
        except OSError as exc:  # refused, unreachable, DNS (gaierror), TLS (SSLError)
            raise ConnectError(f"cannot connect to {where}: {exc}") from exc
        self.connects += 1
        if self._closed:
            conn.close()
            raise ConnectError("the HTTP client is closed")
        self._all.add(conn)
        return conn

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            # built on first use: loading the system CA store takes milliseconds
            self._ssl = ssl.create_default_context()
        return self._ssl
