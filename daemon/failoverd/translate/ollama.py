"""Translation between the canonical form (OpenAI Chat Completions dicts) and Ollama's native
`/api/chat`.

`to_request` builds the /api/chat body, `to_completion` turns a non-streaming answer into a
`chat.completion`, and `StreamTranslator` the NDJSON stream lines into
`chat.completion.chunk` dicts.

Where the two APIs differ, these are the decisions:

- Text parts of one message are joined with newlines (Ollama messages hold one string).
- Images: data URLs become base64 entries of the message's `images`; Ollama cannot fetch
  http(s) URLs, so those are a TranslationError.
- Tool-call arguments are JSON strings in the canonical form and objects in Ollama, both ways.
  Tool results carry `tool_name`, recovered from the assistant tool call with the same id.
- `num_ctx` is set to the model's configured context_window: Ollama otherwise runs with a
  small default window. With it goes `truncate: false`, as Ollama still drops the oldest
  messages of a prompt longer than num_ctx without a word (`truncate` defaults to true);
  so told, it answers an error, a context_overflow that fails over to a larger window.
  Without a configured window neither is sent (no larger window to go to).
- tool_choice: "auto" is Ollama's only behaviour and "none" sends no tools; forcing a call
  ("required" or a named function) cannot be expressed. n > 1, logit_bias, logprobs and
  audio output cannot either. Steering-only keys (user, store, metadata, reasoning_effort,
  parallel_tool_calls, ...) are dropped.
- Ollama has no tool-call ids (older versions) or ids of its own: answers use Ollama's id
  when given, else `call_<n>` (n counts from 0 within one answer).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from failoverd.errors import RequestError, TranslationError
from failoverd.translate import completions
from failoverd.translate.images import image_part_url, is_data_url, parse_data_url
from failoverd.translate.tools import function_tools, stream_delta

logger = logging.getLogger(__name__)

_HANDLED_KEYS = frozenset({
    "model", "messages", "stream", "stream_options", "user", "store", "metadata",
    "service_tier", "parallel_tool_calls", "prediction", "prompt_cache_key",
    "safety_identifier", "verbosity", "cache_control", "reasoning_effort",
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "presence_penalty",
    "frequency_penalty", "stop", "n", "response_format", "tools", "tool_choice", "logit_bias",
    "logprobs", "top_logprobs", "audio", "modalities", "functions", "function_call",
})
_OPTIONS = (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
            ("presence_penalty", "presence_penalty"), ("frequency_penalty", "frequency_penalty"))


def _fail(what: str, param: str) -> TranslationError:
    return TranslationError(f"{param}: {what} cannot be expressed for Ollama", param=param)


def _bad(message: str, param: str) -> RequestError:
    return RequestError(f"{param}: {message}", param=param)


# ---------------------------------------------------------------- request


def _content(content: Any, where: str, *, images_ok: bool) -> tuple[str, list[str]]:
    """(text, base64 images) of a canonical message content."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise _bad("content must be a string or a list of parts", where)
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text") or ""))
        elif kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        elif kind == "image_url" and images_ok:
            url = image_part_url(part, path=at)
            if not is_data_url(url):
                raise _fail("an image URL (Ollama takes only base64 images; send a data: URL)",
                            f"{at}.image_url.url")
            images.append(parse_data_url(url, path=f"{at}.image_url.url").data)
        else:
            raise _fail(f"a content part of type {kind!r} in this role", at)
    return "\n".join(texts), images


