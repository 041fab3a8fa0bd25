"""The fast path (api/fastpath.py) end to end: every client connection starts on it, the common
proxied request (a plain answer or a stream) is answered there, anything else goes to aiohttp's
server with the bytes not yet read. Raw HTTP over the daemon's real sockets, fakes as real
upstreams; which path answered is read from the supervisor's `fast` (`served` answers,
`handed_off` connections)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, ClassVar

import orjson
import pytest
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

from failoverd import config as config_mod
from failoverd.api.fastpath import FastPath
from failoverd.supervisor import Supervisor
from tests.conftest import Daemon, daemon_toml
from tests.fakes.base import fake_fixture
from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO, one_model_config, pair_config, tcp_listener, until

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
NO_PROBES = '[probes]\nkind = "none"\n'
MAX_BODY = 4096  # daemon.max_body_bytes of the `daemon` fixture
ASK = {"model": "default", "messages": HELLO}
STREAM = {**ASK, "stream": True}
WAIT = 5.0  # the bound on every wait for the daemon
IDLE = 0.2  # Supervisor idle_timeout: the loop's own timer, which no test clock advances


# ---------------------------------------------------------------------- raw HTTP


@dataclass
class Answer:
    """One HTTP answer as it came over the wire."""

    version: str
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def post(body: bytes | dict[str, Any], path: str = CHAT, *, headers: str = "",
         version: str = "HTTP/1.1") -> bytes:
    """A POST with a Content-Length body; `headers` are more field lines, each with its CRLF."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return (f"POST {path} {version}\r\nHost: failoverd\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(raw)}\r\n{headers}\r\n").encode() + raw


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: failoverd\r\n\r\n".encode()


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
        if size == 0:
            assert await reader.readuntil(b"\r\n") == b"\r\n"  # no trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        assert await reader.readexactly(2) == b"\r\n"


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """The next answer on a connection (a 1xx answer too, without a body)."""
    async with asyncio.timeout(WAIT):
        head = (await reader.readuntil(b"\r\n\r\n"))[:-4].decode("latin-1")
        line, *fields = head.split("\r\n")
        version, status, _ = line.split(" ", 2)
        headers: CIMultiDict[str] = CIMultiDict()
        for field_line in fields:
            name, _, value = field_line.partition(":")
            headers.add(name, value.strip())
        if int(status) < 200:
            body = b""
        elif "Content-Length" in headers:
            body = await reader.readexactly(int(headers["Content-Length"]))
        elif headers.get("Transfer-Encoding") == "chunked":
            body = await _chunked(reader)
        else:
            body = await reader.read()
    return Answer(version, int(status), headers, body)


async def closed_by_daemon(reader: asyncio.StreamReader) -> bool:
    """Whether the daemon closes the connection with nothing more to say (bounded)."""
    async with asyncio.timeout(WAIT):
        return await reader.read() == b""


@asynccontextmanager
async def connect(where: str | tuple[str, int]
                  ) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw client connection to a Unix socket path or a (host, port)."""
    if isinstance(where, str):
        reader, writer = await asyncio.open_unix_connection(where)
    else:
        reader, writer = await asyncio.open_connection(*where)
    try:
        yield reader, writer
    finally:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()


async def exchange(where: str | tuple[str, int], data: bytes) -> Answer:
    """`data` sent on a fresh connection: the first answer."""
    async with connect(where) as (reader, writer):
        writer.write(data)
        return await read_answer(reader)


def fast(d: Daemon | Supervisor) -> FastPath:
    sup = d.sup if isinstance(d, Daemon) else d
    assert sup.fast is not None
    return sup.fast


def paths(d: Daemon | Supervisor) -> tuple[int, int]:
    """(answers the fast path wrote, connections it handed to aiohttp)."""
    return fast(d).served, fast(d).handed_off


def content(answer: Answer) -> str:
    assert answer.status == 200, answer
    text: str = answer.json()["choices"][0]["message"]["content"]
    return text


def streamed(answer: Answer) -> str:
    """The text of an OpenAI stream that ended with [DONE]."""
    assert answer.status == 200, answer
    assert answer.headers["Content-Type"] == "text/event-stream"
    events = [line[6:] for line in answer.body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]", events[-1]
    return "".join(orjson.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-1])


def inflight(d: Daemon) -> int:
    assert d.sup.service is not None
    return d.sup.service.inflight


# ---------------------------------------------------------------------- fixtures


@dataclass
class WatchedOpenAI(FakeOpenAI):
    """A FakeOpenAI whose chat handler knows when the daemon stopped listening to it: cancelled
    while it waits, or its stream written to a connection the daemon closed."""

    handler_cancellation: ClassVar[bool] = True
    gone: asyncio.Event = field(default_factory=asyncio.Event, kw_only=True)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            return await super()._chat(request)
        except (asyncio.CancelledError, ConnectionError):
            self.gone.set()
            raise


watched_openai = fake_fixture(WatchedOpenAI, "watched_openai")


@pytest.fixture
async def daemon(fake_openai: Any, start_daemon: Any) -> tuple[FakeOpenAI, Daemon]:
    """One fake OpenAI upstream serving a/m behind a daemon taking bodies up to MAX_BODY."""
    fake = await fake_openai()
    d = await start_daemon(f"max_body_bytes = {MAX_BODY}\n"
                           + one_model_config(fake.url, tail=NO_PROBES))
    return fake, d


@asynccontextmanager
async def own_daemon(short_dir: Path, body: str, idle_timeout: float = IDLE
                     ) -> AsyncIterator[tuple[Supervisor, str]]:
    """A daemon started here rather than by start_daemon, which keeps the 75 s idle_timeout
    and the test's event loop: (its supervisor, its socket)."""
    sock = str(short_dir / "own.sock")
    path = short_dir / "own.toml"
    path.write_text(daemon_toml(sock, str(short_dir / "own-state"), body))
    sup = Supervisor(config_mod.load(path, env={}), config_path=str(path),
                     handle_signals=False, idle_timeout=idle_timeout)
    task = asyncio.create_task(sup.run())
    try:
        await asyncio.wait_for(sup.ready.wait(), 10)
        yield sup, sock
    finally:
        sup.request_stop()
        await asyncio.wait_for(task, 30)


