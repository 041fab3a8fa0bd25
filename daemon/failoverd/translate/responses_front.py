"""Front end: an OpenAI Responses API request from a client, as a canonical request.

failoverd is a stateless proxy, so it serves what a request carries in itself: ``input``
(a string or items: messages, function calls and their outputs), ``instructions``, function
tools, sampling and output settings. What needs state kept at OpenAI (``previous_response_id``,
``conversation``, ``background``, stored prompts, item references, uploaded files) or a tool
run by OpenAI (web_search, file_search, computer_use, code_interpreter, mcp, ...) is a 400
naming the field: no other provider could honour it, and dropping it would answer a different
question. A reasoning item sent back (the Agents SDK replays every output item) carries its
text to the assistant turn after it, as that message's ``thinking_blocks`` entry
``{"type": "thinking", "thinking": text, "signature": ""}``: unsigned, it never goes to
Anthropic, and the OpenAI-compatible adapter gives it as ``reasoning_content`` only to a model
that asked for its reasoning back (DeepSeek's thinking mode); a reasoning item with no text, or
with no assistant turn after it, is dropped. A reasoning item whose ``encrypted_content`` is
failoverd's own (Anthropic's signed thinking, see responses_response.encrypted_thinking)
carries those signed blocks instead, so Anthropic gets its thinking back first in the turn and
keeps thinking on in a tool loop; one malformed is a 400 naming it, and another format's (real
OpenAI's) is ignored.

Decisions:

* ``instructions`` is a system message first; ``developer`` and ``system`` input messages keep
  their role.
* ``max_output_tokens`` is ``max_tokens`` (the OpenAI-compatible adapter sends it as
  ``max_completion_tokens`` to reasoning models), ``text.format`` is ``response_format``,
  ``text.verbosity`` is ``verbosity``, ``reasoning.effort`` is ``reasoning_effort``
  (``reasoning.summary`` is accepted: a reasoning item carries whatever reasoning the model
  returned).
* A ``function_call`` item joins the assistant message before it (its text), as Chat
  Completions has one assistant message with content and tool_calls; ``call_id`` is the
  tool call's id, and ``function_call_output`` the tool message answering it.
* ``store`` is accepted and nothing is stored (no upstream gets it); ``metadata`` is echoed in
  the response, ``user``, ``safety_identifier`` and ``prompt_cache_key`` go to the canonical
  request (providers without them drop them).
* ``input_file`` parts with inline ``file_data`` are the canonical ``file`` part (served by
  OpenAI-compatible and Gemini upstreams); ``file_id`` and ``file_url`` are refused.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from failoverd.errors import RequestError, TranslationError
from failoverd.translate.anthropic_common import as_dict, as_list, interleaved, streamed
from failoverd.translate.anthropic_response import signed_block
from failoverd.translate.images import image_part
from failoverd.translate.responses_response import THINKING_PREFIX

# every key of the Responses API failoverd serves; the rest are refused by name below
_FRONT_KEYS = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
    "max_output_tokens", "temperature", "top_p", "stream", "stream_options", "text",
    "reasoning", "metadata", "user", "safety_identifier", "prompt_cache_key",
    "prompt_cache_retention", "store", "include", "service_tier", "truncation",
    "previous_response_id", "conversation", "background", "prompt", "max_tool_calls",
    "top_logprobs",
})
# why a stateless proxy cannot serve a field (it is refused when set to anything but "off")
_STATEFUL = {
    "previous_response_id": "failoverd stores no responses: send the whole conversation in "
                            "'input'",
    "conversation": "failoverd stores no conversations: send the whole conversation in "
                    "'input'",
    "background": "failoverd runs no background responses: stream the request instead",
    "prompt": "stored prompt templates live at OpenAI: send the prompt's text in "
              "'instructions' and 'input'",
    "max_tool_calls": "no provider behind failoverd caps tool calls per response",
    "top_logprobs": "log probabilities are not translated by failoverd",
}
# include values accepted: output of built-in tools (refused anyway), and encrypted reasoning,
# which failoverd gives whether asked or not (its reasoning items carry Anthropic's signed
# thinking in encrypted_content; a client that does not ask still sends it back)
_INCLUDABLE = frozenset({
    "reasoning.encrypted_content", "message.input_image.image_url",
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "computer_call_output.output.image_url", "code_interpreter_call.outputs",
})
_ROLES = frozenset({"user", "system", "developer", "assistant"})
_EFFORTS = frozenset({"none", "minimal", "low", "medium", "high", "xhigh"})


def _refuse(what: str, param: str) -> TranslationError:
    return TranslationError(f"{param}: {what}", param=param)


def _string(value: Any, path: str, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise RequestError(f"{path}: required string" if required else
                           f"{path}: must be a string", param=path)
    return value


def _text(part: dict[str, Any], key: str, path: str) -> str:
    text = part.get(key)
    if not isinstance(text, str):
        raise RequestError(f"{path}.{key}: required string", param=f"{path}.{key}")
    return text


def _number(body: dict[str, Any], key: str) -> float | int | None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise RequestError(f"{key}: must be a number", param=key)
    return value


def responses_to_canonical(body: dict[str, Any]) -> dict[str, Any]:
    """Translates a Responses API request body into the canonical request.

    Raises RequestError (``.param`` = field path) for malformed input and TranslationError
    for what a stateless proxy cannot serve. The result carries ``stream`` (and then
    ``stream_options.include_usage``, so the response.completed event can report usage).
    """
    for key, value in body.items():
        # a field set to null is a field not set: newer SDKs send some that way
        if key not in _FRONT_KEYS and value is not None:
            raise TranslationError(f"{key}: not supported by failoverd's translation",
                                   param=key)
        if key in _STATEFUL and value not in (None, False):
            raise _refuse(f"not served: {_STATEFUL[key]}", key)
    model = _string(body.get("model"), "model", required=True)
    messages: list[dict[str, Any]] = []
    instructions = _string(body.get("instructions"), "instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    raw_input = body.get("input")
    if isinstance(raw_input, str):
        messages.append({"role": "user", "content": raw_input})
    elif raw_input is not None:
        thinking: list[dict[str, Any]] = []  # reasoning items waiting for their turn
        for i, item in enumerate(as_list(raw_input, "input")):
            _input_item(item, f"input[{i}]", messages, thinking)
        _interleaved(messages)
    if not any(m["role"] != "system" for m in messages):
        raise RequestError("input: required: a string or a non-empty array of items",
                           param="input")

    out: dict[str, Any] = {"model": model, "messages": messages}
    max_tokens = body.get("max_output_tokens")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise RequestError("max_output_tokens: must be a positive integer",
                               param="max_output_tokens")
        out["max_tokens"] = max_tokens
    for key in ("temperature", "top_p"):
        value = _number(body, key)
        if value is not None:
            out[key] = value
    for key in ("user", "safety_identifier", "prompt_cache_key", "service_tier"):
        value = _string(body.get(key), key)
        if value is not None:
            out[key] = value
    if body.get("metadata") is not None:
        as_dict(body["metadata"], "metadata")  # echoed in the response, not sent upstream
    for key in ("store", "parallel_tool_calls"):
        if body.get(key) is not None and not isinstance(body[key], bool):
            raise RequestError(f"{key}: must be a boolean", param=key)
    _check_include(body.get("include"))
    truncation = body.get("truncation")
    if truncation is not None and truncation not in ("auto", "disabled"):
        raise RequestError("truncation: must be 'auto' or 'disabled'", param="truncation")
    if body.get("stream_options") is not None:
        as_dict(body["stream_options"], "stream_options")  # include_obfuscation: no-op
    tools = body.get("tools")
    if tools is not None:
        converted = [_tool(t, f"tools[{i}]") for i, t in enumerate(as_list(tools, "tools"))]
        if converted:
            out["tools"] = converted
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    if body.get("parallel_tool_calls") is False and out.get("tools"):
        out["parallel_tool_calls"] = False
    if body.get("text") is not None:
        _text_config(as_dict(body["text"], "text"), out)
    if body.get("reasoning") is not None:
        effort = _reasoning(as_dict(body["reasoning"], "reasoning"))
        if effort is not None:
            out["reasoning_effort"] = effort
    streamed(body, out)
    return out


def _check_include(include: Any) -> None:
    if include is None:
        return
    for i, value in enumerate(as_list(include, "include")):
        if not isinstance(value, str):
            raise RequestError(f"include[{i}]: must be a string", param=f"include[{i}]")
        if value not in _INCLUDABLE:
            raise _refuse(f"{value!r} is not served by failoverd", f"include[{i}]")


def _reasoning_text(item: dict[str, Any], path: str) -> str:
    """A reasoning item's text: its summary's, else its content's (reasoning_text parts)."""
    for key in ("summary", "content"):
        value = item.get(key)
        if value is None:
            continue
        texts = [_text(as_dict(p, f"{path}.{key}[{j}]"), "text", f"{path}.{key}[{j}]")
                 for j, p in enumerate(as_list(value, f"{path}.{key}"))]
        if any(texts):
            return "\n\n".join(t for t in texts if t)
    return ""


