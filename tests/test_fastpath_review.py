"""api/fastpath.py: defects a review found, each fixed, kept from coming back."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fakes.openai import FakeOpenAI
from tests.helpers import one_model_config, tcp_listener, until
from tests.test_fastpath import (
    ASK,
    CHAT,
    MESSAGES,
    NO_PROBES,
    STREAM,
    connect,
    content,
    fast,
    inflight,
    own_daemon,
    paths,
    post,
    read_answer,
)


async def test_a_stream_cut_by_the_drain_while_its_client_reads_slowly_ends_cleanly(
        fake_openai: Any, start_daemon: Any) -> None:
    """The drain cuts a stream whose write is waiting for the client (writing paused). The
    cut's error event is written, then the cut awaits the *same* `drained` future the
    cancelled write awaited (cancelled with it, never reset): CancelledError at once, so the
    terminating chunk never went and _cut_reply's task ended cancelled (now shielded). aiohttp's
    path (the same request with a repeated X-Tag field is handed off) ends with `0\\r\\n\\r\\n`."""
    fake = await fake_openai(reply=" ".join(str(i % 10) * 30000 for i in range(200)))
    d = await start_daemon("shutdown_timeout = 0.3\n" + one_model_config(fake.url, tail=NO_PROBES))
    async with connect(d.socket) as (reader, writer):
        writer.write(post(STREAM))
        await until(lambda: len(fast(d).connections) == 1)
        (conn,) = fast(d).connections
        await until(lambda: conn.writing_paused)  # the client reads later
        assert inflight(d) == 1
        d.sup.request_stop()
        await until(lambda: d.sup.tracker.cutting)
        data = b""
        async with asyncio.timeout(5):
            while chunk := await reader.read(1 << 20):
                data += chunk
    await asyncio.wait_for(d.task, 10)
    assert b"failoverd is shutting down" in data[-400:]
    assert data.endswith(b"\r\n0\r\n\r\n"), data[-120:]


async def test_a_body_arriving_in_pieces_is_joined_once(fake_openai: Any,
                                                       start_daemon: Any) -> None:
    """While a body arrives, what came is kept in pieces and joined once it is all there:
    joining everything received on every read was quadratic (a 30 MiB body took 0.5 s of
    event-loop CPU, 0.1 s through aiohttp)."""
    fake = await fake_openai()
    d = await start_daemon(one_model_config(fake.url, tail=NO_PROBES))
    request = post(ASK)
    head_end = request.index(b"\r\n\r\n") + 4
    head, body = request[:head_end], request[head_end:]
    async with connect(d.socket) as (reader, writer):
        writer.write(head + body[:5])
        await until(lambda: len(fast(d).connections) == 1)
        (conn,) = fast(d).connections
        await until(lambda: conn.size == head_end + 5)
        for i in range(5, 10):
            writer.write(body[i:i + 1])
            await until(lambda i=i: conn.size == head_end + i + 1)
        assert len(conn.chunks) == 6  # the head with its first piece, then one per read
        writer.write(body[10:])
        answer = await read_answer(reader)
    assert answer.status == 200
    assert paths(d) == (1, 0)


async def test_a_client_without_the_token_gets_its_401_before_sending_its_body(
        fake_openai: Any, start_daemon: Any, short_dir: Path) -> None:
    """A body still arriving was held (up to max_body_bytes, 32 MiB by default, per
    connection) before the access guard ran: 8 clients without the token took 300 MB. A
    client without access is now handed to aiohttp at its head, and refused there."""
    fake = await fake_openai()
    port, tcp = tcp_listener(short_dir)
    d = await start_daemon(tcp + one_model_config(fake.url, tail=NO_PROBES))
    request = post({**ASK, "messages": [{"role": "user", "content": "x" * 100_000}]})
    async with connect(("127.0.0.1", port)) as (reader, writer):
        writer.write(request[:20_000])  # the head and a fifth of the body; the rest never
        answer = await read_answer(reader)
    assert answer.status == 401
    assert paths(d) == (0, 1)
    # with the token, the same body arriving in pieces is served here
    request = post({**ASK, "messages": [{"role": "user", "content": "x" * 100_000}]},
                   headers="Authorization: Bearer s3cret\r\n")
    async with connect(("127.0.0.1", port)) as (reader, writer):
        writer.write(request[:20_000])
        await until(lambda: any(c.need for c in fast(d).connections))
        writer.write(request[20_000:])
        answer = await read_answer(reader)
    assert answer.status == 200
    assert paths(d) == (1, 1)
    assert len(fake.chat_requests()) == 1


async def test_requests_pipelined_behind_a_busy_one_are_held_to_64_kib(
        fake_openai: Any, start_daemon: Any) -> None:
    """While a request is served, what the client sends ahead is read up to 64 KiB, then
    the connection is not read until the answer went (was: max_body_bytes + 64 KiB); every
    request is answered, in order."""
    fake = await fake_openai()
    d = await start_daemon(one_model_config(fake.url, tail=NO_PROBES))
    fake.push("slow:0.5")
    ahead = [post({**ASK, "user": f"u{i}"}) for i in range(1000)]  # about 180 KB
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ASK))
        await until(lambda: len(fake.chat_requests()) == 1)
        writer.write(b"".join(ahead))
        (conn,) = fast(d).connections
        await until(lambda: conn.reading_paused)
        assert 64 * 1024 < conn.size < 64 * 1024 + 300 * 1024  # one read past the mark
        answers = [await read_answer(reader) for _ in range(1 + len(ahead))]
    assert {a.status for a in answers} == {200}
    assert [r.body.get("user") for r in fake.chat_requests()] == [None] + [
        f"u{i}" for i in range(1000)]


@pytest.mark.parametrize(("path", "shape"), [(CHAT, "shutting_down"),
                                           (MESSAGES, "overloaded_error")])
async def test_a_request_still_arriving_when_the_drain_begins_gets_the_503(
        fake_openai: Any, start_daemon: Any, path: str, shape: str) -> None:
    """It was closed without an answer (aiohttp's path answers the cut's 503)."""
    fake = await fake_openai()
    d = await start_daemon(one_model_config(fake.url, tail=NO_PROBES))
    request = post({**ASK, "max_tokens": 50}, path)
    async with connect(d.socket) as (reader, writer):
        writer.write(request[:-10])
        await until(lambda: any(c.need for c in fast(d).connections))
        d.sup.request_stop()
        answer = await read_answer(reader)
        assert answer.status == 503
        assert answer.headers["Connection"] == "close"
        assert answer.headers["Retry-After"] == "1"
        assert shape in answer.body.decode()
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed
    await asyncio.wait_for(d.task, 10)
    assert fake.chat_requests() == []


@pytest.mark.parametrize(("head", "why"), [
    pytest.param(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\n",
                 b"Host", id="no-host"),
    pytest.param(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 + b"".join(b"X-F%d: v\r\n" % i for i in range(130)), b"", id="130-fields"),
])
async def test_what_aiohttp_refuses_is_left_to_aiohttp(
        fake_openai: Any, start_daemon: Any, head: bytes, why: bytes) -> None:
    """A request without Host or with more than 128 fields was served here; aiohttp's 400."""
    fake = await fake_openai()
    d = await start_daemon(one_model_config(fake.url, tail=NO_PROBES))
    body = orjson.dumps(ASK)
    async with connect(d.socket) as (reader, writer):
        writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        answer = await read_answer(reader)
    assert answer.status == 400
    assert why in answer.body
    assert paths(d) == (0, 1)
    assert fake.chat_requests() == []


