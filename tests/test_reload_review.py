"""Reload review: what a reload does to state earned under the settings it replaces.

Calls and probes admitted before a reload that changes a model or its provider (a new API key,
URL, model option) end after it: their outcome belongs to the old settings and must neither
block the provider under the new key nor announce a transition of a breaker that is no longer
the model's. State a reload ends (an open breaker, a credential block, sticky windows longer
than the new sticky_seconds) ends visibly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from tests.fakes.base import serve_app
from tests.helpers import HELLO, pair_config, status, until

PIN = {"x-failoverd-no-fallback": "1"}
M = "a/m"
M_URL = "a%2Fm"

_AUTH = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                   "code": "invalid_api_key"}}
_SERVER = {"error": {"message": "The server had an error", "type": "server_error",
                     "code": None}}


def _completion() -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class Gated:
    """An OpenAI-compatible upstream: key "good" is answered at once; any other key waits for
    `release` and then gets `bad` (401 by default)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = 0
        self.bad: tuple[int, dict[str, Any]] = (401, _AUTH)
        self.url = ""

    async def _answer(self, request: web.Request, ok: dict[str, Any]) -> web.Response:
        if request.headers.get("Authorization") == "Bearer good":
            return web.json_response(ok)
        self.waiting += 1
        await self.release.wait()
        status_code, body = self.bad
        return web.json_response(body, status=status_code)

    async def chat(self, request: web.Request) -> web.Response:
        await request.read()
        return await self._answer(request, _completion())

    async def models(self, request: web.Request) -> web.Response:
        return await self._answer(request, {"object": "list", "data": [
            {"id": "m", "object": "model", "created": 0, "owned_by": "x"}]})


@pytest.fixture
async def gated() -> AsyncIterator[Gated]:
    g = Gated()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", g.chat)
    app.router.add_get("/v1/models", g.models)
    runner, g.url = await _serve(app)
    yield g
    g.release.set()
    await runner.cleanup()


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner, port = await serve_app(app)
    return runner, f"http://127.0.0.1:{port}/v1"


def _config(url: str, key_file: Path, model: str = "", tail: str = "") -> str:
    return f"""
[providers.a]
kind = "openai"
base_url = "{url}"
api_key_file = "{key_file}"
[models."a/m"]
provider = "a"
max_retries = 0
{model}
[routing]
primary = "a/m"
fallbacks = []
when_all_unavailable = "fail"
[probes]
kind = "none"
{tail}"""


async def _reload(d: Any) -> None:
    resp = await d.http.post("/v1/reload")
    assert resp.status_code == 200, resp.text


def _events(d: Any, type_: str) -> list[dict[str, Any]]:
    return [e.as_dict() for e in d.sup.service.bus.recent() if e.type == type_]


async def test_an_auth_failure_under_the_old_key_does_not_block_the_new_key(
        gated: Gated, start_daemon: Any, short_dir: Path) -> None:
    """The operator fixes a wrong key and reloads while a call made with the old key is still
    out: its 401 blocked the provider for auth_open_seconds under the new, good key."""
    key = short_dir / "key"
    key.write_text("old\n")
    d = await start_daemon(_config(gated.url, key))
    call = asyncio.create_task(d.openai.chat.completions.create(
        model=M, messages=HELLO, extra_headers=PIN))
    await until(lambda: gated.waiting == 1)
    key.write_text("good\n")
    await _reload(d)
    gated.release.set()
    with pytest.raises(openai.APIStatusError):
        await call
    st = await status(d)
    assert st["providers"]["a"]["credentials"] == "ok"
    assert st["models"][M]["state"] == "closed"
    answer = await d.openai.chat.completions.create(model=M, messages=HELLO, extra_headers=PIN)
    assert answer.choices[0].message.content == "hi"
    assert not [e for e in _events(d, "provider:credentials") if e["state"] == "auth"]
    assert d.sup.service.state_file.load()["providers"] == {}


async def test_a_probe_answer_to_the_old_key_is_ignored(
        gated: Gated, start_daemon: Any, short_dir: Path) -> None:
    key = short_dir / "key"
    key.write_text("old\n")
    d = await start_daemon(_config(gated.url, key))
    probe = asyncio.create_task(d.http.post(f"/v1/models/{M_URL}/probe"))
    await until(lambda: gated.waiting == 1)
    key.write_text("good\n")
    await _reload(d)
    gated.release.set()
    await probe
    st = await status(d)
    assert st["providers"]["a"]["credentials"] == "ok"
    assert st["models"][M]["last_probe"] is None
    assert not _events(d, "probe:failed")


