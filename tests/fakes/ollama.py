"""A fake Ollama server (native API): a real aiohttp server on 127.0.0.1.

Speaks `POST /api/chat` and `POST /api/generate` (NDJSON streaming or one JSON object),
`POST /api/embed` and `GET /api/tags` with Ollama's real error bodies (`{"error": "..."}`).
Script it with `fake.push("busy", "ok")`; `fake.default` answers unscripted requests;
`fake.models` is what /api/tags lists; every request is logged in `fake.requests`. Reuse it
from any test module with `from tests.fakes.ollama import fake_ollama` (a fixture returning
a factory).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import FakeServer, Logged, cut
from tests.fakes.openai import (
    EMBEDDING_DIMENSIONS,
    completion_text,
    cut_completion,
    fake_embedding,
)

# Error bodies as Ollama really sends them: (http status, error text); {model} is filled in.
ERRORS: dict[str, tuple[int, str]] = {
    "not_found": (404, 'model "{model}" not found, try pulling it first'),
    "server_error": (500, "llama runner process has terminated: signal: killed"),
    "out_of_memory": (500, "model requires more system memory (12.3 GiB) than is available "
                           "(7.1 GiB)"),
    "busy": (503, "server busy, please try again.  maximum pending requests exceeded"),
    "bad_request": (400, "invalid character 'x' looking for beginning of value"),
    "no_tools": (400, "registry.ollama.ai/library/{model} does not support tools"),
    # a prompt longer than num_ctx: with `truncate: false` (llama.cpp's error, passed on as
    # a JSON text), and the plain text older servers answer with a 500
    "context_size": (400, '{"error":{"code":400,"message":"request (8889 tokens) exceeds the '
                          'available context size (4096 tokens), try increasing it","type":'
                          '"exceed_context_size_error","n_prompt_tokens":8889,"n_ctx":4096}}'),
    "context_500": (500, "the input length exceeds the context length"),
    # ollama.com (or Ollama behind an authenticating proxy) without a valid key
    "unauthorized": (401, "unauthorized"),
}

# what Ollama sends when the model fails while it generates
_RUN_ERROR = "an error was encountered while running the model: unexpected EOF"

_TIMINGS = {"total_duration": 5191566416, "load_duration": 2154458,
            "prompt_eval_duration": 383809000, "eval_duration": 4799921000}


@dataclass
class FakeOllama(FakeServer[Logged]):
    """Behaviours: "ok", any key of ERRORS, "hang" (no answer), "stall" (stream headers, then
    nothing), "slow:<seconds>", "invalid_json", "empty", "length" (done_reason length),
    "cut_stream", "no_done" (stream ends without the done line), "stream_error" (an error
    line mid-stream), "load" (done_reason "load" and no answer, as Ollama answers a request
    without a user message), "thinking_only" (everything in message.thinking, empty content).

    As Ollama does, "ok" with `"truncate": false` and a prompt longer than
    `options.num_ctx` answers the "context_size" error; without it, Ollama truncates
    silently and so does the fake (nothing to see but its answer).

    With tools given and no tool result last, the answer is `tool_calls` calls of the first
    tool, arguments as objects as Ollama sends them.

    `POST /api/embed` embeds a string or strings with `fake_embedding(model, text,
    dimensions)` (`embedding_dimensions` long unless `dimensions` is given); a model it has
    not got (neither in `embedders` nor in `models`, ":latest" implied) is Ollama's 404, an
    input that is not text Ollama's 400, and with `"truncate": false` one longer than
    `embedding_context` its 400 "the input length exceeds the context length". Behaviours
    besides the shared ones ("ok", any key of ERRORS, "hang", "slow:<seconds>",
    "invalid_json", "empty"): "missing_embedding" (a 200 with one embedding fewer than the
    inputs).

    `POST /api/generate` (streamed unless `"stream": false`) answers `completion_text(reply,
    prompt, suffix)` cut at `options.stop` or after `options.num_predict` words (done_reason
    "length"), with `context` (not with `raw`) and the counts: prompt_eval_count a token per
    two characters of prompt, suffix and system, eval_count a token per word. As Ollama does,
    it refuses: a model neither in `models` nor in `coders` (":latest" implied) with the 404
    ("not_found"), an embedding model (`embedders`) with the 400 "\"<model>\" does not
    support generate", a `suffix` for a model not in `coders` with the 400
    "registry.ollama.ai/library/<model:tag> does not support insert", `raw` with `system` or
    `context` with its 400, a prompt or suffix that is not a string with its Go 400; an
    empty prompt (even with a suffix) is the "load" answer, and with `keep_alive` 0 the
    "unload" one. Behaviours: "ok", any key of ERRORS, "hang", "stall", "slow:<seconds>",
    "invalid_json", "empty", "length", "load", "cut_stream", "no_done", "stream_error" (an
    error line after two words; without streaming, Ollama's 500 with that error).
    """

    reply: str = "Hello from the fake Ollama"
    tool_calls: int = 1
    models: list[str] = field(default_factory=lambda: ["qwen2.5:7b", "llama3.2:latest"])
    # the embedding models it has pulled (/api/tags does not list them, to keep its answer)
    embedders: list[str] = field(default_factory=lambda: ["nomic-embed-text:latest",
                                                          "embeddinggemma:latest"])
    embedding_dimensions: int = EMBEDDING_DIMENSIONS
    # an embedding model's context in the fake's tokens (two characters each): a longer
    # input is refused with `truncate: false`, and cut silently without it, as Ollama does
    embedding_context: int = 512
    # the models it has pulled whose template takes a suffix (fill in the middle): the only
    # ones /api/generate accepts a `suffix` for (/api/tags does not list them either)
    coders: list[str] = field(default_factory=lambda: ["qwen2.5-coder:1.5b",
                                                       "codellama:7b-code"])

    errors = ERRORS
    truncated = b'{"model": "x", "message": {'

    def chat_requests(self) -> list[Logged]:
        return [r for r in self.requests if r.path == "/api/chat"]

    def embed_requests(self) -> list[Logged]:
        return [r for r in self.requests if r.path == "/api/embed"]

    def generate_requests(self) -> list[Logged]:
        return [r for r in self.requests if r.path == "/api/generate"]

    def _routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/api/chat", self._chat)
        router.add_get("/api/tags", self._tags)
        router.add_post("/api/embed", self._embed)
        router.add_post("/api/generate", self._generate)

    def _error(self, name: str, model: str) -> web.Response:
        status, text = ERRORS[name]
        return web.json_response({"error": text.replace("{model}", model)}, status=status)

    async def _tags(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Logged(request.path, dict(request.headers), None))
        return await self._preamble(self._next()) or web.json_response({"models": [
            {"name": name, "model": name, "modified_at": "2025-05-01T10:00:00.0+02:00",
             "size": 4683087332, "digest": "845dbda0ea48",
             "details": {"format": "gguf", "family": "qwen2", "parameter_size": "7.6B",
                         "quantization_level": "Q4_K_M"}} for name in self.models]})

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append(Logged(request.path, dict(request.headers), body))
        model = str(body.get("model", ""))
        behaviour = self._next()
        value = body.get("input")
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return web.json_response({"error": "invalid input type"}, status=400)
        name = model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"
        if name not in self.embedders and name not in self.models:
            return self._error("not_found", model)
        early = await self._answer_preamble(behaviour, model)
        if early is not None:
            return early
        if behaviour == "empty":
            return web.Response(body=b"", content_type="application/json")
        if body.get("truncate") is False and any(
                len(t) // 2 > self.embedding_context for t in texts):
            return web.json_response(
                {"error": "the input length exceeds the context length"}, status=400)
        dimensions = body.get("dimensions") or self.embedding_dimensions
        vectors = [fake_embedding(model, text, dimensions) for text in texts]
        if behaviour == "missing_embedding":
            vectors.pop()
        return web.json_response({
            "model": model, "embeddings": vectors, "total_duration": 14143917,
            "load_duration": 1019500,
            "prompt_eval_count": sum(max(1, len(t) // 2) for t in texts)})

    def _generate_refusal(self, body: dict[str, Any], model: str) -> web.Response | None:
        """Ollama's answer to a generate request it refuses before running the model."""
        for key in ("prompt", "suffix", "system"):
            if body.get(key) is not None and not isinstance(body[key], str):
                kind = {list: "array", dict: "object", bool: "bool"}.get(type(body[key]), "number")
                return web.json_response({"error": f"json: cannot unmarshal {kind} into Go "
                                          f"struct field GenerateRequest.{key} of type "
                                          "string"}, status=400)
        name = model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"
        if name in self.embedders:
            return web.json_response({"error": f'"{model}" does not support generate'},
                                     status=400)
        if name not in self.models and name not in self.coders:
            return self._error("not_found", model)
        if body.get("raw") and (body.get("system") or body.get("context")
                                or body.get("template")):
            return web.json_response(
                {"error": "raw mode does not support template, system, or context"},
                status=400)
        if body.get("suffix") and name not in self.coders:
            return web.json_response(
                {"error": f"registry.ollama.ai/library/{name} does not support insert"},
                status=400)
        return None

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        """`POST /api/generate`, Ollama's native completion of a prompt."""
        body = orjson.loads(await request.read())
        self.requests.append(Logged(request.path, dict(request.headers), body))
        model = str(body.get("model", ""))
        behaviour = self._next()
        refusal = self._generate_refusal(body, model)
        if refusal is not None:
            return refusal
        early = await self._answer_preamble(behaviour, model)
        if early is not None:
            return early
        if behaviour == "empty":
            return web.Response(body=b"", content_type="application/json")
        prompt, suffix = body.get("prompt") or "", body.get("suffix") or ""
        options = body.get("options") or {}
        used = max(1, (len(prompt) + len(suffix) + len(body.get("system") or "")) // 2)
        if behaviour == "ok" and body.get("truncate") is False \
                and used > options.get("num_ctx", 4096):
            return self._error("context_size", model)
        if behaviour == "load" or not prompt:
            # Ollama's whole answer, streamed or not: one JSON object, nothing generated
            unload = not prompt and body.get("keep_alive") in (0, "0", "0s")
            return web.json_response({
                "model": model, "created_at": "2025-05-01T10:00:01.0Z", "response": "",
                "done": True, "done_reason": "unload" if unload else "load"})
        pieces, reason = cut_completion(completion_text(self.reply, prompt, suffix),
                                        options.get("num_predict"), options.get("stop"))
        if behaviour == "length":
            reason = "length"
        final: dict[str, Any] = {
            "model": model, "created_at": "2025-05-01T10:00:01.0Z", "response": "",
            "done": True, "done_reason": reason}
        if not body.get("raw"):
            final["context"] = list(range(100, 100 + used + len(pieces)))
        final.update(**_TIMINGS, prompt_eval_count=used, eval_count=len(pieces))
        if body.get("stream") is False:
            if behaviour == "stream_error":
                return web.json_response({"error": _RUN_ERROR}, status=500)
            return web.json_response({**final, "response": "".join(pieces)})
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        if behaviour == "stall":
            await asyncio.sleep(3600)
        for i, piece in enumerate(pieces):
            await resp.write(orjson.dumps({"model": model,
                                           "created_at": "2025-05-01T10:00:00.5Z",
                                           "response": piece, "done": False}) + b"\n")
            if behaviour == "cut_stream" and i == 1:
                return cut(request, resp)
            if behaviour == "stream_error" and i == 1:
                await resp.write(orjson.dumps({"error": _RUN_ERROR}) + b"\n")
                return resp
        if behaviour != "no_done":
            await resp.write(orjson.dumps(final) + b"\n")
        return resp

    def _calls(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        tools = body.get("tools") or ()
        last = (body.get("messages") or [{}])[-1]
        if not tools or last.get("role") == "tool":
            return []
        name = tools[0]["function"]["name"]
        return [{"function": {"name": name, "arguments": {"city": f"Paris{i or ''}"}}}
                for i in range(self.tool_calls)]

    @staticmethod
    def prompt_tokens(body: dict[str, Any]) -> int:
        """The prompt's size as the fake's tokenizer sees it: a token per two characters,
        harsher than failoverd's estimate, as dense text is."""
        return sum(len(str(m.get("content") or "")) for m in body.get("messages") or ()) // 2

    def _final(self, model: str, reason: str) -> dict[str, Any]:
        return {"model": model, "created_at": "2025-05-01T10:00:01.0Z",
                "message": {"role": "assistant", "content": ""}, "done_reason": reason,
                "done": True, **_TIMINGS, "prompt_eval_count": 26, "eval_count": 7}

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append(Logged(request.path, dict(request.headers), body))
        model = str(body.get("model", ""))
        behaviour = self._next()
        refusal = _invalid(body)
        if refusal is not None:
            return web.json_response({"error": refusal}, status=400)
        early = await self._answer_preamble(behaviour, model)
        if early is not None:
            return early
        if behaviour == "empty":
            return web.Response(body=b"", content_type="application/json")
        if behaviour == "ok" and body.get("truncate") is False \
                and self.prompt_tokens(body) > (body.get("options") or {}).get("num_ctx", 4096):
            return self._error("context_size", model)
        reason = "length" if behaviour == "length" else "stop"
        if behaviour == "load":
            # Ollama's whole answer (streamed or not): one done object, nothing generated
            final = {"model": model, "created_at": "2025-05-01T10:00:01.0Z",
                     "message": {"role": "assistant", "content": ""}, "done_reason": "load",
                     "done": True}
            if body.get("stream", True):
                return web.Response(body=orjson.dumps(final) + b"\n",
                                    content_type="application/x-ndjson")
            return web.json_response(final)
        if body.get("stream", True):
            return await self._stream(request, body, behaviour, model, reason)
        if behaviour == "thinking_only":
            return web.json_response({**self._final(model, reason), "message": {
                "role": "assistant", "content": "", "thinking": self.reply}})
        calls = self._calls(body)
        message: dict[str, Any] = {"role": "assistant", "content": "" if calls else self.reply}
        if calls:
            message["tool_calls"] = calls
        return web.json_response({**self._final(model, reason), "message": message})

    async def _stream(self, request: web.Request, body: dict[str, Any], behaviour: str,
                      model: str, reason: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        if behaviour == "stall":
            await asyncio.sleep(3600)

        async def send(obj: dict[str, Any]) -> None:
            await resp.write(orjson.dumps(obj) + b"\n")

        def piece(message: dict[str, Any]) -> dict[str, Any]:
            return {"model": model, "created_at": "2025-05-01T10:00:00.5Z",
                    "message": {"role": "assistant", **message}, "done": False}

        calls = self._calls(body)
        if behaviour == "thinking_only":
            for word in self.reply.split(" "):
                await send(piece({"content": "", "thinking": word + " "}))
        elif calls:
            await send(piece({"content": "", "tool_calls": calls}))
        else:
            for i, word in enumerate(self.reply.split(" ")):
                await send(piece({"content": word if i == 0 else " " + word}))
                if behaviour == "cut_stream" and i == 1:
                    return cut(request, resp)
                if behaviour == "stream_error" and i == 1:
                    await send({"error": "an error was encountered while running the model: "
                                         "unexpected EOF"})
                    return resp
        if behaviour != "no_done":
            await send(self._final(model, reason))
        return resp


def _invalid(body: dict[str, Any]) -> str | None:
    """Ollama's 400 for a body its Go types refuse: tool-call arguments that are not an
    object (the OpenAI form's JSON text), a content that is not a string, images that are
    not base64 strings."""
    for message in body.get("messages") or []:
        if not isinstance(message.get("content", ""), str):
            return ("json: cannot unmarshal array into Go struct field Message.messages.content "
                    "of type string")
        for call in message.get("tool_calls") or []:
            if not isinstance((call.get("function") or {}).get("arguments"), dict):
                return ("json: cannot unmarshal string into Go struct field "
                        "ToolCallFunction.messages.tool_calls.function.arguments of type "
                        "api.ToolCallFunctionArguments")
        for image in message.get("images") or []:
            if not isinstance(image, str) or image.startswith(("data:", "http")):
                return "illegal base64 data at input byte 4"
    return None
