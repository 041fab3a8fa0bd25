"""Closed-loop HTTP/1.1 load generator for the benchmark (run as its own process).

`concurrency` connections (Unix socket or TCP, keep-alive) each send a request, wait for the
whole answer, and send the next, until `requests` answers have come back (after `warmup`
unrecorded ones). It speaks raw HTTP/1.1 through an asyncio.Protocol (uvloop when installed):
an HTTP client library would cost more CPU than the proxies it measures. Its own ceiling is
measured against the direct upstream in every run.

Prints one JSON object: rps, latency and time-to-first-byte-of-body percentiles (ms), status
counts, errors and the x-failoverd-* headers of the last answer.

`--hold` opens `concurrency` streams, prints `{"event": "holding", ...}` once every stream
has its first chunk, keeps them open until a line arrives on stdin (or `--hold-seconds`),
then closes them and prints the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

_PERF = time.perf_counter


class ResponseError(Exception):
    """The connection broke or the server spoke something we cannot parse."""


class Client(asyncio.Protocol):
    """One keep-alive connection; `request()` returns a future resolved with the answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.first_waiter: asyncio.Future[None] | None = None
        self.state = "idle"
        self.remaining = 0
        self.sent = 0.0
        self.first = 0.0
        self.status = 0
        self.head = b""

    # ------------------------------------------------------------------ transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for fut in (self.waiter, self.first_waiter):
            if fut is not None and not fut.done():
                fut.set_exception(ResponseError(f"connection lost: {exc}"))
                fut.exception()  # mark retrieved: only the awaited one matters

    def request(self, data: bytes) -> asyncio.Future[None]:
        if self.transport is None:
            raise ResponseError("not connected")
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        self.first_waiter = loop.create_future()
        self.state = "head"
        self.first = 0.0
        self.sent = _PERF()
        self.transport.write(data)
        return self.waiter

    # ------------------------------------------------------------------ parsing

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            self._parse()
        except (ValueError, ResponseError) as exc:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(ResponseError(f"unparsable response: {exc}"))
            if self.transport is not None:
                self.transport.close()

    def _got_body(self) -> None:
        if not self.first:
            self.first = _PERF()
            if self.first_waiter is not None and not self.first_waiter.done():
                self.first_waiter.set_result(None)

    def _done(self) -> None:
        self.state = "idle"
        if not self.first:
            self.first = _PERF()
        if self.first_waiter is not None and not self.first_waiter.done():
            self.first_waiter.set_result(None)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _parse(self) -> None:
        buf = self.buf
        while buf:
            if self.state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end])
                del buf[:end + 4]
                self.head = head
                self.status = int(head[9:12])
                low = head.lower()
                at = low.find(b"\r\ncontent-length:")
                if at >= 0:
                    stop = low.find(b"\r\n", at + 2)
                    self.remaining = int(low[at + 17:stop if stop >= 0 else len(low)])
                    self.state = "body"
                    if self.remaining == 0:
                        self._done()
                elif b"\r\ntransfer-encoding: chunked" in low:
                    self.state = "size"
                else:
                    raise ResponseError("neither Content-Length nor chunked")
            elif self.state == "body":
                self._got_body()
                take = min(self.remaining, len(buf))
                del buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self._done()
            elif self.state == "size":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";")[0], 16)
                del buf[:end + 2]
                if size == 0:
                    self.state = "trailer"
                else:
                    self.remaining = size + 2  # data and its CRLF
                    self.state = "chunk"
            elif self.state == "chunk":
                self._got_body()
                take = min(self.remaining, len(buf))
                del buf[:take]
                self.remaining -= take
                if self.remaining == 0:
                    self.state = "size"
            elif self.state == "trailer":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[:end + 2]
                if end == 0:
                    self._done()
            else:
                raise ResponseError(f"{len(buf)} unexpected bytes")


@dataclass
class Target:
    """Where to send: a Unix socket path or host:port, and the request bytes."""

    unix: str | None
    host: str
    port: int
    request: bytes

    async def connect(self) -> Client:
        loop = asyncio.get_running_loop()
        if self.unix:
            _, proto = await loop.create_unix_connection(Client, self.unix)
        else:
            _, proto = await loop.create_connection(Client, self.host, self.port)
        return proto


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    firsts: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    last_head: bytes = b""


def build_request(path: str, model: str, stream: bool, token: str, host: str) -> bytes:
    body: dict[str, Any] = {"model": model, "max_tokens": 16,
                            "messages": [{"role": "user", "content": "Say hello"}]}
    if stream:
        body["stream"] = True
    data = orjson.dumps(body)
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
             "Accept: text/event-stream" if stream else "Accept: application/json",
             f"Content-Length: {len(data)}"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def _connect_retrying(target: Target, gate: asyncio.Semaphore) -> Client:
    """Connects through a gate (a listen backlog is finite), retrying refusals a bounded time."""
    async with gate:
        for attempt in range(200):
            try:
                return await target.connect()
            except (ConnectionRefusedError, BlockingIOError, FileNotFoundError):
                if attempt == 199:
                    raise
                await asyncio.sleep(0.01)
    raise AssertionError("unreachable")


