"""Translation between the canonical form (OpenAI Chat Completions dicts) and Gemini's
generateContent API (generativelanguage v1beta).

`to_request` turns a canonical request into a GenerateContentRequest, `to_completion` a
GenerateContentResponse into a `chat.completion`, and `StreamTranslator` the streamed
GenerateContentResponses into `chat.completion.chunk` dicts.

Where the two APIs differ, these are the decisions:

- system / developer messages, wherever they stand, become `systemInstruction` (Gemini has
  no mid-conversation system turn); a request with nothing else sends them as the user turn.
- Images: data URLs become `inlineData`; http(s) URLs become `fileData {mimeType, fileUri}`
  (Gemini fetches public URLs itself). `fileData` needs a mime type, guessed from the URL's
  extension: a URL without a recognisable image extension is a TranslationError rather than
  a guess Gemini may reject or misread.
- Tool results need the function name: it is recovered from the earlier assistant tool call
  with the same id (the latest one wins, since generated ids repeat across turns).
- Tool results become `functionResponse.response`: a JSON-object result is passed as is,
  anything else as `{"result": <value or text>}` (Gemini wants an object).
- JSON schemas (tool parameters, response_format json_schema) are cut down to the OpenAPI
  subset Gemini accepts: see `gemini_schema`.
- A conversation that ends in an assistant message (an Anthropic client's prefill) is a
  TranslationError: Gemini refuses a request whose last turn is the model's, and cannot
  continue a text as Anthropic and Ollama do.
- Gemini has no tool-call ids: answers get `call_<n>` (n counts from 0 within one answer).
- Thought signatures: a function call's `thoughtSignature` goes on the canonical tool call as
  `extra_content: {"google": {"thought_signature": ...}}`, where Google's own
  OpenAI-compatible endpoint puts it, so OpenAI clients keep it and send it back; a replayed
  call gets its own signature back. Gemini 3 rejects a current-turn function call step
  without one, so the first call of a step that has none (another provider served it, or
  the client dropped it) carries the documented placeholder, which Gemini accepts but which
  loses the model's reasoning state.
- reasoning_effort maps to a thinking budget as Google's own OpenAI-compatible endpoint does.
- Sampling knobs Gemini lacks but that only steer (user, store, metadata, service_tier,
  parallel_tool_calls, prediction) are dropped; ones that change the answer's shape
  (logit_bias, logprobs, audio output, legacy functions) are a TranslationError.
"""

from __future__ import annotations

import logging
import mimetypes
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

from failoverd.errors import RequestError, TranslationError
from failoverd.translate.images import image_part_url, is_data_url, is_http_url, parse_data_url
from failoverd.translate.tools import function_tools, stream_delta

logger = logging.getLogger(__name__)

# Gemini's documented placeholder for function calls whose real signature is unknown.
DUMMY_THOUGHT_SIGNATURE = "skip_thought_signature_validator"

_IGNORED_KEYS = frozenset({
    "model", "messages", "stream", "stream_options", "user", "store", "metadata",
    "service_tier", "parallel_tool_calls", "prediction", "prompt_cache_key",
    "safety_identifier", "verbosity", "cache_control",
})
_THINKING_BUDGET = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}
_FILTER_FINISH = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                            "IMAGE_SAFETY", "LANGUAGE"})

# The OpenAPI-subset keys of Gemini's Schema that carry over unchanged.
_SCHEMA_KEYS = ("title", "description", "nullable", "minItems", "maxItems", "minProperties",
                "maxProperties", "minLength", "maxLength", "pattern", "example", "default",
                "minimum", "maximum", "propertyOrdering")
_FORMATS = {"string": {"enum", "date-time"}, "integer": {"int32", "int64"},
            "number": {"float", "double"}}
_MAX_REF_DEPTH = 16


def _fail(what: str, param: str) -> TranslationError:
    return TranslationError(f"{param}: {what} cannot be expressed for Gemini", param=param)


def _bad(message: str, param: str) -> RequestError:
    return RequestError(f"{param}: {message}", param=param)


# ---------------------------------------------------------------- JSON schema


