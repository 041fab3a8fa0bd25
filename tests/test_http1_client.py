"""The HTTP/1.1 client (http1/client.py, connection.py) against real servers on 127.0.0.1.

An aiohttp.web server covers the ordinary traffic (JSON, SSE, compression, errors, keep-alive);
raw `asyncio.start_server` servers writing hand-made bytes cover the edge cases (servers that
close, cut, stall or misbehave); a self-signed certificate made with the openssl CLI covers TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from failoverd.http1 import (
    ConnectError,
    ConnectTimeout,
    HttpClient,
    HttpClientError,
    PayloadError,
    ProtocolError,
    Response,
    ServerDisconnected,
    connection,
)
from failoverd.http1.client import Target, encode_request
from failoverd.http1.connection import DRAIN_BYTES, HIGH_WATER, LOW_WATER
from tests.fakes.base import event_stream, serve_app
from tests.fakes.serving import StreamServer
from tests.helpers import until

CT = 5.0  # connect timeout for calls that are expected to connect
LOCAL = "127.0.0.1"


async def finishes(task: asyncio.Task[Any], stalled: Callable[[], bool],
                   limit: float = 5.0) -> bool:
    """Whether `task` finishes. False (and `task` cancelled) once `stalled()` has held for
    0.1 s without the task finishing - a deadlock, such as a reader waiting for bytes while
    its connection's reading is paused - or after `limit` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    since: float | None = None
    while not task.done():
        now = loop.time()
        if stalled():
            since = now if since is None else since
            if now - since > 0.1:
                break
        else:
            since = None
        if now > deadline:
            break
        await asyncio.sleep(0.002)
    if task.done():
        return True
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    return False


def paused(resp: Response) -> Callable[[], bool]:
    """Whether reading is paused on `resp`'s connection."""
    def check() -> bool:
        transport = resp._conn.transport
        return transport is not None and not transport.is_reading()
    return check


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    async with HttpClient() as c:
        yield c


# ============================================================================ aiohttp server

SSE_EVENTS = [b'data: {"id": 1, "text": "Hel"}\n\n', b"event: ping\ndata: {}\n\n",
              b": a comment\n\n", b'data: {"id": 2, "text": "lo"}\r\n\r\n',
              b"data: [DONE]\n\n"]
SSE_LINES = [line for event in SSE_EVENTS for line in event.splitlines(keepends=True)]
TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(2000))


class WebServer:
    """An aiohttp app on 127.0.0.1 with the handlers the tests call."""

    def __init__(self) -> None:
        self.url = ""
        self.port = 0
        self.gate = asyncio.Event()  # releases /sse-gated's second half
        self.arrived = 0  # requests that reached /together
        self.all_arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> WebServer:
        app = web.Application()
        app.router.add_route("*", "/echo", self.echo)
        app.router.add_get("/hello", self.hello)
        app.router.add_get("/sse", self.sse)
        app.router.add_get("/sse-gated", self.sse_gated)
        app.router.add_get("/compressed", self.compressed)
        app.router.add_get("/compressed-stream", self.compressed_stream)
        app.router.add_post("/limited", self.limited)
        app.router.add_get("/together", self.together)
        self._runner, self.port = await serve_app(app, ssl_context=ssl_context)
        scheme = "https" if ssl_context else "http"
        self.url = f"{scheme}://{LOCAL}:{self.port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def echo(self, request: web.Request) -> web.Response:
        raw = await request.read()
        return web.json_response({
            "method": request.method, "path": request.path_qs,
            "headers": [[k, v] for k, v in request.headers.items()],
            "json": json.loads(raw) if raw else None, "length": len(raw)})

    async def hello(self, request: web.Request) -> web.Response:
        return web.Response(text="hello world", headers={"X-Thing": "yes"})

    async def sse(self, request: web.Request) -> web.StreamResponse:
        resp = await event_stream(request)
        for event in SSE_EVENTS:
            await resp.write(event)
        await resp.write_eof()
        return resp

    async def sse_gated(self, request: web.Request) -> web.StreamResponse:
        resp = await event_stream(request)
        await resp.write(SSE_EVENTS[0])
        await self.gate.wait()
        for event in SSE_EVENTS[1:]:
            await resp.write(event)
        await resp.write_eof()
        return resp

    async def compressed(self, request: web.Request) -> web.Response:
        resp = web.Response(text=TEXT)
        coding = request.query.get("coding")
        resp.enable_compression(web.ContentCoding(coding) if coding else None)
        return resp

    async def compressed_stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_compression(web.ContentCoding.gzip)
        await resp.prepare(request)
        for i in range(0, len(TEXT), 7000):
            await resp.write(TEXT[i:i + 7000].encode())
        await resp.write_eof()
        return resp

    async def limited(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {"error": {"type": "rate_limit_error", "message": "Too many requests"}},
            status=429, headers={"Retry-After": "7"})

    async def together(self, request: web.Request) -> web.Response:
        """Answers only once `n` requests are in flight at the same time."""
        self.arrived += 1
        if self.arrived >= int(request.query["n"]):
            self.all_arrived.set()
        await self.all_arrived.wait()
        return web.Response(text="together")


@pytest.fixture
async def server() -> AsyncIterator[WebServer]:
    srv = await WebServer().start()
    yield srv
    await srv.close()


def header_list(echoed: dict[str, Any]) -> dict[str, str]:
    pairs = echoed["headers"]
    assert len({k.lower() for k, _ in pairs}) == len(pairs), f"a repeated header: {pairs}"
    return {k.lower(): v for k, v in pairs}


