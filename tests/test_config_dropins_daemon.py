"""Drop-ins on a running daemon: a reload (POST /v1/reload, SIGHUP) reads a new, changed or
removed `<config>.d/*.toml`; a broken one is rejected naming its file, the old config serves."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from failoverd import dropins
from tests.helpers import HELLO, chat, one_model_config, status, until_async


def team(url: str, tier: str = "small") -> str:
    """A team's drop-in: its provider b and model b/m, in a chain of its own."""
    return (f'[providers.b]\nkind = "openai"\nbase_url = "{url}"\n'
            f'[models."b/m"]\nprovider = "b"\ntier = "{tier}"\n'
            '[chains.team]\nmodels = ["b/m", "a/m"]\n')


async def models(d: Any) -> list[str]:
    resp = await d.http.get("/v1/models")
    assert resp.status_code == 200
    return [m["id"] for m in resp.json()["data"]]


async def test_reload_picks_up_a_new_changed_and_removed_dropin(
        fake_openai: Any, start_daemon: Any, short_dir: Path) -> None:
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(one_model_config(a.url, tail='[probes]\nkind = "none"\n'))
    main = short_dir / "d.toml"
    where = dropins.directory(main)
    assert (await status(d))["config_dropins"] == []
    assert await models(d) == ["a/m"]

    # a new drop-in: its provider, model and chain serve after the reload
    where.mkdir()
    drop = where / "50-team.toml"
    drop.write_text(team(b.url))
    resp = await d.http.post("/v1/reload")
    assert resp.status_code == 200
    assert resp.json() == {"ok": True, "config": str(main), "config_dropins": [str(drop)]}
    assert (await status(d))["config_dropins"] == [str(drop)]
    assert await models(d) == ["a/m", "b/m", "team"]
    answer = await chat(d, "team")
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-failoverd-model"] == "b/m"
    assert answer.json()["choices"][0]["message"]["content"] == "from b"

    # changed: a later drop-in overrides a key of the main file and of the first drop-in
    (where / "90-local.toml").write_text('[models."b/m"]\ntier = "large"\n'
                                         '[chains.team]\nmodels = ["a/m", "b/m"]\n')
    assert (await d.http.post("/v1/reload")).status_code == 200
    listed = {m["id"]: m for m in (await d.http.get("/v1/models")).json()["data"]}
    assert listed["b/m"]["tier"] == "large"
    assert (await chat(d, "team")).headers["x-failoverd-model"] == "a/m"

    # removed: the model, provider and chain are gone at the next reload
    drop.unlink()
    (where / "90-local.toml").unlink()
    resp = await d.http.post("/v1/reload")
    assert resp.status_code == 200 and resp.json()["config_dropins"] == []
    assert await models(d) == ["a/m"]
    assert (await chat(d, "team")).status_code == 404


async def test_a_broken_dropin_rejects_the_reload_and_the_old_config_serves(
        fake_openai: Any, start_daemon: Any, short_dir: Path) -> None:
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    main = short_dir / "d.toml"
    where = dropins.directory(main)
    where.mkdir()
    good = where / "50-team.toml"
    good.write_text(team(b.url))
    d = await start_daemon(one_model_config(a.url, tail='[probes]\nkind = "none"\n'))
    assert (await status(d))["config_dropins"] == [str(good)]

    broken = where / "60-oops.toml"
    secret = "sk-ant-api03-NOTFORLOGS"
    broken.write_text(f'[models."b/m"]\ntier = "giant"\n[providers.b]\napi_key = "{secret}"\n')
    resp = await d.http.post("/v1/reload")
    assert resp.status_code == 422
    body = resp.json()
    assert body["ok"] is False and body["config"] == str(main)
    assert sorted(body["problems"]) == [
        f"{broken}: models.\"b/m\".tier: must be one of small, medium, large; got 'giant'",
        f"{broken}: providers.b.api_key: unknown key",
    ]
    [rejected] = [e for e in d.sup.service.bus.recent() if e.type == "config:rejected"]
    assert rejected.fields["problems"] == body["problems"]
    assert secret not in resp.text and secret not in str(rejected.fields)
    last = (await status(d))["last_reload"]
    assert last["ok"] is False and last["problems"] == body["problems"]
    # the old configuration, drop-in included, still serves
    assert (await status(d))["config_dropins"] == [str(good)]
    answer = await chat(d, "b/m")
    assert answer.status_code == 200 and answer.headers["x-failoverd-model"] == "b/m"

    # not TOML at all: named with its line and column
    broken.write_text("[models.\n")
    body = (await d.http.post("/v1/reload")).json()
    assert body["problems"] == [
        f"{broken}: not valid TOML: Invalid initial character for a key part "
        "(at line 1, column 9)"]

    broken.unlink()
    assert (await d.http.post("/v1/reload")).status_code == 200
    assert (await status(d))["last_reload"]["ok"] is True


