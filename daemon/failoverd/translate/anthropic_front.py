"""Front end: an Anthropic Messages request from a client, as a canonical request.

The decisions behind the mapping are listed in failoverd.translate.anthropic.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from failoverd.errors import RequestError, TranslationError
from failoverd.translate.anthropic_common import (
    as_dict,
    as_list,
    canonical_tool_choice,
    interleaved,
    streamed,
)
from failoverd.translate.anthropic_response import signed_block
from failoverd.translate.images import image_part, inline_image_part

logger = logging.getLogger(__name__)

# every key of the Messages API failoverd can translate; others are TranslationErrors
_FRONT_KEYS = frozenset({
    "model", "messages", "max_tokens", "system", "stop_sequences", "temperature", "top_p",
    "metadata", "tools", "tool_choice", "thinking", "stream", "service_tier",
    "cache_control",  # top-level automatic caching: kept for Anthropic upstreams
    "output_config",
    # server-side context editing (Claude Code sends it): no other provider has it, so it is
    # dropped and the whole history goes out; the client compacts its context itself
    "context_management",
})
# block kinds of an assistant turn, as canonical "anthropic_order" spells them
_KIND_CODES = {"thinking": "t", "redacted_thinking": "t", "text": "x", "tool_use": "u"}
# output_config.effort -> the reasoning_effort an adaptive thinking request gets
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "high"}


def effort_for_budget(budget: int) -> str:
    """The reasoning_effort a thinking budget corresponds to (see failoverd.translate.anthropic)."""
    if budget < 4096:
        return "low"
    if budget < 16384:
        return "medium"
    return "high"


def anthropic_to_canonical(body: dict[str, Any]) -> dict[str, Any]:
    """Translates an Anthropic Messages request body into the canonical request.

    Raises RequestError (``.param`` = field path) for malformed input and TranslationError
    for input with no canonical equivalent. The result carries ``stream`` (and then
    ``stream_options.include_usage`` so the final message_delta can report usage).
    """
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    for key, value in body.items():
        # a field set to null is a field not set (some clients send every field they know)
        if key not in _FRONT_KEYS and value is not None:
            raise TranslationError(f"{key}: not supported by failoverd's translation",
                                   param=key)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model: required string", param="model")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError("max_tokens: required positive integer", param="max_tokens")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise RequestError("messages: required non-empty array", param="messages")

    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        messages.append({"role": "system", "content": _front_system(system)})
    for i, message in enumerate(raw_messages):
        messages.extend(_front_message(message, f"messages[{i}]"))

    out: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    cache = _cache_control(body, "cache_control")
    if cache is not None:
        out["cache_control"] = cache
    stops = body.get("stop_sequences")
    if stops is not None:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise RequestError("stop_sequences: must be an array of strings",
                               param="stop_sequences")
        if stops:
            out["stop"] = list(stops)
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RequestError(f"{key}: must be a number", param=key)
            out[key] = value
    metadata = body.get("metadata")
    if metadata is not None:
        meta = as_dict(metadata, "metadata")
        user = meta.get("user_id")
        if user is not None:
            if not isinstance(user, str):
                raise RequestError("metadata.user_id: must be a string",
                                   param="metadata.user_id")
            out["user"] = user
    tools = body.get("tools")
    if tools is not None:
        out["tools"] = [_front_tool(t, f"tools[{i}]")
                        for i, t in enumerate(as_list(tools, "tools"))]
    if body.get("tool_choice") is not None:
        choice, parallel = canonical_tool_choice(as_dict(body["tool_choice"], "tool_choice"))
        out["tool_choice"] = choice
        if parallel is False and tools:
            out["parallel_tool_calls"] = False
    fmt, effort_hint = None, None
    if body.get("output_config") is not None:
        fmt, effort_hint = _front_output(as_dict(body["output_config"], "output_config"))
        if fmt is not None:
            out["response_format"] = fmt
    thinking = body.get("thinking")
    if thinking is not None:
        effort = _front_thinking(as_dict(thinking, "thinking"), effort_hint)
        if effort is not None:
            out["reasoning_effort"] = effort
    streamed(body, out)
    return out


def _front_output(config: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """output_config's ``format`` (structured outputs, the SDK's ``messages.parse``) as the
    canonical json_schema response_format, and its ``effort`` as the reasoning_effort of
    adaptive thinking (without thinking it has no equivalent elsewhere, and is dropped)."""
    for key in config:
        if key not in ("format", "effort"):
            raise TranslationError(f"output_config.{key}: not supported by failoverd's "
                                   "translation", param=f"output_config.{key}")
    effort = config.get("effort")
    if effort is not None and (not isinstance(effort, str) or effort not in _EFFORTS):
        raise RequestError(f"output_config.effort: must be one of {', '.join(_EFFORTS)}, got "
                           f"{effort!r}", param="output_config.effort")
    hint = _EFFORTS[effort] if effort is not None else None
    fmt = config.get("format")
    if fmt is None:
        return None, hint
    fmt = as_dict(fmt, "output_config.format")
    if fmt.get("type") != "json_schema":
        raise TranslationError(f"output_config.format.type: {fmt.get('type')!r} is not "
                               "supported", param="output_config.format.type")
    schema = as_dict(fmt.get("schema"), "output_config.format.schema")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema,
                                                   "strict": True}}, hint


def _front_system(system: Any) -> str | list[dict[str, Any]]:
    if isinstance(system, str):
        return system
    blocks = as_list(system, "system")
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        path = f"system[{i}]"
        block = as_dict(block, path)
        if block.get("type") != "text":
            raise TranslationError(f"{path}.type: only text blocks are supported in system",
                                   param=f"{path}.type")
        parts.append(_cached({"type": "text", "text": _text(block, path)}, block, path))
    return parts[0]["text"] if len(parts) == 1 and "cache_control" not in parts[0] else parts


def _cache_control(block: dict[str, Any], path: str) -> dict[str, Any] | None:
    """A block's ``cache_control`` (a prompt-caching breakpoint), checked to be an object;
    what is in it is Anthropic's to judge."""
    cache = block.get("cache_control")
    if cache is None:
        return None
    if not isinstance(cache, dict):
        raise RequestError(f"{path}.cache_control: must be an object",
                           param=f"{path}.cache_control")
    return cache


