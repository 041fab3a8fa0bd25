"""Spending caps (budget.py): UTC periods, caps reached once per period, persistence."""

from __future__ import annotations

import calendar

import pytest

from failoverd.budget import Budget, Budgets, period_of

# 2026-12-07 23:59:00 UTC
LATE = float(calendar.timegm((2026, 12, 7, 23, 59, 0, 0, 0, 0)))
MIDNIGHT = float(calendar.timegm((2026, 12, 8, 0, 0, 0, 0, 0, 0)))


def test_periods_are_utc_days_and_months() -> None:
    assert period_of("day", LATE) == ("2026-12-07", MIDNIGHT)
    assert period_of("day", MIDNIGHT) == ("2026-12-08", MIDNIGHT + 86400)
    assert period_of("day", MIDNIGHT - 0.001) == ("2026-12-07", MIDNIGHT)
    new_year = float(calendar.timegm((2027, 1, 1, 0, 0, 0, 0, 0, 0)))
    assert period_of("month", LATE) == ("2026-12", new_year)
    feb = float(calendar.timegm((2028, 2, 10, 12, 0, 0, 0, 0, 0)))
    assert period_of("month", feb) == (
        "2028-02", float(calendar.timegm((2028, 3, 1, 0, 0, 0, 0, 0, 0))))
    assert period_of("day", float(calendar.timegm((2028, 2, 29, 5, 0, 0, 0, 0, 0))))[0] \
        == "2028-02-29"


def caps(*budgets: Budget) -> Budgets:
    b = Budgets()
    b.configure(budgets)
    return b


def test_a_model_cap_holds_its_model_until_the_day_ends_and_is_told_once() -> None:
    b = caps(Budget("model", "m", "day", 2.0))
    assert b.spend("m", "p", 1.5, LATE - 100) == []
    assert b.blocked("m", "p", LATE - 100) is None
    reached = b.spend("m", "p", 1.0, LATE - 50)
    assert [(r.budget.key, r.spent, r.period, r.resets_at) for r in reached] == [
        ("max_cost_per_day", 2.5, "2026-12-07", MIDNIGHT)]
    assert b.blocked("m", "p", LATE) == "max_cost_per_day"
    assert b.wait("m", "p", LATE) == pytest.approx(60.0)
    assert b.blocked("other", "p", LATE) is None  # a model cap, not the provider's
    # calls in flight when it was reached still add their cost; told only once
    assert b.spend("m", "p", 0.5, LATE - 10) == []
    assert b.spent("model", "m", "day", LATE) == pytest.approx(3.0)
    # the next UTC day starts from nothing
    assert b.blocked("m", "p", MIDNIGHT) is None
    assert b.wait("m", "p", MIDNIGHT) == 0.0
    assert b.spent("model", "m", "day", MIDNIGHT) == 0.0
    # and is told again when reached again
    assert len(b.spend("m", "p", 2.0, MIDNIGHT + 1)) == 1


def test_a_provider_cap_counts_all_its_models_and_a_month_cap_outlasts_days() -> None:
    b = caps(Budget("provider", "p", "month", 10.0))
    b.spend("m1", "p", 6.0, LATE - 86400 * 3)
    assert b.blocked("m2", "p", LATE) is None
    reached = b.spend("m2", "p", 4.0, LATE)
    assert [(r.budget.scope, r.budget.name, r.budget.key, r.period) for r in reached] == [
        ("provider", "p", "max_cost_per_month", "2026-12")]
    assert b.blocked("m1", "p", MIDNIGHT) == "max_cost_per_month"  # a new day, same month
    assert b.blocked("m3", "q", MIDNIGHT) is None  # another provider
    # the models' own spending was counted too (shown in the status)
    assert b.spending("model", "m1", MIDNIGHT) == {"day": 0.0, "month": 6.0}
    assert b.spending("provider", "p", MIDNIGHT) == {"day": 0.0, "month": 10.0}
    new_year = float(calendar.timegm((2027, 1, 1, 0, 0, 0, 0, 0, 0)))
    assert b.wait("m1", "p", MIDNIGHT) == pytest.approx(new_year - MIDNIGHT)
    assert b.blocked("m1", "p", new_year) is None


