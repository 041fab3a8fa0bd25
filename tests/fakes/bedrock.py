"""A fake Amazon Bedrock Runtime (Converse API): a real aiohttp server on 127.0.0.1.

Speaks ``POST /model/{modelId}/converse`` (JSON) and ``/model/{modelId}/converse-stream``
(``application/vnd.amazon.eventstream`` binary frames with real CRCs), with Bedrock's error
bodies (``{"message": ...}``) and ``x-amzn-ErrorType`` headers. It authenticates every request
as Bedrock does: a Bedrock API key (``Authorization: Bearer``) or an AWS Signature Version 4
it recomputes from the request as received (its own implementation, with the secret it
knows: double-encoded path, the signed headers the request names, the body's hash, a clock
skew of at most 5 minutes). It validates Converse's rules the real API enforces (alternating
turns beginning with the user, no blank text, tool blocks only with a toolConfig, results that
answer the calls before them, known top-level keys), and what the Claude models behind it
refuse (a prefill ending in whitespace; temperature with top_p from Opus 4.1 and Sonnet /
Haiku 4.5 on). Tool calls stream their input a few bytes at a time (`tool_input` sets it; an
empty one comes as one empty delta, as Claude's does). Prompt caching: cachePoint blocks are
refused where Bedrock refuses them (a model without prompt caching, Nova's tools, more than 4,
a 1h ttl before Claude 4.5 or after a 5m one), and with them the usage reports the prefix up
to the last one as written to the cache, or read when an earlier request wrote it. Extended
thinking: where `additionalModelRequestFields.thinking` is enabled the answer starts with a
reasoning block (`thinking`, signed as the fake Anthropic signs, after a redactedContent block
when `redacted` is set; streamed as text, then signature pieces), and Claude's rules are
enforced (only the models that think, a budget of 1024 to maxTokens - 1, no temperature or
topP and no forced tool call with it, a tool loop's last turn starting with its thinking,
reasoning blocks only towards the models that think and with the fake's signature).

CountTokens (``POST /model/{modelId}/count-tokens``) counts a ``converse`` or ``invokeModel``
input for Claude's foundation model ids, and refuses any other id as Bedrock does.

Tests take the `fake_bedrock` fixture (a factory) from here. Script it like the other fakes:
``fake.push("throttled", "ok")``; every request is logged in ``fake.requests`` (raw path,
headers, parsed body). Behaviours: "ok", any key of ERRORS,
"hang", "slow:<seconds>", "invalid_json", "empty" (end_turn, no content), "max_tokens",
"guardrail", and for streams "stall" (messageStart, then nothing), "exception_first" (a
throttlingException frame before any content), "exception_mid" (a modelStreamErrorException
after some text), "bad_crc" (a frame whose message CRC is wrong), "cut_stream" (the connection
dropped mid-answer), "no_stop" (the stream ends without messageStop).
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import hashlib
import hmac
import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

import orjson
from aiohttp import web

from tests.fakes.anthropic import signature
from tests.fakes.base import FakeServer, cut, fake_fixture

ACCESS_KEY = "AKIAFAKEBEDROCK00001"
SECRET_KEY = "fake/Secret+Key/for/failoverd/tests00000"
API_KEY = "ABSKZmFrZS1iZWRyb2NrLWtleQ=="  # a Bedrock API key's shape
USAGE = {"inputTokens": 12, "outputTokens": 6, "totalTokens": 18}
_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"
_BODY = web.RequestKey("converse", dict)  # a request's parsed body, for its stream


def _err(status: int, kind: str, message: str) -> tuple[int, str, bytes]:
    return status, kind, orjson.dumps({"message": message})


# Errors as the Bedrock Runtime sends them: (status, x-amzn-ErrorType name, body).
ERRORS: dict[str, tuple[int, str, bytes]] = {
    # Bedrock's token-rate throttle words it like a context error: the type must decide
    "throttled": _err(429, "ThrottlingException",
                      "Too many tokens, please wait before trying again."),
    "throttled_requests": _err(429, "ThrottlingException",
                               "Too many requests, please wait before trying again."),
    "unavailable": _err(503, "ServiceUnavailableException",
                        "Bedrock is unable to process your request."),
    "not_ready": _err(429, "ModelNotReadyException",
                      "Model is not ready for inference. Wait and try your request again."),
    "quota": _err(400, "ServiceQuotaExceededException",
                  "Your request exceeds the service quota for your account. You can view your "
                  "quotas at https://console.aws.amazon.com/servicequotas/. You can resubmit "
                  "your request later."),
    "access_denied": _err(403, "AccessDeniedException",
                          "User: arn:aws:iam::123456789012:user/failoverd is not authorized to "
                          "perform: bedrock:InvokeModel on resource: arn:aws:bedrock:us-east-1::"
                          "foundation-model/amazon.nova-pro-v1:0 because no identity-based "
                          "policy allows the bedrock:InvokeModel action"),
    # a role that may call Converse but not CountTokens
    "count_denied": _err(403, "AccessDeniedException",
                         "User: arn:aws:sts::123456789012:assumed-role/failoverd/i-0abc is not "
                         "authorized to perform: bedrock:CountTokens on resource: arn:aws:"
                         "bedrock:us-east-1::foundation-model/anthropic.claude-sonnet-4-"
                         "20250514-v1:0 because no identity-based policy allows the "
                         "bedrock:CountTokens action"),
    "no_model_access": _err(403, "AccessDeniedException",
                            "You don't have access to the model with the specified model ID."),
    "payment": _err(403, "AccessDeniedException",
                    "Model access is denied due to INVALID_PAYMENT_INSTRUMENT:A valid payment "
                    "instrument must be provided."),
    # a third-party model (Anthropic's) whose Marketplace subscription the role may not make:
    # Amazon's own models still answer
    "marketplace": _err(403, "AccessDeniedException",
                        "Model access is denied due to IAM user or service role is not "
                        "authorized to perform the required AWS Marketplace actions "
                        "(aws-marketplace:ViewSubscriptions, aws-marketplace:Subscribe) to "
                        "enable access to this model. Refer to the Amazon Bedrock documentation "
                        "for further details. Your AWS Marketplace subscription for this model "
                        "cannot be completed at this time. If you recently fixed this issue, "
                        "try again after 2 minutes."),
    "expired": _err(403, "ExpiredTokenException",
                    "The security token included in the request is expired"),
    "bad_token": _err(403, "UnrecognizedClientException",
                      "The security token included in the request is invalid."),
    "not_found": _err(404, "ResourceNotFoundException",
                      "Could not resolve the foundation model from the provided model "
                      "identifier."),
    "bad_model_id": _err(400, "ValidationException",
                         "The provided model identifier is invalid."),
    "on_demand": _err(400, "ValidationException",
                      "Invocation of model ID anthropic.claude-3-5-sonnet-20241022-v2:0 with "
                      "on-demand throughput isn’t supported. Retry your request with the ID or "
                      "ARN of an inference profile that contains this model."),
    # the account may not use Bedrock (yet): every model of the region answers so
    "not_allowed": _err(400, "ValidationException", "Operation not allowed"),
    "context": _err(400, "ValidationException", "Input is too long for requested model."),
    "context_tokens": _err(400, "ValidationException",
                           "Too many input tokens. Max input tokens: 8192, request input token "
                           "count: 9120"),
    # maxTokens over what the model writes (Claude 3.5 Sonnet v1 through Converse: 4096)
    "output_limit": _err(400, "ValidationException",
                         "The maximum tokens you requested exceeds the model limit of 4096. Try "
                         "again with a maximum tokens value that is lower than 4096."),
    "no_tools": _err(400, "ValidationException",
                     "This model doesn't support tool use in streaming mode."),
    "validation": _err(400, "ValidationException",
                       "Malformed input request: #: extraneous key [foo] is not permitted, "
                       "please reformat your input and try again."),
    "model_timeout": _err(408, "ModelTimeoutException",
                          "Model has timed out in processing the request. Try your request "
                          "again."),
    "model_error": _err(424, "ModelErrorException",
                        "The system encountered an unexpected error during processing. Try "
                        "your request again."),
    "internal": _err(500, "InternalServerException",
                     "The server encountered an internal error while processing the request."),
    # what a model without prompt caching answers a cachePoint (the fake's own refusal is the
    # 400; some accounts get it as a 403)
    "no_caching_403": _err(403, "AccessDeniedException", "You invoked an unsupported model, or "
                           "your request did not allow prompt caching. See the documentation "
                           "for more information."),
}
NO_CACHING = ("You invoked an unsupported model, or your request did not allow prompt caching. "
              "See the documentation for more information.")
_TOP_KEYS = {"messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig",
             "additionalModelRequestFields", "additionalModelResponseFieldPaths",
             "promptVariables", "requestMetadata", "performanceConfig"}
_TOOL_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_IMAGE_FORMATS = {"png", "jpeg", "gif", "webp"}
_DOCUMENT_NAME = re.compile(r"[A-Za-z0-9\s\-()\[\]]{1,200}")


# ------------------------------------------------------------------ event stream (own encoder)


def frame(headers: dict[str, str], payload: bytes, *, corrupt: bool = False) -> bytes:
    """One event stream message with string headers; `corrupt` breaks its message CRC."""
    head = b"".join(bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode()))
                    + v.encode() for k, v in headers.items())
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + head + payload
    crc = zlib.crc32(body) ^ (0xFF if corrupt else 0)
    return body + struct.pack(">I", crc)


def event(kind: str, data: dict[str, Any], *, corrupt: bool = False) -> bytes:
    # Bedrock pads every event with a "p" field of varying length (against traffic analysis)
    payload = orjson.dumps({**data, "p": "abcdefghijklmnopqrstuvwxyzABCDEF"[:len(kind)]})
    return frame({":event-type": kind, ":content-type": "application/json",
                  ":message-type": "event"}, payload, corrupt=corrupt)


def exception(kind: str, message: str) -> bytes:
    return frame({":exception-type": kind, ":content-type": "application/json",
                  ":message-type": "exception"}, orjson.dumps({"message": message}))


# ------------------------------------------------------------------ SigV4 (own verifier)


def _uri_encode(text: str) -> str:
    return quote(text, safe="-_.~")


def expected_signature(method: str, raw_path: str, query: str, headers: Any, body: bytes,
                       signed: list[str], stamp: str, region: str, secret: str) -> str:
    """The SigV4 signature AWS computes for a request as received."""
    path = "/".join(_uri_encode(seg) for seg in raw_path.split("/"))  # encoded once more
    canonical_query = "&".join(sorted(f"{_uri_encode(k)}={_uri_encode(v)}" for k, v in
                                      parse_qsl(query, keep_blank_values=True)))
    lines = "".join(f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed)
    creq = "\n".join([method, path, canonical_query, lines, ";".join(signed),
                      hashlib.sha256(body).hexdigest()])
    scope = f"{stamp[:8]}/{region}/bedrock/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                         hashlib.sha256(creq.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (stamp[:8], region, "bedrock", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})")


@dataclass
class Logged:
    path: str  # as received, percent-encoded
    model: str  # decoded
    headers: dict[str, str]
    body: Any


@dataclass
class FakeBedrock(FakeServer[Logged]):
    """See the module docstring. `api_key` or (`access_key`, `secret_key`, `session_token`)
    authenticate; `region` is the signing region it expects."""

    reply: str = "Hello from the fake Bedrock"
    region: str = "us-east-1"
    api_key: str = API_KEY
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    session_token: str = ""
    tool_calls: int = 1
    # the input of the calls the fake makes (default: {"city": "Paris<i>"}); streamed as
    # Claude's come through Converse, an empty one as a single empty input delta
    tool_input: dict[str, Any] | None = None
    usage: dict[str, int] = field(default_factory=lambda: dict(USAGE))  # of every answer
    # extended thinking: the reasoning an answer starts with when the request enables it
    # (signed by tests.fakes.anthropic.signature: Claude's signatures hold on either API),
    # after a redacted block when `redacted` is set
    thinking: str = "The user wants the weather; let me think."
    redacted: str = ""
    # prompt caching: the prefixes written to the cache (see `_usage`)
    cached: set[bytes] = field(default_factory=set, kw_only=True)
    auth_failures: list[str] = field(default_factory=list, kw_only=True)
    # foundation models CountTokens refuses (as for a model or region without it)
    uncounted: set[str] = field(default_factory=set, kw_only=True)

    errors = ERRORS
    truncated = b'{"output": {"message": '

    def _routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/model/{model}/converse", self._converse)
        router.add_post("/model/{model}/converse-stream", self._converse)
        router.add_post("/model/{model}/count-tokens", self._count_tokens)

    def _error(self, name: str, model: str) -> web.Response:
        status, kind, body = ERRORS[name]
        return self._aws_error(status, kind, body)

    @staticmethod
    def _aws_error(status: int, kind: str, body: bytes) -> web.Response:
        return web.Response(status=status, body=body, content_type="application/json",
                            headers={"x-amzn-ErrorType": kind + _TYPE_SUFFIX,
                                     "x-amzn-RequestId": "0f3c1e6a-fake-4bd7-9d2c-bedrock00001"})

    # ------------------------------------------------------------------ auth

    def _authenticate(self, request: web.Request, body: bytes) -> str | None:
        """Why the request is refused (a message), or None."""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return None if auth[7:] == self.api_key else "bad_api_key"
        match = _AUTH.fullmatch(auth)
        if match is None:
            return "missing_auth"
        key_id, date, region, service, signed_text, signature = match.groups()
        signed = signed_text.split(";")
        stamp = request.headers.get("X-Amz-Date", "")
        if key_id != self.access_key:
            return "bad_token"
        if region != self.region or service != "bedrock" or stamp[:8] != date \
                or "host" not in signed or "x-amz-date" not in signed:
            return "bad_scope"
        try:
            when = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
        except ValueError:
            return "bad_scope"
        if abs(when - time.time()) > 300:
            return "signature_expired"
        if self.session_token and (
                request.headers.get("X-Amz-Security-Token") != self.session_token
                or "x-amz-security-token" not in signed):
            return "bad_token"
        headers = {k.lower(): v for k, v in request.headers.items()}
        want = expected_signature(request.method, request.raw_path.split("?")[0],
                                  request.query_string, headers, body, signed, stamp,
                                  self.region, self.secret_key)
        return None if hmac.compare_digest(want, signature) else "bad_signature"

    def _refuse(self, why: str) -> web.Response:
        self.auth_failures.append(why)
        if why == "bad_api_key":
            return self._aws_error(403, "AccessDeniedException", orjson.dumps(
                {"message": "Authentication failed: Please make sure your API Key is valid."}))
        if why == "missing_auth":
            return self._aws_error(403, "MissingAuthenticationTokenException", orjson.dumps(
                {"message": "Missing Authentication Token"}))
        if why == "bad_token":
            return self._error("bad_token", "")
        if why == "signature_expired":
            return self._aws_error(403, "InvalidSignatureException", orjson.dumps(
                {"message": "Signature expired: is now earlier than (current time - 5 min.)"}))
        return self._aws_error(403, "InvalidSignatureException", orjson.dumps(
            {"message": "The request signature we calculated does not match the signature "
                        "you provided. Check your AWS Secret Access Key and signing method. "
                        "Consult the service documentation for details."}))

    # ------------------------------------------------------------------ answers

    async def _received(self, request: web.Request
                        ) -> tuple[str, Any, web.Response | None]:
        """A call's model and JSON body (None if it is none), logged; the refusal of a
        call not signed right."""
        raw = await request.read()
        model = request.match_info["model"]
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self.requests.append(Logged(request.raw_path, model, dict(request.headers), body))
        refused = self._authenticate(request, raw)
        return model, body, None if refused is None else self._refuse(refused)

    async def _converse(self, request: web.Request) -> web.StreamResponse:
        model, body, refusal = await self._received(request)
        if refusal is not None:
            return refusal
        invalid = _invalid(body) or _refused_by_model(model, body) \
            or _invalid_cache(model, body) or _invalid_thinking(model, body)
        if invalid is not None:
            return self._aws_error(400, "ValidationException",
                                   orjson.dumps({"message": invalid}))
        behaviour = self._next()
        early = await self._answer_preamble(behaviour, model)
        if early is not None:
            return early
        content, stop = self._content(body, behaviour)
        if content and ((body.get("additionalModelRequestFields") or {}).get("thinking")
                        or {}).get("type") == "enabled":
            content = [*([{"reasoningContent": {"redactedContent": self.redacted}}]
                         if self.redacted else []),
                       {"reasoningContent": {"reasoningText": {
                           "text": self.thinking, "signature": signature(self.thinking)}}},
                       *content]
        if request.path.endswith("/converse-stream"):
            request[_BODY] = body  # for the usage at the stream's end
            return await self._stream(request, content, stop, behaviour)
        return web.json_response({
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop, "usage": self._usage(body), "metrics": {"latencyMs": 42}})

    async def _count_tokens(self, request: web.Request) -> web.Response:
        """CountTokens: ``{"input": {"converse": {...}}}`` (a Converse request's messages,
        system, toolConfig and additionalModelRequestFields, checked as Converse checks them)
        or ``{"input": {"invokeModel": {"body": "<base64 of the model's JSON body>"}}}``,
        answered ``{"inputTokens": n}`` (`count_of` the counted JSON); Claude's foundation
        model ids only, as Bedrock counts for no inference profile and no other model."""
        model, body, refusal = await self._received(request)
        if refusal is not None:
            return refusal
        counted, invalid = _count_input(body)
        if invalid is None and (not _COUNTS.match(model) or model in self.uncounted):
            invalid = COUNT_UNSUPPORTED
        if invalid is not None:
            return self._aws_error(400, "ValidationException", orjson.dumps({"message": invalid}))
        early = await self._preamble(self._next(), model)
        if early is not None:
            return early
        return web.json_response({"inputTokens": count_of(counted)})

    def _usage(self, body: dict[str, Any]) -> dict[str, int]:
        """Prompt caching as Converse reports it: with cachePoints, the prompt up to the last
        one (tools, system, messages, in that order) is read from the cache when an earlier
        request wrote the same prefix, else written (one token per 4 bytes of its JSON);
        without them the fake's `usage`."""
        blocks = _prompt_blocks(body)
        points = [i for i, block in enumerate(blocks) if "cachePoint" in block]
        if not points:
            return self.usage
        prefix = orjson.dumps([b for b in blocks[:points[-1]] if "cachePoint" not in b])
        tokens = len(prefix) // 4
        read = prefix in self.cached
        self.cached.add(prefix)
        return {"inputTokens": 5, "outputTokens": 6, "totalTokens": 11 + tokens,
                "cacheReadInputTokens": tokens if read else 0,
                "cacheWriteInputTokens": 0 if read else tokens}

    def _content(self, body: dict[str, Any], behaviour: str) -> tuple[list[dict[str, Any]], str]:
        if behaviour == "empty":
            return [], "end_turn"
        if behaviour == "guardrail":
            return [{"text": "Sorry, the model cannot answer this question."}], \
                "guardrail_intervened"
        tools = [t["toolSpec"] for t in (body.get("toolConfig") or {}).get("tools") or ()
                 if "toolSpec" in t]
        last = body["messages"][-1]["content"]
        if tools and not any("toolResult" in b for b in last):
            calls = [{"toolUse": {"toolUseId": f"tooluse_fake{i}x{len(body['messages'])}",
                                  "name": tools[0]["name"],
                                  "input": {"city": f"Paris{i or ''}"}
                                  if self.tool_input is None else self.tool_input}}
                     for i in range(self.tool_calls)]
            return [{"text": "Let me look that up."}, *calls], "tool_use"
        stop = "max_tokens" if behaviour == "max_tokens" else "end_turn"
        return [{"text": self.reply}], stop

    async def _stream(self, request: web.Request, content: list[dict[str, Any]], stop: str,
                      behaviour: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={
            "Content-Type": "application/vnd.amazon.eventstream",
            "x-amzn-RequestId": "0f3c1e6a-fake-4bd7-9d2c-bedrock00002"})
        await resp.prepare(request)
        await resp.write(event("messageStart", {"role": "assistant"}))
        if behaviour == "stall":
            await asyncio.sleep(3600)
        if behaviour == "exception_first":
            await resp.write(exception("throttlingException",
                                       "Too many tokens, please wait before trying again."))
            return resp
        for index, block in enumerate(content):
            if "reasoningContent" in block:
                for delta in _reasoning_deltas(block["reasoningContent"]):
                    await resp.write(event("contentBlockDelta", {
                        "contentBlockIndex": index, "delta": {"reasoningContent": delta}}))
            elif "text" in block:
                words = block["text"].split(" ")
                for i, word in enumerate(words):
                    piece = word if i == 0 else " " + word
                    corrupt = behaviour == "bad_crc" and i == 1
                    await resp.write(event("contentBlockDelta", {
                        "contentBlockIndex": index, "delta": {"text": piece}}, corrupt=corrupt))
                    if corrupt:
                        return resp
                    if i == 1 and behaviour == "exception_mid":
                        await resp.write(exception(
                            "modelStreamErrorException",
                            "The model encountered an error while streaming the response."))
                        return resp
                    if i == 1 and behaviour == "cut_stream":
                        return cut(request, resp)
            else:
                use = block["toolUse"]
                await resp.write(event("contentBlockStart", {
                    "contentBlockIndex": index, "start": {"toolUse": {
                        "toolUseId": use["toolUseId"], "name": use["name"]}}}))
                arguments = orjson.dumps(use["input"]).decode() if use["input"] else ""
                # as the models stream it: a few bytes at a time (here 5, then 512 each)
                pieces = [arguments[:5], *(arguments[i:i + 512]
                                           for i in range(5, len(arguments), 512))]
                for piece in pieces if arguments else ("",):
                    await resp.write(event("contentBlockDelta", {
                        "contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}))
            await resp.write(event("contentBlockStop", {"contentBlockIndex": index}))
        if behaviour == "no_stop":
            return resp
        await resp.write(event("messageStop", {"stopReason": stop}))
        await resp.write(event("metadata", {"usage": self._usage(request[_BODY]),
                                            "metrics": {"latencyMs": 42}}))
        return resp


def _invalid(body: Any) -> str | None:
    """The ValidationException message the API answers for a body it refuses, or None."""
    if not isinstance(body, dict):
        return "Malformed input request, please reformat your input and try again."
    extra = sorted(set(body) - _TOP_KEYS)
    if extra:
        return (f"Malformed input request: #: extraneous key [{extra[0]}] is not permitted, "
                "please reformat your input and try again.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "A conversation must start with a user message. Try again with a conversation " \
               "that starts with a user message."
    tools = (body.get("toolConfig") or {}).get("tools") or []
    for i, tool in enumerate(tools):
        name = str((tool.get("toolSpec") or {}).get("name", "_"))
        if not _TOOL_ID.fullmatch(name):
            return (f"1 validation error detected: Value '{name}' at 'toolConfig.tools.{i + 1}."
                    "member.toolSpec.name' failed to satisfy constraint: Member must satisfy "
                    "regular expression pattern: [a-zA-Z0-9_-]+")
    has_tools = bool(tools)
    calls: set[str] = set()
    documents: set[str] = set()
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role != ("user" if i % 2 == 0 else "assistant"):
            return ("A conversation must alternate between user and assistant roles. Make "
                    "sure the conversation alternates between user and assistant roles and "
                    "try again." if i else "A conversation must start with a user message. "
                    "Try again with a conversation that starts with a user message.")
        if not isinstance(content, list) or not content:
            return f"The content field in the Message object at messages.{i} is empty."
        for j, block in enumerate(content):
            if "text" in block and not str(block["text"]).strip():
                return (f"The text field in the ContentBlock object at messages.{i}.content."
                        f"{j} is blank. Add text to the text field, and try again.")
            if ("toolUse" in block or "toolResult" in block) and not has_tools:
                return ("The toolConfig field must be defined when using toolUse and "
                        "toolResult content blocks.")
            if "toolUse" in block:
                tool_id = block["toolUse"].get("toolUseId", "")
                if not _TOOL_ID.fullmatch(tool_id):
                    return (f"1 validation error detected: Value '{tool_id}' at 'messages.{i}."
                            f"member.content.{j}.member.toolUse.toolUseId' failed to satisfy "
                            "constraint: Member must satisfy regular expression pattern: "
                            "[a-zA-Z0-9_-]+")
                calls.add(tool_id)
            if "toolResult" in block:
                tool_id = block["toolResult"].get("toolUseId")
                if tool_id not in calls or not block["toolResult"].get("content"):
                    return (f"The number of toolResult blocks at messages.{i}.content exceeds "
                            "the number of toolUse blocks of previous turn.")
            if "image" in block and block["image"].get("format") not in _IMAGE_FORMATS:
                return "The format of the image is not supported."
            if "document" in block:
                name = str(block["document"].get("name", ""))
                if not _DOCUMENT_NAME.fullmatch(name) or "  " in name:
                    return (f"The document file name can only contain alphanumeric "
                            f"characters, whitespace characters, hyphens, parentheses, and "
                            f"square brackets. The name can't contain more than one "
                            f"consecutive whitespace character. ({name!r})")
                if name in documents:
                    return "A document name must be unique within a request."
                documents.add(name)
    return None


# CountTokens: Claude's foundation models (an inference profile's "us." id is refused)
_COUNTS = re.compile(r"anthropic\.claude-")
_COUNT_KEYS = {"messages", "system", "toolConfig", "additionalModelRequestFields"}
COUNT_UNSUPPORTED = "The provided model doesn't support counting tokens."


def count_of(counted: Any) -> int:
    """The fake's count of a CountTokens input: a token per 4 bytes of its JSON, and 7."""
    return len(orjson.dumps(counted)) // 4 + 7


def _count_input(body: Any) -> tuple[Any, str | None]:
    """(what is counted, None) of a CountTokens body, or (None, Bedrock's refusal)."""
    union = body.get("input") if isinstance(body, dict) else None
    if not isinstance(union, dict):
        return None, ("1 validation error detected: Value null at 'input' failed to satisfy "
                      "constraint: Member must not be null")
    if len(union) != 1 or next(iter(union)) not in ("converse", "invokeModel"):
        return None, "Malformed input request, please reformat your input and try again."
    converse = union.get("converse")
    if converse is None:
        try:
            return orjson.loads(base64.b64decode(union["invokeModel"]["body"],
                                                 validate=True)), None
        except (TypeError, KeyError, ValueError):
            return None, ("Malformed input request, please reformat your input and try "
                          "again.")
    extra = sorted(set(converse) - _COUNT_KEYS) if isinstance(converse, dict) else []
    if extra:
        return None, (f"Malformed input request: #: extraneous key [{extra[0]}] is not "
                      "permitted, please reformat your input and try again.")
    invalid = _invalid(converse)
    return (converse, None) if invalid is None else (None, invalid)


# Claude models from Opus 4.1 and Sonnet / Haiku 4.5 on take one sampling knob only
_ONE_SAMPLER = re.compile(r"anthropic\.claude-(?:opus-4-[1-9]|(?:sonnet|haiku|opus)-4-[5-9]"
                          r"|(?:sonnet|haiku|opus)-[5-9])")


# the models that take a toolConfig.toolChoice (AWS: "only supported by Anthropic Claude 3
# models and by Mistral AI Mistral Large"; Nova's came later)
_TOOL_CHOICE_MODELS = ("anthropic.", "mistral.mistral-large", "amazon.nova")


def _refused_by_model(model: str, body: dict[str, Any]) -> str | None:
    """What the models behind Converse refuse (as ValidationExceptions): a toolChoice, even
    auto, where the model has none; and Claude's: a final assistant turn (a prefill) ending in
    whitespace, and temperature with top_p on the models that take only one of them."""
    choice = (body.get("toolConfig") or {}).get("toolChoice")
    if choice and not any(m in model for m in _TOOL_CHOICE_MODELS):
        field = f"toolConfig.toolChoice.{next(iter(choice))}"
        return f"This model doesn't support the {field} field. Remove {field} and try again."
    if "anthropic.claude" not in model:
        return None
    last = body["messages"][-1]
    blocks = last["content"]
    if last["role"] == "assistant" and "text" in blocks[-1] \
            and blocks[-1]["text"] != blocks[-1]["text"].rstrip():
        return ("The model returned the following errors: final assistant content cannot "
                "end with trailing whitespace")
    config = body.get("inferenceConfig") or {}
    if _ONE_SAMPLER.search(model) and "temperature" in config and "topP" in config:
        return ("The model returned the following errors: `temperature` and `top_p` cannot "
                "both be specified for this model. Please use only one.")
    return None


def _reasoning_deltas(reasoning: dict[str, Any]) -> list[dict[str, str]]:
    """A reasoning block as ConverseStream sends it: its text in pieces, then its signature
    (here in two pieces, which the reader must join), or its redacted content (two blobs)."""
    if "redactedContent" in reasoning:
        data = base64.b64decode(reasoning["redactedContent"])
        return [{"redactedContent": base64.b64encode(part).decode()}
                for part in (data[:len(data) // 2], data[len(data) // 2:])]
    text, sign = reasoning["reasoningText"]["text"], reasoning["reasoningText"]["signature"]
    return [{"text": text[:len(text) // 2]}, {"text": text[len(text) // 2:]},
            {"signature": sign[:10]}, {"signature": sign[10:]}]


# Claude with extended thinking (a budget): 3.7 Sonnet, and from 4 up to 4.6
_THINKING = re.compile(r"anthropic\.claude-(?:3-7-sonnet|(?:opus|sonnet|haiku)-4-(?:[0-6](?!\d)"
                       r"|\d{8}))")


def _invalid_thinking(model: str, body: dict[str, Any]) -> str | None:
    """What Claude on Bedrock answers about thinking: the field on a model without it (a
    ValidationException Bedrock words by the model), a budget under 1024 or not under
    maxTokens, temperature or topP with it, a forced tool call with it, a tool loop whose last
    assistant turn does not start with its thinking, reasoning blocks towards a model without
    them, and a reasoning block whose signature is not the fake's."""
    extra = body.get("additionalModelRequestFields") or {}
    think = extra.get("thinking")
    messages = body.get("messages") or []
    for i, message in enumerate(messages):
        for j, block in enumerate(message.get("content") or []):
            reasoning = block.get("reasoningContent")
            if reasoning is None:
                continue
            if not _THINKING.search(model):
                return ("This model doesn't support the reasoningContent.reasoningText."
                        "signature field. Remove reasoningContent.reasoningText.signature and "
                        "try again.")
            text = reasoning.get("reasoningText")
            if text is not None and text.get("signature") != signature(str(text.get("text"))):
                return (f"The model returned the following errors: messages.{i}.content.{j}: "
                        "Invalid `signature` in `thinking` block")
    if think is None:
        return None
    if "anthropic.claude" not in model:
        return ("Malformed input request: #: extraneous key [thinking] is not permitted, "
                "please reformat your input and try again.")
    if not _THINKING.search(model):
        name = model.split("anthropic.", 1)[1].rsplit("-v", 1)[0]
        return f"The model returned the following errors: '{name}' does not support thinking."
    budget = think.get("budget_tokens")
    config = body.get("inferenceConfig") or {}
    if think.get("type") != "enabled" or not isinstance(budget, int) or budget < 1024:
        return ("The model returned the following errors: thinking.enabled.budget_tokens: "
                "Input should be greater than or equal to 1024")
    if budget >= config.get("maxTokens", 4096):
        return ("The model returned the following errors: `max_tokens` must be greater than "
                "`thinking.budget_tokens`.")
    if "temperature" in config or "topP" in config:
        return ("The model returned the following errors: `temperature` may only be set to 1 "
                "when thinking is enabled.")
    if next(iter((body.get("toolConfig") or {}).get("toolChoice") or {"auto": 0})) != "auto":
        return ("The model returned the following errors: Thinking may not be enabled when "
                "tool_choice forces tool use.")
    if len(messages) >= 2 and any("toolResult" in b for b in messages[-1]["content"]):
        first = messages[-2]["content"][0]
        if "reasoningContent" not in first:
            return (f"The model returned the following errors: messages.{len(messages) - 2}."
                    f"content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                    f"`{'tool_use' if 'toolUse' in first else 'text'}`. When `thinking` is "
                    "enabled, a final `assistant` message must start with a thinking block.")
    return None


# prompt caching (cachePoint blocks): Claude 3.5 Haiku, 3.7 Sonnet, from 4 on; Nova (not in tools)
_CACHING = re.compile(r"anthropic\.claude-(?:3-5-haiku|3-7-sonnet|(?:opus|sonnet|haiku)-\d)"
                      r"|amazon\.nova-(?:micro|lite|pro|premier)-")
# the hour-long cache: Claude from 4.5 on
_HOUR_CACHE = re.compile(r"anthropic\.claude-(?:(?:opus|sonnet|haiku)-4-[5-9]"
                         r"|(?:opus|sonnet|haiku)-[5-9])")
_TTLS = {"5m": 0, "1h": 1}


def _prompt_blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The prompt in the order the cache reads it: tools, system blocks, message blocks."""
    blocks: list[dict[str, Any]] = list((body.get("toolConfig") or {}).get("tools") or [])
    blocks.extend(body.get("system") or [])
    for message in body.get("messages") or []:
        blocks.extend(message.get("content") or [])
    return blocks


def _invalid_cache(model: str, body: dict[str, Any]) -> str | None:
    """What Bedrock answers cachePoint blocks it refuses: on a model without prompt caching,
    in the tools of a model that caches none there (Nova), more than 4, first in their list
    (with nothing before them to cache), a ttl other than 5m or 1h, 1h on a model without the
    hour-long cache, and a longer ttl after a shorter one."""
    lists = [("toolConfig.tools", (body.get("toolConfig") or {}).get("tools") or []),
             ("system", body.get("system") or []),
             *((f"messages.{i}.content", m.get("content") or [])
               for i, m in enumerate(body.get("messages") or []))]
    found, shortest = 0, 1
    for where, blocks in lists:
        for j, block in enumerate(blocks):
            point = block.get("cachePoint")
            if point is None:
                continue
            found += 1
            if not _CACHING.search(model):
                return NO_CACHING
            if where == "toolConfig.tools" and "anthropic." not in model:
                return (f"Malformed input request: #/{where.replace('.', '/')}/{j}: extraneous "
                        "key [cachePoint] is not permitted, please reformat your input and try "
                        "again.")
            if point.get("type") != "default" or set(point) - {"type", "ttl"}:
                return f"{where}.{j}.cachePoint: malformed cache point {point}"
            if j == 0:
                return f"{where}.{j}: a cachePoint must follow the content it caches"
            ttl = _TTLS.get(point.get("ttl", "5m"))
            if ttl is None:
                return f"{where}.{j}.cachePoint.ttl: Value must be one of 5m, 1h"
            if ttl and not _HOUR_CACHE.search(model):
                return "The model returned the following errors: ttl 1h is not supported"
            if ttl > shortest:
                return ("The model returned the following errors: a ttl='1h' cache_control "
                        "block must not come after a ttl='5m' cache_control block.")
            shortest = ttl
    if found > 4:
        return ("The model returned the following errors: A maximum of 4 blocks with "
                f"cache_control may be provided. Found {found}.")
    return None


# the fixture: a factory of started fakes, closed after the test
fake_bedrock = fake_fixture(FakeBedrock, "fake_bedrock")
