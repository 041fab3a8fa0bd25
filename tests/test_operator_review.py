"""An operator's journey, with real processes: the `failoverd` and `failoverctl` command lines,
what reaches the journal, and README's claims checked against a running daemon."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from failoverd import config
from failoverd.errors import ConfigError
from tests.helpers import FAILOVERCTL, failoverctl, free_port, one_model_config, status
from tests.mosquitto import Mosquitto, requires_mosquitto
from tests.mosquitto import mosquitto as mosquitto  # the fixture
from tests.test_contract_mqtt import PASSWORD, mqtt_body, retained_status
from tests.test_contract_mqtt import broker as broker  # the fixture

BASE = """
[providers.a]
kind = "simulated"
[models."a/m"]
provider = "a"
"""


async def run(*argv: str, env: dict[str, str] | None = None,
              stderr_to: Path | None = None) -> tuple[int, str, str]:
    """Runs a command to its end: (exit code, stdout, stderr)."""
    err = stderr_to.open("wb") if stderr_to is not None else asyncio.subprocess.PIPE
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=err,
            env={**os.environ, **(env or {})})
        out, errtext = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if stderr_to is not None and not isinstance(err, int):
            err.close()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), (errtext or b"").decode()


DAEMON = (sys.executable, "-m", "failoverd.cli.daemon")


async def test_an_unknown_log_level_is_a_usage_error_not_a_traceback(tmp_path: Path) -> None:
    """It was a ValueError traceback and exit 1 after the config was read (under systemd,
    exit 1 is restarted every RestartSec= for ever); now exit 2 naming the choices."""
    good = tmp_path / "good.toml"
    good.write_text(BASE)
    code, _, err = await run(*DAEMON, "--config", str(good), "--log-level", "verbose")
    assert code == 2, err
    assert "unknown log level 'verbose'" in err and "WARNING" in err
    assert "Traceback" not in err
    code, _, err = await run(*DAEMON, "--config", str(good), "--check-config",
                             env={"FAILOVERD_LOG_LEVEL": "loud"})
    assert code == 2 and "unknown log level 'loud'" in err
    # any case, and the common "warn", are accepted
    code, out, err = await run(*DAEMON, "--config", str(good), "--check-config",
                               "--log-level", "warn")
    assert code == 0 and "ok" in out, err
    code, out, err = await run(*DAEMON, "--config", str(good), "--check-config",
                               env={"FAILOVERD_LOG_LEVEL": "debug"})
    assert code == 0, err


async def test_ctrl_c_on_failoverctl_is_a_quiet_exit_130(short_dir: Path) -> None:
    """Ctrl-C while failoverctl waits for an answer (a slow probe, a wedged daemon) printed a
    KeyboardInterrupt traceback."""
    accepted = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # read the request, never answer
        accepted.set()

    path = str(short_dir / "mute.sock")
    server = await asyncio.start_unix_server(silent, path)
    try:
        proc = await asyncio.create_subprocess_exec(
            FAILOVERCTL, "--socket", path, "probe", "a/m",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        await asyncio.wait_for(accepted.wait(), 10)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err and b"interrupted" in err
    assert out == b""


LOG_SCRIPT = """
import logging
from failoverd import logs
logs.setup({fmt!r}, "DEBUG")
log = logging.getLogger("failoverd.test")
log.debug("d"); log.info("i"); log.warning("w"); log.error("e")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("boom")
"""


async def _logged(tmp_path: Path, fmt: str, journal: str | None) -> list[str]:
    """The stderr lines of a process that set up failoverd's logging; `journal` is what
    JOURNAL_STREAM holds ("self": the device and inode of that very stderr file)."""
    target = tmp_path / f"stderr-{fmt}-{journal}"
    target.touch()
    st = target.stat()
    env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}" if journal == "self" else journal or ""}
    code, _, _ = await run(sys.executable, "-c", LOG_SCRIPT.format(fmt=fmt), env=env,
                           stderr_to=target)
    assert code == 0, target.read_text()
    return target.read_text().splitlines()


async def test_log_lines_carry_syslog_priorities_for_the_journal(tmp_path: Path) -> None:
    """Under systemd every line went to the journal as priority info, so `journalctl -p
    warning` showed no warning or error of the daemon; now each line of a record starts with
    its <N> priority when stderr is the journal's stream (journald strips it)."""
    lines = await _logged(tmp_path, "text", "self")
    assert lines[:4] == ["<7>DEBUG failoverd.test: d", "<6>INFO failoverd.test: i",
                         "<4>WARNING failoverd.test: w", "<3>ERROR failoverd.test: e"]
    traceback = lines[4:]
    assert traceback[0] == "<3>ERROR failoverd.test: boom"
    assert len(traceback) > 2 and all(line.startswith("<3>") for line in traceback)
    assert traceback[-1] == "<3>ZeroDivisionError: division by zero"

    json_lines = await _logged(tmp_path, "json", "self")
    assert [line[:3] for line in json_lines] == ["<7>", "<6>", "<4>", "<3>", "<3>"]
    assert json_lines[2].startswith('<4>{"time":')

    # stderr that is not the journal's (a terminal, a pipe, a file): no prefixes, even when
    # JOURNAL_STREAM was inherited from a systemd user session
    for journal in (None, "1:2", "junk"):
        plain = await _logged(tmp_path, "text", journal)
        assert plain[:4] == ["DEBUG failoverd.test: d", "INFO failoverd.test: i",
                             "WARNING failoverd.test: w", "ERROR failoverd.test: e"]
        assert not any(line.startswith("<") for line in plain)


