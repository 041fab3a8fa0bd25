"""What a candidate gets of a request: whether it has the capabilities, how the context
policy fits the request to its window, and the output limit it can take. Pure code, shared by
the attempt loop (dispatch.py) and the choice of a hedge (hedge.py)."""

from __future__ import annotations

from typing import Any

from failoverd.catalog import ModelConfig
from failoverd.config import ContextPolicy
from failoverd.errors import ContextRefused
from failoverd.failures import FailureReason
from failoverd.requirements import Requirements
from failoverd.selection import context_reason, output_reservation, truncate

# Room for the answer that context_policy = "truncate" leaves when the request sets no
# max_tokens but the adapter must send one (Anthropic)
TRUNCATED_ANSWER_ROOM = 4096


def lacking(model: ModelConfig, needs: Requirements | None) -> str | None:
    """Why `model` cannot serve the request's needs, or None. A model whose config omits
    `capabilities` is not screened: unknown is not the same as none."""
    if needs is None or not model.capabilities_declared:
        return None
    missing = sorted(needs.needs - model.capabilities)
    return f"lacks capability: {', '.join(missing)}" if missing else None


def fit_context(model: ModelConfig, body: dict[str, Any], needs: Requirements | None,
                policy_name: ContextPolicy, notices: list[str],
                default_output: int | None = None) -> tuple[dict[str, Any], str | None]:
    """The request as `model` gets it under the context policy: (body, None) to try it,
    (body, reason) to skip it; raises for `fail`. `default_output`: the max_tokens the
    adapter sends when the request sets none; `notices`: the request's, told of a
    truncation."""
    too_big = context_reason(model, needs) if needs is not None else None
    if too_big is None or needs is None:
        return body, None
    if policy_name == "fail":
        raise ContextRefused(FailureReason.CONTEXT_OVERFLOW,
                             f"{model.id}: {too_big} (context_policy = fail)", status=400,
                             provider=model.provider, model=model.id)
    if policy_name == "skip":
        return body, too_big
    # the same reservation the check made: what the model can write, not what was asked;
    # with none asked but one the adapter must send, room for an answer of up to 4096
    reserve = output_reservation(model, needs)
    if needs.output_tokens is None and default_output is not None:
        reserve = min(default_output, TRUNCATED_ANSWER_ROOM)
    shorter = truncate(body, model.context_window, reserve)
    if shorter is None:
        return body, f"{too_big}; truncation cannot make it fit"
    dropped = len(body["messages"]) - len(shorter["messages"])
    notices.append(f"{model.id}: dropped {dropped} oldest message(s) to fit its "
                           "context window")
    return shorter, None


def answer_room(model: ModelConfig, needs: Requirements | None, truncated: bool,
                default_output: int | None) -> int | None:
    """For a request that sets no output limit, to an adapter that must send one
    (`default_output`, Anthropic's max_tokens): the limit that fits the window when it is
    less than that default, else None. Anthropic refuses prompt + max_tokens over the window
    ("input length and max_tokens exceed context limit") where an OpenAI model writes until
    the window is full; a truncated request left itself TRUNCATED_ANSWER_ROOM."""
    if default_output is None or needs is None or needs.output_tokens is not None \
            or not model.context_window:
        return None
    room = (min(default_output, TRUNCATED_ANSWER_ROOM) if truncated
            else model.context_window - needs.prompt_tokens)
    return max(room, 1) if room < default_output else None


def cap_output(body: dict[str, Any], model: ModelConfig, room: int | None) -> dict[str, Any]:
    """The request with max_tokens / max_completion_tokens cut to what the model can write
    (its max_output_tokens): a fallback smaller than the model the client wrote for would
    refuse the request (OpenAI: "max_tokens is too large"), and the context check reserves
    only that much; `room` (see answer_room) is the limit of a request that sets none. The
    body itself is not changed."""
    if room is not None and "max_tokens" not in body and "max_completion_tokens" not in body:
        return {**body, "max_tokens": room}
    cap = model.max_output_tokens
    if not cap:
        return body
    out: dict[str, Any] | None = None
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if type(value) is int and value > cap:
            if out is None:
                out = dict(body)
            out[key] = cap
    return body if out is None else out
