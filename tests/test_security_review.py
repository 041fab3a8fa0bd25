"""Security and input hardening: bad input gets a clear 4xx, secrets stay out of every answer,
log and event, and one client's request cannot hurt the daemon or other clients."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.fakes.base import AppServer
from tests.fakes.openai import FakeOpenAI
from tests.helpers import A_THEN_B, one_model_config, providers, tcp_listener

HELLO = {"messages": [{"role": "user", "content": "hi"}]}
KEY = "sk-proj-SECRETabcdefghijklmnop0123456789"


class EchoingUpstream(AppServer):
    """An OpenAI-compatible upstream whose 401 echoes the key it got, as some vendors do
    (OpenAI itself shows the key's first and last characters)."""

    def __init__(self) -> None:
        self.masked = False

    async def _chat(self, request: web.Request) -> web.Response:
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        shown = f"{key[:8]}{'*' * 20}{key[-4:]}" if self.masked else key
        return web.json_response({"error": {
            "message": f"Incorrect API key provided: {shown}. You can find your API key at "
                       "https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}},
            status=401)

    async def start(self) -> EchoingUpstream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._chat)
        await self._serve(app)
        return self


@pytest.fixture
async def echoing() -> AsyncIterator[EchoingUpstream]:
    up = await EchoingUpstream().start()
    yield up
    await up.close()


def one_model(url: str, extra: str = "") -> str:
    return extra + one_model_config(url, provider='api_key_env = "A_KEY"',
                                    tail='[probes]\nkind = "none"\n')


async def raw_request(path: str, data: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """Sends raw bytes over the Unix socket; (status, body) of the answer."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def post(path: str, body: bytes, headers: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{headers}\r\n").encode() + body

def two_echoing(url: str) -> str:
    return f"""
[providers.a]
kind = "openai"
base_url = "{url}"
api_key_env = "A_KEY"
[providers.b]
kind = "openai"
base_url = "{url}"
api_key_env = "B_KEY"
{A_THEN_B}
[probes]
kind = "none"
"""


# a key of no known shape (only the exact match catches it), and OpenAI's own shape
@pytest.mark.parametrize(("key", "masked"), [("Zq81mXv0PLa9rT4cWn2bYh6KdE", False),
                                             (KEY, False), (KEY, True)])
async def test_upstream_errors_echoing_the_key_are_redacted_everywhere(
        echoing: EchoingUpstream, start_daemon: Any, caplog: pytest.LogCaptureFixture,
        key: str, masked: bool) -> None:
    caplog.set_level(logging.DEBUG)
    echoing.masked = masked
    d = await start_daemon(two_echoing(echoing.url), env={"A_KEY": key, "B_KEY": key + "b"})
    r = await d.http.post("/v1/chat/completions", json=HELLO)
    assert r.status_code == 503
    messages = [a["message"] for a in r.json()["error"]["attempts"]]
    assert all(m.startswith("Incorrect API key provided: [redacted]") for m in messages), messages
    probe = await d.http.post("/v1/models/a/m/probe")
    events = await d.http.get("/v1/events", params={"recent": "1"})
    status = await d.http.get("/v1/status")
    assert "model:failover" in events.text and "Incorrect API key" in events.text
    shown = (key[:8], key[-6:])  # neither the key nor the ends a masked form shows
    for text in (r.text, probe.text, events.text, status.text, caplog.text):
        assert not any(part in text for part in shown), text



async def tcp_status(port: int, authorization: bytes) -> int:
    """The status a raw request with this Authorization value gets on the TCP listener."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        body = orjson.dumps(HELLO)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: "
                     + authorization + b"\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode()
                     + b"\r\nConnection: close\r\n\r\n" + body)
        async with asyncio.timeout(10):
            raw = await reader.read()
    finally:
        writer.close()
    return int(raw.split(b" ", 2)[1])


async def test_a_token_that_is_not_utf8_gets_401_not_500(fake_openai: Any, start_daemon: Any,
                                                         short_dir: Path) -> None:
    fake = await fake_openai()
    port, tcp = tcp_listener(short_dir)
    await start_daemon(tcp + one_model(fake.url), env={"A_KEY": KEY})
    for bad in (b"Bearer \xff\xfe", b"Bearer s3cret\xff", b"Bearer s3cr\xc3\xa9t"):
        assert await tcp_status(port, bad) == 401, bad
    assert fake.requests == []
    assert await tcp_status(port, b"Bearer s3cret") == 200


def nested(depth: int) -> bytes:
    """A JSON schema `depth` levels deep."""
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def deep_tools(depth: int) -> bytes:
    """A chat request whose whole body is `depth` levels deep (body, tools, tool, function,
    parameters, then the schema)."""
    return (b'{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", '
            b'"function": {"name": "f", "parameters": ' + nested(depth - 4) + b"}}]}")


@pytest.mark.parametrize(("front", "payload"), [
    ("/v1/chat/completions", deep_tools(300)),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "metadata": '
     + b"[" * 600 + b"]" * 600 + b"}"),
    ("/v1/messages", b'{"model": "a/m", "max_tokens": 5, "messages": [{"role": "user", '
     b'"content": "x"}], "tools": [{"name": "t", "input_schema": ' + nested(400) + b"}]}"),
])
async def test_deep_json_the_daemon_cannot_forward_is_400(fake_openai: Any, start_daemon: Any,
                                                          caplog: pytest.LogCaptureFixture,
                                                          front: str, payload: bytes) -> None:
    fake = await fake_openai()
    d = await start_daemon(one_model(fake.url), env={"A_KEY": KEY})
    status, body = await raw_request(d.socket, post(front, payload))
    assert status == 400, body
    assert b"deeper than 200 levels" in body
    assert fake.requests == [] and "Traceback" not in caplog.text
    # as deep as the limit allows: forwarded
    status, body = await raw_request(d.socket, post("/v1/chat/completions", deep_tools(200)))
    assert status == 200, body
    assert len(fake.chat_requests()) == 1


def failover_config(a: FakeOpenAI, b: FakeOpenAI, hook: Path) -> str:
    # (a model id with control characters is refused at load: tests/test_config.py)
    return f"""
{providers(a=a.url, b=b.url)}
{A_THEN_B}
retry_after_max = 0
[probes]
kind = "none"
[[hooks]]
events = ["model:failover"]
exec = ["{hook}"]
timeout = 5
"""


NOTICES = ["\x1b[31mred\x1b[0m", "nul\x00here", "tab\there", "x\r\nX-Evil: 1", "pi ≈ 3.14 ✓",
           "bell\x07 del\x7f"]


@pytest.mark.parametrize("stream", [False, True])
async def test_control_characters_in_hook_messages_do_not_lose_the_answer(
        fake_openai: Any, start_daemon: Any, tmp_path: Path, stream: bool) -> None:
    a = await fake_openai(default="rate_limit")
    b = await fake_openai(reply="from b")
    hook = tmp_path / "hook"
    hook.write_text("#!/bin/sh\ncat >/dev/null\nprintf '%s\\n' '"
                    + orjson.dumps({"messages": NOTICES}).decode() + "'\n")
    hook.chmod(0o755)
    d = await start_daemon(failover_config(a, b, hook))
    async with d.http.stream("POST", "/v1/chat/completions",
                             json={**HELLO, "stream": stream}) as r:
        raw = await r.aread()
    assert r.status_code == 200
    assert "x-evil" not in r.headers
    assert r.headers["x-failoverd-model"] == "b/m"
    assert r.headers["x-failoverd-failover"] == "a/m>b/m:rate_limit"
    assert r.headers["x-failoverd-notice"] == ("[31mred [0m | nul here | tab here | "
                                               "x  X-Evil: 1 | pi ? 3.14 ? | bell  del")
    if stream:
        first = orjson.loads(raw.split(b"\n\n")[0].removeprefix(b"data: "))
        assert first["failoverd"]["notices"] == NOTICES
        assert raw.endswith(b"data: [DONE]\n\n")
    else:
        assert orjson.loads(raw)["failoverd"]["notices"] == NOTICES


@pytest.mark.parametrize("tools", [
    b"[5]", b'[{"type": "function", "function": 5}]',
    b'[{"type": "function", "function": {"name": 5}}]', b'[{"type": 5}]',
])
async def test_malformed_tools_are_400_not_503(fake_anthropic: Any, start_daemon: Any,
                                               tools: bytes) -> None:
    fake = await fake_anthropic()
    d = await start_daemon(f"""
[providers.a]
kind = "anthropic"
base_url = "{fake.url}"
[models."a/m"]
provider = "a"
capabilities = ["tools"]
[probes]
kind = "none"
""")
    status, body = await raw_request(d.socket, post(
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "x"}], "tools": ' + tools + b"}"))
    assert status == 400, body
    assert orjson.loads(body)["error"]["param"] == "tools[0]"
    assert fake.requests == []
