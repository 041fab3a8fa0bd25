"""Prompt caching towards Bedrock's Converse API: the canonical ``cache_control`` breakpoints
(see failoverd.translate.anthropic: on content parts, tools, tool calls, tool messages,
messages, and the request's top-level automatic one) as Converse ``cachePoint`` blocks.

Converse caches the prompt up to each ``{"cachePoint": {"type": "default"}}`` block, which
goes right after the block it marks: in ``system``, in a message's ``content``, or in
``toolConfig.tools``. The decisions:

- Only models with prompt caching on Bedrock get them (a model without it refuses the request
  with "You invoked an unsupported model, or your request did not allow prompt caching", or
  "extraneous key [cachePoint]"): Claude 3.5 Haiku, 3.7 Sonnet and every Claude from 4 on, and
  Amazon Nova Micro, Lite, Pro and Premier (whose tools take none: their breakpoints are left
  out). Read from the model id, which an inference profile's id or a foundation model's ARN
  contains; an application inference profile's ARN names no model and gets none. Towards
  other models the breakpoints are dropped, as before: the prompt is paid in full. A model the
  rule misjudged refuses them, and gets the request again without them (`place(...,
  points=False)`, see providers/bedrock.py).
- At most 4 (Bedrock's limit, as Anthropic's): the last ones are kept, the prompt's longest
  cached prefixes (tools, system and messages, in that order).
- A breakpoint's ``ttl: "1h"`` goes along to Claude from 4.5 on (Opus, Sonnet and Haiku 4.5
  take the hour-long cache); others get the default 5 minutes. Bedrock refuses a 1h point
  after a 5m one (tools, system, messages: longest first, as Anthropic wants them), so a 1h
  breakpoint after a 5m one is kept for 5 minutes.
- A breakpoint on a tool result goes after its ``toolResult`` block (a toolResult's content
  takes none); the top-level automatic one after the last block of the last message.
"""

from __future__ import annotations

import re
from typing import Any

MAX_CACHE_POINTS = 4
# the key a translated block carries while its breakpoint waits for `place` (never sent)
MARK = "_failoverd_cache"

# Claude 3.5 Haiku and 3.7 Sonnet ("anthropic.claude-3-7-sonnet-20250219-v1:0")
_CLAUDE_3 = re.compile(r"claude-3-(?:5-haiku|7-sonnet)")
# Claude from 4 on ("anthropic.claude-sonnet-4-20250514-v1:0", "...claude-opus-4-1-...",
# "...claude-sonnet-4-6"): major and minor version
_CLAUDE_4 = re.compile(r"claude-(?:opus|sonnet|haiku)-(\d+)(?:-(\d)(?!\d))?")
_NOVA = re.compile(r"amazon\.nova-(?:micro|lite|pro|premier)-")


def claude_version(model: str) -> tuple[int, int] | None:
    """(major, minor) of a Claude from 4 on named in a model id, else None."""
    match = _CLAUDE_4.search(model)
    return (int(match[1]), int(match[2] or 0)) if match else None


def caches(model: str) -> bool:
    """Whether the model takes cachePoint blocks (see the module's docstring)."""
    version = claude_version(model)
    return (version is not None and version >= (4, 0)) or bool(_CLAUDE_3.search(model)) \
        or bool(_NOVA.search(model))


def _caches_tools(model: str) -> bool:
    return "claude" in model  # Nova caches system and messages only


def _hour_long(model: str) -> bool:
    version = claude_version(model)
    return version is not None and version >= (4, 5)


def mark(block: dict[str, Any], source: Any) -> dict[str, Any]:
    """``block`` marked with the breakpoint of the canonical part, message, tool call or tool it
    came from, if that has one."""
    cache = source.get("cache_control") if isinstance(source, dict) else None
    if isinstance(cache, dict):
        block[MARK] = cache
    return block


def mark_last(blocks: list[dict[str, Any]], source: Any) -> list[dict[str, Any]]:
    """A message-level breakpoint on the message's last block (unless that has its own)."""
    if blocks and MARK not in blocks[-1]:
        mark(blocks[-1], source)
    return blocks


def unmark(blocks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Takes the breakpoints off blocks that go inside another (a tool result's content):
    the last one, which the containing block then carries, or None."""
    found = None
    for block in blocks:
        found = block.pop(MARK, found)
    return found


def place(request: dict[str, Any], model: str, automatic: Any = None, *,
          points: bool = True) -> None:
    """Turns the marked blocks of a built Converse request into cachePoint blocks after them,
    or, towards a model without prompt caching (or without `points`: one that refused them,
    see providers/bedrock.py), just takes the marks off. ``automatic`` is the request's
    top-level cache_control."""
    tools = (request.get("toolConfig") or {}).get("tools") or []
    lists = [tools, request.get("system") or [],
             *(turn["content"] for turn in request["messages"])]
    found: list[tuple[list[dict[str, Any]], int, dict[str, Any]]] = []
    for blocks in lists:
        for i, block in enumerate(blocks):
            cache = block.pop(MARK, None)
            if cache is not None and (blocks is not tools or _caches_tools(model)):
                found.append((blocks, i, cache))
    if isinstance(automatic, dict) and request["messages"]:
        last = request["messages"][-1]["content"]
        if not (found and found[-1][0] is last and found[-1][1] == len(last) - 1):
            found.append((last, len(last) - 1, automatic))
    if not points or not caches(model):
        return
    kept = found[-MAX_CACHE_POINTS:]
    # the hour-long ones while no 5-minute one came before them
    hours = 0
    if _hour_long(model):
        while hours < len(kept) and kept[hours][2].get("ttl") == "1h":
            hours += 1
    # from the end, so the indices of the earlier ones still hold
    for n, (blocks, i, _) in reversed(list(enumerate(kept))):
        point: dict[str, Any] = {"type": "default", "ttl": "1h"} if n < hours \
            else {"type": "default"}
        blocks.insert(i + 1, {"cachePoint": point})