async def test_json_post_echo(server: WebServer, client: HttpClient) -> None:
    payload = {"model": "m", "messages": [{"role": "user", "content": "héllo"}]}
    data = json.dumps(payload).encode()
    resp = await client.request("POST", f"{server.url}/echo?x=1&y=2", data=data,
                                headers={"Content-Type": "application/json",
                                         "X-Custom": "value: with colon; and spaces"},
                                connect_timeout=CT)
    assert (resp.status, resp.reason) == (200, "OK")
    assert resp.headers.get("content-type", "").startswith("application/json")
    assert resp.headers.get("Content-Type") == resp.headers["CONTENT-TYPE"]
    assert "Content-Length" in resp.headers
    echoed = json.loads(await resp.read())
    assert echoed["method"] == "POST" and echoed["path"] == "/echo?x=1&y=2"
    assert echoed["json"] == payload and echoed["length"] == len(data)
    sent = header_list(echoed)
    assert sent["host"] == f"{LOCAL}:{server.port}"
    assert sent["user-agent"] == "failoverd"
    assert sent["x-custom"] == "value: with colon; and spaces"
    assert sent["content-length"] == str(len(data))
    assert sent["content-type"] == "application/json"
    assert sent["accept-encoding"] == "gzip"
    assert "transfer-encoding" not in sent


async def test_get_without_data_sends_no_content_length(server: WebServer,
                                                        client: HttpClient) -> None:
    resp = await client.request("GET", f"{server.url}/echo", headers={}, connect_timeout=CT)
    echoed = json.loads(await resp.read())
    sent = header_list(echoed)
    assert echoed["method"] == "GET" and echoed["length"] == 0
    assert "content-length" not in sent and "transfer-encoding" not in sent


async def test_caller_headers_override_defaults_but_not_framing(server: WebServer) -> None:
    async with HttpClient(user_agent="custom-agent/2") as c:
        resp = await c.request("POST", f"{server.url}/echo", data=b"{}", connect_timeout=CT,
                               headers={"Accept-Encoding": "identity", "Host": "evil.example",
                                        "Content-Length": "999", "Connection": "close",
                                        "Transfer-Encoding": "chunked"})
        sent = header_list(json.loads(await resp.read()))
        assert sent["user-agent"] == "custom-agent/2"
        assert sent["accept-encoding"] == "identity"
        assert sent["host"] == f"{LOCAL}:{server.port}"
        assert sent["content-length"] == "2"
        assert "connection" not in sent and "transfer-encoding" not in sent
        resp = await c.request("GET", f"{server.url}/echo", connect_timeout=CT,
                               headers={"user-agent": "lower/1"})
        assert header_list(json.loads(await resp.read()))["user-agent"] == "lower/1"
        assert c.connects == 1  # the caller's "Connection: close" was not sent


async def test_rate_limited_error_body(server: WebServer, client: HttpClient) -> None:
    resp = await client.request("POST", f"{server.url}/limited", data=b"{}", headers={},
                                connect_timeout=CT)
    assert (resp.status, resp.reason) == (429, "Too Many Requests")
    assert resp.headers.get("retry-after") == "7" == resp.headers["Retry-After"]
    assert json.loads(await resp.read()) == {
        "error": {"type": "rate_limit_error", "message": "Too many requests"}}
    assert client.idle_connections == 1


async def test_head_request(server: WebServer, client: HttpClient) -> None:
    resp = await client.request("HEAD", f"{server.url}/hello", headers={}, connect_timeout=CT)
    assert resp.status == 200 and resp.headers["content-length"] == "11"
    assert resp.headers["x-thing"] == "yes"
    assert await resp.read() == b""
    resp = await client.request("GET", f"{server.url}/hello", headers={}, connect_timeout=CT)
    assert await resp.read() == b"hello world"
    assert client.connects == 1


async def test_sse_readline_yields_exact_lines(server: WebServer, client: HttpClient) -> None:
    resp = await client.request("GET", f"{server.url}/sse", headers={}, connect_timeout=CT)
    assert resp.status == 200 and resp.headers["content-type"] == "text/event-stream"
    assert resp.headers["transfer-encoding"] == "chunked"
    lines = []
    while line := await resp.readline():
        lines.append(line)
    assert lines == SSE_LINES
    assert await resp.readline() == b""
    resp.release()
    assert client.idle_connections == 1
    resp = await client.request("GET", f"{server.url}/sse", headers={}, connect_timeout=CT)
    assert await resp.read() == b"".join(SSE_EVENTS)
    assert client.connects == 1


async def test_sse_lines_arrive_before_the_stream_ends(server: WebServer,
                                                       client: HttpClient) -> None:
    resp = await client.request("GET", f"{server.url}/sse-gated", headers={},
                                connect_timeout=CT)
    first = SSE_EVENTS[0].splitlines(keepends=True)
    async with asyncio.timeout(5):
        assert [await resp.readline() for _ in first] == first
    server.gate.set()
    rest = [line async for line in _lines(resp)]
    assert rest == SSE_LINES[len(first):]
    resp.release()
    assert client.idle_connections == 1


async def _lines(resp: Response) -> AsyncIterator[bytes]:
    while line := await resp.readline():
        yield line


async def test_read_upto(server: WebServer, client: HttpClient) -> None:
    resp = await client.request("GET", f"{server.url}/hello", headers={}, connect_timeout=CT)
    assert await resp.read_upto(5) == b"hello"
    assert await resp.read_upto(0) == b""
    assert await resp.read_upto(100) == b" world"
    assert await resp.read_upto(100) == b""
    resp.release()
    assert client.idle_connections == 1


async def test_release_of_a_complete_response_with_unread_bytes_pools_it(
        server: WebServer, client: HttpClient) -> None:
    resp = await client.request("GET", f"{server.url}/compressed?coding=identity", headers={},
                                connect_timeout=CT)
    assert await resp.read_upto(10) == TEXT[:10].encode()
    await until(lambda: resp._done, interval=0.001)  # the whole answer has arrived, mostly unread
    resp.release()
    assert client.idle_connections == 1
    assert await resp.read_upto(10) == b""  # what was left unread is gone
    resp = await client.request("GET", f"{server.url}/hello", headers={}, connect_timeout=CT)
    assert await resp.read() == b"hello world"
    assert client.connects == 1