async def test_a_breaker_of_replaced_settings_opening_is_not_announced(
        gated: Gated, start_daemon: Any, short_dir: Path) -> None:
    """A call admitted before a reload that changed its model fails after it: the old breaker
    opened and said so (breaker:opened, a recovery probe scheduled) while /v1/status showed the
    model's new breaker closed."""
    key = short_dir / "key"
    key.write_text("old\n")
    gated.bad = (500, _SERVER)
    tail = "[breaker]\nfailure_threshold = 1\n"
    d = await start_daemon(_config(gated.url, key, tail=tail))
    call = asyncio.create_task(d.openai.chat.completions.create(
        model=M, messages=HELLO, extra_headers=PIN))
    await until(lambda: gated.waiting == 1)
    toml = short_dir / "d.toml"
    toml.write_text(toml.read_text().replace("max_retries = 0\n",
                                             'max_retries = 0\ntier = "small"\n'))
    await _reload(d)
    gated.release.set()
    with pytest.raises(openai.APIStatusError):
        await call
    await asyncio.sleep(0)  # the coalesced state save
    st = await status(d)
    assert st["models"][M]["state"] == "closed"
    assert st["models"][M]["inflight"] == 0
    assert not _events(d, "breaker:opened")
    assert d.sup.service.state_file.load()["breakers"][M]["state"] == "closed"
    assert d.sup.prober is not None and d.sup.prober.scheduler is not None
    assert d.sup.prober.scheduler.get_job(f"recover:{M}") is None


async def test_a_reload_that_ends_an_open_breaker_or_a_block_announces_it(
        gated: Gated, start_daemon: Any, short_dir: Path) -> None:
    """A changed model starts with a closed breaker and a changed provider unblocked: MQTT and
    /v1/status showed it, but events (and hooks) never heard that the trouble was over."""
    key = short_dir / "key"
    key.write_text("old\n")
    gated.release.set()
    d = await start_daemon(_config(gated.url, key))
    with pytest.raises(openai.APIStatusError):
        await d.openai.chat.completions.create(model=M, messages=HELLO, extra_headers=PIN)
    assert (await status(d))["providers"]["a"]["credentials"] == "auth"
    key.write_text("good\n")
    await _reload(d)
    lifted = [e for e in _events(d, "provider:credentials") if e["state"] == "ok"]
    assert len(lifted) == 1 and lifted[0]["reason"] == "reconfigured"
    assert (await d.http.post(f"/v1/models/{M_URL}/open", json={"seconds": 600})).status_code \
        == 200
    toml = short_dir / "d.toml"
    toml.write_text(toml.read_text().replace("max_retries = 0\n", "max_retries = 1\n"))
    await _reload(d)
    closed = _events(d, "breaker:closed")
    assert len(closed) == 1
    assert closed[0]["reason"] == "reconfigured" and closed[0]["previous"] == "forced_open"
    assert (await status(d))["models"][M]["state"] == "closed"
    # an unchanged model's state is kept and not re-announced
    await d.http.post(f"/v1/models/{M_URL}/open", json={"seconds": 600})
    toml.write_text(toml.read_text().replace('fallbacks = []', 'fallbacks = []\ndeadline = 60'))
    await _reload(d)
    assert len(_events(d, "breaker:closed")) == 1
    assert (await status(d))["models"][M]["state"] == "forced_open"


async def test_a_shorter_sticky_seconds_ends_longer_sticky_windows(
        fake_openai: Any, start_daemon: Any, short_dir: Path) -> None:
    """sticky_seconds = 0 by reload: a session that had failed over stayed on its fallback
    for the old 300 s."""
    a, b = await fake_openai(), await fake_openai()
    d = await start_daemon(pair_config(a, b, routing="sticky_seconds = 300"))
    a.push("server_error", "server_error")
    session = {"x-failoverd-session": "s1"}
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO, extra_headers=session)
    assert raw.headers["x-failoverd-model"] == "b/gpt-b"
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO, extra_headers=session)
    assert raw.headers["x-failoverd-model"] == "b/gpt-b"  # sticky
    toml = short_dir / "d.toml"
    toml.write_text(toml.read_text().replace("sticky_seconds = 300", "sticky_seconds = 0"))
    await _reload(d)
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO, extra_headers=session)
    assert raw.headers["x-failoverd-model"] == "a/gpt-a"