def gemini_schema(schema: Any, where: str) -> dict[str, Any]:
    """A JSON schema cut down to what Gemini's `Schema` accepts.

    Local `$ref`s into `$defs`/`definitions` are inlined (recursive ones are an error);
    a type list with "null" becomes `nullable`; `const` becomes a one-value `enum`; `oneOf`
    becomes `anyOf`; a one-element `allOf` is merged. Dropped because Gemini rejects them:
    `$schema`, `$id`, `$defs`, `additionalProperties`, `patternProperties`, `exclusiveMinimum`,
    `exclusiveMaximum`, `multipleOf`, `examples`, `uniqueItems`, `not`, `if`/`then`/`else`,
    `strict`, formats other than Gemini's few, non-string enums and empty `properties`.
    """
    if not isinstance(schema, dict):
        raise _bad("a JSON schema must be an object", where)
    defs = {**_object(schema.get("definitions")), **_object(schema.get("$defs"))}
    return _schema(schema, defs, where, 0)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _schema(node: Any, defs: dict[str, Any], where: str, depth: int) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise _bad("a JSON schema must be an object", where)
    if "$ref" in node:
        ref = str(node["$ref"])
        target = defs.get(ref.rsplit("/", 1)[-1]) if ref.startswith("#/") else None
        if not isinstance(target, dict):
            raise _fail(f"$ref {ref!r} (not a local definition)", where)
        if depth >= _MAX_REF_DEPTH:
            raise _fail(f"recursive $ref {ref!r}", where)
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _schema(merged, defs, where, depth + 1)
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1:
        merged = {**_object(all_of[0]), **{k: v for k, v in node.items() if k != "allOf"}}
        return _schema(merged, defs, where, depth + 1)
    if all_of:
        raise _fail("allOf with more than one schema", f"{where}.allOf")

    out: dict[str, Any] = {}
    type_ = node.get("type")
    if isinstance(type_, list):
        kinds = [t for t in type_ if t != "null"]
        if len(kinds) != 1:
            raise _fail(f"type list {type_!r} (one type, optionally with null)", f"{where}.type")
        if len(kinds) < len(type_):
            out["nullable"] = True
        type_ = kinds[0]
    if type_ == "null":
        raise _fail("a schema of type null", f"{where}.type")
    if type_ is not None:
        out["type"] = type_
    for key in _SCHEMA_KEYS:
        if key in node:
            out[key] = node[key]
    fmt = node.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS.get(str(type_), ()):
        out["format"] = fmt
    enum = node.get("enum", [node["const"]] if "const" in node else None)
    if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
        out["enum"] = enum
    props = node.get("properties")
    if isinstance(props, dict) and props:
        out["properties"] = {name: _schema(sub, defs, f"{where}.properties.{name}", depth)
                             for name, sub in props.items()}
        listed = node.get("required")
        required = [r for r in listed if isinstance(r, str) and r in props] \
            if isinstance(listed, list) else None
        if required:
            out["required"] = required
    items = node.get("items")
    if isinstance(items, dict):
        out["items"] = _schema(items, defs, f"{where}.items", depth)
    elif items is not None and items is not True:
        raise _fail("tuple-style items", f"{where}.items")
    variants = node.get("anyOf", node.get("oneOf"))
    if isinstance(variants, list):
        key = "anyOf" if "anyOf" in node else "oneOf"
        subs = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
        if len(subs) < len(variants):
            out["nullable"] = True
        converted = [_schema(v, defs, f"{where}.{key}[{i}]", depth) for i, v in enumerate(subs)]
        if len(converted) == 1:
            out = {**converted[0], **out}
        elif converted:
            out["anyOf"] = converted
    return out


# ---------------------------------------------------------------- messages


def _text_of(content: Any, where: str, *, allow_refusal: bool = False) -> str:
    """The text of a content that may only hold text (system, assistant, tool)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad("content must be a string or a list of parts", where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text") or ""))
        elif kind == "refusal" and allow_refusal:
            texts.append(str(part.get("refusal") or ""))
        else:
            raise _fail(f"a {kind!r} part in this role (text only)", f"{where}[{j}]")
    return "".join(texts)


def _system_parts(content: Any, where: str) -> list[dict[str, Any]]:
    """A system message as systemInstruction parts, one per text part: joined, separate
    blocks (an Anthropic client's system list) would run together."""
    text = _text_of(content, where)  # validates: text parts only
    texts = [str(p.get("text") or "") for p in content] if isinstance(content, list) else [text]
    return [{"text": t} for t in texts if t]


def _image_part(url: str, where: str) -> dict[str, Any]:
    if is_data_url(url):
        image = parse_data_url(url, path=where)
        return {"inlineData": {"mimeType": image.media_type, "data": image.data}}
    if is_http_url(url):
        mime, _ = mimetypes.guess_type(urlsplit(url).path)
        if mime is None or not mime.startswith("image/"):
            raise _fail("an image URL without a recognisable image extension (Gemini needs "
                        "the mime type; send a data: URL)", where)
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise _fail("an image URL that is neither data: nor http(s)", where)


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str) or content is None:
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise _bad("content must be a string or a list of parts", where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            parts.append(_image_part(image_part_url(part, path=at), f"{at}.image_url.url"))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format', 'wav')}",
                                         "data": audio.get("data", "")}})
        elif kind == "file" and isinstance(part.get("file"), dict) \
                and str(part["file"].get("file_data", "")).startswith("data:"):
            image = parse_data_url(part["file"]["file_data"], path=f"{at}.file.file_data")
            parts.append({"inlineData": {"mimeType": image.media_type, "data": image.data}})
        else:
            raise _fail(f"a content part of type {kind!r}", at)
    return parts