@pytest.mark.parametrize("coding", ["gzip", "deflate", None])
async def test_compressed_response(server: WebServer, client: HttpClient,
                                   coding: str | None) -> None:
    query = f"?coding={coding}" if coding else ""
    resp = await client.request("GET", f"{server.url}/compressed{query}", headers={},
                                connect_timeout=CT)
    assert resp.status == 200
    assert resp.headers["content-encoding"] == (coding or resp.headers["content-encoding"])
    assert resp.headers["content-encoding"] in ("gzip", "deflate")
    assert int(resp.headers.get("content-length") or 0) < len(TEXT) / 4  # really compressed
    assert await resp.read() == TEXT.encode()
    assert client.idle_connections == 1


async def test_compressed_stream(server: WebServer, client: HttpClient) -> None:
    resp = await client.request("GET", f"{server.url}/compressed-stream", headers={},
                                connect_timeout=CT)
    assert resp.headers["content-encoding"] == "gzip"
    assert resp.headers["transfer-encoding"] == "chunked"
    lines = [line async for line in _lines(resp)]
    assert b"".join(lines) == TEXT.encode() and len(lines) == 2000
    resp.release()
    assert client.idle_connections == 1


async def test_keep_alive_reuses_one_connection(server: WebServer, client: HttpClient) -> None:
    for i in range(40):
        kind = i % 5
        if kind == 0:
            resp = await client.request("GET", f"{server.url}/hello", headers={},
                                        connect_timeout=CT)
            assert await resp.read() == b"hello world"
        elif kind == 1:
            resp = await client.request("POST", f"{server.url}/echo", headers={},
                                        data=json.dumps({"i": i}).encode(), connect_timeout=CT)
            assert json.loads(await resp.read())["json"] == {"i": i}
        elif kind == 2:
            resp = await client.request("GET", f"{server.url}/sse", headers={},
                                        connect_timeout=CT)
            assert [line async for line in _lines(resp)] == SSE_LINES
            resp.release()
        elif kind == 3:
            resp = await client.request("GET", f"{server.url}/compressed", headers={},
                                        connect_timeout=CT)
            assert await resp.read() == TEXT.encode()
        else:
            resp = await client.request("POST", f"{server.url}/limited", headers={},
                                        data=b"{}", connect_timeout=CT)
            assert resp.status == 429
            await resp.read()
    assert client.connects == 1
    assert client.idle_connections == 1


async def test_concurrent_requests_use_separate_connections(server: WebServer,
                                                            client: HttpClient) -> None:
    async def one() -> bytes:
        resp = await client.request("GET", f"{server.url}/together?n=5", headers={},
                                    connect_timeout=CT)
        return await resp.read()

    async with asyncio.timeout(5):
        assert await asyncio.gather(*(one() for _ in range(5))) == [b"together"] * 5
    assert client.connects == 5 and client.idle_connections == 5
    server.arrived = 0  # the event stays set: the next wave answers at once
    async with asyncio.timeout(5):
        assert await asyncio.gather(*(one() for _ in range(5))) == [b"together"] * 5
    assert client.connects == 5 and client.idle_connections == 5


async def test_max_idle_per_host(server: WebServer) -> None:
    async with HttpClient(max_idle_per_host=2) as c:
        async def one() -> bytes:
            resp = await c.request("GET", f"{server.url}/together?n=4", headers={},
                                   connect_timeout=CT)
            return await resp.read()

        async with asyncio.timeout(5):
            await asyncio.gather(*(one() for _ in range(4)))
        assert c.connects == 4 and c.idle_connections == 2


async def test_expired_idle_connection_is_not_reused(server: WebServer) -> None:
    async with HttpClient(keepalive_timeout=0.0) as c:
        resp = await c.request("GET", f"{server.url}/hello", headers={}, connect_timeout=CT)
        await resp.read()
        assert c.idle_connections == 1
        loop = asyncio.get_running_loop()
        released = loop.time()
        await until(lambda: loop.time() > released, interval=0.001)
        resp = await c.request("GET", f"{server.url}/hello", headers={}, connect_timeout=CT)
        assert await resp.read() == b"hello world"
        assert c.connects == 2 and c.idle_connections == 1


# ============================================================================ raw servers

