"""Non-streaming answers: a canonical chat.completion as an OpenAI Responses API ``response``.

The response object repeats the settings of the request (tools, tool_choice, instructions,
text, reasoning, metadata, ...) as OpenAI's does; ``model`` is the id of the model that served.
Output items: a ``reasoning`` item (summary text) when the answer has ``reasoning_content``
(or ``reasoning``) or signed ``thinking_blocks`` (Anthropic's, then in the item's
``encrypted_content``, see `encrypted_thinking`), a ``message`` item with one ``output_text``
part (or a ``refusal`` part), then one ``function_call`` item per tool call. A ``length``
finish is ``status: "incomplete"`` with ``incomplete_details.reason: "max_output_tokens"``, a
``content_filter`` one the same with ``content_filter``.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

import orjson

from failoverd.translate.anthropic_common import in_order, reasoning_text
from failoverd.translate.anthropic_response import signed_blocks

# request settings a response repeats, with what OpenAI reports when the request left them out
_ECHOED: dict[str, Any] = {
    "instructions": None, "max_output_tokens": None, "metadata": {},
    "parallel_tool_calls": True, "previous_response_id": None, "prompt_cache_key": None,
    "safety_identifier": None, "service_tier": "auto", "temperature": None,
    "tool_choice": "auto", "tools": [], "top_p": None, "truncation": "disabled", "user": None,
}
# canonical finish_reason -> incomplete_details.reason
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    """An id in OpenAI's style for Responses objects (``resp_``, ``msg_``, ``fc_``, ``rs_``)."""
    return prefix + secrets.token_hex(24)