async def closed_loop(target: Target, requests: int, concurrency: int, warmup: int,
                      timeout: float) -> tuple[Stats, float]:
    """Runs the closed loop; returns the stats of the recorded requests and their wall time."""
    stats = Stats()
    gate = asyncio.Semaphore(64)
    clients = list(await asyncio.gather(*(_connect_retrying(target, gate)
                                     for _ in range(concurrency))))
    tickets = [warmup, requests]

    async def worker(slot: int, phase: int, record: bool) -> None:
        while tickets[phase] > 0:
            tickets[phase] -= 1
            client = clients[slot]
            try:
                if client.transport is None:  # the server closed it: reconnect
                    client = clients[slot] = await target.connect()
                await client.request(target.request)
            except (ResponseError, OSError):
                stats.errors += 1
                continue
            if record:
                done = _PERF()
                stats.latencies.append(done - client.sent)
                stats.firsts.append(client.first - client.sent)
                stats.statuses[client.status] = stats.statuses.get(client.status, 0) + 1
                stats.last_head = client.head

    async def phase(index: int, record: bool) -> None:
        await asyncio.gather(*(worker(slot, index, record) for slot in range(len(clients))))

    try:
        async with asyncio.timeout(timeout):
            if warmup:
                await phase(0, False)
            began = _PERF()
            await phase(1, True)
            elapsed = _PERF() - began
    except TimeoutError:
        elapsed = timeout
        stats.errors += 1
    finally:
        for c in clients:
            if c.transport is not None:
                c.transport.close()
    return stats, elapsed


async def hold(target: Target, concurrency: int, hold_seconds: float) -> dict[str, Any]:
    """Opens `concurrency` streams, reports once all have a first chunk, then waits."""
    gate = asyncio.Semaphore(64)
    clients: list[Client] = []
    began = _PERF()
    errors = 0

    async def open_one() -> None:
        nonlocal errors
        try:
            client = await _connect_retrying(target, gate)
            clients.append(client)
            client.request(target.request)
            assert client.first_waiter is not None
            await client.first_waiter
        except (ResponseError, OSError):
            errors += 1

    tasks = [asyncio.ensure_future(open_one()) for _ in range(concurrency)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks), hold_seconds)
    ready = sum(1 for c in clients if c.first and c.transport is not None)
    print(orjson.dumps({"event": "holding", "open": ready, "errors": errors,
                        "seconds": round(_PERF() - began, 3)}).decode(), flush=True)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), hold_seconds)
    still_open = sum(1 for c in clients if c.transport is not None and c.state != "idle")
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    for t in tasks:
        t.cancel()
    return {"open": ready, "still_open_at_release": still_open, "errors": errors}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of unsorted `values` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def summary(stats: Stats, elapsed: float) -> dict[str, Any]:
    ms = 1000.0
    headers = {}
    for line in stats.last_head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower().startswith(b"x-failoverd-"):
            headers[name.decode().lower()] = value.strip().decode()
    n = len(stats.latencies)
    return {
        "requests": n, "seconds": round(elapsed, 4), "rps": round(n / elapsed, 1) if elapsed else 0,
        "p50_ms": round(percentile(stats.latencies, 50) * ms, 4),
        "p90_ms": round(percentile(stats.latencies, 90) * ms, 4),
        "p99_ms": round(percentile(stats.latencies, 99) * ms, 4),
        "mean_ms": round(sum(stats.latencies) / n * ms, 4) if n else 0.0,
        "ttfb_p50_ms": round(percentile(stats.firsts, 50) * ms, 4),
        "ttfb_p99_ms": round(percentile(stats.firsts, 99) * ms, 4),
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "errors": stats.errors, "headers": headers,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tests.bench.load", description=__doc__.split("\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", help="Unix socket path")
    where.add_argument("--tcp", help="host:port (loopback only)")
    p.add_argument("--path", default="/v1/chat/completions")
    p.add_argument("--model", default="m")
    p.add_argument("--token", default="", help="bearer token (failoverd's TCP listener)")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--timeout", type=float, default=120.0, help="cap on the whole run")
    p.add_argument("--hold", action="store_true", help="open streams and hold them (RSS)")
    p.add_argument("--hold-seconds", type=float, default=30.0)
    p.add_argument("--no-uvloop", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    host, port = "failoverd", 0
    if args.tcp:
        host, _, port_text = args.tcp.rpartition(":")
        port = int(port_text)
        if host not in ("127.0.0.1", "localhost", "::1"):
            print("tests.bench.load: loopback targets only", file=sys.stderr)
            return 2
    target = Target(args.unix, host, port,
                    build_request(args.path, args.model, args.stream, args.token, host))
    if not args.no_uvloop:
        from tests.bench.upstream import install_uvloop
        install_uvloop()
    if args.hold:
        result = asyncio.run(hold(target, args.concurrency, args.hold_seconds))
    else:
        stats, elapsed = asyncio.run(closed_loop(target, args.requests, args.concurrency,
                                                 args.warmup, args.timeout))
        result = summary(stats, elapsed)
    result["pid"] = os.getpid()
    print(orjson.dumps(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
