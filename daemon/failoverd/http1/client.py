"""A lean HTTP/1.1 client for upstream calls: keep-alive pool, TLS, connect timeout.

failoverd's upstream traffic is simple — a POST with a JSON body, a JSON or SSE/NDJSON answer
— and it is the hot path: a general-purpose client (aiohttp's) cost about half of the proxy's
CPU per request. This one writes each request in one `write`, parses answers with
`parser.ResponseParser`, and keeps idle connections per (scheme, host, port), newest first.

A provider may name an HTTP proxy (`http://[user:password@]host:port`): https targets are
reached through a CONNECT tunnel (TLS end to end, the proxy sees only the host name), http
targets by sending the absolute URL to the proxy. Proxy environment variables are not read:
the configuration says which upstream goes through which proxy.

Deliberately not supported: redirects, cookies, HTTP/2, Expect: 100-continue.
Total and per-read deadlines belong to the caller (`failoverd.timeouts`); a request cancelled
before its answer is complete closes its connection.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import socket
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import NamedTuple, Protocol, cast
from urllib.parse import quote, unquote, urlsplit

import aiohappyeyeballs

from failoverd import timeouts
from failoverd.http1.connection import Connection, Response
from failoverd.http1.errors import (
    ConnectError,
    ConnectTimeout,
    HttpClientError,
    ProtocolError,
    ServerDisconnected,
)
from failoverd.http1.parser import MAX_HEAD, Head, parse_head

Key = tuple[str, str, int, str]  # scheme, host, port, proxy URL ("" for none)
_SWEEP_EVERY = 10.0
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


class Target:
    """A URL split once: its pool key, Host header and request target."""

    __slots__ = ("key", "host", "port", "tls", "host_header", "authority", "path", "absolute")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        default = 443 if self.tls else 80
        self.port = parts.port or default
        self.key: Key = (parts.scheme, self.host, self.port, "")
        # host:port, as a CONNECT request names it
        self.authority = host_port(self.host, self.port)
        self.host_header = self.authority if self.port != default else bracketed(self.host)
        # percent-encode what may not stand in a request line (a model id with a space in a
        # Gemini URL); existing %-escapes are kept
        path = quote(parts.path or "/", safe=_PATH_SAFE)
        self.path = path + (f"?{quote(parts.query, safe=_QUERY_SAFE)}" if parts.query else "")
        # the request target sent to a proxy for a plain-http URL
        self.absolute = f"http://{self.host_header}{self.path}"


def bracketed(host: str) -> str:
    """A host as it stands in a URL or Host header: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def host_port(host: str, port: int) -> str:
    return f"{bracketed(host)}:{port}"


