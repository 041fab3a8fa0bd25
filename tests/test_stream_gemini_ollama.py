"""Gemini and Ollama streams end to end, through the daemon's OpenAI and Anthropic fronts.

The upstreams are a scripted aiohttp server on 127.0.0.1 that answers each request with the
next scripted body, written as the real APIs write it: Gemini's `streamGenerateContent?alt=sse`
(`data:` lines, each a GenerateContentResponse) and Ollama's `/api/chat` NDJSON lines. Each
model has a backup (an Ollama-kind server with a plain answer) so a failover before the first
token shows in the x-failoverd-* headers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.fakes.base import cut
from tests.helpers import providers

Body = tuple[str, list[bytes], bool]  # content type, pieces, cut the connection after them


class Scripted:
    """Answers every request with the next scripted body (`default` once the script is out)."""

    def __init__(self) -> None:
        self.script: list[Body] = []
        self.default: Body = ("application/json", [b'{"error": "unscripted"}'], False)
        self.requests: list[tuple[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path_qs, orjson.loads(await request.read() or b"null")))
        ctype, pieces, cut_after = self.script.pop(0) if self.script else self.default
        resp = web.StreamResponse(headers={"Content-Type": ctype})
        await resp.prepare(request)
        for piece in pieces:
            await resp.write(piece)
        return cut(request, resp) if cut_after else resp


def sse(*events: dict[str, Any], raw: bytes = b"", cut_after: bool = False) -> Body:
    pieces = [b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in events]
    return "text/event-stream", pieces + ([b"data: " + raw + b"\r\n\r\n"] if raw else []), \
        cut_after


def ndjson(*objs: dict[str, Any], cut_after: bool = False) -> Body:
    return "application/x-ndjson", [orjson.dumps(o) + b"\n" for o in objs], cut_after


G_USAGE = {"promptTokenCount": 9, "candidatesTokenCount": 6, "totalTokenCount": 15}


def gemini_event(parts: list[dict[str, Any]] | None, finish: str | None = None
                 ) -> dict[str, Any]:
    cand: dict[str, Any] = {"index": 0}
    if parts is not None:
        cand["content"] = {"role": "model", "parts": parts}
    if finish:
        cand["finishReason"] = finish
    return {"candidates": [cand], "usageMetadata": G_USAGE, "modelVersion": "gemini-2.5-flash",
            "responseId": "resp-1"}


def ollama_piece(content: str, **message: Any) -> dict[str, Any]:
    return {"model": "qwen2.5:7b", "created_at": "2025-05-01T10:00:00.5Z",
            "message": {"role": "assistant", "content": content, **message}, "done": False}


def ollama_done(reason: str = "stop") -> dict[str, Any]:
    return {"model": "qwen2.5:7b", "created_at": "2025-05-01T10:00:01.0Z",
            "message": {"role": "assistant", "content": ""}, "done_reason": reason,
            "done": True, "total_duration": 5191566416, "prompt_eval_count": 26,
            "eval_count": 7}


BACKUP = ndjson(ollama_piece("from the backup"), ollama_done())


@pytest.fixture
async def rig(start_daemon: Any) -> AsyncIterator[tuple[Scripted, Scripted, Scripted, Any]]:
    gemini, ollama, backup = Scripted(), Scripted(), Scripted()
    for server in (gemini, ollama, backup):
        await server.start()
    backup.default = BACKUP
    d = await start_daemon(f"""
{providers(g=("gemini", gemini.url), o=("ollama", ollama.url), b=("ollama", backup.url))}
[models."g/gemini-2.5-flash"]
provider = "g"
capabilities = ["tools"]
[models."o/qwen2.5:7b"]
provider = "o"
capabilities = ["tools"]
[models."b/backup"]
provider = "b"
capabilities = ["tools"]
[chains.gemini]
models = ["g/gemini-2.5-flash", "b/backup"]
[chains.ollama]
models = ["o/qwen2.5:7b", "b/backup"]
[routing]
primary = "g/gemini-2.5-flash"
when_all_unavailable = "fail"
""")
    yield gemini, ollama, backup, d
    for server in (gemini, ollama, backup):
        await server.close()


TOOL = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}
A_TOOL = {"name": "get_weather",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


async def stream(d: Any, front: str, chain: str, *, tools: bool = False
                 ) -> tuple[dict[str, str], list[tuple[str, Any]]]:
    """(headers, [(event name, parsed data)]) of one streamed request through `front`."""
    messages = [{"role": "user", "content": "weather in Paris?"}]
    body: dict[str, Any]
    if front == "openai":
        path = "/v1/chat/completions"
        body = {"model": chain, "stream": True, "messages": messages,
                "stream_options": {"include_usage": True}}
        if tools:
            body["tools"] = [TOOL]
    else:
        path = "/v1/messages"
        body = {"model": chain, "stream": True, "max_tokens": 100, "messages": messages}
        if tools:
            body["tools"] = [A_TOOL]
    async with d.http.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200
        raw = b"".join([piece async for piece in resp.aiter_bytes()])
        headers = dict(resp.headers)
    events: list[tuple[str, Any]] = []
    for block in raw.decode().split("\n\n"):
        name, data = "", ""
        for line in block.splitlines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if data:
            events.append((name, None if data == "[DONE]" else json.loads(data)))
    return headers, events


def openai_summary(events: list[tuple[str, Any]]) -> dict[str, Any]:
    text, calls, finish, usage, error = "", [], None, None, None
    for _name, data in events:
        if data is None:
            continue
        if "error" in data:
            error = data["error"]
            continue
        usage = data.get("usage") or usage
        for choice in data["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            calls += delta.get("tool_calls") or []
            finish = choice["finish_reason"] or finish
    return {"text": text, "calls": calls, "finish": finish, "usage": usage, "error": error,
            "done": events[-1] == ("", None)}


def anthropic_summary(events: list[tuple[str, Any]]) -> dict[str, Any]:
    text, blocks, stop, usage, error = "", [], None, None, None
    for name, data in events:
        assert name == data["type"]
        if name == "content_block_start":
            blocks.append(dict(data["content_block"], json=""))
        elif name == "content_block_delta":
            delta = data["delta"]
            if delta["type"] == "text_delta":
                text += delta["text"]
            else:
                blocks[-1]["json"] += delta["partial_json"]
        elif name == "message_delta":
            stop, usage = data["delta"]["stop_reason"], data["usage"]
        elif name == "error":
            error = data["error"]
    return {"text": text, "tool_uses": [b for b in blocks if b["type"] == "tool_use"],
            "stop": stop, "usage": usage, "error": error,
            "done": events[-1][0] == "message_stop"}


FRONTS = ["openai", "anthropic"]


# ------------------------------------------------------------------ an empty answer


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("last", [
    gemini_event([{"text": ""}], "STOP"),
    gemini_event(None, "MALFORMED_FUNCTION_CALL"),
], ids=["empty-stop", "malformed-function-call"])
async def test_gemini_stream_without_any_answer_fails_over_before_the_first_token(
        rig: Any, front: str, last: dict[str, Any]) -> None:
    # Gemini's known empty answers: generateContent treats them as invalid_response and
    # fails over; the stream committed an empty answer to the client instead
    gemini, _ollama, _backup, d = rig
    gemini.script = [sse(last), sse(last)]
    headers, events = await stream(d, front, "gemini")
    assert headers["x-failoverd-model"] == "b/backup"
    assert headers["x-failoverd-failover"] == "g/gemini-2.5-flash>b/backup:invalid_response"
    summary = (openai_summary if front == "openai" else anthropic_summary)(events)
    assert summary["text"] == "from the backup"
    assert summary["done"] and summary["error"] is None


@pytest.mark.parametrize("front", FRONTS)
async def test_gemini_stream_whose_answer_follows_an_empty_event_is_whole(
        rig: Any, front: str) -> None:
    gemini, _ollama, _backup, d = rig
    gemini.script = [sse(gemini_event([{"text": ""}]), gemini_event([{"text": "Hel"}]),
                         gemini_event([{"text": "lo"}], "STOP"))]
    headers, events = await stream(d, front, "gemini")
    assert headers["x-failoverd-model"] == "g/gemini-2.5-flash"
    if front == "openai":
        summary = openai_summary(events)
        first = events[0][1]["choices"][0]["delta"]
        assert first["role"] == "assistant"
        assert (summary["text"], summary["finish"]) == ("Hello", "stop")
        assert summary["usage"] == {"prompt_tokens": 9, "completion_tokens": 6,
                                    "total_tokens": 15}
    else:
        summary = anthropic_summary(events)
        assert (summary["text"], summary["stop"]) == ("Hello", "end_turn")
        assert summary["usage"] == {"input_tokens": 9, "output_tokens": 6}


@pytest.mark.parametrize("front", FRONTS)
async def test_gemini_safety_stop_without_text_is_still_an_answer(rig: Any, front: str) -> None:
    gemini, _ollama, backup, d = rig
    gemini.script = [sse(gemini_event(None, "SAFETY"))]
    headers, events = await stream(d, front, "gemini")
    assert headers["x-failoverd-model"] == "g/gemini-2.5-flash"
    assert backup.requests == []
    if front == "openai":
        assert openai_summary(events)["finish"] == "content_filter"
    else:
        assert anthropic_summary(events)["stop"] == "refusal"


# ------------------------------------------------------------------ coverage


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("kind", ["gemini", "ollama"])
async def test_streamed_tool_calls_and_usage(rig: Any, front: str, kind: str) -> None:
    gemini, ollama, _backup, d = rig
    if kind == "gemini":
        gemini.script = [sse(gemini_event([
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
            {"functionCall": {"name": "get_weather", "args": {"city": "Lyon"}}}], "STOP"))]
        usage = (9, 6)
    else:
        ollama.script = [ndjson(ollama_piece("", tool_calls=[
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]),
            ollama_piece("", tool_calls=[
                {"function": {"name": "get_weather", "arguments": {"city": "Lyon"}}}]),
            ollama_done())]
        usage = (26, 7)
    _headers, events = await stream(d, front, kind, tools=True)
    if front == "openai":
        summary = openai_summary(events)
        calls = summary["calls"]
        assert [c["index"] for c in calls] == [0, 1]
        assert len({c["id"] for c in calls}) == 2
        assert [json.loads(c["function"]["arguments"]) for c in calls] == [
            {"city": "Paris"}, {"city": "Lyon"}]
        assert summary["finish"] == "tool_calls"
        assert (summary["usage"]["prompt_tokens"], summary["usage"]["completion_tokens"]) \
            == usage
        assert events[-2][1]["choices"] == []  # include_usage: a choices-less last chunk
    else:
        summary = anthropic_summary(events)
        uses = summary["tool_uses"]
        assert [u["name"] for u in uses] == ["get_weather", "get_weather"]
        assert len({u["id"] for u in uses}) == 2
        assert [json.loads(u["json"]) for u in uses] == [{"city": "Paris"}, {"city": "Lyon"}]
        assert summary["stop"] == "tool_use"
        assert (summary["usage"]["input_tokens"], summary["usage"]["output_tokens"]) == usage
    assert summary["done"]


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("kind", ["gemini", "ollama"])
async def test_length_finish(rig: Any, front: str, kind: str) -> None:
    gemini, ollama, _backup, d = rig
    gemini.script = [sse(gemini_event([{"text": "Hel"}]),
                         gemini_event([{"text": "lo"}], "MAX_TOKENS"))]
    ollama.script = [ndjson(ollama_piece("Hel"), ollama_piece("lo"), ollama_done("length"))]
    _headers, events = await stream(d, front, kind)
    if front == "openai":
        assert openai_summary(events)["finish"] == "length"
    else:
        assert anthropic_summary(events)["stop"] == "max_tokens"


GEMINI_429 = orjson.dumps({"error": {
    "code": 429, "status": "RESOURCE_EXHAUSTED",
    "message": "Resource has been exhausted (e.g. check quota)."}})


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize(("kind", "reason", "anthropic_type"), [
    ("gemini", "rate_limit", "rate_limit_error"),
    ("ollama", "server_error", "api_error"),
])
async def test_mid_stream_error_ends_with_an_error_event_of_its_reason(
        rig: Any, front: str, kind: str, reason: str, anthropic_type: str) -> None:
    gemini, ollama, backup, d = rig
    gemini.script = [sse(gemini_event([{"text": "Hel"}]), raw=GEMINI_429)]
    ollama.script = [ndjson(ollama_piece("Hel"), {
        "error": "an error was encountered while running the model: unexpected EOF"})]
    headers, events = await stream(d, front, kind)
    assert headers["x-failoverd-model"] != "b/backup"
    assert backup.requests == []
    if front == "openai":
        summary = openai_summary(events)
        assert summary["text"] == "Hel"
        assert summary["error"]["type"] == reason
        assert not summary["done"]
    else:
        summary = anthropic_summary(events)
        assert summary["text"] == "Hel"
        assert summary["error"]["type"] == anthropic_type
        assert not summary["done"]


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("kind", ["gemini", "ollama"])
async def test_cut_stream_ends_with_an_invalid_response_error_event(
        rig: Any, front: str, kind: str) -> None:
    gemini, ollama, _backup, d = rig
    gemini.script = [sse(gemini_event([{"text": "Hel"}]), cut_after=True)]
    ollama.script = [ndjson(ollama_piece("Hel"), cut_after=True)]
    _headers, events = await stream(d, front, kind)
    if front == "openai":
        summary = openai_summary(events)
        assert summary["error"]["type"] == "invalid_response"
    else:
        summary = anthropic_summary(events)
        assert summary["error"]["type"] == "api_error"
    assert summary["text"] == "Hel" and not summary["done"]


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("kind", ["gemini", "ollama"])
async def test_error_or_nothing_before_the_first_token_fails_over(
        rig: Any, front: str, kind: str) -> None:
    gemini, ollama, _backup, d = rig
    model = "g/gemini-2.5-flash" if kind == "gemini" else "o/qwen2.5:7b"
    # an error as the first event: its own reason
    gemini.script = [sse(raw=GEMINI_429)]
    ollama.script = [ndjson({"error": "model requires more system memory (12.3 GiB) than is "
                                      "available (7.1 GiB)"})]
    headers, events = await stream(d, front, kind)
    assert headers["x-failoverd-model"] == "b/backup"
    want = "rate_limit" if kind == "gemini" else "server_error"
    assert headers["x-failoverd-failover"] == f"{model}>b/backup:{want}"
    # a 200 that ends without a single event: invalid_response (retried once, then on)
    gemini.script = [sse(), sse()]
    ollama.script = [ndjson(), ndjson()]
    headers, events = await stream(d, front, kind)
    assert headers["x-failoverd-model"] == "b/backup"
    assert headers["x-failoverd-failover"] == f"{model}>b/backup:invalid_response"
    summary = (openai_summary if front == "openai" else anthropic_summary)(events)
    assert summary["text"] == "from the backup" and summary["done"]


@pytest.mark.parametrize("front", FRONTS)
async def test_ollama_thinking_before_the_answer_is_not_text(rig: Any, front: str) -> None:
    _gemini, ollama, _backup, d = rig
    ollama.script = [ndjson(ollama_piece("", thinking="the user wants"), ollama_piece("Hi"),
                            ollama_done())]
    _headers, events = await stream(d, front, "ollama")
    summary = (openai_summary if front == "openai" else anthropic_summary)(events)
    assert summary["text"] == "Hi" and summary["done"] and summary["error"] is None