Handler = Callable[["RawServer", int, asyncio.StreamReader, asyncio.StreamWriter],
                   Awaitable[None]]


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class RawServer(StreamServer):
    """asyncio.start_server on 127.0.0.1; `handler(srv, n, reader, writer)` serves the n-th
    connection (from 1). Records the requests it read."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""
        super().__init__()

    async def start(self) -> RawServer:
        await self._listen(self._serve)
        self.url = f"http://{LOCAL}:{self.port}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = self._track()
        try:
            try:
                await self.handler(self, self.connections, reader, writer)
                await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                await writer.wait_closed()
        except (ConnectionError, asyncio.CancelledError):
            pass  # cancelled by close(): ending normally keeps asyncio's stream callback quiet
        finally:
            self._tasks.discard(task)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next request (head and body), or None at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None
        m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
        body = await reader.readexactly(int(m.group(1))) if m else b""
        self.requests.append(head + body)
        return head + body

    async def answer_all(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         reply: bytes = ok()) -> None:
        while await self.read_request(reader) is not None:
            writer.write(reply)
            await writer.drain()



MakeRaw = Callable[[Handler], Awaitable[RawServer]]


@pytest.fixture
async def raw_server() -> AsyncIterator[MakeRaw]:
    servers: list[RawServer] = []

    async def make(handler: Handler) -> RawServer:
        srv = await RawServer(handler).start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        await srv.close()


async def get(client: HttpClient, url: str, **kwargs: Any) -> Response:
    return await client.request("GET", url, headers={}, connect_timeout=CT, **kwargs)


async def test_server_closing_an_idle_connection(raw_server: MakeRaw, client: HttpClient) -> None:
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(ok(b"one answer"))  # keep-alive by default, yet closes

    srv = await raw_server(handler)
    for i in range(3):
        resp = await get(client, srv.url)
        assert await resp.read() == b"one answer"
        if i == 1:  # let the close arrive while the connection is idle
            await until(lambda: client.idle_connections == 0, interval=0.001)
    assert client.connects == 3 == srv.connections


async def test_pooled_connection_closed_unanswered_is_retried_once(
        raw_server: MakeRaw, client: HttpClient) -> None:
    """The idle-close race: the server reads the next request on a kept-alive connection and
    closes it without a byte of answer; the client retries on a fresh connection."""
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if n == 1:
            await srv.read_request(reader)
            writer.write(ok(b"first"))
            await srv.read_request(reader)
            return  # closes unanswered
        await srv.answer_all(reader, writer, ok(b"fresh"))

    srv = await raw_server(handler)
    resp = await get(client, srv.url)
    assert await resp.read() == b"first"
    resp = await client.request("POST", f"{srv.url}/again", headers={}, data=b"{}",
                                connect_timeout=CT)
    assert await resp.read() == b"fresh"
    assert client.connects == 2 == srv.connections
    assert len(srv.requests) == 3 and srv.requests[1] == srv.requests[2]


async def test_fresh_connection_closed_unanswered(raw_server: MakeRaw, client: HttpClient) -> None:
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)

    srv = await raw_server(handler)
    with pytest.raises(ServerDisconnected) as info:
        await get(client, srv.url)
    assert info.value.got_bytes is False
    assert client.connects == 1 == srv.connections
    assert client.idle_connections == 0


async def test_retry_happens_only_once(raw_server: MakeRaw, client: HttpClient) -> None:
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        if n == 1:
            writer.write(ok())
            await srv.read_request(reader)

    srv = await raw_server(handler)
    resp = await get(client, srv.url)
    await resp.read()
    with pytest.raises(ServerDisconnected):
        await get(client, srv.url)
    assert client.connects == 2 == srv.connections


async def test_partial_answer_on_a_pooled_connection_is_not_retried(
        raw_server: MakeRaw, client: HttpClient) -> None:
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(ok())
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 O")

    srv = await raw_server(handler)
    resp = await get(client, srv.url)
    await resp.read()
    with pytest.raises(ServerDisconnected) as info:
        await get(client, srv.url)
    assert info.value.got_bytes is True
    assert client.connects == 1 == srv.connections


@pytest.mark.parametrize("cut", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nonly ten b\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\nonly ten b",
], ids=["length", "chunked-between-chunks", "chunked-mid-chunk"])
async def test_body_cut_short(raw_server: MakeRaw, client: HttpClient, cut: bytes) -> None:
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(cut)

    srv = await raw_server(handler)
    resp = await get(client, srv.url)
    assert resp.status == 200
    with pytest.raises(PayloadError):
        await resp.read()
    resp = await get(client, srv.url)
    assert await resp.read_upto(4) == b"only"
    with pytest.raises(PayloadError):
        await resp.read_upto(100)
    resp.release()
    assert client.connects == 2 and client.idle_connections == 0


async def test_readline_gives_lines_then_the_cut(raw_server: MakeRaw, client: HttpClient) -> None:
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
                     b"data: 1\n\ndata: 2\n\ndata: partial")

    srv = await raw_server(handler)
    resp = await get(client, srv.url)
    assert [await resp.readline() for _ in range(4)] == [b"data: 1\n", b"\n", b"data: 2\n",
                                                         b"\n"]
    with pytest.raises(PayloadError):
        await resp.readline()
    with pytest.raises(PayloadError):  # and it stays an error
        await resp.readline()
    resp.close()


async def test_not_http_is_a_protocol_error(raw_server: MakeRaw, client: HttpClient) -> None:
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await reader.read()  # until the client closes

    srv = await raw_server(handler)
    with pytest.raises(ProtocolError):
        await get(client, srv.url)
    assert client.idle_connections == 0


async def test_bad_chunk_mid_body_is_a_protocol_error(raw_server: MakeRaw,
                                                      client: HttpClient) -> None:
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\nzz\r\n")
        await reader.read()

    srv = await raw_server(handler)
    resp = await get(client, srv.url)
    assert resp.status == 200
    with pytest.raises(ProtocolError, match="chunk size"):
        await resp.read()
    assert client.idle_connections == 0


async def test_interim_answer_before_the_final_one(raw_server: MakeRaw, client: HttpClient) -> None:
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.answer_all(reader, writer, b"HTTP/1.1 100 Continue\r\n\r\n"
                             b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + ok(b"final"))

    srv = await raw_server(handler)
    for _ in range(2):
        resp = await get(client, srv.url)
        assert resp.status == 200 and "link" not in resp.headers
        assert await resp.read() == b"final"
    assert client.connects == 1


async def test_connection_close_is_not_pooled(raw_server: MakeRaw, client: HttpClient) -> None:
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.answer_all(reader, writer, ok(b"bye", b"Connection: close\r\n"))

    srv = await raw_server(handler)
    for _ in range(3):
        resp = await get(client, srv.url)
        assert await resp.read() == b"bye"
        assert client.idle_connections == 0
    assert client.connects == 3 == srv.connections


async def test_http10_until_close_body(raw_server: MakeRaw, client: HttpClient) -> None:
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
        await writer.drain()
        writer.write(b"close")

    srv = await raw_server(handler)
    resp = await get(client, srv.url)
    assert await resp.read() == b"until close"
    assert client.idle_connections == 0


async def test_http10_keep_alive_is_pooled(raw_server: MakeRaw, client: HttpClient) -> None:
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.answer_all(reader, writer, b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
                             b"Content-Length: 2\r\n\r\nok")

    srv = await raw_server(handler)
    for _ in range(3):
        resp = await get(client, srv.url)
        assert await resp.read() == b"ok"
    assert client.connects == 1


async def test_bytes_after_the_response_end_the_connection(raw_server: MakeRaw,
                                                           client: HttpClient) -> None:
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.answer_all(reader, writer, ok(b"ok") + b"HTTP/1.1 200 OK\r\n")

    srv = await raw_server(handler)
    for _ in range(2):
        resp = await get(client, srv.url)
        assert await resp.read() == b"ok"
        assert client.idle_connections == 0
    assert client.connects == 2


async def test_no_answer_times_out_and_the_connection_is_dropped(
        raw_server: MakeRaw, client: HttpClient) -> None:
    got_request = asyncio.Event()
    client_closed = asyncio.Event()

    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        if n == 1:
            await srv.read_request(reader)
            got_request.set()
            assert await reader.read() == b""  # until the client closes
            client_closed.set()
            return
        await srv.answer_all(reader, writer)

    srv = await raw_server(handler)
    loop = asyncio.get_running_loop()
    expire: asyncio.Task[None] | None = None
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(None) as deadline:
            async def expire_once_sent() -> None:
                await got_request.wait()
                deadline.reschedule(loop.time())  # the deadline passes now, not after a sleep

            expire = asyncio.create_task(expire_once_sent())
            await get(client, srv.url)
    assert expire is not None
    await expire
    async with asyncio.timeout(5):
        await client_closed.wait()
    assert client.idle_connections == 0
    resp = await get(client, srv.url)
    assert await resp.read() == b"ok"
    assert client.connects == 2 == srv.connections


async def test_timeout_mid_body_then_close(raw_server: MakeRaw, client: HttpClient) -> None:
    client_closed = asyncio.Event()

    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
            assert await reader.read() == b""
            client_closed.set()
            return
        writer.write(ok())
        await srv.answer_all(reader, writer)

    srv = await raw_server(handler)
    resp = await get(client, srv.url)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(None) as deadline:
            deadline.reschedule(asyncio.get_running_loop().time())
            await resp.read()
    resp.close()
    async with asyncio.timeout(5):
        await client_closed.wait()
    resp = await get(client, srv.url)
    assert await resp.read() == b"ok"
    assert client.connects == 2 and client.idle_connections == 1


# ---------------------------------------------------------------------------- release drains

def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def gated_stream(gate: asyncio.Event, rest: bytes) -> Handler:
    """Answers the first request with a chunked head and one event, then `rest` once `gate`
    is set; later requests (and connections) get ok()."""
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + chunk(b"data: event 1\n\n"))
            await writer.drain()
            await gate.wait()
            writer.write(rest)
            await writer.drain()
            await srv.answer_all(reader, writer)
            return
        writer.write(ok())
        await srv.answer_all(reader, writer)
    return handler


async def test_release_mid_stream_drains_then_pools(raw_server: MakeRaw,
                                                    client: HttpClient) -> None:
    gate = asyncio.Event()
    srv = await raw_server(gated_stream(gate, chunk(b"data: event 2\n\n") + b"0\r\n\r\n"))
    resp = await get(client, srv.url)
    assert await resp.readline() == b"data: event 1\n"
    resp.release()  # the stream is not over: its end is read out in the background
    assert client.idle_connections == 0
    gate.set()
    await until(lambda: client.idle_connections == 1, interval=0.001)
    assert await resp.readline() == b""  # released: nothing more for the caller
    resp = await get(client, srv.url)
    assert await resp.read() == b"ok"
    assert client.connects == 1 == srv.connections


async def test_release_after_a_timeout_mid_body_drains_then_pools(
        raw_server: MakeRaw, client: HttpClient) -> None:
    gate = asyncio.Event()
    srv = await raw_server(gated_stream(gate, b"0\r\n\r\n"))
    resp = await get(client, srv.url)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(None) as deadline:
            deadline.reschedule(asyncio.get_running_loop().time())
            await resp.read()
    resp.release()
    gate.set()
    await until(lambda: client.idle_connections == 1, interval=0.001)
    assert client.connects == 1


async def test_release_with_too_much_left_closes(raw_server: MakeRaw, client: HttpClient) -> None:
    gate = asyncio.Event()
    big = b"x" * (DRAIN_BYTES + 1)
    srv = await raw_server(gated_stream(gate, chunk(big) + b"0\r\n\r\n"))
    resp = await get(client, srv.url)
    assert await resp.readline() == b"data: event 1\n"
    resp.release()
    gate.set()
    await until(lambda: resp._conn.closed, interval=0.001)
    assert client.idle_connections == 0
    resp = await get(client, srv.url)
    assert await resp.read() == b"ok"
    assert client.connects == 2 == srv.connections


async def test_release_of_a_stalled_body_closes_after_drain_seconds(
        raw_server: MakeRaw, client: HttpClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection, "DRAIN_SECONDS", 0.0)  # no need to wait 2 s
    srv = await raw_server(gated_stream(asyncio.Event(), b""))
    resp = await get(client, srv.url)
    resp.release()
    await until(lambda: resp._conn.closed, interval=0.001)
    assert client.idle_connections == 0
    resp = await get(client, srv.url)
    assert await resp.read() == b"ok"
    assert client.connects == 2 == srv.connections


async def test_release_after_an_error_closes(raw_server: MakeRaw, client: HttpClient) -> None:
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX")
        await srv.answer_all(reader, writer)

    srv = await raw_server(handler)
    resp = await get(client, srv.url)
    with pytest.raises(ProtocolError):
        await resp.read()
    resp.release()
    assert resp._conn.closed and client.idle_connections == 0


async def test_connect_refused(client: HttpClient) -> None:
    with socket.socket() as s:
        s.bind((LOCAL, 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectError, match=f"{LOCAL}:{port}") as info:
        await get(client, f"http://{LOCAL}:{port}/")
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    assert client.connects == 0


@pytest.mark.parametrize(("hint", "reused"), [
    ("timeout=30", True), ("timeout=30, max=100", True), ("max=100", True),
    ("timeout=1", False), ("timeout=0", False), ("timeout=soon", True)])
async def test_the_servers_keep_alive_timeout_is_respected(raw_server: MakeRaw,
                                                           client: HttpClient, hint: str,
                                                           reused: bool) -> None:
    """`Keep-Alive: timeout=N`: reuse only within N - 1 seconds (a hint of 1 s or less:
    never), so a request does not race the server closing the idle connection."""
    answer = (b"HTTP/1.1 200 OK\r\nKeep-Alive: " + hint.encode()
              + b"\r\nContent-Length: 2\r\n\r\nok")
    srv = await raw_server(lambda srv, n, reader, writer: srv.answer_all(reader, writer,
                                                                         answer))
    for _ in range(2):
        resp = await get(client, srv.url)
        assert await resp.read() == b"ok"
    assert client.connects == (1 if reused else 2)


async def test_every_address_of_a_host_is_tried(raw_server: MakeRaw, client: HttpClient,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with several addresses: a refused first one does not fail the request."""
    srv = await raw_server(lambda srv, n, reader, writer: srv.answer_all(reader, writer))
    loop = asyncio.get_running_loop()
    asked: list[str] = []

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        asked.append(host)
        stream = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
        # 127.0.0.2 is loopback too, but nothing listens there: refused at once
        return [(*stream, ("127.0.0.2", port)), (*stream, (LOCAL, port))]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    port = int(srv.url.rsplit(":", 1)[1])
    resp = await get(client, f"http://upstream.test:{port}/")
    assert resp.status == 200 and await resp.read()
    assert asked == ["upstream.test"] and client.connects == 1