# ---------------------------------------------------------------------- served here


async def test_plain_chat_is_served_by_the_fast_path_and_the_connection_kept(
        daemon: tuple[FakeOpenAI, Daemon]) -> None:
    fake, d = daemon
    async with connect(d.socket) as (reader, writer):
        for n in (1, 2):
            writer.write(post(ASK))
            answer = await read_answer(reader)
            assert content(answer) == fake.reply
            assert answer.version == "HTTP/1.1"
            assert answer.headers["x-failoverd-model"] == "a/m"
            assert answer.headers["x-failoverd-attempts"] == "1"
            assert answer.headers["Content-Type"] == "application/json"
            assert int(answer.headers["Content-Length"]) == len(answer.body)
            assert answer.headers["Server"] == SERVER_SOFTWARE
            assert abs(parsedate_to_datetime(answer.headers["Date"]).timestamp()
                       - time.time()) < 60
            assert "Connection" not in answer.headers  # kept: HTTP/1.1's default
            for name in ("Content-Length", "Date", "Server", "Content-Type"):
                assert len(answer.headers.getall(name)) == 1, name
            assert paths(d) == (n, 0)
    # a real client (the openai SDK over httpx) gets the same
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hello"}])
    assert raw.parse().choices[0].message.content == fake.reply
    assert raw.headers["x-failoverd-model"] == "a/m"
    assert paths(d) == (3, 0)
    assert [r.body["messages"] for r in fake.chat_requests()] == [HELLO] * 3


async def test_pipelined_requests_are_answered_in_order(fake_openai: Any,
                                                       start_daemon: Any) -> None:
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(pair_config(a, b))
    a.push("slow:0.2")  # served one at a time: b's quick answer does not overtake a's
    requests = [post({"model": model, "messages": HELLO})
                for model in ("a/gpt-a", "b/gpt-b", "a/gpt-a")]
    async with connect(d.socket) as (reader, writer):
        writer.write(b"".join(requests))  # one write
        answers = [await read_answer(reader) for _ in requests]
    assert [content(x) for x in answers] == ["from a", "from b", "from a"]
    assert [x.headers["x-failoverd-model"] for x in answers] == ["a/gpt-a", "b/gpt-b",
                                                                 "a/gpt-a"]
    assert paths(d) == (3, 0)


