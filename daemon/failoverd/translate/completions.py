"""OpenAI's legacy Completions API (`POST /v1/completions`): a prompt to continue, with an
optional `suffix` for fill-in-the-middle (code completion clients use it).

The request travels as OpenAI's own body: OpenAI-compatible upstreams (vLLM, llama.cpp,
Ollama's /v1, DeepSeek's FIM endpoint, OpenAI's instruct models) take it as it is and their
answers pass through. Ollama's native /api/generate is translated here; Anthropic and Gemini
have no such API, so their candidates are incapable of it.
"""

from __future__ import annotations

import time
from typing import Any

from failoverd.errors import RequestError
from failoverd.translate.inputs import is_token

MAX_N = 128
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this API, which clients rely on


def validate(body: Any) -> dict[str, Any]:
    """The request, checked: raises RequestError naming the first problem."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model", "")
    if not isinstance(model, str):
        raise RequestError("'model' must be a string: a model id, a chain or 'default'",
                           param="model")
    if model == "auto":
        raise RequestError("'auto' routing reads chat messages; name a model or a chain for "
                           "/v1/completions", param="model")
    if "prompt" not in body:
        raise RequestError("'prompt' is required: a string, strings, or token arrays",
                           param="prompt")
    _check_prompt(body["prompt"])
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise RequestError("'suffix' must be a string", param="suffix")
    for key in ("max_tokens", "n", "best_of", "logprobs"):
        value = body.get(key)
        least = 1 if key in ("n", "best_of") else 0
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < least):
            raise RequestError(f"'{key}' must be an integer of at least {least}, got "
                               f"{value!r}", param=key)
    if (body.get("n") or 1) > MAX_N:
        raise RequestError(f"'n' must be at most {MAX_N}", param="n")
    for key in ("stream", "echo"):
        if body.get(key) is not None and not isinstance(body[key], bool):
            raise RequestError(f"'{key}' must be a boolean", param=key)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
            isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise RequestError("'stop' must be a string or an array of strings", param="stop")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")
    return body


def _check_prompt(value: Any) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise RequestError("'prompt' must be a string, or a non-empty array of strings or of "
                           "token arrays", param="prompt")
    if all(is_token(v) for v in value):
        return  # one token array
    if all(isinstance(v, str) for v in value):
        return
    if all(isinstance(v, list) and v and all(is_token(t) for t in v) for v in value):
        return
    raise RequestError("'prompt' must be a string, an array of strings, a token array or an "
                       "array of non-empty token arrays, all items one kind", param="prompt")


def one_prompt(body: dict[str, Any], api: str) -> str:
    """The prompt as one string, for an API that takes one text prompt and one answer;
    RequestError (the next candidate may take it) for what it cannot express."""
    value = body["prompt"]
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], str):
            raise RequestError(f"{api} takes one text prompt (not several, nor token ids)",
                               param="prompt")
        value = value[0]
    if body.get("echo"):
        raise RequestError(f"{api} has no echo", param="echo")
    if body.get("logprobs") is not None:  # 0 asks for the chosen tokens' own
        raise RequestError(f"{api} has no logprobs", param="logprobs")
    if (body.get("n") or 1) > 1 or (body.get("best_of") or 1) > 1:
        raise RequestError(f"{api} gives one answer per request (n, best_of)", param="n")
    return str(value)


def max_tokens(body: dict[str, Any]) -> int:
    value = body.get("max_tokens")
    return DEFAULT_MAX_TOKENS if value is None else int(value)


def answer(text: str, finish: str, model_name: str, usage: dict[str, int],
           completion_id: str) -> dict[str, Any]:
    """OpenAI's text_completion for one answer."""
    return {"id": completion_id, "object": "text_completion", "created": int(time.time()),
            "model": model_name,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            "usage": usage}


def chunk(text: str, finish: str | None, model_name: str, completion_id: str,
          created: int, usage: dict[str, int] | None = None) -> dict[str, Any]:
    """One streamed text_completion event (`usage` set: the usage-only last one)."""
    if usage is not None:
        return {"id": completion_id, "object": "text_completion", "created": created,
                "model": model_name, "choices": [], "usage": usage}
    return {"id": completion_id, "object": "text_completion", "created": created,
            "model": model_name,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}


def is_answer(parsed: Any) -> bool:
    """Whether an upstream's 200 is a text completion: choices with text."""
    choices = parsed.get("choices") if isinstance(parsed, dict) else None
    return isinstance(choices, list) and bool(choices) and all(
        isinstance(c, dict) and isinstance(c.get("text"), str) for c in choices)
