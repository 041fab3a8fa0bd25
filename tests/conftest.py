"""Shared fixtures: fake upstreams and the daemon on a short Unix socket, with real clients."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from failoverd import config as config_mod
from failoverd.clock import Clock
from failoverd.http1 import HttpClient
from failoverd.supervisor import Supervisor
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.base import fake_fixture
from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import FakeOpenAI


@pytest.fixture
def short_dir() -> Any:
    """A directory under /tmp with a short path (AF_UNIX paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="fod-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# factories of started fake upstreams, all closed after the test
fake_openai = fake_fixture(FakeOpenAI, "fake_openai")
fake_anthropic = fake_fixture(FakeAnthropic, "fake_anthropic")
fake_gemini = fake_fixture(FakeGemini, "fake_gemini")
fake_ollama = fake_fixture(FakeOllama, "fake_ollama")


@pytest.fixture
async def http_client() -> AsyncIterator[HttpClient]:
    """The upstream HTTP client, as the daemon's adapters get one."""
    async with HttpClient() as client:
        yield client


@dataclass
class Daemon:
    sup: Supervisor
    task: asyncio.Task[None]
    socket: str
    http: httpx.AsyncClient
    openai: openai.AsyncOpenAI

    async def stop(self) -> None:
        self.sup.request_stop()
        await asyncio.wait_for(self.task, 30)


def daemon_toml(socket: str, state_dir: str, body: str) -> str:
    return f'[daemon]\nsocket = "{socket}"\nstate_dir = "{state_dir}"\n' + body


@pytest.fixture
async def start_daemon(short_dir: Path) -> AsyncIterator[Callable[..., Awaitable[Daemon]]]:
    """Starts the daemon in-process on a real Unix socket with a TOML body (no [daemon])."""
    running: list[Daemon] = []

    async def start(body: str, *, env: dict[str, str] | None = None,
                    clock: Clock | None = None, name: str = "d") -> Daemon:
        sock = str(short_dir / f"{name}.sock")
        text = daemon_toml(sock, str(short_dir / f"{name}-state"), body)
        path = short_dir / f"{name}.toml"
        path.write_text(text)
        cfg = config_mod.load(path, env=env or {})
        sup = Supervisor(cfg, config_path=str(path), clock=clock, handle_signals=False)
        task = asyncio.create_task(sup.run())
        ready = asyncio.create_task(sup.ready.wait())
        await asyncio.wait((task, ready), timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            task.result()
        assert sup.ready.is_set(), "daemon did not become ready"
        transport = httpx.AsyncHTTPTransport(uds=sock)
        http = httpx.AsyncClient(transport=transport, base_url="http://failoverd", timeout=30)
        client = openai.AsyncOpenAI(
            api_key="unused", base_url="http://failoverd/v1", max_retries=0,
            http_client=httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=sock),
                                          timeout=30))
        d = Daemon(sup, task, sock, http, client)
        running.append(d)
        return d

    yield start
    for d in running:
        await d.http.aclose()
        await d.openai.close()
        if not d.task.done():
            await d.stop()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert, key)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl CLI")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=30)
    return cert, key
