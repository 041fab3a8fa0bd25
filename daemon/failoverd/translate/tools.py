"""Tool definitions of the canonical (OpenAI) form, as the translators read them."""

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
