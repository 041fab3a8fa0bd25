"""Streaming: canonical chunks -> Anthropic SSE (front end) and Anthropic SSE -> chunks (adapter).

Anthropic's stream is ``message_start``, then per content block ``content_block_start``,
``content_block_delta``\\* (``text_delta``, ``input_json_delta``, ``thinking_delta``, ...),
``content_block_stop``, then ``message_delta`` (stop_reason, usage) and ``message_stop``;
``ping`` may come anywhere and ``error`` ends a stream that failed after it started.

Thinking in canonical chunks: its text is ``reasoning_content``; a thinking block's
``signature_delta`` (sent right before its content_block_stop) is a delta of its own,
``thinking_blocks: [{"type": "thinking", "thinking": "", "signature": ...}]``, and a
``redacted_thinking`` block is ``thinking_blocks: [{"type": "redacted_thinking", "data": ...}]``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from failoverd.translate.anthropic_common import (
    FINISH_REASONS,
    STOP_REASONS,
    new_id,
    reasoning_text,
    stop_sequence,
)
from failoverd.translate.anthropic_response import (
    anthropic_error_body,
    anthropic_usage,
    canonical_usage,
)

logger = logging.getLogger(__name__)


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event as Anthropic sends it: ``event: X`` then a JSON ``data:`` line."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_event(error_type: str, message: str) -> bytes:
    """A mid-stream ``error`` event (e.g. ``overloaded_error``, ``api_error``)."""
    return sse_event("error", anthropic_error_body(error_type, message))


class AnthropicStreamEncoder:
    """Turns canonical chat.completion.chunk dicts into Anthropic SSE bytes (front end).

    Feed every chunk with ``feed``; when the canonical stream ends call ``finish`` (it closes
    the open block and sends message_delta with stop_reason and usage, then message_stop;
    a missing finish_reason counts as ``end_turn``). On a failure after the stream began,
    send ``error_event`` instead of ``finish``. Every method returns the bytes to write,
    possibly empty.
    """

    def __init__(self, model_id: str, message_id: str | None = None) -> None:
        self.model_id = model_id
        self.message_id = message_id or new_id("msg_")
        self._started = False
        self._done = False
        self._block = -1  # index of the last block started
        self._open: str | None = None  # "text" or "tool_use" while a block is open
        # tool calls being collected (key: canonical index, or arrival order without one)
        self._pending_tools: dict[str, dict[str, Any]] = {}
        self._index_keys: dict[int, str] = {}
        self._last_key: str | None = None
        self._tool_serial = 0
        self._tools_sent = 0
        self._finish: str | None = None
        self._stop_sequence: str | None = None
        self._usage: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self._done

    def _start(self, chunk: dict[str, Any]) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": self.message_id, "type": "message", "role": "assistant",
            "model": self.model_id, "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0}}
        if isinstance(chunk.get("failoverd"), dict):
            message["failoverd"] = chunk["failoverd"]  # hook notices, as on the OpenAI side
        return sse_event("message_start", {"type": "message_start", "message": message})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return sse_event("content_block_stop", {"type": "content_block_stop",
                                                "index": self._block})

    def _open_block(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._block += 1
        self._open = kind
        return out + sse_event("content_block_start", {
            "type": "content_block_start", "index": self._block, "content_block": block})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse_event("content_block_delta", {"type": "content_block_delta",
                                                 "index": self._block, "delta": delta})

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """Bytes for one canonical chunk."""
        if self._done:
            return b""
        out = self._start(chunk)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = reasoning_text(delta)
            if isinstance(reasoning, str) and reasoning:
                out += self._thinking(reasoning)
            if "thinking_blocks" in delta:
                out += self._thinking_blocks(delta["thinking_blocks"], bool(reasoning))
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self._open != "text":
                    out += self._flush_tools()
                    out += self._open_block("text", {"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": text})
            for call in delta.get("tool_calls") or []:
                out += self._tool_delta(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
                self._stop_sequence = stop_sequence(choice)
        return out

    def _thinking(self, text: str) -> bytes:
        out = b""
        if self._open != "thinking":
            out += self._flush_tools()
            out += self._open_block("thinking", {"type": "thinking", "thinking": "",
                                                 "signature": ""})
        return out + self._delta({"type": "thinking_delta", "thinking": text})

    def _thinking_blocks(self, blocks: Any, had_text: bool) -> bytes:
        """A delta's ``thinking_blocks``: a signature ends the thinking block as Anthropic's own
        stream does (signature_delta, then content_block_stop); a redacted_thinking block goes
        out whole. Their thinking text counts only when the delta has no reasoning_content
        (LiteLLM-style deltas repeat it in both)."""
        out = b""
        for block in blocks if isinstance(blocks, list) else ():
            if not isinstance(block, dict):
                continue
            if block.get("type") == "redacted_thinking":
                data = block.get("data")
                if isinstance(data, str) and data:
                    out += self._flush_tools()
                    out += self._open_block("redacted_thinking",
                                            {"type": "redacted_thinking", "data": data})
                    out += self._close()
                continue
            if block.get("type") != "thinking":
                continue
            text, signature = block.get("thinking"), block.get("signature")
            if not had_text and isinstance(text, str) and text:
                out += self._thinking(text)
            if isinstance(signature, str) and signature:
                if self._open != "thinking":  # a signature alone: an empty thinking block
                    out += self._flush_tools()
                    out += self._open_block("thinking", {"type": "thinking", "thinking": "",
                                                         "signature": ""})
                out += self._delta({"type": "signature_delta", "signature": signature})
                out += self._close()  # the next thinking is a block of its own
        return out

    def _tool_delta(self, call: dict[str, Any]) -> bytes:
        """Collects a tool call's pieces; the whole tool_use block goes out when it is complete.

        Anthropic blocks are contiguous and cannot be reopened, while OpenAI-style upstreams
        may interleave the argument deltas of parallel calls (or omit `index`), so calls are
        buffered and written whole when text starts again or the message ends.
        """
        index = call.get("index")
        call_id = call.get("id")
        key = self._tool_key(index if isinstance(index, int) else None, call_id)
        function = call.get("function") or {}
        entry = self._pending_tools.setdefault(key, {"id": call_id, "name": "", "args": []})
        if call_id and not entry["id"]:
            entry["id"] = call_id
        if isinstance(function, dict):
            if function.get("name"):
                entry["name"] = function["name"]
            if isinstance(function.get("arguments"), str):
                entry["args"].append(function["arguments"])
        return b""

    def _tool_key(self, index: int | None, call_id: Any) -> str:
        if index is not None:
            key = f"i{index}"
            known = self._pending_tools.get(key)
            if known is not None and call_id and known["id"] and known["id"] != call_id:
                self._tool_serial += 1  # a new call reusing an index
                key = f"i{index}.{self._tool_serial}"
                self._index_keys[index] = key
            return self._index_keys.get(index, key)
        if call_id or self._last_key is None:
            self._tool_serial += 1
            self._last_key = f"n{self._tool_serial}"
        return self._last_key

    def _flush_tools(self) -> bytes:
        out = b""
        for entry in self._pending_tools.values():
            out += self._open_block("tool_use", {
                "type": "tool_use", "id": entry["id"] or new_id("toolu_"),
                "name": entry["name"], "input": {}})
            arguments = "".join(entry["args"])
            if arguments:
                out += self._delta({"type": "input_json_delta", "partial_json": arguments})
            out += self._close()
            self._tools_sent += 1
        self._pending_tools.clear()
        self._index_keys.clear()
        self._last_key = None
        return out

    def finish(self) -> bytes:
        """Closing events: open block stop, message_delta (stop_reason, usage), message_stop."""
        if self._done:
            return b""
        out = self._start({}) + self._close() + self._flush_tools()
        self._done = True
        stop_reason = STOP_REASONS.get(self._finish or "stop", "end_turn")
        if self._tools_sent and stop_reason == "end_turn":
            stop_reason = "tool_use"
        sequence = self._stop_sequence if stop_reason == "end_turn" else None
        if sequence is not None:
            stop_reason = "stop_sequence"
        usage = anthropic_usage(self._usage)
        out += sse_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": sequence},
            "usage": usage})
        return out + sse_event("message_stop", {"type": "message_stop"})

    def error_event(self, error_type: str, message: str) -> bytes:
        """A mid-stream error event; the stream is over after it."""
        self._done = True
        return self._start({}) + error_event(error_type, message)


class AnthropicStreamDecoder:
    """Turns Anthropic SSE events into canonical chat.completion.chunk dicts (adapter).

    ``feed(event_name, data)`` returns the chunks for one event. ``error`` events are the
    caller's to handle (it knows the provider); ``stopped`` tells whether message_stop came,
    ``content_started`` whether the model began a content block (message_start and ping come
    before the model produced anything, and Anthropic may still send an overloaded error).
    Usage follows OpenAI's ``stream_options.include_usage``: when asked for, a last chunk with
    no choices carries it; otherwise the finish chunk does (as the Gemini and Ollama
    translations give it), so failoverd's token metrics count every stream.
    """

    def __init__(self, model: str, include_usage: bool = False) -> None:
        self.model = model
        self.include_usage = include_usage
        self.stopped = False
        self.content_started = False  # a content block began: the model is answering
        self.stop_reason: str | None = None  # message_delta's, once it came
        self.stop_details: Any = None  # with a refusal: its category and explanation
        self._id = "chatcmpl-" + new_id("msg_")
        self._created = int(time.time())
        self._tools: dict[int, int] = {}  # Anthropic block index -> canonical tool index
        self._argued: set[int] = set()  # tool blocks whose input came (non-empty)
        self._usage: dict[str, Any] = {}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None,
               usage: dict[str, Any] | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self._id, "object": "chat.completion.chunk", "created": self._created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}]}
        if usage is not None:
            chunk["usage"] = usage
        return chunk

    def feed(self, event: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        kind = data.get("type") or event
        if kind == "message_start":
            message = data.get("message") or {}
            if message.get("id"):
                self._id = "chatcmpl-" + str(message["id"])
            self._usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(int(data.get("index", 0)), data.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(int(data.get("index", 0)), data.get("delta") or {})
        if kind == "message_delta":
            # message_delta usage is cumulative; keep message_start's input count if absent
            self._usage.update({k: v for k, v in (data.get("usage") or {}).items()
                                if v is not None})
            delta = data.get("delta") or {}
            reason = delta.get("stop_reason")
            self.stop_reason = reason if isinstance(reason, str) else None
            self.stop_details = delta.get("stop_details")
            chunk = self._chunk({}, FINISH_REASONS.get(str(reason), "stop"))
            if reason == "stop_sequence" and isinstance(delta.get("stop_sequence"), str):
                # see anthropic_common.stop_sequence
                chunk["choices"][0]["stop_reason"] = delta["stop_sequence"]
            if not self.include_usage:
                # on the finish chunk, as the Gemini and Ollama translations put it: the
                # tokens are counted (failoverd_tokens_total) whether the client asked or not
                chunk["usage"] = canonical_usage(self._usage)
            return [chunk]
        if kind == "content_block_stop":
            return self._block_stop(int(data.get("index", 0)))
        if kind == "message_stop":
            self.stopped = True
            if self.include_usage:
                usage_chunk = self._chunk({})
                usage_chunk["choices"] = []
                usage_chunk["usage"] = canonical_usage(self._usage)
                return [usage_chunk]
        return []  # ping, unknown future events

    def _block_stop(self, index: int) -> list[dict[str, Any]]:
        if index not in self._tools or index in self._argued:
            return []
        # a call of a tool without parameters: Anthropic streams its input as one empty
        # input_json_delta, while OpenAI clients parse the arguments, which are "{}" there
        self._argued.add(index)
        return [self._chunk({"tool_calls": [{"index": self._tools[index],
                                             "function": {"arguments": "{}"}}]})]

    def _block_start(self, index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
        self.content_started = True
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if kind == "redacted_thinking":  # encrypted thinking comes whole, never as deltas
            data = block.get("data")
            if isinstance(data, str) and data:
                return [self._chunk({"thinking_blocks": [
                    {"type": "redacted_thinking", "data": data}]})]
            return []
        if kind == "tool_use":
            tool_index = len(self._tools)
            self._tools[index] = tool_index
            call: dict[str, Any] = {
                "index": tool_index, "id": block.get("id") or new_id("toolu_"),
                "type": "function",
                "function": {"name": block.get("name", ""), "arguments": ""}}
            chunks = [self._chunk({"tool_calls": [call]})]
            if block.get("input"):  # a complete input up front (not sent by the API today)
                self._argued.add(index)
                chunks.append(self._chunk({"tool_calls": [{"index": tool_index, "function": {
                    "arguments": orjson.dumps(block["input"]).decode()}}]}))
            return chunks
        return []

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[dict[str, Any]]:
        kind = delta.get("type")
        if kind == "text_delta":
            return [self._chunk({"content": delta.get("text", "")})]
        if kind == "input_json_delta" and index in self._tools:
            partial = delta.get("partial_json", "")
            if not partial:
                return []
            self._argued.add(index)
            return [self._chunk({"tool_calls": [{"index": self._tools[index],
                                                 "function": {"arguments": partial}}]})]
        if kind == "thinking_delta":
            return [self._chunk({"reasoning_content": delta.get("thinking", "")})]
        if kind == "signature_delta":
            # the thinking block's signature, right before its content_block_stop: its text
            # came as reasoning_content since the previous block
            signature = delta.get("signature")
            if isinstance(signature, str) and signature:
                return [self._chunk({"thinking_blocks": [
                    {"type": "thinking", "thinking": "", "signature": signature}]})]
        return []  # citations_delta