def _signed_thinking(value: Any, path: str) -> list[dict[str, Any]] | None:
    """The signed thinking blocks in a reasoning item's ``encrypted_content`` when it is
    failoverd's own, else None (absent, or another server's: real OpenAI's is opaque here)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(f"{path}: must be a string", param=path)
    if not value.startswith(THINKING_PREFIX):
        return None
    data = value[len(THINKING_PREFIX):]
    try:
        blocks = orjson.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    except (binascii.Error, ValueError):
        blocks = None
    kept = [signed_block(b) for b in blocks] if isinstance(blocks, list) else []
    if not kept or any(k is None or k != b for k, b in zip(kept, blocks, strict=True)):
        raise RequestError(f"{path}: malformed failoverd reasoning (send back the "
                           "encrypted_content failoverd gave, unchanged)", param=path)
    return [k for k in kept if k is not None]


def _with_thinking(message: dict[str, Any], thinking: list[dict[str, Any]]) -> None:
    """The reasoning items before an assistant turn, on it; consumed."""
    if thinking:
        message.setdefault("thinking_blocks", []).extend(thinking)
        _ordered(message, "t" * sum(1 for b in thinking if signed_block(b) is not None))
        thinking.clear()


def _ordered(message: dict[str, Any], kinds: str) -> None:
    """Notes an assistant turn's blocks in the order its items came ("t" signed thinking,
    "x" text, "u" a call), as anthropic_front's ``anthropic_order``; `_interleaved` keeps it
    only where Anthropic's order differs from thinking first."""
    message["anthropic_order"] = message.get("anthropic_order", "") + kinds


