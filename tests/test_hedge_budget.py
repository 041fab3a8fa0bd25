"""The hedge budget: how many of a model's hedgeable attempts may be hedged over a minute.

The budget itself on simulated time (hedgebudget.HedgeBudgets and a ManualClock), then end to
end: the daemon on a Unix socket, fake OpenAI upstreams on 127.0.0.1 whose latency the tests
set (hedge_after is real upstream latency, as in test_hedge.py), the budget's window on the
daemon's ManualClock, so a minute passes without a sleep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from failoverd import config as config_mod
from failoverd.clock import ManualClock
from failoverd.hedgebudget import HedgeBudgets, shares
from tests.helpers import HELLO, chat, metric, sse_json, status
from tests.test_hedge import A, B, config, hedged_events
from tests.test_hedge_budget_config import BASE


def budgets(routing: str, models: str = "") -> tuple[HedgeBudgets, ManualClock]:
    clock = ManualClock()
    found = HedgeBudgets(clock)
    found.configure(config_mod.loads(f"""{BASE}
[models."a/m"]
provider = "a"
{models}
[models."b/m"]
provider = "b"
[routing]
primary = "a/m"
fallbacks = ["b/m"]
hedge_after = 1
{routing}
"""))
    return found, clock


def attempts(found: HedgeBudgets, n: int, model: str = "a/m") -> list[bool]:
    """`n` hedgeable attempts on `model` whose timers all fire: which were let hedge."""
    decisions = []
    for _ in range(n):
        allow = found.armed(model)
        assert allow is not None
        decisions.append(allow())
    return decisions


def test_a_share_of_the_attempts_over_the_reserve() -> None:
    found, clock = budgets("hedge_budget = 0.1\nhedge_budget_min = 0")
    # a hedge is a whole one: the tenth attempt earns the first
    assert attempts(found, 20) == ([False] * 9 + [True]) * 2
    assert found.status("a/m") == {"share": 0.1, "reserve": 0, "window": 60.0,
                                   "eligible": 20, "hedged": 2, "refused": 18, "left": 0}
    # an attempt that answered in time (never asked) earns its share all the same
    for _ in range(10):
        assert found.armed("a/m") is not None
    assert found.status("a/m")["left"] == 1  # type: ignore[index]
    # a minute on, the window is empty again
    clock.advance(60)
    assert found.status("a/m") == {"share": 0.1, "reserve": 0, "window": 60.0,
                                   "eligible": 0, "hedged": 0, "refused": 0, "left": 0}


def test_the_reserve_lets_a_quiet_daemon_hedge() -> None:
    found, clock = budgets("hedge_budget = 0.5")  # reserve 3, the default
    # the sixth hedge: 6 <= 3 + 0.5 * 6; a seventh would need 3 + 0.5 * n >= 7
    assert attempts(found, 7) == [True] * 6 + [False]
    clock.advance(30)
    assert attempts(found, 2) == [True, False]  # 7 <= 3 + 0.5 * 8, not 8 <= 3 + 0.5 * 9
    clock.advance(31)  # the first seven left the window; 2 attempts, 1 hedge are in it
    assert found.status("a/m")["left"] == 3  # type: ignore[index]


def test_a_models_own_share_wins_and_one_of_1_is_no_budget() -> None:
    found, _ = budgets("hedge_budget = 0.2\nhedge_budget_min = 0", models="hedge_budget = 1")
    assert found.armed("a/m") is None and found.status("a/m") is None
    assert found.armed("b/m") is not None  # routing's share
    found, _ = budgets("", models="hedge_budget = 0.3")
    assert found.status("a/m") is not None and found.armed("b/m") is None
    # a model that is never hedged keeps no account
    cfg = config_mod.loads(f"{BASE}\n[models.\"a/m\"]\nprovider = \"a\"\nhedge_after = 0\n"
                           f"[models.\"b/m\"]\nprovider = \"b\"\n[routing]\nhedge_budget = 0.5\n")
    assert shares(cfg) == {}


def test_a_reload_keeps_the_window_under_the_new_share() -> None:
    found, _ = budgets("hedge_budget = 0.1\nhedge_budget_min = 0")
    assert attempts(found, 10) == [False] * 9 + [True]
    found.configure(config_mod.loads(f"""{BASE}
