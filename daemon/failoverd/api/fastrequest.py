"""The request and the streamed answer of the fast path (api/fastpath.py): the parts of
aiohttp's `web.Request` and `web.StreamResponse` that the proxy handler, the access guard and
the drain use, over a fast-path connection."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from aiohttp import web
from multidict import CIMultiDict

from failoverd.api.body import PRELOADED
from failoverd.api.drain import STREAM_OPENER

__all__ = ["Connection", "FastRequest", "FastStream"]


class Connection(Protocol):
    """What a request and its stream need of their fast-path connection."""

    @property
    def transport(self) -> asyncio.Transport | None: ...

    def start_stream(self, stream: FastStream) -> None: ...

    async def write_chunk(self, data: bytes) -> None: ...

    def write_chunk_now(self, data: bytes) -> bool: ...

    def end_stream(self) -> None: ...


class _Body:
    """What api/body.py reads of a request's content: a body that has fully arrived."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        self._raw = raw

    def is_eof(self) -> bool:
        return True

    def read_nowait(self) -> bytes:
        return self._raw


class FastRequest:
    """The part of aiohttp's `web.Request` the proxy handler, the access guard and log and
    the drain use (api/proxy.py, api/access.py, api/accesslog.py, api/drain.py); handed to
    them as a web.Request.
    """

    __slots__ = ("app", "headers", "path", "transport", "content_length", "content", "_keys")
    method = "POST"  # the only one this path serves (the access log names it)

    def __init__(self, app: web.Application, path: str, headers: CIMultiDict[str],
                 conn: Connection, body: bytes, parsed: dict[str, Any] | None) -> None:
        self.app = app
        self.path = path
        self.headers = headers
        self.transport = conn.transport
        self.content_length = len(body)
        self.content = _Body(body)
        self._keys: dict[Any, Any] = {STREAM_OPENER: conn}
        if parsed is not None:
            self._keys[PRELOADED] = parsed

    def get(self, key: Any, default: Any = None) -> Any:
        return self._keys.get(key, default)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._keys[key] = value


class FastStream(web.StreamResponse):
    """A streamed answer on the fast path: the head when prepared, then chunked data.

    What api/proxy.py and api/drain.py use of aiohttp's StreamResponse: `prepare`,
    `prepared`, `write` (which waits while the client is not reading, as aiohttp's does),
    `write_eof`, and the inherited headers and content type.
    """

    def __init__(self, conn: Connection, headers: dict[str, str]) -> None:
        super().__init__(headers=headers)
        self._conn = conn
        self._started = False
        self._ended = False

    @property
    def prepared(self) -> bool:
        return self._started

    async def prepare(self, request: web.BaseRequest) -> None:
        if not self._started:
            self._conn.start_stream(self)
            self._started = True

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._ended:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not self._started:
            raise RuntimeError("Cannot call write() before prepare()")
        await self._conn.write_chunk(bytes(data))

    def write_now(self, data: bytes) -> bool:
        """A write with no wait (no coroutine): True once written, False when `write` must
        be awaited instead (the client is behind, or the connection closing)."""
        return self._started and not self._ended and self._conn.write_chunk_now(data)

    async def write_eof(self, data: bytes | bytearray | memoryview = b"") -> None:
        if self._ended:
            return
        if data:
            await self.write(data)
        self.end_now()

    def end_now(self) -> None:
        """The last chunk, unless it went already."""
        if not self._ended:
            self._ended = True
            self._conn.end_stream()
