"""Hook accounting end to end: each hook run is counted once, as a run (possibly failed) or
as dropped, in /metrics, /v1/status and the events, through the in-process daemon."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from failoverd import hooks as hooks_mod
from failoverd.clock import ManualClock
from failoverd.config import HookConfig
from failoverd.events import EventBus
from failoverd.hooks import HookRunner
from tests.fakes.openai import FakeOpenAI
from tests.test_hooks_e2e import chat, config, hook_script, hooks_toml, recent


@pytest.fixture
async def pair(fake_openai: Any) -> tuple[FakeOpenAI, FakeOpenAI]:
    a = await fake_openai(reply="from a", default="rate_limit")
    b = await fake_openai(reply="from b")
    return a, b


def gated_hook(tmp_path: Path, name: str, gate: Path) -> Path:
    """A hook that records its start in ``$OUT`` and then waits for ``gate`` to exist."""
    return hook_script(tmp_path, name, f"""cat > "$OUT"
while [ ! -e '{gate}' ]; do sleep 0.02; done""")


async def wait_for_file(path: Path) -> None:
    async with asyncio.timeout(10):
        while not path.exists():
            await asyncio.sleep(0.02)


async def hook_counters(d: Any) -> tuple[dict[str, int], dict[str, int]]:
    """(/metrics hook counters by name, /v1/status "hooks")."""
    text = (await d.http.get("/metrics")).text
    metrics = {m[1]: int(m[2]) for m in re.finditer(
        r"^failoverd_hook_(\w+)_total (\d+)$", text, re.M)}
    for name in ("runs", "failures", "dropped"):
        assert re.search(rf"^# HELP failoverd_hook_{name}_total \S", text, re.M), name
    status = (await d.http.get("/v1/status")).json()["hooks"]
    return metrics, status


async def test_a_skipped_failover_hook_is_dropped_not_failed(
        pair: Any, start_daemon: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inline bound is full: the second failover's hooks are skipped. Each skipped run is
    counted once, as dropped (it was counted as a failure too), and emitted as hook:failed."""
    monkeypatch.setattr(hooks_mod, "MAX_INLINE", 1)
    a, b = pair
    gate = tmp_path / "gate"
    first = gated_hook(tmp_path, "first", gate)
    second = gated_hook(tmp_path, "second", gate)
    d = await start_daemon(config(a, b, hooks=hooks_toml(first, timeout=20)
                                  + hooks_toml(second, timeout=20)))
    held = asyncio.create_task(chat(d))
    try:
        await wait_for_file(Path(f"{first}.stdin"))
        await wait_for_file(Path(f"{second}.stdin"))
        resp = await asyncio.wait_for(chat(d), 10)  # not held up by the busy hooks
        assert resp.status_code == 200
        assert resp.headers["x-failoverd-model"] == "b/gpt-b"
    finally:
        gate.touch()
    assert (await asyncio.wait_for(held, 10)).status_code == 200

    metrics, status = await hook_counters(d)
    assert metrics == {"runs": 2, "failures": 0, "dropped": 2}
    assert status == {"runs": 2, "failures": 0, "dropped": 2}
    events = await recent(d)
    failovers = [e for e in events if e["type"] == "model:failover"]
    failed = [e for e in events if e["type"] == "hook:failed"]
    # one per skipped hook, naming each, for the second failover
    assert sorted(e["hook"] for e in failed) == sorted([str(first), str(second)])
    assert {e["event_id"] for e in failed} == {failovers[1]["id"]}
    assert all(e["error"].startswith("skipped: 1 failover hook runs") for e in failed)


async def test_background_runs_beyond_the_bound_are_dropped_once_each(
        pair: Any, start_daemon: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hooks on breaker events and room for two runs: the next event's two runs are
    dropped, counted two (a run per hook, like `runs`), and neither is a failure."""
    monkeypatch.setattr(hooks_mod, "MAX_PENDING", 2)
    a, b = pair
    gate = tmp_path / "gate"
    first = gated_hook(tmp_path, "first", gate)
    second = gated_hook(tmp_path, "second", gate)
    d = await start_daemon(config(a, b, hooks=hooks_toml(first, '["breaker:*"]', 20)
                                  + hooks_toml(second, '["breaker:*"]', 20)))
    try:
        resp = await d.http.post("/v1/models/a/gpt-a/open", json={"seconds": 60})
        assert resp.status_code == 200
        await wait_for_file(Path(f"{first}.stdin"))
        await wait_for_file(Path(f"{second}.stdin"))
        resp = await d.http.post("/v1/models/a/gpt-a/reset")
        assert resp.status_code == 200
        metrics, status = await hook_counters(d)
        assert metrics == {"runs": 2, "failures": 0, "dropped": 2}
        assert status == metrics
    finally:
        gate.touch()
    async with asyncio.timeout(10):
        while d.sup.service.hooks.pending:
            await asyncio.sleep(0.02)
    metrics, _ = await hook_counters(d)
    assert metrics == {"runs": 2, "failures": 0, "dropped": 2}
    # background drops are logged, not emitted: a flood must not feed more hook runs
    assert [e for e in await recent(d) if e["type"] == "hook:failed"] == []


async def test_a_failed_run_is_a_failure_not_a_drop(pair: Any, start_daemon: Any,
                                                    tmp_path: Path) -> None:
    a, b = pair
    hook = hook_script(tmp_path, "crash", 'cat > "$OUT"\nexit 3')
    d = await start_daemon(config(a, b, hooks=hooks_toml(hook)))
    assert (await chat(d)).status_code == 200
    metrics, status = await hook_counters(d)
    assert metrics == status == {"runs": 1, "failures": 1, "dropped": 0}


async def test_a_run_that_cannot_be_spawned_is_a_counted_failure() -> None:
    """A NUL in the argv (built without config.py's check) made create_subprocess_exec raise
    ValueError, which escaped the run: not counted, not emitted, and in the background a
    task exception nobody retrieved."""
    bus = EventBus("n1", ManualClock())
    runner = HookRunner((HookConfig(events=("*",), exec=("/bin/echo", "a\0b")),), bus)
    outcome = await runner.run(bus.emit("model:failover", from_model="a", to_model="b"))
    assert outcome.errors and "cannot start" in outcome.errors[0]
    runner.fire_and_forget(bus.emit("breaker:opened", model="a"))
    async with asyncio.timeout(5):
        await runner.aclose()
    assert (runner.runs, runner.failures, runner.dropped) == (2, 2, 0)
    failed = [e for e in bus.recent() if e.type == "hook:failed"]
    assert [e.fields["event"] for e in failed] == ["model:failover", "breaker:opened"]
