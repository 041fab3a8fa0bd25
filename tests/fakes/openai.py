"""A fake OpenAI-compatible API: a real aiohttp server on 127.0.0.1 with real error bodies.

Tests script it: `fake.push("rate_limit", "ok")` makes the next request get a 429 and the one
after a normal answer; `fake.default` is what every unscripted request gets. Every request is
logged (`fake.requests`), so a test can prove that a model got no traffic.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import FakeServer, Logged, cut, event_stream
from tests.fakes.openai_completions import CHAT_ONLY, failed_first, prompt_items, respond

# re-exported: the other fakes and the tests take the completion texts from here
from tests.fakes.openai_completions import completion_text as completion_text
from tests.fakes.openai_completions import cut_completion as cut_completion
from tests.fakes.openai_completions import prompt_text as prompt_text


def _err(message: str, type_: str | None, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}})


# Error bodies as OpenAI (and compatible vendors) really send them.
ERRORS: dict[str, tuple[int, bytes, dict[str, str]]] = {
    "rate_limit": (429, _err(
        "Rate limit reached for gpt-4o in organization org-test on requests per min (RPM): "
        "Limit 3, Used 3, Requested 1. Please try again in 1s.", "requests",
        "rate_limit_exceeded"), {"retry-after": "1"}),
    "rate_limit_long": (429, _err(
        "Rate limit reached for gpt-4o on tokens per min (TPM). Please try again in 30s.",
        "tokens", "rate_limit_exceeded"), {"retry-after": "30"}),
    "rate_limit_short": (429, _err(
        "Rate limit reached for gpt-4o on requests per min (RPM).", "requests",
        "rate_limit_exceeded"), {"retry-after-ms": "50"}),
    "rate_limit_bare": (429, _err(
        "Rate limit reached for gpt-4o on requests per min (RPM).", "requests",
        "rate_limit_exceeded"), {}),
    "quota": (429, _err(
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, read the docs.", "insufficient_quota",
        "insufficient_quota"), {}),
    "server_error": (500, _err(
        "The server had an error while processing your request. Sorry about that!",
        "server_error", None), {}),
    "overloaded": (503, _err(
        "The engine is currently overloaded, please try again later", "server_error", None), {}),
    "bad_gateway": (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                    {"content-type": "text/html"}),
    "auth": (401, _err(
        "Incorrect API key provided: sk-test. You can find your API key at "
        "https://platform.openai.com/account/api-keys.", "invalid_request_error",
        "invalid_api_key"), {}),
    "forbidden": (403, _err("Project does not have access to model gpt-5",
                            "invalid_request_error", "model_not_allowed"), {}),
    "billing": (402, _err("Insufficient Balance", "unknown_error", "invalid_request_error"), {}),
    "not_found": (404, _err(
        "The model `gpt-9` does not exist or you do not have access to it.",
        "invalid_request_error", "model_not_found"), {}),
    "context": (400, _err(
        "This model's maximum context length is 128000 tokens. However, your messages resulted "
        "in 130532 tokens. Please reduce the length of the messages.", "invalid_request_error",
        "context_length_exceeded", "messages"), {}),
    "content_filter": (400, orjson.dumps({"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's "
                   "content management policy.", "type": None, "param": "prompt",
        "code": "content_filter", "status": 400}}), {}),
    "bad_param": (400, _err("Invalid value for 'temperature': must be between 0 and 2.",
                            "invalid_request_error", "invalid_value", "temperature"), {}),
    # OpenAI's 429 often has no Retry-After: the wait is in its message and x-ratelimit headers
    "rate_limit_hint": (429, _err(
        "Rate limit reached for gpt-4o in organization org-test on requests per min (RPM): "
        "Limit 500, Used 500, Requested 1. Please try again in 120ms. Visit "
        "https://platform.openai.com/account/rate-limits to learn more.", "requests",
        "rate_limit_exceeded"), {"x-ratelimit-limit-requests": "500",
                                 "x-ratelimit-remaining-requests": "0",
                                 "x-ratelimit-reset-requests": "120ms",
                                 "x-ratelimit-remaining-tokens": "29000",
                                 "x-ratelimit-reset-tokens": "2s"}),
    "rate_limit_daily": (429, _err(
        "Rate limit reached for gpt-4o-mini in organization org-test on tokens per day (TPD): "
        "Limit 200000, Used 199000, Requested 2000. Please try again in 7m12s.", "tokens",
        "rate_limit_exceeded"), {"x-ratelimit-remaining-tokens": "0",
                                 "x-ratelimit-reset-tokens": "7m12s"}),
    # llama.cpp's server (b6400+; older ones sent the same text as a 500)
    "llamacpp_context": (400, orjson.dumps({"error": {
        "code": 400, "message": "request (4390 tokens) exceeds the available context size "
        "(4096 tokens), try increasing it", "type": "exceed_context_size_error",
        "n_prompt_tokens": 4390, "n_ctx": 4096}}), {}),
    "llamacpp_context_500": (500, orjson.dumps({"error": {
        "code": 500, "message": "the request exceeds the available context size. try "
        "increasing the context size or enable context shift", "type": "server_error"}}), {}),
    # Kimi (Moonshot)
    "kimi_context": (400, orjson.dumps({"error": {
        "message": "Invalid request: Your request exceeded model token limit: 8192",
        "type": "invalid_request_error"}}), {}),
    # Kimi's 429 when its capacity is short (MoonshotAI-Cookbook#16, BettaFish#292)
    "kimi_overloaded": (429, orjson.dumps({"error": {
        "message": "The engine is currently overloaded, please try again later",
        "type": "engine_overloaded_error"}}), {}),
    # Groq: a request over the per-minute token quota by itself (gpt-researcher#985)
    "groq_tpm": (413, _err(
        "Request too large for model `llama-3.1-8b-instant` in organization `org_01test` "
        "service tier `on_demand` on tokens per minute (TPM): Limit 6000, Requested 12328, "
        "please reduce your message size and try again. Need more tokens? Upgrade to Dev Tier "
        "today at https://console.groq.com/settings/billing", "tokens",
        "rate_limit_exceeded"), {}),
    # GLM (Zhipu): business codes in error.code (docs.bigmodel.cn/cn/api/api-code), Chinese
    # text; 1113 as dify#5850 and CowAgent#2910 got it, 1301 as the safety audit page shows it
    "glm_balance": (429, orjson.dumps({"error": {
        "code": "1113", "message": "余额不足或无可用资源包,请充值。"}}), {}),
    "glm_context": (400, orjson.dumps({"error": {
        "code": "1261", "message": "Prompt 超长"}}), {}),
    "glm_unsafe": (400, orjson.dumps({
        "contentFilter": [{"level": 1, "role": "user"}],
        "error": {"code": "1301", "message": "系统检测到输入或生成内容可能包含不安全或敏感内容，"
                  "请您避免输入易产生敏感内容的提示语，感谢您的配合。"}}), {}),
    "glm_busy": (429, orjson.dumps({"error": {
        "code": "1305", "message": "该模型当前访问量过大，请您稍后再试"}}), {}),
    # the same inside a 200 (llm-simple-router#95: "HTTP 200, code 1305")
    "glm_busy_200": (200, orjson.dumps({"error": {
        "code": "1305", "message": "该模型当前访问量过大，请您稍后再试"}}), {}),
}

USAGE = {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}

EMBEDDING_DIMENSIONS = 8  # the length of a fake embedding unless the request asks otherwise
MAX_EMBEDDING_INPUTS = 2048


def fake_embedding(model: str, item: Any, dimensions: int) -> list[float]:
    """The vector every fake upstream gives `item` (a text, or token ids) from `model`:
    deterministic, and multiples of 1/128, which float32 holds exactly, so the same numbers
    arrive as JSON floats or base64 of float32."""
    raw = b""
    block = 0
    while len(raw) < dimensions:
        raw += hashlib.sha256(model.encode() + b"\0" + orjson.dumps(item)
                              + b"\0%d" % block).digest()
        block += 1
    return [(b - 128) / 128 for b in raw[:dimensions]]


def float32_base64(vector: list[float]) -> str:
    """A vector as OpenAI's base64 encoding_format sends it: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


