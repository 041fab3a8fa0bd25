"""Spending caps: `max_cost_per_day` and `max_cost_per_month` (USD) on a model, or on a
provider (all of its models together), over UTC calendar days and months.

What a model costs is what its answers' usage comes to at its `cost` prices (the same sum as
`failoverd_cost_usd_total`). Every priced model's spending of the current day and month is
kept, capped or not, so a cap added by a reload counts what was spent before it, and the
status shows what each model and provider has spent. A model whose own cap, or whose
provider's, is reached is skipped as unavailable (the reason names the cap) until the period
ends at 00:00 UTC: no call, no breaker count. The cap is checked before each call, and an
answer's cost is known only once it has come back, so calls in flight when it is reached may
take the spending past it, by their own cost at most.

A budget's period is the wall clock's (UTC) day or month; a clock set back into the previous
period does not reopen it. The spending survives restarts in the state file (`snapshot` and
`restore`), and reloads, also of a model that a reload removes and a later one brings back.
"""

from __future__ import annotations

import calendar
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from failoverd.config import Config

__all__ = ["PERIODS", "Budget", "Budgets", "Reached", "caps_of", "period_of"]

Period = Literal["day", "month"]
Scope = Literal["model", "provider"]
PERIODS: tuple[Period, ...] = ("day", "month")
# the config key of each period's cap, which is also the reason a capped model is skipped
CAP_KEYS: dict[Period, str] = {"day": "max_cost_per_day", "month": "max_cost_per_month"}
# a period's key as period_of writes it: a saved one of another shape is not understood
# (compared as text, "garbage" would sort after every date and never reset)
_KEY_SHAPES: dict[Period, re.Pattern[str]] = {"day": re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
                                              "month": re.compile(r"[0-9]{4}-[0-9]{2}")}


def period_of(period: Period, wall: float) -> tuple[str, float]:
    """The UTC period `wall` falls in, as its key ("2026-12-07", "2026-12"; keys of one period
    sort by time) and the epoch time it ends."""
    t = time.gmtime(wall)
    if period == "day":  # epoch days are 86,400 s long (POSIX time has no leap seconds)
        return (f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}",
                (wall // 86400 + 1) * 86400.0)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return (f"{t.tm_year:04d}-{t.tm_mon:02d}",
            float(calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))))


def _over(spent: float, limit: float) -> bool:
    """Whether `spent` reached `limit`: answers' costs add up in binary floats (7 x 0.0015 is
    0.010499999999999999), and a cap that n answers reach must hold after the nth."""
    return spent >= limit or math.isclose(spent, limit, rel_tol=1e-9)


def _scopes(model: str, provider: str) -> tuple[tuple[Scope, str], tuple[Scope, str]]:
    return ("model", model), ("provider", provider)


@dataclass(frozen=True, slots=True)
class Budget:
    """One cap: whose spending (a model's or a provider's), over which period, how much."""

    scope: Scope
    name: str
    period: Period
    limit: float  # USD

    @property
    def key(self) -> str:
        return CAP_KEYS[self.period]


def caps_of(config: Config) -> list[Budget]:
    """The caps a configuration sets, on its models and on its providers."""
    caps: list[Budget] = []
    for model in config.models.values():
        caps += _caps("model", model.id, model.max_cost_per_day, model.max_cost_per_month)
    for provider in config.providers.values():
        caps += _caps("provider", provider.name, provider.max_cost_per_day,
                      provider.max_cost_per_month)
    return caps


def _caps(scope: Scope, name: str, day: float, month: float) -> list[Budget]:
    return ([Budget(scope, name, "day", day)] if day > 0 else []) \
        + ([Budget(scope, name, "month", month)] if month > 0 else [])


@dataclass(frozen=True, slots=True)
class Reached:
    """A cap the spending reached (what `budget:reached` tells)."""

    budget: Budget
    spent: float
    period: str  # its key: "2026-12-07", "2026-12"
    resets_at: float  # epoch seconds


class _Spending:
    """What one model or provider spent in the current day and month."""

    __slots__ = ("day", "month")

    def __init__(self) -> None:
        self.day: tuple[str, float] = ("", 0.0)
        self.month: tuple[str, float] = ("", 0.0)


