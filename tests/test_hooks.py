"""Hooks as real subprocesses: small scripts written to tmp_path."""

from __future__ import annotations

import asyncio
import shutil
import stat
import time
from pathlib import Path

import orjson
import pytest

from failoverd.clock import ManualClock, SystemClock
from failoverd.config import HookConfig, loads
from failoverd.events import Event, EventBus
from failoverd.hooks import HookOutcome, HookRunner, matches, merge, parse_output
from tests.helpers import alive


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def hook(argv: str | list[str], events: tuple[str, ...] = ("model:failover",),
         timeout: float = 5.0) -> HookConfig:
    return HookConfig(events=events, exec=tuple([argv] if isinstance(argv, str) else argv),
                      timeout=timeout)


@pytest.fixture
def bus() -> EventBus:
    return EventBus("n1", ManualClock())


def failover(bus: EventBus) -> Event:
    return bus.emit("model:failover", from_model="a", to_model="b", reason="rate_limit",
                    session_tokens=9000, target_context_window=8000)


def failed_events(bus: EventBus) -> list[Event]:
    return [e for e in bus.recent() if e.type == "hook:failed"]


def test_matching_patterns() -> None:
    assert matches(["model:failover"], "model:failover")
    assert not matches(["model:failover"], "breaker:opened")
    assert matches(["breaker:*"], "breaker:half_open")
    assert not matches(["breaker:*"], "model:failover")
    assert matches(["*"], "config:reloaded")


def test_parse_and_merge() -> None:
    assert parse_output(b"  \n") == HookOutcome()
    a = parse_output(b'{"abort": false, "messages": ["one"], "context": "skip"}')
    b = parse_output(b'{"messages": ["two"], "context": "truncate", "extra": 1}')
    c = parse_output(b'{"abort": true}')
    m = merge([a, b, c])
    assert m.abort and m.messages == ("one", "two") and m.context == "truncate"


async def test_hook_gets_event_json_on_stdin_and_can_abort(tmp_path: Path,
                                                           bus: EventBus) -> None:
    seen = tmp_path / "seen.json"
    argv = script(tmp_path, "abort", f'cat > {seen}\n'
                  'echo \'{"abort": true, "messages": ["budget exceeded"]}\'\n')
    runner = HookRunner((hook(argv),), bus)
    ev = failover(bus)
    outcome = await runner.run(ev)
    assert outcome.abort and outcome.messages == ("budget exceeded",)
    assert orjson.loads(seen.read_bytes()) == ev.as_dict()
    assert failed_events(bus) == []


async def test_messages_concatenate_and_last_context_wins(tmp_path: Path, bus: EventBus) -> None:
    first = script(tmp_path, "first",
                   'echo \'{"messages": ["switched to b"], "context": "fail"}\'\n')
    second = script(tmp_path, "second",
                    'echo \'{"messages": ["history trimmed"], "context": "truncate"}\'\n')
    silent = script(tmp_path, "silent", "exit 0\n")  # no opinion
    runner = HookRunner((hook(first), hook(second), hook(silent),
                         hook(first, events=("breaker:*",))), bus)
    outcome = await runner.run(failover(bus))
    assert outcome == HookOutcome(abort=False, messages=("switched to b", "history trimmed"),
                                  context="truncate")
    assert runner.runs == 3  # the breaker hook was not subscribed


async def test_timeout_kills_hook_and_its_children(tmp_path: Path, bus: EventBus) -> None:
    pidfile = tmp_path / "child.pid"
    argv = script(tmp_path, "slow", f"sleep 10 &\necho $! > {pidfile}\nwait\n")
    good = script(tmp_path, "good", 'echo \'{"messages": ["ok"]}\'\n')
    runner = HookRunner((hook(argv, timeout=0.3), hook(good)), bus)
    started = time.monotonic()
    outcome = await runner.run(failover(bus))
    elapsed = time.monotonic() - started
    assert elapsed < 2.0
    assert outcome.messages == ("ok",) and not outcome.abort  # the slow one contributed nothing
    [failed] = failed_events(bus)
    assert failed.fields["hook"] == argv and failed.fields["event"] == "model:failover"
    assert "timed out" in failed.fields["error"]
    child = int(pidfile.read_text())
    for _ in range(100):  # the kernel finishes the SIGKILL of the group within moments
        if not alive(child):
            break
        await asyncio.sleep(0.01)
    assert not alive(child)  # the whole group was killed, the backgrounded sleep included


