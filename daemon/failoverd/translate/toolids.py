"""Tool-call ids as Anthropic's Messages API and Bedrock's Converse take them: matching
``[a-zA-Z0-9_-]+`` (at most `limit` characters for Converse: 64) and unique in the request.

A conversation begun elsewhere breaks both rules (Kimi's ``functions.get_weather:0``; Gemini's
and Ollama's ``call_0`` in every answer), and such a 400 would end a failover to the model.
An id is rewritten only when it must be, and its results follow it: a result answers the
latest call of its id, as it is placed right after it.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["ToolIds"]

_CHARS = re.compile(r"[a-zA-Z0-9_-]+")
_OTHER = re.compile(r"[^a-zA-Z0-9_-]")


class ToolIds:
    """The ids of one request's tool calls, rewritten where the target refuses them."""

    __slots__ = ("_latest", "_limit", "_used")

    def __init__(self, limit: int | None = None) -> None:
        self._limit = limit
        self._used: set[str] = set()
        self._latest: dict[str, str] = {}

    def call(self, tool_id: str) -> str:
        """The id a call goes out with (a repeated id gets a suffix)."""
        base = out = self._valid(tool_id)
        n = 1
        while out in self._used:
            n += 1
            out = f"{base if self._limit is None else base[:self._limit - 6]}_{n}"
        self._used.add(out)
        self._latest[tool_id] = out
        return out

    def result(self, tool_id: str) -> str:
        """The id a result goes out with: that of the latest call of its id."""
        return self._latest.get(tool_id) or self._valid(tool_id)

    def _valid(self, tool_id: str) -> str:
        if _CHARS.fullmatch(tool_id) and (self._limit is None or len(tool_id) <= self._limit):
            return tool_id
        # a short digest keeps ids that differ only in refused characters apart
        digest = hashlib.blake2s(tool_id.encode(), digest_size=4).hexdigest()
        kept = _OTHER.sub("_", tool_id)
        return f"{kept if self._limit is None else kept[:self._limit - 9]}_{digest}"
