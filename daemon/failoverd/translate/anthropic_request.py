"""Adapter: a canonical request as an Anthropic Messages request.

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
    in_order,
    text_of_blocks,
    thinking_budget,
    turn_cache,
)
from failoverd.translate.anthropic_response import signed_blocks
from failoverd.translate.images import (
    image_part_url,
    is_data_url,
    is_http_url,
    parse_data_url,
)
from failoverd.translate.toolids import ToolIds

logger = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 4096
ANTHROPIC_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_THINKING_BLOCKS = ("thinking", "redacted_thinking")

# canonical keys translated below or dropped as hints (see the decisions)
_ADAPTER_KEYS = frozenset({
    "model", "messages", "stream", "stream_options", "seed", "service_tier", "store",
    "metadata", "prompt_cache_key", "verbosity", "user", "safety_identifier",
    "max_tokens", "max_completion_tokens", "stop", "temperature", "top_p", "top_k",
    "tools", "tool_choice", "parallel_tool_calls", "reasoning_effort", "n",
    "response_format", "cache_control",
})
# keys only harmless at their "off" value
_ADAPTER_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0, 0.0), "presence_penalty": (None, 0, 0.0),
    "logprobs": (None, False), "top_logprobs": (None, 0), "logit_bias": (None, {}),
    "modalities": (None, ["text"]), "audio": (None,), "prediction": (None,),
    "web_search_options": (None,), "functions": (None,), "function_call": (None,),
}


def canonical_to_anthropic(body: dict[str, Any], upstream_model_name: str,
                           default_max_tokens: int = DEFAULT_MAX_TOKENS, *,
                           max_output_tokens: int | None = None) -> dict[str, Any]:
    """Translates a canonical request into an Anthropic Messages request (without ``stream``).

    ``default_max_tokens`` applies when the request sets neither max_completion_tokens nor
    max_tokens (Anthropic requires the field): pass the model's max_output_tokens, or leave
    the default of 4096. ``max_output_tokens``, when given, caps what the client asked for:
    a request written for a bigger model is answered (possibly cut at the cap, reported as
    ``length``) instead of refused with a 400. Raises TranslationError naming the field for
    anything Anthropic cannot express.
    """
    for key, value in body.items():
        if key in _ADAPTER_KEYS:
            continue
        allowed = _ADAPTER_DEFAULTS.get(key)
        if allowed is None or value not in allowed:
            raise TranslationError(f"{key}: not supported by Anthropic", param=key)
    n = body.get("n")
    if n not in (None, 1):
        raise TranslationError("n: Anthropic returns one choice per request", param="n")
    fmt = body.get("response_format")
    output_format = _output_format(fmt)
    if output_format is None and isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise TranslationError(f"response_format.type: {fmt.get('type')!r} is not supported "
                               "by Anthropic", param="response_format.type")

    system, messages = _anthropic_messages(as_list(body.get("messages"), "messages"))
    out: dict[str, Any] = {"model": upstream_model_name}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise RequestError("max_tokens: must be a positive integer", param="max_tokens")
    if max_output_tokens:
        max_tokens = min(max_tokens, max_output_tokens)
    out["max_tokens"] = max_tokens
    if system:
        out["system"] = system
    out["messages"] = messages
    if output_format is not None:
        out["output_config"] = {"format": output_format}
    if isinstance(body.get("cache_control"), dict):  # automatic caching (the whole prompt)
        out["cache_control"] = body["cache_control"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)

    choice = _anthropic_tool_choice(body.get("tool_choice"))
    forced = bool(body.get("tools")) and choice is not None and choice["type"] in ("any", "tool")
    # Anthropic refuses thinking with a forced tool call ("Thinking may not be enabled when
    # tool_choice forces tool use"): the forced call is what the client needs, so the
    # thinking is what goes
    thinking = None if forced else _thinking(body.get("reasoning_effort"), out["max_tokens"],
                                             messages)
    if thinking is not None:
        out["thinking"] = thinking
    else:
        temperature, top_p = body.get("temperature"), body.get("top_p")
        if temperature is not None:
            out["temperature"] = min(float(temperature), 1.0)
        elif top_p is not None:
            out["top_p"] = top_p
        if body.get("top_k") is not None:
            out["top_k"] = body["top_k"]
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user[:256]}

    tools = body.get("tools")
    if tools:
        out["tools"] = [_anthropic_tool(t, f"tools[{i}]")
                        for i, t in enumerate(as_list(tools, "tools"))]
    if body.get("parallel_tool_calls") is False and tools and (
            choice is None or choice["type"] != "none"):  # "none" takes no other field
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None and (tools or choice["type"] == "none"):
        out["tool_choice"] = choice
    return out


def _output_format(fmt: Any) -> dict[str, Any] | None:
    """A json_schema response_format as Anthropic's structured-output format (json_object,
    with no schema, has no equivalent there)."""
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    schema = fmt.get("json_schema")
    schema = schema.get("schema") if isinstance(schema, dict) else None
    return {"type": "json_schema", "schema": schema} if isinstance(schema, dict) else None


def _thinking(effort: Any, max_tokens: int, messages: list[dict[str, Any]]
              ) -> dict[str, Any] | None:
    budget = thinking_budget(effort, max_tokens)
    if budget is None:
        return None
    last_assistant = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
    if last_assistant is not None and messages[-1]["role"] == "user" and any(
            b.get("type") == "tool_result" for b in messages[-1]["content"]) \
            and last_assistant["content"][0].get("type") not in _THINKING_BLOCKS:
        # mid tool-use loop whose last assistant turn has no signed thinking (served by
        # another provider, or from a client that does not replay it): Anthropic refuses
        # thinking there, so this request goes without
        return None
    return {"type": "enabled", "budget_tokens": budget}


def _anthropic_messages(raw: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    ids = ToolIds()
    for i, message in enumerate(raw):
        path = f"messages[{i}]"
        message = as_dict(message, path)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_last_cached(_system_blocks(content, f"{path}.content"), message))
            continue
        if role == "user":
            blocks = _last_cached(_anthropic_user_content(content, f"{path}.content"), message)
            target = "user"
        elif role == "assistant":
            blocks = _anthropic_assistant_content(message, path, ids)
            target = "assistant"
        elif role == "tool":
            tool_id = message.get("tool_call_id")
            if not isinstance(tool_id, str):
                raise RequestError(f"{path}.tool_call_id: required string",
                                   param=f"{path}.tool_call_id")
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": ids.result(tool_id)}
            result_blocks = _anthropic_user_content(content, f"{path}.content")
            if result_blocks:
                result["content"] = result_blocks
            blocks, target = [_cached(result, message)], "user"
        else:
            raise TranslationError(f"{path}.role: {role!r} is not supported by Anthropic",
                                   param=f"{path}.role")
        if not blocks:
            continue  # Anthropic rejects empty content; an empty turn carries nothing
        if messages and messages[-1]["role"] == target:
            # Anthropic requires alternating roles: consecutive turns of one role merge
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": target, "content": blocks})
    for message in messages:  # tool results must lead their user turn
        message["content"].sort(key=lambda b: b.get("type") != "tool_result")
    if messages and messages[-1]["role"] == "assistant":
        # an assistant prefill must not end in whitespace (Anthropic returns a 400)
        last = messages[-1]["content"][-1]
        if last.get("type") == "text":
            last["text"] = last["text"].rstrip()
            if not last["text"]:
                messages[-1]["content"].pop()
                if not messages[-1]["content"]:
                    messages.pop()
    if not messages:
        raise TranslationError("messages: Anthropic needs at least one user or assistant "
                               "message", param="messages")
    return system, messages


def _system_blocks(content: Any, path: str) -> list[dict[str, Any]]:
    """A system message's text as system blocks: one per text part, as an Anthropic client's
    list of system blocks arrives, so parts are not run together ("...assistantAnswer...")."""
    text = text_of_blocks(content, path)  # validates: text parts only
    parts = content if isinstance(content, list) else [{"text": text}]
    return [_cached({"type": "text", "text": part["text"]}, part)
            for part in parts if part["text"]]


def _last_cached(blocks: list[dict[str, Any]], message: dict[str, Any]
                 ) -> list[dict[str, Any]]:
    """A message-level breakpoint (LiteLLM's spelling for a string content) on the message's
    last block."""
    if blocks and "cache_control" not in blocks[-1]:
        _cached(blocks[-1], message)
    return blocks


def _cached(block: dict[str, Any], source: Any) -> dict[str, Any]:
    """``block`` with the prompt-caching breakpoint (``cache_control``) of the canonical part,
    message, tool call or tool it came from, if that has one: Anthropic caches the prompt up
    to each marked block, so a breakpoint lost is a whole prompt paid in full every turn."""
    cache = source.get("cache_control") if isinstance(source, dict) else None
    if isinstance(cache, dict):
        block["cache_control"] = cache
    return block


def _anthropic_user_content(content: Any, path: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    # Anthropic refuses empty text blocks and a turn whose text is only whitespace ("text
    # content blocks must contain non-whitespace text"), which other providers' answers and
    # tools leave in a history ("\n\n" before a tool call, a command's lone newline): such a
    # block says nothing and is left out, or the whole session would be a 400 from then on
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content.strip() else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(as_list(content, path)):
        ppath = f"{path}[{j}]"
        part = as_dict(part, ppath)
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(f"{ppath}.text: required string", param=f"{ppath}.text")
            if text.strip():  # see _anthropic_user_content
                blocks.append(_cached({"type": "text", "text": text}, part))
        elif kind == "image_url":
            blocks.append(_cached(_anthropic_image(image_part_url(part, path=ppath), ppath),
                                  part))
        else:
            raise TranslationError(f"{ppath}.type: {kind!r} content is not supported by "
                                   "Anthropic", param=f"{ppath}.type")
    return blocks


def _anthropic_image(url: str, path: str) -> dict[str, Any]:
    if is_data_url(url):
        image = parse_data_url(url, path=f"{path}.image_url.url")
        if image.media_type not in ANTHROPIC_IMAGE_TYPES:
            raise TranslationError(f"{path}.image_url.url: media type {image.media_type!r} is "
                                   "not supported by Anthropic (jpeg, png, gif, webp)",
                                   param=f"{path}.image_url.url")
        return {"type": "image", "source": {"type": "base64", "media_type": image.media_type,
                                            "data": image.data}}
    if is_http_url(url):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError(f"{path}.image_url.url: only data: and http(s) URLs are supported",
                           param=f"{path}.image_url.url")


def _anthropic_assistant_content(message: dict[str, Any], path: str,
                                 ids: ToolIds) -> list[dict[str, Any]]:
    content = message.get("content")
    text = text_of_blocks(content, f"{path}.content", allow_refusal=True)
    # the turn's signed thinking first, as Anthropic answered it (and needs it back in a
    # tool-use loop); unsigned or malformed entries cannot be replayed and are left out
    thinking = signed_blocks(message.get("thinking_blocks")) if "thinking_blocks" in message \
        else []
    calls: list[dict[str, Any]] = []
    for k, call in enumerate(as_list(message.get("tool_calls") or [], f"{path}.tool_calls")):
        cpath = f"{path}.tool_calls[{k}]"
        call = as_dict(call, cpath)
        function = as_dict(call.get("function"), f"{cpath}.function")
        name, tool_id = function.get("name"), call.get("id")
        if not isinstance(name, str) or not isinstance(tool_id, str):
            raise RequestError(f"{cpath}: needs string id and function.name", param=cpath)
        arguments = function.get("arguments") or "{}"
        try:
            tool_input = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        except orjson.JSONDecodeError:
            tool_input = None
        if not isinstance(tool_input, dict):
            raise TranslationError(f"{cpath}.function.arguments: Anthropic needs a JSON object",
                                   param=f"{cpath}.function.arguments")
        calls.append(_cached({"type": "tool_use", "id": ids.call(tool_id), "name": name,
                              "input": tool_input}, call))
    blocks = _in_order(message.get("anthropic_order"), thinking, content, calls)
    if blocks is None:
        blocks = thinking
        if text.strip():  # whitespace alone is refused (see _anthropic_user_content)
            blocks.append({"type": "text", "text": text})
        blocks.extend(calls)
    cache = turn_cache(message)
    if cache is not None and blocks:
        # a breakpoint on the message marks its (last) text block, or, with no text, its last
        # block (never a thinking block, which takes none)
        texts = [i for i, b in enumerate(blocks) if b["type"] == "text"]
        index = texts[-1] if texts else len(blocks) - 1
        if blocks[index]["type"] not in _THINKING_BLOCKS:
            blocks[index]["cache_control"] = cache
    return blocks


def _in_order(order: Any, thinking: list[dict[str, Any]], content: Any,
              calls: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """An interleaved-thinking turn's blocks in the order Anthropic made them (see
    anthropic_common.in_order), without whitespace-only text, which Anthropic refuses."""
    blocks = in_order(order, thinking, content, calls)
    if blocks is None:
        return None
    return [b for b in blocks if b["type"] != "text" or str(b["text"]).strip()]


def _anthropic_tool(tool: Any, path: str) -> dict[str, Any]:
    tool = as_dict(tool, path)
    if tool.get("type", "function") != "function":
        raise TranslationError(f"{path}.type: {tool.get('type')!r} tools are not supported by "
                               "Anthropic", param=f"{path}.type")
    function = as_dict(tool.get("function"), f"{path}.function")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError(f"{path}.function.name: required string",
                           param=f"{path}.function.name")
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    out: dict[str, Any] = {"name": name, "input_schema": schema}
    if isinstance(function.get("description"), str):
        out["description"] = function["description"]
    return _cached(out, tool)


def _anthropic_tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = as_dict(choice.get("function"), "tool_choice.function").get("name")
        if isinstance(name, str) and name:
            return {"type": "tool", "name": name}
    raise TranslationError(f"tool_choice: {choice!r} is not supported by Anthropic",
                           param="tool_choice")
