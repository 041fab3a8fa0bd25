"""Abuse review: the daemon attacked by a hostile local client (request smuggling, resource
exhaustion, access) and by a hostile or broken upstream (a raw asyncio server on 127.0.0.1
answering whatever bytes a test scripts). Real sockets, the real daemon in-process, or as a
process with a lowered file limit."""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Daemon
from tests.fakes.serving import StreamServer
from tests.helpers import one_model_config, until, until_async
from tests.test_fastpath import (
    ASK,
    CHAT,
    NO_PROBES,
    closed_by_daemon,
    connect,
    content,
    exchange,
    get,
    post,
    read_answer,
)
from tests.test_lifecycle import launch, toml  # noqa: F401, F811  (launch: a fixture)

WAIT = 10.0

# ---------------------------------------------------------------------- a hostile upstream

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK_BODY = orjson.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {
                            "role": "assistant", "content": "fine"}}]})
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(OK_BODY), OK_BODY)


class RawUpstream(StreamServer):
    """An upstream that reads each request (head and Content-Length body) and answers with
    the next scripted `Answer`, else `OK`. `requests` counts requests, `connections` the
    connections it accepted."""

    def __init__(self) -> None:
        super().__init__()
        self.url = ""
        self.script: list[Answer] = []
        self.requests = 0
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> RawUpstream:
        await self._listen(self._serve)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = self._track()
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                length = 0
                for line in head.split("\r\n"):
                    if line.startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                await reader.readexactly(length)
                self.requests += 1
                answer = self.script.pop(0) if self.script else None
                if answer is None:
                    writer.write(OK)
                    await writer.drain()
                else:
                    await answer(reader, writer)
                    if writer.is_closing():
                        break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


@asynccontextmanager
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    upstream = await RawUpstream().start()
    try:
        yield upstream
    finally:
        await upstream.close()


def sends(data: bytes, *, close: bool = False) -> Answer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        if close:
            writer.close()
    return answer


def endless(head: bytes, piece: bytes) -> Answer:
    """`head`, then `piece` over and over until the daemon goes away."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(head)
        while True:
            writer.write(piece)
            await writer.drain()
    return answer


_BOMB: list[bytes] = []


def bomb() -> bytes:
    """128 MiB of zeros as about 128 KB of gzip (made once)."""
    if not _BOMB:
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        zeros = bytes(1 << 20)
        _BOMB.append(b"".join([*(packer.compress(zeros) for _ in range(128)), packer.flush()]))
    return _BOMB[0]


async def upstream_daemon(start_daemon: Any, upstream: RawUpstream, *, provider: str = "",
                          head: str = "") -> Daemon:
    d: Daemon = await start_daemon(
        head + one_model_config(upstream.url, provider=provider, model="max_retries = 0\n",
                                tail='[routing]\nprimary = "a/m"\nwhen_all_unavailable = "fail"\n'
                                     "deadline = 8\n" + NO_PROBES))
    return d


def attempt(answer: Any) -> dict[str, Any]:
    """The one attempt of a 503 no_model_available."""
    assert answer.status == 503, answer
    (one,) = answer.json()["error"]["attempts"]
    result: dict[str, Any] = one
    return result


async def test_a_gzip_bomb_is_refused_before_it_fills_the_memory(start_daemon: Any) -> None:
    """A 200 whose ~128 KB of gzip decode to 128 MiB was decoded whole, in one piece (any
    ratio: gigabytes from a few MB); the decoded body is now held to 64 MiB, the answer an
    invalid_response that fails over."""
    data = bomb()
    async with raw_upstream() as upstream:
        d = await upstream_daemon(start_daemon, upstream)
        upstream.script.append(sends(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(data), data)))
        one = attempt(await exchange(d.socket, post(ASK)))
        assert one["reason"] == "invalid_response"
        assert "decodes to more than 67108864 bytes" in one["message"]
        assert content(await exchange(d.socket, post(ASK))) == "fine"


async def test_a_body_without_end_is_cut_at_64_mib(start_daemon: Any) -> None:
    """A 200 read to its close whose upstream never closes was held in memory until the
    provider's timeout (here 120 s: gigabytes over loopback); now cut past 64 MiB."""
    async with raw_upstream() as upstream:
        d = await upstream_daemon(start_daemon, upstream, provider="timeout = 120\n")
        upstream.script.append(endless(b"HTTP/1.1 200 OK\r\nContent-Type: application/json"
                                       b"\r\n\r\n", b"x" * (1 << 20)))
        one = attempt(await exchange(d.socket, post(ASK)))
        assert one["reason"] == "invalid_response"
        assert "larger than 67108864 bytes" in one["message"]
        assert content(await exchange(d.socket, post(ASK))) == "fine"


