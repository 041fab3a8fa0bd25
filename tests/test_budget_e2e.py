"""Spending caps end to end: a model past its max_cost_per_day is skipped until 00:00 UTC,
the cap is told as budget:reached, shown in /v1/status and failoverctl, survives a restart in
the state file, and a provider cap counts all of its models; on simulated time, against
real fake upstreams (whose answers report 9 prompt and 6 completion tokens)."""

from __future__ import annotations

import calendar
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from failoverd import config as config_mod
from failoverd import service as service_mod
from failoverd.clock import ManualClock
from failoverd.errors import ConfigError
from tests.helpers import HELLO, failoverctl, status, until
from tests.helpers import chat as ask

# 2026-12-07 23:50:00 UTC, ten minutes before the day's caps reset
LATE = float(calendar.timegm((2026, 12, 7, 23, 50, 0, 0, 0, 0)))
MIDNIGHT = LATE + 600
# $0.10 per 1,000 tokens both ways: an answer (9 + 6 tokens) costs $0.0015
PRICED = "cost = { input = 100.0, output = 100.0 }\n"


def config(a: Any, b: Any, *, a_model: str = "", a_provider: str = "",
           c: bool = False, tail: str = "") -> str:
    """Fakes `a` and `b` as OpenAI providers: a/gpt-a (priced by PRICED, then `a_model`) and
    its fallback b/gpt-b; `c` adds a/gpt-c, also priced; `tail` ends the body."""
    more = (f'[models."a/gpt-c"]\nprovider = "a"\nname = "gpt-c"\n{PRICED}' if c else "")
    return f"""
[providers.a]
kind = "openai"
base_url = "{a.url}"
{a_provider}
[providers.b]
kind = "openai"
base_url = "{b.url}"
[models."a/gpt-a"]
provider = "a"
{PRICED}{a_model}
[models."b/gpt-b"]
provider = "b"
{more}
[routing]
primary = "a/gpt-a"
fallbacks = ["b/gpt-b"]
when_all_unavailable = "fail"
[probes]
kind = "none"
{tail}"""


def clock_at(wall: float) -> ManualClock:
    return ManualClock(start=1000.0, wall=wall)


async def test_past_its_daily_cap_a_model_is_skipped_until_midnight_utc(
        fake_openai: Any, start_daemon: Any) -> None:
    a, b = await fake_openai(reply="from a"), await fake_openai(reply="from b")
    clock = clock_at(LATE)
    d = await start_daemon(config(a, b, a_model="max_cost_per_day = 0.003"), clock=clock)
    for _ in range(2):  # $0.0015 each: the second reaches the cap
        resp = await ask(d)
        assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "a/gpt-a"
    reached = [e for e in d.sup.service.bus.recent() if e.type == "budget:reached"]
    assert len(reached) == 1
    assert {k: reached[0].fields[k] for k in ("scope", "name", "period", "period_key", "cap",
                                             "limit_usd", "resets_at")} == {
        "scope": "model", "name": "a/gpt-a", "period": "day", "period_key": "2026-12-07",
        "cap": "max_cost_per_day", "limit_usd": 0.003, "resets_at": MIDNIGHT}
    assert reached[0].fields["spent_usd"] == pytest.approx(0.003)

    # skipped without a call: b answers, a got nothing more
    calls = len(a.chat_requests())
    resp = await ask(d)
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "b/gpt-b"
    assert len(a.chat_requests()) == calls
    assert resp.headers["x-failoverd-failover"] == "a/gpt-a>b/gpt-b:unavailable"
    st = await status(d)
    entry = st["models"]["a/gpt-a"]
    assert entry["budget"] == "max_cost_per_day" and entry["state"] == "closed"
    assert entry["spent_usd"]["day"] == pytest.approx(0.003)
    assert [(x["name"], x["reached"], x["resets_at"]) for x in st["budgets"]] == [
        ("a/gpt-a", True, MIDNIGHT)]
    assert "spent_usd" not in st["models"]["b/gpt-b"]  # no prices: nothing to tell
    # the preview says why
    sel = (await d.http.post("/v1/select", json={"model": "default"})).json()
    assert [(c["model"], c["eligible"], c["reason"]) for c in sel["candidates"]] == [
        ("a/gpt-a", False, "max_cost_per_day"), ("b/gpt-b", True, None)], sel

    # the ctl shows the cap
    code, out, _ = await failoverctl(d.socket, "status")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("a/gpt-a "))
    assert row.split()[1:4] == ["closed", "max_cost_per_day", "in"]
    budget = next(line for line in out.splitlines() if line.startswith("model a/gpt-a "))
    assert budget.split()[2:] == ["day", "$0.003", "$0.003", "REACHED", "in", "10m"]

    # Prometheus: what was spent of each cap, and the cap
    metrics = (await d.http.get("/metrics")).text
    assert 'failoverd_budget_spent_usd{scope="model",name="a/gpt-a",period="day"} 0.003' \
        in metrics
    assert 'failoverd_budget_limit_usd{scope="model",name="a/gpt-a",period="day"} 0.003' \
        in metrics

    # a new UTC day: a is called again, and a second day's cap is told again
    clock.advance(600)
    resp = await ask(d)
    assert resp.headers["x-failoverd-model"] == "a/gpt-a"
    assert (await status(d))["models"]["a/gpt-a"].get("budget") is None


