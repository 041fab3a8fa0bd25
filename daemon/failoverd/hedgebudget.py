"""The hedge budget: how many of a model's attempts may be hedged (README "Hedged requests").

A hedge costs a second upstream call (its prompt may be billed even when it loses) and adds
load exactly when an upstream is slow. Like Finagle's RetryBudget and tower's retry Budget
(Envoy's retry budget and gRPC's retry throttling serve the same end), each model whose
attempts are hedged keeps an account over the last `WINDOW` seconds: every attempt that could
be hedged (its `hedge_after` timer armed) deposits `share` of a hedge, every hedge started
withdraws a whole one, and a reserve of `reserve` hedges per window (`[routing]
hedge_budget_min`) lets a quiet daemon hedge at all. A hedge is started only while

    hedged + 1 <= reserve + share * eligible

over the window; one the budget refuses is not started (hedge.run: the attempt goes on
alone, the refusal is counted and shown as outcome `budget`). A model whose share is 1 (or
none is set, the default: hedging is opt-in already, so turning it on keeps its behaviour)
keeps no account: each attempt is hedged at most once, so a share of 1 can never refuse.

The windows are `window.SlidingSum`s (60 one-second buckets): constant memory and time per
attempt whatever the rate. The accounts outlive reloads (the Service holds them): a model
whose share changed keeps its window under the new share, one that no longer has a budget
(or went away) drops it; an attempt under way is judged by its model's budget as it is when
its timer fires (none: not refused).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from failoverd.clock import Clock
from failoverd.hedge import afters
from failoverd.window import SlidingSum

if TYPE_CHECKING:
    from failoverd.config import Config

__all__ = ["WINDOW", "HedgeBudgets", "shares"]

logger = logging.getLogger(__name__)

WINDOW = 60.0  # seconds of attempts a budget looks back on
# a share times a count in floating point can fall a hair short of the whole number it is
# (0.29 * 100 = 28.999999999999996): not a hedge less for it
_EPSILON = 1e-9


def shares(config: Config) -> dict[str, float]:
    """Each hedged model's budget share (its own `hedge_budget`, else routing's), for the
    models hedged at all (hedge.afters) that have one below 1 (the others are never
    refused)."""
    result: dict[str, float] = {}
    routing = config.routing.hedge_budget
    for model_id in afters(config):
        own = config.models[model_id].hedge_budget
        share = routing if own is None else own
        if share is not None and share < 1.0:
            result[model_id] = share
    return result


class _Account:
    """One model's budget: its share, and what its window holds."""

    __slots__ = ("share", "reserve", "eligible", "hedged", "refused", "refusing")

    def __init__(self, share: float, reserve: int) -> None:
        self.share = share
        self.reserve = reserve
        self.eligible = SlidingSum(WINDOW)  # attempts whose hedge timer was armed
        self.hedged = SlidingSum(WINDOW)  # hedges started
        self.refused = SlidingSum(WINDOW)  # hedges the budget refused
        self.refusing = False  # whether the last decision was a refusal (logged once)

    def allowance(self) -> float:
        return self.reserve + self.share * self.eligible.total + _EPSILON


class HedgeBudgets:
    """Every hedged model's budget (see the module docstring), on an injected clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._accounts: dict[str, _Account] = {}

    def configure(self, config: Config) -> None:
        """Applies a config: new shares at once; a model without a budget drops its window."""
        wanted = shares(config)
        reserve = config.routing.hedge_budget_min
        for model_id in [m for m in self._accounts if m not in wanted]:
            del self._accounts[model_id]
        for model_id, share in wanted.items():
            account = self._accounts.get(model_id)
            if account is None:
                self._accounts[model_id] = _Account(share, reserve)
            else:
                account.share, account.reserve = share, reserve

    def armed(self, model_id: str) -> Callable[[], bool] | None:
        """Records an attempt on the model that could be hedged (its timer is armed) and
        returns what to ask once the timer fires: whether the hedge may start (a yes counts
        it as started, a no as refused), by the model's budget as it is then. None: the
        model has no budget, a hedge is never refused."""
        account = self._accounts.get(model_id)
        if account is None:
            return None
        account.eligible.add(self.clock.monotonic(), 1)

        def allow() -> bool:
            # the model's budget as it is when the timer fires: a reload since the attempt
            # began may have dropped it (never refused now) or replaced it (the new window)
            current = self._accounts.get(model_id)
            return current is None or self._allow(model_id, current)

        return allow

    def _allow(self, model_id: str, account: _Account) -> bool:
        now = self.clock.monotonic()
        account.eligible.evict(now)
        account.hedged.evict(now)
        if account.hedged.total + 1 <= account.allowance():
            account.hedged.add(now, 1)
            if account.refusing:
                account.refusing = False
                logger.info("%s: its hedge budget allows hedges again", model_id)
            return True
        account.refused.add(now, 1)
        if not account.refusing:
            account.refusing = True
            logger.info("%s: its hedge budget is spent (%d hedges for %d attempts in the "
                        "last %gs, share %g, reserve %d): slow attempts go on alone",
                        model_id, account.hedged.total, account.eligible.total, WINDOW,
                        account.share, account.reserve)
        return False

    def status(self, model_id: str) -> dict[str, Any] | None:
        """`/v1/status`' `hedge_budget` of a model: its share and reserve, and over the last
        `window` seconds the attempts that could be hedged, the hedges started and refused,
        and how many more the budget allows now; None for a model without a budget."""
        account = self._accounts.get(model_id)
        if account is None:
            return None
        now = self.clock.monotonic()
        for window in (account.eligible, account.hedged, account.refused):
            window.evict(now)
        allowed = int(account.allowance())
        return {"share": account.share, "reserve": account.reserve, "window": WINDOW,
                "eligible": account.eligible.total, "hedged": account.hedged.total,
                "refused": account.refused.total,
                "left": max(0, allowed - account.hedged.total)}
