"""Non-streaming responses: canonical chat.completion <-> Anthropic message, and error bodies."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from failoverd.translate.anthropic_common import (
    FINISH_REASONS,
    STOP_REASONS,
    in_order,
    interleaved,
    new_id,
    reasoning_text,
    stop_sequence,
)

logger = logging.getLogger(__name__)


def anthropic_error_body(error_type: str, message: str) -> dict[str, Any]:
    """An error in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``.

    ``error_type`` is one of Anthropic's (invalid_request_error, authentication_error,
    permission_error, not_found_error, request_too_large, rate_limit_error, api_error,
    overloaded_error) or a failoverd one such as ``no_model_available``.
    """
    return {"type": "error", "error": {"type": error_type, "message": message}}


def message_id(completion_id: Any) -> str:
    """An Anthropic message id for a canonical completion id (kept recognisable)."""
    if isinstance(completion_id, str) and completion_id:
        bare = completion_id.removeprefix("chatcmpl-")  # chatcmpl-msg_... from our decoder
        return bare if bare.startswith("msg_") else "msg_" + bare
    return new_id("msg_")


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's canonical JSON-text arguments as Anthropic's ``input`` object."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        # the model emitted arguments that are not a JSON object; Anthropic clients need an
        # object, so keep the text where the client can still see it
        logger.warning("tool call arguments are not a JSON object (%d chars)", len(arguments))
        return {"_raw_arguments": str(arguments)}
    return parsed


def signed_block(block: Any) -> dict[str, Any] | None:
    """A thinking block as the canonical ``thinking_blocks`` keep it, or None when it cannot
    go back to Anthropic: a ``thinking`` block needs its text and a non-empty signature, a
    ``redacted_thinking`` block its encrypted data (other keys, e.g. cache_control, dropped)."""
    if not isinstance(block, dict):
        return None
    kind = block.get("type")
    if kind == "thinking":
        text, signature = block.get("thinking"), block.get("signature")
        if isinstance(text, str) and isinstance(signature, str) and signature:
            return {"type": "thinking", "thinking": text, "signature": signature}
    elif kind == "redacted_thinking":
        data = block.get("data")
        if isinstance(data, str) and data:
            return {"type": "redacted_thinking", "data": data}
    return None


def signed_blocks(blocks: Any) -> list[dict[str, Any]]:
    """The replayable blocks of a canonical message's ``thinking_blocks`` (see signed_block)."""
    if not isinstance(blocks, list):
        return []
    return [b for b in map(signed_block, blocks) if b is not None]


def anthropic_usage(usage: Any) -> dict[str, int]:
    """Canonical usage -> Anthropic usage (input_tokens excludes cache reads and writes
    there)."""
    if not isinstance(usage, dict):
        return {"input_tokens": 0, "output_tokens": 0}
    prompt = int(usage.get("prompt_tokens") or 0)
    details = usage.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    written = int(usage.get("cache_creation_input_tokens") or 0)
    out = {"input_tokens": max(0, prompt - cached - written),
           "output_tokens": int(usage.get("completion_tokens") or 0)}
    if written:
        out["cache_creation_input_tokens"] = written
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def canonical_usage(usage: Any) -> dict[str, Any]:
    """Anthropic usage -> canonical usage (cache reads and writes count as prompt tokens)."""
    usage = usage if isinstance(usage, dict) else {}
    cache_read = int(usage.get("cache_read_input_tokens") or 0)
    prompt = (int(usage.get("input_tokens") or 0) + cache_read
              + int(usage.get("cache_creation_input_tokens") or 0))
    completion = int(usage.get("output_tokens") or 0)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if cache_read:
        out["prompt_tokens_details"] = {"cached_tokens": cache_read}
    written = int(usage.get("cache_creation_input_tokens") or 0)
    if written:
        # cache writes cost more than input (1.25x): LiteLLM's usage field keeps them apart
        out["cache_creation_input_tokens"] = written
    return out


