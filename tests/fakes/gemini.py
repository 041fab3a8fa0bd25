"""A fake Gemini API (generativelanguage v1beta): a real aiohttp server on 127.0.0.1.

Speaks `models/{name}:generateContent`, `:streamGenerateContent?alt=sse`,
`:batchEmbedContents`, `GET models` and `GET models/{name}` with Gemini's real error bodies.
Tests script it like the OpenAI fake: `fake.push("rate_limit", "ok")`; `fake.default`
answers unscripted requests; every request is logged in `fake.requests`. Reuse it from any
test module with `from tests.fakes.gemini import fake_gemini` (a fixture returning a factory).
"""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.base import FakeServer, cut, event_stream
from tests.fakes.openai import EMBEDDING_DIMENSIONS, fake_embedding


def _err(code: int, status: str, message: str, *details: dict[str, Any]) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return orjson.dumps({"error": error})


_RETRY = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "38s"}
_HELP = {"@type": "type.googleapis.com/google.rpc.Help", "links": [
    {"description": "Learn more about Gemini API quotas",
     "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]}
_KEY_INVALID = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"}}
_PREPAY = ("Your prepayment credits are depleted. Please go to AI Studio at "
           "https://ai.studio/projects to manage your project and billing. Learn more at "
           "https://ai.google.dev/gemini-api/docs/billing#prepay.")

# Error bodies as the Gemini API really sends them: (http status, body).
ERRORS: dict[str, tuple[int, bytes]] = {
    "rate_limit": (429, _err(
        429, "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
        "\n* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_"
        "tier_requests, limit: 10, model: gemini-2.5-flash\nPlease retry in 38.2s.",
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
            {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_"
                            "requests", "quotaId": "GenerateRequestsPerMinutePerProjectPerModel"
                                                   "-FreeTier"}]}, _HELP, _RETRY)),
    "quota_zero": (429, _err(
        429, "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.\n* Quota "
        "exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_"
        "input_token_count, limit: 0, model: gemini-2.5-pro", _HELP)),
    # prepaid credits used up: a 402 since Google's 2026 change, a 429 before it
    "prepay_depleted": (402, _err(402, "RESOURCE_EXHAUSTED", _PREPAY)),
    "prepay_depleted_429": (429, _err(429, "RESOURCE_EXHAUSTED", _PREPAY)),
    "spend_cap": (429, _err(
        429, "RESOURCE_EXHAUSTED", "Your billing account has exceeded its monthly spending cap. "
        "Please go to AI Studio at https://aistudio.google.com to manage your billing. Learn "
        "more at https://ai.google.dev/gemini-api/docs/billing.")),
    "overloaded": (503, _err(503, "UNAVAILABLE",
                             "The model is overloaded. Please try again later.")),
    "server_error": (500, _err(
        500, "INTERNAL", "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting")),
    "deadline": (504, _err(504, "DEADLINE_EXCEEDED", "The request timed out. Please try again.")),
    "bad_key": (400, _err(400, "INVALID_ARGUMENT",
                          "API key not valid. Please pass a valid API key.", _KEY_INVALID)),
    "unauthenticated": (401, _err(
        401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 "
        "access token, login cookie or other valid authentication credential.")),
    "permission_denied": (403, _err(
        403, "PERMISSION_DENIED", "Your API key was reported as leaked. Please use another API "
        "key.")),
    "forbidden_key": (403, _err(403, "PERMISSION_DENIED",
                                "API key not valid. Please pass a valid API key.")),
    "context": (400, _err(
        400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of "
        "tokens allowed (1048576).")),
    "not_found": (404, _err(
        404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta, or is not "
        "supported for generateContent. Call ListModels to see the list of available models "
        "and their supported methods.")),
    "billing": (400, _err(
        400, "FAILED_PRECONDITION", "Gemini API free tier is not available in your country. "
        "Please enable billing on your project in Google AI Studio.")),
    "location": (400, _err(400, "FAILED_PRECONDITION",
                           "User location is not supported for the API use.")),
    "bad_request": (400, _err(
        400, "INVALID_ARGUMENT", 'Invalid JSON payload received. Unknown name "foo": Cannot '
        'find field.')),
}

USAGE = {"promptTokenCount": 9, "candidatesTokenCount": 6, "totalTokenCount": 15}
MAX_BATCH = 100  # batchEmbedContents' limit on the requests of one call


@dataclass
class Logged:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeGemini(FakeServer[Logged]):
    """Behaviours: "ok", any key of ERRORS, "hang" (no answer), "stall" (stream headers, then
    nothing), "slow:<seconds>", "invalid_json", "empty" (`{}`), "blocked" (promptFeedback),
    "safety" (candidate stopped by SAFETY), "max_tokens", "cut_stream", "no_finish" (stream
    ends without finishReason), "stream_error" (error event mid-stream).

    With tools declared and no function result in the last turn the answer is
    `tool_calls` function calls of the first declared function.

    With `thinking` (a thinking model, as Gemini 3 and 2.5 are; off with a thinkingBudget of
    0) the first function call of an answer carries a `thoughtSignature` of its own making,
    recorded in `signed`; a replayed function call with a signature it did not make (nor the
    documented placeholder) is refused as the API refuses it.

    `models/{name}:batchEmbedContents` answers each of its requests with one
    `fake_embedding(name, text, outputDimensionality)` vector (the texts of a content's
    parts joined; `embedding_dimensions` long unless outputDimensionality is given), and
    refuses as the API does more than 100 requests in one call and a request whose model is
    not a "models/..." name. Behaviours besides the shared ones ("ok", any key of ERRORS,
    "hang", "slow:<seconds>", "invalid_json", "empty" (`{}`)): "missing_embedding" (a 200 with
    one embedding fewer than the requests).
    """

    reply: str = "Hello from the fake Gemini"
    tool_calls: int = 1
    thinking: bool = True
    signed: list[str] = field(default_factory=list, kw_only=True)
    embedding_dimensions: int = EMBEDDING_DIMENSIONS

    errors = ERRORS
    truncated = b'{"candidates": ['

    def chat_requests(self) -> list[Logged]:
        return [r for r in self.requests if "GenerateContent" in r.path
                or r.path.endswith(":generateContent")]

    def embed_requests(self) -> list[Logged]:
        return [r for r in self.requests if r.path.endswith(":batchEmbedContents")]

    def _routes(self, router: web.UrlDispatcher) -> None:
        # before the route of every other method: model and method share the last segment
        router.add_post("/v1beta/models/{model}:batchEmbedContents", self._embed)
        router.add_post("/v1beta/models/{target}", self._generate)
        router.add_get("/v1beta/models", self._list)
        router.add_get("/v1beta/models/{name}", self._get)

    def _log(self, request: web.Request, body: Any) -> None:
        self.requests.append(Logged(request.path, dict(request.query), dict(request.headers),
                                    body))

    def _error(self, name: str, model: str) -> web.Response:
        status, body = ERRORS[name]
        return web.Response(status=status, body=body, content_type="application/json")

    async def _list(self, request: web.Request) -> web.StreamResponse:
        self._log(request, None)
        return await self._preamble(self._next()) or web.json_response({"models": [
            self._model("gemini-2.5-flash")], "nextPageToken": "x"})

    async def _get(self, request: web.Request) -> web.StreamResponse:
        self._log(request, None)
        return await self._preamble(self._next()) or web.json_response(
            self._model(request.match_info["name"]))

    @staticmethod
    def _model(name: str) -> dict[str, Any]:
        return {"name": f"models/{name}", "version": "001", "displayName": name,
                "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
                "supportedGenerationMethods": ["generateContent", "countTokens"]}

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self._log(request, body)
        behaviour = self._next()
        refusal = _invalid(body) or self._foreign_signature(body)
        if refusal is not None:
            return web.Response(status=400, body=_err(400, "INVALID_ARGUMENT", refusal),
                                content_type="application/json")
        early = await self._answer_preamble(behaviour)
        if early is not None:
            return early
        if behaviour == "empty":
            return web.json_response({})
        if behaviour == "blocked":
            return web.json_response({"promptFeedback": {"blockReason": "SAFETY"},
                                      "usageMetadata": {"promptTokenCount": 9,
                                                        "totalTokenCount": 9}})
        streaming = request.match_info["target"].endswith(":streamGenerateContent")
        if streaming:
            return await self._stream(request, body, behaviour)
        return web.json_response(self._answer(body, behaviour))

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self._log(request, body)
        behaviour = self._next()
        model = request.match_info["model"]
        requests = body.get("requests")
        refusal = _invalid_batch(requests)
        if refusal is not None:
            return web.Response(status=400, body=_err(400, "INVALID_ARGUMENT", refusal),
                                content_type="application/json")
        early = await self._answer_preamble(behaviour, model)
        if early is not None:
            return early
        if behaviour == "empty":
            return web.json_response({})
        vectors: list[list[float]] = []
        for req in requests:
            text = "".join(part.get("text", "") for part in req["content"]["parts"])
            size = req.get("outputDimensionality") or self.embedding_dimensions
            vectors.append(fake_embedding(model, text, size))
        if behaviour == "missing_embedding":
            vectors.pop()
        return web.json_response({"embeddings": [{"values": v} for v in vectors]})

    def _calls(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        decls = [d for t in body.get("tools") or () for d in t.get("functionDeclarations", ())]
        last = (body.get("contents") or [{}])[-1].get("parts") or ()
        if not decls or any("functionResponse" in p for p in last):
            return []
        calls = [{"functionCall": {"name": decls[0]["name"], "args": {"city": f"Paris{i or ''}"}}}
                 for i in range(self.tool_calls)]
        budget = ((body.get("generationConfig") or {}).get("thinkingConfig") or {}).get(
            "thinkingBudget")
        if calls and self.thinking and budget != 0:
            # Gemini signs the first call of a step only (the rest of parallel calls go without)
            signature = base64.b64encode(os.urandom(24)).decode()
            self.signed.append(signature)
            calls[0]["thoughtSignature"] = signature
        return calls

    def _foreign_signature(self, body: dict[str, Any]) -> str | None:
        if not self.thinking:
            return None
        for content in body.get("contents") or ():
            for part in content.get("parts") or ():
                signature = part.get("thoughtSignature")
                if "functionCall" in part and signature is not None \
                        and signature not in self.signed \
                        and signature != "skip_thought_signature_validator":
                    return "Corrupted thought signature."
        return None

    def _answer(self, body: dict[str, Any], behaviour: str) -> dict[str, Any]:
        finish = {"safety": "SAFETY", "max_tokens": "MAX_TOKENS"}.get(behaviour, "STOP")
        parts = self._calls(body) or [{"text": self.reply}]
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts},
                                     "finishReason": finish, "index": 0}
        if behaviour == "safety":
            candidate.pop("content")
        return {"candidates": [candidate], "usageMetadata": USAGE,
                "modelVersion": "gemini-2.5-flash", "responseId": "fake-response-1"}

    async def _stream(self, request: web.Request, body: dict[str, Any],
                      behaviour: str) -> web.StreamResponse:
        resp = await event_stream(request)
        if behaviour == "stall":
            await asyncio.sleep(3600)

        async def send(event: dict[str, Any]) -> None:
            await resp.write(b"data: " + orjson.dumps(event) + b"\r\n\r\n")

        def event(parts: list[dict[str, Any]], finish: str | None = None) -> dict[str, Any]:
            cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
            if finish:
                cand["finishReason"] = finish
            return {"candidates": [cand], "usageMetadata": USAGE,
                    "modelVersion": "gemini-2.5-flash", "responseId": "fake-response-1"}

        calls = self._calls(body)
        if calls:
            await send(event(calls, "STOP"))
            return resp
        words = self.reply.split(" ")
        for i, word in enumerate(words):
            last = i == len(words) - 1
            finish = None
            if last and behaviour != "no_finish":
                finish = "MAX_TOKENS" if behaviour == "max_tokens" else "STOP"
            await send(event([{"text": word if i == 0 else " " + word}], finish))
            if behaviour == "cut_stream" and i == 1:
                return cut(request, resp)
            if behaviour == "stream_error" and i == 1:
                await resp.write(b"data: " + ERRORS["server_error"][1] + b"\r\n\r\n")
                return resp
        return resp


