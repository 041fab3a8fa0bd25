"""Review of the HTTP/1.1 client (http1/) and its use by the adapters: proxies, Happy Eyeballs,
drain-on-release, cancellation at every await, uvloop.

The "bugs found in review" tests pin fixes of what review found; the other tests pin
behaviours verified in review that the other test files do not cover. Tests that must
also hold on uvloop run the same coroutine on a loop of each kind (`on_loop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from failoverd import config as config_mod
from failoverd.config import ModelConfig, ProviderConfig
from failoverd.errors import ConfigError, UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import (
    ConnectError,
    ConnectTimeout,
    HttpClient,
    HttpClientError,
    ProtocolError,
    Proxy,
    connection,
)
from failoverd.http1.parser import Head, ResponseParser
from failoverd.providers import make_provider
from failoverd.providers.base import AttemptLimits
from tests.fakes.proxy import FakeProxy
from tests.fakes.serving import StreamServer
from tests.helpers import until

LOCAL = "127.0.0.1"
CT = 5.0
LIMITS = AttemptLimits(total=5, connect=2, first_token=5, idle=5)
HELLO = {"messages": [{"role": "user", "content": "Hello"}]}
LOOPS = ["asyncio", "uvloop"]


def on_loop(kind: str, main: Callable[[], Awaitable[None]]) -> None:
    """Runs `main()` on a new loop of `kind` ("asyncio" or "uvloop"), then closes the loop."""
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
    gc.collect()  # an unclosed socket or transport warns now, inside this test


def contexts(certificate: tuple[Path, Path]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(*certificate)
    return server, ssl.create_default_context(cafile=str(certificate[0]))


class Origin(StreamServer):
    """A raw keep-alive origin on 127.0.0.1 (TLS with a context): every request gets
    `200 ok`; `Connection: close` ends the connection after the answer (as the test proxy
    asks). `open` counts its open connections."""

    def __init__(self) -> None:
        super().__init__()
        self.url = ""
        self.open = 0

    async def start(self, context: ssl.SSLContext | None = None) -> Origin:
        await self._listen(self._serve, ssl=context)
        self.url = f"{'https' if context else 'http'}://{LOCAL}:{self.port}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = self._track()
        self.open += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                if b"\r\nconnection: close\r\n" in head.lower():
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError,
                ssl.SSLError):
            pass
        finally:
            self.open -= 1
            writer.close()
            self._tasks.discard(task)



class Silent(StreamServer):
    """Accepts connections, reads and never answers; `eofs` counts peers that closed."""

    def __init__(self) -> None:
        super().__init__()
        self.eofs = 0

    async def start(self) -> Silent:
        await self._listen(self._serve)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = self._track()
        try:
            while await reader.read(65536):
                pass
            self.eofs += 1
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)



async def raw_proxy(answer: bytes) -> tuple[asyncio.Server, str]:
    """A 'proxy' that answers the first request head with `answer` and closes."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, LOCAL, 0)
    return server, f"http://{LOCAL}:{server.sockets[0].getsockname()[1]}"


