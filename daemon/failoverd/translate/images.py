"""Images in the canonical form and in the base64 shapes other APIs use.

The canonical (OpenAI) form carries an image as a content part
``{"type": "image_url", "image_url": {"url": ..., "detail": ...}}`` whose url is either a
``data:<media type>;base64,<data>`` URL or an http(s) URL. Anthropic, Gemini and Ollama want
the media type and the base64 payload separately; these helpers convert both ways so every
translator agrees on the edge cases (non-base64 data URLs, missing media types, bad input).
"""

from __future__ import annotations

import base64
import binascii
import urllib.parse
from dataclasses import dataclass
from typing import Any

from failoverd.errors import TranslationError

DEFAULT_MEDIA_TYPE = "application/octet-stream"
_STRIP_WS = str.maketrans("", "", " \t\r\n")


@dataclass(frozen=True, slots=True)
class InlineImage:
    """An image carried in the request itself: a media type and its base64 payload."""

    media_type: str
    data: str  # base64, standard alphabet, padded

    def to_data_url(self) -> str:
        return f"data:{self.media_type};base64,{self.data}"

    def decoded(self) -> bytes:
        return base64.b64decode(self.data)


def is_data_url(url: str) -> bool:
    return url[:5].lower() == "data:"


def is_http_url(url: str) -> bool:
    scheme = url.split(":", 1)[0].lower()
    return scheme in ("http", "https")


def parse_data_url(url: str, *, path: str) -> InlineImage:
    """Splits a ``data:`` URL into media type and base64 payload.

    Non-base64 data URLs (``data:image/svg+xml,%3Csvg...``) are percent-decoded and
    re-encoded, so callers always get base64. `path` names the request field in errors.
    """
    if not is_data_url(url):
        raise TranslationError(f"{path}: expected a data: URL", param=path)
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise TranslationError(f"{path}: malformed data: URL (no comma)", param=path)
    params = [p.strip() for p in header.split(";")]
    media_type = params[0].lower() or DEFAULT_MEDIA_TYPE
    if "base64" in (p.lower() for p in params[1:]):
        # whitespace and URL-safe alphabets occur in hand-made data URLs; normalise them
        cleaned = urllib.parse.unquote(payload).translate(_STRIP_WS).replace("-", "+")
        cleaned = cleaned.replace("_", "/")
        cleaned += "=" * (-len(cleaned) % 4)
        try:
            base64.b64decode(cleaned, validate=True)
        except (binascii.Error, ValueError):
            raise TranslationError(f"{path}: data: URL payload is not valid base64",
                                   param=path) from None
        return InlineImage(media_type, cleaned)
    raw = urllib.parse.unquote_to_bytes(payload)
    return InlineImage(media_type, base64.b64encode(raw).decode("ascii"))


def image_part(url: str, detail: str | None = None) -> dict[str, Any]:
    """A canonical ``image_url`` content part."""
    image: dict[str, Any] = {"url": url}
    if detail:
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def inline_image_part(media_type: str, data: str) -> dict[str, Any]:
    """A canonical ``image_url`` content part carrying base64 data as a data: URL."""
    return image_part(InlineImage(media_type, data).to_data_url())


def image_part_url(part: dict[str, Any], *, path: str) -> str:
    """The URL of a canonical ``image_url`` part (the object or the bare-string form)."""
    image = part.get("image_url")
    if isinstance(image, str):
        url = image
    elif isinstance(image, dict) and isinstance(image.get("url"), str):
        url = image["url"]
    else:
        raise TranslationError(f"{path}.image_url.url: missing or not a string",
                               param=f"{path}.image_url.url")
    if not url:
        raise TranslationError(f"{path}.image_url.url: empty", param=f"{path}.image_url.url")
    return url
