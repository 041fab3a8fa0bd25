"""Translation between the canonical form (OpenAI Chat Completions dicts) and Amazon Bedrock's
Converse API (``/model/{modelId}/converse`` and ``/converse-stream``).

`to_request` builds a Converse request and `to_completion` turns a Converse response into a
`chat.completion`; translate/bedrock_stream.py turns the streamed Converse events (decoded from
the event stream framing by the adapter) into `chat.completion.chunk` dicts.

Where the two APIs differ, these are the decisions:

- system / developer messages, wherever they stand, become `system` text blocks, one per
  text part (Converse has no mid-conversation system turn).
- Converse wants alternating user and assistant turns that begin with a user turn:
  consecutive messages of one role share a turn (tool results first in theirs, as the
  Anthropic models behind it need), and a conversation whose first turn is the assistant's
  is a TranslationError. Empty and whitespace-only text is left out (Converse refuses a
  blank text block); a tool result with no content says "(empty)" (its content is required).
- Images: data URLs become `image {format, source: {bytes}}` for png, jpeg, gif and webp;
  Converse fetches no http(s) URLs (only S3 locations), so those are a TranslationError, as
  for Ollama. Images in tool results go into the `toolResult` content. Files (a `file` part
  with a data: URL, as the Responses front end makes them of input_file parts) become
  `document {format, name, source: {bytes}}` for pdf, csv, doc(x), xls(x), html, txt and md,
  named after the file name cut to the characters Converse allows (unique in the request).
- Tool calls become `toolUse {toolUseId, name, input}` (arguments must be a JSON object);
  tool results `toolResult {toolUseId, content}`, as `[{json}]` when the result is a JSON
  object, else `[{text}]`. Tool-call ids Converse would refuse (other providers' `call_0`
  repeated in every answer, Kimi's `functions.f:0`) are rewritten, their results follow them.
- tool_choice: required (`any`) and a named function (`tool`); auto is Converse's default and
  not sent (only some models take a toolChoice: the others refuse even auto); "none" sends no
  tools.
  Converse refuses tool blocks in a conversation without a `toolConfig`, so a history with
  tool calls and no tools to declare gets stub declarations of the tools it used; with
  "none" that would let the model call them, so that is a TranslationError.
- inferenceConfig: maxTokens (max_completion_tokens, else max_tokens, capped at the model's
  max_output_tokens, which is also sent when the request sets none), temperature (at most 1,
  as the models behind Converse take it, like the Anthropic adapter), topP (not with a
  temperature towards Claude from Opus 4.1 and Sonnet / Haiku 4.5 on, which take only one,
  as the Anthropic adapter sends them), stopSequences.
- A conversation ending in an assistant turn (a prefill) has its trailing whitespace cut, as
  towards Anthropic: Claude refuses a final assistant text that ends in whitespace.
- Prompt-caching breakpoints (cache_control) become cachePoint blocks towards the models
  with prompt caching, and are dropped towards the others (translate/bedrock_cache.py).
- reasoning_effort is Claude's extended thinking towards the Claude models that have it
  (additionalModelRequestFields.thinking, with a budget as towards Anthropic), and their
  signed thinking in the history goes back as reasoningContent blocks
  (translate/bedrock_reasoning.py); towards other models both are dropped.
- Dropped, as hints that do not change the answer's shape: user, store, metadata, seed,
  service_tier, parallel_tool_calls, prediction, prompt_cache_key, safety_identifier,
  verbosity and top_k.
  TranslationError (the candidate is incapable): n > 1, response_format json_object or
  json_schema, logit_bias, logprobs, non-zero presence/frequency penalties, audio output,
  legacy functions, web_search_options.
- Answers: text and toolUse blocks become content and tool_calls, `reasoningContent` text
  becomes `reasoning_content`, and signed or redacted, `thinking_blocks` too; stopReason
  end_turn and stop_sequence are `stop`, max_tokens and model_context_window_exceeded
  `length`, tool_use `tool_calls`, guardrail_intervened and content_filtered
  `content_filter`. Usage counts cache reads and writes as prompt tokens
  (`prompt_tokens_details.cached_tokens`, `cache_creation_input_tokens`), as for Anthropic.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import orjson

from failoverd.errors import RequestError, TranslationError
from failoverd.translate import bedrock_reasoning as reasoning
from failoverd.translate.anthropic_common import in_order, turn_cache
from failoverd.translate.anthropic_response import canonical_usage
from failoverd.translate.bedrock_cache import (
    MARK,
    claude_version,
    mark,
    mark_last,
    place,
    unmark,
)
from failoverd.translate.images import image_part_url, is_data_url, is_http_url, parse_data_url
from failoverd.translate.toolids import ToolIds
from failoverd.translate.tools import function_tools

logger = logging.getLogger(__name__)

IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
                 "image/gif": "gif", "image/webp": "webp"}
DOCUMENT_FORMATS = {
    "application/pdf": "pdf", "text/csv": "csv", "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "text/html": "html", "text/plain": "txt", "text/markdown": "md"}
# what a document's name may hold: letters, digits, single spaces, hyphens, (), []
_NAME_CHAR = re.compile(r"[^A-Za-z0-9\s\-()\[\]]+")
EMPTY_RESULT = "(empty)"

_IGNORED_KEYS = frozenset({
    "model", "messages", "stream", "stream_options", "user", "store", "metadata", "seed",
    "service_tier", "parallel_tool_calls", "prediction", "prompt_cache_key",
    "safety_identifier", "verbosity", "cache_control", "reasoning_effort", "top_k",
})
_HANDLED_KEYS = _IGNORED_KEYS | {
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "tools",
    "tool_choice", "n", "response_format", "logit_bias", "logprobs", "top_logprobs",
    "presence_penalty", "frequency_penalty", "audio", "modalities", "functions",
    "function_call", "web_search_options",
}
_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                 "model_context_window_exceeded": "length", "tool_use": "tool_calls",
                 "guardrail_intervened": "content_filter", "content_filtered": "content_filter"}


def _fail(what: str, param: str) -> TranslationError:
    return TranslationError(f"{param}: {what} cannot be expressed for Bedrock's Converse API",
                            param=param)


def _bad(message: str, param: str) -> RequestError:
    return RequestError(f"{param}: {message}", param=param)


# ---------------------------------------------------------------- messages


def _text_of(content: Any, where: str, *, allow_refusal: bool = False) -> list[str]:
    """The texts of a content that may only hold text (system, assistant)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise _bad("content must be a string or a list of parts", where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and allow_refusal:
            texts.append(str(part.get("refusal") or ""))
        else:
            raise _fail(f"a {kind!r} part in this role (text only)", f"{where}[{j}]")
    return texts


def _image(url: str, where: str) -> dict[str, Any]:
    if is_data_url(url):
        image = parse_data_url(url, path=where)
        fmt = IMAGE_FORMATS.get(image.media_type)
        if fmt is None:
            raise _fail(f"an image of type {image.media_type!r} (png, jpeg, gif, webp)", where)
        return {"image": {"format": fmt, "source": {"bytes": image.data}}}
    if is_http_url(url):
        raise _fail("an http(s) image URL (Converse takes image bytes; send a data: URL)",
                    where)
    raise _fail("an image URL that is neither data: nor http(s)", where)


def _document(part: dict[str, Any], where: str, names: set[str]) -> dict[str, Any]:
    file = part.get("file")
    data = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data, str) or not is_data_url(data):
        raise _fail("a file that is not inline data (a data: URL in file.file_data)", where)
    document = parse_data_url(data, path=f"{where}.file.file_data")
    fmt = DOCUMENT_FORMATS.get(document.media_type)
    if fmt is None:
        raise _fail(f"a file of type {document.media_type!r} (pdf, csv, doc, docx, xls, "
                    "xlsx, html, txt, md)", where)
    stem = str((file or {}).get("filename") or "document").rsplit(".", 1)[0]
    base = " ".join(_NAME_CHAR.sub("-", stem).split())[:180] or "document"
    name, n = base, 1
    while name in names:
        n += 1
        name = f"{base} ({n})"
    names.add(name)
    return {"document": {"format": fmt, "name": name, "source": {"bytes": document.data}}}