class Proxy:
    """An HTTP proxy from its URL, `http://[user:password@]host[:port]`. Raises ValueError."""

    __slots__ = ("url", "host", "port", "authorization")

    def __init__(self, url: str) -> None:
        shown = redact(url)
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"a proxy must be an http:// URL with a host, got {shown!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"a proxy URL has no path, query or fragment (a password with "
                             f"/ ? # must be %-escaped), got {shown!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"a proxy URL needs a port from 1 to 65535, got {shown!r}") \
                from None
        self.url = url
        self.host = parts.hostname
        self.port = port or 80
        self.authorization = ""
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.authorization = "Basic " + base64.b64encode(pair.encode()).decode()

    def __str__(self) -> str:
        return f"proxy {host_port(self.host, self.port)}"


def redact(url: str) -> str:
    """A proxy URL without its credentials, fit for errors and logs. Works on position (all
    between "//" and the last "@"), so a malformed URL does not show its password either;
    a user name alone may be a token and is hidden too."""
    start = url.find("//")
    at = url.rfind("@")
    if start < 0 or at < start:
        return url
    user, colon, _ = url[start + 2:at].partition(":")
    return f"{url[:start + 2]}{user}:***{url[at:]}" if colon else f"{url[:start + 2]}***{url[at:]}"


@functools.lru_cache(maxsize=64)
def proxy(url: str) -> Proxy:
    """`Proxy(url)`, cached."""
    return Proxy(url)


@functools.lru_cache(maxsize=1024)
def target(url: str) -> Target:
    """`Target(url)`, cached: adapters call a handful of URLs over and over."""
    return Target(url)


def encode_request(method: str, tgt: Target, headers: Mapping[str, str], data: bytes | None,
                   user_agent: str, via: Proxy | None = None) -> bytes:
    """The request's bytes: head, then body. Raises ValueError on a header with CR or LF.

    `via`: the proxy a plain-http request goes through (absolute URL, proxy credentials).
    """
    head = _head(method, tgt, tuple(headers.items()), user_agent, via)
    if data is not None:
        return b"".join((head, b"Content-Length: %d\r\n\r\n" % len(data), data))
    return head + b"\r\n"


@functools.lru_cache(maxsize=256)
def _head(method: str, tgt: Target, headers: tuple[tuple[str, str], ...], user_agent: str,
          via: Proxy | None) -> bytes:
    """The request head up to its framing, cached: an adapter sends the same method, URL and
    headers over and over, and only the body's length changes."""
    if via is None or tgt.tls:
        parts = [f"{method} {tgt.path} HTTP/1.1\r\nHost: {tgt.host_header}\r\n"]
    else:
        parts = [f"{method} {tgt.absolute} HTTP/1.1\r\nHost: {tgt.host_header}\r\n"]
        if via.authorization:
            parts.append(f"Proxy-Authorization: {via.authorization}\r\n")
    seen_agent = seen_encoding = False
    for name, value in headers:
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} contains a line break or a colon")
        lower = name.lower()
        if lower in ("host", "content-length", "transfer-encoding", "connection",
                     "proxy-authorization"):
            continue  # framing is ours to set
        seen_agent = seen_agent or lower == "user-agent"
        seen_encoding = seen_encoding or lower == "accept-encoding"
        parts.append(f"{name}: {value}\r\n")
    if not seen_agent:
        parts.append(f"User-Agent: {user_agent}\r\n")
    if not seen_encoding:
        # not deflate: some servers send it raw, without the zlib wrapper RFC 9110 asks for
        parts.append("Accept-Encoding: gzip\r\n")
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
        self._opened: dict[Key, int] = {}  # connections opened, per pool

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes every connection, idle or busy, at once: aborted, since a TLS close
        handshake could outlive the event loop at shutdown."""
        self._closed = True
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()
        # let the transports run connection_lost before the loop goes away
        await asyncio.sleep(0)

    @property
    def connects(self) -> int:
        """Connections opened so far (a pool that works keeps this low)."""
        return sum(self._opened.values())

    @property
    def idle_connections(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def stats(self) -> list[PoolStats]:
        """Per upstream (and proxy): connections opened so far, open now, idle now."""
        open_now: dict[Key, int] = {}
        for conn in self._all:
            if not conn.closed:
                open_now[conn.key] = open_now.get(conn.key, 0) + 1
        out = []
        for key, opened in sorted(self._opened.items()):
            scheme, host, port, proxy_url = key
            via = proxy(proxy_url) if proxy_url else None
            out.append(PoolStats(f"{scheme}://{host_port(host, port)}",
                                 host_port(via.host, via.port) if via else "", opened,
                                 open_now.get(key, 0),
                                 sum(not c.closed for c in self._idle.get(key, ()))))
        return out

    def via(self, proxy_url: str) -> Requester:
        """This client, sending every request through the proxy at `proxy_url` ("" = none)."""
        return _Via(self, proxy_url) if proxy_url else self

    async def request(self, method: str, url: str, *, headers: Mapping[str, str],
                      data: bytes | None = None, connect_timeout: float,
                      proxy_url: str = "") -> Response:
        """Sends a request; returns its Response once the head arrived.

        The caller must end the response (`read()` to the end, `release()` or `close()`).
        A reused keep-alive connection that the server had closed is retried once on a
        fresh one, as long as not a byte of an answer came back on it.
        """
        if self._closed:
            raise ConnectError("the HTTP client is closed")
        tgt = target(url)
        if proxy_url:
            through: Proxy | None = proxy(proxy_url)
            key: Key = (tgt.key[0], tgt.host, tgt.port, proxy_url)
        else:
            through, key = None, tgt.key
        payload = encode_request(method, tgt, headers, data, self.user_agent, through)
        expect_body = method != "HEAD"
        conn = self._take(key)
        if conn is not None:
            try:
                resp = await conn.send(payload, expect_body=expect_body)
            except ServerDisconnected as exc:
                if exc.got_bytes:
                    raise
            else:
                return _proxy_checked(resp, through, tgt)
        if self._closed:  # closed while the reused connection failed
            raise ConnectError("the HTTP client is closed")
        conn = await self._connect(tgt, key, through, connect_timeout)
        return _proxy_checked(await conn.send(payload, expect_body=expect_body), through, tgt)

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
            limit = self.keepalive_timeout
            if conn.keep_for is not None and conn.keep_for < limit:
                limit = conn.keep_for
            if now - conn.idle_since > limit or limit <= 0:
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

    async def _connect(self, tgt: Target, key: Key, through: Proxy | None,
                       timeout: float) -> Connection:
        context = self._context() if tgt.tls else None
        where = f"{tgt.host}:{tgt.port}" + (f" through {through}" if through else "")
        try:
            with timeouts.timeout(timeout):
                if through is None:
                    conn = await self._open(key, tgt.host, tgt.port, context, tgt.host)
                elif context is None:  # plain http: requests name the absolute URL
                    conn = await self._open(key, through.host, through.port, None, "")
                else:
                    conn = await self._tunnel(tgt, key, through, context)
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {where} took longer than {timeout:g}s") \
                from None
        # refused, unreachable, DNS (gaierror), TLS (SSLError); a host name the IDNA codec
        # refuses (UnicodeError, a ValueError)
        except (OSError, ValueError) as exc:
            raise ConnectError(f"cannot connect to {where}: {_detail(exc)}") from exc
        self._opened[key] = self._opened.get(key, 0) + 1
        if self._closed:
            conn.close()
            raise ConnectError("the HTTP client is closed")
        self._all.add(conn)
        return conn

    async def _open(self, key: Key, host: str, port: int, context: ssl.SSLContext | None,
                    server_hostname: str) -> Connection:
        """A connection to host:port, with TLS when `context` is given. From the moment the
        socket is handed to the loop, the transport owns it: failures abort the transport and
        never close the socket under it."""
        loop = asyncio.get_running_loop()
        sock = await _open_socket(host, port)
        if context is None:
            _, conn = await loop.create_connection(
                lambda: Connection(key, self._release, self._lost), sock=sock)
            return conn
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=sock)
        return await self._start_tls(transport, key, context, server_hostname)

    async def _start_tls(self, transport: asyncio.Transport, key: Key, context: ssl.SSLContext,
                         server_hostname: str) -> Connection:
        """TLS over an open transport (a direct connection or a CONNECT tunnel)."""
        loop = asyncio.get_running_loop()
        conn = Connection(key, self._release, self._lost)
        try:
            tls = await loop.start_tls(transport, conn, context,
                                       server_hostname=server_hostname)
        except BaseException:
            transport.abort()
            raise
        if tls is None:  # pragma: no cover - only when the transport closed meanwhile
            transport.abort()
            raise ConnectError("the connection closed during the TLS handshake")
        conn.connection_made(tls)
        return conn

    async def _tunnel(self, tgt: Target, key: Key, through: Proxy,
                      context: ssl.SSLContext) -> Connection:
        """A TLS connection to `tgt` inside a CONNECT tunnel through the proxy."""
        loop = asyncio.get_running_loop()
        sock = await _open_socket(through.host, through.port)
        transport, tunnel = await loop.create_connection(_Tunnel, sock=sock)
        try:
            auth = (f"Proxy-Authorization: {through.authorization}\r\n"
                    if through.authorization else "")
            transport.write(f"CONNECT {tgt.authority} HTTP/1.1\r\nHost: {tgt.authority}\r\n"
                            f"{auth}\r\n".encode())
            try:
                head = await tunnel.head
            except ConnectError as exc:
                raise ConnectError(f"tunnel to {tgt.authority} through {through}: {exc}") \
                    from None
            if not 200 <= head.status < 300:
                raise ConnectError(f"{through} refused the tunnel to {tgt.authority}: "
                                   f"{head.status} {head.reason}".rstrip())
        except BaseException:
            transport.abort()
            raise
        return await self._start_tls(transport, key, context, tgt.host)

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            # built on first use: loading the system CA store takes milliseconds
            self._ssl = ssl.create_default_context()
        return self._ssl


class PoolStats(NamedTuple):
    """One upstream's connections (`HttpClient.stats`)."""

    upstream: str  # scheme://host:port
    proxy: str  # host:port of the proxy, or ""
    opened: int
    open: int
    idle: int


