"""What the second README audit (the features of Dec 7) found where the code, not the README,
was wrong (fixed since)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from failoverd.cli.ctl import show_status
from tests.helpers import one_model_config, until
from tests.test_fastpath import ASK, NO_PROBES, connect, fast, post, read_answer

ACCESS = "failoverd.access"


async def test_a_request_still_arriving_at_the_drain_has_its_access_line(
        fake_openai: Any, start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    """README, Logs: with daemon.access_log every request to a proxied endpoint gets one line
    "however it ends". One whose body is still arriving on the fast path when the drain
    begins gets the 503 shutting_down (README, Calling it), but no line."""
    caplog.set_level(logging.INFO, logger=ACCESS)
    fake = await fake_openai()
    d = await start_daemon("access_log = true\n" + one_model_config(fake.url, tail=NO_PROBES))
    async with connect(d.socket) as (reader, writer):
        writer.write(post(ASK)[:-10])
        await until(lambda: any(c.need for c in fast(d).connections))
        d.sup.request_stop()
        assert (await read_answer(reader)).status == 503
    await d.stop()
    assert fake.chat_requests() == []
    lines = [r.access for r in caplog.records if r.name == ACCESS]  # type: ignore[attr-defined]
    assert [line["status"] for line in lines] == [503]


def test_failoverctl_shows_a_small_cost_in_plain_decimals() -> None:
    """A cheap model's first calls cost fractions of a cent: 100 prompt tokens at
    $0.15 per 1M are $0.000015."""
    status = {"time": 0, "models": {"a/m": {"state": "closed", "cost_usd": 1.5e-05}},
              "usage": {"tokens": {"prompt": 100, "completion": 0}, "cost_usd": 1.5e-05}}
    out = show_status(status)
    assert "e-0" not in out
    assert "$0.000015" in out


SPEECH_ONLY = """
[providers.sim]
kind = "simulated"

[models."sim/tts"]
provider = "sim"
capabilities = ["speech"]

[probes]
kind = "none"
"""


async def test_refusals_of_a_speech_model_name_speech(start_daemon: Any) -> None:
    """README, Text to speech and Configuration: speech is a model kind of its own."""
    d = await start_daemon(SPEECH_ONLY)
    chat = await d.http.post("/v1/chat/completions",
                             json={"model": "default", "messages": [{"role": "user",
                                                                     "content": "hi"}]})
    assert chat.status_code == 404
    session = await d.http.post("/v1/sessions/k", json={"model": "sim/tts"})
    assert session.status_code == 400
    assert session.json()["error"]["code"] == "model_not_chat"
    assert "speech" in chat.json()["error"]["message"]
    assert "speech" in session.json()["error"]["message"]
