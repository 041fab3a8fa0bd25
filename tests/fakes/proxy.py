"""A real HTTP proxy on 127.0.0.1 for tests: CONNECT tunnels and absolute-form forwarding.

It only ever connects to loopback targets. `require` makes it demand a Proxy-Authorization
value (407 otherwise); `lines` records every request line it got, `auth` the credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

from tests.fakes.serving import StreamServer

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


class FakeProxy(StreamServer):
    def __init__(self, require: str | None = None) -> None:
        super().__init__()
        self.require = require  # the Proxy-Authorization value it insists on
        self.lines: list[str] = []
        self.auth: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeProxy:
        await self._listen(self._client)
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = self._track()
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                line, *fields = head[:-4].decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (f.partition(":") for f in fields)}
                self.lines.append(line)
                self.auth.append(headers.get("proxy-authorization"))
                if self.require is not None \
                        and headers.get("proxy-authorization") != self.require:
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                 b"Proxy-Authenticate: Basic realm=\"test\"\r\n"
                                 b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                    await writer.drain()
                    return
                method, target, _ = line.split(" ", 2)
                if method == "CONNECT":
                    await self._tunnel(target, reader, writer)
                    return
                await self._forward(method, target, fields, headers, reader, writer)
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _tunnel(self, target: str, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        host, _, port = target.rpartition(":")
        assert host.strip("[]") in _LOOPBACK, f"tests only tunnel to loopback, not {host}"
        up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            up_writer.close()

    async def _forward(self, method: str, target: str, fields: list[str],
                       headers: dict[str, str], reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        """One absolute-form request: sent on to the origin with `Connection: close`, its
        whole answer relayed back (the client's connection stays open for the next one)."""
        url = urlsplit(target)
        assert url.scheme == "http" and url.hostname in _LOOPBACK, target
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        kept = [f for f in fields if f.split(":", 1)[0].strip().lower()
                not in ("proxy-authorization", "connection")]
        path = url.path + (f"?{url.query}" if url.query else "")
        up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
        try:
            up_writer.write("\r\n".join([f"{method} {path} HTTP/1.1", *kept,
                                         "Connection: close", "", ""]).encode() + body)
            answer = await up_reader.read()
        finally:
            up_writer.close()
        head, sep, rest = answer.partition(b"\r\n\r\n")
        # the origin closes after each answer; the client's side is kept alive
        lines = [x for x in head.split(b"\r\n") if not x.lower().startswith(b"connection:")]
        writer.write(b"\r\n".join(lines) + sep + rest)
        await writer.drain()