def test_a_clock_set_back_does_not_reopen_the_period() -> None:
    b = caps(Budget("model", "m", "day", 1.0))
    b.spend("m", "p", 1.0, MIDNIGHT + 10)  # reached on the 8th
    # NTP sets the clock back into the 7th: still held, and spending adds to the 8th's
    assert b.blocked("m", "p", LATE) == "max_cost_per_day"
    b.spend("m", "p", 0.25, LATE)
    assert b.spent("model", "m", "day", MIDNIGHT + 20) == pytest.approx(1.25)


def test_a_reload_counts_what_was_spent_against_new_caps() -> None:
    b = Budgets()
    b.spend("m", "p", 3.0, LATE)  # no cap yet: still counted
    b.configure([Budget("model", "m", "day", 2.0)])
    reached = b.reached(LATE)
    assert [(r.budget.name, r.spent) for r in reached] == [("m", 3.0)]
    assert b.reached(LATE) == []  # told once
    assert b.blocked("m", "p", LATE) == "max_cost_per_day"
    b.configure([Budget("model", "m", "day", 5.0)])  # raised: free again
    assert b.blocked("m", "p", LATE) is None
    assert b.reached(LATE) == []
    b.configure([Budget("model", "m", "day", 2.0)])  # lowered again: told again
    assert len(b.reached(LATE)) == 1
    b.configure([])
    assert b.status(LATE) == [] and b.blocked("m", "p", LATE) is None
    assert b.spending("model", "m", LATE)["day"] == 3.0  # kept without a cap


def test_status_lists_every_cap() -> None:
    b = caps(Budget("model", "m", "day", 2.0), Budget("provider", "p", "month", 50.0))
    b.spend("m", "p", 2.5, LATE)
    assert b.status(LATE) == [
        {"scope": "model", "name": "m", "period": "day", "period_key": "2026-12-07",
         "limit_usd": 2.0, "spent_usd": 2.5, "reached": True, "resets_at": MIDNIGHT},
        {"scope": "provider", "name": "p", "period": "month", "period_key": "2026-12",
         "limit_usd": 50.0, "spent_usd": 2.5, "reached": False,
         "resets_at": float(calendar.timegm((2027, 1, 1, 0, 0, 0, 0, 0, 0)))},
    ]


def test_snapshot_and_restore_keep_the_current_periods_only() -> None:
    b = caps(Budget("model", "m", "day", 2.0))
    b.spend("m", "p", 2.5, LATE)
    snap = b.snapshot()
    assert snap == {"model:m": {"day": ["2026-12-07", 2.5], "month": ["2026-12", 2.5],
                                "told": ["day"]},
                    "provider:p": {"day": ["2026-12-07", 2.5], "month": ["2026-12", 2.5]}}
    again = caps(Budget("model", "m", "day", 2.0))
    assert again.restore(snap, LATE + 30) == 2
    assert again.blocked("m", "p", LATE + 30) == "max_cost_per_day"
    assert again.reached(LATE + 30) == []  # told before the restart: not again
    # reached but never told (the cap came with the restart): told after it
    untold = caps(Budget("model", "m", "day", 2.0), Budget("provider", "p", "day", 1.0))
    untold.restore(snap, LATE + 30)
    assert [r.budget.scope for r in untold.reached(LATE + 30)] == ["provider"]
    tomorrow = caps(Budget("model", "m", "day", 2.0))
    tomorrow.restore(snap, MIDNIGHT + 5)  # the day ended meanwhile, the month did not
    assert tomorrow.blocked("m", "p", MIDNIGHT + 5) is None
    assert tomorrow.spending("model", "m", MIDNIGHT + 5) == {"day": 0.0, "month": 2.5}
    junk = Budgets()
    assert junk.restore({"model:": {}, "thing:x": {}, "model:m": {"day": ["2026-12-07", -1]},
                         "provider:p": {"day": "lots"}, "nocolon": {},
                         "model:n": {"month": ["2026-12", True]}}, LATE) == 0
    assert junk.snapshot() == {}


def test_nothing_spent_spends_nothing() -> None:
    b = caps(Budget("model", "m", "day", 1.0))
    assert b.spend("m", "p", 0.0, LATE) == []
    assert b.snapshot() == {}
