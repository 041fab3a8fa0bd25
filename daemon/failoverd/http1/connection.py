"""One keep-alive HTTP/1.1 connection (an asyncio.Protocol) and the Response it yields.

A connection carries one request at a time. Its response body is buffered as it arrives;
a stream's reader pauses the socket when more than `HIGH_WATER` bytes wait unread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from failoverd.http1.errors import HttpClientError, PayloadError, ServerDisconnected
from failoverd.http1.parser import Head, Headers, ResponseParser

HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
MAX_LINE = 16 * 1024 * 1024
# the most `Response.read` holds: a broken or hostile upstream sending a body without end
# would otherwise fill the memory until the caller's timeout
MAX_BODY = 64 * 1024 * 1024
# a response released before its end is read out in the background for this long (and this
# much) so that its connection can be reused; past either, the connection is closed
DRAIN_SECONDS = 2.0
DRAIN_BYTES = 64 * 1024


class Connection(asyncio.Protocol):
    """A pooled connection. `send` writes a request and waits for its response head."""

    def __init__(self, key: tuple[str, str, int, str], release: Callable[[Connection], None],
                 lost: Callable[[Connection], None]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.keep_for: float | None = None  # the server's Keep-Alive hint, if it gave one
        self._release = release
        self._lost = lost
        self._parser: ResponseParser | None = None
        self._head: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._paused = False

    # ------------------------------------------------------------------ protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            self.close()  # bytes while idle: the connection is in an unknown state
            return
        try:
            parser.feed(data)
        except HttpClientError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        parser = self._parser
        if parser is not None:
            try:
                parser.feed_eof()
            except HttpClientError as exc:
                self._fail(exc)
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        parser = self._parser
        if parser is not None and not parser.done:
            detail = f": {exc}" if exc else ""
            error: HttpClientError
            if parser.head is None:
                error = ServerDisconnected(f"the connection closed before an answer{detail}",
                                           got_bytes=parser.got_bytes)
            else:
                error = PayloadError(f"the connection closed mid-body{detail}")
            self._fail(error)
        self._lost(self)

    # ------------------------------------------------------------------ parser sink

    def on_head(self, head: Head) -> None:
        response = Response(head, self)
        self._response = response
        waiter = self._head
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def on_body(self, data: bytes) -> None:
        response = self._response
        assert response is not None
        response._feed(data)

    def on_complete(self) -> None:
        response = self._response
        assert response is not None
        response._complete()

    # ------------------------------------------------------------------ use

    async def send(self, request: bytes, *, expect_body: bool = True) -> Response:
        """Writes `request` (head and body) and returns the response once its head arrived.

        On any failure or cancellation before that, the connection is closed.
        """
        transport = self.transport
        if transport is None or self.closed or transport.is_closing():
            raise ServerDisconnected("the connection is closed")
        self._parser = ResponseParser(self, expect_body=expect_body)
        self._response = None
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._head = waiter
        transport.write(request)
        try:
            return await waiter
        except BaseException:
            self.close()
            raise
        finally:
            self._head = None

    def close(self) -> None:
        """Closes the connection; one abandoned mid-answer is aborted (a TLS one would
        otherwise linger in its close handshake with a server still sending)."""
        self.closed = True
        transport = self.transport
        if transport is not None:
            parser = self._parser
            if parser is not None and not parser.done:
                transport.abort()
            else:
                transport.close()

    def abort(self) -> None:
        """Closes the connection at once, without a TLS close handshake."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    @property
    def keeps_alive(self) -> bool:
        """Whether the answer in progress leaves the connection reusable."""
        return self._parser is not None and self._parser.keep_alive

    def _fail(self, exc: HttpClientError) -> None:
        """The response (or the wait for its head) ends with `exc`; the connection is done."""
        waiter = self._head
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        elif self._response is not None:
            self._response._fail(exc)
        self._parser = None
        self.close()

    def _finished(self, response: Response) -> None:
        """The response was read to its end: back to the pool if the server allows it."""
        parser = self._parser
        self._parser = None
        self._response = None
        if parser is not None and parser.keep_alive and not self.closed:
            self.keep_for = keep_alive_seconds(response.headers.get("keep-alive"))
            self._resume()  # a body that ended while reading was paused
            self._release(self)
        else:
            self.close()

    def _drain(self, response: Response) -> None:
        """Reads the rest of a released response in the background, then pools the
        connection: a stream's closing chunk often arrives just after its last event."""
        loop = asyncio.get_running_loop()
        response._drain_timer = loop.call_later(DRAIN_SECONDS, self.close)
        self._resume()

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()


def keep_alive_seconds(value: str | None) -> float | None:
    """How long an idle connection may be reused after `Keep-Alive: timeout=N`: a second
    less than the server keeps it, so a request does not race the server's close. None
    without a (valid) hint."""
    for part in (value or "").split(","):
        name, _, number = part.partition("=")
        if name.strip().lower() == "timeout":
            try:
                return max(0.0, float(number.strip()) - 1.0)
            except ValueError:
                return None
    return None