def test_a_compressed_stream_may_decode_to_more_than_one_read() -> None:
    """The cap counts the whole body across reads, and a normal gzip body is untouched."""
    from failoverd.http1.parser import Head, ResponseParser

    class Sink:
        def __init__(self) -> None:
            self.body = bytearray()
            self.done = False

        def on_head(self, head: Head) -> None:
            pass

        def on_body(self, data: bytes) -> None:
            self.body += data

        def on_complete(self) -> None:
            self.done = True

    text = b"data: {}\n\n" * 100_000
    packed = gzip.compress(text) + gzip.compress(text)  # two members
    sink = Sink()
    parser = ResponseParser(sink)
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
                % len(packed))
    for i in range(0, len(packed), 1000):
        parser.feed(packed[i:i + 1000])
    assert sink.done and bytes(sink.body) == text * 2


# ---------------------------------------------------------------------- file descriptors


@pytest.mark.parametrize("uvloop", ["0", "1"])
async def test_idle_client_connections_cannot_starve_the_upstream_of_file_descriptors(
        short_dir: Path, fake_openai: Any, launch: Any, uvloop: str) -> None:  # noqa: F811
    """With no cap, a local client holding enough idle connections took every file
    descriptor: each upstream connect then failed with EMFILE, a `connection` failure held
    against the model's breaker (three open it, for everyone). Client connections now hold at
    most half the limit; the ones past it are closed at once, and the daemon recovers."""
    fake = await fake_openai()
    d = await launch(toml(short_dir, {"a": fake}), env={"FAILOVERD_UVLOOP": uvloop},
                     argv=["prlimit", "--nofile=400:400", "--"])
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(300):
            held.append(await unix_connection(d.socket))
        # the last ones are closed by the daemon without a word
        assert await closed_by_daemon(held[-1][0])
        for reader, writer in held[:3]:  # admitted: served, upstream connects work
            writer.write(post(ASK))
            assert content(await read_answer(reader)) == fake.reply
    finally:
        for _, writer in held:
            writer.close()
    # once the daemon has seen them go, it admits again
    await until(lambda: len(os.listdir(f"/proc/{d.proc.pid}/fd")) < 100, WAIT)
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ASK))
        assert content(await read_answer(reader)) == fake.reply
    # what was refused is counted, and the connections open are a gauge (this one only, once
    # the daemon has seen the one before it go: a close and a connect may come in either order)
    async def gauge_is_one() -> bool:
        metrics = (await exchange(d.socket, get("/metrics"))).body.decode()
        refused = _sample(metrics, "failoverd_client_connections_refused_total")
        assert 0 < refused <= 300 - 3
        return _sample(metrics, "failoverd_client_connections") == 1

    await until_async(gauge_is_one, WAIT)
    assert "new ones are closed at once" in d.log_text()
    assert "Too many open files" not in d.log_text()


# ---------------------------------------------------------------------- found correct


