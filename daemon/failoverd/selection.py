"""Which models can serve a request: capability and context checks, truncation, auto chains.

Pure functions over config and Requirements; the router calls them for every candidate and
records the reason strings they return in the request's attempts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from failoverd.complexity import Decision
from failoverd.config import Config, ModelConfig, Tier
from failoverd.requirements import Requirements
from failoverd.tokens import message_tokens, overhead_tokens

logger = logging.getLogger(__name__)

TIER_ORDER: tuple[Tier, ...] = ("small", "medium", "large")
# Messages truncation never drops: the instructions.
_KEPT_ROLES = frozenset({"system", "developer"})


def output_reservation(model: ModelConfig, req: Requirements) -> int:
    """Output tokens to reserve in ``model``'s window for ``req``.

    A model cannot write more than its max_output_tokens, and the dispatcher cuts a larger
    request to it, so the reservation is the smaller of the two.
    """
    if req.output_tokens is None:
        return 0
    if model.max_output_tokens is not None:
        return min(req.output_tokens, model.max_output_tokens)
    return req.output_tokens


def check(model: ModelConfig, req: Requirements) -> str | None:
    """None when ``model`` can serve ``req``; otherwise why not, as a short ASCII reason.

    The context check is prompt + reserved output <= context_window; a model without a
    configured context_window is assumed to fit, and one whose config omits `capabilities`
    is not screened for them (unknown is not the same as none; `capabilities = []` is none).
    """
    missing = sorted(req.needs - model.capabilities) if model.capabilities_declared else []
    if missing:
        noun = "capability" if len(missing) == 1 else "capabilities"
        return f"lacks {noun}: {', '.join(missing)}"
    return context_reason(model, req)


def context_reason(model: ModelConfig, req: Requirements) -> str | None:
    """The context-window half of check(): None when the request fits."""
    if model.context_window is None:
        return None
    needed = req.prompt_tokens + output_reservation(model, req)
    if needed > model.context_window:
        return f"context window {model.context_window} < {needed} needed tokens"
    return None


def truncate(body: Mapping[str, Any], context_window: int | None,
             output_tokens: int | None) -> dict[str, Any] | None:
    """A copy of ``body`` with the oldest conversation turns dropped until it fits.

    context_policy = "truncate". A turn is a user message with every message after it up to
    the next user message, so an assistant's tool calls always leave together with their
    tool results and the conversation still starts with a user message. System and developer
    messages are always kept (in place), and so is the last user turn (the last user
    message and everything after it). Returns None when even that does not fit.

    The result is a new dict with a new messages list; message dicts are shared, and neither
    ``body`` nor its messages are mutated.
    """
    messages = body.get("messages")
    out = dict(body)
    if context_window is None or not isinstance(messages, list):
        if isinstance(messages, list):
            out["messages"] = list(messages)
        return out
    budget = context_window - (output_tokens or 0) - overhead_tokens(body)
    sizes = [message_tokens(m) if isinstance(m, Mapping) else 0 for m in messages]
    total = sum(sizes)
    if total <= budget:
        out["messages"] = list(messages)
        return out
    turns = _droppable_turns(messages)
    dropped: set[int] = set()
    for turn in turns:
        if total <= budget:
            break
        dropped.update(turn)
        total -= sum(sizes[i] for i in turn)
    if total > budget:
        return None
    out["messages"] = [m for i, m in enumerate(messages) if i not in dropped]
    logger.debug("truncated %d of %d messages to fit a %d-token window",
                 len(dropped), len(messages), context_window)
    return out


def _droppable_turns(messages: list[Any]) -> list[list[int]]:
    """Indices of the non-system messages before the last user message, grouped by turn."""
    last_user = -1
    for i, m in enumerate(messages):
        if _role(m) == "user":
            last_user = i
    turns: list[list[int]] = []
    current: list[int] = []
    for i in range(max(last_user, 0)):
        role = _role(messages[i])
        if role in _KEPT_ROLES:
            continue
        if role == "user" and current:
            turns.append(current)
            current = []
        current.append(i)
    if current:
        turns.append(current)
    return turns


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, Mapping) else None


def auto_chain(config: Config, decision: Decision, available: Callable[[str], bool],
               req: Requirements) -> tuple[list[str], list[tuple[str, str]]]:
    """The candidate chain for ``model: "auto"`` and the models skipped on the way.

    Models of the decided tier come first, then those of each larger tier (small, medium,
    large) as fallbacks; within a tier the cheapest (cost.input + cost.output) first, file
    order breaking ties. A model that lacks a capability, is too small for the request or is
    not ``available`` (breaker open, credentials blocked) is left out and listed with its
    reason. Models without a tier take no part in auto routing.

    With no signal (``decision.tier`` None), no model carrying a tier, or no tiered model
    left, the answer is the default chain as configured: the router then walks it with its
    usual checks, queueing and failover (so only skipped models outside it are returned).
    """
    if decision.tier is None or not any(m.tier for m in config.models.values()):
        return list(config.default_chain), []
    start = TIER_ORDER.index(decision.tier)
    chain: list[str] = []
    skipped: list[tuple[str, str]] = []
    for tier in TIER_ORDER[start:]:
        members = [m for m in config.models.values() if m.tier == tier]
        # sorted() is stable, so file order breaks cost ties
        for model in sorted(members, key=lambda m: m.cost.input + m.cost.output):
            reason = check(model, req)
            if reason is None and not available(model.id):
                reason = "unavailable"
            if reason is None:
                chain.append(model.id)
            else:
                skipped.append((model.id, reason))
    if not chain:
        # the router walks the default chain with its own checks and records each of its
        # models there: listed here as well, a model would appear twice in the attempts
        default = config.default_chain
        return list(default), [(m, why) for m, why in skipped if m not in default]
    return chain, skipped