@requires_mosquitto
async def test_mqtt_password_and_tcp_token_come_as_systemd_credentials(
        broker: Mosquitto, fake_openai: Any, start_daemon: Any, tmp_path: Path) -> None:
    """Under the unit's DynamicUser= a root-only password_file or tcp_token_file cannot be
    read, and only API keys could come from $CREDENTIALS_DIRECTORY: the README's own
    LoadCredential= advice had no way to reach [mqtt] or the TCP listener."""
    a = await fake_openai()
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "mqtt").write_text(PASSWORD + "\n")
    (creds / "tcp").write_text("tok-from-credential\n")
    port = free_port()
    body = (f'tcp = "127.0.0.1:{port}"\ntcp_token_credential = "tcp"\n'
            + mqtt_body(broker.port, "creds", tmp_path / "unused", a.url).replace(
                f'password_file = "{tmp_path / "unused"}"', 'password_credential = "mqtt"'))
    assert 'password_credential = "mqtt"' in body
    d = await start_daemon(body, env={"CREDENTIALS_DIRECTORY": str(creds)})
    await asyncio.wait_for(d.sup.service.mqtt.wait_connected(), 5)
    assert await retained_status(broker.port, "failoverd/creds/status") == b"online"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as tcp:
        ok = await tcp.get("/v1/health", headers={"authorization": "Bearer tok-from-credential"})
        assert ok.status_code == 200
        assert (await tcp.get("/v1/health", headers={"authorization": "Bearer nope"})
                ).status_code == 401


def test_secret_credentials_of_mqtt_and_tcp_are_checked_like_api_keys(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "two-lines").write_text("tok\nen\n")
    (creds / "token").write_text("good-token\n")
    (creds / "pw").write_text("pass word\twith tab\n")  # any text: never an HTTP header
    text = ('[daemon]\ntcp = "127.0.0.1:1"\ntcp_token_credential = "missing"\n'
            '[mqtt]\npassword_credential = "pw"\n' + BASE)
    unset = "CREDENTIALS_DIRECTORY is not set (systemd LoadCredential= provides it)"
    with pytest.raises(ConfigError) as info:
        config.loads(text, env={})
    assert info.value.problems == [f"daemon.tcp_token_credential: {unset}",
                                   f"mqtt.password_credential: {unset}"]
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    with pytest.raises(ConfigError) as info:
        config.loads(text, env=env)
    assert info.value.problems == [
        f"daemon.tcp_token_credential: cannot read {creds / 'missing'}: No such file or "
        "directory"]
    with pytest.raises(ConfigError) as info:
        config.loads(text.replace('"missing"', '"two-lines"'), env=env)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("daemon.tcp_token_credential: ")
    assert "line break" in info.value.problems[0]
    # the file and the credential are one key: both is an error, and tcp needs one of them
    both = text.replace('tcp_token_credential = "missing"',
                        f'tcp_token_credential = "token"\ntcp_token_file = "{creds}/token"')
    with pytest.raises(ConfigError) as info:
        config.loads(both, env=env)
    assert info.value.problems == [
        "daemon.tcp_token_credential: set only one of tcp_token_file, tcp_token_credential"]
    with pytest.raises(ConfigError) as info:
        config.loads(text.replace('tcp_token_credential = "missing"\n', ""), env=env)
    assert info.value.problems == ["daemon.tcp_token_file: is required when tcp is set"]
    cfg = config.loads(text.replace('"missing"', '"token"'), env=env)
    assert cfg.daemon.tcp_token == "good-token"
    assert cfg.mqtt.password == "pass word\twith tab"
    assert "good-token" not in repr(cfg) and "pass word" not in repr(cfg)


