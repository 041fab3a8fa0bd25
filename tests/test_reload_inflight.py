"""A model a reload removes and a later reload adds back while calls to it still run: those
calls keep counting against its max_concurrency and in /v1/status."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers import HELLO, pair_config, status, until_async

PIN = {"x-failoverd-no-fallback": "1"}


async def test_calls_still_running_count_for_a_model_removed_and_added_back(
        fake_openai: Any, start_daemon: Any, short_dir: Path) -> None:
    a, b = await fake_openai(), await fake_openai(default="slow:1.5")
    full = pair_config(a, b).replace('provider = "b"\n', 'provider = "b"\nmax_concurrency = 1\n')
    d = await start_daemon(full)
    toml = short_dir / "d.toml"
    with_b = toml.read_text()
    without_b = with_b.replace('[models."b/gpt-b"]\nprovider = "b"\nmax_concurrency = 1\n',
                               "").replace('fallbacks = ["b/gpt-b"]', "fallbacks = []")
    first = asyncio.create_task(d.openai.chat.completions.create(
        model="b/gpt-b", messages=HELLO, extra_headers=PIN))

    async def running() -> bool:
        return (await status(d))["models"]["b/gpt-b"]["inflight"] == 1

    await until_async(running)
    for text in (without_b, with_b):  # removed, then back as it was
        toml.write_text(text)
        assert (await d.http.post("/v1/reload")).status_code == 200
    # the call still running holds b's one slot
    assert (await status(d))["models"]["b/gpt-b"]["inflight"] == 1
    with pytest.raises(openai.InternalServerError) as info:
        await d.openai.chat.completions.create(model="b/gpt-b", messages=HELLO,
                                               extra_headers=PIN)
    assert info.value.body["attempts"][0]["message"] == "max_concurrency"
    assert len(b.chat_requests()) == 1
    await first
    assert (await status(d))["models"]["b/gpt-b"]["inflight"] == 0
