"""A fast prompt-token estimator for canonical (OpenAI Chat Completions) request bodies.

No tokenizer is loaded: the router only needs to know whether a request fits a model's
context window, and has to know it in microseconds for every candidate. The estimate works
on whole strings with C-speed `str`/`bytes` operations (no per-character Python loop), so a
100 KB request costs one to three milliseconds.

How text is counted: the ASCII characters are sorted into classes (lower- and upper-case
letters, digits, whitespace, newlines, other symbols) by one ``bytes.translate``, and the
estimate follows what every BPE tokenizer's pre-split does (cl100k, o200k, Llama 3, Qwen):
a token never spans a letter/digit/symbol boundary, digits go in groups of at most three,
and a run of symbols (``":``, ``},{"``, ``-----``) is a token or two. So:

- letters: half a token per run of letters plus one per 8 letters, and two more per
  lower-to-upper case change (camelCase, base64);
- digits: one token per run of digits, plus a third of the digits beyond 1.5 per run;
- symbols: one token per run, a sixteenth per symbol, less half a token where a symbol
  joins the word after it (``.com``, ``self.x``); half a token per newline;
- non-ASCII text: half a token per extra UTF-8 byte (about 0.5 per accented Latin, Greek
  or Cyrillic letter, 1 per CJK character) and one more per character outside the BMP
  (emoji: 2.5).

Strings over `SAMPLE_OVER` characters are estimated from `SAMPLES` evenly spaced windows
and scaled to their length: a megabyte in one string costs about as much as 32 KB.

Around the text:

- Per message: 4 tokens (role and separators), plus 3 priming the reply, as in OpenAI's
  published chat-format accounting.
- Images: inline ones (base64 data URLs) from their pixel size (mediasize.py), as the most
  any vendor charges for it (`pixel_tokens`: 258 for an icon, 1,398 for 1024x1024, about
  1,600 at most); linked ones a flat `IMAGE_TOKENS` (765, OpenAI's cost of a 1024x1024 image
  at high detail) or `IMAGE_TOKENS_LOW` (85) for ``detail: "low"``. The image URL itself
  (often a large base64 data URL) is never counted as text.
- Inline PDFs (``file`` parts): `PDF_PAGE_TOKENS` per page.
- Tools and a json_schema response_format: their JSON text, counted like text, plus a small
  fixed overhead per tool.

Error bound: against the cl100k/o200k tokenizers the estimate stays within about ±15% for
English prose, source code, JSON (numeric arrays, API responses, tool results), CSV, logs,
hex, UUIDs and base64 of a few hundred tokens or more (counted as characters / 4, numeric
JSON would come out up to 4x too small), within about ±40% for other scripts (CJK,
Cyrillic) and emoji; very short strings are off by a token or two. Other vendors'
tokenizers (Claude, Gemini, Llama) differ from OpenAI's by roughly another 10-20%. Linked
images are exact only for 1024x1024 high-detail OpenAI input; PDF pages vary by half either
way. Callers that need a hard guarantee
must keep a margin; the upstream's context_overflow error remains the final word.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from failoverd import mediasize

logger = logging.getLogger(__name__)

TOKENS_PER_MESSAGE = 4
REPLY_PRIMING_TOKENS = 3
TOKENS_PER_NAME = 1
IMAGE_TOKENS = 765
IMAGE_TOKENS_LOW = 85
GEMINI_IMAGE_TOKENS = 258  # an image up to 384x384 on Gemini; no vendor charges less
PDF_PAGE_TOKENS = 2000  # a PDF page's text and image (Anthropic: 1,500 to 3,000)
TOKENS_PER_TOOL = 8
# Audio, files and part types we do not know: a flat guess rather than the size of their
# (usually base64) payload.
OTHER_PART_TOKENS = 256
# Longer strings are estimated from SAMPLES windows of SAMPLE_CHARS characters each.
SAMPLE_OVER = 32_768
SAMPLES = 16
SAMPLE_CHARS = 2048

_IMAGE_PART_TYPES = frozenset({"image_url", "image", "input_image"})


def text_tokens(text: str) -> int:
    """Estimated tokens of one string (see the module docstring for the rules and bound)."""
    n = len(text)
    if n == 0:
        return 0
    if n <= SAMPLE_OVER:
        return math.ceil(_sample_tokens(text))
    step = n // SAMPLES
    sampled = sum(_sample_tokens(text[i * step:i * step + SAMPLE_CHARS]) for i in range(SAMPLES))
    return math.ceil(sampled * n / (SAMPLES * SAMPLE_CHARS))


def _table(classes: dict[bytes, bytes], default: bytes) -> bytes:
    table = bytearray(default * 256)
    for members, mark in classes.items():
        for c in members:
            table[c] = mark[0]
    return bytes(table)


_LOWER = bytes(range(97, 123))
_UPPER = bytes(range(65, 91))
_DIGITS = bytes(range(48, 58))
_SPACE = b" \t\r\x0b\x0c\n"
# each character's class: letter a/A, digit 0, whitespace and newline, other symbol "."
_CLASSES = _table({_LOWER: b"a", _UPPER: b"A", _DIGITS: b"0", b" \t\r\x0b\x0c": b" ",
                   b"\n": b"\n"}, b".")
# one class against the rest ("_"), to count its runs with a single two-byte search
_LETTER_RUNS = _table({_LOWER + _UPPER: b"a"}, b"_")
_DIGIT_RUNS = _table({_DIGITS: b"0"}, b"_")
_SYMBOL_RUNS = _table({_LOWER + _UPPER + _DIGITS + _SPACE: b"_"}, b".")


def _sample_tokens(text: str) -> float:
    if text.isascii():
        raw = text.encode("ascii")
        extra_bytes = astral = 0
    else:
        # single C passes; surrogatepass keeps lone surrogates from raising
        raw = text.encode("ascii", "ignore")
        extra_bytes = len(text.encode("utf-8", "surrogatepass")) - len(text)
        astral = len(text.encode("utf-16-le", "surrogatepass")) // 2 - len(text)
    cls = raw.translate(_CLASSES)
    letters = raw.translate(_LETTER_RUNS)
    digits = raw.translate(_DIGIT_RUNS)
    symbols = raw.translate(_SYMBOL_RUNS)
    # run counts: "a_" ends a letter run, "_0" starts a digit run, "_." a symbol run
    letter_runs = letters.count(b"a_") + (letters[-1:] == b"a")
    digit_runs = digits.count(b"_0") + (digits[:1] == b"0")
    symbol_runs = symbols.count(b"_.") + (symbols[:1] == b".")
    n_letters = len(raw) - letters.count(b"_")
    n_digits = len(raw) - digits.count(b"_")
    n_symbols = len(raw) - symbols.count(b"_")
    estimate = (0.5 * letter_runs + n_letters / 8 + 2.0 * cls.count(b"aA")
                + digit_runs + max(0.0, n_digits - 1.5 * digit_runs) / 3
                + symbol_runs - 0.5 * (cls.count(b".a") + cls.count(b".A")) + n_symbols / 16
                + 0.5 * raw.count(b"\n"))
    return estimate + 0.5 * extra_bytes + astral


def content_tokens(content: Any) -> int:
    """Estimated tokens of a message's ``content``: a string or a list of content parts."""
    if isinstance(content, str):
        return text_tokens(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if isinstance(part, str):
            total += text_tokens(part)
            continue
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            total += text_tokens(text) if isinstance(text, str) else 0
        elif kind in _IMAGE_PART_TYPES:
            total += image_tokens(part)
        elif kind == "file":
            total += file_tokens(part)
        elif kind == "refusal":
            refusal = part.get("refusal")
            total += text_tokens(refusal) if isinstance(refusal, str) else 0
        else:
            total += OTHER_PART_TOKENS
    return total


def image_tokens(part: Mapping[str, Any]) -> int:
    """One image part: from its pixel size when it is inline (a base64 data URL), else the
    flat `IMAGE_TOKENS` (`IMAGE_TOKENS_LOW` for ``detail: "low"``)."""
    image = part.get("image_url")
    detail = image.get("detail") if isinstance(image, Mapping) else part.get("detail")
    url = image.get("url") if isinstance(image, Mapping) else image
    payload = mediasize.data_url_payload(url, "image/") if isinstance(url, str) else None
    size = mediasize.image_dimensions(payload) if payload is not None else None
    if size is None:
        return IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS
    return pixel_tokens(*size, low_detail=detail == "low")


def pixel_tokens(width: int, height: int, *, low_detail: bool = False) -> int:
    """The most any of the vendors charges for a `width` x `height` image (whichever model
    serves it): OpenAI's 512-pixel tiles after scaling to 2048 and a 768 shortest side (85
    at low detail, which Anthropic and Gemini ignore), Anthropic's pixels / 750 after
    scaling to a 1568 long edge and 1.15 megapixels, Gemini's 258 for a small image."""
    w, h = float(width), float(height)
    if low_detail:
        openai = IMAGE_TOKENS_LOW
    else:
        scale = min(1.0, 2048 / max(w, h))
        ow, oh = w * scale, h * scale
        scale = min(1.0, 768 / min(ow, oh))
        ow, oh = ow * scale, oh * scale
        openai = 85 + 170 * math.ceil(ow / 512) * math.ceil(oh / 512)
    scale = min(1.0, 1568 / max(w, h), math.sqrt(1_150_000 / (w * h)))
    anthropic = math.ceil(w * scale * h * scale / 750)
    return max(openai, anthropic, GEMINI_IMAGE_TOKENS)


def file_tokens(part: Mapping[str, Any]) -> int:
    """One file part: `PDF_PAGE_TOKENS` per page of an inline PDF (text and a picture of each
    page, as Anthropic and OpenAI read them), else the flat `OTHER_PART_TOKENS`."""
    file = part.get("file")
    data = file.get("file_data") if isinstance(file, Mapping) else None
    payload = mediasize.data_url_payload(data, "application/pdf") \
        if isinstance(data, str) else None
    pages = mediasize.pdf_pages(payload) if payload is not None else None
    return pages * PDF_PAGE_TOKENS if pages else OTHER_PART_TOKENS


def message_tokens(message: Mapping[str, Any]) -> int:
    """Estimated tokens of one chat message, including its per-message overhead."""
    total = TOKENS_PER_MESSAGE + content_tokens(message.get("content"))
    name = message.get("name")
    if isinstance(name, str) and name:
        total += TOKENS_PER_NAME + text_tokens(name)
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            total += _tool_call_tokens(call)
    legacy_call = message.get("function_call")
    if isinstance(legacy_call, Mapping):
        total += _tool_call_tokens({"function": legacy_call})
    return total


def _tool_call_tokens(call: Any) -> int:
    if not isinstance(call, Mapping):
        return 0
    fn = call.get("function")
    if not isinstance(fn, Mapping):
        return TOKENS_PER_TOOL
    total = TOKENS_PER_TOOL
    for key in ("name", "arguments"):
        value = fn.get(key)
        if isinstance(value, str):
            total += text_tokens(value)
    return total


def json_tokens(value: Any) -> int:
    """Estimated tokens of a JSON value (a tool's schema, a response_format)."""
    try:
        encoded = orjson.dumps(value)
    except TypeError:
        # Not JSON-serialisable: the API rejects such bodies long before they get here.
        return 0
    return text_tokens(encoded.decode("utf-8"))


def tools_tokens(tools: Iterable[Any]) -> int:
    """Estimated tokens the tool definitions add to the prompt."""
    return sum(TOKENS_PER_TOOL + json_tokens(tool) for tool in tools)


def messages_tokens(messages: Iterable[Any]) -> int:
    """Estimated tokens of a list of messages, without the reply priming."""
    return sum(message_tokens(m) for m in messages if isinstance(m, Mapping))


def overhead_tokens(body: Mapping[str, Any]) -> int:
    """Tokens a body costs apart from its messages: tools, schemas and the reply priming."""
    total = REPLY_PRIMING_TOKENS
    tools = body.get("tools")
    if isinstance(tools, list):
        total += tools_tokens(tools)
    functions = body.get("functions")  # the legacy spelling of tools
    if isinstance(functions, list):
        total += tools_tokens(functions)
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "json_schema":
        total += json_tokens(fmt.get("json_schema"))
    return total


def estimate(body: Mapping[str, Any]) -> int:
    """Estimated prompt tokens of a whole canonical request body."""
    messages = body.get("messages")
    total = overhead_tokens(body)
    if isinstance(messages, list):
        total += messages_tokens(messages) + loop_thinking_tokens(messages)
    return total


def loop_thinking_tokens(messages: list[Any]) -> int:
    """Tokens of the signed thinking replayed in the current tool loop (the assistant turns
    after the last user message): Anthropic keeps those in the prompt and counts them, while
    it strips (and does not count) the thinking of earlier turns. Unsigned blocks are never
    sent, so they count nothing; other providers never get any, so for them this errs large
    by one loop's thinking."""
    total = 0
    for message in reversed(messages):
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        if role == "user":
            break
        blocks = message.get("thinking_blocks") if role == "assistant" else None
        if not isinstance(blocks, list):
            continue
        for block in blocks:
            if not isinstance(block, Mapping):
                continue
            if block.get("type") == "thinking" and block.get("signature"):
                text = block.get("thinking")
            elif block.get("type") == "redacted_thinking":
                text = block.get("data")
            else:
                continue
            if isinstance(text, str):
                total += text_tokens(text)
    return total
