"""Streaming: canonical chunks -> OpenAI Responses API server-sent events (front end).

The stream is ``response.created``, ``response.in_progress``, then per output item
``response.output_item.added``, its content events, ``response.output_item.done``, and at the
end ``response.completed`` (``response.incomplete`` when the answer was cut by
max_output_tokens or a content filter) carrying the whole response with its usage. Content
events: a message's ``response.content_part.added``, ``response.output_text.delta``\\*,
``response.output_text.done``, ``response.content_part.done``; a function call's
``response.function_call_arguments.delta``\\* and ``.done``; a reasoning item's
``response.reasoning_summary_part.added``, ``response.reasoning_summary_text.delta``\\*,
``.done`` and ``response.reasoning_summary_part.done``. Signed thinking (``thinking_blocks``
deltas: a signature closing the thinking text streamed since the previous one, or a
redacted_thinking block) goes in the reasoning item's ``encrypted_content`` in its
``response.output_item.done`` and the final response. Every event has a
``sequence_number`` counting from 0. A failure after the stream began is an ``error`` event
then ``response.failed`` (its response holding what was produced so far).

Items come one after the other, each closed before the next opens, except function calls:
OpenAI-compatible upstreams may interleave the argument deltas of parallel calls, so calls
stay open side by side until text, reasoning or the end comes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from failoverd.translate.anthropic_common import reasoning_text
from failoverd.translate.anthropic_response import signed_block
from failoverd.translate.responses_response import (
    INCOMPLETE,
    call_item,
    message_item,
    new_id,
    reasoning_item,
    refusal_part,
    response_object,
    responses_usage,
    text_part,
)

logger = logging.getLogger(__name__)

# failoverd's failure reasons -> the Responses error codes clients know
_ERROR_CODES = {"rate_limit": "rate_limit_exceeded"}


class _Part:
    """A message's content part: ``output_text`` or ``refusal``, with its text so far."""

    __slots__ = ("kind", "chunks")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.chunks: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    def as_output(self) -> dict[str, Any]:
        return text_part(self.text) if self.kind == "output_text" else refusal_part(self.text)


class _Item:
    __slots__ = ("kind", "index", "id", "parts", "content", "call_id", "name", "done",
                 "status", "summary", "blocks", "unsigned")

    def __init__(self, kind: str, index: int, item_id: str) -> None:
        self.kind, self.index, self.id = kind, index, item_id
        self.parts: list[str] = []  # reasoning summary or arguments so far
        self.content: list[_Part] = []  # a message's parts, the last one open
        self.call_id = ""
        self.name = ""
        self.done = False
        self.status = "in_progress"  # the status its response.output_item.done gave
        self.summary = False  # a reasoning item's summary part was added
        self.blocks: list[dict[str, Any]] = []  # a reasoning item's signed thinking blocks
        self.unsigned = 0  # where in parts the thinking text not yet signed starts

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def as_output(self, status: str) -> dict[str, Any]:
        if self.kind == "message":
            return message_item(self.id, [p.as_output() for p in self.content], status)
        if self.kind == "reasoning":
            return reasoning_item(self.id, self.text, self.blocks)
        return call_item(self.id, self.call_id, self.name, self.text, status)