def _interleaved(messages: list[dict[str, Any]]) -> None:
    """A turn whose signed thinking came between its calls (Anthropic's interleaved thinking,
    streamed: a reasoning item before each call) keeps that order, which Anthropic's check of
    replayed thinking may require; other turns need none."""
    for message in messages:
        order = message.pop("anthropic_order", None)
        if not order:
            continue
        if not (isinstance(message.get("content"), str) and message["content"]):
            order = order.replace("x", "")  # the text was empty: no text block
        if interleaved(order):
            message["anthropic_order"] = order


def _input_item(item: Any, path: str, messages: list[dict[str, Any]],
                thinking: list[dict[str, Any]]) -> None:
    item = as_dict(item, path)
    kind = item.get("type", "message")
    if kind == "message":
        message = _message(item, path)
        if message["role"] == "assistant":
            _with_thinking(message, thinking)
            _ordered(message, "x")
        else:
            thinking.clear()  # reasoning with no answer of its own: nothing to carry it
        messages.append(message)
    elif kind == "function_call":
        call_id = _string(item.get("call_id"), f"{path}.call_id", required=True)
        name = _string(item.get("name"), f"{path}.name", required=True)
        arguments = item.get("arguments")
        if not isinstance(arguments, str):
            raise RequestError(f"{path}.arguments: required string (JSON)",
                               param=f"{path}.arguments")
        call = {"id": call_id, "type": "function",
                "function": {"name": name, "arguments": arguments}}
        last = messages[-1] if messages else None
        if last is None or last["role"] != "assistant":
            last = {"role": "assistant", "content": None}
            messages.append(last)
        _with_thinking(last, thinking)  # the reasoning before the call, before it
        last.setdefault("tool_calls", []).append(call)  # the same turn's text and calls
        _ordered(last, "u")
        if last["content"] == "":
            last["content"] = None
    elif kind == "function_call_output":
        thinking.clear()
        call_id = _string(item.get("call_id"), f"{path}.call_id", required=True)
        output = item.get("output")
        content: str | list[dict[str, Any]]
        if isinstance(output, str):
            content = output
        else:
            content = [_part(p, f"{path}.output[{j}]", images=True)
                       for j, p in enumerate(as_list(output, f"{path}.output"))]
            if all(p["type"] == "text" for p in content):
                content = "".join(p["text"] for p in content)
        messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
    elif kind == "reasoning":
        signed = _signed_thinking(item.get("encrypted_content"), f"{path}.encrypted_content")
        if signed is not None:
            thinking.extend(signed)  # Anthropic's own blocks: its summary is their text
            return
        text = _reasoning_text(item, path)
        if text:
            thinking.append({"type": "thinking", "thinking": text, "signature": ""})
    elif kind == "item_reference":
        raise _refuse("item references need items stored at OpenAI: send the item itself",
                      f"{path}.type")
    else:
        raise _refuse(f"{kind!r} items are not served by failoverd (only messages, "
                      "function_call, function_call_output and reasoning)", f"{path}.type")


def _message(item: dict[str, Any], path: str) -> dict[str, Any]:
    role = item.get("role")
    if not isinstance(role, str) or role not in _ROLES:  # a list is unhashable: a TypeError
        raise RequestError(f"{path}.role: must be one of {', '.join(sorted(_ROLES))}",
                           param=f"{path}.role")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    parts = [_part(p, f"{path}.content[{j}]", images=role == "user")
             for j, p in enumerate(as_list(content, f"{path}.content"))]
    if all(p["type"] == "text" for p in parts):
        # plain text (and every assistant turn): one string, which every provider takes
        return {"role": role, "content": "".join(p["text"] for p in parts)}
    return {"role": role, "content": parts}


