"""The inputs of OpenAI's embeddings `input` and legacy completions `prompt`, which share one
shape: a string, strings, one token array, or token arrays."""

from __future__ import annotations

from typing import Any


def is_token(value: Any) -> bool:
    """A token id: a non-negative integer."""
    return type(value) is int and value >= 0


def items(value: Any) -> list[Any]:
    """The separate inputs of a (validated) value: a string or one token array is one."""
    if isinstance(value, str) or all(is_token(v) for v in value):
        return [value]
    return list(value)
