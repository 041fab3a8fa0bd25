"""The ceiling of any Python proxy: a byte pipe from a Unix socket to the upstream.

Each client connection gets its own upstream TCP connection and bytes are copied both ways
as they come, with no HTTP parsing at all (no body read, no JSON, no routing). Whatever a
proxy does beyond this costs throughput; the benchmark measures this pipe next to failoverd
so that "throughput vs direct" can be read against what Python on asyncio can do at all.

Run: `python -m tests.bench.forwarder --unix PATH --upstream-port N`; prints `READY` once
listening and stops on SIGTERM/SIGINT or when its stdin closes. Plain asyncio, like the
failoverd it is compared with (`--uvloop` to use uvloop).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, cast

from tests.bench.upstream import install_uvloop, until_stopped


class Pipe(asyncio.Protocol):
    """One side of a connection pair: what it receives, its peer writes."""

    def __init__(self, peer: Pipe | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # client bytes that came before the upstream connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.pending.append(data)
        else:
            peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # flow control: a peer that cannot keep up pauses this side's reading
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


def client_side(port: int) -> Pipe:
    down = Pipe()

    async def connect() -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(lambda: Pipe(down), "127.0.0.1", port)
        except OSError:
            if down.transport is not None:
                down.transport.close()
            return
        down.peer = up
        assert up.transport is not None
        for data in down.pending:
            up.transport.write(data)
        down.pending.clear()

    tasks.add(task := asyncio.ensure_future(connect()))
    task.add_done_callback(tasks.discard)
    return down


tasks: set[asyncio.Future[None]] = set()


async def serve(path: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: client_side(port), path, backlog=4096)
    print("READY", flush=True)
    await until_stopped()
    server.close()


def proxy_main(argv: list[str] | None, prog: str, doc: str,
               serve: Callable[[str, int], Coroutine[Any, Any, None]]) -> int:
    """The command line of a bench proxy: `--unix PATH --upstream-port N [--uvloop]`."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    p.add_argument("--unix", required=True, help="Unix socket path to listen on")
    p.add_argument("--upstream-port", type=int, required=True, help="upstream port on 127.0.0.1")
    p.add_argument("--uvloop", action="store_true")
    args = p.parse_args(argv)
    if args.uvloop:
        install_uvloop()
    asyncio.run(serve(args.unix, args.upstream_port))
    return 0


def main(argv: list[str] | None = None) -> int:
    return proxy_main(argv, "tests.bench.forwarder", __doc__ or "", serve)


if __name__ == "__main__":
    sys.exit(main())
