"""OpenAI's text-to-speech request (`POST /v1/audio/speech`): checked, and given each speech
model's own voice.

Voices are the provider's own (OpenAI's alloy, a Kokoro server's af_bella): a model's
`voices` table maps the voices clients ask for to its own (`"*"` for any other), so a
failover to another provider speaks with a voice it has.
"""

from __future__ import annotations

from typing import Any

import orjson

from failoverd.config import ModelConfig
from failoverd.errors import RequestError

# what each response_format is answered as (OpenAI's; mp3 unless asked otherwise)
CONTENT_TYPES = {
    "mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
    "wav": "audio/wav", "pcm": "audio/pcm",
}


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
    if body.get("stream_format") not in (None, "audio"):
        raise RequestError("'stream_format' other than audio (server-sent events) is not "
                           "relayed by failoverd; ask for audio", param="stream_format")
    return body


def content_type(body: dict[str, Any]) -> str:
    return CONTENT_TYPES[body.get("response_format", "mp3")]


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


def not_audio(raw: bytes, body: dict[str, Any]) -> str | None:
    """Why a 200's body is no audio (empty; JSON, HTML or text from a server or a proxy in
    the way), else None. Raw PCM may begin with any byte: it is no audio only when it is
    whole a JSON object."""
    if not raw:
        return "200 without any audio"
    head = raw[:64].lstrip()[:1]
    if body.get("response_format", "mp3") == "pcm":
        return "200 with JSON instead of audio" if head == b"{" and raw.rstrip()[-1:] == b"}" \
            and _json_object(raw) else None
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
