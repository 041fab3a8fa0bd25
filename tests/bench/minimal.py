"""The least an HTTP-aware Python proxy does, as a second ceiling next to the byte pipe.

Where the byte pipe (`forwarder.py`) copies bytes and understands nothing, this proxy does
what any proxy that routes by request must: it parses each request's head and its
Content-Length, parses the JSON body (to read the model), sends the request upstream over
failoverd's own keep-alive HTTP/1.1 client (`failoverd.http1`), and writes the answer back
(a body in one write with its Content-Length; a stream relayed chunk by chunk). It does not
validate, route, retry, fail over, count or log anything: the gap between this row and
failoverd's is the cost of failoverd's decisions, the gap between it and direct the cost of
being an HTTP proxy in Python on asyncio at all.

Run: `python -m tests.bench.minimal --unix PATH --upstream-port N`; prints `READY` once
listening and stops on SIGTERM/SIGINT or when its stdin closes (`--uvloop` to use uvloop).
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import orjson

from failoverd.http1 import HttpClient
from tests.bench.forwarder import proxy_main
from tests.bench.upstream import until_stopped


class MinimalProxy(asyncio.Protocol):
    """One client connection: requests are answered in turn (keep-alive, pipelining)."""

    def __init__(self, client: HttpClient, base: str) -> None:
        self.client = client
        self.base = base
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = buf[:end].split(b"\r\n")
        _method, target, _version = lines[0].split(b" ", 2)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(buf) < end + 4 + length:
            return
        body = buf[end + 4:end + 4 + length]
        self.buffer = buf[end + 4 + length:]
        self.busy = True
        asyncio.ensure_future(self._forward(target.decode(), body))

    async def _forward(self, path: str, body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        try:
            model = orjson.loads(body)["model"]
            resp = await self.client.request(
                "POST", self.base + path, headers={"Content-Type": "application/json",
                                                   "Authorization": "Bearer bench"},
                data=body, connect_timeout=5)
            ctype = resp.headers.get("content-type", "application/json")
            head = (f"HTTP/1.1 {resp.status} {resp.reason}\r\nContent-Type: {ctype}\r\n"
                    f"x-model: {model}\r\n")
            if "content-length" in resp.headers:
                data = await resp.read()
                transport.write(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
            else:  # a stream: relayed as it comes
                transport.write(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
                while chunk := await resp.readline():  # as it comes (SSE lines)
                    transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                resp.release()  # the upstream connection back to the pool
                transport.write(b"0\r\n\r\n")
        except Exception as exc:  # noqa: BLE001 - a benchmark tool: report and close
            print(f"minimal proxy: {type(exc).__name__}: {exc}", file=sys.stderr)
            transport.close()
            return
        self.busy = False
        if self.buffer:
            self._next()


async def serve(path: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    async with HttpClient(keepalive_timeout=60) as client:
        base = f"http://127.0.0.1:{port}"
        server = await loop.create_unix_server(lambda: MinimalProxy(client, base), path,
                                               backlog=4096)
        print("READY", flush=True)
        await until_stopped()
        server.close()


def main(argv: list[str] | None = None) -> int:
    return proxy_main(argv, "tests.bench.minimal", __doc__ or "", serve)


if __name__ == "__main__":
    sys.exit(main())