async def test_connect_timeout_zero(raw_server: MakeRaw, client: HttpClient) -> None:
    """A zero connect timeout expires before the (listening, local) server's accept is seen."""
    srv = await raw_server(lambda srv, n, reader, writer: srv.answer_all(reader, writer))
    with pytest.raises(ConnectTimeout, match="took longer than 0s") as info:
        await client.request("GET", srv.url, headers={}, connect_timeout=0)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, HttpClientError)
    assert client.connects == 0
    resp = await get(client, srv.url)  # the client is still fine
    assert await resp.read() == b"ok"


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs to a full "
                    "accept queue")
async def test_connect_timeout_full_backlog(client: HttpClient) -> None:
    """Linux drops SYNs to a listener whose accept queue is full: the connect hangs."""
    with socket.socket() as listener:
        listener.bind((LOCAL, 0))
        listener.listen(0)  # room for one connection that nobody accepts
        port = listener.getsockname()[1]
        with socket.create_connection((LOCAL, port), timeout=5):
            with pytest.raises(ConnectTimeout, match="took longer than 0.05s"):
                await client.request("GET", f"http://{LOCAL}:{port}/", headers={},
                                     connect_timeout=0.05)
    assert client.connects == 0


@pytest.mark.parametrize(("name", "value"), [
    ("X-Evil", "a\r\nInjected: yes"), ("X-Evil", "a\nInjected: yes"), ("X-Evil", "a\rb"),
    ("X-Evil\r\nInjected", "yes"), ("X:Evil", "v"),
])
async def test_header_injection_is_refused_before_sending(raw_server: MakeRaw, client: HttpClient,
                                                          name: str, value: str) -> None:
    srv = await raw_server(lambda srv, n, reader, writer: srv.answer_all(reader, writer))
    with pytest.raises(ValueError, match="line break or a colon"):
        await client.request("POST", srv.url, headers={name: value}, data=b"x",
                             connect_timeout=CT)
    assert client.connects == 0 == srv.connections
    resp = await get(client, srv.url)  # nothing was left behind
    assert await resp.read() == b"ok"
    assert srv.requests and all(b"Injected" not in r for r in srv.requests)


