"""A new operator's review (Dec 7, second pass): README and DESIGN.md followed as written,
against a real daemon on a real socket, with `failoverd` and `failoverctl` as the operator
runs them."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from failoverd import config
from failoverd.errors import ConfigError
from tests.helpers import A_THEN_B, failoverctl
from tests.test_lifecycle import Launch
from tests.test_lifecycle import launch as launch  # the fixture

SIMULATED = f"""
[providers.a]
kind = "simulated"
[providers.b]
kind = "simulated"
{A_THEN_B}
[probes]
kind = "none"
"""


async def run_failoverd(*argv: str) -> tuple[int, str, str]:
    """`failoverd ARGV` run to its end: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "failoverd.cli.daemon", *argv, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=dict(os.environ))
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _daemon_head(d: Path) -> str:
    return f'[daemon]\nsocket = "{d}/d.sock"\nstate_dir = "{d}/d-state"\n'


def _gauge(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_a_rejected_sighup_reload_shows_in_status_metrics_and_failoverctl(
        launch: Launch, short_dir: Path) -> None:
    """SIGHUP with a broken file kept serving the old config (right), but afterwards only the
    journal said so: `systemctl reload` succeeds either way, status showed the file's name as
    if it served, and the next restart failed on it. Now `GET /v1/status` has `last_reload`,
    /metrics `failoverd_config_last_reload_successful`, and `failoverctl status` says it;
    `failoverctl reload` names the file it refused."""
    good = _daemon_head(short_dir) + SIMULATED
    d = await launch(good)
    http = d.client()
    status = (await http.get("/v1/status")).json()
    assert status["last_reload"] is None
    metrics = (await http.get("/metrics")).text
    assert _gauge(metrics, "failoverd_config_last_reload_successful") == 1
    started = _gauge(metrics, "failoverd_config_last_reload_success_timestamp_seconds")
    assert started == pytest.approx(status["time"], abs=30)

    broken = good.replace('primary = "a/m"', 'primary = "a/nope"') + "\n[routng]\nx = 1\n"
    await d.reload(broken)
    # still serving on the old configuration
    reply = await http.post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 200 and reply.headers["x-failoverd-model"] == "a/m"
    status = (await http.get("/v1/status")).json()
    last = status["last_reload"]
    assert last["ok"] is False and last["source"] == str(d.config)
    assert last["problems"] == ["routing.primary: no model 'a/nope' in [models]",
                                "routng: unknown key"]
    metrics = (await http.get("/metrics")).text
    assert _gauge(metrics, "failoverd_config_last_reload_successful") == 0
    assert _gauge(metrics, "failoverd_config_last_reload_success_timestamp_seconds") == started

    code, out, err = await failoverctl(d.socket, "status")
    assert code == 0, err
    assert f"config {d.config}: the last reload" in out and "REJECTED" in out
    assert "  routng: unknown key" in out
    code, out, err = await failoverctl(d.socket, "reload")
    assert code == 1 and out == ""
    assert err.startswith(f"failoverctl: daemon said 422: config rejected: {d.config} has 2 "
                          "problem(s), the previous configuration still serves:\n")
    assert "  routing.primary: no model 'a/nope' in [models]" in err
    code, out, _ = await failoverctl(d.socket, "--json", "reload")
    assert code == 1 and '"config":"' + str(d.config) + '"' in out

    # fixed: accepted, and the record says so
    await d.reload(good)
    status = (await http.get("/v1/status")).json()
    assert status["last_reload"]["ok"] is True and status["last_reload"]["problems"] == []
    metrics = (await http.get("/metrics")).text
    assert _gauge(metrics, "failoverd_config_last_reload_successful") == 1
    assert _gauge(metrics, "failoverd_config_last_reload_success_timestamp_seconds") > started
    code, out, _ = await failoverctl(d.socket, "status")
    assert code == 0 and "REJECTED" not in out
    d.signal(signal.SIGTERM)
    assert await d.exit_code() == 0


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        config.loads(text, env={})
    return exc.value.problems


@pytest.mark.parametrize(("body", "expected"), [
    # a list key of the wrong type was also said to be missing ("is required"), which sent
    # the operator looking for a key that is right there
    ('[[hooks]]\nevents = "model:failover"\nexec = "notify"\n',
     ["hooks[0].events: must be a list, got a string",
      "hooks[0].exec: must be a list, got a string"]),
    ('[[hooks]]\nevents = []\nexec = ["notify"]\n', ["hooks[0].events: must not be empty"]),
    ('[chains.fast]\nmodels = "a/m"\n', ["chains.fast.models: must be a list, got a string"]),
    ("[chains.fast]\n", ["chains.fast.models: is required: a non-empty list of model ids"]),
    ("[chains.fast]\nmodels = []\n", ["chains.fast.models: must not be empty"]),
    # a provider without `kind` was "must be one of ...; got ''", as if an empty one was given
    ('[providers.z]\nbase_url = "http://127.0.0.1:1"\n',
     ["providers.z.kind: is required: one of openai, anthropic, gemini, ollama, bedrock, "
      "vertex, simulated"]),
    ("[providers.z]\nkind = 5\n", ["providers.z.kind: must be a string, got an integer"]),
])
def test_each_config_problem_is_said_once_and_as_it_is(body: str, expected: list[str]) -> None:
    assert _problems(SIMULATED + body) == expected


async def test_a_config_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    """It said "'utf-8' codec can't decode byte 0xff in position 3658": a byte offset, which
    no editor shows. Now the line and column."""
    path = tmp_path / "f.toml"
    path.write_bytes(SIMULATED.encode() + b'[daemon]\nnode = "caf\xe9"\n')
    line = SIMULATED.count("\n") + 2
    code, out, err = await run_failoverd("--config", str(path), "--check-config")
    assert code == 2 and out == ""
    assert err == (f"failoverd: {path}: invalid configuration\n  {path}: not valid TOML: not "
                   f"UTF-8 text: byte 0xe9 at line {line}, column 12 (TOML files are UTF-8)\n")


async def test_events_recent_takes_the_usual_spellings_and_refuses_others(
        start_daemon: Any) -> None:
    """`?recent=yes` (or any value but 1 and true) streamed live: a script that asked for the
    ring, as README's `?recent=1` shows, waited for an end that never came."""
    d = await start_daemon(SIMULATED)
    await d.http.post("/v1/models/a/m/open")
    for value in ("1", "true", "yes", "True"):
        reply = await asyncio.wait_for(d.http.get("/v1/events", params={"recent": value}), 5)
        assert reply.status_code == 200 and "event: breaker:opened" in reply.text
    reply = await asyncio.wait_for(d.http.get("/v1/events", params={"recent": "please"}), 5)
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "recent"
    assert "'recent' must be 1" in reply.json()["error"]["message"]
    # 0 is the live stream, as no value is
    async with d.http.stream("GET", "/v1/events", params={"recent": "0"}) as live:
        assert live.status_code == 200
        lines = live.aiter_lines()
        assert await asyncio.wait_for(anext(lines), 5) == ": connected"


async def test_the_attempts_of_models_that_are_out_read_as_readme_says(
        start_daemon: Any) -> None:
    """README's Failure handling: a candidate that is out is listed as `unavailable` with its
    state as the message, status null, no upstream attempt, and the hop past it in
    `x-failoverd-failover`."""
    body = SIMULATED.replace('[providers.b]\nkind = "simulated"',
                             '[providers.b]\nkind = "simulated"\nsimulate_failure = "auth"')
    d = await start_daemon(body.replace("[routing]", '[routing]\nwhen_all_unavailable = "fail"'))
    chat = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    assert (await d.http.post("/v1/models/a/m/open")).status_code == 200
    first = await d.http.post("/v1/chat/completions", json=chat)
    assert first.status_code == 503
    assert first.json()["error"]["attempts"] == [
        {"model": "a/m", "reason": "unavailable", "status": None, "message": "forced_open",
         "upstream_request_id": None},
        {"model": "b/m", "reason": "auth", "status": 401,
         "message": "simulated auth from provider b", "upstream_request_id": None}]
    assert first.headers["x-failoverd-attempts"] == "1"
    assert first.headers["x-failoverd-failover"] == "a/m>b/m:unavailable"
    second = await d.http.post("/v1/chat/completions", json=chat)
    assert [(a["reason"], a["status"], a["message"])
            for a in second.json()["error"]["attempts"]] == [
        ("unavailable", None, "forced_open"), ("unavailable", None, "auth")]
    assert second.headers["x-failoverd-attempts"] == "0"


async def test_retry_after_is_the_soonest_candidate_back(start_daemon: Any) -> None:
    """README: the 503's Retry-After is "seconds until the first candidate's breaker allows a
    call". The primary fails and its breaker opens for 30 s; the fallback's provider is
    blocked for auth (an hour): clients were told to come back in an hour."""
    body = SIMULATED.replace(
        '[providers.a]\nkind = "simulated"',
        '[providers.a]\nkind = "simulated"\nsimulate_failure = "server_error"').replace(
        '[providers.b]\nkind = "simulated"',
        '[providers.b]\nkind = "simulated"\nsimulate_failure = "auth"').replace(
        "[routing]", '[routing]\nwhen_all_unavailable = "fail"')
    d = await start_daemon(body + "[breaker]\nfailure_threshold = 1\nopen_seconds = 30\n"
                           "auth_open_seconds = 3600\n")
    chat = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    await d.http.post("/v1/models/b/m/probe")  # blocks provider b for auth
    reply = await d.http.post("/v1/chat/completions", json=chat)
    assert reply.status_code == 503
    assert [a["reason"] for a in reply.json()["error"]["attempts"]] == ["server_error",
                                                                        "unavailable"]
    assert int(reply.headers["Retry-After"]) <= 33


async def test_the_journal_names_the_file_of_a_rejected_reload(
        start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    d = await start_daemon(SIMULATED)
    path = Path(d.sup.config_path or "")
    path.write_text(path.read_text() + "\n[routng]\nx = 1\n")
    assert (await d.http.post("/v1/reload")).status_code == 422
    rejected = [r.getMessage() for r in caplog.records
                if r.levelname == "ERROR" and "rejected" in r.getMessage()]
    assert rejected and all(str(path) in line for line in rejected), rejected


async def test_failoverctl_shows_pins_and_forgets_sessions(start_daemon: Any) -> None:
    """DESIGN.md's `GET|POST|DELETE /v1/sessions/{key}` had no failoverctl command: an
    operator moving a user's agent to another chain, or finding why it stays on a fallback,
    had to write curl lines."""
    d = await start_daemon(SIMULATED + '[chains.fast]\nmodels = ["b/m"]\n')
    key = "agent 7/x:y"
    code, out, err = await failoverctl(d.socket, "session", key)
    assert code == 1 and f"no session '{key}'" in err
    code, out, err = await failoverctl(d.socket, "session", key, "--prefer", "fast")
    assert code == 0, err
    assert out.startswith(f"session {key}: pinned to fast\n  last used ")
    reply = await d.http.post("/v1/chat/completions", headers={"x-failoverd-session": key},
                              json={"model": "default",
                                    "messages": [{"role": "user", "content": "hi"}]})
    assert reply.headers["x-failoverd-model"] == "b/m"  # the pin is what the daemon uses
    code, out, _ = await failoverctl(d.socket, "--json", "session", key)
    assert code == 0 and '"preference": "fast"' in out
    code, out, err = await failoverctl(d.socket, "session", key, "--prefer", "nope")
    assert code == 1 and "must name a configured model, chain or pool" in err
    code, out, _ = await failoverctl(d.socket, "session", key, "--unpin")
    assert code == 0 and out.startswith(f"session {key}: no pin\n")
    code, out, _ = await failoverctl(d.socket, "session", key, "--forget")
    assert code == 0 and out.strip() == f"session {key}: forgotten"
    code, _, _ = await failoverctl(d.socket, "session", key)
    assert code == 1
    code, _, err = await failoverctl(d.socket, "session", key, "--forget", "--unpin")
    assert code == 2 and "not allowed with" in err
    # a session that failed over: where it sticks, and till when
    await d.http.post("/v1/models/a/m/open")
    reply = await d.http.post("/v1/chat/completions", headers={"x-failoverd-session": "s2"},
                              json={"model": "default",
                                    "messages": [{"role": "user", "content": "hi"}]})
    assert reply.headers["x-failoverd-model"] == "b/m"
    code, out, _ = await failoverctl(d.socket, "session", "s2")
    assert code == 0
    assert out.splitlines()[:2] == ["session s2: no pin", "  on b/m after a failover from a/m, "
                                    + out.splitlines()[1].split(", ", 1)[1]]
    assert ", until 20" in out.splitlines()[1]


def test_a_socket_path_too_long_for_a_unix_address_is_a_config_problem() -> None:
    """`--check-config` said ok, then the start failed with exit 1 ("longer than the 107
    bytes a Unix socket address can hold"): under systemd an exit 1 is restarted every
    RestartSec= for ever, where a config problem (exit 2) is not."""
    long = "/tmp/" + "x" * 100 + "/f.sock"
    found = _problems(SIMULATED + f'[daemon]\nsocket = "{long}"\n'
                      f'[mqtt]\nsocket = "{long}"\n')
    assert found == [f"daemon.socket: is {len(long)} bytes long; a Unix socket path holds at "
                     "most 107",
                     f"mqtt.socket: is {len(long)} bytes long; a Unix socket path holds at "
                     "most 107"]
    ok = "/run/" + "y" * (107 - len("/run/"))
    config.loads(SIMULATED + f'[daemon]\nsocket = "{ok}"\n', env={})


async def test_failoverctl_events_says_when_there_are_none(start_daemon: Any) -> None:
    """It printed nothing at all: no telling an empty ring from a command that failed. The
    note goes to stderr, so a script reading stdout still gets no lines."""
    d = await start_daemon(SIMULATED)
    code, out, err = await failoverctl(d.socket, "events")
    assert (code, out) == (0, "") and "no recent events" in err
    await d.http.post("/v1/models/a/m/open")
    code, out, err = await failoverctl(d.socket, "events")
    assert code == 0 and "breaker:opened" in out and "no recent events" not in err


async def test_a_reset_of_a_closed_breaker_is_not_logged_as_a_transition(
        start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    """It logged "closed -> closed" (reason=reset), a transition that never happened."""
    caplog.set_level(logging.INFO, logger="failoverd")
    d = await start_daemon(SIMULATED)
    caplog.clear()
    assert (await d.http.post("/v1/models/a/m/reset")).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "failoverd.breaker"]
    assert lines == ["breaker a/m: reset (was closed; counters cleared)"]