def canonical_to_anthropic_response(completion: dict[str, Any], model_id: str
                                    ) -> dict[str, Any]:
    """A canonical chat.completion as an Anthropic Messages response.

    ``model_id`` is what the client sees as ``model`` (the failoverd model id that served).
    Only the first choice is used (the front end never asks for more).
    """
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    # Anthropic's own thinking, signed (thinking_blocks), goes back as it came, so the client
    # can replay it; other reasoning (DeepSeek/vLLM reasoning_content) becomes a thinking
    # block with an empty signature, which cannot be replayed to Anthropic
    signed = signed_blocks(message.get("thinking_blocks"))
    calls = [{"type": "tool_use", "id": call.get("id") or new_id("toolu_"),
              "name": (call.get("function") or {}).get("name", ""),
              "input": tool_input((call.get("function") or {}).get("arguments"))}
             for call in message.get("tool_calls") or [] if isinstance(call, dict)]
    ordered = in_order(message.get("anthropic_order"), signed, message.get("content"), calls)
    if ordered is not None:  # interleaved thinking, in the order Anthropic made it
        return _message(completion, choice, model_id, ordered, message.get("refusal"))
    content: list[dict[str, Any]] = signed
    reasoning = reasoning_text(message)
    if not content and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    content.extend(calls)  # (an upstream's malformed entries left out: nothing to translate)
    return _message(completion, choice, model_id, content, refusal)


def _message(completion: dict[str, Any], choice: dict[str, Any], model_id: str,
             content: list[dict[str, Any]], refusal: Any) -> dict[str, Any]:
    finish = choice.get("finish_reason")
    stop_reason = "refusal" if refusal else STOP_REASONS.get(finish or "stop", "end_turn")
    if any(b["type"] == "tool_use" for b in content) and stop_reason == "end_turn":
        stop_reason = "tool_use"  # some servers say "stop" after tool calls
    sequence = stop_sequence(choice) if stop_reason == "end_turn" else None
    if sequence is not None:
        stop_reason = "stop_sequence"
    return {
        "id": message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model_id,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": sequence,
        "usage": anthropic_usage(completion.get("usage")),
    }


def anthropic_to_canonical_response(resp: dict[str, Any], model: str = "") -> dict[str, Any]:
    """An Anthropic Messages response as a canonical chat.completion.

    Text blocks are joined into ``content``; tool_use blocks become ``tool_calls``; thinking
    blocks go to ``reasoning_content`` (the field DeepSeek and vLLM use) and, with their
    signatures, to ``thinking_blocks`` (redacted_thinking blocks there only), as LiteLLM does.
    """
    texts: list[str] = []
    thinking: list[str] = []
    signed: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    layout: list[str] = []  # see anthropic_common.in_order
    for block in resp.get("content") or []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
            layout.append(f"x{len(texts[-1])}")
        elif kind in ("thinking", "redacted_thinking"):
            if kind == "thinking":
                thinking.append(str(block.get("thinking", "")))
            kept = signed_block(block)
            if kept is not None:
                signed.append(kept)
                layout.append("t")
        elif kind == "tool_use":
            layout.append("u")
            calls.append({"id": block.get("id") or new_id("toolu_"), "type": "function",
                          "function": {"name": block.get("name", ""), "arguments":
                                       orjson.dumps(block.get("input") or {}).decode()}})
    message: dict[str, Any] = {"role": "assistant",
                               "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if signed:
        message["thinking_blocks"] = signed
        order = "".join(layout)
        if interleaved(order):
            # interleaved thinking: the turn's block order, for the Anthropic client (and for
            # an OpenAI client that sends the message back: Anthropic gets it as it made it)
            message["anthropic_order"] = order
    finish = FINISH_REASONS.get(str(resp.get("stop_reason")), "stop")
    choice: dict[str, Any] = {"index": 0, "message": message, "logprobs": None,
                              "finish_reason": finish}
    if resp.get("stop_reason") == "stop_sequence" and isinstance(resp.get("stop_sequence"), str):
        choice["stop_reason"] = resp["stop_sequence"]  # see anthropic_common.stop_sequence
    return {
        "id": "chatcmpl-" + str(resp.get("id") or new_id("msg_")),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model or str(resp.get("model") or ""),
        "choices": [choice],
        "usage": canonical_usage(resp.get("usage")),
    }