def _cached(part: dict[str, Any], block: dict[str, Any], path: str) -> dict[str, Any]:
    """``part`` with the ``cache_control`` of the Anthropic block it came from, if any: the
    canonical form carries breakpoints as LiteLLM does (on content parts, tools, and on tool
    messages), for Anthropic upstreams; the other adapters leave them out."""
    cache = _cache_control(block, path)
    if cache is not None:
        part["cache_control"] = cache
    return part


def _text(block: dict[str, Any], path: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise RequestError(f"{path}.text: required string", param=f"{path}.text")
    return text


def _front_image(block: dict[str, Any], path: str) -> dict[str, Any]:
    source = as_dict(block.get("source"), f"{path}.source")
    kind = source.get("type")
    if kind == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str):
            raise RequestError(f"{path}.source: base64 source needs media_type and data",
                               param=f"{path}.source")
        return _cached(inline_image_part(media_type, data), block, path)
    if kind == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url:
            raise RequestError(f"{path}.source.url: required string", param=f"{path}.source.url")
        return _cached(image_part(url), block, path)
    raise TranslationError(f"{path}.source.type: {kind!r} image sources are not supported",
                           param=f"{path}.source.type")


def _front_message(message: Any, path: str) -> list[dict[str, Any]]:
    message = as_dict(message, path)
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise RequestError(f"{path}.role: must be 'user' or 'assistant'", param=f"{path}.role")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = as_list(content, f"{path}.content")
    if role == "assistant":
        return [_front_assistant(blocks, path)]
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        bpath = f"{path}.content[{j}]"
        block = as_dict(block, bpath)
        kind = block.get("type")
        if kind == "text":
            parts.append(_cached({"type": "text", "text": _text(block, bpath)}, block, bpath))
        elif kind == "image":
            parts.append(_front_image(block, bpath))
        elif kind == "tool_result":
            tool_messages.append(_front_tool_result(block, bpath))
        else:
            raise TranslationError(f"{bpath}.type: {kind!r} blocks have no equivalent in the "
                                   "canonical form", param=f"{bpath}.type")
    # OpenAI wants tool messages right after the assistant turn that called the tools;
    # Anthropic puts tool_result blocks first in the user turn, so the order matches.
    out = tool_messages
    if parts:
        plain = len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]
        out.append({"role": "user", "content": parts[0]["text"] if plain else parts})
    return out