@pytest.mark.parametrize(("body", "error"), [
    ("echo 'not json at all'\n", "not JSON"),
    ("echo '[1, 2]'\n", "not a JSON object"),
    ("echo '{\"abort\": \"yes\"}'\n", "'abort' must be a boolean"),
    ("echo '{\"messages\": \"hi\"}'\n", "'messages' must be a list of strings"),
    ("echo '{\"context\": \"squeeze\"}'\n", "'context' must be one of"),
    ("echo '{\"abort\": true}'\nexit 3\n", "exited with status 3"),
    ("head -c 70000 /dev/zero | tr '\\0' ' '\necho '{}'\n", "stdout exceeded"),
])
async def test_bad_hooks_emit_hook_failed_and_request_goes_on(
        tmp_path: Path, bus: EventBus, body: str, error: str) -> None:
    argv = script(tmp_path, "bad", body)
    runner = HookRunner((hook(argv),), bus)
    outcome = await runner.run(failover(bus))
    assert not outcome.abort and outcome.messages == () and outcome.context is None
    [failed] = failed_events(bus)
    assert error in failed.fields["error"]
    assert outcome.errors and error in outcome.errors[0]


async def test_missing_or_not_executable(tmp_path: Path, bus: EventBus) -> None:
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\necho '{}'\n")
    runner = HookRunner((hook(str(tmp_path / "nope")), hook(str(plain))), bus)
    outcome = await runner.run(failover(bus))
    assert outcome.abort is False
    errors = [e.fields["error"] for e in failed_events(bus)]
    assert len(errors) == 2 and all(e.startswith("cannot start") for e in errors)


async def test_stderr_is_logged_not_parsed(tmp_path: Path, bus: EventBus,
                                           caplog: pytest.LogCaptureFixture) -> None:
    argv = script(tmp_path, "noisy", "echo 'warming up' >&2\necho '{\"messages\": [\"m\"]}'\n")
    runner = HookRunner((hook(argv),), bus)
    with caplog.at_level("INFO", logger="failoverd.hooks"):
        outcome = await runner.run(failover(bus))
    assert outcome.messages == ("m",)
    assert any("warming up" in r.getMessage() for r in caplog.records)


async def test_fire_and_forget_runs_in_background_with_bounded_concurrency(
        tmp_path: Path, bus: EventBus) -> None:
    out = tmp_path / "out"
    out.mkdir()
    argv = script(tmp_path, "record", f'cat > {out}/"$FAILOVERD_EVENT_ID"\n')
    runner = HookRunner((hook(argv, events=("breaker:*",)),), bus, max_concurrent=2,
                        max_pending=4)
    detach = runner.attach(bus)
    for n in range(6):
        bus.emit("breaker:opened", model=f"m{n}")
    bus.emit("model:failover", from_model="a", to_model="b")  # inline type: not run here
    bus.emit("config:reloaded")  # not subscribed
    assert runner.pending == 4 and runner.dropped == 2
    async with asyncio.timeout(5):
        await runner.aclose()
    detach()
    written = sorted(p.name for p in out.iterdir())
    opened = [e for e in bus.recent() if e.type == "breaker:opened"][:4]
    assert written == sorted(e.id for e in opened)
    assert orjson.loads((out / opened[0].id).read_bytes())["model"] == "m0"


async def test_aclose_cancels_and_kills_stuck_hooks(tmp_path: Path, bus: EventBus) -> None:
    pidfile = tmp_path / "pid"
    argv = script(tmp_path, "stuck", f"echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}\n"
                  "exec sleep 30\n")
    runner = HookRunner((hook(argv, events=("*",), timeout=30),), bus)
    runner.fire_and_forget(bus.emit("probe:failed", model="m"))
    async with asyncio.timeout(5):
        while not pidfile.exists():
            await asyncio.sleep(0.01)
    pid = int(pidfile.read_text())
    assert alive(pid)
    started = time.monotonic()
    await runner.aclose(grace=0.1)
    assert time.monotonic() - started < 2.5
    assert runner.pending == 0
    assert not alive(pid)  # cancelled means killed and reaped, not orphaned