async def test_a_negative_token_count_is_bad_usage_not_a_refusal(fake_openai: Any,
                                                                 start_daemon: Any) -> None:
    """`select --tokens -5` went to the daemon and came back as "daemon said 400" (exit 1);
    like `open --for -1`, a number failoverctl can check itself is bad usage (exit 2)."""
    a = await fake_openai()
    d = await start_daemon(one_model_config(a.url))
    code, out, err = await failoverctl(d.socket, "select", "--tokens", "-5")
    assert code == 2 and out == ""
    assert "--tokens: must be 0 or more: '-5'" in err
    code, out, err = await failoverctl(d.socket, "--json", "select", "--tokens", "0")
    assert code == 0, err
    assert [c["model"] for c in orjson.loads(out)["candidates"]] == ["a/m"]


async def test_an_unknown_endpoint_is_a_json_error(fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai()
    d = await start_daemon(one_model_config(a.url))
    # what SDKs call that failoverd does not serve: OpenAI's images, Anthropic batches
    for method, path in (("POST", "/v1/images/generations"), ("POST", "/v1/messages/batches"),
                         ("GET", "/v1/chat/completions")):
        resp = await d.http.request(method, path, json={"model": "default", "input": "x"})
        assert resp.status_code in (404, 405)
        assert resp.headers["content-type"].startswith("application/json"), (path, resp.text)
        assert isinstance(resp.json()["error"]["message"], str)


@requires_mosquitto
async def test_status_mqtt_object_says_enabled_either_way(
        mosquitto: Mosquitto, fake_openai: Any, start_daemon: Any) -> None:
    """With MQTT off, /v1/status had {"enabled": false}; with it on, an object without
    "enabled", so `status["mqtt"]["enabled"]` raised KeyError exactly when MQTT was on."""
    a = await fake_openai()
    off = await start_daemon(one_model_config(a.url), name="off")
    assert (await status(off))["mqtt"] == {"enabled": False}
    on = await start_daemon(f'node = "st"\n[mqtt]\nenabled = true\nhost = "127.0.0.1"\n'
                            f'port = {mosquitto.port}\n' + one_model_config(a.url), name="on")
    await asyncio.wait_for(on.sup.service.mqtt.wait_connected(), 5)
    mqtt = (await status(on))["mqtt"]
    assert mqtt["enabled"] is True and mqtt["connected"] is True
    assert {"queued", "states_pending", "dropped", "published", "reconnects",
            "connect_failures", "protocol", "connected_since", "last_error"} <= set(mqtt)


def test_a_topic_prefix_with_an_empty_level_is_a_config_error() -> None:
    """topic_prefix = "home/" published to home//<node>/status, which the README's
    `<prefix>/+/status` subscription never matches; nothing said why the dashboard was empty."""
    for bad in ("home/", "/home", "home//llm"):
        with pytest.raises(ConfigError) as info:
            config.loads(f'[mqtt]\ntopic_prefix = "{bad}"\n' + BASE, env={})
        assert info.value.problems == [
            f"mqtt.topic_prefix: must not start or end with '/' nor hold '//' (an empty topic "
            f"level), got {bad!r}"]
    assert config.loads('[mqtt]\ntopic_prefix = "home/llm"\n' + BASE,
                        env={}).mqtt.topic_prefix == "home/llm"
