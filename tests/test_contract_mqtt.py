"""DESIGN.md's `[mqtt] username` and `password_file` against a real mosquitto that refuses
anonymous clients: the right password gets the daemon's topics published, a wrong one leaves
the daemon serving (and the password out of its status and logs)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.helpers import HELLO, one_model_config, status, until_async
from tests.mosquitto import MOSQUITTO, Mosquitto, requires_mosquitto, running

USER = "failoverd"
PASSWORD = "s3cret-mqtt-pw"


@pytest.fixture(autouse=True)
def _quiet_paho() -> None:
    """paho logs every packet at DEBUG; keep failures readable."""
    logging.getLogger("failoverd.mqtt.paho").setLevel(logging.INFO)


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    """A mosquitto that lets in only USER with PASSWORD."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.skip("mosquitto_passwd is not installed")
    users = tmp_path / "users"
    subprocess.run([passwd, "-b", "-c", str(users), USER, PASSWORD], check=True,
                   capture_output=True, timeout=30)
    users.chmod(0o600)
    b = Mosquitto(tmp_path)
    b.conf.write_text(b.conf.read_text().replace(
        "allow_anonymous true", f"allow_anonymous false\npassword_file {users}"))
    with running(b):
        yield b


def mqtt_body(port: int, node: str, password_file: Path, url: str) -> str:
    return (f'node = "{node}"\n[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n'
            f'username = "{USER}"\npassword_file = "{password_file}"\n'
            + one_model_config(url, tail='[probes]\nkind = "none"\n'))


async def retained_status(port: int, topic: str) -> bytes:
    """The retained payload of `topic`, read by an authenticated subscriber."""
    async with asyncio.timeout(5), aiomqtt.Client(
            "127.0.0.1", port, username=USER, password=PASSWORD) as client:
        await client.subscribe(topic, qos=1)
        async for message in client.messages:
            assert message.retain and isinstance(message.payload, bytes)
            return message.payload
    raise AssertionError("no retained message")


@requires_mosquitto
async def test_username_and_password_file_log_in_to_a_broker_that_requires_them(
        broker: Mosquitto, fake_openai: Any, start_daemon: Any, tmp_path: Path) -> None:
    a = await fake_openai()
    good = tmp_path / "mqtt-password"
    good.write_text(PASSWORD + "\n")  # a trailing newline, as editors leave it
    d = await start_daemon(mqtt_body(broker.port, "authed", good, a.url))
    await asyncio.wait_for(d.sup.service.mqtt.wait_connected(), 5)
    assert await retained_status(broker.port, "failoverd/authed/status") == b"online"
    assert await retained_status(broker.port, "failoverd/authed/models/a%2Fm/state")

    # anonymous clients are refused: the broker really checks
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", broker.port):
            pass


@requires_mosquitto
async def test_a_wrong_mqtt_password_never_stops_serving_nor_shows_up(
        broker: Mosquitto, fake_openai: Any, start_daemon: Any, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="failoverd")
    a = await fake_openai()
    bad = tmp_path / "wrong-password"
    bad.write_text("not-the-password-xyz\n")
    d = await start_daemon(mqtt_body(broker.port, "refused", bad, a.url))
    await until_async(lambda: _failed_to_connect(d), timeout=10)
    resp = await d.http.post("/v1/chat/completions", json={"model": "default", "messages": HELLO})
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "a/m"
    mqtt = (await status(d))["mqtt"]
    assert mqtt["connected"] is False and mqtt["last_error"]
    text = (await d.http.get("/v1/status")).text + caplog.text
    assert "not-the-password-xyz" not in text


async def _failed_to_connect(d: Any) -> bool:
    return int((await status(d))["mqtt"]["connect_failures"]) >= 1