async def test_request_bytes_on_the_wire(raw_server: MakeRaw, client: HttpClient) -> None:
    srv = await raw_server(lambda srv, n, reader, writer: srv.answer_all(reader, writer))
    for method, data in [("GET", None), ("DELETE", None), ("POST", b""), ("POST", b"{}")]:
        resp = await client.request(method, f"{srv.url}/p/a?q=1", headers={"X-A": "1"},
                                    data=data, connect_timeout=CT)
        await resp.read()
    port = srv.url.rsplit(":", 1)[1]
    assert srv.requests == [
        b"GET /p/a?q=1 HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nX-A: 1\r\nUser-Agent: failoverd\r\n"
        b"Accept-Encoding: gzip\r\n\r\n" % port.encode(),
        b"DELETE /p/a?q=1 HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nX-A: 1\r\nUser-Agent: failoverd"
        b"\r\nAccept-Encoding: gzip\r\n\r\n" % port.encode(),
        b"POST /p/a?q=1 HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nX-A: 1\r\nUser-Agent: failoverd\r\n"
        b"Accept-Encoding: gzip\r\nContent-Length: 0\r\n\r\n" % port.encode(),
        b"POST /p/a?q=1 HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nX-A: 1\r\nUser-Agent: failoverd\r\n"
        b"Accept-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}" % port.encode(),
    ]
    assert client.connects == 1


# ---------------------------------------------------------------------------- big bodies

LINE_COUNT = 8 * 1024  # 8 MiB of 1 KiB lines


def big_line(i: int) -> bytes:
    return (b"%08d:" % i).ljust(1023, b"x") + b"\n"


async def send_chunked(writer: asyncio.StreamWriter, lines: range, per_chunk: int = 64,
                       line: Callable[[int], bytes] = big_line) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    writer.write(head)
    for start in range(lines.start, lines.stop, per_chunk):
        chunk = b"".join(line(i) for i in range(start, min(start + per_chunk, lines.stop)))
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
    writer.write(b"0\r\n\r\n")


@pytest.fixture
async def big_server(raw_server: MakeRaw) -> RawServer:
    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        while await srv.read_request(reader) is not None:
            await send_chunked(writer, range(LINE_COUNT))
    return await raw_server(handler)


