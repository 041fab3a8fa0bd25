"""`failoverctl status` shows each hedge budget's use over its window (hedgebudget.py): the
real failoverctl against the in-process daemon, whose slow primary on a fake OpenAI upstream
on 127.0.0.1 is hedged to a fast fallback until its budget refuses; on simulated time."""

from __future__ import annotations

from typing import Any

import orjson

from failoverd.clock import ManualClock
from tests.helpers import chat, failoverctl
from tests.test_ctl_upstream_limits import section
from tests.test_hedge import A, B, config


async def test_status_shows_the_hedge_budgets(start_daemon: Any, fake_openai: Any) -> None:
    a = await fake_openai(default="slow:0.2", reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(config(a, b, routing="hedge_after = 0.05\nhedge_budget = 0.125\n"
                                                "hedge_budget_min = 1"), clock=ManualClock())
    code, out, err = await failoverctl(d.socket, "status")
    assert code == 0, err
    # b/gpt-b has one too (it could be hedged on another chain), unused as the last here
    idle = [B, "12.5%", "1", "0", "0", "0", "1"]
    assert section(out, "HEDGE BUDGET") == [[A, "12.5%", "1", "0", "0", "0", "1"], idle]
    outcomes = [(await chat(d)).headers["x-failoverd-hedge"] for _ in range(3)]
    assert outcomes == [f"{A}>{B}:won", f"{A}>{B}:budget", f"{A}>{B}:budget"]
    code, out, err = await failoverctl(d.socket, "status")
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("HEDGE BUDGET"))
    assert [c.strip() for c in header.split("  ") if c.strip()] == [
        "HEDGE BUDGET", "SHARE", "RESERVE", "HEDGEABLE", "HEDGED", "REFUSED", "LEFT"]
    assert section(out, "HEDGE BUDGET") == [[A, "12.5%", "1", "3", "1", "2", "0"], idle]
    code, out, err = await failoverctl(d.socket, "status", "--json")
    assert code == 0, err
    assert orjson.loads(out)["models"][A]["hedge_budget"]["refused"] == 2


async def test_no_table_without_a_budget(start_daemon: Any, fake_openai: Any) -> None:
    a = await fake_openai()
    b = await fake_openai()
    d = await start_daemon(config(a, b), clock=ManualClock())
    code, out, err = await failoverctl(d.socket, "status")
    assert code == 0, err
    assert "HEDGE BUDGET" not in out
