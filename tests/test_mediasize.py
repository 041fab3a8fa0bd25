"""Inline media sizes (mediasize.py) and what they cost in the token estimate (tokens.py):
images from their pixel size, PDFs per page, with real file layouts built here."""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import pytest

from failoverd import mediasize, tokens
from tests.helpers import providers


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png(width: int, height: int) -> bytes:
    """A valid greyscale PNG of that size."""
    rows = (b"\0" + b"\0" * width) * height
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height,
                                                                8, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b""))


def jpeg(width: int, height: int, exif: int = 30_000) -> bytes:
    """A JPEG's segment layout: SOI, JFIF, large EXIF/ICC segments, then the frame header."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\1\1\0\0\1\0\1\0\0"
    app1 = b""
    while exif > 0:  # a segment holds at most 65533 bytes
        part = min(exif, 60_000)
        app1 += b"\xff\xe2" + struct.pack(">H", part + 2) + b"E" * part
        exif -= part
    sof = b"\xff\xc2" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\1\x11\0"
    return b"\xff\xd8" + app0 + app1 + sof + b"\xff\xda" + b"\0" * 64 + b"\xff\xd9"


def webp_vp8x(width: int, height: int) -> bytes:
    body = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + (width - 1).to_bytes(3, "little") \
        + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body + b"\0" * 16


def pdf(pages: int, *, compressed: bool) -> bytes:
    kids = " ".join(f"{i + 3} 0 R" for i in range(pages))
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", f"<< /Type /Pages /Kids [{kids}] "
               f"/Count {pages} >>"] + ["<< /Type /Page /Parent 2 0 R >>"] * pages
    if not compressed:
        body = "".join(f"{i + 1} 0 obj\n{o}\nendobj\n" for i, o in enumerate(objects))
        return b"%PDF-1.4\n" + body.encode() + b"trailer << /Root 1 0 R >>\n%%EOF"
    packed = zlib.compress(" ".join(objects).encode())
    return (b"%PDF-1.7\n" + f"9 0 obj\n<< /Type /ObjStm /N {len(objects)} /First 40 /Filter "
            f"/FlateDecode /Length {len(packed)} >>\nstream\n".encode() + packed
            + b"\nendstream\nendobj\n%%EOF")


def data_url(kind: str, data: bytes) -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("data, size", [
    (png(1920, 1080), (1920, 1080)), (png(3, 5), (3, 5)),
    (jpeg(4032, 3024), (4032, 3024)), (jpeg(800, 600, exif=200_000), (800, 600)),
    (webp_vp8x(1000, 700), (1000, 700)),
    (b"GIF89a" + struct.pack("<HH", 64, 32) + b"\0" * 40, (64, 32)),
])
def test_image_dimensions_are_read_from_the_bytes(data: bytes, size: tuple[int, int]) -> None:
    assert mediasize.image_dimensions(b64(data)) == size


@pytest.mark.parametrize("payload", ["", "!!!!", b64(b"not an image at all, just text......"),
                                     b64(png(10, 10))[:20], b64(b"\xff\xd8" + b"\0" * 64)])
def test_what_is_not_a_readable_image_is_none(payload: str) -> None:
    assert mediasize.image_dimensions(payload) is None


@pytest.mark.parametrize("compressed", [False, True])
def test_pdf_pages_also_inside_compressed_object_streams(compressed: bool) -> None:
    assert mediasize.pdf_pages(b64(pdf(12, compressed=compressed))) == 12
    assert mediasize.pdf_pages(b64(b"%PDF-1.7\n garbage")) is None
    assert mediasize.pdf_pages(b64(png(4, 4))) is None


def test_data_urls_by_media_type() -> None:
    assert mediasize.data_url_payload("data:image/png;base64,QUJD", "image/") == "QUJD"
    assert mediasize.data_url_payload("data:application/pdf;base64,QUJD", "image/") is None
    assert mediasize.data_url_payload("https://example.com/a.png", "image/") is None
    assert mediasize.data_url_payload("data:image/svg+xml,<svg/>", "image/") is None


@pytest.mark.parametrize("size, expected", [
    ((64, 64), 258),          # an icon: Gemini's floor (OpenAI 255, Anthropic 6)
    ((1024, 1024), 1399),     # Anthropic's pixels / 750 (OpenAI 765)
    ((4032, 3024), 1534),     # scaled to 1568 on the long edge first
    ((512, 8000), 765),       # tall: OpenAI's 4 tiles after scaling to 2048
])
def test_pixel_tokens_are_what_the_most_expensive_vendor_charges(
        size: tuple[int, int], expected: int) -> None:
    assert tokens.pixel_tokens(*size) == expected


def test_inline_media_in_a_message_count_by_size() -> None:
    big = {"type": "image_url", "image_url": {"url": data_url("image/png", png(1024, 1024))}}
    linked = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    doc = {"type": "file", "file": {"filename": "spec.pdf",
                                    "file_data": data_url("application/pdf",
                                                          pdf(30, compressed=True))}}
    assert tokens.content_tokens([big]) == 1399
    assert tokens.content_tokens([linked]) == tokens.IMAGE_TOKENS
    assert tokens.content_tokens([doc]) == 30 * tokens.PDF_PAGE_TOKENS


async def test_a_request_with_large_inline_media_skips_a_window_too_small(
        fake_openai: Any, start_daemon: Any) -> None:
    """A 40-page PDF counted as 256 tokens went to a 16k-window model that refused it."""
    small, big = await fake_openai(reply="small"), await fake_openai(reply="big")
    d = await start_daemon(f"""
{providers(s=small.url, b=big.url)}
[models."s/small"]
provider = "s"
context_window = 16000
[models."b/big"]
provider = "b"
context_window = 200000
[routing]
primary = "s/small"
fallbacks = ["b/big"]
[probes]
kind = "none"
""")
    doc = {"type": "file", "file": {"filename": "manual.pdf",
                                    "file_data": data_url("application/pdf",
                                                          pdf(40, compressed=True))}}
    body = {"model": "default", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Summarize this."}, doc]}]}
    resp = await d.http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "b/big"
    assert small.requests == []