async def test_pipelined_streams_and_answers_then_the_connection_goes_to_aiohttp(
        daemon: tuple[FakeOpenAI, Daemon]) -> None:
    """Streams and plain answers, then what the fast path does not serve, all in one write:
    answered in order, the rest of the connection's life by aiohttp."""
    fake, d = daemon
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ASK) + post(STREAM) + post({**ASK, "max_tokens": 50}, MESSAGES)
                     + post(STREAM) + get("/v1/health") + post(b"{nope"))
        answers = [await read_answer(reader) for _ in range(6)]
        plain, stream, anthropic_shape, stream_again, health, bad = answers
        assert content(plain) == fake.reply
        assert streamed(stream) == streamed(stream_again) == fake.reply
        assert anthropic_shape.status == 200
        assert anthropic_shape.json()["content"] == [{"type": "text", "text": fake.reply}]
        assert health.status == 200 and health.json()["status"] == "ok"
        assert bad.status == 400  # answered by aiohttp: the connection is no longer ours
        assert "request body is not valid JSON" in bad.json()["error"]["message"]
        assert paths(d) == (4, 1)
        writer.write(post(ASK))
        assert content(await read_answer(reader)) == fake.reply
    assert paths(d) == (4, 1)


async def test_a_client_sending_far_ahead_is_paused_and_every_request_answered(
        daemon: tuple[FakeOpenAI, Daemon]) -> None:
    """Past max_body_bytes and 64 KiB more sent ahead of a request being served, the
    connection stops being read (not dropped); the rest is served when it is read again,
    a last request that is aiohttp's included."""
    fake, d = daemon
    fake.push("slow:0.3")
    filler = post({**ASK, "messages": [{"role": "user", "content": "p" * 3000}]})
    ahead = 40  # about 125 KB
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ASK))
        await until(lambda: inflight(d) == 1)
        (conn,) = fast(d).connections
        writer.write(filler * ahead + get("/v1/health"))
        await until(lambda: conn.reading_paused)
        for _ in range(ahead + 1):
            assert content(await read_answer(reader)) == fake.reply
        health = await read_answer(reader)
        assert health.status == 200 and health.json()["status"] == "ok"
    assert paths(d) == (ahead + 1, 1)
    assert len(fake.chat_requests()) == ahead + 1


async def _wait_buffered(d: Daemon, size: int) -> None:
    """Until the daemon's one fast-path connection holds `size` unconsumed bytes: each piece
    is then known to have arrived on its own."""
    await until(lambda: len(fast(d).connections) == 1)
    (conn,) = fast(d).connections
    async with asyncio.timeout(WAIT):
        while conn.size < size:
            await asyncio.sleep(0)
    assert conn.size == size and conn.task is None