def _user_blocks(content: Any, where: str, names: set[str] | None = None
                 ) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return [{"text": content}] if content and content.strip() else []
    if not isinstance(content, list):
        raise _bad("content must be a string or a list of parts", where)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad("text must be a string", f"{at}.text")
            if text.strip():
                blocks.append(mark({"text": text}, part))
        elif kind == "image_url":
            blocks.append(mark(_image(image_part_url(part, path=at), f"{at}.image_url.url"),
                               part))
        elif kind == "file" and names is not None:
            blocks.append(mark(_document(part, at, names), part))
        else:
            raise _fail(f"a content part of type {kind!r}", at)
    return blocks


def _assistant_blocks(message: dict[str, Any], where: str, ids: ToolIds,
                      used: dict[str, None], replay: bool) -> list[dict[str, Any]]:
    texts = _text_of(message.get("content"), f"{where}.content", allow_refusal=True)
    text = "".join(texts)
    calls: list[dict[str, Any]] = []
    for j, call in enumerate(message.get("tool_calls") or ()):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or call.get("type", "function") != "function":
            raise _fail("a tool call that is not a function call", at)
        name, call_id = fn.get("name"), call.get("id")
        if not isinstance(name, str) or not name or not isinstance(call_id, str):
            raise _bad("needs a string id and function.name", at)
        arguments = fn.get("arguments") or "{}"
        try:
            args = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        except orjson.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            raise _fail("arguments that are not a JSON object", f"{at}.function.arguments")
        calls.append(mark({"toolUse": {"toolUseId": ids.call(call_id), "name": name,
                                       "input": args}}, call))
        used[name] = None
    thinking = reasoning.replayed(message) if replay else []
    # an interleaved-thinking turn in its own block order, else its thinking first
    blocks = in_order(message.get("anthropic_order"), thinking, message.get("content"), calls)
    if blocks is not None:
        blocks = [{"text": b["text"]} if b.get("type") == "text" else b for b in blocks
                  if b.get("type") != "text" or b["text"].strip()]
    else:
        blocks = [*thinking, *([{"text": text}] if text.strip() else []), *calls]
    cache = turn_cache(message)
    marked = ([i for i, b in enumerate(blocks) if "text" in b] or [len(blocks) - 1])[-1]
    if cache is not None and blocks and "reasoningContent" not in blocks[marked]:
        # the message's breakpoint marks its (last) text block, or, with no text, its last
        # block (never its thinking, which takes none)
        blocks[marked].setdefault(MARK, cache)
    return blocks


