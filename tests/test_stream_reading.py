"""Reading upstream streams (providers/http.py `sse_events` and `lines` over the http1 client):
lines that came in one read are taken without a wait each, and the time limits, cuts and
the line limit still apply, against a raw loopback server that writes exactly the bytes
given, in the writes given."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import HttpClient, Response
from failoverd.http1 import connection as connection_mod
from failoverd.providers.http import lines, sse_events
from tests.fakes.serving import StreamServer

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
END = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Scripted(StreamServer):
    """Answers each request with `writes`, one transport write each; then holds the
    connection open (a stalled upstream) unless `close` is set, until the test ends."""

    def __init__(self, writes: list[bytes], close: bool = False) -> None:
        super().__init__()
        self.writes, self.close_after = writes, close
        self.url = ""

    async def start(self) -> Scripted:
        await self._listen(self._serve)
        self.url = f"http://127.0.0.1:{self.port}/"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = self._track()
        try:
            await reader.readuntil(b"\r\n\r\n")
            for data in self.writes:
                writer.write(data)
                await writer.drain()
            if not self.close_after:
                await asyncio.Event().wait()  # stalled: cancelled by close()
        finally:
            writer.close()
            self._tasks.discard(task)


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    async with HttpClient() as c:
        yield c


async def open_stream(client: HttpClient, writes: list[bytes], close: bool = False
                      ) -> tuple[Scripted, Response]:
    srv = await Scripted(writes, close).start()
    resp = await client.request("GET", srv.url, headers={}, connect_timeout=5.0)
    assert resp.status == 200
    return srv, resp


async def events(resp: Response, first: float = 5.0, idle: float = 5.0
                 ) -> list[tuple[str, bytes]]:
    deadline = asyncio.get_running_loop().time() + first
    return [e async for e in sse_events(resp, deadline, idle, "p", "p/m")]


async def test_events_that_came_in_one_read_are_all_yielded_in_order(
        client: HttpClient) -> None:
    body = b"".join(b'data: {"n": %d}\n\n' % i for i in range(300))
    body += (b": a comment\n\nevent: ping\ndata: {}\n\n"
             b"data: first line\ndata: second line\n\n"  # one event over two data: lines
             b'data: {"crlf": true}\r\n\r\n'
             b"data:no space\n\n"
             b"data: [DONE]\n\n")
    srv, resp = await open_stream(client, [HEAD + chunk(body) + END], close=True)
    try:
        got = await events(resp)
    finally:
        resp.close()
        await srv.close()
    assert got[:300] == [("", b'{"n": %d}' % i) for i in range(300)]
    assert got[300:] == [("ping", b"{}"), ("", b"first line\nsecond line"),
                         ("", b'{"crlf": true}'), ("", b"no space"), ("", b"[DONE]")]


async def test_events_split_across_many_writes_arrive_whole(client: HttpClient) -> None:
    event = b'data: {"text": "' + b"x" * 5000 + b'"}\n\n'
    pieces = [event[i:i + 700] for i in range(0, len(event), 700)]
    srv, resp = await open_stream(client, [HEAD, *(chunk(p) for p in pieces), END],
                                  close=True)
    try:
        got = await events(resp)
    finally:
        resp.close()
        await srv.close()
    assert got == [("", event[6:-2])]


async def test_a_stall_after_a_burst_is_the_idle_timeout(client: HttpClient) -> None:
    burst = b"".join(b"data: %d\n\n" % i for i in range(50))
    srv, resp = await open_stream(client, [HEAD + chunk(burst)])
    seen: list[bytes] = []
    try:
        with pytest.raises(UpstreamError) as info:
            async for _, data in sse_events(resp, asyncio.get_running_loop().time() + 5, 0.2,
                                            "p", "p/m"):
                seen.append(data)
    finally:
        resp.close()
        await srv.close()
    assert seen == [b"%d" % i for i in range(50)]  # all of the burst, then the wait
    assert info.value.reason is FailureReason.TIMEOUT
    assert info.value.message == "stream idle within the time limit"


async def test_comments_alone_do_not_meet_the_first_token_deadline(client: HttpClient) -> None:
    srv, resp = await open_stream(client, [HEAD + chunk(b": PROCESSING\n\n" * 3)])
    try:
        with pytest.raises(UpstreamError) as info:
            await events(resp, first=0.2, idle=30)
    finally:
        resp.close()
        await srv.close()
    assert info.value.reason is FailureReason.TIMEOUT
    assert info.value.message == "no first token within the time limit"


async def test_a_stream_cut_mid_event_is_invalid_response(client: HttpClient) -> None:
    srv, resp = await open_stream(client, [HEAD + chunk(b"data: 1\n\ndata: par")], close=True)
    seen: list[bytes] = []
    try:
        with pytest.raises(UpstreamError) as info:
            async for _, data in sse_events(resp, asyncio.get_running_loop().time() + 5, 5,
                                            "p", "p/m"):
                seen.append(data)
    finally:
        resp.close()
        await srv.close()
    assert seen == [b"1"]
    assert info.value.reason is FailureReason.INVALID_RESPONSE
    assert info.value.message.startswith("stream cut: ")


async def test_a_line_over_the_limit_is_a_stream_cut(client: HttpClient,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection_mod, "MAX_LINE", 1000)  # 16 MiB in production
    srv, resp = await open_stream(client, [HEAD + chunk(b"data: 1\n\n" + b"x" * 5000)])
    try:
        with pytest.raises(UpstreamError) as info:
            await events(resp)
    finally:
        resp.close()
        await srv.close()
    assert info.value.reason is FailureReason.INVALID_RESPONSE
    assert "longer than 1000 bytes" in info.value.message


async def test_lines_takes_a_burst_then_times_out_on_the_stall(client: HttpClient) -> None:
    ndjson = b"".join(b'{"n": %d}\n' % i for i in range(100)) + b"\n"
    srv, resp = await open_stream(client, [HEAD + chunk(ndjson)])
    seen: list[bytes] = []
    try:
        with pytest.raises(UpstreamError) as info:
            async for line in lines(resp, asyncio.get_running_loop().time() + 5, 0.2, "p",
                                    "p/m"):
                seen.append(line)
    finally:
        resp.close()
        await srv.close()
    assert seen == [b'{"n": %d}' % i for i in range(100)] + [b""]  # blank lines included
    assert info.value.reason is FailureReason.TIMEOUT


async def test_lines_ends_with_the_body_and_keeps_the_connection(client: HttpClient) -> None:
    srv, resp = await open_stream(client, [HEAD + chunk(b"a\r\nb\n") + chunk(b"c") + END])
    try:
        got = [line async for line in lines(resp, asyncio.get_running_loop().time() + 5, 5,
                                            "p", "p/m")]
        assert got == [b"a", b"b", b"c"]  # the last line without its line ending
        resp.release()
        assert client.idle_connections == 1  # read to the end: back to the pool
    finally:
        resp.close()
        await srv.close()