def _invalid_batch(requests: Any) -> str | None:
    """The API's 400 (INVALID_ARGUMENT) for a batchEmbedContents body it refuses."""
    if not isinstance(requests, list) or not requests:  # (the fake's own words)
        return "* BatchEmbedContentsRequest.requests: requests must not be empty"
    if len(requests) > MAX_BATCH:
        return ("* BatchEmbedContentsRequest.requests: at most 100 requests can be in one "
                "batch")
    for i, req in enumerate(requests):
        if not str(req.get("model", "")).startswith("models/"):
            return f"* BatchEmbedContentsRequest.requests[{i}].model: unexpected model name format"
        parts = (req.get("content") or {}).get("parts")
        if not parts:
            return (f"* BatchEmbedContentsRequest.requests[{i}].content.parts: contents.parts "
                    "must not be empty.")
    return None


def _invalid(body: dict[str, Any]) -> str | None:
    """The API's 400 for contents it refuses in validation (INVALID_ARGUMENT): a role other
    than user and model, a turn without parts, an empty text part, a function call turn that
    follows neither a user turn nor function responses, function responses that do not
    answer the calls of the turn before them one for one, a conversation that ends on a model
    turn (a prefill), and (Gemini 3, and 2.5 thinking) a
    function call turn of the current turn whose first call has no thoughtSignature."""
    contents = body.get("contents") or []
    if contents and contents[-1].get("role") == "model":
        return ("Please ensure that multiturn requests ends with a user role or a function "
                "response.")
    # the current turn: everything after the last user turn with text (not only responses)
    current = max((i for i, c in enumerate(contents) if c.get("role") == "user" and any(
        "text" in p for p in c.get("parts") or [])), default=-1)
    for i, content in enumerate(contents):
        role, parts = content.get("role"), content.get("parts") or []
        if role not in ("user", "model"):
            return "Please use a valid role: user, model."
        if not parts:
            return (f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be "
                    "empty.")
        for j, part in enumerate(parts):
            if "text" in part and not part["text"] and "thoughtSignature" not in part:
                return (f"* GenerateContentRequest.contents[{i}].parts[{j}].data: required "
                        "oneof field 'data' must have one initialized field")
        calls = [p for p in parts if "functionCall" in p]
        responses = [p for p in parts if "functionResponse" in p]
        before = contents[i - 1] if i else None
        before_parts = (before or {}).get("parts") or []
        if calls:
            after_user = before is not None and before.get("role") == "user"
            if not after_user:
                return ("Please ensure that function call turn comes immediately after a user "
                        "turn or after a function response turn.")
            if i > current and "thoughtSignature" not in calls[0]:
                name = calls[0]["functionCall"].get("name")
                return ("Function call is missing a thought_signature in functionCall parts. "
                        "This is required for tools to work correctly, and missing "
                        "thought_signature may lead to degraded model performance. Additional "
                        f"data, function call `default_api:{name}` , position {i + 1}. Please "
                        "refer to https://ai.google.dev/gemini-api/docs/thought-signatures for "
                        "more details.")
        if responses:
            asked = [p for p in before_parts if "functionCall" in p]
            if not asked or (before or {}).get("role") != "model":
                return ("Please ensure that function response turn comes immediately after a "
                        "function call turn.")
            if len(responses) != len(asked):
                return ("Please ensure that the number of function response parts is equal to "
                        "the number of function call parts of the function call turn.")
    return None
