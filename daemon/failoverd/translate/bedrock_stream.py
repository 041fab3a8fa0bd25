"""Converse stream events (``converse-stream``, decoded from the event stream framing by the
Bedrock adapter) as canonical ``chat.completion.chunk`` dicts; the mapping's decisions are
listed in failoverd.translate.bedrock."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from failoverd.translate.bedrock import finish_reason, tool_call, usage
from failoverd.translate.bedrock_reasoning import joined
from failoverd.translate.tools import stream_delta

__all__ = ["StreamTranslator"]


@dataclass(slots=True)
class StreamTranslator:
    """Turns Converse stream events (messageStart, contentBlockStart, contentBlockDelta,
    contentBlockStop, messageStop, metadata) into canonical chunks.

    Tool calls stream as OpenAI's do: the first delta of a call carries its id and name (from
    contentBlockStart), later ones pieces of its arguments, all under the call's index. The
    finish chunk comes with messageStop; usage (in the metadata event after it) goes on a
    final choices-less chunk when the client asked for `stream_options.include_usage`, else on
    the finish chunk, which is then held until the metadata came. Reasoning text streams as
    `reasoning_content`; a reasoning block's signature (or redacted content, whatever number
    of deltas it came in) is a `thinking_blocks` delta when the block stops, as the Anthropic
    adapter gives a thinking block's signature_delta.
    """

    model_name: str
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    started: bool = False  # the role delta went out
    # the model began its answer (text, a tool call, or reasoning): a failure from here on
    # comes after content
    content_started: bool = False
    stop_reason: str | None = None
    done: bool = False  # the metadata event (the last) came
    _calls: dict[int, int] = field(default_factory=dict)  # content block -> tool call index
    _argued: set[int] = field(default_factory=set)  # content blocks with argument text
    # reasoning blocks: their signature and their redacted content pieces, by content block
    _signatures: dict[int, str] = field(default_factory=dict)
    _redacted: dict[int, list[str]] = field(default_factory=dict)
    _finish: dict[str, Any] | None = None
    _usage: Any = None

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model_name,
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}]}

    def _delta(self, text: str = "", calls: list[dict[str, Any]] | None = None,
               index: int = 0) -> dict[str, Any]:
        delta = stream_delta(not self.started, text, calls or [], index)
        self.started = True
        return self._chunk(delta)

    def feed(self, event_type: str, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks for one event."""
        out: list[dict[str, Any]] = []
        if event_type == "messageStart":
            if not self.started:
                out.append(self._delta())
        elif event_type == "contentBlockStart":
            start = event.get("start")
            use = start.get("toolUse") if isinstance(start, dict) else None
            if isinstance(use, dict):
                index = len(self._calls)
                self._calls[int(event.get("contentBlockIndex") or 0)] = index
                call = tool_call({**use, "input": None})
                call["function"]["arguments"] = ""
                out.append(self._delta(calls=[call], index=index))
                self.content_started = True
        elif event_type == "contentBlockDelta":
            out.extend(self._content_delta(event))
        elif event_type == "contentBlockStop":
            out.extend(self._block_stop(int(event.get("contentBlockIndex") or 0)))
        elif event_type == "messageStop":
            self.stop_reason = str(event.get("stopReason") or "end_turn")
            self._finish = self._chunk({}, finish_reason(self.stop_reason, bool(self._calls)))
        elif event_type == "metadata":
            self._usage = event.get("usage")
            self.done = True
        # unknown events carry nothing for the client
        return out

    def _block_stop(self, block: int) -> list[dict[str, Any]]:
        signature, redacted = self._signatures.pop(block, ""), self._redacted.pop(block, None)
        if redacted:
            return [self._chunk({"thinking_blocks": [{"type": "redacted_thinking",
                                                      "data": joined(redacted)}]})]
        if signature:
            return [self._chunk({"thinking_blocks": [{"type": "thinking", "thinking": "",
                                                      "signature": signature}]})]
        index = self._calls.get(block)
        if index is None or block in self._argued:
            return []
        # a call of a tool without parameters: Claude's input comes through Converse as one
        # empty delta, while OpenAI clients parse the arguments, which are "{}" there (as
        # complete() gives them)
        self._argued.add(block)
        return [self._chunk({"tool_calls": [{"index": index,
                                             "function": {"arguments": "{}"}}]})]

    def _content_delta(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        delta = event.get("delta")
        if not isinstance(delta, dict):
            return []
        if isinstance(delta.get("text"), str):
            if not delta["text"]:
                return []
            self.content_started = True
            return [self._delta(delta["text"])]
        use = delta.get("toolUse")
        if isinstance(use, dict):
            block = int(event.get("contentBlockIndex") or 0)
            index = self._calls.get(block)
            if index is None:  # a delta without its start: a call of its own
                index = self._calls[block] = len(self._calls)
            piece = str(use.get("input") or "")
            if piece:
                self._argued.add(block)
            self.content_started = True
            return [self._chunk({"tool_calls": [{"index": index,
                                                 "function": {"arguments": piece}}]})]
        reasoning = delta.get("reasoningContent")
        if not isinstance(reasoning, dict):
            return []
        block = int(event.get("contentBlockIndex") or 0)
        signature, redacted = reasoning.get("signature"), reasoning.get("redactedContent")
        if isinstance(signature, str) and signature:
            self._signatures[block] = self._signatures.get(block, "") + signature
            self.content_started = True
        if isinstance(redacted, str) and redacted:
            self._redacted.setdefault(block, []).append(redacted)
            self.content_started = True
        text = reasoning.get("text")
        if not isinstance(text, str) or not text:
            return []  # a signature or redacted content: sent when the block stops
        first = {} if self.started else {"role": "assistant", "content": ""}
        self.started = self.content_started = True
        return [self._chunk({**first, "reasoning_content": text})]

    def finish(self) -> list[dict[str, Any]]:
        """The chunks after the last event: the finish chunk (with usage unless the client
        asked for a usage chunk), then the usage chunk if it did."""
        out: list[dict[str, Any]] = []
        if self._finish is not None:
            if not self.include_usage:
                self._finish["usage"] = usage(self._usage)
            out.append(self._finish)
            self._finish = None
        if self.include_usage:
            out.append({"id": self.id, "object": "chat.completion.chunk",
                        "created": self.created, "model": self.model_name, "choices": [],
                        "usage": usage(self._usage)})
        return out