def _tool_result(message: dict[str, Any], where: str, ids: ToolIds) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad("required string", f"{where}.tool_call_id")
    content = message.get("content")
    result: list[dict[str, Any]]
    cache = message.get("cache_control")
    if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_url"
                                         for p in content):
        result = _user_blocks(content, f"{where}.content")
        cache = unmark(result) or cache  # a toolResult's content takes no cachePoint
    else:
        text = "".join(_text_of(content, f"{where}.content"))
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = None
        result = [{"json": value}] if isinstance(value, dict) else [{"text": text}]
    if all("text" in b and not b["text"].strip() for b in result):
        result = [{"text": EMPTY_RESULT}]
    return mark({"toolResult": {"toolUseId": ids.result(call_id), "content": result}},
                {"cache_control": cache})


def _system_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """A system message's text blocks, one per text part, with their breakpoints."""
    content = message.get("content")
    texts = _text_of(content, where)  # validates: text parts only
    parts = content if isinstance(content, list) else [{}] * len(texts)
    return mark_last([mark({"text": text}, part) for text, part in zip(texts, parts, strict=True)
                      if text.strip()], message)


def _append(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def _messages(messages: Any, replay: bool) -> tuple[list[dict[str, Any]],
                                                    list[dict[str, Any]], dict[str, None]]:
    """(system blocks, turns, names of the tools the history calls); `replay`: the signed
    thinking of assistant turns goes too."""
    if not isinstance(messages, list) or not messages:
        raise _bad("must be a non-empty list", "messages")
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    used: dict[str, None] = {}
    ids = ToolIds(64)
    names: set[str] = set()  # of the documents
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad("must be an object", where)
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_system_blocks(message, f"{where}.content"))
        elif role == "user":
            _append(turns, "user", mark_last(_user_blocks(message.get("content"),
                                                          f"{where}.content", names), message))
        elif role == "assistant":
            _append(turns, "assistant", _assistant_blocks(message, where, ids, used, replay))
        elif role == "tool":
            _append(turns, "user", [_tool_result(message, where, ids)])
        else:
            raise _fail(f"role {role!r}", f"{where}.role")
    for turn in turns:  # tool results lead their user turn
        turn["content"].sort(key=lambda b: "toolResult" not in b)
    if turns and turns[-1]["role"] == "assistant" and "text" in turns[-1]["content"][-1]:
        # a prefill must not end in whitespace (Claude's 400, passed on by Converse)
        last = turns[-1]["content"]
        last[-1]["text"] = last[-1]["text"].rstrip()
        if not last[-1]["text"]:
            last.pop()
            if not last:
                turns.pop()
    if turns and turns[0]["role"] != "user":
        raise _fail("a conversation that begins with an assistant turn (Converse needs a "
                    "user turn first)", "messages")
    if not turns:
        if not system:
            raise _bad("holds no text to send", "messages")
        # only system text: Converse needs a user turn, so it is the user's
        turns, system = [{"role": "user", "content": system}], []
    return system, turns, used