class ResponsesStreamEncoder:
    """Turns canonical chat.completion.chunk dicts into Responses API SSE bytes.

    `echo` is the request settings the response repeats (responses_response.response_echo).
    Feed every chunk with ``feed``; when the canonical stream ends call ``finish``; on a
    failure after the stream began call ``error_event`` instead. Every method returns the
    bytes to write, possibly empty.
    """

    def __init__(self, model_id: str, echo: dict[str, Any],
                 response_id: str | None = None) -> None:
        self.model_id = model_id
        self.echo = echo
        self.response_id = response_id or new_id("resp_")
        self.created_at = int(time.time())
        self._sequence = 0
        self._started = False
        self._done = False
        self._items: list[_Item] = []
        self._open: list[_Item] = []  # items not yet done, in output order
        self._calls: dict[str, _Item] = {}  # canonical tool call key -> its item
        self._finish: str | None = None
        self._usage: Any = None
        self._extra: dict[str, Any] = {}  # hook notices, as on the other fronts

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self._sequence, **data}
        self._sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _response(self, status: str, *, error: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
        # each item as its output_item.done event gave it; one never done was cut
        output = [item.as_output(item.status if item.done else "incomplete")
                  for item in self._items] if status != "in_progress" else []
        usage = responses_usage(self._usage) if status != "in_progress" else None
        response = response_object(self.response_id, self.created_at, self.model_id, status,
                                   output, usage, self.echo, finish=self._finish, error=error)
        response.update(self._extra)
        return response

    def _start(self, chunk: dict[str, Any]) -> bytes:
        if self._started:
            return b""
        self._started = True
        if isinstance(chunk.get("failoverd"), dict):
            self._extra["failoverd"] = chunk["failoverd"]
        created = self._response("in_progress")
        return (self._event("response.created", {"response": created})
                + self._event("response.in_progress", {"response": created}))

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """Bytes for one canonical chunk."""
        if self._done:
            return b""
        out = self._start(chunk)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = reasoning_text(delta)
            if reasoning:
                out += self._reasoning(reasoning)
            blocks = delta.get("thinking_blocks")
            if isinstance(blocks, list):
                out += self._signed(blocks)
            text = delta.get("content")
            if isinstance(text, str) and text:
                out += self._content("output_text", text)
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                out += self._content("refusal", refusal)
            for k, call in enumerate(delta.get("tool_calls") or ()):
                if isinstance(call, dict):
                    out += self._call(call, k)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def _current(self, kind: str) -> _Item | None:
        last = self._open[-1] if self._open else None
        return last if last is not None and last.kind == kind else None

    def _add(self, kind: str, prefix: str, keep_calls: bool = False) -> tuple[_Item, bytes]:
        out = b""
        for item in list(self._open):
            if not (keep_calls and item.kind == "function_call"):
                out += self._close(item)
        item = _Item(kind, len(self._items), new_id(prefix))
        self._items.append(item)
        self._open.append(item)
        return item, out

    def _reasoning_item(self) -> tuple[_Item, bytes]:
        item = self._current("reasoning")
        if item is not None:
            return item, b""
        item, out = self._add("reasoning", "rs_")
        return item, out + self._event("response.output_item.added", {
            "output_index": item.index, "item": reasoning_item(item.id, "")})

    def _reasoning(self, text: str) -> bytes:
        item, out = self._reasoning_item()
        if not item.summary:
            item.summary = True
            out += self._event("response.reasoning_summary_part.added", {
                "item_id": item.id, "output_index": item.index, "summary_index": 0,
                "part": {"type": "summary_text", "text": ""}})
        item.parts.append(text)
        return out + self._event("response.reasoning_summary_text.delta", {
            "item_id": item.id, "output_index": item.index, "summary_index": 0,
            "delta": text})

    def _signed(self, blocks: list[Any]) -> bytes:
        """A delta's ``thinking_blocks`` (see anthropic_stream): a signature signs the thinking
        text streamed since the previous one; a redacted_thinking block comes whole. Kept for
        the reasoning item's encrypted_content; blocks that cannot go back are dropped."""
        out = b""
        for block in blocks:
            current = self._current("reasoning")
            if isinstance(block, dict) and block.get("type") == "thinking" \
                    and not block.get("thinking"):
                text = "".join(current.parts[current.unsigned:]) if current else ""
                block = {**block, "thinking": text}
            kept = signed_block(block)
            if kept is None:
                continue
            item, added = self._reasoning_item()
            out += added
            item.blocks.append(kept)
            item.unsigned = len(item.parts)
        return out

    def _message(self) -> tuple[_Item, bytes]:
        item = self._current("message")
        if item is not None:
            return item, b""
        item, out = self._add("message", "msg_")
        return item, out + self._event("response.output_item.added", {
            "output_index": item.index, "item": message_item(item.id, [], "in_progress")})

    def _content(self, kind: str, text: str) -> bytes:
        """A delta of the message's text or refusal: a part of that kind opens (closing the
        other kind's) when the open one is not of it."""
        item, out = self._message()
        part = item.content[-1] if item.content else None
        if part is None or part.kind != kind:
            if part is not None:
                out += self._close_part(item)
            out += self._open_part(item, kind)
            part = item.content[-1]
        part.chunks.append(text)
        base = {"item_id": item.id, "output_index": item.index,
                "content_index": len(item.content) - 1, "delta": text}
        if kind == "refusal":
            return out + self._event("response.refusal.delta", base)
        return out + self._event("response.output_text.delta", {**base, "logprobs": []})

    def _open_part(self, item: _Item, kind: str) -> bytes:
        part = _Part(kind)
        item.content.append(part)
        return self._event("response.content_part.added", {
            "item_id": item.id, "output_index": item.index,
            "content_index": len(item.content) - 1, "part": part.as_output()})

    def _close_part(self, item: _Item) -> bytes:
        part = item.content[-1]
        base = {"item_id": item.id, "output_index": item.index,
                "content_index": len(item.content) - 1}
        if part.kind == "refusal":
            out = self._event("response.refusal.done", {**base, "refusal": part.text})
        else:
            out = self._event("response.output_text.done", {
                **base, "text": part.text, "logprobs": []})
        return out + self._event("response.content_part.done", {
            **base, "part": part.as_output()})

    def _call(self, call: dict[str, Any], position: int) -> bytes:
        index = call.get("index")
        call_id = call.get("id")
        key = f"i{index}" if isinstance(index, int) else f"p{position}"
        item = self._calls.get(key)
        if item is not None and isinstance(call_id, str) and call_id \
                and item.call_id and call_id != item.call_id:
            item = None  # a new call reusing an index
        function = call["function"] if isinstance(call.get("function"), dict) else {}
        out = b""
        if item is None:
            item, out = self._add("function_call", "fc_", keep_calls=True)
            self._calls[key] = item
            item.call_id = call_id if isinstance(call_id, str) and call_id else new_id("call_")
            item.name = str(function.get("name") or "")
            out += self._event("response.output_item.added", {
                "output_index": item.index,
                "item": call_item(item.id, item.call_id, item.name, "", "in_progress")})
        elif function.get("name") and not item.name:
            item.name = str(function["name"])
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            if item.done:  # its call closed already (text came between): cannot reopen
                logger.warning("tool call arguments after the call ended; dropped")
                return out
            item.parts.append(arguments)
            out += self._event("response.function_call_arguments.delta", {
                "item_id": item.id, "output_index": item.index, "delta": arguments})
        return out

    def _close(self, item: _Item, status: str = "completed") -> bytes:
        self._open.remove(item)
        item.done = True
        item.status = status
        base = {"item_id": item.id, "output_index": item.index}
        out = b""
        if item.kind == "message":
            if item.content:
                out += self._close_part(item)
        elif item.kind == "reasoning":
            if item.summary:
                out += self._event("response.reasoning_summary_text.done", {
                    **base, "summary_index": 0, "text": item.text})
                out += self._event("response.reasoning_summary_part.done", {
                    **base, "summary_index": 0,
                    "part": {"type": "summary_text", "text": item.text}})
        else:
            if not item.parts:
                # a call without arguments (some upstreams send none, or ""): "{}", as
                # OpenAI's own, so a client's json.loads of them gets its empty object
                item.parts.append("{}")
                out += self._event("response.function_call_arguments.delta", {
                    **base, "delta": "{}"})
            out += self._event("response.function_call_arguments.done", {
                **base, "name": item.name, "arguments": item.text})
        return out + self._event("response.output_item.done", {
            "output_index": item.index, "item": item.as_output(status)})

    def finish(self) -> bytes:
        """Closing events: every open item done, then response.completed (or .incomplete)."""
        if self._done:
            return b""
        out = self._start({})
        self._done = True
        if not self._items:  # nothing said: an empty message, so output_text is ""
            item, added = self._message()
            out += added + self._open_part(item, "output_text")
        status = "incomplete" if self._finish in INCOMPLETE else "completed"
        last = self._items[-1]
        for item in list(self._open):
            # the cut fell in the item being written, the last: the others were whole
            out += self._close(item, "incomplete" if status == "incomplete" and item is last
                               else "completed")
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        return out + self._event(kind, {"response": self._response(status)})

    def error_event(self, reason: str, message: str) -> bytes:
        """A failure after the stream began: an ``error`` event, then ``response.failed``
        with what was produced so far. The stream is over after it."""
        if self._done:
            return b""
        out = self._start({})
        self._done = True
        code = _ERROR_CODES.get(reason, "server_error")
        out += self._event("error", {"code": code, "message": message, "param": None})
        error = {"code": code, "message": message, "type": reason}
        return out + self._event("response.failed", {"response": self._response(
            "failed", error=error)})