class Budgets:
    """The spending of every priced model and provider, and the caps on it."""

    def __init__(self) -> None:
        self._caps: dict[tuple[Scope, str], tuple[Budget, ...]] = {}
        self._spent: dict[tuple[Scope, str], _Spending] = {}
        self._announced: set[tuple[Scope, str, Period, str]] = set()
        # the current periods, recomputed only when one ends: (key, end) per period
        self._now: dict[Period, tuple[str, float]] = {}

    def configure(self, budgets: Iterable[Budget]) -> None:
        """The caps of the (new) configuration; the spending so far counts against them."""
        caps: dict[tuple[Scope, str], list[Budget]] = {}
        for budget in budgets:
            caps.setdefault((budget.scope, budget.name), []).append(budget)
        self._caps = {key: tuple(found) for key, found in caps.items()}

    @property
    def budgets(self) -> list[Budget]:
        return [b for found in self._caps.values() for b in found]

    def _period(self, period: Period, wall: float) -> tuple[str, float]:
        now = self._now.get(period)
        if now is None or wall >= now[1]:
            now = self._now[period] = period_of(period, wall)
        return now

    def _current(self, spending: _Spending, period: Period, wall: float) -> float:
        """What `spending` holds for the period `wall` is in (0 once that period ended)."""
        key, _ = self._period(period, wall)
        held_key, held = getattr(spending, period)
        return held if held_key >= key else 0.0

    def spend(self, model: str, provider: str, usd: float, wall: float) -> list[Reached]:
        """Counts `usd` spent by the model (and its provider) at `wall`; returns the caps
        this reached, each once per period."""
        if usd <= 0:
            return []
        for scope_key in _scopes(model, provider):
            spending = self._spent.get(scope_key)
            if spending is None:
                spending = self._spent[scope_key] = _Spending()
            for period in PERIODS:
                key, _ = self._period(period, wall)
                held_key, held = getattr(spending, period)
                if held_key >= key:  # the current period (or a later one: clock set back)
                    setattr(spending, period, (held_key, held + usd))
                else:
                    setattr(spending, period, (key, usd))
        return self.reached(wall, _scopes(model, provider))

    def reached(self, wall: float,
                scopes: Iterable[tuple[Scope, str]] | None = None) -> list[Reached]:
        """The caps at or past their limit not told yet in this period (all caps, or those
        of `scopes`). A cap found below its limit (a reload raised it) is told again once
        reached again."""
        out: list[Reached] = []
        for scope_key in (self._caps if scopes is None else scopes):
            for budget in self._caps.get(scope_key, ()):
                spent = self.spent(budget.scope, budget.name, budget.period, wall)
                key, end = self._period(budget.period, wall)
                mark = (budget.scope, budget.name, budget.period, key)
                if not _over(spent, budget.limit):
                    self._announced.discard(mark)
                elif mark not in self._announced:
                    self._announced.add(mark)
                    out.append(Reached(budget, spent, key, end))
        if out:  # marks of ended periods are of no more use
            keys = {p: self._period(p, wall)[0] for p in PERIODS}
            self._announced = {m for m in self._announced if m[3] >= keys[m[2]]}
        return out

    def spent(self, scope: Scope, name: str, period: Period, wall: float) -> float:
        """What the model or provider spent in the current period."""
        spending = self._spent.get((scope, name))
        return 0.0 if spending is None else self._current(spending, period, wall)

    def blocked(self, model: str, provider: str, wall: float) -> str | None:
        """The cap the model is held by ("max_cost_per_day", "max_cost_per_month": its own
        or its provider's), else None."""
        if not self._caps:
            return None
        for scope_key in _scopes(model, provider):
            for budget in self._caps.get(scope_key, ()):
                if _over(self.spent(budget.scope, budget.name, budget.period, wall),
                         budget.limit):
                    return budget.key
        return None

    def wait(self, model: str, provider: str, wall: float) -> float:
        """Seconds until every cap holding the model has reset (0: none holds it)."""
        if not self._caps:
            return 0.0
        wait = 0.0
        for scope_key in _scopes(model, provider):
            for budget in self._caps.get(scope_key, ()):
                if _over(self.spent(budget.scope, budget.name, budget.period, wall),
                         budget.limit):
                    wait = max(wait, self._period(budget.period, wall)[1] - wall)
        return wait

    def status(self, wall: float) -> list[dict[str, Any]]:
        """Every cap: its scope, name, period, limit, what was spent, whether it holds its
        models, and when the period ends."""
        out = []
        for budget in self.budgets:
            key, end = self._period(budget.period, wall)
            spent = self.spent(budget.scope, budget.name, budget.period, wall)
            out.append({"scope": budget.scope, "name": budget.name, "period": budget.period,
                        "period_key": key, "limit_usd": budget.limit,
                        "spent_usd": round(spent, 9), "reached": _over(spent, budget.limit),
                        "resets_at": end})
        return out

    def spending(self, scope: Scope, name: str, wall: float) -> dict[str, float]:
        """`{"day": usd, "month": usd}` of a model or provider (zeros when it spent nothing)."""
        return {p: round(self.spent(scope, name, p, wall), 9) for p in PERIODS}

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        """The spending to keep across a restart, and the caps told in its periods:
        `{"model:<id>": {"day": [key, usd], "month": [key, usd], "told": ["day"]}, ...}`."""
        out: dict[str, Any] = {}
        for (scope, name), spending in self._spent.items():
            entry: dict[str, Any] = {p: list(getattr(spending, p)) for p in PERIODS
                                     if getattr(spending, p)[0]}
            told = [p for p in PERIODS
                    if (scope, name, p, getattr(spending, p)[0]) in self._announced]
            if told:
                entry["told"] = told
            out[f"{scope}:{name}"] = entry
        return out

    def restore(self, data: Mapping[str, Any], wall: float) -> int:
        """Takes back what a snapshot holds of the current periods (an ended period's is
        dropped; an entry that is not understood is skipped); returns how many entries. The
        caps it reached but did not tell are left for `reached` to tell."""
        restored = 0
        for text, periods in data.items():
            scope, sep, name = text.partition(":") if isinstance(text, str) else ("", "", "")
            if not sep or scope not in ("model", "provider") or not name \
                    or not isinstance(periods, dict):
                continue
            scope_of: Scope = "model" if scope == "model" else "provider"
            spending = _Spending()
            told = periods.get("told")
            for period in PERIODS:
                held = periods.get(period)
                if not (isinstance(held, list) and len(held) == 2 and isinstance(held[0], str)
                        and _KEY_SHAPES[period].fullmatch(held[0])
                        and type(held[1]) in (int, float) and held[1] >= 0):
                    continue
                if held[0] >= self._period(period, wall)[0]:
                    setattr(spending, period, (held[0], float(held[1])))
                    if isinstance(told, list) and period in told:
                        self._announced.add((scope_of, name, period, held[0]))
            if spending.day[0] or spending.month[0]:
                self._spent[(scope_of, name)] = spending
                restored += 1
        return restored