def _tool_calls(calls: Any, where: str, tool_names: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for j, call in enumerate(calls or ()):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or call.get("type", "function") != "function":
            raise _fail("a tool call that is not a function call", at)
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            raise _fail("arguments that are not a JSON object", f"{at}.function.arguments")
        name = str(fn.get("name") or "")
        out.append({"function": {"name": name, "arguments": args}})
        if call.get("id"):
            tool_names[str(call["id"])] = name
    return out


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _bad("must be a non-empty list", "messages")
    out: list[dict[str, Any]] = []
    tool_names: dict[str, str] = {}
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise _fail(f"role {role!r}", f"{where}.role")
        text, images = _content(message.get("content"), f"{where}.content",
                                images_ok=role == "user")
        item: dict[str, Any] = {"role": "system" if role == "developer" else role,
                                "content": text}
        if images:
            item["images"] = images
        if role == "assistant" and message.get("tool_calls"):
            item["tool_calls"] = _tool_calls(message["tool_calls"], where, tool_names)
        if role == "tool":
            # Ollama matches results to calls by name; without one the model still sees it
            name = tool_names.get(str(message.get("tool_call_id") or ""))
            if name:
                item["tool_name"] = name
        out.append(item)
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    return [{"type": "function",
             "function": {k: fn[k] for k in ("name", "description", "parameters") if k in fn}}
            for _, fn in function_tools(tools, _fail)]


def _format(fmt: Any) -> Any:
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return "json"
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else "json"
    raise _fail(f"response_format {fmt!r}", "response_format")


def _refuse_unexpressible(body: dict[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise _fail("n > 1", "n")
    if body.get("logit_bias"):
        raise _fail("logit_bias", "logit_bias")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _fail("logprobs", "logprobs")
    if body.get("audio") or (body.get("modalities") or ["text"]) != ["text"]:
        raise _fail("non-text output modalities", "modalities")
    for key in ("functions", "function_call"):
        if body.get(key):
            raise _fail(f"{key} (use tools)", key)
    choice = body.get("tool_choice")
    if choice not in (None, "auto", "none") and body.get("tools"):
        raise _fail("forcing a tool call", "tool_choice")


def to_request(body: dict[str, Any], model_name: str, *, stream: bool,
               context_window: int | None = None) -> dict[str, Any]:
    """A canonical request as an Ollama /api/chat body.

    Raises TranslationError (with `.param` naming the field) for what Ollama cannot express.
    """
    _refuse_unexpressible(body)
    request: dict[str, Any] = {"model": model_name, "messages": _messages(body.get("messages")),
                               "stream": stream}
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    options = _options(body, {} if max_tokens is None else {"num_predict": max_tokens},
                       context_window)
    if options:
        request["options"] = options
    if context_window:
        request["truncate"] = False
    if body.get("tools") and body.get("tool_choice") != "none":
        request["tools"] = _tools(body["tools"])
    fmt = _format(body.get("response_format"))
    if fmt is not None:
        request["format"] = fmt
    unknown = sorted(set(body) - _HANDLED_KEYS)
    if unknown:
        logger.debug("ollama: ignoring request keys without an equivalent: %s", unknown)
    return request


# ---------------------------------------------------------------- responses


def finish_reason(done_reason: Any, called_tools: bool) -> str:
    """Ollama's done_reason in OpenAI's terms."""
    if done_reason == "length":
        return "length"
    return "tool_calls" if called_tools else "stop"


def usage(final: dict[str, Any]) -> dict[str, int]:
    """The token counts of Ollama's final (done) object as OpenAI usage."""
    prompt = int(final.get("prompt_eval_count") or 0)
    completion = int(final.get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def tool_calls(calls: Any, first_index: int = 0) -> list[dict[str, Any]]:
    """Ollama tool calls (arguments as objects) as canonical ones (arguments as JSON text)."""
    out: list[dict[str, Any]] = []
    for call in calls or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        args = fn.get("arguments")
        arguments = args if isinstance(args, str) else orjson.dumps(args or {}).decode()
        out.append({"id": str(call.get("id") or f"call_{first_index + len(out)}"),
                    "type": "function",
                    "function": {"name": str(fn.get("name") or ""), "arguments": arguments}})
    return out


def to_completion(response: dict[str, Any], model_name: str,
                  created: int | None = None) -> dict[str, Any]:
    """A non-streaming /api/chat answer as a canonical `chat.completion`."""
    msg: dict[str, Any] = response["message"] if isinstance(response.get("message"), dict) else {}
    calls = tool_calls(msg.get("tool_calls"))
    text = str(msg.get("content") or "")
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": created if created is not None else int(time.time()),
            "model": response.get("model") or model_name,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish_reason(response.get("done_reason"),
                                                        bool(calls))}],
            "usage": usage(response)}


@dataclass(slots=True)
class StreamTranslator:
    """Turns /api/chat NDJSON objects into canonical chunks.

    Ollama sends each tool call whole, so it becomes one tool-call delta with complete
    arguments. Usage goes on a final choices-less chunk when the client asked for
    `stream_options.include_usage`, else on the finish chunk.
    """

    model_name: str
    include_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    done: bool = False
    _started: bool = False
    _calls: int = 0

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None
               ) -> dict[str, Any]:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                             "finish_reason": finish}]
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model_name, "choices": choices}

    def feed(self, line: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks for one NDJSON object (the caller handles `{"error": ...}` lines)."""
        msg: dict[str, Any] = line["message"] if isinstance(line.get("message"), dict) else {}
        text = str(msg.get("content") or "")
        calls = tool_calls(msg.get("tool_calls"), self._calls)
        delta = stream_delta(not self._started, text, calls, self._calls)
        self._started = True
        self._calls += len(calls)
        out = [self._chunk(delta)] if delta else []
        if line.get("done"):
            self.done = True
            finish = self._chunk({}, finish_reason(line.get("done_reason"), self._calls > 0))
            if self.include_usage:
                out += [finish, {**self._chunk(None), "usage": usage(line)}]
            else:
                out.append({**finish, "usage": usage(line)})
        return out


# ---------------------------------------------------------------- text completions


def _options(body: dict[str, Any], options: dict[str, Any],
             context_window: int | None) -> dict[str, Any]:
    """`options` with the sampling fields (_OPTIONS), `stop` and the context window as
    Ollama's option names, for /api/chat and /api/generate alike."""
    for ours, theirs in _OPTIONS:
        if body.get(ours) is not None:
            options[theirs] = body[ours]
    stop = body.get("stop")
    if stop:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if context_window:
        options["num_ctx"] = context_window
    return options


def to_generate(body: dict[str, Any], model_name: str, *, stream: bool,
                context_window: int | None = None) -> dict[str, Any]:
    """A legacy completions request (translate/completions.py) as an Ollama /api/generate
    body: the prompt and `suffix` (fill-in-the-middle, which Ollama builds with the model's
    template), `max_tokens` (OpenAI's default 16 when unset) as num_predict. RequestError for
    what one /api/generate call cannot give (several prompts or answers, token ids, echo,
    logprobs)."""
    prompt = completions.one_prompt(body, "Ollama's /api/generate")
    if not prompt:
        # Ollama only loads the model for an empty prompt (done_reason "load"), suffix or not:
        # fill-in-the-middle at the very start of a file is for another model
        raise RequestError("Ollama's /api/generate answers an empty prompt by only loading "
                           "the model", param="prompt")
    if completions.max_tokens(body) == 0:
        raise RequestError("Ollama's /api/generate has no zero-token answer (num_predict 0 "
                           "is no limit)", param="max_tokens")
    request: dict[str, Any] = {"model": model_name, "prompt": prompt, "stream": stream}
    if isinstance(body.get("suffix"), str):
        request["suffix"] = body["suffix"]
    request["options"] = _options(body, {"num_predict": completions.max_tokens(body)},
                                  context_window)
    if context_window:
        request["truncate"] = False
    return request


def generate_answer(final: dict[str, Any], text: str, model_name: str,
                    completion_id: str) -> dict[str, Any]:
    """Ollama's finished generation as OpenAI's text_completion."""
    return completions.answer(text, finish_reason(final.get("done_reason"), False), model_name,
                              usage(final), completion_id)