def thought_signature(call: Any) -> str | None:
    """The Gemini thought signature a canonical tool call carries, if any
    (`extra_content.google.thought_signature`, as Google's OpenAI-compatible endpoint has it)."""
    extra = call.get("extra_content") if isinstance(call, dict) else None
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def _signed(call: dict[str, Any], signature: Any) -> dict[str, Any]:
    if isinstance(signature, str) and signature:
        call["extra_content"] = {"google": {"thought_signature": signature}}
    return call


def _assistant_parts(message: dict[str, Any], where: str, tool_names: dict[str, str],
                     signatures: bool) -> list[dict[str, Any]]:
    text = _text_of(message.get("content"), f"{where}.content", allow_refusal=True)
    parts: list[dict[str, Any]] = [{"text": text}] if text else []
    for j, call in enumerate(message.get("tool_calls") or ()):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or call.get("type", "function") != "function":
            raise _fail("a tool call that is not a function call", at)
        name = str(fn.get("name") or "")
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            raise _fail("arguments that are not a JSON object",
                        f"{at}.function.arguments")
        part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
        signature = thought_signature(call) if signatures else None
        if signature is not None:
            part["thoughtSignature"] = signature
        elif j == 0:
            # only a step's first call needs one (Gemini signs only the first of parallel
            # calls); later calls without their own go without
            part["thoughtSignature"] = DUMMY_THOUGHT_SIGNATURE
        parts.append(part)
        if call.get("id"):
            tool_names[str(call["id"])] = name
    return parts


