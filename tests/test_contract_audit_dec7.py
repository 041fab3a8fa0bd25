"""Contract audit (DESIGN.md "HTTP API" control endpoints, "Events", failoverctl), Dec 7.

What an operator or a script author hit: `failoverctl events | head` reported the daemon as
unreachable (exit 2), `--json events` refused by the daemon printed a JSON string instead of
the error object, an empty $FAILOVERD_SOCKET was used as a path, a probe slower than 30 s was
called "unreachable", and a probe of a model a reload removed meanwhile answered 500.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import (
    FAILOVERCTL,
    GPT,
    QWEN,
    failoverctl,
    gpt_qwen_config,
    gpt_qwen_daemon,
    until,
)


@pytest.fixture
async def rig(fake_openai, start_daemon) -> Any:
    return await gpt_qwen_daemon(fake_openai, start_daemon)


# ------------------------------------------------------------------ events piped to head


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["human", "json"])
async def test_events_follow_piped_to_a_reader_that_leaves_ends_quietly_with_0(
        rig, json_flag: list[str]) -> None:
    """`failoverctl events --follow | head -1`: once head has its line and leaves, the next
    event's write fails with EPIPE. That was reported as "failoverd ... dropped the connection:
    Broken pipe", exit 2, as if the daemon had died."""
    _, _, d = rig
    svc = d.sup.service
    read_end, write_end = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            FAILOVERCTL, "--socket", d.socket, *json_flag, "events", "--follow",
            stdout=write_end, stderr=asyncio.subprocess.PIPE)
    finally:
        os.close(write_end)
    try:
        await until(lambda: bool(svc.streams), 10)  # it follows now
        assert (await d.http.post(f"/v1/models/{GPT}/open")).status_code == 200
        first = await asyncio.wait_for(asyncio.to_thread(os.read, read_end, 65536), 10)
        assert b"breaker:opened" in first
    finally:
        os.close(read_end)  # the reader is gone, as head is after its line
    assert (await d.http.post(f"/v1/models/{GPT}/reset")).status_code == 200
    async with asyncio.timeout(10):
        _, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert err == b""


# ------------------------------------------------------------------ events refused


async def test_events_refused_by_the_daemon_prints_its_error_object(
        fake_openai, start_daemon) -> None:
    """A refusal (here: our uid is not in daemon.allowed_uids) of `events` with --json printed
    a JSON *string* holding the error object, and the human message was the raw JSON; every
    other command prints the error object, and its message."""
    a = await fake_openai()
    o = await fake_openai()
    other = os.getuid() + 1
    d = await start_daemon(f"allowed_uids = [{other}]\n" + gpt_qwen_config(a, o))
    for follow in ([], ["--follow"]):
        code, out, err = await failoverctl(d.socket, "--json", "events", *follow)
        assert code == 1, err
        body = orjson.loads(out)
        assert body["error"]["code"] == "permission_denied"
        code, out, err = await failoverctl(d.socket, "events", *follow)
        assert code == 1
        assert out == ""
        assert err.strip() == (f"failoverctl: daemon said 403: uid {os.getuid()} is not in "
                               "daemon.allowed_uids")


# ------------------------------------------------------------------ $FAILOVERD_SOCKET


