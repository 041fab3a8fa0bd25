"""What a request needs from a model: capabilities and tokens, inferred from its body.

The body is the canonical (OpenAI Chat Completions) request as a dict. Front ends translate
other shapes first (Anthropic ``thinking`` becomes ``reasoning_effort``), but a ``thinking``
key that slipped through is honoured too. Inference never raises on a malformed body: the
API validates bodies, this only reads what is there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast, get_args

from failoverd.config import Capability
from failoverd.tokens import estimate as estimate_tokens

logger = logging.getLogger(__name__)

CAPABILITIES: tuple[str, ...] = get_args(Capability)

_IMAGE_PART_TYPES = frozenset({"image_url", "image", "input_image"})
_JSON_FORMATS = frozenset({"json_object", "json_schema"})
# reasoning_effort values that ask for no reasoning at all (gpt-5.1 accepts "none")
_NO_REASONING = frozenset({"none"})


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a candidate model must offer to serve one request.

    ``needs`` are capabilities from config.Capability. ``prompt_tokens`` is an estimate (see
    failoverd.tokens for its error bound); ``output_tokens`` is what the client asked for with
    max_completion_tokens / max_tokens, None when it did not say.
    """

    needs: frozenset[Capability] = frozenset()
    prompt_tokens: int = 0
    output_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        """Prompt plus requested output: what must fit in the context window."""
        return self.prompt_tokens + (self.output_tokens or 0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for /v1/select and logs."""
        return {
            "needs": sorted(self.needs),
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }


def infer(body: Mapping[str, Any]) -> Requirements:
    """Infers a request's requirements from its canonical body."""
    needs: set[Capability] = set()
    messages = body.get("messages")
    message_list: list[Any] = messages if isinstance(messages, list) else []
    if _has_tools(body, message_list):
        needs.add("tools")
    if any(_has_image(m) for m in message_list):
        needs.add("vision")
    if _wants_reasoning(body):
        needs.add("reasoning")
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping) and isinstance(fmt.get("type"), str) \
            and fmt["type"] in _JSON_FORMATS:
        needs.add("json")
    return Requirements(
        needs=frozenset(needs),
        prompt_tokens=estimate_tokens(body),
        output_tokens=requested_output(body),
    )


def from_spec(needs: Iterable[str], tokens: int, output_tokens: int | None = None
              ) -> Requirements:
    """Requirements stated outright (``POST /v1/select``, ``failoverctl select``).

    ``tokens`` is the prompt size; ``output_tokens`` optionally reserves room for the answer.
    Raises ValueError naming an unknown capability or a negative count.
    """
    given = [n.strip() for n in needs if n.strip()]
    unknown = [n for n in given if n not in CAPABILITIES]
    if unknown:
        raise ValueError(f"unknown capability {unknown[0]!r}; known: {', '.join(CAPABILITIES)}")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens must be a non-negative integer, got {tokens!r}")
    if output_tokens is not None and (isinstance(output_tokens, bool)
                                      or not isinstance(output_tokens, int)
                                      or output_tokens < 0):
        raise ValueError(f"output_tokens must be a non-negative integer, got {output_tokens!r}")
    return Requirements(
        needs=frozenset(cast(Capability, n) for n in given),
        prompt_tokens=tokens,
        output_tokens=output_tokens,
    )


def requested_output(body: Mapping[str, Any]) -> int | None:
    """max_completion_tokens (the current name) or else max_tokens; None when neither is set."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _has_tools(body: Mapping[str, Any], messages: list[Any]) -> bool:
    for key in ("tools", "functions"):
        value = body.get(key)
        if isinstance(value, list) and value:
            return True
    # A conversation that already holds tool calls or results needs a model that can read
    # them, even when this turn offers no tools.
    for m in messages:
        if not isinstance(m, Mapping):
            continue
        if m.get("role") in ("tool", "function") or m.get("tool_calls") or m.get("function_call"):
            return True
    return False


def _has_image(message: Any) -> bool:
    if not isinstance(message, Mapping):
        return False
    content = message.get("content")
    if not isinstance(content, list):
        return False
    return any(isinstance(p, Mapping) and p.get("type") in _IMAGE_PART_TYPES for p in content)


def _wants_reasoning(body: Mapping[str, Any]) -> bool:
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and effort and effort not in _NO_REASONING:
        return True
    reasoning = body.get("reasoning")  # OpenRouter / Responses-style {"effort": ...}
    if isinstance(reasoning, Mapping):
        inner = reasoning.get("effort")
        if reasoning.get("enabled") is True or (
                isinstance(inner, str) and inner and inner not in _NO_REASONING):
            return True
    thinking = body.get("thinking")  # Anthropic shape, if a front end passed it through
    if isinstance(thinking, Mapping):
        return thinking.get("type") in ("enabled", "adaptive")
    return False
