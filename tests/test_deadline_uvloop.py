"""The request deadline on uvloop, whose timers may fire up to a millisecond early.

An attempt cut by its own timeout a hair before the request's deadline must end the request
(the budget is spent), not fail over to a fallback with no time left: that fallback would be
listed as attempted and charged a timeout in its breaker for a call it never got.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from failoverd import config as config_mod
from failoverd.supervisor import Supervisor
from tests.conftest import daemon_toml
from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO
from tests.test_review_dec7 import hanging_primary

uvloop = pytest.importorskip("uvloop")


async def _scenario(short_dir: Path) -> tuple[list[list[str]], int, int]:
    a = await FakeOpenAI(default="hang").start()
    b = await FakeOpenAI(reply="from b").start()
    sock = str(short_dir / "d.sock")
    path = short_dir / "d.toml"
    path.write_text(daemon_toml(sock, str(short_dir / "state"), hanging_primary(a, b)))
    sup = Supervisor(config_mod.load(path, env={}), config_path=str(path),
                     handle_signals=False)
    task = asyncio.create_task(sup.run())
    try:
        async with asyncio.timeout(10):
            await sup.ready.wait()
        transport = httpx.AsyncHTTPTransport(uds=sock)
        async with httpx.AsyncClient(transport=transport, base_url="http://failoverd",
                                     timeout=10) as http:
            tried: list[list[str]] = []
            for _ in range(5):
                answers = await asyncio.gather(*(
                    http.post("/v1/chat/completions",
                              json={"model": "default", "messages": HELLO})
                    for _ in range(20)))
                for resp in answers:
                    assert resp.status_code == 503, resp.text
                    tried.append([x["model"] for x in resp.json()["error"]["attempts"]])
            status = (await http.get("/v1/status")).json()
        return tried, len(b.chat_requests()), status["models"]["b/gpt-b"]["calls_in_window"]
    finally:
        sup.request_stop()
        await asyncio.wait_for(task, 30)
        await a.close()
        await b.close()


def test_a_primary_cut_at_the_deadline_on_uvloop_is_no_failover(short_dir: Path) -> None:
    tried, b_requests, b_calls = uvloop.run(_scenario(short_dir))
    assert all(models == ["a/gpt-a"] for models in tried), [m for m in tried if len(m) > 1]
    assert b_requests == 0
    assert b_calls == 0
