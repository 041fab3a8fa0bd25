"""A fake Anthropic Messages API: a real aiohttp server on 127.0.0.1 speaking the wire format.

`fake.push("overloaded", "ok")` scripts the next requests; `fake.default` answers the rest.
Every request is logged (`fake.requests`) with its headers and parsed body. Streams use the
real SSE event sequence (message_start, content_block_start/delta/stop with text_delta,
input_json_delta, thinking_delta and signature_delta, message_delta with stop_reason and usage,
message_stop, ping). With thinking enabled the answer starts with a thinking block signed by
`signature(text)`; a thinking block sent back with any other signature is refused, as the API
refuses one it did not sign.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict

from tests.fakes.base import FakeServer, cut


def signature(thinking: str) -> str:
    """The fake's signature of a thinking text (the API's is opaque; this one it can check)."""
    return base64.b64encode(hashlib.sha256(b"fake-anthropic:" + thinking.encode()).digest()
                            ).decode()


def _err(type_: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": type_, "message": message},
                         "request_id": "req_011CTestFake"})


# Error bodies as api.anthropic.com sends them.
ERRORS: dict[str, tuple[int, bytes, dict[str, str]]] = {
    "overloaded": (529, _err("overloaded_error", "Overloaded"), {}),
    "overloaded_503": (503, _err("overloaded_error", "Overloaded"), {}),
    # over the 32 MB a Messages request may have (Anthropic's errors page)
    "request_too_large": (413, _err("request_too_large",
                                    "Request exceeds the maximum allowed number of bytes."), {}),
    "rate_limit": (429, _err(
        "rate_limit_error", "This request would exceed the rate limit for your organization "
        "of 50 input tokens per minute. For details, refer to: "
        "https://docs.claude.com/en/api/rate-limits."), {"retry-after": "7"}),
    "auth": (401, _err("authentication_error", "invalid x-api-key"), {}),
    "permission": (403, _err("permission_error",
                             "Your API key does not have permission to use the specified "
                             "resource."), {}),
    "not_found": (404, _err("not_found_error", "model: claude-nope-9"), {}),
    "too_long": (400, _err("invalid_request_error",
                           "prompt is too long: 215012 tokens > 200000 maximum"), {}),
    "credit": (400, _err("invalid_request_error",
                         "Your credit balance is too low to access the Anthropic API. Please "
                         "go to Plans & Billing to upgrade or purchase credits."), {}),
    "bad_request": (400, _err("invalid_request_error",
                              "messages.0.content.0.text: text content blocks must be "
                              "non-empty"), {}),
    "api_error": (500, _err("api_error", "Internal server error"), {}),
    # the organization's monthly spend limit (a 400, not a 429)
    "spend_limit": (400, _err("invalid_request_error",
                              "You have reached your specified API usage limits. You will "
                              "regain access on 2026-04-01 at 00:00 UTC."), {}),
    "org_disabled": (400, _err("invalid_request_error",
                               "This organization has been disabled."), {}),
    # a max_tokens above what this model can write (another model may take it)
    "max_tokens_over": (400, _err("invalid_request_error",
                                  "max_tokens: 100000 > 64000, which is the maximum allowed "
                                  "number of output tokens for claude-sonnet-4-5-20250929"), {}),
}


# what POST /v1/messages/count_tokens takes
COUNT_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking",
                          "mcp_servers"})

REFUSAL_DETAILS = {"type": "refusal", "category": "cyber",
                   "explanation": "This request was declined because it could enable cyber "
                                  "harm."}


@dataclass
class Logged:
    method: str
    path: str
    headers: CIMultiDict[str]  # case-insensitive, as HTTP headers are
    body: Any


@dataclass
class FakeAnthropic(FakeServer[Logged]):
    """Behaviours: "ok", any key of ERRORS, "hang", "invalid_json", "cut_stream" (connection
    dropped mid-stream), "stream_error" (an `event: error` mid-stream), "no_stop" (the stream
    ends cleanly but without message_stop), "refusal" (a 200 with stop_reason "refusal" and
    stop_details, as the safety classifiers stop an answer: streamed, before any block),
    "empty" (a 200 with no content and end_turn, as the API documents it after tool results),
    "max_tokens_in_call" (streaming: max_tokens reached halfway through the tool call's input,
    which stays partial JSON, stop_reason "max_tokens").
    A tool whose input_schema has no properties is called with input {} (streamed as one
    empty input_json_delta). Like the API, a reply that contains one of the
    request's `stop_sequences` ends before it with stop_reason "stop_sequence". Requests the API
    refuses in validation (see `_invalid`) get its 400 whatever the script says."""

    reply: str = "Hello from the fake Anthropic"
    thinking: str = "The user wants an answer; let me think."
    # prompt caching: the prefixes written to the cache (see `_cache_usage`)
    cached: set[bytes] = field(default_factory=set, kw_only=True)

    errors = ERRORS
    truncated = b'{"id": "msg_1", "content": ['

    def message_requests(self) -> list[Logged]:
        return [r for r in self.requests if r.path == "/v1/messages"]

    def _routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/messages", self._messages)
        router.add_post("/v1/messages/count_tokens", self._count_tokens)
        router.add_get("/v1/models", self._models)

    def _error(self, name: str, model: str) -> web.Response:
        status, body, headers = ERRORS[name]
        return web.Response(status=status, body=body, headers=headers,
                            content_type="application/json")

    async def _models(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Logged("GET", request.path, request.headers.copy(), None))
        return await self._preamble(self._next(), slow=False) or web.json_response({"data": [{
            "type": "model", "id": "claude-test-1", "display_name": "Claude Test",
            "created_at": "2025-01-01T00:00:00Z"}], "has_more": False,
            "first_id": "claude-test-1", "last_id": "claude-test-1"})

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        """As the API counts: model and messages required, only the fields it documents
        (max_tokens or stream are "Extra inputs are not permitted"); the count here is one
        token per 4 bytes of JSON of what is counted, plus 3."""
        body = orjson.loads(await request.read())
        self.requests.append(Logged("POST", request.path, request.headers.copy(), body))
        early = await self._answer_preamble(self._next(), slow=False)
        if early is not None:
            return early
        extra = sorted(set(body) - COUNT_FIELDS)
        if extra:
            return web.Response(status=400, body=_err(
                "invalid_request_error", f"{extra[0]}: Extra inputs are not permitted"),
                content_type="application/json")
        if not isinstance(body.get("messages"), list) or not body.get("model"):
            return web.Response(status=400, body=_err(
                "invalid_request_error", "messages: Field required"),
                content_type="application/json")
        counted = orjson.dumps({k: body[k] for k in sorted(body) if k != "model"})
        return web.json_response({"input_tokens": len(counted) // 4 + 3})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append(Logged("POST", request.path, request.headers.copy(), body))
        behaviour = self._next()
        refusal = _invalid(body) or _invalid_cache(body)
        if refusal is not None:
            return web.Response(status=400, body=_err("invalid_request_error", refusal),
                                content_type="application/json")
        early = await self._answer_preamble(behaviour, slow=False)
        if early is not None:
            return early
        if body.get("stream"):
            return await self._stream(request, body, behaviour)
        message = self._message(body)
        if behaviour == "refusal":
            message.update(content=[{"type": "text", "text": "Hello.."}], stop_reason="refusal",
                           stop_details=REFUSAL_DETAILS)
        elif behaviour == "empty":
            message.update(content=[], stop_reason="end_turn")
        return web.json_response(message)

    def _content(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
        if body.get("tools"):
            tool = body["tools"][0]
            has_params = bool((tool.get("input_schema") or {}).get("properties"))
            return [{"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "toolu_01Fake", "name": tool["name"],
                     "input": {"city": "Paris", "days": 2} if has_params else {}}], "tool_use"
        fmt = (body.get("output_config") or {}).get("format")
        if fmt is not None:  # structured outputs: a JSON text that fits the schema
            return [{"type": "text", "text": orjson.dumps(_instance(fmt["schema"])).decode()}
                    ], "end_turn"
        sequence = _stop_sequence(self.reply, body)
        if sequence is not None:
            return [{"type": "text", "text": self.reply.split(sequence)[0]}], "stop_sequence"
        return [{"type": "text", "text": self.reply}], "end_turn"

    def _thought(self, body: dict[str, Any], content: list[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
        """With thinking enabled the answer starts with a signed thinking block, as the API's."""
        if (body.get("thinking") or {}).get("type") != "enabled":
            return content
        return [{"type": "thinking", "thinking": self.thinking,
                 "signature": signature(self.thinking)}, *content]

    def _cache_usage(self, body: dict[str, Any]) -> dict[str, int]:
        """Prompt caching as the API reports it: with breakpoints, the prompt up to the last
        one (tools, system, messages, in that order; the whole prompt for the top-level
        automatic cache_control) is read from the cache when an earlier request wrote the
        same prefix, else written (one token per 4 bytes of its JSON); without breakpoints
        the fake's fixed counts."""
        blocks = _prompt_blocks(body)
        marks = [i for i, block in enumerate(blocks) if "cache_control" in block]
        if body.get("cache_control") is not None:
            marks.append(len(blocks) - 1)
        if not marks:
            return {"input_tokens": 12, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 3}
        prefix = orjson.dumps([{k: v for k, v in block.items() if k != "cache_control"}
                               for block in blocks[:max(marks) + 1]])
        tokens = len(prefix) // 4
        if prefix in self.cached:
            return {"input_tokens": 5, "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": tokens}
        self.cached.add(prefix)
        return {"input_tokens": 5, "cache_creation_input_tokens": tokens,
                "cache_read_input_tokens": 0}

    def _message(self, body: dict[str, Any]) -> dict[str, Any]:
        content, stop = self._content(body)
        content = self._thought(body, content)
        return {"id": "msg_01Fake", "type": "message", "role": "assistant",
                "model": body.get("model"), "content": content, "stop_reason": stop,
                "stop_sequence": _stop_sequence(self.reply, body) if stop == "stop_sequence"
                else None,
                "usage": {**self._cache_usage(body), "output_tokens": 7}}

    async def _stream(self, request: web.Request, body: dict[str, Any],
                      behaviour: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(name: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n")

        await send("message_start", {"type": "message_start", "message": {
            "id": "msg_01Fake", "type": "message", "role": "assistant",
            "model": body.get("model"), "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": {**self._cache_usage(body), "output_tokens": 1}}})
        await send("ping", {"type": "ping"})
        content, stop = self._content(body)
        content = self._thought(body, content)
        if behaviour in ("refusal", "empty"):
            content, stop = [], "refusal" if behaviour == "refusal" else "end_turn"
        for index, block in enumerate(content):
            if block["type"] == "thinking":
                await send("content_block_start", {
                    "type": "content_block_start", "index": index,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
                half = len(block["thinking"]) // 2
                for piece in (block["thinking"][:half], block["thinking"][half:]):
                    await send("content_block_delta", {
                        "type": "content_block_delta", "index": index,
                        "delta": {"type": "thinking_delta", "thinking": piece}})
                await send("content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "signature_delta", "signature": block["signature"]}})
            elif block["type"] == "text":
                await send("content_block_start", {"type": "content_block_start",
                                                   "index": index,
                                                   "content_block": {"type": "text",
                                                                     "text": ""}})
                words = block["text"].split(" ")
                for i, word in enumerate(words):
                    await send("content_block_delta", {
                        "type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": word if i == 0 else " " + word}})
                    if behaviour == "cut_stream" and i == 1:
                        return cut(request, resp)
                    if behaviour == "stream_error" and i == 1:
                        await resp.write(b"event: error\ndata: " + _err("overloaded_error",
                                                                       "Overloaded") + b"\n\n")
                        return resp
            else:
                await send("content_block_start", {
                    "type": "content_block_start", "index": index, "content_block": {
                        "type": "tool_use", "id": block["id"], "name": block["name"],
                        "input": {}}})
                # an empty input streams as one empty delta, as the API sends it
                arguments = orjson.dumps(block["input"]).decode() if block["input"] else ""
                if behaviour == "max_tokens_in_call":
                    arguments, stop = arguments[:len(arguments) // 2], "max_tokens"
                for piece in ("", arguments[:9], arguments[9:]) if arguments else ("",):
                    await send("content_block_delta", {
                        "type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece}})
            await send("content_block_stop", {"type": "content_block_stop", "index": index})
        sequence = _stop_sequence(self.reply, body) if stop == "stop_sequence" else None
        delta: dict[str, Any] = {"stop_reason": stop, "stop_sequence": sequence}
        if stop == "refusal":
            delta["stop_details"] = REFUSAL_DETAILS
        await send("message_delta", {"type": "message_delta", "delta": delta,
                                     "usage": {"output_tokens": 7}})
        if behaviour != "no_stop":
            await send("message_stop", {"type": "message_stop"})
        return resp


_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def _invalid(body: dict[str, Any]) -> str | None:
    """The API's 400 message for a request it validates and refuses, else None: forced tool
    use with thinking, tool_use ids off the pattern or repeated, tool results that answer no
    tool_use of the previous turn and tool_use blocks the next turn does not answer, empty text
    blocks and turns whose text is all whitespace, a thinking block whose signature is not
    the fake's own (empty, or made by another model), and a tool loop whose assistant turn
    lacks its thinking."""
    thinking = (body.get("thinking") or {}).get("type") == "enabled"
    if thinking and (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        return "Thinking may not be enabled when tool_choice forces tool use."
    seen: set[str] = set()
    previous: set[str] = set()
    messages = body.get("messages") or []
    for i, message in enumerate(messages):
        blocks = message["content"] if isinstance(message["content"], list) else []
        texts = [b.get("text") for b in blocks if b.get("type") == "text"]
        if any(t == "" for t in texts) or message["content"] == "":
            return "messages: text content blocks must be non-empty"
        if texts and not any(t.strip() for t in texts):
            return "messages: text content blocks must contain non-whitespace text"
        answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
        if previous - answered:
            return (f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(sorted(previous - answered))}. Each "
                    "`tool_use` block must have a corresponding `tool_result` block in the "
                    "next message.")
        used: set[str] = set()
        for j, block in enumerate(blocks):
            if block.get("type") == "tool_use":
                if not _TOOL_ID.match(block["id"]):
                    return (f"messages.{i}.content.{j}.tool_use.id: String should match "
                            "pattern '^[a-zA-Z0-9_-]+$'")
                if block["id"] in seen:
                    return f"messages.{i}.content.{j}: `tool_use` ids must be unique"
                seen.add(block["id"])
                used.add(block["id"])
            elif block.get("type") == "thinking" and \
                    block.get("signature") != signature(str(block.get("thinking"))):
                return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
            elif block.get("type") == "tool_result" and block["tool_use_id"] not in previous:
                return (f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {block['tool_use_id']}. Each `tool_result` "
                        "block must have a corresponding `tool_use` block in the previous "
                        "message.")
        previous = used
    last = messages[-1] if messages else {}
    if thinking and len(messages) >= 2 and any(
            b.get("type") == "tool_result" for b in last.get("content") or []
            if isinstance(b, dict)):
        first = (messages[-2].get("content") or [{}])[0]
        if first.get("type") not in ("thinking", "redacted_thinking"):
            return (f"messages.{len(messages) - 2}.content.0.type: Expected `thinking` or "
                    f"`redacted_thinking`, but found `{first.get('type')}`. When `thinking` is "
                    "enabled, a final `assistant` message must start with a thinking block.")
    return None


def _prompt_blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The prompt in the order the cache reads it: tools, system blocks, message blocks."""
    blocks: list[dict[str, Any]] = list(body.get("tools") or [])
    system = body.get("system")
    if isinstance(system, list):
        blocks.extend(system)
    elif system:
        blocks.append({"type": "text", "text": system})
    for message in body.get("messages") or []:
        content = message.get("content")
        blocks.extend(content if isinstance(content, list) else
                      [{"type": "text", "text": content}])
    return blocks


def _invalid_cache(body: dict[str, Any]) -> str | None:
    """The API's 400 for breakpoints it refuses: more than 4 (the top-level automatic one
    counts), a type other than ephemeral, a ttl other than 5m or 1h, one on a thinking
    block or an empty text block."""
    found = 1 if body.get("cache_control") is not None else 0
    for block in [body] + _prompt_blocks(body):
        cache = block.get("cache_control")
        if cache is None:
            continue
        if block is not body:
            found += 1
        if not isinstance(cache, dict) or cache.get("type") != "ephemeral":
            return "cache_control.type: Input should be 'ephemeral'"
        if cache.get("ttl", "5m") not in ("5m", "1h"):
            return "cache_control.ttl: Input should be '5m' or '1h'"
        if block.get("type") in ("thinking", "redacted_thinking"):
            return "cache_control cannot be set for thinking blocks"
        if block.get("type") == "text" and not block.get("text"):
            return "cache_control cannot be set for empty text blocks"
    if found > 4:
        return f"A maximum of 4 blocks with cache_control may be provided. Found {found}."
    return None


def _instance(schema: dict[str, Any]) -> Any:
    """A value that fits a (simple) JSON schema, as structured outputs guarantee one."""
    kind = schema.get("type")
    if kind == "object":
        return {name: _instance(sub) for name, sub in (schema.get("properties") or {}).items()}
    return {"string": "Paris", "integer": 21, "number": 21.5, "boolean": True,
            "array": []}.get(str(kind))


def _stop_sequence(reply: str, body: dict[str, Any]) -> str | None:
    """The request's stop sequence that occurs first in `reply`, as the API picks it."""
    found = [(reply.find(s), s) for s in body.get("stop_sequences") or [] if s and s in reply]
    return min(found)[1] if found else None
