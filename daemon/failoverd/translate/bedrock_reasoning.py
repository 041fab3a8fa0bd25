"""Extended thinking towards Claude on Bedrock's Converse API, both ways.

Claude's thinking on Bedrock is a model-specific field, sent as
``additionalModelRequestFields: {"thinking": {"type": "enabled", "budget_tokens": N}}``; its
answers carry ``reasoningContent`` blocks, ``{"reasoningText": {"text", "signature"}}`` or
``{"redactedContent": <base64>}``, streamed as ``reasoningContent`` deltas of ``text``, then
``signature`` (or ``redactedContent``). The decisions, the Anthropic adapter's
(failoverd.translate.anthropic) wherever the two APIs allow:

- Only the Claude models with extended thinking on Bedrock think: 3.7 Sonnet, and from
  Sonnet / Opus 4 up to 4.6 (Opus 4, 4.1, 4.5, Sonnet 4, 4.5, Haiku 4.5); read from the
  model id as prompt caching is (translate/bedrock_cache.py). Later ones take only adaptive
  thinking, and other models (DeepSeek-R1, which reasons by default) none: towards them the
  request goes without, as before.
- reasoning_effort (an Anthropic client's thinking budget arrives as one) is the budget as
  towards Anthropic (minimal 1024, low 2048, medium 8192, high 24576 tokens), cut to
  maxTokens - 1 and left off below 1024. maxTokens is the request's (capped at the model's
  max_output_tokens), else that cap, else 4096, Anthropic's default: Claude needs it above
  the budget.
- With thinking on, temperature and top_p are not sent (Claude refuses any but the default
  then); a tool_choice that forces a call goes without thinking (Claude refuses the two
  together, and the forced call is what the client needs), and so do a prefill (an assistant
  turn last, which Claude does not take with thinking) and a tool loop whose last
  assistant turn has no signed thinking (served by another provider: Claude refuses thinking
  there).
- Signed thinking in the history (the canonical ``thinking_blocks``, as the Anthropic adapter
  fills them) goes back to the models that think as ``reasoningContent`` blocks, first in
  their turn, or in the turn's own order with ``anthropic_order`` (interleaved thinking);
  Claude's signatures are valid across Anthropic's API, Bedrock and Vertex AI, so a loop
  that moves between Anthropic and Bedrock keeps its thinking. Unsigned blocks (another
  provider's reasoning) are never sent; towards other models none are.
- Answers fill ``reasoning_content`` and, signed, ``thinking_blocks`` (redacted ones there
  only), with ``anthropic_order`` when the thinking is interleaved; a stream's signature and
  redacted blocks are ``thinking_blocks`` deltas when their block stops, as the Anthropic
  adapter gives them, so an Anthropic client gets thinking blocks it can send back.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from failoverd.translate.anthropic_common import interleaved, thinking_budget
from failoverd.translate.anthropic_request import DEFAULT_MAX_TOKENS
from failoverd.translate.anthropic_response import signed_blocks
from failoverd.translate.bedrock_cache import claude_version

_CLAUDE_37 = re.compile(r"claude-3-7-sonnet")


def thinks(model: str) -> bool:
    """Whether the model takes extended thinking with a budget (see the module's docstring)."""
    version = claude_version(model)
    return (version is not None and (4, 0) <= version < (4, 7)) \
        or bool(_CLAUDE_37.search(model))


def thinking(effort: Any, max_tokens: int, turns: list[dict[str, Any]], forced: bool
             ) -> dict[str, Any] | None:
    """The ``thinking`` field for a request to a model that thinks, or None to go without."""
    if forced or turns[-1]["role"] == "assistant":
        return None  # Claude thinks neither with a forced call nor after a prefill
    budget = thinking_budget(effort, max_tokens)
    if budget is None:
        return None
    last = next((t for t in reversed(turns) if t["role"] == "assistant"), None)
    if last is not None and turns[-1]["role"] == "user" \
            and any("toolResult" in b for b in turns[-1]["content"]) \
            and "reasoningContent" not in last["content"][0]:
        return None  # mid tool loop without the last turn's signed thinking
    return {"type": "enabled", "budget_tokens": budget}


def max_tokens_for(config: dict[str, Any]) -> int:
    """The maxTokens a thinking request has (set in ``config`` when it had none)."""
    return int(config.setdefault("maxTokens", DEFAULT_MAX_TOKENS))


def replayed(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A canonical assistant message's signed thinking as Converse reasoningContent blocks."""
    out: list[dict[str, Any]] = []
    for block in signed_blocks(message.get("thinking_blocks")):
        if block["type"] == "thinking":
            out.append({"reasoningContent": {"reasoningText": {
                "text": block["thinking"], "signature": block["signature"]}}})
        else:
            out.append({"reasoningContent": {"redactedContent": block["data"]}})
    return out


def read(blocks: list[Any]) -> dict[str, Any]:
    """The reasoning of an answer's content blocks as canonical message fields
    (``reasoning_content``, ``thinking_blocks``, ``anthropic_order``), empty without any."""
    texts: list[str] = []
    signed: list[dict[str, Any]] = []
    layout: list[str] = []  # see anthropic_common.in_order
    for block in blocks:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            layout.append(f"x{len(block['text'])}")
        elif isinstance(block.get("toolUse"), dict):
            layout.append("u")
        elif isinstance(block.get("reasoningContent"), dict):
            kept = _block(block["reasoningContent"], texts)
            if kept is not None:
                signed.append(kept)
                layout.append("t")
    out: dict[str, Any] = {}
    if any(texts):
        out["reasoning_content"] = "".join(texts)
    if signed:
        out["thinking_blocks"] = signed
        if interleaved("".join(layout)):
            out["anthropic_order"] = "".join(layout)
    return out


def _block(reasoning: dict[str, Any], texts: list[str]) -> dict[str, Any] | None:
    redacted = reasoning.get("redactedContent")
    if isinstance(redacted, str) and redacted:
        return {"type": "redacted_thinking", "data": redacted}
    text = reasoning.get("reasoningText")
    if not isinstance(text, dict) or not isinstance(text.get("text"), str):
        return None
    texts.append(text["text"])
    signature = text.get("signature")
    if isinstance(signature, str) and signature:
        return {"type": "thinking", "thinking": text["text"], "signature": signature}
    return None


def joined(pieces: list[str]) -> str:
    """Streamed ``redactedContent`` pieces (each a blob, base64 in JSON) as one blob."""
    if len(pieces) == 1:
        return pieces[0]
    try:
        data = b"".join(base64.b64decode(p, validate=True) for p in pieces)
    except (binascii.Error, ValueError):
        return "".join(pieces)
    return base64.b64encode(data).decode()
