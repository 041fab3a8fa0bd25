"""OpenAI's audio transcription and translation requests (`multipart/form-data`): read from the
client, checked, and written again for an upstream with its own model name.

The form is kept field by field, in order, files as bytes: an OpenAI-compatible upstream
(OpenAI, Groq, a local whisper server) gets what the client sent with `model` replaced.

A transcription asked with ``stream=true`` answers OpenAI's server-sent events:
``data: {"type": "transcript.text.delta", "delta": ...}`` for each piece of the text (with
``logprobs`` when the form asks for them, ``segment_id`` from the diarizing model) and a last
``data: {"type": "transcript.text.done", "text": ..., "usage": {...}}``; with
``response_format=diarized_json`` ``transcript.text.segment`` events too. Translations do
not stream.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from failoverd.errors import RequestError
from failoverd.http1.connection import MAX_BODY

# what each response_format is answered as (OpenAI's; JSON unless the form asks otherwise)
CONTENT_TYPES = {
    "json": "application/json", "verbose_json": "application/json",
    "diarized_json": "application/json", "text": "text/plain; charset=utf-8",
    "srt": "text/plain; charset=utf-8", "vtt": "text/vtt; charset=utf-8",
}
MAX_FIELDS = 64  # fields of one form: a transcription has a dozen at most
# words of a speech server that cannot read the upload's format (whisper.cpp's server without
# --convert: "failed to read WAV file"), which another server may read
UNREADABLE_MARKERS = ("failed to read", "ffmpeg", "could not decode", "unsupported audio",
                      "unsupported file format")
# the formats a streamed transcription may ask for (OpenAI's streaming models answer json,
# text or diarized_json; srt, vtt and verbose_json are whisper-1's, which never streams)
STREAM_FORMATS = ("json", "text", "diarized_json")
DELTA = "transcript.text.delta"
DONE = "transcript.text.done"
# the most one answer may bring: what the upstream client reads whole
MAX_TRANSCRIPT = MAX_BODY
# a refusal of the `stream` field: OpenAI's param, FastAPI's loc ["body", "stream"], the
# words of a server that has no streaming ("Streaming is not supported for whisper-1");
# not "could not decode the audio stream", which is about the client's file
_STREAM_REFUSED = re.compile(
    r"""streaming|['"`]stream['"`]|(?<!audio )(?<!input )\bstream\s*"""
    r"""(?:=|:|is not\b|isn't|not\b|param|field|option|argument)""",
    re.IGNORECASE)
_TOKEN = re.compile(r'([A-Za-z0-9_.*-]+)=("(?:[^"\\]|\\.)*"|[^;\s]*)')


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    value: bytes
    filename: str | None = None  # a file part
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Form:
    """A transcription request as its fields, with the ones failoverd reads."""

    fields: tuple[Field, ...]
    model: str
    response_format: str
    # the client's boundary, used again upstream: no byte of its fields can hold it
    boundary: str = ""
    stream: bool = False  # stream=true: the answer is server-sent events

    def text(self, name: str) -> str | None:
        for f in self.fields:
            if f.name == name and f.filename is None:
                return f.value.decode("utf-8", "replace")
        return None

    @property
    def audio_bytes(self) -> int:
        return sum(len(f.value) for f in self.fields if f.name == "file")

    def encode(self, model_name: str) -> tuple[bytes, str]:
        """(body, content type) of the form again, `model` set to `model_name`."""
        boundary = self.boundary or f"failoverd-{uuid.uuid4().hex}"
        out: list[bytes] = []
        for f in self.fields:
            value = model_name.encode() if f.name == "model" and f.filename is None \
                else f.value
            disposition = f'form-data; name="{_quoted(f.name)}"'
            if f.filename is not None:
                disposition += f'; filename="{_quoted(f.filename)}"'
            head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            if f.content_type:
                head += f"Content-Type: {f.content_type}\r\n"
            out += [head.encode(), b"\r\n", value, b"\r\n"]
        out.append(f"--{boundary}--\r\n".encode())
        return b"".join(out), f"multipart/form-data; boundary={boundary}"


