"""Streaming and cancellation end to end: client disconnects, first-token and idle timeouts,
cut streams, translation while streaming. The daemon on a Unix socket, fake upstreams as real
aiohttp servers, raw HTTP and SDK clients."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import event_stream
from tests.fakes.openai import ERRORS, FakeOpenAI
from tests.helpers import A_THEN_B, HELLO, one_model_config, providers, until, until_async
from tests.helpers import sse_json as sse_data


@dataclass
class WatchedOpenAI(FakeOpenAI):
    """A fake OpenAI that notices when the daemon drops its connection mid-answer."""

    gone: asyncio.Event = field(default_factory=asyncio.Event, kw_only=True)
    handler_cancellation = True

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            return await super()._chat(request)
        except asyncio.CancelledError:
            self.gone.set()
            raise


@dataclass
class StallingAnthropic(FakeAnthropic):
    """Streams message_start and a first word, then nothing; notices when dropped."""

    gone: asyncio.Event = field(default_factory=asyncio.Event, kw_only=True)
    handler_cancellation = True

    async def _stream(self, request: web.Request, body: dict[str, Any],
                      behaviour: str) -> web.StreamResponse:
        resp = await event_stream(request)
        for name, data in (
                ("message_start", {"type": "message_start", "message": {
                    "id": "msg_1", "type": "message", "role": "assistant", "content": [],
                    "usage": {"input_tokens": 3, "output_tokens": 1}}}),
                ("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}}),
                ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": "Hi"}})):
            await resp.write(f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.gone.set()
            raise
        return resp


def one_model(fake: FakeOpenAI, model: str = "", extra: str = "") -> str:
    return one_model_config(fake.url, model=f"max_concurrency = 1\n{model}", tail=f"""[routing]
primary = "a/m"
deadline = 30
when_all_unavailable = "fail"
{extra}
""")


async def raw_stream(socket: str, path: str, body: dict[str, Any]
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(socket)
    data = orjson.dumps(body)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: failoverd\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()
    return reader, writer


async def settled(d: Any, fake: FakeOpenAI, model: str = "a/m") -> dict[str, Any]:
    """Waits until the daemon holds nothing for the request any more; returns /v1/status."""
    up = fake.url.removesuffix("/v1")

    async def idle() -> bool:
        status = (await d.http.get("/v1/status")).json()
        metrics = (await d.http.get("/metrics")).text
        return (status["inflight"] == 0 and status["models"][model]["inflight"] == 0
                and f'failoverd_upstream_connections{{upstream="{up}"}} 0' in metrics
                and len(d.sup.tracker.pending()) <= 2)  # the two control requests above

    await until_async(idle)
    return (await d.http.get("/v1/status")).json()


def cancelled_count(metrics: str) -> int:
    """Cancelled requests, whatever model they are counted under (the one that was
    streaming, or none when the client left before the first chunk)."""
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in metrics.splitlines()
               if line.startswith("failoverd_requests_total{")
               and 'outcome="cancelled"}' in line)


@pytest.mark.parametrize("behaviour", ["slow_stream:30", "hang", "comments:30"])
async def test_client_leaving_a_stream_aborts_the_upstream_and_frees_everything(
        start_daemon: Any, behaviour: str) -> None:
    fake = await WatchedOpenAI(default=behaviour).start()
    try:
        d = await start_daemon(one_model(fake))
        reader, writer = await raw_stream(d.socket, "/v1/chat/completions",
                                          {"messages": HELLO, "stream": True})
        if behaviour.startswith("slow_stream"):
            async with asyncio.timeout(5):  # mid-stream: the first chunk arrived
                while b"data: " not in await reader.readline():
                    pass
        else:  # before the first token: the upstream was called
            await until(lambda: bool(fake.chat_requests()))
        writer.close()
        async with asyncio.timeout(5):
            await fake.gone.wait()  # the upstream saw the call abandoned
        status = await settled(d, fake)
        model = status["models"]["a/m"]
        assert model["state"] == "closed"
        assert model["consecutive_failures"] == 0 and model["failure_rate"] == 0
        metrics = (await d.http.get("/metrics")).text
        assert cancelled_count(metrics) == 1
        # the max_concurrency slot is free: the next request is served
        fake.default = "ok"
        resp = await d.http.post("/v1/chat/completions",
                                 json={"messages": HELLO, "stream": True})
        assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
    finally:
        await fake.close()


@pytest.mark.parametrize("front", ["openai", "anthropic"])
async def test_idle_gap_after_the_first_chunk_ends_the_stream_with_an_error_event(
        fake_openai: Any, start_daemon: Any, front: str) -> None:
    fake = await fake_openai(default="slow_stream:2")  # first chunk at once, then 2 s gaps
    d = await start_daemon(one_model(fake, "stream_idle_timeout = 0.3"))
    if front == "openai":
        path, body = "/v1/chat/completions", {"messages": HELLO, "stream": True}
    else:
        path, body = "/v1/messages", {"model": "default", "messages": HELLO, "stream": True,
                                   "max_tokens": 50}
    resp = await d.http.post(path, json=body)
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == "a/m"
    events = sse_data(resp.text)
    if front == "openai":
        assert "[DONE]" not in resp.text
        assert events[0]["object"] == "chat.completion.chunk"
        assert events[-1]["error"]["type"] == "timeout"
        assert "idle" in events[-1]["error"]["message"]
    else:
        assert "message_stop" not in resp.text
        assert events[0]["type"] == "message_start"
        assert events[-1]["type"] == "error"
        assert events[-1]["error"]["type"] in ("api_error", "timeout_error", "overloaded_error")
    assert len(fake.chat_requests()) == 1  # no failover and no retry after the first chunk
    status = await settled(d, fake)
    model = status["models"]["a/m"]
    assert model["consecutive_failures"] == 1 and model["calls_in_window"] == 1


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}


async def test_openai_front_streams_tool_calls_and_usage_from_anthropic(
        fake_anthropic: Any, start_daemon: Any) -> None:
    fake = await fake_anthropic()
    d = await start_daemon(f"""