# ---------------------------------------------------------------- request


def _tools(tools: Any) -> list[dict[str, Any]]:
    specs = []
    for i, fn in function_tools(tools, _fail):
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise _bad("required string", f"tools[{i}].function.name")
        spec: dict[str, Any] = {"name": name, "inputSchema": {
            "json": fn.get("parameters") or {"type": "object", "properties": {}}}}
        if isinstance(fn.get("description"), str) and fn["description"]:
            spec["description"] = fn["description"]
        specs.append(mark({"toolSpec": spec}, tools[i]))
    return specs


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None or choice == "auto":
        # Converse's default, and not sent: only some models take a toolChoice at all (Claude,
        # Mistral Large, Nova), the others refuse even {"auto": {}}
        return None
    if choice == "required":
        return {"any": {}}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str) and name:
            return {"tool": {"name": name}}
    raise _fail(f"tool_choice {choice!r}", "tool_choice")


def _stub(name: str) -> dict[str, Any]:
    return {"toolSpec": {"name": name, "description": "(a tool of earlier turns)",
                         "inputSchema": {"json": {"type": "object", "properties": {}}}}}


def _tool_config(body: dict[str, Any], used: dict[str, None]) -> dict[str, Any] | None:
    choice = body.get("tool_choice")
    tools = _tools(body.get("tools")) if choice != "none" else []
    if not tools:
        if not used:
            return None
        if choice == "none":
            raise _fail("tool_choice \"none\" with tool calls in the conversation (Converse "
                        "needs the tools declared, and then cannot forbid calling them)",
                        "tool_choice")
        return {"tools": [_stub(name) for name in used]}
    declared = {t["toolSpec"]["name"] for t in tools}
    tools.extend(_stub(name) for name in used if name not in declared)
    config: dict[str, Any] = {"tools": tools}
    tool_choice = _tool_choice(choice)
    if tool_choice is not None:
        config["toolChoice"] = tool_choice
    return config


def _one_sampler(model: str) -> bool:
    """Whether the model takes temperature or top_p, not both: Claude from Opus 4.1 and
    Sonnet / Haiku 4.5 on ("`temperature` and `top_p` cannot both be specified for this
    model", a 400)."""
    version = claude_version(model)
    return version is not None and version >= (4, 1)