def parse(raw: bytes, content_type: str, task: str = "transcriptions") -> Form:
    """The client's form for `task` (``transcriptions`` or ``translations``); RequestError
    naming what is wrong with it.

    The body is walked by offsets (`find`), each value sliced out once: a 30 MB upload is
    copied once, and a body of millions of tiny parts is refused at MAX_FIELDS before it
    has cost more than that many parts."""
    kind, params = _header_params(content_type)
    if kind != "multipart/form-data":
        raise RequestError(f"the body must be multipart/form-data (a file upload), got "
                           f"{kind or 'no Content-Type'!r}")
    boundary = params.get("boundary")
    if not boundary:
        raise RequestError("the multipart/form-data Content-Type has no boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    separator = b"\r\n" + delimiter
    if raw.startswith(delimiter):
        pos = len(delimiter)
    else:  # a preamble before the first boundary
        found = raw.find(separator)
        if found < 0:
            raise RequestError("the multipart body has no part (its boundary is not in it)")
        pos = found + len(separator)
    fields: list[Field] = []
    while True:
        if raw.startswith(b"--", pos):
            break  # the closing boundary (an epilogue may follow)
        end = raw.find(separator, pos)
        if end < 0:
            if raw.find(b"\n" + delimiter, pos) >= 0:
                raise RequestError("the multipart body's lines end in LF alone: "
                                   "multipart/form-data needs CRLF")
            raise RequestError("the multipart body is cut: it does not end with its closing "
                               "boundary")
        if len(fields) == MAX_FIELDS:
            raise RequestError(f"the form has more than {MAX_FIELDS} fields")
        fields.append(_part(raw, pos, end))
        pos = end + len(separator)
    return _checked(tuple(fields), boundary, task)


def _part(raw: bytes, start: int, end: int) -> Field:
    """The field between `start` (just after its boundary) and `end` (the next one)."""
    if not raw.startswith(b"\r\n", start):
        raise RequestError("a multipart part does not start on a new line after its boundary")
    blank = raw.find(b"\r\n\r\n", start + 2, end)
    if blank < 0:
        raise RequestError("a multipart part has no blank line after its headers")
    head = raw[start + 2:blank]
    disposition = content_type = None
    for line in head.decode("utf-8", "replace").split("\r\n"):
        name, _, text = line.partition(":")
        if name.strip().lower() == "content-disposition":
            disposition = text.strip()
        elif name.strip().lower() == "content-type":
            content_type = text.strip()
    if disposition is None:
        raise RequestError("a multipart part has no Content-Disposition")
    kind, params = _header_params(disposition)
    if kind != "form-data" or "name" not in params:
        raise RequestError("a multipart part is not a form-data field with a name")
    return Field(params["name"], raw[blank + 4:end], params.get("filename"), content_type)


def _checked(fields: tuple[Field, ...], boundary: str, task: str) -> Form:
    names = [f.name for f in fields]
    files = [f for f in fields if f.name == "file"]
    if not files or files[0].filename is None:
        raise RequestError("'file' is required: the audio, as a file part", param="file")
    if len(files) > 1:
        raise RequestError("'file' is given more than once", param="file")
    if not files[0].value:
        raise RequestError("'file' is empty", param="file")
    for name in ("model", "response_format", "language", "prompt", "temperature", "stream"):
        if names.count(name) > 1:
            raise RequestError(f"'{name}' is given more than once", param=name)
    form = Form(fields, "", "json", boundary)
    model = form.text("model")
    if not model:
        raise RequestError("'model' is required: a transcription model, a chain or 'default'",
                           param="model")
    fmt = form.text("response_format") or "json"
    if fmt not in CONTENT_TYPES:
        raise RequestError(f"'response_format' must be one of {', '.join(CONTENT_TYPES)}, got "
                           f"{fmt!r}", param="response_format")
    flag = (form.text("stream") or "false").strip().lower()
    if flag not in ("true", "false", "1", "0"):
        raise RequestError(f"'stream' must be true or false, got {form.text('stream')!r}",
                           param="stream")
    stream = flag in ("true", "1")
    if stream and task != "transcriptions":
        raise RequestError("translations do not stream (OpenAI's /v1/audio/translations has "
                           "no stream): ask without stream, or transcribe with stream=true",
                           param="stream")
    if stream and fmt not in STREAM_FORMATS:
        raise RequestError(f"a streamed transcription's 'response_format' must be one of "
                           f"{', '.join(STREAM_FORMATS)}, got {fmt!r}",
                           param="response_format")
    return Form(fields, model, fmt, boundary, stream)


def refuses_stream(body: bytes) -> bool:
    """Whether an upstream's 400 (or 422) body refuses the form's `stream` field: a model or
    server that cannot stream transcriptions, which another may."""
    return _STREAM_REFUSED.search(body.decode("utf-8", "replace")) is not None


def event(data: dict[str, Any]) -> bytes:
    """One server-sent event of a transcription stream, framed as OpenAI frames them."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


def delta(text: str) -> bytes:
    """The event carrying the next piece of the transcript."""
    return event({"type": DELTA, "delta": text})


def done(text: str, usage: dict[str, Any] | None = None,
         logprobs: list[Any] | None = None) -> bytes:
    """The last event: the whole transcript, its usage if known."""
    data: dict[str, Any] = {"type": DONE, "text": text}
    if logprobs is not None:
        data["logprobs"] = logprobs
    if usage is not None:
        data["usage"] = usage
    return event(data)


def _header_params(value: str) -> tuple[str, dict[str, str]]:
    """A header value's first item (lowercased) and its name=value parameters."""
    first, _, rest = value.partition(";")
    params = {}
    for name, text in _TOKEN.findall(rest):
        if text.startswith('"'):
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        params[name.lower()] = text
    return first.strip().lower(), params


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