async def test_sighup_reads_the_dropins_of_a_real_daemon(fake_openai: Any,
                                                         short_dir: Path) -> None:
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    sock = short_dir / "h.sock"
    main = short_dir / "h.toml"
    main.write_text(f'[daemon]\nsocket = "{sock}"\nstate_dir = "{short_dir / "state"}"\n'
                    + one_model_config(a.url, tail='[probes]\nkind = "none"\n'))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "failoverd.cli.daemon", "--config", str(main),
        "--log-level", "WARNING", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NOTIFY_SOCKET": ""})
    http = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock)),
                             base_url="http://failoverd", timeout=10)
    try:
        async def up() -> bool:
            try:
                return (await http.get("/v1/health")).status_code in (200, 503)
            except httpx.TransportError:
                return False

        await until_async(up, 15)
        where = dropins.directory(main)
        where.mkdir()
        (where / "50-team.toml").write_text(team(b.url))
        proc.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return bool((await http.get("/v1/status")).json()["config_dropins"])

        await until_async(reloaded, 10)
        resp = await http.post("/v1/chat/completions", json={"model": "b/m", "messages": HELLO})
        assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "b/m"
    finally:
        await http.aclose()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()


async def test_the_journal_does_not_put_a_dropins_problem_in_the_main_file(
        fake_openai: Any, start_daemon: Any, short_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    a = await fake_openai(reply="from a")
    d = await start_daemon(one_model_config(a.url, tail='[probes]\nkind = "none"\n'))
    main = short_dir / "d.toml"
    broken = dropins.directory(main) / "60-oops.toml"
    broken.parent.mkdir()
    broken.write_text('[routing]\ndeadline = -1\n')
    caplog.set_level(logging.ERROR, logger="failoverd.supervisor")
    assert (await d.http.post("/v1/reload")).status_code == 422
    lines = [r.getMessage() for r in caplog.records]
    assert any(f"{broken}: routing.deadline" in line for line in lines), lines
    assert not any(f"{main}: {broken}" in line for line in lines), lines


async def test_a_broken_dropin_whose_name_is_not_utf8_is_answered_as_json(
        fake_openai: Any, start_daemon: Any, short_dir: Path) -> None:
    a = await fake_openai(reply="from a")
    d = await start_daemon(one_model_config(a.url, tail='[probes]\nkind = "none"\n'))
    where = dropins.directory(short_dir / "d.toml")
    where.mkdir()
    broken = Path(os.fsdecode(os.fsencode(where) + b"/60-\xff.toml"))
    broken.write_text('[routing]\ndeadline = -1\n')
    resp = await d.http.post("/v1/reload")
    # was a 500 (orjson refuses a lone surrogate), and so was every GET /v1/status after it
    assert resp.status_code == 422, resp.text
    want = [f"{where}/60-\\udcff.toml: routing.deadline: must be greater than 0, got -1.0"]
    assert resp.json()["problems"] == want
    assert (await status(d))["last_reload"]["problems"] == want
    broken.write_text("")
    assert (await d.http.post("/v1/reload")).json()["config_dropins"] == [
        f"{where}/60-\\udcff.toml"]


async def test_restart_only_keys_in_a_dropin_wait_for_the_restart_as_in_the_main_file(
        fake_openai: Any, start_daemon: Any, short_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    a = await fake_openai(reply="from a")
    d = await start_daemon(one_model_config(a.url, tail='[probes]\nkind = "none"\n'))
    node = (await status(d))["node"]
    where = dropins.directory(short_dir / "d.toml")
    where.mkdir()
    (where / "50-host.toml").write_text(
        f'[daemon]\nnode = "elsewhere"\nsocket = "{short_dir / "other.sock"}"\n'
        'max_inflight = 7\n')
    caplog.set_level(logging.WARNING, logger="failoverd.supervisor")
    resp = await d.http.post("/v1/reload")
    assert resp.status_code == 200  # accepted, as the same change in the main file is
    warned = {r.getMessage() for r in caplog.records}
    assert {"daemon.node changed: takes effect at the next restart",
            "daemon.socket changed: takes effect at the next restart"} <= warned
    assert (await status(d))["node"] == node  # still the live one
    assert d.sup.config.daemon.max_inflight == 7  # what a reload applies, it applies
    assert not (short_dir / "other.sock").exists()


async def test_the_journal_names_a_problem_of_several_files_once(
        fake_openai: Any, start_daemon: Any, short_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    a = await fake_openai(reply="from a")
    d = await start_daemon(one_model_config(
        a.url, tail='[probes]\nkind = "none"\n[chains."b/m"]\nmodels = ["a/m"]\n'))
    main = short_dir / "d.toml"
    drop = dropins.directory(main) / "60-b.toml"
    drop.parent.mkdir()
    # a model named like the chain both files wrote: a problem of the chain's table
    drop.write_text('[models."b/m"]\nprovider = "a"\n[chains."b/m"]\nmodels = ["b/m"]\n')
    caplog.set_level(logging.ERROR, logger="failoverd.supervisor")
    resp = await d.http.post("/v1/reload")
    assert resp.status_code == 422, resp.text
    [problem] = resp.json()["problems"]
    assert problem.startswith(f"{main}, {drop}: chains.\"b/m\": "), problem
    lines = [r.getMessage() for r in caplog.records]
    assert f"config rejected: {problem}" in lines, lines
