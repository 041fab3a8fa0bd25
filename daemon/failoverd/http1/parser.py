"""Sans-I/O HTTP/1.1 response parser: bytes in, a head and body pieces out (h11's shape).

It knows message framing (Content-Length, chunked, read-until-close, bodiless statuses),
skips interim 1xx answers, decodes gzip/deflate content, and decides whether the connection
can carry another request. It does no I/O: the connection feeds it and receives callbacks.
"""

from __future__ import annotations

import zlib
from typing import Protocol, overload

from failoverd.http1.errors import PayloadError, ProtocolError, ServerDisconnected

MAX_HEAD = 64 * 1024
# what a compressed body may decode to: a few KB of gzip can stand for gigabytes (a bomb, or
# a broken upstream), and one read of it would be decoded whole into memory
MAX_DECODED = 64 * 1024 * 1024
_MAX_CHUNK_LINE = 1024
_MAX_LENGTH_DIGITS = 18
_HEX = b"0123456789abcdefABCDEF"

# parser states
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class Headers:
    """Read-only, case-insensitive response headers; repeated fields are joined with ", "."""

    __slots__ = ("_map",)

    def __init__(self, fields: dict[str, str]) -> None:
        self._map = fields  # keys are lower case

    @overload
    def get(self, name: str) -> str | None: ...

    @overload
    def get(self, name: str, default: str) -> str: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self._map.get(name)  # callers mostly ask in lower case already
        return value if value is not None else self._map.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def items(self) -> list[tuple[str, str]]:
        return list(self._map.items())

    def first(self, names: tuple[str, ...]) -> str | None:
        """The value of the first of `names` (lower case) that is present and not empty:
        one dictionary lookup per name, on every upstream answer (requestid.py)."""
        fields = self._map
        for name in names:
            value = fields.get(name)
            if value:
                return value
        return None

    def __len__(self) -> int:
        return len(self._map)

    def __repr__(self) -> str:
        return f"Headers({self._map!r})"


class Head:
    """A final (non-1xx) response's status line and headers."""

    __slots__ = ("status", "reason", "version", "headers")

    def __init__(self, status: int, reason: str, version: str, headers: Headers) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = headers


class Sink(Protocol):
    """Where the parser delivers a response: the head once, body pieces, then completion."""

    def on_head(self, head: Head) -> None: ...

    def on_body(self, data: bytes) -> None: ...

    def on_complete(self) -> None: ...


def parse_head(raw: bytes) -> Head:
    """The status line and header fields of one response head (without the blank line)."""
    end = raw.find(b"\r\n")
    status_line = raw if end < 0 else raw[:end]
    parts = status_line.split(b" ", 2)
    # bytes.isdigit() is ASCII-only: the version and status decode safely below
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[0]) != 8 \
            or not parts[0][7:].isdigit() or len(parts[1]) != 3 or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:60]!r}")
    fields: dict[str, str] = {}
    if end >= 0:
        # the fields decoded at once (latin-1 maps every byte to one character)
        for line in raw[end + 2:].decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if not sep or not name or name[-1] in " \t" or line[0] in " \t":
                shown = line[:60].encode("latin-1")
                raise ProtocolError(f"malformed header line: {shown!r}")
            key = name.lower()
            value = value.strip(" \t")
            fields[key] = f"{fields[key]}, {value}" if key in fields else value
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    return Head(int(parts[1]), reason, parts[0][5:].decode(), Headers(fields))


def _content_length(value: str) -> int:
    if value.isascii() and value.isdigit() and len(value) <= _MAX_LENGTH_DIGITS:
        return int(value)  # the common case: one plain number
    # a repeated header arrives joined: every copy must agree (RFC 9110 8.6)
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1:
        raise ProtocolError(f"conflicting Content-Length values: {value[:60]!r}")
    text = values.pop()
    # past 4300 digits int() raises ValueError; a body of 10**18 bytes is no body either
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_LENGTH_DIGITS:
        raise ProtocolError(f"invalid Content-Length: {value[:60]!r}")
    return int(text)