def response_echo(request: dict[str, Any] | None) -> dict[str, Any]:
    """The request settings every response object (and stream event) of this request repeats."""
    request = request or {}
    echo = {key: request[key] if request.get(key) is not None else default
            for key, default in _ECHOED.items()}
    echo["text"] = {"format": {"type": "text"}, "verbosity": "medium",
                    **_object(request.get("text"))}
    echo["reasoning"] = {"effort": None, "summary": None, **_object(request.get("reasoning"))}
    # failoverd keeps nothing: no response can be retrieved or continued later
    echo["store"] = False
    echo["background"] = False
    return echo


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def response_object(response_id: str, created_at: int, model_id: str, status: str,
                    output: list[dict[str, Any]], usage: dict[str, Any] | None,
                    echo: dict[str, Any], *, finish: str | None = None,
                    error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``response`` object; `finish` (a canonical finish_reason) sets incomplete_details."""
    incomplete = INCOMPLETE.get(finish or "")
    return {
        "id": response_id, "object": "response", "created_at": created_at,
        "status": status,
        "completed_at": int(time.time()) if status in ("completed", "incomplete") else None,
        "error": error,
        "incomplete_details": {"reason": incomplete} if status == "incomplete" else None,
        "model": model_id, "output": output, **echo, "usage": usage}


def responses_usage(usage: Any) -> dict[str, Any] | None:
    """Canonical usage -> Responses usage (input_tokens include cached ones, as OpenAI's)."""
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    details = usage.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    out_details = usage.get("completion_tokens_details")
    reasoning = (int(out_details.get("reasoning_tokens") or 0)
                 if isinstance(out_details, dict) else 0)
    # cache writes (Anthropic's) count in input_tokens, as cached reads do
    written = int(usage.get("cache_creation_input_tokens") or 0)
    return {"input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": int(usage.get("total_tokens") or prompt + completion)}


# failoverd's own encrypted_content: this prefix, then the base64url (unpadded) of the JSON
# list of signed thinking blocks; OpenAI's (Fernet tokens, "gAAAA...") never start with it
THINKING_PREFIX = "failoverd:thinking:v1:"


def encrypted_thinking(blocks: list[dict[str, Any]]) -> str:
    """Signed thinking blocks as a reasoning item's ``encrypted_content``: opaque to the
    client, which sends it back with the item, so Anthropic gets its signed thinking back in
    a tool loop as it would from an Anthropic client (responses_front restores it)."""
    data = base64.urlsafe_b64encode(orjson.dumps(blocks)).rstrip(b"=").decode()
    return THINKING_PREFIX + data


def reasoning_item(item_id: str, text: str,
                   blocks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A reasoning item: its text as the summary, its signed blocks (if any) encrypted."""
    item: dict[str, Any] = {
        "id": item_id, "type": "reasoning",
        "summary": [{"type": "summary_text", "text": text}] if text else []}
    if blocks:
        item["encrypted_content"] = encrypted_thinking(blocks)
    return item


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def refusal_part(text: str) -> dict[str, Any]:
    return {"type": "refusal", "refusal": text}


def message_item(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": parts}


def call_item(item_id: str, call_id: str, name: str, arguments: str,
              status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def _arguments(value: Any) -> str:
    if isinstance(value, str):
        return value or "{}"  # none at all: the empty object OpenAI gives, which parses
    return orjson.dumps(value if value is not None else {}).decode()


def _ordered_item(block: dict[str, Any]) -> dict[str, Any]:
    if block.get("type") == "text":
        return message_item(new_id("msg_"), [text_part(str(block.get("text", "")))],
                            "completed")
    if "function" in block:  # a canonical tool call
        function = _object(block.get("function"))
        call_id = block["id"] if isinstance(block.get("id"), str) else new_id("call_")
        return call_item(new_id("fc_"), call_id, str(function.get("name") or ""),
                         _arguments(function.get("arguments")), "completed")
    return reasoning_item(new_id("rs_"), str(block.get("thinking") or ""), [block])


def canonical_to_responses(completion: dict[str, Any], model_id: str,
                           echo: dict[str, Any]) -> dict[str, Any]:
    """A canonical chat.completion as a Responses API ``response`` object."""
    choices = completion.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    message = choice.get("message") if isinstance(choice, dict) else None
    message = message if isinstance(message, dict) else {}
    finish = choice.get("finish_reason") if isinstance(choice, dict) else None
    status = "incomplete" if finish in INCOMPLETE else "completed"
    reasoning = reasoning_text(message)
    signed = signed_blocks(message.get("thinking_blocks"))
    ordered = in_order(message.get("anthropic_order"), signed, message.get("content"),
                       [c for c in message.get("tool_calls") or () if isinstance(c, dict)]) \
        if signed and not message.get("refusal") else None
    if ordered is not None:
        # Anthropic's interleaved thinking: an item per block, in the order Anthropic made
        # them, as the stream gives them (responses_front restores the order when sent back)
        output = [_ordered_item(block) for block in ordered]
    else:
        output = _output(message, reasoning, signed)
    if status == "incomplete" and output and "status" in output[-1]:
        output[-1]["status"] = "incomplete"  # the cut fell in the last item, being written
    created = completion.get("created")
    return response_object(new_id("resp_"),
                           created if isinstance(created, int) else int(time.time()),
                           model_id, status, output, responses_usage(completion.get("usage")),
                           echo, finish=finish)


def _output(message: dict[str, Any], reasoning: str,
            signed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    output: list[dict[str, Any]] = []
    if reasoning or signed:
        output.append(reasoning_item(new_id("rs_"), reasoning, signed))
    content, refusal = message.get("content"), message.get("refusal")
    if isinstance(content, list):  # a few compatible servers answer with parts
        content = "".join(p.get("text", "") for p in content
                          if isinstance(p, dict) and isinstance(p.get("text"), str))
    calls = [c for c in message.get("tool_calls") or () if isinstance(c, dict)]
    parts: list[dict[str, Any]] = []
    if isinstance(content, str) and content or not calls and not refusal:
        parts.append(text_part(content if isinstance(content, str) else ""))
    if isinstance(refusal, str) and refusal:
        parts.append(refusal_part(refusal))
    if parts:
        output.append(message_item(new_id("msg_"), parts, "completed"))
    for call in calls:
        function = _object(call.get("function"))
        call_id = call["id"] if isinstance(call.get("id"), str) else new_id("call_")
        output.append(call_item(new_id("fc_"), call_id, str(function.get("name") or ""),
                                _arguments(function.get("arguments")), "completed"))
    return output
