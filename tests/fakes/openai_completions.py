"""The legacy Completions API of the fake OpenAI upstream (`POST /v1/completions`): the
text every fake completes a prompt with (Ollama's /api/generate gives the same), its choices,
usage and legacy logprobs, and the answer, plain or streamed. FakeOpenAI's route refuses what
OpenAI refuses and plays the scripted failures before it hands over to `respond`."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import cut, event_stream, processing_comments

# OpenAI's 404 for a chat model on the legacy completions endpoint
CHAT_ONLY = ("This is a chat model and not supported in the v1/completions endpoint. Did you "
             "mean to use v1/chat/completions?")
# the error event OpenAI streams when it fails mid-answer
_SERVER_ERROR = orjson.dumps({"error": {
    "message": "The server had an error while processing your request.",
    "type": "server_error", "param": None, "code": None}})


def prompt_text(prompt: Any) -> str:
    """A prompt as the fakes echo it: a text as it is, token ids as their JSON array."""
    return prompt if isinstance(prompt, str) else orjson.dumps(prompt).decode()


def completion_text(reply: str, prompt: Any, suffix: str | None = None) -> str:
    """The whole text every fake completes `prompt` with, before max_tokens (num_predict) or
    a stop sequence cuts it: `reply`, the prompt, then the suffix when one came, so a test
    sees both arrived: "<reply> after: <prompt> before: <suffix>"."""
    text = f"{reply} after: {prompt_text(prompt)}"
    return f"{text} before: {suffix}" if suffix else text


def cut_completion(text: str, limit: int | None, stop: Any) -> tuple[list[str], str]:
    """`text` as the words a fake streams (each but the first with its leading space) and
    the finish reason: cut before the first stop sequence ("stop"), else after `limit` words
    ("length", when there were more); None or a negative limit is no limit."""
    stops = [stop] if isinstance(stop, str) else [s for s in stop or () if s]
    for seq in stops:
        if seq in text:
            text = text[:text.index(seq)]
    words = text.split(" ")
    finish = "stop"
    if limit is not None and 0 <= limit < len(words):
        words, finish = words[:limit], "length"
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    return [p for p in pieces if p], finish


def prompt_items(value: Any) -> list[Any] | None:
    """The prompts of a completions request one by one (a text, or a token-id array), or
    None when OpenAI's schema refuses them."""
    def token(t: Any) -> bool:
        return type(t) is int and t >= 0

    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        return None
    if all(token(t) for t in value):
        return [value]
    if all(isinstance(v, str) for v in value) or all(
            isinstance(v, list) and v and all(token(t) for t in v) for v in value):
        return value
    return None


@dataclass
class _Choice:
    """One choice of a legacy completion: its index, the pieces it streams, its finish."""

    index: int
    pieces: list[str]
    finish: str
    offset: int  # where its text starts in prompt + text (logprobs' text_offset)


def _logprobs(pieces: list[str], offset: int, top: int) -> dict[str, Any]:
    """Legacy logprobs for `pieces` (a token each): made-up but well-formed."""
    offsets = []
    for piece in pieces:
        offsets.append(offset)
        offset += len(piece)
    return {"tokens": pieces, "token_logprobs": [-0.25] * len(pieces),
            "top_logprobs": [{p: -0.25} for p in pieces] if top else None,
            "text_offset": offsets}


async def respond(request: web.Request, body: dict[str, Any], behaviour: str,
                  prompts: list[Any], reply: str, *, quota: bytes) -> web.StreamResponse:
    """The answer to a request past the refusals and the scripted failures: every prompt
    (`prompt_items`) completed with `reply`, `n` times, plain or streamed; `quota` is the
    error event that "error_first" streams."""
    choices = _choices(reply, body, prompts)
    suffix = len(str(body.get("suffix") or "").split())
    words = sum(suffix + (len(p) if isinstance(p, list) else len(p.split()))
                for p in prompts)
    generated = sum(len("".join(c.pieces).split()) for c in choices)
    usage = {"prompt_tokens": words, "completion_tokens": generated,
             "total_tokens": words + generated}
    if body.get("stream"):
        return await _stream(request, body, behaviour, choices, usage, quota)
    top = body.get("logprobs")
    return web.json_response({
        "id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
        "model": str(body.get("model", "")), "system_fingerprint": "fp_fake",
        "choices": [{"text": "".join(c.pieces), "index": c.index,
                     "logprobs": None if top is None else _logprobs(c.pieces, c.offset,
                                                                    top),
                     "finish_reason": c.finish} for c in choices],
        "usage": usage})


