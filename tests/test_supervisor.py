"""The supervisor's HTTP server: what it does with client connections that stay idle."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from failoverd import config as config_mod
from failoverd.supervisor import Supervisor
from tests.conftest import daemon_toml

IDLE = 0.2  # the loop's own timer (aiohttp's keep-alive): a clock cannot advance it


async def test_idle_client_connections_are_closed_but_streams_are_not(
        short_dir: Path, fake_openai: Any) -> None:
    """aiohttp keeps an idle client connection for 3630 s unless told otherwise: each one
    pinned a file descriptor and a handler task for an hour (soak: 400 idle clients, 400 fds
    and 400 tasks). A stream that outlasts the idle limit is not idle and runs to its end."""
    fake = await fake_openai(default="slow_stream:0.1")  # 6 words: about 0.6 s > IDLE
    sock = str(short_dir / "d.sock")
    path = short_dir / "d.toml"
    path.write_text(daemon_toml(sock, str(short_dir / "state"), f"""
[providers.a]
kind = "openai"
base_url = "{fake.url}"
[models."a/m"]
provider = "a"
[routing]
primary = "a/m"
[probes]
kind = "none"
recovery_kind = "none"
"""))
    sup = Supervisor(config_mod.load(path, env={}), config_path=str(path),
                     handle_signals=False, idle_timeout=IDLE)
    task = asyncio.create_task(sup.run())
    try:
        await asyncio.wait_for(sup.ready.wait(), 10)
        # asked once and kept the connection; never finished its request; streams
        asked = await asyncio.open_unix_connection(sock)
        asked[1].write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        partial = await asyncio.open_unix_connection(sock)
        partial[1].write(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
        streaming = await asyncio.open_unix_connection(sock)
        body = orjson.dumps({"model": "a/m", "stream": True,
                             "messages": [{"role": "user", "content": "hi"}]})
        streaming[1].write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                           % (len(body), body))
        async with asyncio.timeout(10):  # without an idle limit: an hour
            answered, cut, streamed = await asyncio.gather(
                asked[0].read(), partial[0].read(), streaming[0].read())
        assert answered.startswith(b"HTTP/1.1 200 ") and answered.endswith(b"}")
        assert cut == b""
        assert streamed.startswith(b"HTTP/1.1 200 ")
        assert b"data: [DONE]" in streamed and b"error" not in streamed
        for _, writer in (asked, partial, streaming):
            writer.close()
    finally:
        sup.request_stop()
        await asyncio.wait_for(task, 30)


async def test_a_reload_that_fails_to_apply_keeps_the_old_configuration(
        fake_openai: Any, start_daemon: Any, monkeypatch: Any) -> None:
    """Fault injection: applying a valid new configuration raises, as a defect would. The
    daemon goes back to the configuration that worked and keeps serving (a SIGHUP used to end
    it), and says so: the reload is refused with config:rejected naming the error."""
    from failoverd.service import Service

    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    body = (f'[providers.a]\nkind = "openai"\nbase_url = "{a.url}"\n'
            f'[models."a/m"]\nprovider = "a"\n[routing]\nprimary = "a/m"\n')
    d = await start_daemon(body)
    path = Path(d.sup.config_path)
    path.write_text(path.read_text().replace(a.url, b.url))
    real = Service.reload
    calls: list[Any] = []

    def failing_once(self: Service, config: Any) -> None:
        calls.append(config)
        if len(calls) == 1:
            raise RuntimeError("injected defect")
        real(self, config)

    monkeypatch.setattr(Service, "reload", failing_once)
    resp = await d.http.post("/v1/reload")
    assert resp.status_code == 422, resp.text
    assert "failoverd could not apply it: RuntimeError: injected defect" in resp.text
    assert len(calls) == 2  # the new one, then the old one again
    rejected = [e for e in d.sup.service.bus.recent() if e.type == "config:rejected"]
    assert rejected and "injected defect" in rejected[-1].fields["problems"][0]
    chat = await d.http.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "hi"}]})
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == "from a"
    assert not d.task.done()