def _inference_config(body: dict[str, Any], max_output_tokens: int | None,
                      model: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise _bad("must be a positive integer", "max_tokens")
        cfg["maxTokens"] = min(max_tokens, max_output_tokens or max_tokens)
    elif max_output_tokens:
        cfg["maxTokens"] = max_output_tokens
    if body.get("temperature") is not None:
        # OpenAI's range is 0-2, the models behind Converse take 0-1 (a 400 above it)
        cfg["temperature"] = min(float(body["temperature"]), 1.0)
    if body.get("top_p") is not None and not ("temperature" in cfg and _one_sampler(model)):
        cfg["topP"] = body["top_p"]  # with the temperature, as the Anthropic adapter does
    stop = body.get("stop")
    if stop:
        cfg["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    return cfg


def _refuse_unexpressible(body: dict[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise _fail("n > 1 (one answer per request)", "n")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise _fail(f"response_format {kind!r}", "response_format")
    if body.get("logit_bias"):
        raise _fail("logit_bias", "logit_bias")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _fail("logprobs", "logprobs")
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise _fail(key, key)
    if body.get("audio") or (body.get("modalities") or ["text"]) != ["text"]:
        raise _fail("non-text output modalities", "modalities")
    for key in ("functions", "function_call", "web_search_options"):
        if body.get(key):
            raise _fail(key + (" (use tools)" if key.startswith("function") else ""), key)


def to_request(body: dict[str, Any], *, max_output_tokens: int | None = None,
               model: str = "", cache_points: bool = True) -> dict[str, Any]:
    """A canonical request as a Converse request (the model, its id or inference profile,
    goes in the URL; `model` decides what its knobs may be; without `cache_points` its
    breakpoints are dropped, as towards a model without prompt caching).

    Raises TranslationError (with `.param` naming the field) for what Converse cannot express.
    """
    _refuse_unexpressible(body)
    thinks = reasoning.thinks(model)
    system, turns, used = _messages(body.get("messages"), thinks)
    request: dict[str, Any] = {"messages": turns}
    if system:
        request["system"] = system
    inference = _inference_config(body, max_output_tokens, model)
    tool_config = _tool_config(body, used)
    if tool_config is not None:
        request["toolConfig"] = tool_config
    if thinks and body.get("reasoning_effort") not in (None, "none"):
        forced = "toolChoice" in (tool_config or {})  # only any and tool are sent
        thinking = reasoning.thinking(body["reasoning_effort"],
                                      reasoning.max_tokens_for(inference), turns, forced)
        if thinking is not None:
            request["additionalModelRequestFields"] = {"thinking": thinking}
            # Claude takes no sampling knobs while it thinks
            inference.pop("temperature", None)
            inference.pop("topP", None)
    if inference:
        request["inferenceConfig"] = inference
    place(request, model, body.get("cache_control"), points=cache_points)
    unknown = sorted(set(body) - _HANDLED_KEYS)
    if unknown:
        logger.debug("bedrock: ignoring request keys without an equivalent: %s", unknown)
    return request


# ---------------------------------------------------------------- responses


def finish_reason(stop_reason: Any, called_tools: bool) -> str:
    """A Converse stopReason in OpenAI's terms (the odd ones, malformed_model_output and the
    like, end the answer as `stop`)."""
    reason = _STOP_REASONS.get(str(stop_reason or ""), "stop")
    return "tool_calls" if reason == "stop" and called_tools else reason


def usage(raw: Any) -> dict[str, Any]:
    """Converse usage as canonical usage (cache reads and writes count as prompt tokens)."""
    raw = raw if isinstance(raw, dict) else {}
    return canonical_usage({"input_tokens": raw.get("inputTokens"),
                            "output_tokens": raw.get("outputTokens"),
                            "cache_read_input_tokens": raw.get("cacheReadInputTokens"),
                            "cache_creation_input_tokens": raw.get("cacheWriteInputTokens")})


def tool_call(use: dict[str, Any]) -> dict[str, Any]:
    """A Converse toolUse as a canonical tool call."""
    return {"id": str(use.get("toolUseId") or f"call_{uuid.uuid4().hex[:24]}"),
            "type": "function",
            "function": {"name": str(use.get("name") or ""),
                         "arguments": orjson.dumps(use.get("input") or {}).decode()}}


def to_completion(response: dict[str, Any], model_name: str,
                  created: int | None = None) -> dict[str, Any]:
    """A Converse response as a canonical `chat.completion`."""
    output = response.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    blocks = message.get("content") if isinstance(message, dict) else None
    blocks = blocks if isinstance(blocks, list) else []
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            calls.append(tool_call(block["toolUse"]))
    text = "".join(texts)
    out: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    out.update(reasoning.read(blocks))  # reasoning_content, signed thinking_blocks
    if calls:
        out["tool_calls"] = calls
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": created if created is not None else int(time.time()),
            "model": model_name,
            "choices": [{"index": 0, "message": out, "logprobs": None,
                         "finish_reason": finish_reason(response.get("stopReason"),
                                                        bool(calls))}],
            "usage": usage(response.get("usage"))}