async def test_an_empty_failoverd_socket_variable_means_the_default_path() -> None:
    """FAILOVERD_SOCKET= (set but empty) was used as the path: "cannot reach failoverd at :
    [Errno 22] Invalid argument", where an empty --socket means the default."""
    env = {**os.environ, "FAILOVERD_SOCKET": ""}
    proc = await asyncio.create_subprocess_exec(
        FAILOVERCTL, "health", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(40):
        _, err = await proc.communicate()
    text = err.decode()
    assert "at :" not in text and "Errno 22" not in text
    # no daemon runs at the system path in the test environment, or one does and answers
    assert proc.returncode in (0, 1) or (
        proc.returncode == 2 and "/run/failoverd/failoverd.sock" in text), text


# ------------------------------------------------------------------ a slow probe


@pytest.mark.timeout(120)
async def test_failoverctl_probe_waits_for_a_probe_longer_than_30_seconds(
        fake_openai, start_daemon) -> None:
    """probes.timeout may exceed 30 s (a local model loading, a slow reasoning model), and the
    daemon answers a probe once it ends. failoverctl gave up after 30 s: "cannot reach
    failoverd ... timed out", exit 2, while the daemon was probing. (Real time: the wait is
    failoverctl's socket timeout, in another process.)"""
    a = await fake_openai(reply="from a")
    o = await fake_openai(reply="from qwen")
    d = await start_daemon(gpt_qwen_config(a, o, tail='timeout = 60\nkind = "chat"\n'))
    a.push("slow:31")
    code, out, err = await failoverctl(d.socket, "probe", GPT, timeout=90)
    assert code == 0, err
    assert out.startswith(f"{GPT}: probe ok in ")


# ------------------------------------------------------------------ probe across a reload


async def test_probe_of_a_model_a_reload_removed_meanwhile_is_a_404_not_a_500(
        fake_openai, start_daemon, short_dir: Path) -> None:
    """POST /v1/models/{id}/probe looked the model up in /v1/status after the probe: a reload
    that removed it meanwhile made that a KeyError, a 500 "internal error" and a traceback in
    the log."""
    a = await fake_openai(reply="from a")
    o = await fake_openai(reply="from qwen")
    d = await start_daemon(gpt_qwen_config(a, o, tail='timeout = 5\nkind = "chat"\n'))
    o.default = "hang"
    probe = asyncio.create_task(d.http.post(f"/v1/models/{QWEN}/probe"))
    await until(lambda: bool(o.chat_requests()), 10)  # the probe is out
    path = short_dir / "d.toml"
    text = path.read_text()
    cut = text.index(f'[models."{QWEN}"]')
    path.write_text(text[:cut] + text[text.index("[routing]"):]
                    .replace(f'fallbacks = ["{QWEN}"]', "fallbacks = []")
                    .replace(f'models = ["{QWEN}", "{GPT}"]', f'models = ["{GPT}"]'))
    reload = await d.http.post("/v1/reload")
    assert reload.status_code == 200, reload.text
    resp = await asyncio.wait_for(probe, 15)
    assert resp.status_code == 404, resp.text
    error = resp.json()["error"]
    assert error["code"] == "model_not_found" and QWEN in error["message"]


# ------------------------------------------------------------------ sound areas, pinned


async def test_ids_with_slash_colon_and_percent_round_trip_through_failoverctl(
        fake_openai, start_daemon) -> None:
    """A model id holding '%' and a space, and a chain name with '/' and ':', as failoverctl
    quotes them and the routes decode them (DESIGN: ids may contain '/' and ':')."""
    a = await fake_openai()
    o = await fake_openai()
    odd = "a/odd model%2F:1"
    body = gpt_qwen_config(a, o, chain="team/fast:1").replace(
        "[routing]", f'[models."{odd}"]\nprovider = "a"\n[routing]', 1)
    d = await start_daemon(body)
    code, out, err = await failoverctl(d.socket, "open", odd, "--for", "60")
    assert code == 0, err
    assert out.startswith(f"{odd}: forced_open until ")
    code, out, err = await failoverctl(d.socket, "--json", "reset", odd)
    assert code == 0, err
    assert orjson.loads(out)["model"] == odd
    code, out, err = await failoverctl(d.socket, "next", "team/fast:1")
    assert (code, out.strip()) == (0, f"team/fast:1: head is now {GPT}"), err
    code, out, err = await failoverctl(d.socket, "reset", "a/odd model%252F:1")
    assert code == 1 and "no model 'a/odd model%252F:1'" in err


async def test_events_follow_ends_with_0_on_ctrl_c(rig) -> None:
    _, _, d = rig
    svc = d.sup.service
    proc = await asyncio.create_subprocess_exec(
        FAILOVERCTL, "--socket", d.socket, "events", "--follow",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await until(lambda: bool(svc.streams), 10)
    await d.http.post(f"/v1/models/{GPT}/open", json={"seconds": 30})
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 10)
    assert b" breaker:opened model=a/gpt-a reason=operator " in line
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(10):
        _, err = await proc.communicate()
    assert proc.returncode == 0 and err == b""


async def test_event_fields_per_type_as_design_lists_them(rig) -> None:
    """DESIGN "Events": every event has id, type, time, node; breaker events model, reason,
    retry_at, open_count; model:failover its nine fields."""
    a, _, d = rig
    a.push("rate_limit_long")
    resp = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}])
    assert resp.headers["x-failoverd-model"] == QWEN
    await d.http.post(f"/v1/models/{GPT}/open")
    code, out, err = await failoverctl(d.socket, "--json", "events")
    assert code == 0, err
    events = [orjson.loads(line) for line in out.splitlines()]
    by_type = {e["type"]: e for e in events}
    for event in events:
        assert {"id", "type", "time", "node"} <= event.keys()
    assert {"from_model", "to_model", "reason", "status", "error", "session", "session_tokens",
            "target_context_window", "attempt"} <= by_type["model:failover"].keys()
    assert {"model", "reason", "retry_at", "open_count"} <= by_type["breaker:opened"].keys()


@pytest.mark.parametrize("body", [{"model": None, "chain": "local"},
                                  {"model": GPT, "chain": "no-such-chain"}],
                         ids=["null-model-and-chain", "model-and-bad-chain"])
async def test_a_session_preference_with_both_model_and_chain_is_refused(
        rig, body: dict[str, Any]) -> None:
    """POST /v1/sessions/{key} read "model" and dropped "chain" unseen: a null model with a
    chain cleared the preference, a bad chain next to a model was accepted."""
    _, _, d = rig
    assert (await d.http.post("/v1/sessions/s:1/x", json={"model": QWEN})).status_code == 200
    resp = await d.http.post("/v1/sessions/s:1/x", json=body)
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "give 'model' or 'chain', not both"
    kept = (await d.http.get("/v1/sessions/s%3A1%2Fx")).json()
    assert kept["preference"] == QWEN
    resp = await d.http.post("/v1/sessions/s:1/x", json={"chain": "local"})
    assert resp.status_code == 200 and resp.json()["preference"] == "local"