async def test_every_model_capped_is_a_503_with_the_time_until_the_reset(
        fake_openai: Any, start_daemon: Any) -> None:
    a, b = await fake_openai(), await fake_openai()
    clock = clock_at(LATE)
    d = await start_daemon(config(a, b, a_model="max_cost_per_day = 0.001"), clock=clock)
    assert (await ask(d)).status_code == 200  # $0.0015: past the cap at once
    resp = await ask(d, "a/gpt-a", **{"x-failoverd-no-fallback": "1"})
    assert resp.status_code == 503
    assert int(resp.headers["Retry-After"]) == 600
    assert "max_cost_per_day" in resp.text


async def test_queue_mode_answers_a_capped_model_at_once(fake_openai: Any,
                                                         start_daemon: Any) -> None:
    """when_all_unavailable = "queue": a cap that resets in ten minutes cannot end within a
    queue of 10 s, so the 503 comes at once instead of after the queue's time."""
    a, b = await fake_openai(), await fake_openai()
    d = await start_daemon(config(a, b, a_model="max_cost_per_day = 0.001").replace(
        'when_all_unavailable = "fail"', 'when_all_unavailable = "queue"\nqueue_timeout = 10'),
        clock=clock_at(LATE))
    assert (await ask(d)).status_code == 200
    started = time.monotonic()
    resp = await ask(d, "a/gpt-a", **{"x-failoverd-no-fallback": "1"})
    assert time.monotonic() - started < 2
    assert resp.status_code == 503 and int(resp.headers["Retry-After"]) == 600


async def test_a_provider_cap_counts_all_of_its_models(fake_openai: Any,
                                                       start_daemon: Any) -> None:
    a, b = await fake_openai(), await fake_openai()
    clock = clock_at(LATE)
    d = await start_daemon(config(a, b, a_provider="max_cost_per_month = 0.003", c=True),
                           clock=clock)
    assert (await ask(d, "a/gpt-a")).status_code == 200
    assert (await ask(d, "a/gpt-c")).status_code == 200  # the provider's second answer
    st = await status(d)
    assert st["providers"]["a"]["spent_usd"]["month"] == pytest.approx(0.003)
    assert st["models"]["a/gpt-a"]["budget"] == "max_cost_per_month"
    assert st["models"]["a/gpt-c"]["budget"] == "max_cost_per_month"
    resp = await ask(d)
    assert resp.headers["x-failoverd-model"] == "b/gpt-b"
    clock.advance(600)  # a new day, not a new month: still held
    assert (await ask(d)).headers["x-failoverd-model"] == "b/gpt-b"


async def test_spending_survives_a_restart_and_counts_against_a_cap_added_by_a_reload(
        fake_openai: Any, start_daemon: Any) -> None:
    a, b = await fake_openai(), await fake_openai()
    clock = clock_at(LATE)
    d = await start_daemon(config(a, b), clock=clock)
    for _ in range(3):
        assert (await ask(d)).headers["x-failoverd-model"] == "a/gpt-a"  # $0.0045, no cap
    await d.stop()
    saved = json.loads(Path(d.sup.service.state_file.path).read_text())
    assert saved["budgets"]["model:a/gpt-a"]["day"][0] == "2026-12-07"
    assert saved["budgets"]["model:a/gpt-a"]["day"][1] == pytest.approx(0.0045)

    # the same state dir, a cap below what was spent today: held from the start, and told
    d2 = await start_daemon(config(a, b, a_model="max_cost_per_day = 0.004"), clock=clock)
    assert (await status(d2))["models"]["a/gpt-a"]["budget"] == "max_cost_per_day"
    assert [e.fields["spent_usd"] for e in d2.sup.service.bus.recent()
            if e.type == "budget:reached"] == [pytest.approx(0.0045)]
    assert (await ask(d2)).headers["x-failoverd-model"] == "b/gpt-b"

    # a reload raising the cap frees it; one lowering it again holds it, and says so
    path = Path(d2.sup.config_path)
    text = path.read_text()
    path.write_text(text.replace("max_cost_per_day = 0.004", "max_cost_per_day = 1"))
    assert (await d2.http.post("/v1/reload")).status_code == 200
    assert (await ask(d2)).headers["x-failoverd-model"] == "a/gpt-a"
    path.write_text(text)
    assert (await d2.http.post("/v1/reload")).status_code == 200
    assert [e.fields["spent_usd"] for e in d2.sup.service.bus.recent()
            if e.type == "budget:reached"] == [pytest.approx(0.0045), pytest.approx(0.006)]
    assert (await ask(d2)).headers["x-failoverd-model"] == "b/gpt-b"


