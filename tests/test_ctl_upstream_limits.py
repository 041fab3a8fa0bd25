"""`failoverctl status` shows what the upstreams' rate-limit headers said (upstreamlimits.py):
the real failoverctl against the in-process daemon, whose primary's fake upstream on
127.0.0.1 sends OpenAI's x-ratelimit-* headers; on simulated time."""

from __future__ import annotations

from typing import Any

import orjson

from failoverd.clock import ManualClock
from tests.fakes.base import fake_fixture
from tests.helpers import chat, failoverctl, pair_config
from tests.test_upstream_limits import OPENAI_SPENT, LimitedOpenAI

limited_openai = fake_fixture(LimitedOpenAI, "limited_openai")

PRIMARY, FALLBACK = "a/gpt-a", "b/gpt-b"


def section(text: str, title: str) -> list[list[str]]:
    """The rows (split in cells on two spaces or more) of the table headed `title`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows.append([cell.strip() for cell in line.split("  ") if cell.strip()])
    return rows


async def test_status_shows_the_upstream_limits(limited_openai: Any, fake_openai: Any,
                                                start_daemon: Any) -> None:
    a = await limited_openai(limits=OPENAI_SPENT)
    b = await fake_openai()
    clock = ManualClock()
    d = await start_daemon(pair_config(a, b), clock=clock)
    code, out, err = await failoverctl(d.socket, "status")
    assert code == 0, err
    assert "UPSTREAM LIMITS" not in out  # nothing told yet: no table
    assert (await chat(d)).headers["x-failoverd-model"] == PRIMARY
    clock.advance(3)
    code, out, err = await failoverctl(d.socket, "status")
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("UPSTREAM LIMITS"))
    assert [c.strip() for c in header.split("  ") if c.strip()] == [
        "UPSTREAM LIMITS", "REQUESTS LEFT", "RESET", "TOKENS LEFT", "RESET", "TOLD"]
    # 0 requests left until the 20 s reset (17 s from now), 29,000 tokens, the 2 s reset passed
    assert section(out, "UPSTREAM LIMITS") == [[PRIMARY, "0", "in 17s", "29,000", "-",
                                                "3s ago"]]
    code, out, err = await failoverctl(d.socket, "status", "--json")
    assert code == 0, err
    told = orjson.loads(out)["models"][PRIMARY]["upstream_limits"]
    assert told["requests_remaining"] == 0 and told["tokens_remaining"] == 29000
