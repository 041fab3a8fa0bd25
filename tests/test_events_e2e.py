"""Events end to end: GET /v1/events (SSE) over the Unix socket, `failoverctl events`, and the
audit log, with the in-process daemon failing over between fake upstreams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from failoverd.events import EVENT_TYPES
from tests.fakes.openai import FakeOpenAI
from tests.helpers import FAILOVERCTL, HELLO, failoverctl, pair_config


def config(a: FakeOpenAI, b: FakeOpenAI, daemon: str = "") -> str:
    # failure_threshold = 1: one 429 on the primary opens its breaker, so a single request
    # yields model:failover and breaker:opened
    return pair_config(a, b, head=daemon, tail="[breaker]\nfailure_threshold = 1\n")


class SseReader:
    """Parses a text/event-stream response into (id, event, data) events."""

    def __init__(self, resp: httpx.Response) -> None:
        self._lines = resp.aiter_lines()
        self.comments: list[str] = []

    async def next(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next event's fields (with "data" parsed), or None when the stream ended."""
        fields: dict[str, Any] = {}
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if not line:
                    if fields:
                        return fields
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                fields[name] = orjson.loads(value) if name == "data" else value
        return None

    async def until_connected(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Events sent before the ": connected" comment (a replay), then returns."""
        replayed = []
        async with asyncio.timeout(timeout):
            while "connected" not in self.comments:
                fields: dict[str, Any] = {}
                async for line in self._lines:
                    if line.startswith(":"):
                        self.comments.append(line[1:].strip())
                        break
                    if not line:
                        if fields:
                            replayed.append(fields)
                            fields = {}
                        continue
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    fields[name] = orjson.loads(value) if name == "data" else value
        return replayed


@contextlib.asynccontextmanager
async def sse(d: Any, headers: dict[str, str] | None = None) -> AsyncIterator[SseReader]:
    async with d.http.stream("GET", "/v1/events", headers=headers) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        yield SseReader(resp)


async def fail_over(d: Any) -> httpx.Response:
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "default", "messages": HELLO, "user": "s1"})
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == "b/gpt-b"
    return resp


@pytest.fixture
async def daemon(fake_openai: Any, start_daemon: Any) -> Any:
    a = await fake_openai(default="rate_limit")
    b = await fake_openai(reply="from b")
    return await start_daemon(config(a, b))


async def test_sse_client_receives_failover_and_breaker_events_live(daemon: Any) -> None:
    async with sse(daemon) as stream:
        assert await stream.until_connected() == []
        await fail_over(daemon)
        got = [await stream.next() for _ in range(2)]
    by_type = {e["event"]: e for e in got}
    assert set(by_type) == {"breaker:opened", "model:failover"}
    failover = by_type["model:failover"]["data"]
    assert by_type["model:failover"]["id"] == failover["id"]
    assert failover["type"] == "model:failover"
    assert failover["node"] == daemon.sup.config.node
    assert failover["time"].endswith("Z")
    assert (failover["from_model"], failover["to_model"]) == ("a/gpt-a", "b/gpt-b")
    assert (failover["reason"], failover["status"]) == ("rate_limit", 429)
    assert failover["session"] == "s1"
    opened = by_type["breaker:opened"]["data"]
    assert opened["model"] == "a/gpt-a"
    assert opened["reason"] == "rate_limit"
    assert opened["open_count"] == 1
    # the breaker opened on the failure, before the fallback was chosen
    assert opened["id"] < failover["id"]


async def test_recent_returns_the_ring_and_ends(daemon: Any) -> None:
    await fail_over(daemon)
    resp = await daemon.http.get("/v1/events", params={"recent": "1"})
    assert resp.status_code == 200
    events = [orjson.loads(line[5:]) for line in resp.text.splitlines()
              if line.startswith("data:")]
    assert [e["type"] for e in events] == ["breaker:opened", "model:failover"]
    assert all(e["type"] in EVENT_TYPES for e in events)
    ids = [line[4:] for line in resp.text.splitlines() if line.startswith("id: ")]
    assert ids == [e["id"] for e in events]


async def test_last_event_id_replays_what_was_missed(daemon: Any) -> None:
    await fail_over(daemon)
    first, second = daemon.sup.service.bus.recent()
    async with sse(daemon, {"Last-Event-ID": first.id}) as stream:
        replayed = await stream.until_connected()
        assert [e["id"] for e in replayed] == [second.id]
        assert replayed[0]["data"]["type"] == "model:failover"
        # and it stays live afterwards
        daemon.sup.service.bus.emit("config:reloaded", source="test")
        live = await stream.next()
    assert live is not None
    assert live["event"] == "config:reloaded"


async def test_stopping_the_daemon_ends_the_stream(daemon: Any) -> None:
    async with sse(daemon) as stream:
        await stream.until_connected()
        stop = asyncio.create_task(daemon.stop())
        assert await stream.next(timeout=10) is None
        async with asyncio.timeout(10):
            await stop
    assert daemon.task.done()


async def test_failoverctl_events_prints_recent_events(daemon: Any) -> None:
    await fail_over(daemon)
    code, out, err = await failoverctl(daemon.socket, "events", timeout=10)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert " breaker:opened " in lines[0]
    assert " model:failover " in lines[1]
    assert "from_model=a/gpt-a" in lines[1] and "to_model=b/gpt-b" in lines[1]
    assert "session_tokens=null" in lines[1]  # JSON-style values, as in the audit log
    assert "None" not in out
    code, out, err = await failoverctl(daemon.socket, "--json", "events", timeout=10)
    assert code == 0, err
    events = [orjson.loads(line) for line in out.splitlines()]
    assert [e["type"] for e in events] == ["breaker:opened", "model:failover"]


async def test_failoverctl_events_follow_prints_a_live_event(daemon: Any) -> None:
    svc = daemon.sup.service
    proc = await asyncio.create_subprocess_exec(
        FAILOVERCTL, "--socket", daemon.socket, "--json", "events", "--follow",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(10):
            while not svc.streams:  # its subscription exists: it is listening now
                await asyncio.sleep(0.01)
            await fail_over(daemon)
            assert proc.stdout is not None
            lines = [orjson.loads(await proc.stdout.readline()) for _ in range(2)]
        assert {e["type"] for e in lines} == {"breaker:opened", "model:failover"}
        assert proc.returncode is None  # still following
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await proc.communicate()
    async with asyncio.timeout(5):
        while svc.streams:  # the daemon noticed the client went away
            await asyncio.sleep(0.01)


async def test_failoverctl_events_when_the_daemon_is_down(short_dir: Path) -> None:
    code, _, err = await failoverctl(str(short_dir / "none.sock"), "events", timeout=10)
    assert code == 2
    assert "cannot reach failoverd" in err


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_audit_log_has_one_line_per_event(fake_openai: Any, start_daemon: Any,
                                                caplog: pytest.LogCaptureFixture,
                                                log_format: str) -> None:
    caplog.set_level(logging.INFO, logger="failoverd.audit")
    a = await fake_openai(default="rate_limit")
    b = await fake_openai()
    d = await start_daemon(config(a, b, daemon=f'log_format = "{log_format}"'))
    await fail_over(d)
    d.sup.service.bus.emit("config:rejected", source="x.toml", problems=["a = 1: bad"])
    events = d.sup.service.bus.recent()
    assert [e.type for e in events] == ["breaker:opened", "model:failover", "config:rejected"]
    lines = [r.getMessage() for r in caplog.records if r.name == "failoverd.audit"]
    assert len(lines) == len(events)
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "failoverd.audit")
    for line, event in zip(lines, events, strict=True):
        assert "\n" not in line
        if log_format == "json":
            assert orjson.loads(line) == orjson.loads(event.to_json())
        else:
            assert line.startswith(f"event {event.type} ")
    if log_format == "text":
        assert "from_model=a/gpt-a to_model=b/gpt-b reason=rate_limit status=429" in lines[1]
        assert 'problems=["a = 1: bad"]' in lines[2]
    # no prompt text in the log
    assert not any("hello" in line for line in lines)


async def test_reload_events(daemon: Any) -> None:
    path = Path(daemon.sup.config_path)
    good = path.read_text()
    path.write_text(good + "\n[routing.bogus]\nx = 1\n")
    async with sse(daemon) as stream:
        await stream.until_connected()
        resp = await daemon.http.post("/v1/reload")
        assert resp.status_code == 422
        rejected = await stream.next()
        path.write_text(good)
        resp = await daemon.http.post("/v1/reload")
        assert resp.status_code == 200
        reloaded = await stream.next()
    assert rejected is not None and rejected["event"] == "config:rejected"
    assert rejected["data"]["source"] == str(path)
    assert rejected["data"]["problems"] and all(
        isinstance(p, str) for p in rejected["data"]["problems"])
    assert reloaded is not None and reloaded["event"] == "config:reloaded"
    assert reloaded["data"]["models"] == 2
    assert reloaded["data"]["providers"] == 2


async def test_chain_exhausted_event(fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai(default="rate_limit")
    b = await fake_openai(default="auth")
    d = await start_daemon(config(a, b))
    resp = await d.http.post("/v1/chat/completions", json={"model": "default",
                                                           "messages": HELLO})
    assert resp.status_code == 503
    events = {e.type: e for e in d.sup.service.bus.recent()}
    exhausted = events["chain:exhausted"].as_dict()
    assert [(x["model"], x["reason"], x["status"]) for x in exhausted["attempts"]] == [
        ("a/gpt-a", "rate_limit", 429), ("b/gpt-b", "auth", 401)]
    assert exhausted["attempts"] == resp.json()["error"]["attempts"]
    creds = events["provider:credentials"].as_dict()
    assert (creds["provider"], creds["state"]) == ("b", "auth")
    assert creds["retry_at"] is not None