class CancelOnConnect:
    """Patches Connection.connection_made to cancel `victim`, once set, in the loop iteration
    that makes the connection (after a TLS handshake: that completes it), before the
    connecting task resumes, as a connect timeout or a client going away can."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.victim: asyncio.Future[Any] | None = None
        made = connection.Connection.connection_made

        def connection_made(conn: connection.Connection,
                            transport: asyncio.BaseTransport) -> None:
            made(conn, transport)
            if self.victim is not None:
                self.victim.cancel()
                self.victim = None

        monkeypatch.setattr(connection.Connection, "connection_made", connection_made)

    async def first_then_ok(self, client: HttpClient, url: str) -> None:
        """A GET of `url` cancelled as its connection is made (CancelledError comes out),
        then a GET that answers b"ok"."""
        self.victim = first = asyncio.ensure_future(
            client.request("GET", url, headers={}, connect_timeout=CT))
        with pytest.raises(asyncio.CancelledError):
            await first
        resp = await client.request("GET", url, headers={}, connect_timeout=CT)
        assert await resp.read() == b"ok"


def _abort_orphans() -> None:
    """Aborts selector transports whose socket was closed under them (CPython loop only), so
    that a bug pinned below does not leak into later tests."""
    transports = getattr(asyncio.get_running_loop(), "_transports", None)
    for transport in list((transports or {}).values()):
        sock = transport.get_extra_info("socket")
        if not transport.is_closing() and sock is not None and sock.fileno() == -1:
            transport.abort()


# ============================================================================ bugs found in review


async def test_cancel_as_the_tls_handshake_completes_leaves_no_orphan_transport(
        certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    server_context, client_context = contexts(certificate)
    origin = await Origin().start(server_context)
    cancel = CancelOnConnect(monkeypatch)
    try:
        async with HttpClient(ssl_context=client_context) as c:
            await cancel.first_then_ok(c, f"{origin.url}/")
    finally:
        _abort_orphans()
        await asyncio.sleep(0)
        await origin.close()


@pytest.mark.parametrize("url", ["http://alice:s3cr/et@proxy.example:3128",
                                 "http://alice:s3cr?et@proxy.example:3128",
                                 "http://alice:s3cr#et@proxy.example:3128"])
def test_a_malformed_proxy_url_never_shows_its_password(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        Proxy(url)
    path = tmp_path / "f.toml"
    path.write_text(f'[providers.a]\nkind = "openai"\nbase_url = "http://{LOCAL}:1/v1"\n'
                    f'proxy = "{url}"\n[models."a/m"]\nprovider = "a"\n'
                    f'[routing]\nprimary = "a/m"\n')
    with pytest.raises(ConfigError) as config_info:
        config_mod.load(path, env={})
    shown = str(info.value) + "\n".join(config_info.value.problems)
    assert "s3cr" not in shown


@pytest.mark.parametrize("where", ["target", "proxy"])
async def test_an_unusable_host_name_is_a_connect_error(where: str) -> None:
    async with HttpClient() as c:
        if where == "target":
            requester: Any = c
            url = "http://api..example.com/v1/models"
        else:
            requester = c.via("http://proxy..example:3128")
            url = "https://api.example.com/v1/models"
        with pytest.raises(ConnectError):
            await requester.request("GET", url, headers={}, connect_timeout=CT)


async def test_a_proxy_refusal_fails_over_for_http_upstreams_too(fake_openai: Any) -> None:
    up = await fake_openai()
    proxy = await FakeProxy(require="Basic dGhlOnJpZ2h0").start()  # the:right
    try:
        async with HttpClient() as c:
            url = proxy.url.replace("http://", "http://the:wrong@")
            provider = make_provider(ProviderConfig(name="a", kind="openai", base_url=up.url,
                                                    proxy=url), c)
            model = ModelConfig(id="a/m", provider="a", name="m")
            with pytest.raises(UpstreamError) as info:
                await provider.complete(HELLO, model, LIMITS)
            assert info.value.reason is FailureReason.CONNECTION
            assert "wrong" not in info.value.message
    finally:
        await proxy.close()


class _Sink:
    def __init__(self) -> None:
        self.heads: list[Head] = []

    def on_head(self, head: Head) -> None:
        self.heads.append(head)

    def on_body(self, data: bytes) -> None:
        pass

    def on_complete(self) -> None:
        pass


def test_a_non_ascii_status_line_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        ResponseParser(_Sink()).feed(b"HTTP/1.\xff 200 OK\r\nContent-Length: 0\r\n\r\n")


# ============================================================================ verified behaviour


@pytest.mark.parametrize("kind", LOOPS)
def test_cancel_as_the_handshake_completes_orphans_nothing_elsewhere(
        kind: str, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The cancel-as-the-connection-is-made scenario on both loops and schemes: nothing is
    orphaned, the next request works on one pooled connection."""
    server_context, client_context = contexts(certificate)
    cancel = CancelOnConnect(monkeypatch)
    schemes = ["http", "https"]

    async def main() -> None:
        for scheme in schemes:
            origin = await Origin().start(server_context if scheme == "https" else None)
            try:
                async with HttpClient(ssl_context=client_context) as c:
                    await cancel.first_then_ok(c, f"{origin.url}/")
                    await until(lambda: origin.open == 1, interval=0.001)  # noqa: B023 - awaited here
                    # https: TLS is started on an open transport and the connection object
                    # is made after the handshake, so the cancel lands on the next await, once
                    # the first connection was counted (and then closed)
                    assert c.connects == (2 if scheme == "https" else 1)  # noqa: B023
                    assert c.idle_connections == 1
            finally:
                await origin.close()

    on_loop(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.parametrize("mode", ["http", "https", "tunnel", "absolute"])
def test_cancel_at_every_step_of_a_request(kind: str, mode: str,
                                           certificate: tuple[Path, Path]) -> None:
    """A request cancelled after 0, 1, 2, ... loop iterations (connect, TLS, CONNECT,
    start_tls, send, head): only CancelledError comes out, nothing is pooled, every
    abandoned connection is closed, and the first request left alone works."""
    server_context, client_context = contexts(certificate)

    async def main() -> None:
        tls = mode in ("https", "tunnel")
        origin = await Origin().start(server_context if tls else None)
        proxy = await FakeProxy().start()
        try:
            async with HttpClient(ssl_context=client_context) as c:
                via: Any = c.via(proxy.url) if mode in ("tunnel", "absolute") else c
                for steps in range(500):
                    task = asyncio.ensure_future(
                        via.request("GET", f"{origin.url}/x", headers={}, connect_timeout=CT))
                    for _ in range(steps):
                        await asyncio.sleep(0)
                    task.cancel()
                    try:
                        resp = await task
                    except asyncio.CancelledError:
                        assert c.idle_connections == 0
                        continue
                    assert await resp.read() == b"ok"
                    break
                else:
                    pytest.fail("the request never completed")
                assert steps > 3  # some cancellations really happened
                assert c.idle_connections == 1
                # absolute-form: the proxy opens one origin connection per request
                expected = 0 if mode == "absolute" else 1
                await until(lambda: origin.open == expected, interval=0.001)
                tunnels = 0 if mode in ("http", "https") else 1  # proxy connections in use
                await until(lambda: len(proxy._tasks) == tunnels, interval=0.001)
        finally:
            await proxy.close()
            await origin.close()

    on_loop(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_connect_timeout_while_the_tunnelled_tls_handshake_hangs(
        kind: str, certificate: tuple[Path, Path]) -> None:
    _, client_context = contexts(certificate)

    async def main() -> None:
        target = await Silent().start()  # takes the TLS hello, never answers it
        proxy = await FakeProxy().start()
        try:
            async with HttpClient(ssl_context=client_context) as c:
                with pytest.raises(ConnectTimeout, match="through proxy"):
                    await c.via(proxy.url.replace("http://", "http://u:pw-secret@")).request(
                        "GET", f"https://{LOCAL}:{target.port}/", headers={},
                        connect_timeout=0.2)
                await until(lambda: target.eofs == 1, interval=0.001)  # the tunnel was closed
                assert c.connects == 0 and not c._all
        finally:
            await proxy.close()
            await target.close()

    on_loop(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.parametrize(("answer", "match"), [
    (b"HTTP/1.1 200 Connection established\r\n\r\n", "through proxy"),  # then closes
    (b"HTTP/1.1 200 OK\r\n\r\n\x16\x03\x01", "before the tunnel opened"),
    (b"HTTP/1.1 200 OK\r\n", "before answering CONNECT"),
    (b"", "before answering CONNECT"),
    (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad", "502 Bad Gateway"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "answer to CONNECT"),
])
def test_a_broken_connect_answer_is_a_connect_error(kind: str, answer: bytes,
                                                   match: str) -> None:
    async def main() -> None:
        server, url = await raw_proxy(answer)
        try:
            async with HttpClient() as c:
                with pytest.raises(ConnectError, match=match):
                    await c.via(url.replace("http://", "http://u:pw-secret@")).request(
                        "GET", "https://upstream.example/", headers={}, connect_timeout=CT)
                assert c.connects == 0 and not c._all
        finally:
            server.close()
            await server.wait_closed()

    on_loop(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_proxy_errors_never_show_the_proxy_password(kind: str) -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind((LOCAL, 0))  # bound, never listening: refused
            port = s.getsockname()[1]
            async with HttpClient() as c:
                for target in ("https://upstream.example/", "http://upstream.example/"):
                    via = c.via(f"http://alice:pw-secret@{LOCAL}:{port}")
                    with pytest.raises(ConnectError) as info:
                        await via.request("GET", target, headers={}, connect_timeout=CT)
                    assert "pw-secret" not in str(info.value)
                    assert "pw-secret" not in repr(via) and "pw-secret" not in repr(info.value)

    on_loop(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_every_address_of_a_host_is_tried(kind: str) -> None:
    """test_http1_client's version answers every lookup with its two addresses; uvloop's
    sock_connect resolves the numeric address through loop.getaddrinfo again, so only the
    test's name is faked here."""
    async def main() -> None:
        origin = await Origin().start()
        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo

        async def getaddrinfo(host: Any, port: Any, **kwargs: Any) -> Any:
            if host != "upstream.test":
                return await real(host, port, **kwargs)
            stream = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
            return [(*stream, ("127.0.0.2", port)), (*stream, (LOCAL, port))]

        loop.getaddrinfo = getaddrinfo  # type: ignore[method-assign]
        try:
            async with HttpClient() as c:
                resp = await c.request("GET", f"http://upstream.test:{origin.port}/",
                                       headers={}, connect_timeout=CT)
                assert await resp.read() == b"ok"
                assert c.connects == 1
        finally:
            await origin.close()

    on_loop(kind, main)


# ---------------------------------------------------------------------------- drain


def gated_stream_server() -> tuple[asyncio.Event, Callable[..., Awaitable[None]]]:
    """A handler whose first answer is a chunked stream held at its first event until the
    gate opens; every other request (on any connection) gets `200 second`."""
    gate = asyncio.Event()
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                served += 1
                if served == 1:
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 b"f\r\ndata: event 1\n\n\r\n")
                    await writer.drain()
                    await gate.wait()
                    writer.write(b"f\r\ndata: event 2\n\n\r\n0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    return gate, handler


@contextlib.asynccontextmanager
async def serving(handler: Callable[..., Awaitable[None]]) -> AsyncIterator[str]:
    tasks: set[asyncio.Task[Any]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        finally:
            tasks.discard(task)

    server = await asyncio.start_server(tracked, LOCAL, 0)
    try:
        yield f"http://{LOCAL}:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


@pytest.mark.parametrize("kind", LOOPS)
def test_a_draining_connection_is_not_handed_out_before_its_answer_ends(kind: str) -> None:
    async def main() -> None:
        gate, handler = gated_stream_server()
        async with serving(handler) as url, HttpClient() as c:
            stream = await c.request("GET", url, headers={}, connect_timeout=CT)
            assert await stream.readline() == b"data: event 1\n"
            stream.release()  # the rest is read out in the background
            # a request meanwhile gets a connection of its own and its own answer
            resp = await c.request("GET", url, headers={}, connect_timeout=CT)
            assert await resp.read() == b"second"
            assert c.connects == 2 and c.idle_connections == 1
            gate.set()
            await until(lambda: c.idle_connections == 2, interval=0.001)  # the drained one joins
            for _ in range(2):
                resp = await c.request("GET", url, headers={}, connect_timeout=CT)
                assert await resp.read() == b"second"
            stream.close()  # a late close of the released stream leaves the pool alone
            assert c.connects == 2 and c.idle_connections == 2

    on_loop(kind, main)


@pytest.mark.parametrize("kind", LOOPS)
def test_close_during_the_drain_closes_and_stops_its_timer(kind: str) -> None:
    async def main() -> None:
        gate, handler = gated_stream_server()
        async with serving(handler) as url, HttpClient() as c:
            stream = await c.request("GET", url, headers={}, connect_timeout=CT)
            stream.release()
            timer = stream._drain_timer
            assert timer is not None
            stream.close()  # e.g. the caller's `finally: resp.close()` after a release
            assert timer.cancelled() and stream._conn.closed
            gate.set()
            await until(lambda: not c._all, interval=0.001)
            assert c.idle_connections == 0

    on_loop(kind, main)


async def test_a_request_cancelled_while_the_pool_drains_keeps_the_pool_sound() -> None:
    """Cancelling a request that reuses a pooled connection, at each step, never leaves a
    connection in the pool with an answer still coming."""
    async with contextlib.AsyncExitStack() as stack:
        origin = await Origin().start()
        stack.push_async_callback(origin.close)
        c = await stack.enter_async_context(HttpClient())
        resp = await c.request("GET", f"{origin.url}/", headers={}, connect_timeout=CT)
        assert await resp.read() == b"ok"
        for steps in range(30):
            task = asyncio.ensure_future(
                c.request("GET", f"{origin.url}/", headers={}, connect_timeout=CT))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                resp = await task
                assert await resp.read() == b"ok"
            assert c.idle_connections <= 1
            # whatever is pooled answers the next request with its own answer
            resp = await c.request("GET", f"{origin.url}/", headers={}, connect_timeout=CT)
            assert await resp.read() == b"ok"
        await until(lambda: origin.open == c.idle_connections == 1, interval=0.001)


def test_http_client_errors_are_mapped_by_the_adapters() -> None:
    """Every exception the client documents is one providers/http.py maps."""
    from failoverd.providers.http import _MAPPED

    for exc in (ConnectError("x"), ConnectTimeout("x"), ProtocolError("x")):
        assert isinstance(exc, _MAPPED)
    assert issubclass(ConnectTimeout, TimeoutError) and issubclass(ConnectTimeout,
                                                                   HttpClientError)