async def _allowed_uids_on_uvloop(short_dir: Path) -> None:
    fake = await FakeOpenAI().start()
    try:
        mine = f"allowed_uids = [{os.getuid()}]\n"
        async with own_daemon(short_dir, mine + one_model_config(fake.url, tail=NO_PROBES)) as (
                sup, sock):
            async with connect(sock) as (reader, writer):
                # served here, and by aiohttp (a query string hands the connection over)
                for path in (CHAT, CHAT + "?via=aiohttp"):
                    writer.write(post(ASK, path))
                    answer = await read_answer(reader)
                    assert answer.status == 200, answer
            assert paths(sup) == (1, 1)
    finally:
        await fake.close()


def test_allowed_uids_lets_the_allowed_uid_in_on_uvloop(short_dir: Path) -> None:
    """peer_uid read the socket only from an asyncio.BaseTransport, which uvloop's
    transports are not: every uid read None, and allowed_uids refused everyone (403 "uid None
    is not in daemon.allowed_uids") on both paths, uvloop being the daemon's loop."""
    uvloop = pytest.importorskip("uvloop")
    uvloop.run(_allowed_uids_on_uvloop(short_dir))


async def test_requests_left_unread_on_a_closed_connection_are_never_started(
        fake_openai: Any, start_daemon: Any) -> None:
    """The drain answered a connection's pending requests with the 503 ("retry it") and
    closed it; uvloop then resumed writing on the closing transport and the first of those
    requests was started and sent upstream all the same."""
    fake = await fake_openai()
    d = await start_daemon(one_model_config(fake.url, tail=NO_PROBES))
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ASK) + post({**ASK, "user": "never"})[:-3])
        assert content(await read_answer(reader)) == fake.reply
        (conn,) = fast(d).connections
        await until(lambda: conn.need > 0)
        conn.refuse_unfinished()  # as the drain does
        conn.resume_writing()  # as uvloop may on a closing transport
        answer = await read_answer(reader)
        assert answer.status == 503
    assert [r.body.get("user") for r in fake.chat_requests()] == [None]
    assert conn.task is None and conn.size == 0


