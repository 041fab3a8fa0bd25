"""Hooks end to end: real hook scripts run by the in-process daemon during real failovers.

Each test writes a small /bin/sh hook into tmp_path, configures it as ``[[hooks]]``, makes
the primary fake upstream answer 429 and checks what the client, the fallback upstream and
the event bus saw.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO, pair_config

RATE_LIMIT_MESSAGE = "Rate limit reached for gpt-4o in organization org-test"


def hook_script(tmp_path: Path, name: str, body: str) -> Path:
    """An executable /bin/sh script; ``$OUT`` is a file next to it for what the hook saw."""
    path = tmp_path / name
    out = tmp_path / f"{name}.stdin"
    path.write_text(f"#!/bin/sh\nOUT='{out}'\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def printing_hook(tmp_path: Path, output: dict[str, Any] | str, name: str = "hook") -> Path:
    """A hook that saves its stdin and environment, then prints ``output``."""
    text = output if isinstance(output, str) else orjson.dumps(output).decode()
    return hook_script(tmp_path, name, f"""cat >> "$OUT"
echo >> "$OUT"
echo "$FAILOVERD_EVENT $FAILOVERD_EVENT_ID" > "$OUT.env"
printf '%s\\n' '{text}'""")


def config(a: FakeOpenAI, b: FakeOpenAI, c: FakeOpenAI | None = None, *,
           hooks: str = "", routing: str = "", b_window: int = 128000,
           breaker: str = "") -> str:
    third = "" if c is None else f"""
[providers.c]
kind = "openai"
base_url = "{c.url}"
[models."c/gpt-c"]
provider = "c"
context_window = 128000
"""
    fallbacks = '["b/gpt-b", "c/gpt-c"]' if c is not None else '["b/gpt-b"]'
    return pair_config(a, b, a_window=128000, b_window=b_window, more=third,
                       fallbacks=fallbacks, routing=routing,
                       tail=f"[breaker]\n{breaker}\n{hooks}\n")


def hooks_toml(path: Path, events: str = '["model:failover"]', timeout: float = 2) -> str:
    return f'[[hooks]]\nevents = {events}\nexec = ["{path}"]\ntimeout = {timeout}\n'


def seen(hook: Path) -> list[dict[str, Any]]:
    """The events a printing hook got on stdin, one per run."""
    return [orjson.loads(line) for line in Path(f"{hook}.stdin").read_bytes().splitlines()
            if line.strip()]


async def chat(d: Any, messages: list[dict[str, Any]] | None = None,
               **extra: Any) -> httpx.Response:
    body = {"model": "default", "messages": messages or HELLO, **extra}
    return await d.http.post("/v1/chat/completions", json=body)


async def recent(d: Any) -> list[dict[str, Any]]:
    """The daemon's recent events, read through GET /v1/events?recent=1."""
    resp = await d.http.get("/v1/events", params={"recent": "1"})
    assert resp.status_code == 200
    return [orjson.loads(line[5:]) for line in resp.text.splitlines()
            if line.startswith("data:")]