def test_caps_need_prices_and_positive_amounts(tmp_path: Path) -> None:
    body = """
[providers.p]
kind = "simulated"
max_cost_per_day = -1
[models."p/m"]
provider = "p"
max_cost_per_day = 5
max_cost_per_month = 0
[routing]
primary = "p/m"
"""
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        config_mod.load(path, env={})
    problems = "\n".join(err.value.problems)
    assert "providers.p.max_cost_per_day: must be greater than 0, got -1" in problems
    assert 'models."p/m".max_cost_per_day: needs the model\'s prices' in problems
    assert 'models."p/m".max_cost_per_month: must be greater than 0, got 0' in problems
    path.write_text(body.replace("max_cost_per_day = -1", "max_cost_per_month = 100")
                    .replace("max_cost_per_day = 5", "max_cost_per_day = 5\n" + PRICED)
                    .replace("max_cost_per_month = 0\n", ""))
    cfg = config_mod.load(path, env={})
    assert cfg.providers["p"].max_cost_per_month == 100.0
    assert cfg.models["p/m"].max_cost_per_day == 5.0
    # a provider cap with no priced model of the provider
    path.write_text(body.replace("max_cost_per_day = -1", "max_cost_per_month = 100")
                    .replace("max_cost_per_day = 5\n", "").replace("max_cost_per_month = 0\n",
                                                                    ""))
    with pytest.raises(ConfigError) as err:
        config_mod.load(path, env={})
    assert err.value.problems == [
        "providers.p.max_cost_per_month: needs a model of this provider with prices "
        "(cost.input, cost.output): without them its models spend nothing and the cap would "
        "never apply"]


async def test_spending_reaches_the_state_file_without_a_stop(
        fake_openai: Any, start_daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash loses at most SPENDING_SAVE_SECONDS of spending: the save comes by itself."""
    monkeypatch.setattr(service_mod, "SPENDING_SAVE_SECONDS", 0.05)
    a, b = await fake_openai(), await fake_openai()
    d = await start_daemon(config(a, b), clock=clock_at(LATE))
    path = Path(d.sup.service.state_file.path)

    def saved() -> float:
        entry = json.loads(path.read_text()).get("budgets", {}).get("model:a/gpt-a")
        return float(entry["day"][1]) if entry else 0.0

    assert (await ask(d)).status_code == 200
    assert (await ask(d)).status_code == 200
    await until(lambda: saved() > 0.002, timeout=5)
    assert saved() == pytest.approx(0.003)


async def test_a_priced_answer_tells_its_cost(fake_openai: Any, start_daemon: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """x-failoverd-cost: what a non-streamed answer cost at the serving model's prices (none
    for a model without prices, nor on a stream, whose cost is known only at its end); the
    access log has every answer's cost."""
    caplog.set_level(logging.INFO, logger="failoverd.access")
    a, b = await fake_openai(), await fake_openai()
    d = await start_daemon("access_log = true\n" + config(a, b), clock=clock_at(LATE))
    resp = await ask(d)
    assert resp.headers["x-failoverd-model"] == "a/gpt-a"
    assert resp.headers["x-failoverd-cost"] == "0.0015"  # 15 tokens at $100 per million
    free = await ask(d, "b/gpt-b")
    assert free.headers["x-failoverd-model"] == "b/gpt-b"
    assert "x-failoverd-cost" not in free.headers
    async with d.http.stream("POST", "/v1/chat/completions", json={
            "model": "default", "messages": HELLO, "stream": True,
            "stream_options": {"include_usage": True}}) as streamed:
        assert "x-failoverd-cost" not in streamed.headers
        assert [line async for line in streamed.aiter_lines()][-2] == "data: [DONE]"
    spent = (await status(d))["models"]["a/gpt-a"]["spent_usd"]["day"]
    assert spent == pytest.approx(0.003)  # the stream's usage counted at its end
    costs = [r.access["cost_usd"] for r in caplog.records  # type: ignore[attr-defined]
             if hasattr(r, "access") and r.access["path"] == "/v1/chat/completions"]
    assert costs == [0.0015, None, 0.0015]