class ResponseParser:
    """Parses one response after another from a connection's bytes into a `Sink`.

    `feed` raises ProtocolError or PayloadError; `feed_eof` also ServerDisconnected. After
    `on_complete`, `keep_alive` says whether the connection may carry another request.
    """

    __slots__ = ("_sink", "_buf", "_state", "_remaining", "_decoder", "_expect_body", "got_bytes",
                 "keep_alive", "head", "_coded", "_decoded")

    def __init__(self, sink: Sink, *, expect_body: bool = True) -> None:
        self._sink = sink
        self._buf = bytearray()
        self._state = _HEAD
        self._remaining = 0
        self._decoder: zlib._Decompress | None = None
        self._coded = False  # the decoder has been fed
        self._decoded = 0  # bytes the decoder produced for this response
        self._expect_body = expect_body  # False for HEAD requests
        self.got_bytes = False
        self.keep_alive = False
        self.head: Head | None = None

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.got_bytes = True
        state = self._state
        if state == _LENGTH and not self._buf:
            # the common case of a body continuing: no copy into the buffer
            remaining = self._remaining
            if len(data) <= remaining:
                self._remaining = remaining - len(data)
                self._emit(data)
                if self._remaining == 0:
                    self._finish()
                return
        elif state == _UNTIL_CLOSE:
            self._emit(data)
            return
        elif state == _DONE:
            # bytes nobody asked for: the connection is in an unknown state
            self.keep_alive = False
            return
        self._buf += data
        self._run()

    def feed_eof(self) -> None:
        state = self._state
        if state == _DONE:
            return
        if state == _UNTIL_CLOSE:
            self._finish()
            return
        if state == _HEAD:
            raise ServerDisconnected(
                "the server closed the connection without answering" if not self.got_bytes
                else "the server closed the connection in the middle of the response head",
                got_bytes=self.got_bytes)
        raise PayloadError("the connection closed before the response body was complete")

    # ------------------------------------------------------------------ internals

    def _run(self) -> None:
        buf = self._buf
        while buf:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0 and len(buf) <= MAX_HEAD:
                    return
                if end < 0 or end > MAX_HEAD:
                    raise ProtocolError(f"response head larger than {MAX_HEAD} bytes")
                raw = bytes(buf[:end])
                del buf[:end + 4]
                self._start(raw)
            elif state == _LENGTH or state == _CHUNK_DATA:
                remaining = self._remaining
                if len(buf) <= remaining:
                    piece = bytes(buf)
                    buf.clear()
                else:
                    piece = bytes(buf[:remaining])
                    del buf[:remaining]
                self._remaining -= len(piece)
                self._emit(piece)
                if self._remaining == 0:
                    if state == _LENGTH:
                        self._finish()
                    else:
                        self._state = _CHUNK_END
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > _MAX_CHUNK_LINE:
                        raise ProtocolError("chunk size line too long")
                    return
                field = bytes(buf[:end]).split(b";", 1)[0].strip(b" \t")
                del buf[:end + 2]
                if not field or field.strip(_HEX):
                    raise ProtocolError(f"invalid chunk size: {field[:20]!r}")
                size = int(field, 16)
                if size == 0:
                    self._state = _TRAILERS
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_END:
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                del buf[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise ProtocolError(f"trailers larger than {MAX_HEAD} bytes")
                    return
                del buf[:end + 2]
                if end == 0:
                    self._finish()
            elif state == _UNTIL_CLOSE:
                piece = bytes(buf)
                buf.clear()
                self._emit(piece)
            else:  # _DONE with bytes left over
                self.keep_alive = False
                buf.clear()

    def _start(self, raw: bytes) -> None:
        head = parse_head(raw)
        status = head.status
        if status < 200:
            if status == 101:
                raise ProtocolError("unexpected 101 Switching Protocols")
            if status < 100:  # no HTTP status (RFC 9110 15), not an interim answer
                raise ProtocolError(f"invalid status code: {status:03d}")
            return  # interim (100 Continue, 103 Early Hints): the final answer follows
        headers = head.headers._map  # lower-case names: no need for Headers.get's lower()
        connection = headers.get("connection")
        if connection is None:
            keep_alive = head.version != "1.0"
        else:
            # a list of tokens (RFC 9110 7.6.1): "close" wins over "keep-alive", which only
            # an HTTP/1.0 answer needs to keep the connection
            tokens = {token.strip() for token in connection.lower().split(",")}
            keep_alive = "close" not in tokens and (head.version != "1.0"
                                                    or "keep-alive" in tokens)
        te = headers.get("transfer-encoding")
        if not self._expect_body or status in (204, 304):
            state = _DONE
        elif te is not None:
            if te.strip().lower() != "chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding: {te!r}")
            state = _CHUNK_SIZE
        elif (length := headers.get("content-length")) is not None:
            self._remaining = _content_length(length)
            state = _LENGTH if self._remaining else _DONE
        else:
            state = _UNTIL_CLOSE
            keep_alive = False
        coding = (headers.get("content-encoding") or "").strip().lower()
        if state == _DONE or coding in ("", "identity"):
            pass  # no body to decode (a HEAD or 204 may still name its coding)
        elif coding in ("gzip", "x-gzip", "deflate"):
            # 32 + MAX_WBITS accepts both the gzip and the zlib wrapper
            self._decoder = zlib.decompressobj(32 + zlib.MAX_WBITS)
            self._coded = False
            self._decoded = 0
        else:
            raise ProtocolError(f"unsupported Content-Encoding: {coding!r}")
        self.keep_alive = keep_alive
        self.head = head
        self._state = state
        self._sink.on_head(head)
        if state == _DONE:
            self._finish()

    def _emit(self, data: bytes) -> None:
        decoder = self._decoder
        if decoder is not None:
            self._coded = True
            # never more than the cap, plus a byte to tell that it was passed
            room = MAX_DECODED - self._decoded + 1
            try:
                data = decoder.decompress(data, room)
                while decoder.eof and decoder.unused_data and len(data) < room:
                    # gzip members one after another (RFC 1952 2.2): one stream of text
                    rest = decoder.unused_data
                    decoder = self._decoder = zlib.decompressobj(32 + zlib.MAX_WBITS)
                    data += decoder.decompress(rest, room - len(data))
            except zlib.error as exc:
                raise PayloadError(f"cannot decode the response body: {exc}") from None
            self._decoded += len(data)
            if self._decoded > MAX_DECODED:
                raise PayloadError(f"the response body decodes to more than {MAX_DECODED} "
                                   "bytes")
            if not data:
                return
        self._sink.on_body(data)

    def _finish(self) -> None:
        decoder = self._decoder
        if decoder is not None:
            self._decoder = None
            try:
                tail = decoder.flush()
            except zlib.error as exc:
                raise PayloadError(f"cannot decode the response body: {exc}") from None
            if self._coded and not decoder.eof:
                raise PayloadError("the compressed response body is truncated")
            if tail:
                self._sink.on_body(tail)
        self._state = _DONE
        if self._buf:
            self.keep_alive = False
            self._buf.clear()
        self._sink.on_complete()