def _tool_response(content: Any, where: str) -> dict[str, Any]:
    text = _text_of(content, where)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    # Gemini wants alternating turns: consecutive same-role messages (several tool results,
    # a tool result followed by a user note) share one turn.
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _contents(messages: Any, signatures: bool
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if not isinstance(messages, list) or not messages:
        raise _bad("must be a non-empty list", "messages")
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    tool_names: dict[str, str] = {}
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system.extend(_system_parts(message.get("content"), f"{where}.content"))
        elif role == "user":
            _append(contents, "user", _user_parts(message.get("content"), f"{where}.content"))
        elif role == "assistant":
            _append(contents, "model",
                    _assistant_parts(message, where, tool_names, signatures))
        elif role == "tool":
            call_id = str(message.get("tool_call_id") or "")
            name = tool_names.get(call_id)
            if name is None:
                raise _fail(f"a tool result whose id {call_id!r} matches no earlier assistant "
                            "tool call (Gemini needs the function name)", f"{where}.tool_call_id")
            response = _tool_response(message.get("content"), f"{where}.content")
            _append(contents, "user", [{"functionResponse": {"name": name,
                                                             "response": response}}])
        else:
            raise _fail(f"role {role!r}", f"{where}.role")
    if not contents and system:
        contents, system = [{"role": "user", "parts": system}], []
    return contents, system


# ---------------------------------------------------------------- request


def _tools(tools: Any) -> list[dict[str, Any]]:
    declarations = []
    for i, fn in function_tools(tools, _fail):
        decl: dict[str, Any] = {"name": fn.get("name")}
        if fn.get("description"):
            decl["description"] = fn["description"]
        params = fn.get("parameters")
        if params:
            schema = gemini_schema(params, f"tools[{i}].function.parameters")
            # Gemini rejects an object schema without properties: a no-argument function
            # is declared without parameters
            if schema.get("properties") or schema.get("type") not in (None, "object"):
                decl["parameters"] = schema
        declarations.append(decl)
    return [{"functionDeclarations": declarations}] if declarations else []


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]
        return {"functionCallingConfig": {"mode": mode}}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if name:
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools") or {}
        names = [(t.get("function") or {}).get("name") for t in allowed.get("tools") or ()]
        if allowed.get("mode") == "required" and all(names):
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": names}}
    raise _fail(f"tool_choice {choice!r}", "tool_choice")


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        cfg["maxOutputTokens"] = max_tokens
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed"),
                         ("presence_penalty", "presencePenalty"),
                         ("frequency_penalty", "frequencyPenalty")):
        if body.get(ours) is not None:
            cfg[theirs] = body[ours]
    stop = body.get("stop")
    if stop:
        cfg["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("n") not in (None, 1):
        cfg["candidateCount"] = body["n"]
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        cfg["responseMimeType"] = "application/json"
    elif isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        cfg["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:
            cfg["responseSchema"] = gemini_schema(schema, "response_format.json_schema.schema")
    elif fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise _fail(f"response_format {fmt!r}", "response_format")
    effort = body.get("reasoning_effort")
    if effort is not None:
        if not isinstance(effort, str) or effort not in _THINKING_BUDGET:
            raise _fail(f"reasoning_effort {effort!r}", "reasoning_effort")
        cfg["thinkingConfig"] = {"thinkingBudget": _THINKING_BUDGET[effort]}
    return cfg


def _refuse_unexpressible(body: dict[str, Any]) -> None:
    if body.get("logit_bias"):
        raise _fail("logit_bias", "logit_bias")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _fail("logprobs", "logprobs")
    if body.get("audio") or (body.get("modalities") or ["text"]) != ["text"]:
        raise _fail("non-text output modalities", "modalities")
    for key in ("functions", "function_call", "web_search_options"):
        if body.get(key):
            raise _fail(key + (" (use tools)" if key.startswith("function") else ""), key)


_HANDLED_KEYS = _IGNORED_KEYS | {
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "presence_penalty",
    "frequency_penalty", "stop", "n", "response_format", "reasoning_effort", "tools",
    "tool_choice", "logit_bias", "logprobs", "top_logprobs", "audio", "modalities",
    "functions", "function_call", "web_search_options",
}


def to_request(body: dict[str, Any], *, signatures: bool = True) -> dict[str, Any]:
    """A canonical request as a Gemini GenerateContentRequest (the model goes in the URL).

    Replayed function calls carry their own thought signatures; with `signatures` false (a
    model that refused them) only the placeholder, on the first call of each step.
    Raises TranslationError (with `.param` naming the field) for what Gemini cannot express.
    """
    _refuse_unexpressible(body)
    contents, system = _contents(body.get("messages"), signatures)
    if contents and contents[-1]["role"] == "model":
        # Gemini refuses it ("Please ensure that multiturn requests ends with a user role or
        # a function response."): a model that continues the text is another candidate
        raise _fail("a conversation that ends in an assistant message (a prefill)",
                    "messages")
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    tools = _tools(body.get("tools"))
    if tools:
        request["tools"] = tools
        config = _tool_config(body.get("tool_choice"))
        if config is not None:
            request["toolConfig"] = config
    generation = _generation_config(body)
    if generation:
        request["generationConfig"] = generation
    unknown = sorted(set(body) - _HANDLED_KEYS)
    if unknown:
        logger.debug("gemini: ignoring request keys without an equivalent: %s", unknown)
    return request


# ---------------------------------------------------------------- responses


def finish_reason(gemini: str | None, called_tools: bool) -> str | None:
    """Gemini's finishReason in OpenAI's terms (None while the candidate goes on)."""
    if not gemini or gemini == "FINISH_REASON_UNSPECIFIED":
        return None
    if gemini == "MAX_TOKENS":
        return "length"
    if gemini in _FILTER_FINISH:
        return "content_filter"
    # STOP, and the odd ones (MALFORMED_FUNCTION_CALL, OTHER, ...): the answer ended
    return "tool_calls" if called_tools else "stop"


def usage(meta: Any) -> dict[str, Any]:
    """usageMetadata as OpenAI usage; thinking tokens count as completion (reasoning) tokens."""
    meta = meta if isinstance(meta, dict) else {}
    prompt = int(meta.get("promptTokenCount", 0)) + int(meta.get("toolUsePromptTokenCount", 0))
    thoughts = int(meta.get("thoughtsTokenCount", 0))
    completion = int(meta.get("candidatesTokenCount", 0)) + thoughts
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": int(meta.get("totalTokenCount", prompt + completion))}
    if thoughts:
        out["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    if meta.get("cachedContentTokenCount"):
        out["prompt_tokens_details"] = {"cached_tokens": int(meta["cachedContentTokenCount"])}
    return out


def blocked(response: dict[str, Any]) -> str | None:
    """Why Gemini refused the prompt itself (no candidates, promptFeedback.blockReason)."""
    feedback = response.get("promptFeedback")
    if response.get("candidates") or not isinstance(feedback, dict):
        return None
    reason = feedback.get("blockReason")
    if not reason:
        return None
    detail = feedback.get("blockReasonMessage")
    return f"prompt blocked by Gemini: {reason}" + (f" ({detail})" if detail else "")


def _split_parts(parts: Iterable[Any], first_index: int
                 ) -> tuple[str, list[dict[str, Any]]]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts:
        if not isinstance(part, dict) or part.get("thought"):
            continue  # thought summaries are not part of the answer
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        call = part.get("functionCall")
        if isinstance(call, dict):
            calls.append(_signed({
                "id": str(call.get("id") or f"call_{first_index + len(calls)}"),
                "type": "function",
                "function": {"name": call.get("name", ""),
                             "arguments": orjson.dumps(call.get("args") or {}).decode()},
            }, part.get("thoughtSignature")))
    return "".join(texts), calls


def _completion_id(response: dict[str, Any]) -> str:
    return f"chatcmpl-{response.get('responseId') or uuid.uuid4().hex}"


def to_completion(response: dict[str, Any], model_name: str,
                  created: int | None = None) -> dict[str, Any]:
    """A GenerateContentResponse as a canonical `chat.completion`."""
    choices = []
    for position, cand in enumerate(response.get("candidates") or ()):
        parts = (cand.get("content") or {}).get("parts") or ()
        text, calls = _split_parts(parts, 0)
        message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
        if calls:
            message["tool_calls"] = calls
        choices.append({"index": cand.get("index", position), "message": message,
                        "logprobs": None,
                        "finish_reason": finish_reason(cand.get("finishReason"), bool(calls))
                        or "stop"})
    return {"id": _completion_id(response), "object": "chat.completion",
            "created": created if created is not None else int(time.time()),
            "model": response.get("modelVersion") or model_name,
            "choices": choices, "usage": usage(response.get("usageMetadata"))}


@dataclass(slots=True)
class _Candidate:
    started: bool = False
    calls: int = 0
    finished: bool = False


@dataclass(slots=True)
class StreamTranslator:
    """Turns streamed GenerateContentResponses into canonical chunks.

    Gemini streams text in pieces but each function call whole, so a call becomes one
    tool-call delta with its complete arguments (and its thought signature, in
    `extra_content`, as Google's OpenAI-compatible endpoint streams it). Usage goes on a
    final choices-less chunk when the client asked for `stream_options.include_usage`, else
    on the last finish chunk.
    """

    model_name: str
    include_usage: bool = False
    expected: int = 1  # candidates the request asked for (n)
    created: int = field(default_factory=lambda: int(time.time()))
    id: str = ""
    _candidates: dict[int, _Candidate] = field(default_factory=dict)
    _usage: Any = None
    _model: str = ""

    @property
    def complete(self) -> bool:
        """Whether every candidate reached its finishReason."""
        done = sum(1 for c in self._candidates.values() if c.finished)
        return done >= self.expected and done == len(self._candidates)

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self._model or self.model_name, "choices": choices}

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks for one streamed GenerateContentResponse."""
        if not self.id:
            self.id = _completion_id(event)
        self._model = self._model or str(event.get("modelVersion") or "")
        if event.get("usageMetadata"):
            self._usage = event["usageMetadata"]
        out: list[dict[str, Any]] = []
        for position, cand in enumerate(event.get("candidates") or ()):
            index = int(cand.get("index", position))
            state = self._candidates.setdefault(index, _Candidate())
            text, calls = _split_parts((cand.get("content") or {}).get("parts") or (),
                                       state.calls)
            delta = stream_delta(not state.started, text, calls, state.calls)
            state.started = True
            state.calls += len(calls)
            if delta:
                out.append(self._chunk([{"index": index, "delta": delta, "logprobs": None,
                                         "finish_reason": None}]))
            finish = finish_reason(cand.get("finishReason"), state.calls > 0)
            if finish is not None and not state.finished:
                state.finished = True
                chunk = self._chunk([{"index": index, "delta": {}, "logprobs": None,
                                      "finish_reason": finish}])
                if not self.include_usage and self.complete:
                    chunk["usage"] = usage(self._usage)
                out.append(chunk)
        return out

    def finish(self) -> list[dict[str, Any]]:
        """Chunks after the last event: the usage chunk, if the client asked for one."""
        if self.include_usage:
            return [{**self._chunk([]), "usage": usage(self._usage)}]
        return []
