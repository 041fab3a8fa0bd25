"""Small helpers shared by the Anthropic request, response and stream translators."""

from __future__ import annotations

import re
import secrets
import string
from typing import Any

from failoverd.errors import RequestError, TranslationError

# reasoning_effort -> Claude's thinking budget, and the least budget Claude takes
EFFORT_BUDGET = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576}
MIN_THINKING_BUDGET = 1024

# canonical finish_reason -> Anthropic stop_reason, and back
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def stop_sequence(choice: dict[str, Any]) -> str | None:
    """The stop sequence that ended a canonical choice, if one did.

    The canonical form carries it as vLLM's OpenAI-compatible API does: a string
    ``stop_reason`` next to ``finish_reason: "stop"`` (vLLM sends a token id there for stop
    tokens, which is not a stop sequence). OpenAI itself does not tell.
    """
    sequence = choice.get("stop_reason")
    return sequence if choice.get("finish_reason") == "stop" and isinstance(sequence, str) else None


_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """An id in Anthropic's style (``msg_...``, ``toolu_...``): prefix + 24 base62 chars."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def reasoning_text(message: dict[str, Any]) -> str:
    """A canonical message's (or delta's) reasoning: ``reasoning_content`` (DeepSeek's,
    LiteLLM's, failoverd's translations), else ``reasoning`` (the name vLLM, Ollama,
    OpenRouter and LM Studio give it)."""
    for key in ("reasoning_content", "reasoning"):
        text = message.get(key)
        if isinstance(text, str) and text:
            return text
    return ""


def streamed(body: dict[str, Any], out: dict[str, Any]) -> None:
    """A front end's ``stream`` (a boolean) on the canonical request ``out``, which then asks
    for ``stream_options.include_usage``: the stream's closing event reports usage."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError("stream: must be a boolean", param="stream")
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}


def as_dict(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RequestError(f"{path}: must be an object", param=path)
    return value


def as_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise RequestError(f"{path}: must be an array", param=path)
    return value


def text_of_blocks(content: Any, path: str, *, allow_refusal: bool = False) -> str:
    """The text of canonical message content: a string or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for i, part in enumerate(as_list(content, path)):
        part = as_dict(part, f"{path}[{i}]")
        kind = part.get("type")
        key = "refusal" if kind == "refusal" and allow_refusal else "text"
        if kind != key:
            raise TranslationError(f"{path}[{i}].type: only text is supported here, not "
                                   f"{kind!r}", param=f"{path}[{i}].type")
        text = part.get(key)
        if not isinstance(text, str):
            raise RequestError(f"{path}[{i}].{key}: required string", param=f"{path}[{i}].{key}")
        texts.append(text)
    return "".join(texts)


def canonical_tool_choice(choice: dict[str, Any]) -> tuple[Any, bool | None]:
    """Anthropic tool_choice -> (canonical tool_choice, parallel_tool_calls or None)."""
    kind = choice.get("type")
    parallel = False if choice.get("disable_parallel_tool_use") is True else None
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", None
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise RequestError("tool_choice.name: required string", param="tool_choice.name")
        return {"type": "function", "function": {"name": name}}, parallel
    raise RequestError(f"tool_choice.type: unknown value {kind!r}", param="tool_choice.type")


# ``anthropic_order``: the block kinds of an assistant turn with interleaved thinking, in
# order: "t" a (signed) thinking block, "u" a tool use, "x" a text block; a text block's
# length in characters may follow its "x" ("tx9utx13u"), which lets a turn whose text is one
# string (an answer, as OpenAI clients get it) be cut back into its blocks
_LAYOUT = re.compile(r"t|u|x(\d*)")


def interleaved(layout: str) -> bool:
    """Whether a turn's layout has thinking after a text or tool use (else it needs none)."""
    return "t" in layout.lstrip("t")


def in_order(order: Any, thinking: list[dict[str, Any]], content: Any,
             calls: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """A turn's blocks in its ``anthropic_order``: ``thinking`` and ``calls`` are its thinking
    and tool_use blocks, ``content`` its text (text parts, one per block, or one string cut
    by the lengths in the order). None when there is no order or it does not fit."""
    if not isinstance(order, str) or not order:
        return None
    codes = list(_LAYOUT.finditer(order))
    if sum(len(m.group(0)) for m in codes) != len(order):
        return None
    kinds = [m.group(0)[0] for m in codes]
    if (kinds.count("t"), kinds.count("u")) != (len(thinking), len(calls)):
        return None
    texts: list[str] = []
    if isinstance(content, list):
        texts = [p["text"] for p in content
                 if isinstance(p, dict) and isinstance(p.get("text"), str)]
        if len(texts) != len(content):
            return None
    elif isinstance(content, str) and content:
        lengths = [m.group(1) for m in codes if m.group(0)[0] == "x"]
        if lengths == [""]:
            texts = [content]  # one text block: all of it
        elif not lengths or not all(lengths) or sum(map(int, lengths)) != len(content):
            return None
        else:
            at = 0
            for n in map(int, lengths):
                texts.append(content[at:at + n])
                at += n
    if kinds.count("x") != len(texts):
        return None
    queues = {"t": iter(thinking), "u": iter(calls),
              "x": iter([{"type": "text", "text": t} for t in texts])}
    return [next(queues[kind]) for kind in kinds]


def thinking_budget(effort: Any, max_tokens: int) -> int | None:
    """The thinking budget a ``reasoning_effort`` asks for (Anthropic's and Bedrock's Claude):
    EFFORT_BUDGET's, cut to leave a token of answer; None for no thinking ("none", or a budget
    below the least Claude takes)."""
    if effort is None or effort == "none":
        return None
    budget = EFFORT_BUDGET.get(str(effort))
    if budget is None:
        raise TranslationError(f"reasoning_effort: unknown value {effort!r}",
                               param="reasoning_effort")
    budget = min(budget, max_tokens - 1)
    return None if budget < MIN_THINKING_BUDGET else budget


def turn_cache(message: dict[str, Any]) -> dict[str, Any] | None:
    """The breakpoint of an assistant turn's text: the message's own, or one on a text part
    (the parts go out as one text block)."""
    cache = message.get("cache_control")
    content = message.get("content")
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("cache_control"), dict):
                cache = part["cache_control"]
    return cache if isinstance(cache, dict) else None