async def test_a_request_arriving_in_pieces_is_answered(
        daemon: tuple[FakeOpenAI, Daemon]) -> None:
    fake, d = daemon
    request = post(ASK)
    head = request.index(b"\r\n\r\n") + 4
    byte_by_byte = list(range(1, len(request)))
    # the head split in its middle and before its last CRLF, the body split twice
    pieces = [head // 2, head - 2, head + 3, head + 10]
    async with connect(d.socket) as (reader, writer):
        for cuts in (byte_by_byte, pieces):
            bounds = [0, *cuts, len(request)]
            for start, stop in zip(bounds[:-2], bounds[1:-1], strict=True):
                writer.write(request[start:stop])
                await _wait_buffered(d, stop)
            assert paths(d) == (fast(d).served, 0)
            writer.write(request[bounds[-2]:])
            assert content(await read_answer(reader)) == fake.reply
    assert paths(d) == (2, 0)
    assert [r.body["messages"] for r in fake.chat_requests()] == [HELLO] * 2


async def test_an_anthropic_request_is_served_in_the_anthropic_shape(
        daemon: tuple[FakeOpenAI, Daemon]) -> None:
    fake, d = daemon
    answer = await exchange(d.socket, post({**ASK, "max_tokens": 50}, MESSAGES))
    assert answer.status == 200
    assert answer.headers["x-failoverd-model"] == "a/m"
    reply = answer.json()
    assert reply["type"] == "message" and reply["role"] == "assistant"
    assert reply["content"] == [{"type": "text", "text": fake.reply}]
    assert reply["stop_reason"] == "end_turn"
    assert reply["usage"]["output_tokens"] > 0
    # its errors have that shape too
    bad = await exchange(d.socket, post(b"[1,", MESSAGES))
    assert bad.status == 400
    assert bad.json()["type"] == "error"
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert "request body is not valid JSON" in bad.json()["error"]["message"]
    assert paths(d) == (2, 0)
    # as Claude Code asks (the SDK's beta client): the same path, errors in the same shape
    beta = MESSAGES + "?beta=true"
    answer = await exchange(d.socket, post({**ASK, "max_tokens": 50}, beta))
    assert answer.status == 200 and answer.json()["type"] == "message"
    bad = await exchange(d.socket, post(b"[1,", beta))
    assert bad.status == 400 and bad.json()["type"] == "error"
    assert paths(d) == (4, 0)


async def test_a_stream_is_served_by_the_fast_path_and_the_connection_kept(
        daemon: tuple[FakeOpenAI, Daemon]) -> None:
    fake, d = daemon
    async with connect(d.socket) as (reader, writer):
        writer.write(post(STREAM))
        answer = await read_answer(reader)
        assert streamed(answer) == fake.reply
        assert answer.version == "HTTP/1.1"
        assert answer.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in answer.headers
        assert answer.headers["x-failoverd-model"] == "a/m"
        assert answer.headers["Cache-Control"] == "no-cache"
        assert answer.headers["Server"] == SERVER_SOFTWARE and "Date" in answer.headers
        assert paths(d) == (1, 0)
        writer.write(post(ASK))  # the same connection, after the stream's last chunk
        assert content(await read_answer(reader)) == fake.reply
        writer.write(post({**STREAM, "max_tokens": 50}, MESSAGES))
        anthropic_stream = await read_answer(reader)
    assert paths(d) == (3, 0)
    assert anthropic_stream.status == 200
    names = [line[7:] for line in anthropic_stream.body.split(b"\n")
             if line.startswith(b"event: ")]
    assert names[0] == b"message_start" and names[-1] == b"message_stop"
    assert "".join(orjson.loads(line[6:])["delta"]["text"]
                   for line in anthropic_stream.body.split(b"\n")
                   if line.startswith(b"data: ") and b'"text_delta"' in line) == fake.reply
    assert [r.body.get("stream") for r in fake.chat_requests()] == [True, None, True]


async def test_a_stream_to_a_slow_reader_waits_for_it_and_arrives_whole(
        fake_openai: Any, start_daemon: Any) -> None:
    """A stream write waits while the client is not reading (the transport paused writing):
    nothing is lost or reordered, and a request pipelined behind it is answered after it."""
    fake = await fake_openai(reply=" ".join(str(i % 10) * 30000 for i in range(60)))
    d = await start_daemon(one_model_config(fake.url, tail=NO_PROBES))
    async with connect(d.socket) as (reader, writer):
        writer.write(post(STREAM) + post(ASK))
        await until(lambda: len(fast(d).connections) == 1)
        (conn,) = fast(d).connections
        await until(lambda: conn.writing_paused)  # 1.8 MB: more than the socket holds
        assert inflight(d) == 1
        assert streamed(await read_answer(reader)) == fake.reply
        assert content(await read_answer(reader)) == fake.reply
    assert paths(d) == (2, 0)


async def test_a_stream_to_a_client_that_stops_reading_is_cut_after_stream_idle_timeout(
        fake_openai: Any, start_daemon: Any) -> None:
    fake = await fake_openai(reply=" ".join(str(i % 10) * 30000 for i in range(200)))
    d = await start_daemon(one_model_config(fake.url, model="stream_idle_timeout = 0.3",
                                            tail=NO_PROBES))
    async with connect(d.socket) as (reader, writer):
        writer.write(post(STREAM))
        await until(lambda: inflight(d) == 1)
        await until(lambda: inflight(d) == 0)  # without the limit: as long as it likes
        received = 0
        with suppress(ConnectionError):
            async with asyncio.timeout(WAIT):
                while chunk := await reader.read(1 << 20):
                    received += len(chunk)
        assert 0 < received < len(fake.reply)  # cut: a part of it
    assert paths(d) == (0, 0)
    assert fast(d).connections == set()
    metrics = (await exchange(d.socket, get("/metrics"))).body.decode()
    assert 'failoverd_requests_total{model="a/m",outcome="cancelled"} 1' in metrics


# ---------------------------------------------------------------------- handed to aiohttp


async def test_control_endpoints_are_handed_off(daemon: tuple[FakeOpenAI, Daemon]) -> None:
    fake, d = daemon
    health = await exchange(d.socket, get("/v1/health"))
    assert health.status == 200 and health.json() == {"status": "ok", "models": {"a/m": "closed"}}
    status = await exchange(d.socket, get("/v1/status"))
    assert status.status == 200 and status.json()["health"] == "ok"
    models = await exchange(d.socket, get("/v1/models"))
    assert [m["id"] for m in models.json()["data"]] == ["a/m"]
    metrics = await exchange(d.socket, get("/metrics"))
    assert metrics.status == 200 and b"failoverd_inflight_requests 0" in metrics.body
    reset = await exchange(d.socket, post(b"", "/v1/models/a/m/reset"))
    assert reset.status == 200
    # the proxied paths with another method, or another path: aiohttp's router answers
    assert (await exchange(d.socket, get(CHAT))).status == 405
    assert (await exchange(d.socket, post(ASK, CHAT + "/"))).status == 404
    assert (await exchange(d.socket, get("/nope"))).status == 404
    assert paths(d) == (0, 8)
    assert fake.requests == []


async def test_chunked_body_and_expect_100_continue_go_through_aiohttp(
        daemon: tuple[FakeOpenAI, Daemon]) -> None:
    fake, d = daemon
    body = orjson.dumps(ASK)
    async with connect(d.socket) as (reader, writer):
        writer.write(f"POST {CHAT} HTTP/1.1\r\nHost: failoverd\r\nContent-Type: "
                     "application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        for piece in (body[:7], body[7:]):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        assert content(await read_answer(reader)) == fake.reply
    assert paths(d) == (0, 1)
    # a body over 1024 bytes announced with Expect: curl's way (raw here, the real curl below)
    big = {**ASK, "messages": [{"role": "user", "content": "x" * 2000}]}
    raw = orjson.dumps(big)
    async with connect(d.socket) as (reader, writer):
        writer.write(f"POST {CHAT} HTTP/1.1\r\nHost: failoverd\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {len(raw)}\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        go_on = await read_answer(reader)
        assert (go_on.status, go_on.body) == (100, b"")
        writer.write(raw)
        assert content(await read_answer(reader)) == fake.reply
    assert paths(d) == (0, 2)
    assert fake.chat_requests()[-1].body["messages"] == big["messages"]


async def _curl(d: Daemon, *args: str, data: bytes) -> str:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("needs the curl CLI")
    proc = await asyncio.create_subprocess_exec(
        curl, "-sS", "-i", "--unix-socket", d.socket, "-H", "Content-Type: application/json",
        *args, "--data-binary", "@-", f"http://failoverd{CHAT}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(15):
        out, err = await proc.communicate(data)
    assert proc.returncode == 0, err
    return out.decode()


async def test_curl_with_expect_and_with_a_chunked_body(
        daemon: tuple[FakeOpenAI, Daemon]) -> None:
    fake, d = daemon
    raw = orjson.dumps({**ASK, "messages": [{"role": "user", "content": "y" * 1500}]})
    out = await _curl(d, "-H", "Expect: 100-continue", data=raw)
    assert out.startswith("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), out[:200]
    assert fake.reply in out
    out = await _curl(d, "-H", "Transfer-Encoding: chunked", data=raw)
    assert out.startswith("HTTP/1.1 200 OK\r\n"), out[:200]
    assert fake.reply in out
    assert paths(d) == (0, 2)
    assert len(fake.chat_requests()) == 2


LONG_FIELDS = "".join(f"X-Field-{i}: {'v' * 4000}\r\n" for i in range(3))


@pytest.mark.parametrize(("request_bytes", "status", "needle"), [
    pytest.param(b"GARBAGE\r\n\r\n", 400, b"Invalid method", id="bad request line"),
    pytest.param(post(ASK, headers="X-No-Colon here\r\n"), 400, b"Invalid header token",
                 id="field without colon"),
    pytest.param(post(ASK, headers="Content-Length : 5\r\n"), 400,
                 b"Invalid header field char", id="space before colon"),
    pytest.param(post(ASK, headers=f"X-Big: {'a' * 9000}\r\n"), 400,
                 b"Got more than 8190 bytes", id="field over 8190 bytes"),
    pytest.param(post(ASK).replace(b"\r\n\r\n", b"\r\nContent-Length: 33\r\n\r\n", 1), 400,
                 b"Duplicate Content-Length", id="duplicate Content-Length"),
    pytest.param(post(ASK).replace(b"Content-Length: ", b"Content-Length: +", 1), 400,
                 b"Invalid character in Content-Length", id="signed Content-Length"),
    pytest.param(post(ASK, headers="Host: again\r\n"), 400, b"Duplicate 'Host' header",
                 id="duplicate Host"),
])
async def test_malformed_requests_get_aiohttps_400_and_the_daemon_keeps_serving(
        daemon: tuple[FakeOpenAI, Daemon], request_bytes: bytes, status: int,
        needle: bytes) -> None:
    fake, d = daemon
    async with connect(d.socket) as (reader, writer):
        writer.write(request_bytes)
        answer = await read_answer(reader)
        assert answer.status == status
        assert needle in answer.body, answer.body
        assert await closed_by_daemon(reader)
    assert paths(d) == (0, 1)
    assert content(await exchange(d.socket, post(ASK))) == fake.reply
    assert paths(d) == (1, 1)
    assert len(fake.chat_requests()) == 1


@pytest.mark.parametrize(("request_bytes", "version", "closes"), [
    pytest.param(post(ASK, CHAT + "?x=1"), "HTTP/1.1", False, id="query string"),
    pytest.param(post(ASK, version="HTTP/1.0"), "HTTP/1.0", True, id="HTTP/1.0"),
    pytest.param(post(ASK, headers="Connection: close\r\n"), "HTTP/1.1", True,
                 id="Connection: close"),
    pytest.param(post(ASK, headers=LONG_FIELDS), "HTTP/1.1", False, id="head over 8190 bytes"),
    pytest.param(post(ASK, headers="X-Tag: 1\r\nx-tag: 2\r\n"), "HTTP/1.1", False,
                 id="repeated field"),
])
async def test_requests_the_fast_path_leaves_are_served_by_aiohttp(
        daemon: tuple[FakeOpenAI, Daemon], request_bytes: bytes, version: str,
        closes: bool) -> None:
    fake, d = daemon
    async with connect(d.socket) as (reader, writer):
        writer.write(request_bytes)
        answer = await read_answer(reader)
        assert content(answer) == fake.reply
        assert answer.version == version
        if closes:
            assert await closed_by_daemon(reader)
        else:
            writer.write(post(ASK))
            assert content(await read_answer(reader)) == fake.reply
    assert paths(d) == (0, 1)


async def test_invalid_json_is_named_by_the_fast_path_and_the_connection_kept(
        daemon: tuple[FakeOpenAI, Daemon]) -> None:
    fake, d = daemon
    async with connect(d.socket) as (reader, writer):
        for bad, needle in ((b"{nope", "request body is not valid JSON: "),
                            (b"", "request body is empty; expected a JSON object"),
                            (b"[]", "request body must be a JSON object, got an array"),
                            (b'{"messages": []}', "'messages' must not be empty")):
            writer.write(post(bad))
            answer = await read_answer(reader)
            assert answer.status == 400
            assert answer.json()["error"]["message"].startswith(needle), answer.body
            assert answer.json()["error"]["type"] == "invalid_request_error"
            assert "x-failoverd-model" not in answer.headers
        writer.write(post(ASK))
        assert content(await read_answer(reader)) == fake.reply
    assert paths(d) == (5, 0)
    assert len(fake.chat_requests()) == 1


async def test_a_body_over_max_body_bytes_gets_413_from_aiohttp(
        daemon: tuple[FakeOpenAI, Daemon]) -> None:
    fake, d = daemon
    big = post({**ASK, "messages": [{"role": "user", "content": "x" * MAX_BODY}]})
    async with connect(d.socket) as (reader, writer):
        writer.write(big)
        answer = await read_answer(reader)
        assert answer.status == 413
        assert answer.json()["error"]["message"] == (
            f"request body of {len(big) - big.index(b'{')} bytes exceeds max_body_bytes "
            f"({MAX_BODY})")
        assert paths(d) == (0, 1)
        writer.write(post(ASK))  # aiohttp skipped the body: the connection goes on
        assert content(await read_answer(reader)) == fake.reply
    assert len(fake.requests) == 1
    assert content(await exchange(d.socket, post(ASK))) == fake.reply
    assert paths(d) == (1, 1)


# ---------------------------------------------------------------------- connections


@pytest.mark.parametrize(("behaviour", "request_body", "sent_first"), [
    pytest.param("slow:5", ASK, b"", id="waiting for the answer"),
    pytest.param("slow_stream:0.5", STREAM, b"data: ", id="mid-stream"),
])
async def test_a_client_going_away_cancels_its_request(
        watched_openai: Any, start_daemon: Any, behaviour: str, request_body: dict[str, Any],
        sent_first: bytes) -> None:
    fake = await watched_openai(default=behaviour)
    d = await start_daemon(one_model_config(fake.url, tail=NO_PROBES))
    async with connect(d.socket) as (reader, writer):
        writer.write(post(request_body))
        await until(lambda: len(fake.chat_requests()) == 1)
        if sent_first:  # the stream's head and first chunk are out
            async with asyncio.timeout(WAIT):
                assert sent_first in await reader.readuntil(b"\n\n")
        assert inflight(d) == 1
    # the client has gone: its request stops, and with it the upstream call
    await until(lambda: inflight(d) == 0)
    async with asyncio.timeout(WAIT):
        await fake.gone.wait()
    assert paths(d) == (0, 0)
    assert fast(d).connections == set()
    metrics = (await exchange(d.socket, get("/metrics"))).body.decode()
    # under the model once its stream had begun, else under none
    model = "a/m" if request_body.get("stream") else ""
    assert f'failoverd_requests_total{{model="{model}",outcome="cancelled"}} 1' in metrics
    assert 'outcome="ok"' not in metrics


async def test_idle_connections_are_closed(fake_openai: Any, short_dir: Path) -> None:
    fake = await fake_openai()
    loop = asyncio.get_running_loop()
    async with own_daemon(short_dir, one_model_config(fake.url, tail=NO_PROBES)) as (sup,
                                                                                      sock):
        async with (connect(sock) as (silent, _), connect(sock) as (answered, asking),
                    connect(sock) as (half_head, head_writer),
                    connect(sock) as (half_body, body_writer)):
            request = post(ASK)
            head = request.index(b"\r\n\r\n")
            asking.write(request)
            assert content(await read_answer(answered)) == fake.reply
            head_writer.write(request[:head])
            body_writer.write(request[:-5])
            since = loop.time()
            for reader in (silent, answered, half_head):
                assert await closed_by_daemon(reader)
            # a request whose body stalled is told so (as on aiohttp's path)
            assert (await read_answer(half_body)).status == 408
            assert await closed_by_daemon(half_body)
            assert loop.time() - since >= IDLE * 0.9  # not at once
        assert paths(sup) == (2, 0)
        assert fast(sup).connections == set()


async def test_requests_outlasting_the_idle_timeout_are_not_cut(fake_openai: Any,
                                                                short_dir: Path) -> None:
    fake = await fake_openai(reply="Hello there")
    # a plain answer after 3 idle times; a stream silent for 1.5 idle times before each word
    fake.push(f"slow:{IDLE * 3}", f"slow_stream:{IDLE * 1.5}")
    async with own_daemon(short_dir, one_model_config(fake.url, tail=NO_PROBES)) as (sup,
                                                                                      sock):
        async with connect(sock) as (reader, writer):
            writer.write(post(ASK))
            assert content(await read_answer(reader)) == fake.reply
            # the idle time counts from the answer: the connection is still there
            writer.write(post(STREAM))
            assert streamed(await read_answer(reader)) == fake.reply
            writer.write(post(ASK))
            assert content(await read_answer(reader)) == fake.reply
            assert await closed_by_daemon(reader)
        assert paths(sup) == (3, 0)


async def test_a_stop_closes_idle_connections_at_once_and_busy_ones_after_their_answer(
        daemon: tuple[FakeOpenAI, Daemon]) -> None:
    fake, d = daemon
    async with (connect(d.socket) as (silent, _), connect(d.socket) as (idle, idle_writer),
                connect(d.socket) as (busy, busy_writer)):
        idle_writer.write(post(ASK))
        assert content(await read_answer(idle)) == fake.reply
        fake.push("slow:0.5")
        busy_writer.write(post(ASK))
        await until(lambda: inflight(d) == 1)
        await until(lambda: len(fast(d).connections) == 3)
        d.sup.request_stop()
        assert await closed_by_daemon(idle)
        assert await closed_by_daemon(silent)
        assert inflight(d) == 1  # at once: the busy request is still running
        answer = await read_answer(busy)
        assert content(answer) == fake.reply
        assert answer.headers["Connection"] == "close"
        assert await closed_by_daemon(busy)
    await asyncio.wait_for(d.task, 10)
    assert paths(d) == (2, 0)


async def test_a_stream_running_at_a_stop_ends_and_then_its_connection_closes(
        fake_openai: Any, start_daemon: Any) -> None:
    fake = await fake_openai(default="slow_stream:0.1")
    d = await start_daemon(one_model_config(fake.url, tail=NO_PROBES))
    async with connect(d.socket) as (reader, writer):
        writer.write(post(STREAM))
        async with asyncio.timeout(WAIT):
            head = await reader.readuntil(b"\r\n\r\n")
        d.sup.request_stop()
        async with asyncio.timeout(WAIT):
            rest = await reader.read()  # to the end: the daemon closes the connection
    answer = await read_answer(_fed(head + rest))
    assert streamed(answer) == fake.reply
    await asyncio.wait_for(d.task, 10)
    assert paths(d) == (1, 0)


def _fed(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
async def test_requests_still_running_after_shutdown_timeout_are_cut_with_an_answer(
        fake_openai: Any, start_daemon: Any, path: str) -> None:
    """A plain request gets a 503 that says why; a stream an error event, then its end."""
    fake = await fake_openai(default="slow:5")
    d = await start_daemon("shutdown_timeout = 0.3\n"
                           + one_model_config(fake.url, tail=NO_PROBES))
    fake.push("slow_stream:0.2")  # the stream: a first chunk at once, then a word in 0.2 s
    async with connect(d.socket) as (plain, plain_writer), \
            connect(d.socket) as (stream, stream_writer):
        stream_writer.write(post({**STREAM, "max_tokens": 50}, path))
        await until(lambda: inflight(d) == 1)
        plain_writer.write(post({**ASK, "max_tokens": 50}, path))
        await until(lambda: inflight(d) == 2)
        async with asyncio.timeout(WAIT):
            await stream.readuntil(b"\n\n")  # streaming
        d.sup.request_stop()
        cut = await read_answer(plain)
        assert cut.status == 503
        assert cut.headers["Connection"] == "close" and cut.headers["Retry-After"] == "1"
        error = cut.json()["error"]
        assert error["type"] == ("shutting_down" if path == CHAT else "overloaded_error")
        assert "failoverd is shutting down" in error["message"]
        assert await closed_by_daemon(plain)
        async with asyncio.timeout(WAIT):
            rest = await stream.read()
        assert b"failoverd is shutting down" in rest
        assert rest.endswith(b"\r\n0\r\n\r\n")  # the chunked answer ends cleanly
    await asyncio.wait_for(d.task, 10)
    assert paths(d) == (2, 0)


# ---------------------------------------------------------------------- access



async def test_tcp_listener_checks_the_token_on_the_fast_path(
        fake_openai: Any, start_daemon: Any, short_dir: Path) -> None:
    fake = await fake_openai()
    port, tcp = tcp_listener(short_dir)
    d = await start_daemon(tcp + one_model_config(fake.url, tail=NO_PROBES))
    async with connect(("127.0.0.1", port)) as (reader, writer):
        for auth, status in (("", 401), ("Authorization: Bearer wrong\r\n", 401),
                             ("Authorization: Bearer s3cret\r\n", 200)):
            writer.write(post(ASK, headers=auth))
            answer = await read_answer(reader)
            assert answer.status == status, answer
            if status == 401:
                assert "tcp_token_file" in answer.json()["error"]["message"]
                assert answer.json()["error"]["type"] == "authentication_error"
            else:
                assert content(answer) == fake.reply
    assert paths(d) == (3, 0)
    assert len(fake.chat_requests()) == 1


async def test_unix_peer_not_in_allowed_uids_gets_403_on_the_fast_path(
        daemon: tuple[FakeOpenAI, Daemon], short_dir: Path) -> None:
    fake, d = daemon
    path = short_dir / "d.toml"
    allowed = path.read_text()
    other = os.getuid() + 4242
    path.write_text(allowed.replace("[daemon]\n", f"[daemon]\nallowed_uids = [{other}]\n", 1))
    assert d.sup.reload()
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ASK))
        answer = await read_answer(reader)
        assert answer.status == 403
        assert answer.json()["error"]["message"] == \
            f"uid {os.getuid()} is not in daemon.allowed_uids"
        assert paths(d) == (1, 0)
        assert fake.requests == []
        path.write_text(allowed.replace("[daemon]\n",
                                        f"[daemon]\nallowed_uids = [{os.getuid()}]\n", 1))
        assert d.sup.reload()
        writer.write(post(ASK))
        assert content(await read_answer(reader)) == fake.reply
    assert paths(d) == (2, 0)


# ---------------------------------------------------------------------- uvloop


async def _on_uvloop(short_dir: Path) -> None:
    fake = await FakeOpenAI().start()
    try:
        async with own_daemon(short_dir, one_model_config(fake.url, tail=NO_PROBES)) as (
                sup, sock):
            async with connect(sock) as (reader, writer):
                writer.write(post(ASK) + post(STREAM) + get("/v1/health") + post(ASK))
                plain, stream, health, handed = [await read_answer(reader) for _ in range(4)]
                assert content(plain) == content(handed) == streamed(stream) == fake.reply
                assert health.json()["status"] == "ok"
                assert paths(sup) == (2, 1)
                assert await closed_by_daemon(reader)  # aiohttp's idle limit, as ours
            fake.push("slow:5")
            async with connect(sock) as (_, writer):
                writer.write(post(ASK))
                await until(lambda: len(fake.chat_requests()) == 3)
            assert sup.service is not None
            await until(lambda: sup.service is not None and sup.service.inflight == 0)
            async with connect(sock) as (idle, _):
                assert await closed_by_daemon(idle)
            assert paths(sup) == (2, 1)
    finally:
        await fake.close()


def test_the_fast_path_on_uvloop(short_dir: Path) -> None:
    """The daemon's loop when uvloop is installed: its transports are handed over
    (set_protocol), paused and cut as asyncio's are."""
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(_on_uvloop(short_dir))