def _part(part: Any, path: str, *, images: bool) -> dict[str, Any]:
    part = as_dict(part, path)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": _text(part, "text", path)}
    if kind == "refusal":  # an assistant turn's refusal, sent back: its text
        return {"type": "text", "text": _text(part, "refusal", path)}
    if kind == "input_image" and images:
        if part.get("file_id") is not None:
            raise _refuse("uploaded files live at OpenAI: send the image as image_url (a "
                          "data: or https URL)", f"{path}.file_id")
        url = _string(part.get("image_url"), f"{path}.image_url", required=True)
        assert url is not None
        detail = part.get("detail")
        return image_part(url, detail if isinstance(detail, str) and detail != "auto"
                          else None)
    if kind == "input_file" and images:
        for key in ("file_id", "file_url"):
            if part.get(key) is not None:
                raise _refuse("only inline files (file_data) are served: uploaded and "
                              "linked files live where failoverd's other providers cannot "
                              "read them", f"{path}.{key}")
        data = _string(part.get("file_data"), f"{path}.file_data", required=True)
        file: dict[str, Any] = {"file_data": data}
        filename = _string(part.get("filename"), f"{path}.filename")
        if filename:
            file["filename"] = filename
        return {"type": "file", "file": file}
    if kind in ("input_image", "input_file"):
        raise _refuse(f"{kind} parts are served in user messages and function call "
                      "outputs only", f"{path}.type")
    raise _refuse(f"{kind!r} content parts are not served by failoverd", f"{path}.type")


def _tool(tool: Any, path: str) -> dict[str, Any]:
    tool = as_dict(tool, path)
    kind = tool.get("type")
    if kind != "function":
        raise _refuse(f"{kind!r} tools run at OpenAI and have no equivalent at failoverd's "
                      "other providers: only function tools are served", f"{path}.type")
    name = _string(tool.get("name"), f"{path}.name", required=True)
    parameters = tool.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    elif not isinstance(parameters, dict):
        raise RequestError(f"{path}.parameters: must be an object", param=f"{path}.parameters")
    function: dict[str, Any] = {"name": name, "parameters": parameters}
    description = _string(tool.get("description"), f"{path}.description")
    if description is not None:
        function["description"] = description
    strict = tool.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise RequestError(f"{path}.strict: must be a boolean", param=f"{path}.strict")
        function["strict"] = strict
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise RequestError("tool_choice: must be 'auto', 'none', 'required' or an object",
                               param="tool_choice")
        return choice
    choice = as_dict(choice, "tool_choice")
    if choice.get("type") != "function":
        raise _refuse(f"{choice.get('type')!r} is not served by failoverd (only 'auto', "
                      "'none', 'required' and a function)", "tool_choice.type")
    name = _string(choice.get("name"), "tool_choice.name", required=True)
    return {"type": "function", "function": {"name": name}}


def _text_config(text: dict[str, Any], out: dict[str, Any]) -> None:
    verbosity = text.get("verbosity")
    if verbosity is not None:
        if verbosity not in ("low", "medium", "high"):
            raise RequestError("text.verbosity: must be 'low', 'medium' or 'high'",
                               param="text.verbosity")
        out["verbosity"] = verbosity
    if text.get("format") is None:
        return
    fmt = as_dict(text["format"], "text.format")
    kind = fmt.get("type")
    if kind == "text":
        return
    if kind == "json_object":
        out["response_format"] = {"type": "json_object"}
        return
    if kind != "json_schema":
        raise RequestError("text.format.type: must be 'text', 'json_object' or 'json_schema'",
                           param="text.format.type")
    name = _string(fmt.get("name"), "text.format.name", required=True)
    schema = as_dict(fmt.get("schema"), "text.format.schema")
    spec: dict[str, Any] = {"name": name, "schema": schema}
    description = _string(fmt.get("description"), "text.format.description")
    if description is not None:
        spec["description"] = description
    if fmt.get("strict") is not None:
        if not isinstance(fmt["strict"], bool):
            raise RequestError("text.format.strict: must be a boolean",
                               param="text.format.strict")
        spec["strict"] = fmt["strict"]
    out["response_format"] = {"type": "json_schema", "json_schema": spec}


def _reasoning(reasoning: dict[str, Any]) -> str | None:
    effort = reasoning.get("effort")
    if effort is None:
        return None
    if not isinstance(effort, str) or effort not in _EFFORTS:
        raise RequestError(f"reasoning.effort: must be one of {', '.join(sorted(_EFFORTS))}",
                           param="reasoning.effort")
    return str(effort)