def _choices(reply: str, body: dict[str, Any], prompts: list[Any]) -> list[_Choice]:
    n = body.get("n") or 1
    limit = body.get("max_tokens", 16)
    choices: list[_Choice] = []
    for i, prompt in enumerate(prompts):
        text = completion_text(reply, prompt, body.get("suffix"))
        pieces, finish = cut_completion(text, limit, body.get("stop"))
        offset = len(prompt_text(prompt))
        if body.get("echo"):
            pieces, offset = [prompt_text(prompt), *pieces], 0
        choices.extend(_Choice(i * n + k, pieces, finish, offset) for k in range(n))
    return choices


async def _stream(request: web.Request, body: dict[str, Any], behaviour: str,
                  choices: list[_Choice], usage: dict[str, int], quota: bytes
                  ) -> web.StreamResponse:
    resp = await event_stream(request)
    base: dict[str, Any] = {"id": "cmpl-fake", "object": "text_completion",
                            "created": int(time.time()), "model": body.get("model")}
    with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    top = body.get("logprobs")

    async def send(choice: _Choice, at: int | None, finish: str | None = None) -> None:
        pieces = [] if at is None else [choice.pieces[at]]
        offset = choice.offset + sum(len(p) for p in choice.pieces[:at or 0])
        chunk = {**base, "choices": [{
            "text": "".join(pieces), "index": choice.index,
            "logprobs": None if top is None else _logprobs(pieces, offset, top),
            "finish_reason": finish}]}
        if with_usage:
            chunk["usage"] = None
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

    if await failed_first(resp, behaviour, quota, _openrouter_error(base)):
        return resp
    pause = float(behaviour[12:]) if behaviour.startswith("slow_stream:") else 0.0
    for at in range(max((len(c.pieces) for c in choices), default=0)):
        if pause:
            await asyncio.sleep(pause)
        for choice in choices:
            if at < len(choice.pieces):
                await send(choice, at)
        if behaviour == "cut_stream" and at == 1:
            return cut(request, resp)
        if behaviour == "stream_error" and at == 1:
            await resp.write(b"data: " + _SERVER_ERROR + b"\n\n")
            return resp
        if behaviour == "openrouter_error_mid" and at == 1:
            await resp.write(b"data: " + _openrouter_error(base) + b"\n\n")
            return resp
    for choice in choices:
        await send(choice, None, choice.finish)
    if with_usage:
        await resp.write(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage})
                         + b"\n\n")
    if behaviour != "no_done":
        await resp.write(b"data: [DONE]\n\n")
    return resp


async def failed_first(resp: web.StreamResponse, behaviour: str, quota: bytes,
                       openrouter: bytes) -> bool:
    """The stream behaviours that fail before the first token, shared by the chat and legacy
    completions streams: after "comments:<seconds>" of SSE comments, "error_first" (`quota`
    as the first event), "openrouter_error_first" (OpenRouter's comment, then its error chunk
    `openrouter`) and "llamacpp_error_event" (llama.cpp's server, mid 2025, streams a failure
    as an `error:` field, then [DONE]). True when the stream is over."""
    if behaviour.startswith("comments:"):
        await processing_comments(resp, float(behaviour[9:]))
    if behaviour == "error_first":
        await resp.write(b"data: " + quota + b"\n\n")
        return True
    if behaviour == "openrouter_error_first":
        await resp.write(b": OPENROUTER PROCESSING\n\n")
        await resp.write(b"data: " + openrouter + b"\n\n")
        return True
    if behaviour == "llamacpp_error_event":
        await resp.write(b'error: {"code":500,"message":"the request exceeds the available '
                         b'context size. try increasing the context size or enable context '
                         b'shift","type":"exceed_context_size_error"}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        return True
    return False


def _openrouter_error(base: dict[str, Any]) -> bytes:
    """OpenRouter's mid-stream error chunk as the legacy completions stream has it."""
    return orjson.dumps({**base, "provider": "OpenAI", "error": {
        "code": 502, "message": "Provider disconnected unexpectedly"},
        "choices": [{"index": 0, "text": "", "finish_reason": "error"}]})