@pytest.mark.parametrize("start", [
    pytest.param(b"POST /v1/chat/completions HTTP/1.1\nHost: x\n", id="bare-LF"),
    pytest.param(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n", id="another-method"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="TLS-hello"),
])
async def test_a_head_that_cannot_be_served_here_is_answered_before_it_ends(
        fake_openai: Any, start_daemon: Any, start: bytes) -> None:
    """A head the fast path will never serve waited for its CRLFCRLF (or 8190 bytes) until
    the idle limit, 75 s; aiohttp answers such bytes at once."""
    fake = await fake_openai()
    d = await start_daemon(one_model_config(fake.url, tail=NO_PROBES))
    async with connect(d.socket) as (reader, writer):
        writer.write(start)
        await until(lambda: paths(d) == (0, 1))
        if not start.startswith(b"GET"):
            answer = await read_answer(reader)
            assert answer.status == 400


async def test_an_access_refusal_on_v1_messages_has_the_anthropic_shape(
        fake_openai: Any, start_daemon: Any, short_dir: Path) -> None:
    """Every other error on /v1/messages is Anthropic-shaped; the 401/403 of the access
    guard were OpenAI's (on both paths)."""
    fake = await fake_openai()
    port, tcp = tcp_listener(short_dir)
    d = await start_daemon(tcp + one_model_config(fake.url, tail=NO_PROBES))
    for path in (MESSAGES, MESSAGES + "?via=aiohttp", CHAT):
        async with connect(("127.0.0.1", port)) as (reader, writer):
            writer.write(post({**ASK, "max_tokens": 50}, path))
            answer = await read_answer(reader)
        assert answer.status == 401
        if path.startswith(MESSAGES):
            assert answer.json()["type"] == "error"
            assert answer.json()["error"]["type"] == "authentication_error"
            assert "tcp_token_file" in answer.json()["error"]["message"]
        else:
            assert answer.json()["error"]["code"] == "invalid_api_key"
    assert paths(d) == (2, 1)
    assert fake.chat_requests() == []


CHUNKED = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"model\": \"defa")


@pytest.mark.parametrize(("start", "handed_off"), [
    pytest.param(post(ASK)[:-5], 0, id="fast-path"),
    pytest.param(CHUNKED, 1, id="aiohttp-chunked"),
])
async def test_a_stalled_body_gets_408_after_the_idle_limit(
        short_dir: Path, start: bytes, handed_off: int) -> None:
    """aiohttp's server waited on a stalled body until the stop (a file descriptor and a
    task held); the fast path closed such a connection without a word. Both answer 408 once
    nothing arrived for the idle limit."""
    fake = await FakeOpenAI().start()
    try:
        async with own_daemon(short_dir, one_model_config(fake.url, tail=NO_PROBES)) as (
                sup, sock):
            async with connect(sock) as (reader, writer):
                writer.write(start)
                answer = await read_answer(reader)  # within WAIT; the limit is IDLE
                assert answer.status == 408
                assert answer.json()["error"]["code"] == "request_timeout"
                assert "request body stalled" in answer.json()["error"]["message"]
            assert paths(sup) == (handed_off ^ 1, handed_off)
            assert sup.service is not None and sup.service.inflight == 0
    finally:
        await fake.close()


async def test_a_defect_in_a_handler_is_a_500_counted_on_both_paths(
        fake_openai: Any, start_daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the request's translation raises as a defect would. The fast path
    and aiohttp's (a chunked body goes there) answer 500, count it as internal_error, and the
    daemon keeps serving."""
    from failoverd.api.fronts import OpenAIFront

    fake = await fake_openai()
    d = await start_daemon(one_model_config(fake.url, tail=NO_PROBES))

    def broken(self: OpenAIFront, body: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("injected defect")

    monkeypatch.setattr(OpenAIFront, "canonical", broken)
    raw = orjson.dumps(ASK)
    chunked = (f"POST {CHAT} HTTP/1.1\r\nHost: failoverd\r\nContent-Type: application/json\r\n"
               f"Transfer-Encoding: chunked\r\n\r\n{len(raw):x}\r\n").encode()
    chunked += raw + b"\r\n0\r\n\r\n"
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ASK))
        fast_answer = await read_answer(reader)
    async with connect(d.socket) as (reader, writer):
        writer.write(chunked)
        slow_answer = await read_answer(reader)
    assert fast_answer.status == slow_answer.status == 500
    assert fast_answer.json() == slow_answer.json()  # the same JSON error either way
    assert fast_answer.json()["error"]["code"] == "internal_error"
    assert d.sup.service.metrics.requests[("", "internal_error")] == 2
    assert fake.requests == []
    # on /v1/messages, in Anthropic's shape
    from failoverd.api.fronts import AnthropicFront

    monkeypatch.setattr(AnthropicFront, "canonical", broken)
    async with connect(d.socket) as (reader, writer):
        writer.write(post({**ASK, "max_tokens": 5}, MESSAGES))
        answer = await read_answer(reader)
    assert answer.status == 500
    assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "api_error"
    monkeypatch.undo()
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ASK))
        assert (await read_answer(reader)).status == 200