async def test_large_stream_readline_with_flow_control(big_server: RawServer,
                                                       client: HttpClient) -> None:
    resp = await get(client, big_server.url)
    # nobody reads: the client buffers a bounded amount, then pauses the socket
    await until(paused(resp), interval=0.001)
    buffered = len(resp._body)
    assert HIGH_WATER < buffered <= HIGH_WATER + 512 * 1024
    for _ in range(5):
        await asyncio.sleep(0.001)
    assert len(resp._body) == buffered
    count = 0
    async with asyncio.timeout(10):
        while line := await resp.readline():
            assert line == big_line(count)
            count += 1
    assert count == LINE_COUNT
    resp.release()
    assert client.idle_connections == 1
    resp = await get(client, big_server.url)  # and the connection is sound afterwards
    digest = hashlib.sha256()
    async with asyncio.timeout(10):
        while piece := await resp.read_upto(64 * 1024):
            assert len(piece) == 64 * 1024
            digest.update(piece)
    resp.release()
    expected = hashlib.sha256(b"".join(big_line(i) for i in range(LINE_COUNT)))
    assert digest.digest() == expected.digest()
    assert client.connects == 1 and client.idle_connections == 1


async def test_large_stream_read_whole(big_server: RawServer, client: HttpClient) -> None:
    resp = await get(client, big_server.url)
    await until(paused(resp), interval=0.001)  # read() resumes a paused connection
    async with asyncio.timeout(10):
        body = await resp.read()
    assert len(body) == LINE_COUNT * 1024
    assert body[:1024] == big_line(0) and body[-1024:] == big_line(LINE_COUNT - 1)
    assert client.idle_connections == 1


async def test_lagging_reader_of_short_lines_does_not_deadlock(big_server: RawServer,
                                                               client: HttpClient) -> None:
    resp = await get(client, big_server.url)
    count = 0

    async def read_all() -> None:
        nonlocal count
        while line := await resp.readline():
            assert line == big_line(count)
            count += 1
            if count % 700 == 0:  # a consumer that falls behind now and then
                await until(lambda: paused(resp)() or resp._done, interval=0.001)

    assert await finishes(asyncio.create_task(read_all()), paused(resp))
    assert count == LINE_COUNT
    resp.release()


# ---------------------------------------------------------------------------- known bugs

async def test_readline_of_a_line_longer_than_high_water(raw_server: MakeRaw,
                                                         client: HttpClient) -> None:
    long_line = b"data: " + b"x" * (2 * HIGH_WATER) + b"\n"

    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        await send_chunked(writer, range(2), per_chunk=1,
                           line=lambda i: long_line if i == 0 else b"data: [DONE]\n")

    srv = await raw_server(handler)
    resp = await get(client, srv.url)
    task = asyncio.create_task(resp.readline())
    assert await finishes(task, paused(resp)), "readline deadlocked with reading paused"
    assert task.result() == long_line
    resp.close()


async def test_lagging_reader_of_long_lines(raw_server: MakeRaw, client: HttpClient) -> None:
    size = 700 * 1024  # over LOW_WATER, under HIGH_WATER

    def line(i: int) -> bytes:
        return (b"%d:" % i).ljust(size - 1, b"y") + b"\n"

    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        await send_chunked(writer, range(6), per_chunk=1, line=line)

    assert LOW_WATER < size < HIGH_WATER
    srv = await raw_server(handler)
    resp = await get(client, srv.url)
    await until(paused(resp), interval=0.001)  # the reader fell behind
    got: list[bytes] = []

    async def read_all() -> None:
        while piece := await resp.readline():
            got.append(piece)

    assert await finishes(asyncio.create_task(read_all()), paused(resp)), "deadlocked"
    assert got == [line(i) for i in range(6)]
    resp.close()


async def test_read_upto_more_than_high_water(big_server: RawServer,
                                              client: HttpClient) -> None:
    resp = await get(client, big_server.url)
    task = asyncio.create_task(resp.read_upto(2 * HIGH_WATER))
    assert await finishes(task, paused(resp)), "read_upto deadlocked with reading paused"
    assert len(task.result()) == 2 * HIGH_WATER
    resp.close()


@pytest.mark.parametrize("end", ["release", "read", "readline"])
async def test_connection_paused_at_the_end_of_a_body_is_pooled_paused(
        raw_server: MakeRaw, client: HttpClient, end: str) -> None:
    body = b"x" * (HIGH_WATER + 1)  # goes over HIGH_WATER with its very last byte

    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(ok(body))
        await srv.answer_all(reader, writer, ok(b"second"))

    srv = await raw_server(handler)
    resp = await get(client, srv.url)
    if end == "readline":
        assert await resp.readline() == body  # no newline: the whole body, once complete
        assert await resp.readline() == b""
        resp.release()
    else:
        await until(paused(resp), interval=0.001)  # complete, unread, and paused
        if end == "read":
            assert await resp.read() == body
        else:
            resp.release()  # e.g. a caller done with a stream it had stopped reading
    assert client.idle_connections == 1
    task = asyncio.create_task(get(client, srv.url))
    assert await finishes(task, paused(resp)), "the reused connection stays paused"
    assert await task.result().read() == b"second"


async def test_close_after_read_leaves_the_pooled_connection_alone(
        raw_server: MakeRaw, client: HttpClient) -> None:
    gate = asyncio.Event()

    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await srv.read_request(reader)
        writer.write(ok(b"first"))
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsec")
        await writer.drain()
        await gate.wait()
        writer.write(b"ond")
        await srv.answer_all(reader, writer)

    srv = await raw_server(handler)
    first = await get(client, srv.url)
    assert await first.read() == b"first"
    second = await get(client, srv.url)  # on the same, pooled connection
    first.close()  # a `finally: resp.close()` after a successful read()
    gate.set()
    assert await second.read() == b"second"
    assert client.connects == 1


# ============================================================================ pure helpers

@pytest.mark.parametrize(("url", "key", "host", "path"), [
    ("http://example.com", ("http", "example.com", 80, ""), "example.com", "/"),
    ("http://example.com:80/a", ("http", "example.com", 80, ""), "example.com", "/a"),
    ("https://example.com/v1/chat?x=1&y=%20", ("https", "example.com", 443, ""), "example.com",
     "/v1/chat?x=1&y=%20"),
    ("https://example.com:8443/", ("https", "example.com", 8443, ""), "example.com:8443", "/"),
    ("http://127.0.0.1:11434/api", ("http", "127.0.0.1", 11434, ""), "127.0.0.1:11434", "/api"),
    ("http://[::1]:8080/x", ("http", "::1", 8080, ""), "[::1]:8080", "/x"),
    ("https://[::1]/x", ("https", "::1", 443, ""), "[::1]", "/x"),
    ("HTTP://Example.COM/Path", ("http", "example.com", 80, ""), "example.com", "/Path"),
])
def test_target(url: str, key: tuple[str, str, int], host: str, path: str) -> None:
    t = Target(url)
    assert (t.key, t.host_header, t.path) == (key, host, path)
    assert t.tls is (key[0] == "https")


