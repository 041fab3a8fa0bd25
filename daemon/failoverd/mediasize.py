"""The size of media a request carries inline: an image's pixel dimensions, a PDF's pages.

Read from base64 data URLs (``data:image/png;base64,...``) without an image library: PNG,
GIF and WebP keep their dimensions in the first bytes, JPEG in its first SOF segment (after
any EXIF, so up to `JPEG_SCAN_BYTES` are decoded); a PDF's pages are its ``/Type /Page``
objects, or else the largest ``/Count`` of a page tree. Anything else, or anything
malformed, is None: the caller falls back to a flat guess.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib

JPEG_SCAN_BYTES = 256 * 1024  # EXIF and ICC segments come before the frame header
PDF_SCAN_BYTES = 64 * 1024 * 1024  # larger files: pages guessed from the size
_PNG = b"\x89PNG\r\n\x1a\n"
_PAGE = re.compile(rb"/Type\s*/Page(?![s\w])")
_OBJECT_STREAM = re.compile(rb"/Type\s*/ObjStm\b.*?>>\s*stream\r?\n", re.S)
INFLATED_MAX = 16 * 1024 * 1024  # object streams inflated to find pages, at most
_COUNT = re.compile(rb"/Type\s*/Pages\b[^>]*?/Count\s+(\d+)|/Count\s+(\d+)[^>]*?/Type\s*/Pages\b")


def data_url_payload(url: str, kind: str) -> str | None:
    """The base64 payload of a data URL whose media type starts with `kind` ("image/",
    "application/pdf"), else None."""
    if not url.startswith("data:"):
        return None
    head, sep, payload = url.partition(",")
    if not sep or not head[5:].startswith(kind) or not head.endswith(";base64"):
        return None
    return payload


def _decode(payload: str, limit: int) -> bytes | None:
    chars = payload[:(limit + 2) // 3 * 4]  # whole 4-character groups
    chars = chars[:len(chars) - len(chars) % 4]
    try:
        return base64.b64decode(chars)
    except (binascii.Error, ValueError):
        return None


def image_dimensions(payload: str) -> tuple[int, int] | None:
    """(width, height) of a base64 PNG, GIF, WebP or JPEG image, else None."""
    head = _decode(payload, 64)
    if head is None or len(head) < 30:
        return None
    size: tuple[int, int] | None
    if head.startswith(_PNG) and head[12:16] == b"IHDR":
        size = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        size = int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        size = _webp(head)
    elif head[:2] == b"\xff\xd8":
        data = _decode(payload, JPEG_SCAN_BYTES)
        size = _jpeg(data) if data is not None else None
    else:
        return None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _webp(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8X":
        return (int.from_bytes(head[24:27], "little") + 1,
                int.from_bytes(head[27:30], "little") + 1)
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        return (int.from_bytes(head[26:28], "little") & 0x3FFF,
                int.from_bytes(head[28:30], "little") & 0x3FFF)
    return None


def _jpeg(data: bytes) -> tuple[int, int] | None:
    pos = 2
    end = len(data)
    while pos + 9 <= end:  # bounded: every step moves past one whole segment
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            return width, height
        if length < 2:
            return None
        pos += 2 + length
    return None


def pdf_pages(payload: str) -> int | None:
    """Pages of a base64 PDF: its page objects, else its page tree's count; None when
    neither can be read (compressed object streams hide both) or it is not a PDF."""
    if len(payload) > PDF_SCAN_BYTES // 3 * 4:
        return None
    data = _decode(payload, PDF_SCAN_BYTES)
    if data is None or not data.startswith(b"%PDF"):
        return None
    pages = len(_PAGE.findall(data))
    counts = [int(a or b) for a, b in _COUNT.findall(data)]
    if not pages and not counts:  # PDF 1.5+: the objects sit in compressed object streams
        for inflated in _object_streams(data):
            pages += len(_PAGE.findall(inflated))
            counts += [int(a or b) for a, b in _COUNT.findall(inflated)]
    if pages:
        return pages
    return max(counts) if counts else None


def _object_streams(data: bytes) -> list[bytes]:
    """The inflated contents of a PDF's object streams (FlateDecode), `INFLATED_MAX` in all."""
    out: list[bytes] = []
    budget = INFLATED_MAX
    for match in _OBJECT_STREAM.finditer(data):
        end = data.find(b"endstream", match.end())
        if end < 0 or budget <= 0:
            break
        inflater = zlib.decompressobj()
        try:
            chunk = inflater.decompress(data[match.end():end], budget)
        except zlib.error:
            continue
        budget -= len(chunk)
        out.append(chunk)
    return out
