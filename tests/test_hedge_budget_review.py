"""The hedge budget under review: its arithmetic at the window's edges on simulated time, a
reload between an attempt's start and its timer, and end to end (the daemon on a Unix socket,
fake OpenAI upstreams on 127.0.0.1) the refused hedge that must leave nothing behind (no
permit, no half-open trial slot, no max_rpm slot, no upstream call), many requests whose
timers fire at once (the budget must not over-admit), and the header, counter, event and
/v1/status figures telling the same story."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from failoverd import config as config_mod
from failoverd.clock import ManualClock
from tests.helpers import chat, status
from tests.test_hedge import A, B, config, hedged_events
from tests.test_hedge_budget import attempts, budgets
from tests.test_hedge_budget_config import BASE


def test_a_hedge_leaves_the_window_a_minute_after_its_second_began() -> None:
    found, clock = budgets("hedge_budget = 0.1\nhedge_budget_min = 1")
    clock.advance(0.5)  # 1000.5: the window's buckets are whole seconds
    assert attempts(found, 1) == [True]  # the reserve's one
    clock.advance(59.4)  # 1059.9: the hedge's second (1000) is still one of the last 60
    assert attempts(found, 1) == [False]
    clock.advance(0.1)  # 1060.0: it is out, the reserve is whole again
    assert attempts(found, 1) == [True]
    assert found.status("a/m") == {"share": 0.1, "reserve": 1, "window": 60.0,
                                   "eligible": 2, "hedged": 1, "refused": 1, "left": 0}


def test_an_attempt_armed_before_its_timer_fires_in_the_next_second() -> None:
    """An attempt earns its share when its timer is armed and spends its hedge when the timer
    fires, a bucket later: at the window's edge the share leaves first (the budget errs on
    the side of fewer hedges), and `left` never goes below 0."""
    found, clock = budgets("hedge_budget = 0.5\nhedge_budget_min = 0")
    clock.advance(0.9)
    allows = [found.armed("a/m") for _ in range(2)]  # two attempts armed at 1000.9
    clock.advance(0.2)  # their timers fire at 1001.1
    assert [allow() for allow in allows if allow is not None] == [True, False]
    clock.advance(59.0)  # 1060.1: the arming second is out, the hedge's is not
    assert found.status("a/m") == {"share": 0.5, "reserve": 0, "window": 60.0,
                                   "eligible": 0, "hedged": 1, "refused": 1, "left": 0}
    # the hedge still in the window is paid for by the two new attempts' shares
    assert attempts(found, 2) == [False, False]
    clock.advance(1.0)  # 1061.1: the hedge's second is out too
    assert found.status("a/m") == {"share": 0.5, "reserve": 0, "window": 60.0,
                                   "eligible": 2, "hedged": 0, "refused": 2, "left": 1}


def test_a_share_that_is_a_whole_number_of_hedges_is_not_a_hair_short() -> None:
    found, _ = budgets("hedge_budget = 0.29\nhedge_budget_min = 0")
    # 0.29 * 100 is 28.999999999999996 in floating point: the 29th hedge is allowed
    decisions = attempts(found, 100)
    assert decisions.count(True) == 29 and decisions[-1] is True
    assert found.status("a/m")["left"] == 0  # type: ignore[index]


def test_a_reload_that_drops_the_budget_refuses_no_attempt_under_way() -> None:
    """An attempt armed before a reload that took the model's budget away (or the model):
    its timer firing after it is not refused by the window the reload dropped."""
    found, _ = budgets("hedge_budget = 0.1\nhedge_budget_min = 0")
    allow = found.armed("a/m")
    assert allow is not None
    found.configure(config_mod.loads(f"""{BASE}
[models."a/m"]
provider = "a"
[models."b/m"]
provider = "b"
[routing]
hedge_after = 1
"""))
    assert found.status("a/m") is None
    assert allow() is True
    assert found.status("a/m") is None  # nothing was kept for it either


def test_a_reload_that_changes_the_share_applies_to_an_attempt_under_way() -> None:
    found, _ = budgets("hedge_budget = 0.1\nhedge_budget_min = 0")
    allow = found.armed("a/m")
    assert allow is not None
    # removed, then added back with another budget: the new account is the one asked
    found.configure(config_mod.loads(f"{BASE}\n[models.\"b/m\"]\nprovider = \"b\"\n"
                                     "[routing]\nprimary = \"b/m\"\nhedge_after = 1\n"))
    found.configure(config_mod.loads(f"""{BASE}
