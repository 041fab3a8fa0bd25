"""model:failover hooks within the request's deadline, and the secrets hooks never see.

The request waits for its failover hooks, so a hook's own `timeout` must not stretch the
whole-request budget (routing.deadline or x-failoverd-deadline). Real hook scripts, the
in-process daemon, fake upstreams on loopback.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO
from tests.test_hooks_e2e import chat, config, hook_script, hooks_toml, recent


async def post_chat(d: Any, headers: dict[str, str]) -> httpx.Response:
    return await d.http.post("/v1/chat/completions", headers=headers,
                             json={"model": "default", "messages": HELLO})


@pytest.fixture
async def pair(fake_openai: Any) -> tuple[FakeOpenAI, FakeOpenAI]:
    a = await fake_openai(reply="from a", default="rate_limit")
    b = await fake_openai(reply="from b")
    return a, b


async def test_a_slow_hook_is_cut_at_the_request_deadline(pair: Any, start_daemon: Any,
                                                           tmp_path: Path) -> None:
    a, b = pair
    # the hook would take 30 s and may take 60: the client's 0.6 s budget is what counts
    hook = hook_script(tmp_path, "slow", "cat > /dev/null\nexec sleep 30")
    d = await start_daemon(config(a, b, hooks=hooks_toml(hook, timeout=60)))
    started = time.monotonic()
    resp = await post_chat(d, {"x-failoverd-deadline": "0.6"})
    took = time.monotonic() - started
    assert took < 5, took
    # the budget went to the hook: no time was left for the fallback
    assert resp.status_code == 503
    assert resp.json()["error"]["type"] == "no_model_available"
    assert b.chat_requests() == []
    failed = [e for e in await recent(d) if e["type"] == "hook:failed"]
    assert len(failed) == 1
    assert "by the request's deadline" in failed[0]["error"]
    assert "its timeout is 60s" in failed[0]["error"]
    hooks = (await d.http.get("/v1/status")).json()["hooks"]
    assert hooks["runs"] == 1 and hooks["failures"] == 1


async def test_a_hook_within_the_deadline_keeps_its_own_timeout(pair: Any, start_daemon: Any,
                                                                tmp_path: Path) -> None:
    a, b = pair
    hook = hook_script(tmp_path, "quick", "cat > /dev/null\necho '{}'")
    d = await start_daemon(config(a, b, hooks=hooks_toml(hook, timeout=2)))
    resp = await post_chat(d, {"x-failoverd-deadline": "20"})
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == "b/gpt-b"
    assert [e for e in await recent(d) if e["type"] == "hook:failed"] == []


async def test_hooks_do_not_inherit_the_tcp_token(
        pair: Any, start_daemon: Any, tmp_path: Path, short_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = pair
    token = "tcp-token-for-hooks-0123456789"
    (short_dir / "token").write_text(token + "\n")
    monkeypatch.setenv("FOD_TEST_TOKEN", token)
    monkeypatch.setenv("FOD_TEST_VISIBLE", "plain value")
    hook = hook_script(tmp_path, "env", 'cat > /dev/null\nenv > "$OUT"')
    body = config(a, b, hooks=hooks_toml(hook))
    with socket.socket() as probe:  # a free loopback port for the listener
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    body = (f'tcp = "127.0.0.1:{port}"\ntcp_token_file = "{short_dir / "token"}"\n' + body)
    d = await start_daemon(body, env=dict(os.environ))
    assert d.sup.service.runtime.config.daemon.tcp_token == token
    resp = await chat(d)
    assert resp.status_code == 200
    env = Path(f"{hook}.stdin").read_text()
    assert token not in env
    assert "FOD_TEST_VISIBLE=plain value" in env
