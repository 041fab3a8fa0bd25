"""api/fastpath.py: defects a review found, each fixed, kept from coming back."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers import one_model_config, until
from tests.test_fastpath import (
    ASK,
    NO_PROBES,
    STREAM,
    connect,
    fast,
    inflight,
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
