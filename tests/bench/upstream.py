"""A near-zero-latency fake OpenAI-compatible upstream for the benchmark (a separate process).

A bare asyncio.Protocol speaking just enough HTTP/1.1 (keep-alive, Content-Length request
bodies, chunked streaming responses), on uvloop when it is installed: a real aiohttp server
costs several times more CPU per request, which would be measured as "upstream" time.

The path prefix picks the behaviour, so failoverd providers, LiteLLM deployments and direct
clients can select it through their base URL alone:

- `/v1/...`       answers at once (JSON completion, or an SSE stream sent in one write)
- `/429/v1/...`   answers 429 rate_limit_exceeded at once, without Retry-After
- `/slow/v1/...`  streams slowly: a first chunk at once, then one every `--slow-interval`
                  seconds until `--slow-seconds` have passed (keeps streams open)
- `/long/v1/...`  a long stream at once: `--long-chunks` word chunks between the first and
                  the last (a proxy's cost per relayed chunk)
- `GET .../models` lists one model (prober traffic)

Run: `python -m tests.bench.upstream [--port 0]`; it prints `READY <port>` once listening and
stops on SIGTERM/SIGINT or when its stdin closes (so it never outlives the orchestrator).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from typing import cast

import orjson

_COMPLETION = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "m",
    "system_fingerprint": "fp_bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the bench"},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
})
_MODELS = orjson.dumps({"object": "list", "data": [
    {"id": "m", "object": "model", "created": 0, "owned_by": "bench"}]})
_RATE_LIMITED = orjson.dumps({"error": {
    "message": "Rate limit reached for m on requests per min (RPM): Limit 1, Used 1.",
    "type": "requests", "param": None, "code": "rate_limit_exceeded"}})


def _chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
    event = orjson.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                          "created": 1700000000, "model": "m",
                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    data = b"data: " + event + b"\n\n"
    # one HTTP chunk per SSE event, as real upstreams send them
    return b"%x\r\n%s\r\n" % (len(data), data)


_DONE = b"data: [DONE]\n\n"
_DONE_CHUNK = b"%x\r\n%s\r\n" % (len(_DONE), _DONE) + b"0\r\n\r\n"
_STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
_FIRST = _chunk({"role": "assistant", "content": ""})
_WORD = _chunk({"content": " word"})
_STREAM_FAST = (_STREAM_HEAD + _FIRST + _chunk({"content": "Hello"}) + _chunk({"content": " from"})
                + _chunk({"content": " the bench"}) + _chunk({}, "stop") + _DONE_CHUNK)


def _response(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


_OK = _response(b"200 OK", _COMPLETION)
_429 = _response(b"429 Too Many Requests", _RATE_LIMITED)
_MODELS_OK = _response(b"200 OK", _MODELS)
_NOT_FOUND = _response(b"404 Not Found", b'{"error":{"message":"no such path","type":"x"}}')
_BAD = _response(b"400 Bad Request", b'{"error":{"message":"bad request","type":"x"}}',
                 b"Connection: close\r\n")
_MAX_HEAD = 64 * 1024


class Settings:
    """The slow and long stream shapes, shared by every connection."""

    def __init__(self, slow_interval: float, slow_seconds: float, long_chunks: int = 200) -> None:
        self.slow_interval = slow_interval
        self.slow_seconds = slow_seconds
        self.long_stream = (_STREAM_HEAD + _FIRST + _WORD * long_chunks + _chunk({}, "stop")
                            + _DONE_CHUNK)


class Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them, in order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.slow: asyncio.TimerHandle | None = None
        self.slow_until = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.slow is not None:
            self.slow.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None and self.slow is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD:
                    self._close_with(_BAD)
                return
            head = bytes(self.buf[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17:stop if stop >= 0 else len(head)])
            elif b"\r\ntransfer-encoding:" in head:
                self._close_with(_BAD)  # no client of the benchmark sends chunked bodies
                return
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = bytes(self.buf[end + 4:total])
            del self.buf[:total]
            self._answer(head, body)

    def _close_with(self, response: bytes) -> None:
        assert self.transport is not None
        self.transport.write(response)
        self.transport.close()

    def _answer(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        line_end = head.find(b"\r\n")
        _method, _, rest = head[:line_end].partition(b" ")
        path = rest.partition(b" ")[0]
        if path.endswith(b"/models"):
            self.transport.write(_MODELS_OK)
        elif not path.endswith(b"/chat/completions"):
            self.transport.write(_NOT_FOUND)
        elif path.startswith(b"/429/"):
            self.transport.write(_429)
        elif b'"stream":true' not in body and b'"stream": true' not in body:
            self.transport.write(_OK)
        elif path.startswith(b"/long/"):
            self.transport.write(self.settings.long_stream)
        elif path.startswith(b"/slow/"):
            self.transport.write(_STREAM_HEAD + _FIRST)
            self.slow_until = time.monotonic() + self.settings.slow_seconds
            self._schedule_slow()
        else:
            self.transport.write(_STREAM_FAST)
        if b"\r\nconnection: close" in head and self.slow is None:
            self.transport.close()

    def _schedule_slow(self) -> None:
        loop = asyncio.get_running_loop()
        self.slow = loop.call_later(self.settings.slow_interval, self._slow_tick)

    def _slow_tick(self) -> None:
        self.slow = None
        if self.transport is None:
            return
        if time.monotonic() >= self.slow_until:
            self.transport.write(_chunk({}, "stop") + _DONE_CHUNK)
            if self.buf:  # a pipelined request waited behind the stream
                self.data_received(b"")
            return
        self.transport.write(_WORD)
        self._schedule_slow()


async def serve(host: str, port: int, settings: Settings) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(settings), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    await until_stopped()
    server.close()


async def until_stopped() -> None:
    """Returns on SIGTERM/SIGINT, or when stdin closes: the orchestrator is gone, so stop
    rather than linger."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    with contextlib.suppress(OSError, ValueError):
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        eof = asyncio.ensure_future(reader.read())
        eof.add_done_callback(lambda _f: stop.set())
    await stop.wait()


def install_uvloop() -> bool:
    """Uses uvloop when it is importable (the benchmark tools must not be the bottleneck)."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests.bench.upstream", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--slow-interval", type=float, default=0.5)
    p.add_argument("--slow-seconds", type=float, default=60.0)
    p.add_argument("--long-chunks", type=int, default=200)
    p.add_argument("--no-uvloop", action="store_true")
    args = p.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("the benchmark upstream listens on loopback only")
    if not args.no_uvloop:
        install_uvloop()
    asyncio.run(serve(args.host, args.port, Settings(args.slow_interval, args.slow_seconds,
                                                     args.long_chunks)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
