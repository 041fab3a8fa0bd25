"""OpenAI's text-to-speech request (`POST /v1/audio/speech`): checked, and given each speech
model's own voice; what of a 200 is audio; the server-sent events of `stream_format: "sse"`.

Voices are the provider's own (OpenAI's alloy, a Kokoro server's af_bella): a model's
`voices` table maps the voices clients ask for to its own (`"*"` for any other), so a
failover to another provider speaks with a voice it has.

The answer streams: raw audio as it is made, or with `stream_format: "sse"` OpenAI's events,
``data: {"type": "speech.audio.delta", "audio": <base64>}`` for each piece and a last
``data: {"type": "speech.audio.done", "usage": {...}}`` (input, output and total tokens).
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from failoverd.config import ModelConfig
from failoverd.errors import RequestError
from failoverd.http1.connection import MAX_BODY

# what each response_format is answered as (OpenAI's; mp3 unless asked otherwise)
CONTENT_TYPES = {
    "mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
    "wav": "audio/wav", "pcm": "audio/pcm",
}
EVENT_STREAM = "text/event-stream"
# the most audio (or events) one answer may bring: what the upstream client reads whole
MAX_AUDIO = MAX_BODY
# the first bytes of a 200 that tell audio from an error page (after any whitespace)
HEAD = 64
DONE = "speech.audio.done"


def validate(body: Any) -> dict[str, Any]:
    """The request, checked: raises RequestError naming the first problem."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model", "")
    if not isinstance(model, str):
        raise RequestError("'model' must be a string: a speech model, a chain or 'default'",
                           param="model")
    text = body.get("input")
    if not isinstance(text, str) or not text.strip():
        raise RequestError("'input' is required: the text to speak, a non-empty string",
                           param="input")
    voice = body.get("voice")
    if not (isinstance(voice, str) and voice) and not (
            isinstance(voice, dict) and isinstance(voice.get("id"), str)):
        raise RequestError("'voice' is required: a voice name (or an object with its 'id')",
                           param="voice")
    fmt = body.get("response_format", "mp3")
    if not isinstance(fmt, str) or fmt not in CONTENT_TYPES:
        raise RequestError(f"'response_format' must be one of {', '.join(CONTENT_TYPES)}, got "
                           f"{fmt!r}", param="response_format")
    speed = body.get("speed")
    if speed is not None and (isinstance(speed, bool) or not isinstance(speed, int | float)
                              or not 0.25 <= speed <= 4.0):
        raise RequestError(f"'speed' must be a number from 0.25 to 4.0, got {speed!r}",
                           param="speed")
    if body.get("instructions") is not None and not isinstance(body["instructions"], str):
        raise RequestError("'instructions' must be a string", param="instructions")
    if body.get("stream_format") not in (None, "audio", "sse"):
        raise RequestError(f"'stream_format' must be audio or sse, got "
                           f"{body.get('stream_format')!r}", param="stream_format")
    return body


def wants_events(body: dict[str, Any]) -> bool:
    """Whether the answer is to be server-sent events (`stream_format: "sse"`)."""
    return body.get("stream_format") == "sse"


def content_type(body: dict[str, Any]) -> str:
    """The answer's: the format's audio type, or an event stream."""
    return EVENT_STREAM if wants_events(body) else CONTENT_TYPES[body.get("response_format",
                                                                           "mp3")]


def media_type(header: str) -> str:
    """A Content-Type's media type, lowercased, without its parameters."""
    return header.partition(";")[0].strip().lower()


def textual(media: str) -> bool:
    """Whether a 200's media type says text (JSON, HTML, XML, plain): an error, never audio."""
    return media.startswith("text/") or media.endswith(("json", "xml"))


def for_model(body: dict[str, Any], model: ModelConfig) -> dict[str, Any]:
    """The request as `model` gets it: its upstream name, and the client's voice as the
    model's `voices` maps it (a voice it does not map goes as it is, unless `"*"` names one
    for all others)."""
    out = dict(body)
    out["model"] = model.name
    voice = body.get("voice")
    name = voice.get("id") if isinstance(voice, dict) else voice
    if model.voices and isinstance(name, str):
        voices = dict(model.voices)
        mapped = voices.get(name, voices.get("*"))
        if mapped is not None:
            out["voice"] = {**voice, "id": mapped} if isinstance(voice, dict) else mapped
    return out


def may_be_text(head: bytes, body: dict[str, Any]) -> bool:
    """Whether the first bytes of a 200 may begin an error body instead of audio, which is
    then read whole (to `not_audio`'s verdict and the error's text)."""
    lead = head[:HEAD].lstrip()
    if body.get("response_format", "mp3") == "pcm":
        # raw samples may begin with the byte "{" too; a JSON object's next byte is a
        # quote, whitespace or "}" (a sample's rarely is, and the audio need not wait)
        return lead[:1] == b"{" and (len(lead) < 2 or lead[1] in b'"} \t\r\n')
    return lead[:1] in (b"{", b"[", b"<")


def not_audio(raw: bytes, body: dict[str, Any], *, whole: bool = True) -> str | None:
    """Why a 200's body (`raw`, its first bytes unless `whole`) is no audio (empty; JSON,
    HTML or text from a server or a proxy in the way), else None. Raw PCM may begin with
    any byte: it is no audio only when it is whole a JSON object."""
    if not raw:
        return "200 without any audio"
    head = raw[:HEAD].lstrip()[:1]
    if body.get("response_format", "mp3") == "pcm":
        return "200 with JSON instead of audio" if whole and head == b"{" \
            and raw.rstrip()[-1:] == b"}" and _json_object(raw) else None
    if head in (b"{", b"["):
        return "200 with JSON instead of audio"
    if head == b"<":
        return "200 with HTML or XML instead of audio"
    return None


def _json_object(raw: bytes) -> bool:
    try:
        return isinstance(orjson.loads(raw), dict)
    except orjson.JSONDecodeError:
        return False


def event(data: dict[str, Any]) -> bytes:
    """One server-sent event of a speech stream, framed as OpenAI frames them."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


def delta(audio: bytes) -> bytes:
    """The event carrying a piece of the audio."""
    return event({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode()})


def done(input_tokens: int, output_tokens: int) -> bytes:
    """The last event, with the usage."""
    return event({"type": DONE, "usage": {"input_tokens": input_tokens,
                                          "output_tokens": output_tokens,
                                          "total_tokens": input_tokens + output_tokens}})


def relayed(name: str, payload: bytes) -> bytes:
    """An upstream's event (its name, if it gave one, and its data) framed again to pass
    it on as it came."""
    head = f"event: {name}\n".encode() if name else b""
    return head + b"".join(b"data: " + line + b"\n" for line in payload.split(b"\n")) + b"\n"


def is_done(payload: bytes, done: str = DONE) -> bool:
    """Whether an event's data is the stream's last event, of type `done` (speech's, or
    transcriptions' transcript.text.done): its quoted type is looked for first, then the
    event parsed to be sure."""
    if f'"{done}"'.encode() not in payload:
        return False
    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and parsed.get("type") == done