def long_conversation(turns: int = 6, chars: int = 1600) -> list[dict[str, Any]]:
    """About ``turns * 2 * chars / 4`` estimated tokens: far beyond a 1000-token window."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} " + "lorem " * (chars // 6)})
        messages.append({"role": "assistant", "content": f"answer {i} " + "ipsum " * (chars // 6)})
    messages.append({"role": "user", "content": "final question"})
    return messages


@pytest.fixture
async def upstreams(fake_openai: Any) -> tuple[FakeOpenAI, FakeOpenAI, FakeOpenAI]:
    a = await fake_openai(reply="from a", default="rate_limit")
    b = await fake_openai(reply="from b")
    c = await fake_openai(reply="from c")
    return a, b, c


async def test_hook_gets_the_failover_event_on_stdin(upstreams: Any, start_daemon: Any,
                                                     tmp_path: Path) -> None:
    a, b, _ = upstreams
    hook = printing_hook(tmp_path, "")
    d = await start_daemon(config(a, b, hooks=hooks_toml(hook)))
    resp = await chat(d, user="sess-1")
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "from b"
    assert "x-failoverd-notice" not in resp.headers  # empty stdout: no opinion
    [event] = seen(hook)
    assert event["type"] == "model:failover"
    assert event["from_model"] == "a/gpt-a"
    assert event["to_model"] == "b/gpt-b"
    assert event["reason"] == "rate_limit"
    assert event["status"] == 429
    assert RATE_LIMIT_MESSAGE in event["error"]
    assert event["session"] == "sess-1"
    assert event["session_tokens"] > 0
    assert event["target_context_window"] == 128000
    assert event["attempt"] == 1
    env_type, env_id = Path(f"{hook}.stdin.env").read_text().split()
    assert env_type == "model:failover"
    assert env_id == event["id"]


async def test_hook_environment_has_no_provider_keys(upstreams: Any, start_daemon: Any,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, _ = upstreams
    monkeypatch.setenv("FOD_TEST_A_KEY", "sk-hook-test-secret")
    monkeypatch.setenv("FOD_TEST_VISIBLE", "plain value")
    hook = hook_script(tmp_path, "env", 'cat > /dev/null\nenv > "$OUT"')
    body = config(a, b, hooks=hooks_toml(hook)).replace(
        f'base_url = "{a.url}"', f'base_url = "{a.url}"\napi_key_env = "FOD_TEST_A_KEY"')
    d = await start_daemon(body, env=dict(os.environ))
    resp = await chat(d)
    assert resp.status_code == 200
    assert a.chat_requests()[0].headers["Authorization"] == "Bearer sk-hook-test-secret"
    env = Path(f"{hook}.stdin").read_text()
    assert "sk-hook-test-secret" not in env
    assert "FOD_TEST_VISIBLE=plain value" in env
    assert "FAILOVERD_EVENT=model:failover" in env


async def test_abort_returns_the_original_error_and_spares_the_fallback(
        upstreams: Any, start_daemon: Any, tmp_path: Path) -> None:
    a, b, _ = upstreams
    hook = printing_hook(tmp_path, {"abort": True, "messages": ["primary is throttled"]})
    d = await start_daemon(config(a, b, hooks=hooks_toml(hook)))
    resp = await chat(d)
    assert resp.status_code == 429  # the upstream's status, not failoverd's own
    error = resp.json()["error"]
    assert RATE_LIMIT_MESSAGE in error["message"]
    assert error["type"] == "rate_limit"
    assert error["messages"] == ["primary is throttled"]
    assert resp.headers["x-failoverd-notice"] == "primary is throttled"
    assert "x-failoverd-failover" not in resp.headers  # the hop was never taken
    assert "x-failoverd-model" not in resp.headers  # nothing served
    assert b.chat_requests() == []
    assert len(a.chat_requests()) == 1


async def test_abort_before_the_first_chunk_of_a_stream(upstreams: Any, start_daemon: Any,
                                                        tmp_path: Path) -> None:
    a, b, _ = upstreams
    hook = printing_hook(tmp_path, {"abort": True, "messages": ["not now"]})
    d = await start_daemon(config(a, b, hooks=hooks_toml(hook)))
    body = {"model": "default", "messages": HELLO, "stream": True}
    async with d.http.stream("POST", "/v1/chat/completions", json=body) as resp:
        raw = await resp.aread()
    # nothing was streamed yet, so the client gets a plain JSON error with the real status
    assert resp.status_code == 429
    error = orjson.loads(raw)["error"]
    assert RATE_LIMIT_MESSAGE in error["message"]
    assert error["messages"] == ["not now"]
    assert b.chat_requests() == []


async def test_messages_reach_the_client_in_header_and_body(upstreams: Any, start_daemon: Any,
                                                            tmp_path: Path) -> None:
    a, b, _ = upstreams
    hook = printing_hook(tmp_path, {"messages": ["switched to b", "expect slower answers"]})
    d = await start_daemon(config(a, b, hooks=hooks_toml(hook)))
    resp = await chat(d)
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == "b/gpt-b"
    assert resp.headers["x-failoverd-notice"] == "switched to b | expect slower answers"
    data = resp.json()
    assert data["choices"][0]["message"]["content"] == "from b"
    assert data["failoverd"] == {"notices": ["switched to b", "expect slower answers"]}


async def test_messages_reach_a_streaming_client(upstreams: Any, start_daemon: Any,
                                                 tmp_path: Path) -> None:
    a, b, _ = upstreams
    hook = printing_hook(tmp_path, {"messages": ["switched to b"]})
    d = await start_daemon(config(a, b, hooks=hooks_toml(hook)))
    body = {"model": "default", "messages": HELLO, "stream": True}
    async with d.http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["x-failoverd-notice"] == "switched to b"
        lines = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [orjson.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["failoverd"] == {"notices": ["switched to b"]}
    assert all("failoverd" not in c for c in chunks[1:])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "from b"


async def test_context_skip_moves_on_to_the_next_candidate(upstreams: Any, start_daemon: Any,
                                                           tmp_path: Path) -> None:
    a, b, c = upstreams
    hook = printing_hook(tmp_path, {"context": "skip"})
    # routing says fail: the hook's choice must win for this failover
    d = await start_daemon(config(a, b, c, hooks=hooks_toml(hook), b_window=1000,
                                  routing='context_policy = "fail"'))
    resp = await chat(d, long_conversation())
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "c/gpt-c"
    assert b.chat_requests() == []
    assert len(c.chat_requests()) == 1
    # one failover decision per candidate: to b (skipped by the hook's policy), then to c
    to_b, to_c = seen(hook)
    assert (to_b["from_model"], to_b["to_model"]) == ("a/gpt-a", "b/gpt-b")
    assert to_b["target_context_window"] == 1000
    assert to_b["session_tokens"] > 1000
    assert (to_c["from_model"], to_c["to_model"]) == ("a/gpt-a", "c/gpt-c")
    assert to_c["target_context_window"] == 128000
    assert resp.headers["x-failoverd-failover"] == "a/gpt-a>c/gpt-c:rate_limit"


async def test_context_truncate_drops_the_oldest_turns(upstreams: Any, start_daemon: Any,
                                                       tmp_path: Path) -> None:
    a, b, c = upstreams
    hook = printing_hook(tmp_path, {"context": "truncate"})
    d = await start_daemon(config(a, b, c, hooks=hooks_toml(hook), b_window=1000))
    messages = long_conversation()
    resp = await chat(d, messages)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "b/gpt-b"
    assert c.chat_requests() == []
    sent = b.chat_requests()[0].body["messages"]
    assert len(a.chat_requests()[0].body["messages"]) == len(messages)  # primary got it all
    assert 2 <= len(sent) < len(messages)
    assert sent[0] == messages[0]  # the system message stays
    assert sent[-1] == messages[-1]  # and so does the last user turn
    # what is left is a suffix of the conversation: the oldest turns went first
    assert sent[1:] == messages[len(messages) - len(sent) + 1:]
    assert "question 0" not in orjson.dumps(sent).decode()
    assert "oldest message(s)" in resp.headers["x-failoverd-notice"]


async def test_context_fail_fails_the_request(upstreams: Any, start_daemon: Any,
                                              tmp_path: Path) -> None:
    a, b, c = upstreams
    hook = printing_hook(tmp_path, {"context": "fail"})
    d = await start_daemon(config(a, b, c, hooks=hooks_toml(hook), b_window=1000))
    resp = await chat(d, long_conversation())
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "context_overflow"
    assert "b/gpt-b" in error["message"]
    assert b.chat_requests() == []
    assert c.chat_requests() == []


@pytest.mark.parametrize(("name", "body", "error"), [
    ("slow", 'cat > "$OUT"\nexec sleep 30', "timed out after 0.3s"),
    ("junk", 'cat > "$OUT"\necho "this is not json"', "stdout is not JSON"),
    ("crash", 'cat > "$OUT"\necho \'{"abort": true}\'\nexit 3', "exited with status 3"),
    ("wrong", 'cat > "$OUT"\necho \'{"abort": "yes"}\'', "'abort' must be a boolean"),
], ids=["timeout", "junk", "nonzero", "bad-field"])
async def test_a_broken_hook_is_reported_and_the_request_goes_on(
        upstreams: Any, start_daemon: Any, tmp_path: Path, name: str, body: str,
        error: str) -> None:
    a, b, _ = upstreams
    hook = hook_script(tmp_path, name, body)
    d = await start_daemon(config(a, b, hooks=hooks_toml(hook, timeout=0.3)))
    started = time.monotonic()
    resp = await chat(d)
    assert time.monotonic() - started < 3
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == "b/gpt-b"
    assert "x-failoverd-notice" not in resp.headers
    events = await recent(d)
    failover = next(e for e in events if e["type"] == "model:failover")
    failed = [e for e in events if e["type"] == "hook:failed"]
    assert len(failed) == 1
    assert failed[0]["hook"] == str(hook)
    assert failed[0]["event"] == "model:failover"
    assert failed[0]["event_id"] == failover["id"]
    assert error in failed[0]["error"]
    assert Path(f"{hook}.stdin").exists()  # it did run, with the event on stdin
    metrics = (await d.http.get("/metrics")).text
    assert "failoverd_hook_failures_total 1" in metrics


async def test_a_missing_hook_program_is_reported(upstreams: Any, start_daemon: Any,
                                                  tmp_path: Path) -> None:
    a, b, _ = upstreams
    d = await start_daemon(config(a, b, hooks=hooks_toml(tmp_path / "nope")))
    resp = await chat(d)
    assert resp.status_code == 200
    failed = [e for e in await recent(d) if e["type"] == "hook:failed"]
    assert len(failed) == 1
    assert "cannot start" in failed[0]["error"]


async def test_hooks_on_other_events_run_in_the_background(upstreams: Any, start_daemon: Any,
                                                           tmp_path: Path) -> None:
    a, b, _ = upstreams
    release = tmp_path / "release"
    # blocks until the test releases it: the request can only finish if nobody waits on it
    hook = hook_script(tmp_path, "opened", f"""cat > "$OUT.tmp"
while [ ! -e '{release}' ]; do sleep 0.02; done
mv "$OUT.tmp" "$OUT\"""")
    d = await start_daemon(config(a, b, hooks=hooks_toml(hook, '["breaker:opened"]', 10),
                                  breaker="failure_threshold = 1"))
    resp = await chat(d)
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == "b/gpt-b"
    assert d.sup.service.hooks.pending == 1  # still running, the request did not wait
    # a second request is not held up either
    resp = await chat(d)
    assert resp.headers["x-failoverd-model"] == "b/gpt-b"
    release.touch()
    out = Path(f"{hook}.stdin")
    async with asyncio.timeout(5):
        while not out.exists():
            await asyncio.sleep(0.02)
    event = orjson.loads(out.read_bytes())
    assert event["type"] == "breaker:opened"
    assert event["model"] == "a/gpt-a"
    assert event["reason"] == "rate_limit"
    assert event["open_count"] == 1
    assert event["retry_at"] is not None
    async with asyncio.timeout(5):
        while d.sup.service.hooks.pending:
            await asyncio.sleep(0.02)
    assert not os.path.exists(f"{hook}.stdin.tmp")