async def test_a_redirect_is_not_followed_and_unsolicited_bytes_drop_the_connection(
        start_daemon: Any) -> None:
    """A 302 to another (loopback) server is a failure, never followed; an answer to a
    request never sent, arriving on an idle pooled connection, closes it (not the next
    request's answer)."""
    async with raw_upstream() as upstream, raw_upstream() as elsewhere:
        d = await upstream_daemon(start_daemon, upstream)
        upstream.script.append(sends(b"HTTP/1.1 302 Found\r\nLocation: %s/chat/completions\r\n"
                                     b"Content-Length: 0\r\n\r\n" % elsewhere.url.encode()))
        one = attempt(await exchange(d.socket, post(ASK)))
        assert one["reason"] == "invalid_response", one
        assert elsewhere.requests == 0
        assert content(await exchange(d.socket, post(ASK))) == "fine"
        for writer in upstream.writers:  # a forged answer on the idle connection
            if not writer.is_closing():
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await until(lambda: all(w.is_closing() for w in upstream.writers), WAIT)
        assert content(await exchange(d.socket, post(ASK))) == "fine"


async def test_an_upstream_error_passed_on_cannot_add_header_lines(start_daemon: Any) -> None:
    """The Content-Type of a 400 passed through unchanged carries a bare CR and a header of
    the upstream's: the client gets the 400 and the body, with no header line added."""
    async with raw_upstream() as upstream:
        d = await upstream_daemon(start_daemon, upstream)
        body = b'{"error": {"message": "bad thing", "type": "invalid_request_error"}}'
        bad = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\rSet-Cookie: a=b"
               b"\r\nSet-Cookie: c=d\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        for path in (CHAT, CHAT + "?via=aiohttp"):
            upstream.script.append(sends(bad))
            answer = await exchange(d.socket, post(ASK, path))
            assert answer.status == 400 and answer.body == body
            assert "Set-Cookie" not in answer.headers
            assert "\r" not in answer.headers["Content-Type"]


async def test_running_out_of_descriptors_is_never_held_against_a_model(
        short_dir: Path, fake_openai: Any, launch: Any) -> None:  # noqa: F811
    """Every admitted client holds a request to an upstream that hangs, so the upstream
    connects run out of file descriptors (EMFILE). That is failoverd's own trouble: the
    request fails over and ends in a 503 that says so, but no breaker counts it (three such
    failures opened the model for everyone, and the state file kept it open)."""
    a, b = await fake_openai(default="hang"), await fake_openai(default="hang")
    d = await launch(toml(short_dir, {"a": a, "b": b}), argv=["prlimit", "--nofile=80:80", "--"])
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(38):  # under the cap of half the limit: all admitted
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(d.socket),
                                                    WAIT)
            writer.write(post(ASK))
            held.append((reader, writer))
        # those whose upstream connects failed answer at once; the others hang
        reads = [asyncio.create_task(read_answer(reader)) for reader, _ in held]
        await asyncio.wait(reads, timeout=2.0)
        answers = [r.result() for r in reads if r.done() and r.exception() is None]
        for r in reads:
            r.cancel()
        assert answers, "no upstream connect ran out of descriptors"
        for answer in answers:
            assert answer.status == 503
            messages = {x["message"] for x in answer.json()["error"]["attempts"]}
            assert any(m.startswith("failoverd is out of resources: Too many open files")
                       for m in messages), messages
    finally:
        for _, writer in held:
            writer.close()
    await until(lambda: len(os.listdir(f"/proc/{d.proc.pid}/fd")) < 40, WAIT)
    async with connect(d.socket) as (reader, writer):
        writer.write(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n")
        status = (await read_answer(reader)).json()
    for model in ("a/gpt-a", "b/gpt-b"):
        assert status["models"][model]["state"] == "closed", status["models"][model]
        assert status["models"][model]["consecutive_failures"] == 0


async def unix_connection(path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client connection that is one. When the daemon's listen backlog is full, a
    non-blocking connect to a Unix socket fails with EAGAIN and nothing is connected, but
    asyncio's sock_connect takes that for a connect in progress and hands back a socket that
    is connected to nothing: never served, never closed by the daemon (300 connections in a
    burst fill a backlog of 128 whenever the daemon is slower to accept than this loop to
    connect: under load, and often under uvloop). The connect is tried again instead."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(WAIT):
            while True:
                try:
                    sock.connect(path)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.002)
        return await asyncio.open_unix_connection(sock=sock)
    except BaseException:
        sock.close()
        raise


def _sample(text: str, name: str) -> float:
    """The value of the unlabelled sample `name` in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")