@pytest.mark.parametrize("url", ["ftp://example.com/", "example.com/x", "http:///path",
                                 "unix:///run/x.sock", ""])
def test_target_refuses_non_http_urls(url: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        Target(url)


async def test_request_to_a_bad_url_is_a_value_error(client: HttpClient) -> None:
    with pytest.raises(ValueError):
        await client.request("GET", "ftp://127.0.0.1/", headers={}, connect_timeout=CT)
    assert client.connects == 0


def test_encode_request() -> None:
    t = Target("http://h:81/p")
    assert encode_request("GET", t, {}, None, "ua") == (
        b"GET /p HTTP/1.1\r\nHost: h:81\r\nUser-Agent: ua\r\n"
        b"Accept-Encoding: gzip\r\n\r\n")
    assert encode_request("PUT", t, {"User-Agent": "me", "ACCEPT-ENCODING": "br",
                                     "content-length": "5", "HOST": "x", "connection": "close",
                                     "Transfer-Encoding": "chunked"}, b"caf\xc3\xa9", "ua") == (
        b"PUT /p HTTP/1.1\r\nHost: h:81\r\nUser-Agent: me\r\nACCEPT-ENCODING: br\r\n"
        b"Content-Length: 5\r\n\r\ncaf\xc3\xa9")


def test_target_encodes_what_may_not_stand_in_a_request_line() -> None:
    gemini = Target("https://g/v1beta/models/my model:streamGenerateContent?alt=sse&k=a b")
    assert gemini.path == "/v1beta/models/my%20model:streamGenerateContent?alt=sse&k=a%20b"
    assert gemini.host_header == "g" and gemini.port == 443 and gemini.tls
    assert Target("http://h/already%20quoted/").path == "/already%20quoted/"
    v6 = Target("http://[::1]:8080")
    assert (v6.host, v6.host_header, v6.path, v6.key) == ("::1", "[::1]:8080", "/",
                                                         ("http", "::1", 8080, ""))


# ============================================================================ TLS

@pytest.fixture
async def tls_server(certificate: tuple[Path, Path]) -> AsyncIterator[WebServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    srv = await WebServer().start(ssl_context=context)
    yield srv
    await srv.close()


async def test_tls_with_a_trusting_context(tls_server: WebServer,
                                           certificate: tuple[Path, Path]) -> None:
    context = ssl.create_default_context(cafile=str(certificate[0]))
    async with HttpClient(ssl_context=context) as c:
        assert tls_server.url.startswith("https://")
        resp = await c.request("POST", f"{tls_server.url}/echo", data=b'{"a": 1}',
                               headers={"Content-Type": "application/json"},
                               connect_timeout=CT)
        echoed = json.loads(await resp.read())
        assert echoed["json"] == {"a": 1}
        assert header_list(echoed)["host"] == f"{LOCAL}:{tls_server.port}"
        resp = await c.request("GET", f"{tls_server.url}/sse", headers={}, connect_timeout=CT)
        assert [line async for line in _lines(resp)] == SSE_LINES
        resp.release()
        resp = await c.request("GET", f"{tls_server.url}/compressed?coding=gzip", headers={},
                               connect_timeout=CT)
        assert await resp.read() == TEXT.encode()
        assert c.connects == 1 and c.idle_connections == 1


async def test_tls_with_the_default_context_refuses_a_self_signed_cert(
        tls_server: WebServer, client: HttpClient) -> None:
    with pytest.raises(ConnectError, match="certificate verify failed") as info:
        await get(client, f"{tls_server.url}/hello")
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert client.connects == 0


async def test_tls_to_a_plain_http_server(server: WebServer, client: HttpClient) -> None:
    with pytest.raises(ConnectError):
        await get(client, server.url.replace("http://", "https://") + "/hello")
    assert client.connects == 0


# ============================================================================ aclose

async def test_aclose_closes_idle_and_busy_connections(raw_server: MakeRaw) -> None:
    eofs = 0

    async def handler(srv: RawServer, n: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        nonlocal eofs
        while (request := await srv.read_request(reader)) is not None:
            if b"/idle" in request:
                writer.write(ok())
            elif b"/mid-body" in request:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
            # /no-answer: nothing
        eofs += 1  # the client closed the connection

    srv = await raw_server(handler)
    c = HttpClient()
    mid_body = await get(c, f"{srv.url}/mid-body")
    no_answer = asyncio.create_task(get(c, f"{srv.url}/no-answer"))
    await until(lambda: len(srv.requests) == 2, interval=0.001)
    idle = await get(c, f"{srv.url}/idle")
    await idle.read()
    assert c.connects == 3 and c.idle_connections == 1
    await c.aclose()
    assert c.idle_connections == 0
    with pytest.raises(PayloadError):
        await mid_body.read()
    with pytest.raises(ServerDisconnected):
        await no_answer
    await until(lambda: eofs == 3, interval=0.001)
    with pytest.raises(ConnectError, match="closed"):
        await get(c, f"{srv.url}/idle")
    assert c.connects == 3 == srv.connections
    await c.aclose()  # twice is fine


async def test_context_manager_closes(server: WebServer) -> None:
    async with HttpClient() as c:
        resp = await c.request("GET", f"{server.url}/hello", headers={}, connect_timeout=CT)
        await resp.read()
        assert c.idle_connections == 1
    assert c.idle_connections == 0
    with pytest.raises(ConnectError):
        await c.request("GET", f"{server.url}/hello", headers={}, connect_timeout=CT)