def _front_tool_result(block: dict[str, Any], path: str) -> dict[str, Any]:
    tool_id = block.get("tool_use_id")
    if not isinstance(tool_id, str) or not tool_id:
        raise RequestError(f"{path}.tool_use_id: required string", param=f"{path}.tool_use_id")
    content = block.get("content", "")
    if isinstance(content, str):
        result: str | list[dict[str, Any]] = content
    else:
        parts: list[dict[str, Any]] = []
        for k, inner in enumerate(as_list(content, f"{path}.content")):
            ipath = f"{path}.content[{k}]"
            inner = as_dict(inner, ipath)
            if inner.get("type") == "text":
                parts.append(_cached({"type": "text", "text": _text(inner, ipath)}, inner,
                                     ipath))
            elif inner.get("type") == "image":
                # images in tool results are a canonical extension (see the decisions in
                # failoverd.translate.anthropic)
                parts.append(_front_image(inner, ipath))
            else:
                raise TranslationError(f"{ipath}.type: {inner.get('type')!r} is not supported "
                                       "in tool results", param=f"{ipath}.type")
        only_text = all(p["type"] == "text" and "cache_control" not in p for p in parts)
        result = "".join(p["text"] for p in parts) if only_text else parts
    # a breakpoint on the tool_result block itself is the tool message's (as LiteLLM has it)
    return _cached({"role": "tool", "tool_call_id": tool_id, "content": result}, block, path)


def _front_assistant(blocks: list[Any], path: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking: list[dict[str, Any]] = []
    cache: dict[str, Any] | None = None
    order: list[str] = []  # the kinds in the turn: thinking, text, tool use ("t", "x", "u")
    for j, block in enumerate(blocks):
        bpath = f"{path}.content[{j}]"
        block = as_dict(block, bpath)
        kind = block.get("type")
        order.append(_KIND_CODES.get(str(kind), ""))
        if kind == "text":
            texts.append(_text(block, bpath))
            cache = _cache_control(block, bpath) or cache
        elif kind == "tool_use":
            tool_id, name = block.get("id"), block.get("name")
            if not isinstance(tool_id, str) or not isinstance(name, str):
                raise RequestError(f"{bpath}: tool_use needs string id and name", param=bpath)
            tool_input = block.get("input", {})
            calls.append(_cached({"id": tool_id, "type": "function", "function": {
                "name": name, "arguments": orjson.dumps(tool_input).decode()}}, block, bpath))
        elif kind in ("thinking", "redacted_thinking"):
            kept = signed_block(block)
            if kept is not None:
                thinking.append(kept)
            else:
                # unsigned (another provider's reasoning, echoed back): it cannot go back to
                # Anthropic, but a model that wants its reasoning back in a tool loop
                # (DeepSeek's thinking mode) gets it as reasoning_content
                order[-1] = ""
                text = block.get("thinking")
                if kind == "thinking" and isinstance(text, str) and text:
                    thinking.append({"type": "thinking", "thinking": text, "signature": ""})
        else:
            raise TranslationError(f"{bpath}.type: {kind!r} blocks have no equivalent in the "
                                   "canonical form", param=f"{bpath}.type")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    if thinking:
        message["thinking_blocks"] = thinking
    if cache is not None:
        # the turn's text is one string: a breakpoint on a text block marks the message (its
        # text block towards Anthropic)
        message["cache_control"] = cache
    layout = "".join(order)
    if thinking and interleaved(layout):
        # interleaved thinking (thinking between tool calls): Anthropic gets the turn back in
        # its own order, each text block as it was; without this the thinking went first
        message["anthropic_order"] = layout
        if texts:
            message["content"] = [{"type": "text", "text": t} for t in texts]
    return message


def _front_tool(tool: Any, path: str) -> dict[str, Any]:
    tool = as_dict(tool, path)
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise TranslationError(f"{path}.type: server tool {kind!r} has no equivalent outside "
                               "Anthropic", param=f"{path}.type")
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError(f"{path}.name: required string", param=f"{path}.name")
    schema = tool.get("input_schema")
    if not isinstance(schema, dict):
        raise RequestError(f"{path}.input_schema: required object", param=f"{path}.input_schema")
    function: dict[str, Any] = {"name": name, "parameters": schema}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return _cached({"type": "function", "function": function}, tool, path)


def _front_thinking(thinking: dict[str, Any], effort: str | None) -> str | None:
    kind = thinking.get("type")
    if kind == "disabled":
        return None
    if kind == "adaptive":
        # the model decides how much to think, guided by output_config.effort: that effort
        # elsewhere, else a middle one
        return effort or "medium"
    if kind != "enabled":
        raise TranslationError(f"thinking.type: {kind!r} is not supported", param="thinking.type")
    budget = thinking.get("budget_tokens")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise RequestError("thinking.budget_tokens: required positive integer",
                           param="thinking.budget_tokens")
    return effort_for_budget(budget)