class Response:
    """A response whose head has arrived. Read its body with `read`, `readline` or
    `read_upto`; end it with `release` (after reading to the end) or `close`."""

    __slots__ = ("status", "reason", "headers", "_conn", "_body", "_done", "_error", "_waiter",
                 "_whole", "_ended", "_drain_timer", "_drained")

    def __init__(self, head: Head, conn: Connection) -> None:
        self.status = head.status
        self.reason = head.reason
        self.headers: Headers = head.headers
        self._conn = conn
        self._body = bytearray()
        self._done = False
        self._error: HttpClientError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._whole = False  # read() wants everything: no pausing
        self._ended = False
        self._drain_timer: asyncio.TimerHandle | None = None
        self._drained = 0

    # ------------------------------------------------------------------ reading

    async def read(self) -> bytes:
        """The whole (remaining) body; the connection then goes back to the pool."""
        if not self._done:
            self._whole = True
            self._conn._resume()
            while not self._done:
                await self._wait()
        data = bytes(self._body)
        self._body.clear()
        self.release()
        return data

    async def readline(self) -> bytes:
        """The next line with its b"\\n"; at the end, what is left, then b""."""
        while (line := self.buffered_line()) is None:
            await self.more()
        return line

    def buffered_line(self) -> bytes | None:
        """`readline` without waiting: the next line if it is all here (at the end, what is
        left, then b""), else None: await `more` and ask again. A stream reader takes the
        lines that came in one read without a wait (a coroutine) for each."""
        body = self._body
        end = body.find(b"\n")
        if end >= 0:
            line = bytes(body[:end + 1])
            del body[:end + 1]
            if len(body) < LOW_WATER:
                self._conn._resume()
            return line
        if self._done:
            line = bytes(body)
            body.clear()
            return line
        if len(body) > MAX_LINE:
            raise PayloadError(f"a line of the response is longer than {MAX_LINE} bytes")
        return None

    def buffered(self, limit: int) -> bytes | None:
        """What of the body has come in, at most `limit` bytes, without waiting (at the end,
        b""), else None: await `more` and ask again. A relay of raw bytes (audio) passes on
        what each read brought; a slow taker leaves the socket paused past HIGH_WATER."""
        body = self._body
        if not body:
            return b"" if self._done else None
        data = bytes(body[:limit])
        del body[:limit]
        if len(body) < LOW_WATER:
            self._conn._resume()
        return data

    async def more(self) -> None:
        """Waits until more of the body (or its end) has come in."""
        self._conn._resume()  # a line not yet complete: more must come in
        await self._wait()

    async def read_upto(self, limit: int) -> bytes:
        """At most `limit` bytes of the body (fewer only when it ends first)."""
        body = self._body
        while len(body) < limit and not self._done:
            self._conn._resume()
            await self._wait()
        data = bytes(body[:limit])
        del body[:limit]
        if len(body) < LOW_WATER:
            self._conn._resume()
        return data

    # ------------------------------------------------------------------ ending

    def release(self) -> None:
        """Ends the response and gives its connection back to the pool: at once when the
        answer is complete (unread bytes of it are dropped), after reading out the rest in
        the background (up to DRAIN_BYTES within DRAIN_SECONDS) when it is not."""
        if self._ended:
            return
        self._ended = True
        self._body.clear()
        if self._error is not None or not (self._done or self._conn.keeps_alive):
            self._conn.close()  # broken, or the server closes it after this answer anyway
        elif self._done:
            self._conn._finished(self)
        else:
            self._whole = True
            self._conn._drain(self)

    def close(self) -> None:
        """Ends the response and closes its connection (whatever was left unread); after
        `release` or a complete `read` it does nothing: the connection is the pool's again."""
        if self._ended and self._drain_timer is None:
            return
        self._ended = True
        self._stop_drain()
        self._conn.close()

    # ------------------------------------------------------------------ from the connection

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _feed(self, data: bytes) -> None:
        if self._ended:
            self._drained += len(data)
            if self._drained > DRAIN_BYTES:
                self.close()
            return
        body = self._body
        body += data
        if len(body) > HIGH_WATER:
            if not self._whole:
                self._conn._pause()
            elif len(body) > MAX_BODY:  # raised into the parser: the connection fails
                raise PayloadError(f"the response body is larger than {MAX_BODY} bytes")
        self._wake()

    def _complete(self) -> None:
        self._done = True
        if self._ended:
            if self._drain_timer is not None:  # drained: the connection can be reused
                self._stop_drain()
                self._conn._finished(self)
            return
        self._wake()

    def _fail(self, exc: HttpClientError) -> None:
        if not self._done:
            self._error = exc
        self._stop_drain()
        self._wake()

    def _stop_drain(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