async def test_hook_failed_does_not_feed_itself(tmp_path: Path, bus: EventBus) -> None:
    argv = script(tmp_path, "fails", "exit 1\n")
    runner = HookRunner((hook(argv, events=("*",)),), bus)
    runner.attach(bus)
    bus.emit("probe:failed", model="m")
    async with asyncio.timeout(5):
        while runner.pending or runner.failures < 2:
            await asyncio.sleep(0.01)
        await runner.aclose()
    # probe:failed -> hook fails -> hook:failed -> hook fails again -> logged only
    assert [e.type for e in bus.recent()] == ["probe:failed", "hook:failed"]
    assert runner.failures == 2


def test_hooks_from_config() -> None:
    cfg = loads('[models."p/m"]\nprovider = "p"\n[providers.p]\nkind = "simulated"\n'
                '[[hooks]]\nevents = ["model:failover", "breaker:*"]\nexec = ["/bin/true"]\n'
                'timeout = 0.5\n')
    runner = HookRunner(cfg.hooks, None)
    assert [h.exec for h in runner.subscribed("breaker:opened")] == [("/bin/true",)]
    assert runner.subscribed("probe:failed") == ()


async def test_inline_failover_hooks_are_bounded(tmp_path: Path) -> None:
    from failoverd import hooks as hooks_mod

    gate = tmp_path / "gate"
    script = tmp_path / "slow.sh"
    script.write_text(f"#!/bin/sh\ncat >/dev/null\nwhile [ ! -e {gate} ]; do sleep 0.02; done\n")
    script.chmod(0o755)
    bus = EventBus("n", SystemClock())
    failed = []
    bus.listen(lambda e: failed.append(e) if e.type == "hook:failed" else None)
    runner = HookRunner((HookConfig(events=("model:failover",), exec=(str(script),),
                                    timeout=10),), bus)
    event = bus.emit("model:failover")
    running = [asyncio.create_task(runner.run(event)) for _ in range(hooks_mod.MAX_INLINE)]
    await asyncio.sleep(0)  # one loop turn: every run has taken its slot (synchronously)
    extra = await asyncio.wait_for(runner.run(event), 2)  # no slot: skipped at once
    assert extra.errors and "in progress" in extra.errors[0]
    assert runner.dropped == 1 and failed
    gate.write_text("go")
    outcomes = await asyncio.wait_for(asyncio.gather(*running), 20)
    assert all(not o.errors for o in outcomes)


async def test_hooks_cannot_see_the_credentials_directory(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "env.txt"
    script = tmp_path / "env.sh"
    script.write_text(f"#!/bin/sh\ncat >/dev/null\nenv > {out}\n")
    script.chmod(0o755)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/failoverd.service")
    monkeypatch.setenv("PADDED_KEY", "  sk-secret-1  ")
    bus = EventBus("n", SystemClock())
    runner = HookRunner((HookConfig(events=("model:failover",), exec=(str(script),)),), bus,
                        secrets=frozenset({"sk-secret-1"}))
    await runner.run(bus.emit("model:failover"))
    env = out.read_text()
    assert "CREDENTIALS_DIRECTORY" not in env
    assert "sk-secret-1" not in env
    assert "FAILOVERD_EVENT=model:failover" in env


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_hooks_that_exit_without_reading_stdin_succeed(tmp_path: Path, loop_kind: str) -> None:
    """A hook need not read its input. uvloop raises RuntimeError (not BrokenPipeError) on a
    write to a pipe whose reader is gone, which escaped the run: the hook's own answer was
    lost and the failure was neither counted nor emitted. Ten failovers at once keep the
    loop busy spawning, so every `true` has exited before its event is written."""
    silent = shutil.which("true")
    assert silent is not None
    talker = script(tmp_path, "talker", "echo '{\"messages\": [\"noted\"]}'\n")
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    bus = EventBus("n1", ManualClock())
    runner = HookRunner((hook(silent), hook(talker)), bus)

    async def main() -> list[HookOutcome]:
        runs = [runner.run(failover(bus)) for _ in range(10)]
        return await asyncio.wait_for(asyncio.gather(*runs), 20)

    try:
        outcomes = loop.run_until_complete(main())
    finally:
        loop.close()
    assert outcomes == [HookOutcome(messages=("noted",))] * 10
    assert runner.failures == 0 and failed_events(bus) == []
