"""What many test modules share: bounded polling, config bodies for start_daemon, and talking
to a running daemon."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from failoverd import config as config_mod
from failoverd.errors import ConfigError
from tests.fakes.openai import FakeOpenAI

HELLO = [{"role": "user", "content": "hello"}]  # the chat messages most tests send


async def until(predicate: Callable[[], bool], timeout: float = 5.0, *,
                interval: float = 0.01) -> None:
    """Polls `predicate()` until it holds; TimeoutError after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(interval)


async def until_async(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0, *,
                      interval: float = 0.01) -> float:
    """Polls an async predicate until it holds (for things driven by real time, such as
    APScheduler's jobs); returns the seconds it took, TimeoutError after `timeout`."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(interval)
    return time.monotonic() - started


FAILOVERCTL = str(Path(sys.executable).parent / "failoverctl")


async def failoverctl(socket: str, *args: str, timeout: float = 15) -> tuple[int, str, str]:
    """Runs the real failoverctl against `socket`: (exit code, stdout, stderr). Through
    asyncio's subprocess API, since a blocking run would stop an in-process daemon answering."""
    proc = await asyncio.create_subprocess_exec(
        FAILOVERCTL, "--socket", socket, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def providers(**tables: str | tuple[str, str]) -> str:
    """[providers.<name>] tables for a config body, one a keyword: name=base_url for an
    OpenAI-compatible provider, name=(kind, base_url) for another kind."""
    lines = []
    for name, table in tables.items():
        kind, url = table if isinstance(table, tuple) else ("openai", table)
        lines.append(f'[providers.{name}]\nkind = "{kind}"\nbase_url = "{url}"')
    return "\n".join(lines)


# a config body's models a/m (provider a) and b/m (provider b), and the [routing] table that
# makes b/m the fallback of a/m: routing keys may follow
A_THEN_B = """[models."a/m"]
provider = "a"
[models."b/m"]
provider = "b"
[routing]
primary = "a/m"
fallbacks = ["b/m"]"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    """The problems a config `text` (no [daemon] needed) is refused for, with `env` as the
    environment."""
    with pytest.raises(ConfigError) as info:
        config_mod.loads(text, env=env or {})
    return info.value.problems


async def check_config(path: Path) -> tuple[int, str]:
    """`failoverd --check-config` on the file at `path`: (exit code, stdout and stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "failoverd.cli.daemon", "--check-config", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def alive(pid: int) -> bool:
    """Running, i.e. neither gone nor a zombie waiting for a reaper (containers' PID 1 may
    never reap an orphan)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _window(tokens: int | None) -> str:
    return "" if tokens is None else f"context_window = {tokens}\n"


def pair_config(a: FakeOpenAI, b: FakeOpenAI, *, head: str = "", a_window: int | None = None,
                b_window: int | None = None, more: str = "", fallbacks: str = '["b/gpt-b"]',
                routing: str = "", tail: str = "", deadline: float = 10) -> str:
    """A config body for start_daemon: fakes `a` and `b` as OpenAI providers a and b, serving
    the primary a/gpt-a and its fallback b/gpt-b; it fails over quickly (retry_after_max 0.2),
    fails when every model is down, and never probes.

    `head` comes first, still in start_daemon's [daemon] table (daemon keys, then tables such
    as [mqtt]); `more` follows the two models (more providers and models); `routing` adds to
    [routing]; `tail` ends the body ([breaker], [[hooks]], ...); `deadline` is routing's."""
    return f"""{head}
{providers(a=a.url, b=b.url)}
[models."a/gpt-a"]
provider = "a"
{_window(a_window)}[models."b/gpt-b"]
provider = "b"
{_window(b_window)}{more}
[routing]
primary = "a/gpt-a"
fallbacks = {fallbacks}
retry_after_max = 0.2
deadline = {deadline}
when_all_unavailable = "fail"
{routing}
[probes]
kind = "none"
{tail}"""


async def ask(d: Any) -> tuple[str, Any]:
    """HELLO to the default chain with the openai SDK: (the model that answered, the raw
    response)."""
    raw = await d.openai.chat.completions.with_raw_response.create(model="default",
                                                                   messages=HELLO)
    return raw.headers["x-failoverd-model"], raw


async def chat(d: Any, model: str = "default", **headers: str) -> Any:
    """HELLO to `model` on /v1/chat/completions, with `headers`: the httpx response, whatever
    its status."""
    return await d.http.post("/v1/chat/completions", json={"model": model, "messages": HELLO},
                             headers=headers)


async def status(d: Any) -> dict[str, Any]:
    """The daemon's GET /v1/status, which must answer 200."""
    resp = await d.http.get("/v1/status")
    assert resp.status_code == 200
    result: dict[str, Any] = resp.json()
    return result


GPT = "a/gpt-a"
QWEN = "ollama/qwen2.5:7b"  # '/' and ':' in one id


def gpt_qwen_config(a: FakeOpenAI, o: FakeOpenAI, *, gpt: str = 'capabilities = ["tools"]',
                    qwen: str = "", provider_a: str = "", routing: str = "",
                    chain: str = "local", tail: str = "") -> str:
    """A config body for start_daemon, for the control API and failoverctl: fakes `a` and `o`
    as OpenAI providers a and ollama, serving GPT (8,000 tokens; the primary) and QWEN
    (32,000 tokens; its fallback); chain `chain` is QWEN then GPT; probes hourly, so never
    within a test.

    `gpt` and `qwen` add to the models' tables (`gpt` replaces the capabilities), `provider_a`
    to provider a's, `routing` to [routing]; `tail` ends the body ([breaker], ...)."""
    return f"""
[providers.a]
kind = "openai"
base_url = "{a.url}"
{provider_a}
[providers.ollama]
kind = "openai"
base_url = "{o.url}"
[models."{GPT}"]
provider = "a"
context_window = 8000
{gpt}
[models."{QWEN}"]
provider = "ollama"
context_window = 32000
{qwen}
[routing]
primary = "{GPT}"
fallbacks = ["{QWEN}"]
when_all_unavailable = "fail"
{routing}
[chains."{chain}"]
models = ["{QWEN}", "{GPT}"]
[probes]
interval = 3600
jitter = 0
{tail}"""


async def gpt_qwen_daemon(fake_openai: Any, start_daemon: Any,
                          config: Callable[[FakeOpenAI, FakeOpenAI], str] = gpt_qwen_config,
                          **kwargs: Any) -> tuple[FakeOpenAI, FakeOpenAI, Any]:
    """Fakes a (answering "from a") and o ("from qwen") and the daemon on `config(a, o)`
    (`kwargs`, such as a clock, go to start_daemon): (a, o, daemon)."""
    a = await fake_openai(reply="from a")
    o = await fake_openai(reply="from qwen")
    return a, o, await start_daemon(config(a, o), **kwargs)


def one_model_config(url: str, *, provider: str = "", model: str = "", tail: str = "") -> str:
    """A config body for start_daemon: the OpenAI upstream at `url` as provider a, serving the
    one model a/m. `provider` and `model` add to their tables; `tail` ends the body."""
    return f"""
[providers.a]
kind = "openai"
base_url = "{url}"
{provider}
[models."a/m"]
provider = "a"
{model}
{tail}"""


def free_port() -> int:
    """A loopback TCP port nothing listens on (for daemon.tcp)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def tcp_listener(directory: Path, token: str = "s3cret") -> tuple[int, str]:
    """A free loopback port and the [daemon] lines that open the TCP listener on it with
    `token` (written to a file in `directory`): (port, lines)."""
    path = directory / "token"
    path.write_text(token + "\n")
    port = free_port()
    return port, f'tcp = "127.0.0.1:{port}"\ntcp_token_file = "{path}"\n'


async def breaker(d: Any, model: str) -> tuple[str, int]:
    """A model's (state, consecutive_failures) in /v1/status."""
    entry = (await status(d))["models"][model]
    return entry["state"], entry["consecutive_failures"]


async def metric(d: Any, line: str) -> bool:
    """Whether /metrics holds this exact line."""
    return line in (await d.http.get("/metrics")).text.splitlines()


async def first_bytes(resp: Any, n: int) -> tuple[bytes, AsyncIterator[bytes]]:
    """At least `n` bytes of an httpx response's streamed body, and the rest of it to read
    on."""
    it = resp.aiter_raw()
    got = b""
    while len(got) < n:
        got += await it.__anext__()
    return got, it


def sse_payloads(raw: bytes) -> list[Any]:
    """The `data:` payloads of an SSE body, JSON decoded ("[DONE]" as it is)."""
    out: list[Any] = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: "):
            payload = line[6:]
            out.append(payload.decode() if payload == b"[DONE]" else orjson.loads(payload))
    return out


def sse_json(text: str) -> list[Any]:
    """The JSON `data:` lines of an SSE text, decoded ("data: [DONE]" left out)."""
    return [orjson.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


async def completion_stream(stream: Any) -> tuple[list[str], list[str | None], Any]:
    """An openai SDK text completion stream read to its end: every choice's text and
    finish_reason, in order, and the last usage it carried (None if none)."""
    pieces: list[str] = []
    finishes: list[str | None] = []
    usage = None
    async for event in stream:
        for choice in event.choices:
            pieces.append(choice.text)
            finishes.append(choice.finish_reason)
        usage = event.usage or usage
    return pieces, finishes, usage
