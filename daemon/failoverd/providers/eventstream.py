"""AWS event stream framing (``application/vnd.amazon.eventstream``), as Bedrock streams.

Each message::

    total length (u32 BE) | headers length (u32 BE) | prelude CRC32 (u32 BE, of the 8 bytes before)
    headers: name length (u8), name, value type (u8), value ...
    payload
    message CRC32 (u32 BE, of everything before it)

`Decoder` takes the bytes as they come and hands back whole messages; a bad CRC, an impossible
length or a malformed header raises `FrameError` (the adapter's invalid_response: the stream
cannot be trusted past it).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass
from typing import Any

__all__ = ["Decoder", "FrameError", "Message"]

PRELUDE = 12  # total length, headers length, prelude CRC
MIN_MESSAGE = PRELUDE + 4  # no headers, no payload, the message CRC
# what the format allows: 16 MiB a message, 128 KiB of headers
MAX_MESSAGE = 16 * 1024 * 1024
MAX_HEADERS = 128 * 1024

_PRELUDE = struct.Struct(">III")
_U32 = struct.Struct(">I")
# fixed-size value types: (struct format, size); 0/1 (true/false) carry no value
_FIXED = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}
_BYTES, _STRING, _UUID = 6, 7, 9


class FrameError(ValueError):
    """The stream's bytes are not a valid event stream (CRC mismatch, bad length, header)."""


@dataclass(frozen=True, slots=True)
class Message:
    """One event stream message: its headers (``:message-type``, ``:event-type``, ...) and
    payload."""

    headers: dict[str, Any]
    payload: bytes

    @property
    def message_type(self) -> str:
        return str(self.headers.get(":message-type", ""))

    @property
    def event_type(self) -> str:
        return str(self.headers.get(":event-type", ""))


def _headers(data: bytes) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    at, end = 0, len(data)
    try:
        while at < end:
            size = data[at]
            name = data[at + 1:at + 1 + size].decode("utf-8")
            at += 1 + size
            kind = data[at]
            at += 1
            value: Any
            if kind in (0, 1):
                value = kind == 0
            elif kind in _FIXED:
                fmt = _FIXED[kind]
                value = struct.unpack_from(fmt, data, at)[0]
                at += struct.calcsize(fmt)
            elif kind in (_BYTES, _STRING):
                (length,) = struct.unpack_from(">H", data, at)
                raw = data[at + 2:at + 2 + length]
                if len(raw) != length:
                    raise FrameError("a header value runs past the headers")
                value = raw.decode("utf-8") if kind == _STRING else bytes(raw)
                at += 2 + length
            elif kind == _UUID:
                value = uuid.UUID(bytes=bytes(data[at:at + 16]))
                at += 16
            else:
                raise FrameError(f"unknown header value type {kind}")
            if not name or at > end:
                raise FrameError("a malformed header")
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, FrameError):
            raise
        raise FrameError(f"a malformed header: {exc}") from None
    return headers


class Decoder:
    """Incremental decoder: `feed` bytes, get the messages they complete. `needed` says how
    many more bytes the next message wants (a reader may wait for exactly that many)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held that do not make a whole message yet."""
        return len(self._buffer)

    @property
    def needed(self) -> int:
        """Bytes still missing for the next message (at least 1)."""
        if len(self._buffer) < PRELUDE:
            return PRELUDE - len(self._buffer)
        total = self._prelude()[0]
        return max(1, total - len(self._buffer))

    def _prelude(self) -> tuple[int, int]:
        total, headers_len, crc = _PRELUDE.unpack_from(self._buffer, 0)
        if zlib.crc32(self._buffer[:8]) != crc:
            raise FrameError("prelude CRC mismatch")
        if not MIN_MESSAGE <= total <= MAX_MESSAGE or headers_len > min(
                MAX_HEADERS, total - MIN_MESSAGE):
            raise FrameError(f"impossible lengths (message {total}, headers {headers_len})")
        return total, headers_len

    def feed(self, data: bytes) -> list[Message]:
        """The messages `data` completes, in order. Raises FrameError on a corrupt stream."""
        self._buffer += data
        out: list[Message] = []
        while len(self._buffer) >= PRELUDE:
            total, headers_len = self._prelude()
            if len(self._buffer) < total:
                break
            frame = bytes(self._buffer[:total])
            del self._buffer[:total]
            (crc,) = _U32.unpack_from(frame, total - 4)
            if zlib.crc32(frame[:-4]) != crc:
                raise FrameError("message CRC mismatch")
            headers = _headers(frame[PRELUDE:PRELUDE + headers_len])
            out.append(Message(headers, frame[PRELUDE + headers_len:-4]))
        return out