class Requester(Protocol):
    """What adapters call: an HttpClient, or one bound to a proxy (`HttpClient.via`)."""

    async def request(self, method: str, url: str, *, headers: Mapping[str, str],
                      data: bytes | None = None, connect_timeout: float) -> Response: ...


class _Via:
    """An HttpClient bound to a proxy."""

    __slots__ = ("_client", "_proxy_url")

    def __init__(self, client: HttpClient, proxy_url: str) -> None:
        proxy(proxy_url)  # a bad URL fails here, not on the first request
        self._client = client
        self._proxy_url = proxy_url

    async def request(self, method: str, url: str, *, headers: Mapping[str, str],
                      data: bytes | None = None, connect_timeout: float) -> Response:
        return await self._client.request(method, url, headers=headers, data=data,
                                          connect_timeout=connect_timeout,
                                          proxy_url=self._proxy_url)


class _Tunnel(asyncio.Protocol):
    """The proxy's answer to CONNECT: `head` resolves with it (ConnectError if there is
    none). After a 2xx the transport carries TLS to the target."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.head: asyncio.Future[Head] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self.head.done():
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                self.head.set_exception(ConnectError("the proxy's answer to CONNECT is too large"))
            return
        try:
            head = parse_head(bytes(self._buf[:end]))
        except ProtocolError as exc:
            self.head.set_exception(ConnectError(f"the proxy's answer to CONNECT: {exc}"))
            return
        if 200 <= head.status < 300 and len(self._buf) > end + 4:
            # the target speaks only after our TLS hello: bytes here are not the target's
            self.head.set_exception(ConnectError("the proxy sent data before the tunnel opened"))
            return
        self.head.set_result(head)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            error: HttpClientError = ConnectError(
                "the proxy closed the connection before answering CONNECT")
            self.head.set_exception(error)


async def _open_socket(host: str, port: int) -> socket.socket:
    """A connected TCP socket: every address of `host` tried with Happy Eyeballs (RFC 8305),
    so a host with broken IPv6 still reaches an IPv4 address within 0.25 s (uvloop's
    create_connection has no happy_eyeballs_delay)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:  # pragma: no cover - getaddrinfo raises rather than answer nothing
        raise OSError(f"no address for {host}")
    return await aiohappyeyeballs.start_connection(
        cast(list[aiohappyeyeballs.AddrInfoType], infos), happy_eyeballs_delay=0.25,
        interleave=1)


def _detail(exc: BaseException) -> str:
    """An exception's text, or its type when it has none (ConnectionResetError())."""
    return str(exc) or type(exc).__name__


def _proxy_checked(resp: Response, through: Proxy | None, tgt: Target) -> Response:
    """A proxy's own refusal of a plain-http request (407) is a connection failure, as it is
    for a CONNECT tunnel, not the upstream's answer."""
    if resp.status == 407 and through is not None and not tgt.tls:
        resp.close()
        raise ConnectError(f"{through} refused the request to {tgt.authority}: "
                           f"407 {resp.reason}".rstrip())
    return resp
