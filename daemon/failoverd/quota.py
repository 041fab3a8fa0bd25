"""Per-model quotas over a rolling minute: `max_rpm` (calls admitted) and `max_tpm` (tokens
the answers reported), as a provider's plan counts them. A model at one is skipped as
unavailable until enough of the minute ages out: no 429 spent, no breaker count.

A model's minute outlives a reload that changes its limit, and one that removes it (a model
added back within the minute must not get a fresh quota); it is dropped once it has aged out.
It outlives a restart too, in the state file (`snapshot` / `restore`, in wall-clock seconds:
the calls counted per second, the tokens per bucket), as of the last write of the file.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Container, Mapping
from typing import Any

from failoverd.config import ModelConfig
from failoverd.window import SlidingSum

WINDOW = 60.0  # the quotas count the last this many seconds


class Quotas:
    """The minute of every model with a max_rpm or max_tpm (see the module docstring)."""

    def __init__(self) -> None:
        self._limits: dict[str, tuple[int, int]] = {}  # model id -> (max_rpm, max_tpm)
        self._calls: dict[str, deque[float]] = {}  # when each call of the minute was made
        self._tokens: dict[str, SlidingSum] = {}

    def configure(self, model: ModelConfig) -> None:
        """A model's (new) limits; what its minute already holds counts against them."""
        self._limits[model.id] = (model.max_rpm, model.max_tpm)
        if model.max_rpm:
            self._calls[model.id] = deque(self._calls.get(model.id) or (), maxlen=model.max_rpm)
        else:
            self._calls.pop(model.id, None)
        if model.max_tpm:
            self._tokens.setdefault(model.id, SlidingSum(WINDOW))
        else:
            self._tokens.pop(model.id, None)

    def forget(self, kept: Container[str], now: float) -> None:
        """Drops the limits of models no longer configured, and their minutes once aged
        out."""
        for model_id in [m for m in self._limits if m not in kept]:
            del self._limits[model_id]
        for model_id in [m for m, calls in self._calls.items() if m not in kept
                         and (not calls or calls[-1] <= now - WINDOW)]:
            del self._calls[model_id]
        for model_id in [m for m, window in self._tokens.items() if m not in kept
                         and not window.wait_below(1, now)]:
            del self._tokens[model_id]

    def blocked(self, model_id: str, now: float) -> str | None:
        """The limit the model is at ("max_rpm", "max_tpm"), else None."""
        if self._rate_wait(model_id, now):
            return "max_rpm"
        if self._token_wait(model_id, now):
            return "max_tpm"
        return None

    def wait(self, model_id: str, now: float) -> float:
        """Seconds until the model's quotas admit a call (0: now)."""
        return max(self._rate_wait(model_id, now), self._token_wait(model_id, now))

    def counted(self, model_id: str, now: float) -> bool:
        """Counts a call admitted now; True when the model has a max_rpm to count it in."""
        calls = self._calls.get(model_id)
        if calls is None:
            return False
        calls.append(now)
        return True

    def uncount(self, model_id: str, admitted: float) -> None:
        """Takes back a call admitted at `admitted` that was never made."""
        calls = self._calls.get(model_id)
        if calls is not None and admitted in calls:
            calls.remove(admitted)

    def spent(self, model_id: str, tokens: int, now: float) -> None:
        """The tokens an answer of the model reported."""
        window = self._tokens.get(model_id)
        if window is not None and tokens > 0:
            window.add(now, tokens)

    def status(self, model_id: str, now: float) -> dict[str, Any]:
        """`calls_last_minute` / `tokens_last_minute` for the limits the model has."""
        out: dict[str, Any] = {}
        if model_id in self._calls:
            self._rate_wait(model_id, now)  # drops the calls older than a minute
            out["calls_last_minute"] = len(self._calls[model_id])
        if model_id in self._tokens:
            self._token_wait(model_id, now)
            out["tokens_last_minute"] = self._tokens[model_id].total
        return out

    def _rate_wait(self, model_id: str, now: float) -> float:
        calls = self._calls.get(model_id)
        limit = self._limits.get(model_id, (0, 0))[0]
        if calls is None or not limit:
            return 0.0
        while calls and calls[0] <= now - WINDOW:
            calls.popleft()
        return 0.0 if len(calls) < limit else calls[0] + WINDOW - now

    def _token_wait(self, model_id: str, now: float) -> float:
        window = self._tokens.get(model_id)
        limit = self._limits.get(model_id, (0, 0))[1]
        if window is None or not limit:
            return 0.0
        return window.wait_below(limit, now)

    # ------------------------------------------------------------------ persistence

    def snapshot(self, now: float, wall: float) -> dict[str, Any]:
        """The minute of every model, in wall-clock seconds: `{"<id>": {"calls": [[second,
        count], ...], "tokens": [[time, amount], ...]}}` (at most a minute's worth each)."""
        out: dict[str, Any] = {}
        for model_id in self._calls:
            self._rate_wait(model_id, now)  # drops the calls older than a minute
            per_second = Counter(math.floor(wall - (now - t)) for t in self._calls[model_id])
            if per_second:
                out.setdefault(model_id, {})["calls"] = sorted(map(list, per_second.items()))
        for model_id, window in self._tokens.items():
            held = window.buckets(now)
            if held:
                out.setdefault(model_id, {})["tokens"] = [
                    [round(wall - (now - start), 3), amount] for start, amount in held]
        return out

    def restore(self, data: Mapping[str, Any], now: float, wall: float) -> None:
        """Takes back a snapshot's minute for the models with a limit now (what has aged
        out since, and entries that are not understood, are left out)."""
        for model_id, entry in data.items():
            if not isinstance(entry, dict):
                continue
            calls = self._calls.get(model_id)
            if calls is not None:
                for second, count in _pairs(entry.get("calls")):
                    age = wall - second
                    if 0 <= age < WINDOW:
                        calls.extend([now - age] * min(int(count), calls.maxlen or 0))
            window = self._tokens.get(model_id)
            if window is not None:
                for at, amount in _pairs(entry.get("tokens")):
                    age = wall - at
                    if 0 <= age < WINDOW and amount > 0:
                        window.add(now - age, int(amount))


def _pairs(value: Any) -> list[tuple[float, float]]:
    """[[time, number], ...] as saved, oldest first; anything else left out."""
    if not isinstance(value, list):
        return []
    pairs = [(float(p[0]), float(p[1])) for p in value
             if isinstance(p, list) and len(p) == 2
             and all(type(x) in (int, float) and math.isfinite(x) for x in p)]
    return sorted(pairs)