# OpenAI's 400 for an input its schema refuses (an empty string, an empty array, more than
# 2048 items, a mix of strings and token arrays)
_INPUT_INVALID = ("'$.input' is invalid. Please check the API reference: "
                  "https://platform.openai.com/docs/api-reference.")

# MiniMax answers some failures with a 200 whose body carries only its status (1008: no balance)
MINIMAX_BALANCE = orjson.dumps({"base_resp": {"status_code": 1008,
                                              "status_msg": "insufficient balance"}})
# OpenRouter's error after the stream began: a chunk with a top-level error, finish_reason
# "error", then the end of the stream
OPENROUTER_ERROR = orjson.dumps({
    "id": "gen-1", "object": "chat.completion.chunk", "created": 1, "model": "openai/gpt-4o",
    "provider": "OpenAI", "error": {"code": 502, "message": "Provider disconnected "
                                    "unexpectedly"},
    "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]})


# OpenAI's 400 for a prompt its schema refuses (an empty array, a mix of strings and tokens)
_PROMPT_INVALID = ("'$.prompt' is invalid. Please check the API reference: "
                   "https://platform.openai.com/docs/api-reference.")


@dataclass
class FakeOpenAI(FakeServer[Logged]):
    """Behaviours: "ok", any key of ERRORS, "hang", "invalid_json", "empty", "cut_stream",
    "slow:<seconds>" (answer after a delay), "late:<seconds>:<error>" (that error after a
    delay, as an overloaded server's 503 after seconds of trying), "stream_error" (error
    event mid-stream),
    "slow_stream:<seconds>" (streaming: this pause before every word; a plain answer otherwise),
    "comments:<seconds>" (streaming: SSE comment lines this long before the first chunk),
    "error_first" (streaming: a 200 whose first event is an insufficient_quota error),
    "no_done" (streaming: the finish_reason chunk and the usage, then the end of the body
    without [DONE], as llama.cpp before b3750, TGI before 2.1.1, mistral.rs before 0.5 send),
    "openrouter_error_first" (streaming: ": OPENROUTER PROCESSING", then OpenRouter's error
    chunk, finish_reason "error", and the end), "openrouter_error_mid" (that chunk after two
    words),
    "llamacpp_error_event" (streaming: llama.cpp's `error: {...}` line, then `data: [DONE]`),
    "minimax_balance" (a 200 whose JSON body is MiniMax's base_resp 1008).

    `POST /v1/embeddings` answers with `fake_embedding(model, input, dimensions)` vectors
    (`embedding_dimensions` long unless the request sets `dimensions`; token-id inputs
    embedded as they are), base64 when `encoding_format` is "base64", usage a token per four
    characters (per token id). As OpenAI does, it refuses `dimensions` for
    text-embedding-ada-002 and malformed inputs with a 400. Its own behaviours besides the
    shared ones ("ok", any key of ERRORS, "hang", "slow:<seconds>", "invalid_json", "empty"):
    "floats" (ignores encoding_format: always floats, as some compatible servers do),
    "base64" (always base64, even when floats were asked for), "missing_embedding" (a 200
    with one embedding fewer than the inputs).

    `POST /v1/completions` (the legacy Completions API) answers every prompt (a text, texts,
    token ids, arrays of token ids) `n` times, choice index prompt * n + k, with
    `completion_text(reply, prompt, suffix)` cut at `stop` (finish_reason "stop") or after
    `max_tokens` words (default 16; null: no limit; finish_reason "length"), the prompt first
    with `echo`, legacy logprobs when `logprobs` is set; usage a token per word (per token
    id) of each prompt with the suffix, and per word generated. Streaming: one choice per
    chunk, the choices' words interleaved, then a chunk with text "" and the finish_reason
    for each choice, the usage chunk (`choices: []`) with `stream_options.include_usage`
    (then every chunk has `"usage": null`), `data: [DONE]`.
    A model in `chat_only_models` gets OpenAI's 404 (CHAT_ONLY), a prompt its schema refuses
    the 400. Behaviours: those of the chat route but the tool ones ("ok", any key of ERRORS,
    "hang", "slow:<seconds>", "invalid_json", "empty", "minimax_balance", and streaming
    "cut_stream", "stream_error", "slow_stream:<seconds>", "comments:<seconds>",
    "error_first", "no_done", "openrouter_error_first", "openrouter_error_mid",
    "llamacpp_error_event"). A scripted behaviour is used up by a request the fake refuses
    (404, 400), as on the chat route."""

    reply: str = "Hello from the fake upstream"
    call_id: str = "call_1"  # the id of its tool calls (Kimi's look like "functions.f:0")
    # what comes with a tool call: the text before it ("\n\n" from many local models), the
    # number of parallel calls (ids call_id, call_id_2, ...), and whether it calls a tool
    # again after a tool result (an agent's next step)
    call_text: str | None = None
    parallel: int = 1
    calls_after_result: bool = False
    # DeepSeek's thinking mode: answers carry this reasoning_content (streamed first), and
    # every assistant turn with tool calls must come back with its reasoning_content, or the
    # request is DeepSeek's 400
    thinking: str | None = None

    errors = ERRORS
    url_path = "/v1"
    truncated = b'{"id": "chatcmpl-1", "choices": ['

    embedding_dimensions: int = EMBEDDING_DIMENSIONS
    # the models /v1/completions refuses with OpenAI's 404, as it refuses chat models
    chat_only_models: set[str] = field(default_factory=lambda: {"gpt-4o"})

    def chat_requests(self) -> list[Logged]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def embedding_requests(self) -> list[Logged]:
        return [r for r in self.requests if r.path.endswith("/embeddings")]

    def completion_requests(self) -> list[Logged]:
        """The requests to the legacy /v1/completions (not /v1/chat/completions)."""
        return [r for r in self.requests if r.path.endswith("/v1/completions")]

    def _routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/chat/completions", self._chat)
        router.add_get("/v1/models", self._models)
        router.add_post("/v1/embeddings", self._embeddings)
        router.add_post("/v1/completions", self._legacy)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Logged(request.path, dict(request.headers), None))
        # no "slow:" here: a slow chat must not make the prober's listing slow too
        return await self._preamble(self._next(), slow=False) or web.json_response({
            "object": "list", "data": [
                {"id": "gpt-test", "object": "model", "created": 0, "owned_by": "fake"}]})

    def _error(self, name: str, model: str) -> web.Response:
        status, body, headers = ERRORS[name]
        ctype = headers.get("content-type", "application/json")
        extra = {k: v for k, v in headers.items() if k != "content-type"}
        return web.Response(status=status, body=body, headers=extra, content_type=ctype)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append(Logged(request.path, dict(request.headers), body))
        behaviour = self._next()
        refusal = _unknown_field(body) or _invalid_messages(body) or self._reasoning_missing(body)
        if refusal is not None:
            return web.Response(status=400, body=_err(refusal, "invalid_request_error", None),
                                content_type="application/json")
        early = await self._text_preamble(behaviour)
        if early is not None:
            return early
        if body.get("stream"):
            return await self._stream(request, body, behaviour)
        return web.json_response(self._completion(body))

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append(Logged(request.path, dict(request.headers), body))
        behaviour = self._next()
        model = str(body.get("model", ""))
        items = _embedding_items(body.get("input"))
        refusal: tuple[str, str | None] | None = None
        if items is None:
            refusal = (_INPUT_INVALID, None)
        elif "dimensions" in body and "ada-002" in model:
            refusal = ("This model does not support specifying dimensions.", None)
        elif body.get("encoding_format", "float") not in ("float", "base64"):
            refusal = ("Invalid value for 'encoding_format': must be 'float' or 'base64'.",
                       "encoding_format")
        if refusal is not None:
            return web.Response(status=400, body=_err(refusal[0], "invalid_request_error",
                                                      None, refusal[1]),
                                content_type="application/json")
        assert items is not None
        early = await self._answer_preamble(behaviour, model)
        if early is not None:
            return early
        if behaviour == "empty":
            return web.Response(body=b"", content_type="application/json")
        dimensions = body.get("dimensions") or self.embedding_dimensions
        base64_out = behaviour == "base64" or (
            behaviour != "floats" and body.get("encoding_format") == "base64")
        vectors = [fake_embedding(model, item, dimensions) for item in items]
        if behaviour == "missing_embedding":
            vectors.pop()
        tokens = sum(len(i) if isinstance(i, list) else len(i) // 4 + 1 for i in items)
        return web.json_response({
            "object": "list",
            "data": [{"object": "embedding", "index": i,
                      "embedding": float32_base64(v) if base64_out else v}
                     for i, v in enumerate(vectors)],
            "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    async def _legacy(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/completions`, OpenAI's legacy Completions API."""
        body = orjson.loads(await request.read())
        self.requests.append(Logged(request.path, dict(request.headers), body))
        behaviour = self._next()
        model = str(body.get("model", ""))
        if model in self.chat_only_models:
            return web.Response(status=404, body=_err(CHAT_ONLY, "invalid_request_error",
                                                      None, "model"),
                                content_type="application/json")
        prompts = prompt_items(body.get("prompt"))
        if prompts is None:
            return web.Response(status=400, body=_err(_PROMPT_INVALID, "invalid_request_error",
                                                      None),
                                content_type="application/json")
        early = await self._text_preamble(behaviour, model)
        if early is not None:
            return early
        return await respond(request, body, behaviour, prompts, self.reply,
                             quota=ERRORS["quota"][1])


    def _wants_tool_call(self, body: dict[str, Any]) -> bool:
        """With tools declared and no tool result last (or `calls_after_result`), the fake
        calls the first tool; never with tool_choice "none"."""
        messages = body.get("messages") or [{}]
        return bool(body.get("tools")) and body.get("tool_choice") != "none" and (
            self.calls_after_result or messages[-1].get("role") != "tool")

    async def _text_preamble(self, behaviour: str, model: str = "") -> web.Response | None:
        """As `_answer_preamble`, for the endpoints that answer text (chat and legacy
        completions), where "empty" (a 200 with no body) and "minimax_balance" also answer."""
        early = await self._answer_preamble(behaviour, model)
        if early is not None:
            return early
        if behaviour == "empty":
            return web.Response(body=b"", content_type="application/json")
        if behaviour == "minimax_balance":
            return web.Response(body=MINIMAX_BALANCE, content_type="application/json")
        return None

    def _reasoning_missing(self, body: dict[str, Any]) -> str | None:
        if self.thinking is None:
            return None
        for message in body.get("messages") or []:
            if isinstance(message, dict) and message.get("role") == "assistant" \
                    and message.get("tool_calls") and not message.get("reasoning_content"):
                return "The reasoning_content in the thinking mode must be passed back to the API."
        return None

    def _id(self, k: int) -> str:
        return self.call_id if k == 0 else f"{self.call_id}_{k + 1}"

    @staticmethod
    def _arguments(k: int) -> str:
        return '{"city": "Paris"}' if k == 0 else orjson.dumps({"city": f"Paris{k}"}).decode()

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.reply}
        finish = "stop"
        if self._wants_tool_call(body):
            name = body["tools"][0]["function"]["name"]
            message = {"role": "assistant", "content": self.call_text, "tool_calls": [{
                "id": self._id(k), "type": "function",
                "function": {"name": name, "arguments": self._arguments(k)}}
                for k in range(self.parallel)]}
            finish = "tool_calls"
        if self.thinking is not None:
            message["reasoning_content"] = self.thinking
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"), "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": finish}],
                "usage": USAGE}

    async def _stream(self, request: web.Request, body: dict[str, Any],
                      behaviour: str) -> web.StreamResponse:
        resp = await event_stream(request)
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model")}

        async def send(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")

        if await failed_first(resp, behaviour, ERRORS["quota"][1], OPENROUTER_ERROR):
            return resp
        await send({"role": "assistant", "content": ""})
        if self.thinking is not None:
            await send({"reasoning_content": self.thinking})
        if self._wants_tool_call(body):
            if self.call_text:
                await send({"content": self.call_text})
            # a tool call streams its arguments in pieces, as OpenAI does; "length_in_call"
            # stops at max_tokens halfway through the last call's arguments
            name = body["tools"][0]["function"]["name"]
            for k in range(self.parallel):
                await send({"tool_calls": [{"index": k, "id": self._id(k), "type": "function",
                                            "function": {"name": name, "arguments": ""}}]})
                arguments = self._arguments(k)
                if behaviour == "length_in_call" and k == self.parallel - 1:
                    arguments = arguments[:len(arguments) // 2]
                for at in range(0, len(arguments), 7):
                    await send({"tool_calls": [{"index": k, "function": {
                        "arguments": arguments[at:at + 7]}}]})
            await send({}, "length" if behaviour == "length_in_call" else "tool_calls")
            await self._usage(resp, body, base)
            await resp.write(b"data: [DONE]\n\n")
            return resp
        words = self.reply.split(" ")
        pause = float(behaviour[12:]) if behaviour.startswith("slow_stream:") else 0.0
        for i, word in enumerate(words):
            if pause:
                await asyncio.sleep(pause)
            await send({"content": word if i == 0 else " " + word})
            if behaviour == "cut_stream" and i == 1:
                return cut(request, resp)
            if behaviour == "stream_error" and i == 1:
                await resp.write(b"data: " + _err("The server had an error while processing "
                                                  "your request.", "server_error", None)
                                 + b"\n\n")
                return resp
            if behaviour == "openrouter_error_mid" and i == 1:
                await resp.write(b"data: " + OPENROUTER_ERROR + b"\n\n")
                return resp
        await send({}, "stop")
        await self._usage(resp, body, base)
        if behaviour == "no_done":
            return resp
        await resp.write(b"data: [DONE]\n\n")
        return resp

    @staticmethod
    async def _usage(resp: web.StreamResponse, body: dict[str, Any],
                     base: dict[str, Any]) -> None:
        """The usage chunk (no choices) OpenAI sends last when the request asks for it."""
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(b"data: " + orjson.dumps({**base, "choices": [], "usage": USAGE})
                             + b"\n\n")


def _embedding_items(value: Any) -> list[Any] | None:
    """The inputs of an embeddings request one by one (a text, or a token-id array), or None
    when OpenAI's schema refuses them."""
    def token(t: Any) -> bool:
        return type(t) is int and t >= 0

    if isinstance(value, str):
        return [value] if value else None
    if not isinstance(value, list) or not value or len(value) > MAX_EMBEDDING_INPUTS:
        return None
    if all(token(t) for t in value):
        return [value]
    if all(isinstance(v, str) and v for v in value) or all(
            isinstance(v, list) and v and all(token(t) for t in v) for v in value):
        return value
    return None


_ANTHROPIC_ONLY = ("cache_control", "thinking_blocks", "anthropic_order")


def _unknown_field(body: dict[str, Any]) -> str | None:
    """OpenAI's 400 for the Anthropic-only fields a translating proxy might leave in, and
    Gemini's thought signatures on tool calls (`extra_content`, which only Google's own
    OpenAI-compatible endpoint reads): the API validates the body strictly (top-level
    arguments, message, content-part and tool-call fields)."""
    if "cache_control" in body:
        return "Unrecognized request argument supplied: cache_control"
    places: list[tuple[str, Any]] = [(f"tools.{i}", t) for i, t in enumerate(
        body.get("tools") or [])]
    for i, message in enumerate(body.get("messages") or []):
        places.append((f"messages.{i}", message))
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            places.extend((f"messages.{i}.content.{j}", p) for j, p in enumerate(content))
        for j, call in enumerate(message.get("tool_calls") or []):
            places.append((f"messages.{i}.tool_calls.{j}", call))
    for where, item in places:
        keys = _ANTHROPIC_ONLY + ("extra_content",) if ".tool_calls." in where \
            else _ANTHROPIC_ONLY
        for key in keys:
            if isinstance(item, dict) and key in item:
                return f"Additional properties are not allowed ('{key}' was unexpected) - '{where}'"
    return None


def _invalid_messages(body: dict[str, Any]) -> str | None:
    """OpenAI's 400 for a conversation it refuses: tool messages that answer no tool call of
    the assistant message right before them, tool calls left without an answer, and images
    in any message but a user's."""
    pending: list[str] = []
    answered: set[str] = set()
    for i, message in enumerate(body.get("messages") or []):
        role = message.get("role")
        content = message.get("content")
        if role != "user" and isinstance(content, list) and any(
                isinstance(p, dict) and p.get("type") == "image_url" for p in content):
            return (f"Invalid 'messages[{i}]'. Image URLs are only allowed for messages with "
                    f"role 'user', but this message with role '{role}' contains an image URL.")
        if role == "tool":
            if message.get("tool_call_id") not in pending:
                return ("Invalid parameter: messages with role 'tool' must be a response to a "
                        "preceeding message with 'tool_calls'.")
            answered.add(message["tool_call_id"])
            continue
        missing = [c for c in pending if c not in answered]
        if missing:
            return ("An assistant message with 'tool_calls' must be followed by tool messages "
                    "responding to each 'tool_call_id'. The following tool_call_ids did not "
                    f"have response messages: {', '.join(missing)}")
        pending, answered = [], set()
        if role == "assistant":
            pending = [c.get("id") for c in message.get("tool_calls") or []]
    missing = [c for c in pending if c not in answered]
    if missing:
        return ("An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not "
                f"have response messages: {', '.join(missing)}")
    return None
