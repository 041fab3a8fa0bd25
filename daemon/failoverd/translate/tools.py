"""Tools of the canonical (OpenAI) form as the translators read and write them: definitions in
requests, calls in streamed deltas."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def function_tools(tools: Any, refuse: Callable[[str, str], Exception]
                   ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(position, `function` object) of each tool; any other tool type raises `refuse(what,
    param)`, the translator's own TranslationError."""
    for i, tool in enumerate(tools or ()):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type", "function") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise refuse(f"a tool of type {kind!r}", f"tools[{i}]")
        yield i, fn


def stream_delta(first: bool, text: str, calls: list[dict[str, Any]],
                 index: int) -> dict[str, Any]:
    """An OpenAI stream delta: the first one carries the role (and its text, even empty);
    new tool calls are numbered on from `index`. Empty when there is nothing to say."""
    delta: dict[str, Any] = ({"role": "assistant", "content": text} if first
                             else {"content": text} if text else {})
    if calls:
        delta["tool_calls"] = [{"index": index + k, **call} for k, call in enumerate(calls)]
    return delta