[models."a/m"]
provider = "a"
hedge_budget = 0.5
[models."b/m"]
provider = "b"
[routing]
hedge_after = 1
hedge_budget_min = 0
"""))
    assert found.status("a/m")["left"] == 4  # type: ignore[index]  # 0.5 * 10 - 1
    assert found.status("b/m") is None  # routing's budget went: b/m has none
    found.configure(config_mod.loads(f"{BASE}\n[models.\"a/m\"]\nprovider = \"a\"\n"))
    assert found.status("a/m") is None


async def test_a_hedge_the_budget_refuses_is_not_started_and_is_told(
        start_daemon: Any, fake_openai: Any) -> None:
    a = await fake_openai(default="slow:0.3", reply="from a")
    b = await fake_openai(reply="from b")
    clock = ManualClock()
    d = await start_daemon(config(a, b, routing="hedge_after = 0.05\nhedge_budget = 0.5\n"
                                                "hedge_budget_min = 1"), clock=clock)
    # 1 + 0.5 * 1, then 1 + 0.5 * 2: two hedges; the third would be 3 of 1 + 0.5 * 3
    for _ in range(2):
        resp = await chat(d)
        assert resp.headers["x-failoverd-hedge"] == f"{A}>{B}:won"
    resp = await chat(d)
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] \
        == "from a"
    assert resp.headers["x-failoverd-model"] == A
    assert resp.headers["x-failoverd-hedge"] == f"{A}>{B}:budget"
    assert resp.headers["x-failoverd-attempts"] == "1"  # the hedge was never called
    assert len(b.chat_requests()) == 2 and len(a.chat_requests()) == 3
    health = d.sup.service.health
    assert health.inflight(B) == 0 and health.inflight(A) == 0
    assert await metric(
        d, f'failoverd_hedges_total{{model="{A}",to_model="{B}",outcome="budget"}} 1')
    assert await metric(
        d, f'failoverd_hedges_total{{model="{A}",to_model="{B}",outcome="won"}} 2')
    assert hedged_events(d)[-1] == {"from_model": A, "to_model": B, "after": 0.05,
                                    "winner": None, "outcome": "budget", "session": None}
    entry = (await status(d))["models"]
    assert entry[A]["hedge_budget"] == {"share": 0.5, "reserve": 1, "window": 60.0,
                                        "eligible": 3, "hedged": 2, "refused": 1, "left": 0}
    assert entry[B]["hedge_budget"]["eligible"] == 0  # the last candidate: never hedged
    # a minute on, the window has room again
    clock.advance(60)
    resp = await chat(d)
    assert resp.headers["x-failoverd-hedge"] == f"{A}>{B}:won"
    assert (await status(d))["models"][A]["hedge_budget"]["hedged"] == 1


async def test_without_a_budget_every_slow_attempt_is_hedged(
        start_daemon: Any, fake_openai: Any) -> None:
    a = await fake_openai(default="slow:0.3", reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(config(a, b), clock=ManualClock())
    for _ in range(5):
        assert (await chat(d)).headers["x-failoverd-hedge"] == f"{A}>{B}:won"
    assert "hedge_budget" not in (await status(d))["models"][A]


async def test_a_refused_stream_goes_on_alone_and_a_reload_keeps_the_window(
        start_daemon: Any, fake_openai: Any) -> None:
    # the primary's stream sends only SSE comments for 0.3 s before its first chunk
    a = await fake_openai(default="comments:0.3", reply="from a")
    b = await fake_openai(reply="from b")
    clock = ManualClock()
    d = await start_daemon(config(a, b, routing="hedge_after = 0.05\nhedge_budget = 0.1\n"
                                                "hedge_budget_min = 1"), clock=clock)
    body = {"model": "default", "messages": HELLO, "stream": True}
    resp = await d.http.post("/v1/chat/completions", json=body)
    assert resp.headers["x-failoverd-hedge"] == f"{A}>{B}:won"  # the reserve's one
    # a reload that leaves the model as it was: its window stands
    path = Path(d.sup.config_path)
    path.write_text(path.read_text().replace("deadline = 10", "deadline = 11"))
    assert (await d.http.post("/v1/reload")).status_code == 200
    resp = await d.http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == A
    assert resp.headers["x-failoverd-hedge"] == f"{A}>{B}:budget"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in sse_json(resp.text)
                   if c["choices"]) == "from a"
    assert len(b.chat_requests()) == 1
    assert d.sup.service.health.inflight(B) == 0
    used = (await status(d))["models"][A]["hedge_budget"]
    assert (used["eligible"], used["hedged"], used["refused"]) == (2, 1, 1)
    # a new share applies to the window as it stands: 1 + 0.5 * 2 leaves one
    path.write_text(path.read_text().replace("hedge_budget = 0.1", "hedge_budget = 0.5"))
    assert (await d.http.post("/v1/reload")).status_code == 200
    assert (await status(d))["models"][A]["hedge_budget"]["left"] == 1