[models."a/m"]
provider = "a"
[models."b/m"]
provider = "b"
[routing]
hedge_after = 1
hedge_budget = 0.1
hedge_budget_min = 1
"""))
    assert allow() is True
    assert found.status("a/m") == {"share": 0.1, "reserve": 1, "window": 60.0,
                                   "eligible": 0, "hedged": 1, "refused": 0, "left": 0}


def _budget_config(a: Any, b: Any, routing: str, models: str = "") -> str:
    return config(a, b, routing=f"hedge_after = 0.05\n{routing}", models=models)


async def test_a_refused_hedge_leaves_no_trial_slot_nor_minute_slot_behind(
        start_daemon: Any, fake_openai: Any) -> None:
    """The hedge's candidate is half-open with one trial call and a max_rpm of 1: the permit
    picked for the refused hedge is given back whole, so the trial is still there to take
    and the minute still has its call."""
    a = await fake_openai(default="slow:0.2", reply="from a")
    b = await fake_openai(reply="from b")
    clock = ManualClock()
    d = await start_daemon(_budget_config(a, b, "hedge_budget = 0.1\nhedge_budget_min = 0",
                                          models="max_rpm = 1\n"), clock=clock)
    health = d.sup.service.health
    assert health.force_open(B, 1)
    clock.advance(2)
    assert health.model_state(B) == "half_open"
    resp = await chat(d)
    assert resp.status_code == 200 and resp.headers["x-failoverd-hedge"] == f"{A}>{B}:budget"
    assert b.chat_requests() == []
    assert health.inflight(B) == 0 and health.inflight(A) == 0
    assert health.model_state(B) == "half_open"
    permit = health.acquire(B)  # the trial and the minute's call are both still free
    assert permit is not None
    permit.release(called=False)
    # pinned to it, the trial call is made and closes the breaker
    resp = await chat(d, model=B)
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == B
    assert health.model_state(B) == "closed"


async def test_many_timers_firing_at_once_start_no_more_hedges_than_the_budget(
        start_daemon: Any, fake_openai: Any) -> None:
    """Twelve requests whose attempts are all armed before any timer fires: 2 + 0.25 * 12
    allows five hedges, and the other seven are refused; header, counter, event and status
    agree."""
    a = await fake_openai(default="slow:0.3", reply="from a")
    b = await fake_openai(reply="from b")
    clock = ManualClock()
    d = await start_daemon(_budget_config(a, b, "hedge_budget = 0.25\nhedge_budget_min = 2"),
                           clock=clock)
    answers = await asyncio.gather(*(chat(d) for _ in range(12)))
    assert all(r.status_code == 200 for r in answers)
    told = sorted(r.headers["x-failoverd-hedge"] for r in answers)
    assert told == [f"{A}>{B}:budget"] * 7 + [f"{A}>{B}:won"] * 5
    assert sorted(r.headers["x-failoverd-model"] for r in answers) == [A] * 7 + [B] * 5
    assert len(b.chat_requests()) == 5 and len(a.chat_requests()) == 12
    outcomes = sorted(e["outcome"] for e in hedged_events(d))
    assert outcomes == ["budget"] * 7 + ["won"] * 5
    assert all(e["winner"] is None for e in hedged_events(d) if e["outcome"] == "budget")
    text = (await d.http.get("/metrics")).text
    counted = dict(re.findall(
        rf'failoverd_hedges_total{{model="{A}",to_model="{B}",outcome="(\w+)"}} (\d+)', text))
    assert counted == {"budget": "7", "won": "5"}
    assert (await status(d))["models"][A]["hedge_budget"] == {
        "share": 0.25, "reserve": 2, "window": 60.0, "eligible": 12, "hedged": 5,
        "refused": 7, "left": 0}
    health = d.sup.service.health
    assert health.inflight(A) == 0 and health.inflight(B) == 0


async def test_an_attempt_that_answers_in_time_earns_its_share_and_asks_nothing(
        start_daemon: Any, fake_openai: Any) -> None:
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(_budget_config(a, b, "hedge_budget = 0.5\nhedge_budget_min = 0"),
                           clock=ManualClock())
    for _ in range(4):
        resp = await chat(d)
        assert resp.headers["x-failoverd-model"] == A
        assert "x-failoverd-hedge" not in resp.headers
    assert hedged_events(d) == []
    assert (await status(d))["models"][A]["hedge_budget"] == {
        "share": 0.5, "reserve": 0, "window": 60.0, "eligible": 4, "hedged": 0,
        "refused": 0, "left": 2}
