"""Lifecycle review: reloads that weakened a live listener or crashed the daemon, and a
state_dir that could not be written noticed only at the first breaker change."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from pathlib import Path

import httpx
import pytest

from failoverd import config as config_mod
from failoverd.errors import StateError
from failoverd.supervisor import Supervisor
from tests.conftest import daemon_toml
from tests.helpers import free_port, one_model_config
from tests.test_lifecycle import Launch, launch, toml  # noqa: F401 - launch is a fixture

HELLO = {"messages": [{"role": "user", "content": "hi"}]}



async def test_reload_that_drops_tcp_keeps_the_live_listener_authenticated(
        fake_openai, start_daemon, short_dir: Path) -> None:
    fake = await fake_openai()
    token = short_dir / "token"
    token.write_text("s3cret\n")
    port = free_port()
    d = await start_daemon(f'tcp = "127.0.0.1:{port}"\ntcp_token_file = "{token}"\n'
                           + one_model_config(fake.url), name="tcp")
    # the operator turns the listener off; it stays up until the restart (tcp is
    # restart-only), and it must keep asking for the token meanwhile
    path = short_dir / "tcp.toml"
    path.write_text(daemon_toml(d.socket, str(short_dir / "tcp-state"), one_model_config(fake.url)))
    assert d.sup.reload()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as tcp:
        r = await tcp.post("/v1/chat/completions", json=HELLO)
        assert r.status_code == 401
        r = await tcp.post("/v1/chat/completions", json=HELLO,
                           headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
    # a new token file on reload still rotates the token
    new_token = short_dir / "token2"
    new_token.write_text("n3w\n")
    path.write_text(daemon_toml(d.socket, str(short_dir / "tcp-state"),
                                f'tcp = "127.0.0.1:{port}"\ntcp_token_file = "{new_token}"\n'
                                + one_model_config(fake.url)))
    assert d.sup.reload()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as tcp:
        r = await tcp.post("/v1/chat/completions", json=HELLO,
                           headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 401
        r = await tcp.post("/v1/chat/completions", json=HELLO,
                           headers={"Authorization": "Bearer n3w"})
        assert r.status_code == 200


@pytest.mark.parametrize("value", ["inf", "1e300"])
async def test_reload_with_an_unusable_interval_is_rejected_and_serving_goes_on(
        fake_openai, start_daemon, short_dir: Path, value: str) -> None:
    fake = await fake_openai()
    d = await start_daemon(one_model_config(fake.url), name="rl")
    path = short_dir / "rl.toml"
    good = path.read_text()
    path.write_text(good + f"[probes]\ninterval = {value}\n")
    # SIGHUP's path: used to raise OverflowError out of the prober and end the daemon
    assert d.sup.reload() is False
    r = await d.http.post("/v1/reload")
    assert r.status_code == 422
    assert any(p.startswith("probes.interval: must be") for p in r.json()["problems"])
    assert not d.task.done()
    r = await d.http.post("/v1/chat/completions", json=HELLO)
    assert r.status_code == 200


async def test_unwritable_state_dir_fails_the_start_with_a_clear_error(
        fake_openai, short_dir: Path) -> None:
    fake = await fake_openai()
    blocker = short_dir / "file"
    blocker.write_text("not a directory\n")
    sock = str(short_dir / "sd.sock")
    cfg = config_mod.loads(daemon_toml(sock, str(blocker / "state"), one_model_config(fake.url)),
                           env={})
    sup = Supervisor(cfg, handle_signals=False)
    with pytest.raises(StateError) as info:
        await asyncio.wait_for(sup.run(), 10)
    assert "daemon.state_dir" in str(info.value)
    assert str(blocker / "state" / "state.json") in str(info.value)
    assert not sup.ready.is_set()
    assert not Path(sock).exists()  # nothing left behind


async def test_unwritable_state_dir_exits_1_naming_it(fake_openai, short_dir: Path) -> None:
    fake = await fake_openai()
    blocker = short_dir / "file"
    blocker.write_text("not a directory\n")
    path = short_dir / "sd.toml"
    path.write_text(daemon_toml(str(short_dir / "sd.sock"), str(blocker / "state"),
                                one_model_config(fake.url)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "failoverd.cli.daemon", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1
    text = err.decode()
    assert "Traceback" not in text
    assert f"cannot write the state file {blocker / 'state' / 'state.json'}" in text


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed")
@pytest.mark.parametrize("with_token", [False, True])
async def test_tcp_socket_passed_by_systemd_is_never_unauthenticated(
        fake_openai, launch: Launch, short_dir: Path,  # noqa: F811 - the fixture
        with_token: bool) -> None:
    # a failoverd.socket with ListenStream=127.0.0.1:PORT: daemon.tcp is not set, so no token
    # was asked for, and every local user was served (or, on 0.0.0.0, everyone)
    a = await fake_openai()
    port = free_port()
    daemon = ""
    if with_token:
        token = short_dir / "token"
        token.write_text("s3cret\n")
        daemon = f'tcp_token_file = "{token}"\n'
    notify_path = short_dir / "d-0.ntf"  # what launch() names its first notify socket
    d = await launch(toml(short_dir, {"a": a}, daemon=daemon), wait_ready=False, argv=[
        "systemd-socket-activate", "-l", f"127.0.0.1:{port}", "-E",
        f"NOTIFY_SOCKET={notify_path}"])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as tcp:
        async with asyncio.timeout(10):
            while True:  # until systemd-socket-activate listens; the daemon starts on connect
                try:
                    r = await tcp.get("/v1/status")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
        await d.notify.expect("READY=1", timeout=5)
        assert r.status_code == 401
        assert "tcp_token_file" in r.json()["error"]["message"]
        r = await tcp.post("/v1/chat/completions", json=HELLO,
                           headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == (200 if with_token else 401)
    assert len(a.chat_requests()) == (1 if with_token else 0)
    d.signal(signal.SIGTERM)
    assert await d.exit_code() == 0