[providers.ant]
kind = "anthropic"
base_url = "{fake.url}"
[models."ant/claude"]
provider = "ant"
""")
    stream = await d.openai.chat.completions.create(
        model="ant/claude", stream=True, stream_options={"include_usage": True},
        tools=[WEATHER], messages=[{"role": "user", "content": "weather in Paris?"}])
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Let me check."
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert calls[0].id == "toolu_01Fake" and calls[0].function.name == "get_weather"
    assert {t.index for t in calls} == {0}
    assert orjson.loads("".join(t.function.arguments or "" for t in calls)) == {
        "city": "Paris", "days": 2}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices
                and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert chunks[-1].choices == []  # include_usage: the last chunk carries only the usage
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (15, 7, 22)


@dataclass
class UsageOpenAI(FakeOpenAI):
    """Streams a text part, a tool call and, when asked for, OpenAI's usage-only last chunk."""

    async def _stream(self, request: web.Request, body: dict[str, Any],
                      behaviour: str) -> web.StreamResponse:
        resp = await event_stream(request)
        base = {"id": "chatcmpl-u", "object": "chat.completion.chunk", "created": 1,
                "model": body.get("model")}

        async def send(choices: list[Any], **extra: Any) -> None:
            await resp.write(b"data: " + orjson.dumps({**base, "choices": choices, **extra})
                             + b"\n\n")

        def delta(d: dict[str, Any], finish: str | None = None) -> list[Any]:
            return [{"index": 0, "delta": d, "finish_reason": finish}]

        await send(delta({"role": "assistant", "content": ""}))
        await send(delta({"content": "Checking."}))
        await send(delta({"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                                          "function": {"name": "get_weather",
                                                       "arguments": ""}}]}))
        for piece in ('{"ci', 'ty": "Paris"}'):
            await send(delta({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        await send(delta({}, "tool_calls"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], usage={"prompt_tokens": 20, "completion_tokens": 9,
                                  "total_tokens": 29})
        await resp.write(b"data: [DONE]\n\n")
        return resp


async def test_anthropic_front_streams_tool_use_and_usage_from_openai(
        start_daemon: Any) -> None:
    fake = await UsageOpenAI().start()
    try:
        d = await start_daemon(one_model(fake))
        async with d.http.stream("POST", "/v1/messages", json={
                "model": "a/m", "max_tokens": 100, "stream": True,
                "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
                "messages": [{"role": "user", "content": "weather?"}]}) as resp:
            text = (await resp.aread()).decode()
        assert fake.chat_requests()[0].body["stream_options"] == {"include_usage": True}
        events = [(block.split("\n")[0][7:], orjson.loads(block.split("\n")[1][6:]))
                  for block in text.strip().split("\n\n")]
        names = [name for name, _ in events]
        assert names == ["message_start", "content_block_start", "content_block_delta",
                         "content_block_stop", "content_block_start", "content_block_delta",
                         "content_block_stop", "message_delta", "message_stop"]
        assert all(name == data["type"] for name, data in events)
        tool = events[4][1]["content_block"]
        assert (tool["type"], tool["id"], tool["name"]) == ("tool_use", "call_9", "get_weather")
        assert orjson.loads(events[5][1]["delta"]["partial_json"]) == {"city": "Paris"}
        assert events[7][1]["delta"]["stop_reason"] == "tool_use"
        assert events[7][1]["usage"] == {"input_tokens": 20, "output_tokens": 9}
    finally:
        await fake.close()


@dataclass
class PingingAnthropic(FakeAnthropic):
    """message_start, then only pings: the model never starts a content block."""

    async def _stream(self, request: web.Request, body: dict[str, Any],
                      behaviour: str) -> web.StreamResponse:
        resp = await event_stream(request)
        await resp.write(b'event: message_start\ndata: {"type": "message_start", "message": '
                         b'{"id": "msg_1", "type": "message", "role": "assistant", '
                         b'"content": [], "usage": {"input_tokens": 3, "output_tokens": 1}}}'
                         b"\n\n")
        for _ in range(300):  # bounded: 30 s of pings
            await resp.write(b'event: ping\ndata: {"type": "ping"}\n\n')
            await asyncio.sleep(0.1)
        return resp


@pytest.mark.parametrize("front", ["openai", "anthropic"])
async def test_pings_are_not_a_first_token_and_the_stream_fails_over(
        fake_openai: Any, start_daemon: Any, front: str) -> None:
    ant = await PingingAnthropic().start()
    b = await fake_openai(reply="from b")
    try:
        d = await start_daemon(f"""
{providers(ant=("anthropic", ant.url), b=b.url)}
[models."ant/claude"]
provider = "ant"
first_token_timeout = 0.4
[models."b/gpt"]
provider = "b"
[routing]
primary = "ant/claude"
fallbacks = ["b/gpt"]
when_all_unavailable = "fail"
""")
        started = asyncio.get_running_loop().time()
        if front == "openai":
            path, body = "/v1/chat/completions", {"model": "default", "messages": HELLO,
                                                  "stream": True}
        else:
            path, body = "/v1/messages", {"model": "default", "messages": HELLO,
                                          "stream": True, "max_tokens": 50}
        resp = await d.http.post(path, json=body)
        assert asyncio.get_running_loop().time() - started < 3
        assert resp.status_code == 200
        assert resp.headers["x-failoverd-model"] == "b/gpt"
        assert resp.headers["x-failoverd-failover"] == "ant/claude>b/gpt:timeout"
        if front == "openai":
            text = "".join(c["choices"][0]["delta"].get("content") or ""
                           for c in sse_data(resp.text) if c["choices"])
            assert text == "from b" and resp.text.endswith("data: [DONE]\n\n")
        else:
            assert "from" in resp.text and "event: message_stop" in resp.text
            assert resp.text.count("event: message_start") == 1  # the failover is invisible
        status = (await d.http.get("/v1/status")).json()["models"]["ant/claude"]
        assert status["consecutive_failures"] == 1 and status["inflight"] == 0
    finally:
        await ant.close()


@pytest.mark.parametrize(("kind", "behaviour", "front"), [
    ("openai", "cut_stream", "openai"), ("openai", "cut_stream", "anthropic"),
    ("anthropic", "cut_stream", "openai"), ("anthropic", "cut_stream", "anthropic"),
    ("anthropic", "no_stop", "openai"), ("anthropic", "no_stop", "anthropic")])
async def test_a_cut_stream_ends_with_an_error_event_and_counts_as_invalid_response(
        fake_openai: Any, fake_anthropic: Any, start_daemon: Any, kind: str, behaviour: str,
        front: str) -> None:
    fake = await (fake_openai if kind == "openai" else fake_anthropic)(default=behaviour)
    d = await start_daemon(f"""
[providers.up]
kind = "{kind}"
base_url = "{fake.url}"
[models."up/m"]
provider = "up"
[routing]
primary = "up/m"
when_all_unavailable = "fail"
""")
    if front == "openai":
        path, body = "/v1/chat/completions", {"model": "default", "messages": HELLO,
                                              "stream": True}
    else:
        path, body = "/v1/messages", {"model": "default", "messages": HELLO,
                                      "stream": True, "max_tokens": 50}
    resp = await d.http.post(path, json=body)
    assert resp.status_code == 200
    events = sse_data(resp.text)
    if front == "openai":
        assert "[DONE]" not in resp.text
        assert events[0]["object"] == "chat.completion.chunk"
        assert events[-1]["error"]["type"] == "invalid_response"
    else:
        assert "event: message_stop" not in resp.text
        assert events[0]["type"] == "message_start"
        assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "api_error"
    status = (await d.http.get("/v1/status")).json()["models"]["up/m"]
    assert status["consecutive_failures"] == 1 and status["inflight"] == 0


@pytest.mark.parametrize("front", ["openai", "anthropic"])
async def test_client_leaving_a_translated_stream_aborts_the_anthropic_upstream(
        start_daemon: Any, front: str) -> None:
    fake = await StallingAnthropic().start()
    try:
        d = await start_daemon(f"""
[providers.ant]
kind = "anthropic"
base_url = "{fake.url}"
[models."ant/claude"]
provider = "ant"
max_concurrency = 1
""")
        if front == "openai":
            path, body = "/v1/chat/completions", {"model": "default", "messages": HELLO,
                                                  "stream": True}
        else:
            path, body = "/v1/messages", {"model": "default", "messages": HELLO,
                                          "stream": True, "max_tokens": 50}
        reader, writer = await raw_stream(d.socket, path, body)
        async with asyncio.timeout(5):
            while b"Hi" not in await reader.readline():
                pass
        writer.close()
        async with asyncio.timeout(5):
            await fake.gone.wait()
        status = await settled(d, fake, "ant/claude")
        assert status["models"]["ant/claude"]["consecutive_failures"] == 0
        assert cancelled_count((await d.http.get("/metrics")).text) == 1
    finally:
        await fake.close()


@dataclass
class OddOpenAI(FakeOpenAI):
    """Valid but unusual streams: "multiline" sends each event over several data: lines (as
    SSE allows), "json_quota" answers a stream request with a 200 JSON error body."""

    async def _stream(self, request: web.Request, body: dict[str, Any],
                      behaviour: str) -> web.StreamResponse:
        if behaviour == "json_quota":
            return web.Response(body=ERRORS["quota"][1], content_type="application/json")
        resp = await event_stream(request)
        for delta, finish in (({"role": "assistant", "content": "Hi"}, None),
                              ({"content": " there"}, None), ({}, "stop")):
            chunk = {"id": "chatcmpl-m", "object": "chat.completion.chunk", "created": 1,
                     "model": body.get("model"),
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            pretty = orjson.dumps(chunk, option=orjson.OPT_INDENT_2).split(b"\n")
            await resp.write(b"".join(b"data: " + line + b"\n" for line in pretty) + b"\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp


async def test_events_over_several_data_lines_reach_the_client_as_valid_sse(
        start_daemon: Any) -> None:
    fake = await OddOpenAI(default="multiline").start()
    try:
        d = await start_daemon(one_model(fake))
        stream = await d.openai.chat.completions.create(model="default", messages=HELLO,
                                                        stream=True)
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hi there"
        assert chunks[-1].choices[0].finish_reason == "stop"
    finally:
        await fake.close()


async def test_a_json_error_body_answering_a_stream_is_classified_by_its_code(
        fake_openai: Any, start_daemon: Any) -> None:
    fake = await OddOpenAI(default="json_quota").start()
    b = await fake_openai(reply="from b")
    try:
        d = await start_daemon(f"""
{providers(a=fake.url, b=b.url)}
{A_THEN_B}
when_all_unavailable = "fail"
""")
        resp = await d.http.post("/v1/chat/completions",
                                 json={"model": "default", "messages": HELLO, "stream": True})
        assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
        # billing, as the same body in a non-streaming answer is: no same-model retry, and
        # the provider's credentials are marked
        assert resp.headers["x-failoverd-failover"] == "a/m>b/m:billing"
        assert resp.headers["x-failoverd-attempts"] == "2"
        status = (await d.http.get("/v1/status")).json()
        assert status["providers"]["a"]["credentials"] == "billing"
    finally:
        await fake.close()


def requests_total(metrics: str, model: str, outcome: str) -> int:
    prefix = f'failoverd_requests_total{{model="{model}",outcome="{outcome}"}} '
    return next((int(float(line[len(prefix):])) for line in metrics.splitlines()
                 if line.startswith(prefix)), 0)


async def test_a_client_that_stops_reading_is_cut_after_the_idle_timeout(
        start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    # about 4 MB in 20,000 chunks: far more than the socket buffers hold
    fake = await WatchedOpenAI(reply=" ".join(["x" * 200] * 20_000)).start()
    try:
        d = await start_daemon(one_model(fake, "stream_idle_timeout = 0.5"))
        reader, writer = await raw_stream(d.socket, "/v1/chat/completions",
                                          {"messages": HELLO, "stream": True})
        async with asyncio.timeout(5):
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        # ... and the client reads nothing more, but stays connected
        status = await settled(d, fake)  # within the idle timeout plus slack
        assert status["models"]["a/m"]["state"] == "closed"  # not the model's fault
        assert status["models"]["a/m"]["consecutive_failures"] == 0
        metrics = (await d.http.get("/metrics")).text
        assert cancelled_count(metrics) == 1
        assert requests_total(metrics, "a/m", "ok") == 0
        assert "a/m cut: the client read nothing for 0.5s" in caplog.text
        # the slot (max_concurrency = 1) is free again
        fake.reply = "short answer"
        resp = await d.http.post("/v1/chat/completions",
                                 json={"messages": HELLO, "stream": True})
        assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
        # the stalled client's connection was closed: what it had not read, then EOF
        try:
            async with asyncio.timeout(5):
                while await reader.read(65536):
                    pass
        finally:
            writer.close()
    finally:
        await fake.close()


async def test_a_stream_counts_once_by_how_it_ended(fake_openai: Any,
                                                    start_daemon: Any) -> None:
    fake = await fake_openai()
    d = await start_daemon(one_model(fake))
    stream = {"messages": HELLO, "stream": True}
    resp = await d.http.post("/v1/chat/completions", json=stream)
    assert resp.text.endswith("data: [DONE]\n\n")
    fake.push("stream_error")  # an error event after the first word
    resp = await d.http.post("/v1/chat/completions", json=stream)
    assert "[DONE]" not in resp.text
    fake.push("slow_stream:30")
    reader, writer = await raw_stream(d.socket, "/v1/chat/completions", stream)
    async with asyncio.timeout(5):
        while b"data: " not in await reader.readline():
            pass
    writer.close()
    await settled(d, fake)
    metrics = (await d.http.get("/metrics")).text
    assert requests_total(metrics, "a/m", "ok") == 1
    assert requests_total(metrics, "a/m", "stream_error") == 1
    # under the model that was streaming (it had begun), not under none
    assert requests_total(metrics, "a/m", "cancelled") == cancelled_count(metrics) == 1
