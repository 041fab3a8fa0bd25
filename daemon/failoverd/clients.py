"""`[clients.<name>]`: per-client policy on a shared host (LiteLLM's virtual keys, locally).

A client is who calls: Unix socket peers by uid (`uids`), or TCP requests carrying its own
bearer token (`tcp_token_env`/`_file`/`_credential`). What it may do: the models it may
ask for (`models`: ids, chains, pools, `default`, `auto`, or globs of them), requests a
rolling minute (`max_rpm`), requests at once (`max_concurrency`), and USD a UTC day or month
(`max_cost_per_day`, `max_cost_per_month`, at the models' `cost` prices, as budget.py
counts a model's). A peer that matches no client is served as before, at no cost.

The configuration side (`read_clients`) and the counts (`Clients`, which outlive reloads and
go to the state file); the proxy asks `identify` and `admit`, the router `narrow`, the
control API `may_use` (what /v1/models lists to a client).
"""

from __future__ import annotations

import contextvars
import fnmatch
import math
import socket
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from failoverd.clientconfig import GLOB, RESERVED, ClientConfig, offered_tokens, token_key
from failoverd.errors import RequestError
from failoverd.listen import family, peer_uid

if TYPE_CHECKING:
    from failoverd.clock import Clock

__all__ = ["CURRENT", "Client", "Clients", "Forbidden", "Limited", "OverBudget"]

MINUTE = 60.0
Limit = Literal["max_rpm", "max_concurrency", "max_cost_per_day", "max_cost_per_month"]
Period = Literal["day", "month"]


# --------------------------------------------------------------------------- refusals

class Forbidden(RequestError):
    """A client asked for a model outside its `models` (403)."""

    def __init__(self, client: str, model: str) -> None:
        super().__init__(f"client {client!r} may not use model {model!r} (not in "
                         f"clients.{client}.models)", status=403, param="model",
                         code="model_not_allowed")
        self.client = client


@dataclass(frozen=True, slots=True)
class Limited:
    """A client at one of its limits: the 429's reason and when to come back."""

    client: str
    limit: Limit
    retry_after: float  # seconds
    detail: str  # what the use is now
    period: str = ""  # a spending cap's period ("2026-12-08", "2026-12")

    @property
    def message(self) -> str:
        return (f"client {self.client!r} is at its {self.limit} ({self.detail}); retry after "
                f"{self.retry_after:.0f}s")


class OverBudget(RequestError):
    """A client past a spending cap asked for nothing but priced models (429)."""

    def __init__(self, limited: Limited) -> None:
        super().__init__(limited.message, status=429, code="insufficient_quota")
        self.limited = limited


# the client whose request this task serves (set by the proxy for matched peers only)
CURRENT: contextvars.ContextVar[Client | None] = contextvars.ContextVar(
    "failoverd_client", default=None)


def _prune(minute: deque[float], now: float) -> None:
    """Drops the admissions that left the rolling minute."""
    while minute and minute[0] <= now - MINUTE:
        minute.popleft()


def _over(spent: float, limit: float) -> bool:
    return spent >= limit or math.isclose(spent, limit, rel_tol=1e-9)


class Client:
    """One client's configuration and counts (which a reload keeps)."""

    __slots__ = ("cfg", "inflight", "_minute", "day", "month", "_told", "_refused",
                 "outcomes", "cost_total", "_models", "_names", "_globs", "_seen", "_priced",
                 "_owner")

    def __init__(self, cfg: ClientConfig, owner: Clients) -> None:
        self.cfg = cfg
        self._owner = owner
        self._priced: frozenset[str] = frozenset()
        self.inflight = 0
        self._minute: deque[float] = deque()  # monotonic times of admissions
        self.day: tuple[str, float] = ("", 0.0)
        self.month: tuple[str, float] = ("", 0.0)
        self._told: set[tuple[str, str]] = set()  # (limit, period key or "")
        self._refused: dict[str, float] = {}  # a rate limit's last refusal (monotonic)
        self.outcomes: Counter[str] = Counter()  # requests by how they ended
        self.cost_total = 0.0
        self._models: frozenset[str] | None = None
        self._names: frozenset[str] = frozenset()
        self._globs: tuple[str, ...] = ()
        self._seen: dict[str, bool] = {}

    @property
    def name(self) -> str:
        return self.cfg.name

    def configure(self, cfg: ClientConfig, models: Mapping[str, Any],
                  groups: Mapping[str, tuple[str, ...]]) -> None:
        """Its (new) settings; `groups`: every chain's and pool's models, and "default"'s."""
        self.cfg = cfg
        self._seen = {}
        self._priced = frozenset(m for m, c in models.items() if getattr(c, "priced", False))
        if cfg.models is None:
            self._models, self._names, self._globs = None, frozenset(), ()
            return
        names: set[str] = set()
        for entry in cfg.models:
            names.update(fnmatch.filter([*models, *groups, *RESERVED], entry)
                         if not GLOB.isdisjoint(entry) else [entry])
        allowed = {n for n in names if n in models}
        for n in names:
            allowed.update(groups.get("default" if n == "auto" else n, ()))
        self._models = frozenset(allowed)
        self._names = frozenset(names)
        self._globs = tuple(e for e in cfg.models if not GLOB.isdisjoint(e))

    # ------------------------------------------------------------------ models

    def may_ask(self, requested: str) -> bool:
        """Whether the request's "model" is one the client may name (globs matched here
        too, so a chain added by a reload that a glob covers is allowed)."""
        if self._models is None:
            return True
        name = requested or "default"
        if name in self._names:
            return True
        seen = self._seen.get(name)
        if seen is None:
            seen = any(fnmatch.fnmatchcase(name, g) for g in self._globs)
            if len(self._seen) < 1024:  # names are the client's to choose: bounded
                self._seen[name] = seen
        return seen

    def may_use(self, name: str) -> bool:
        """Whether /v1/models lists `name` (a model, chain or pool) to the client: one it may
        name, or a model its list gives it (through a chain, a pool or "default")."""
        return self._models is None or name in self._models or self.may_ask(name)

    def narrow(self, requested: str, candidates: tuple[str, ...], *, names_model: bool,
               preview: bool = False) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
        """The candidates the client may use, and those skipped for it (model, why); raises
        Forbidden when it may not name `requested` or none is left, OverBudget when past a
        spending cap only priced models are left. `names_model`: the request named one
        model (by an upstream name too), allowed when that model is.

        Past a spending cap the priced models are skipped and the others (local, free)
        still serve: a cap stops spending, not the work that costs nothing. A `preview` (a
        token count: no request) is narrowed alike but neither refused nor counted for a cap,
        nor told."""
        allowed = self._models
        skipped: tuple[tuple[str, str], ...] = ()
        if allowed is not None:
            if not self.may_ask(requested) and not (
                    names_model and candidates and candidates[0] in allowed):
                raise Forbidden(self.name, requested or "default")
            kept = tuple(c for c in candidates if c in allowed)
            if not kept:
                raise Forbidden(self.name, requested or "default")
            why = f"not in clients.{self.name}.models"
            skipped = tuple((c, why) for c in candidates if c not in allowed)
            candidates = kept
        cfg = self.cfg
        if cfg.max_cost_per_day or cfg.max_cost_per_month:
            over = self._owner.over_budget(self)
            if over is not None:
                free = tuple(c for c in candidates if c not in self._priced)
                if preview:
                    return free or candidates, skipped
                self._owner.tell(self, over)
                if not free:
                    self.outcomes[over.limit] += 1
                    raise OverBudget(over)
                why = f"clients.{self.name}.{over.limit} reached"
                skipped += tuple((c, why) for c in candidates if c in self._priced)
                candidates = free
        return candidates, skipped

    # ------------------------------------------------------------------ spending

    def spent(self, period: Period, key: str) -> float:
        held_key, held = self.day if period == "day" else self.month
        return held if held_key >= key else 0.0

    def spend(self, usd: float, day_key: str, month_key: str) -> None:
        self.cost_total += usd
        self.day = (self.day[0], self.day[1] + usd) if self.day[0] >= day_key \
            else (day_key, usd)
        self.month = (self.month[0], self.month[1] + usd) if self.month[0] >= month_key \
            else (month_key, usd)


class Clients:
    """Every configured client, found by uid or token; the counts kept across reloads."""

    def __init__(self, clock: Clock) -> None:
        from failoverd.budget import period_of  # budget imports config, which imports us

        self.clock = clock
        self._period_of = period_of
        self._clients: dict[str, Client] = {}
        self._by_uid: dict[int, Client] = {}
        self._by_token: dict[bytes, Client] = {}
        self._gone: dict[str, Client] = {}  # removed by a reload: their spending kept
        self.active = False
        # called once per limit and episode (rpm, concurrency) or period (cost)
        self.on_limited: Callable[[Limited, float], None] | None = None
        self.on_spent: Callable[[], None] | None = None

    def configure(self, clients: Mapping[str, ClientConfig], models: Mapping[str, Any],
                  groups: Mapping[str, tuple[str, ...]]) -> None:
        """The (new) configuration's clients; a client kept by name keeps its counts."""
        current: dict[str, Client] = {}
        for name, cfg in clients.items():
            client = self._clients.get(name) or self._gone.pop(name, None) or Client(cfg, self)
            client.configure(cfg, models, groups)
            current[name] = client
        for name, client in self._clients.items():
            if name not in current:
                self._gone[name] = client
        self._clients = current
        self._by_uid = {uid: c for c in current.values() for uid in c.cfg.uids}
        self._by_token = {token_key(c.cfg.tcp_token): c for c in current.values()
                          if c.cfg.tcp_token}
        self.active = bool(current)

    def __iter__(self) -> Iterator[Client]:
        return iter(self._clients.values())

    def identify(self, transport: Any, headers: Mapping[str, str]) -> Client | None:
        """The client a request comes from: a Unix socket peer by its uid, a TCP request by
        its token (a token on the Unix socket names no one: any local user could send it)."""
        uid = peer_uid(transport)
        if uid is not None:
            return self._by_uid.get(uid)
        if not self._by_token:
            return None
        # a TCP request's token; a Unix peer whose uid cannot be read (gone already), or a
        # connection with no socket left, is no one's whatever it sends
        if family(transport) in (socket.AF_INET, socket.AF_INET6):
            return self.by_token(headers)
        return None

    def by_token(self, headers: Mapping[str, str]) -> Client | None:
        """The client whose token a TCP request carries (as a bearer or as x-api-key)."""
        if not self._by_token:
            return None
        for token in offered_tokens(headers):
            found = self._by_token.get(token_key(token))
            if found is not None:
                return found
        return None

    # ------------------------------------------------------------------ admission

    def _periods(self, wall: float) -> tuple[tuple[str, float], tuple[str, float]]:
        return self._period_of("day", wall), self._period_of("month", wall)

    def tell(self, client: Client, limited: Limited) -> None:
        """`on_limited`, once per limit and episode (rates) or period (spending caps)."""
        mark = (limited.limit, limited.period)
        if mark not in client._told:
            if limited.period:  # the caps' earlier periods are over: not kept for ever
                client._told = {t for t in client._told if t[0] != limited.limit}
            client._told.add(mark)
            if self.on_limited is not None:
                self.on_limited(limited, self.clock.time() + limited.retry_after)

    def admit(self, client: Client) -> Limited | None:
        """Counts a request in (its minute, its concurrency), or the rate limit refusing it
        (the spending caps are the router's: `Client.narrow`)."""
        cfg = client.cfg
        limited = self._limited(client)
        if limited is not None:
            client.outcomes[limited.limit] += 1
            # a rate episode ends after a minute without a refusal: a client kept at its
            # limit (a place freed, taken, the next refused) is told once, not per place
            now = self.clock.monotonic()
            last = client._refused.get(limited.limit)
            client._refused[limited.limit] = now
            if last is not None and now - last >= MINUTE:
                client._told.discard((limited.limit, ""))
            self.tell(client, limited)
            return limited
        now = self.clock.monotonic()
        if not cfg.max_rpm:  # (with it, _limited pruned it just now)
            _prune(client._minute, now)
        client._minute.append(now)  # also without max_rpm: status shows the use
        client.inflight += 1
        return None

    def over_budget(self, client: Client) -> Limited | None:
        """The spending cap the client reached, if any."""
        cfg = client.cfg
        if cfg.max_cost_per_day or cfg.max_cost_per_month:
            wall = self.clock.time()
            (day, day_end), (month, month_end) = self._periods(wall)
            caps: tuple[tuple[Period, Limit, str, float, float], ...] = (
                ("day", "max_cost_per_day", day, day_end, cfg.max_cost_per_day),
                ("month", "max_cost_per_month", month, month_end, cfg.max_cost_per_month))
            for period, limit, key, end, cap in caps:
                spent = client.spent(period, key)
                if cap and _over(spent, cap):
                    return Limited(client.name, limit, max(1.0, math.ceil(end - wall)),
                                   f"${spent:.4f} of ${cap:g} spent in {key}", key)
        return None

    def _limited(self, client: Client) -> Limited | None:
        cfg = client.cfg
        if cfg.max_concurrency and client.inflight >= cfg.max_concurrency:
            return Limited(client.name, "max_concurrency", 1.0,
                           f"{client.inflight} requests in flight")
        if cfg.max_rpm:
            now = self.clock.monotonic()
            minute = client._minute
            _prune(minute, now)
            if len(minute) >= cfg.max_rpm:
                # the oldest of the minute's requests leaves it then, freeing a place
                wait = minute[len(minute) - cfg.max_rpm] + MINUTE - now
                return Limited(client.name, "max_rpm", max(1.0, math.ceil(wait)),
                               f"{len(minute)} requests in the last minute")
        return None

    def release(self, client: Client, status: int, usd: float, *,
                counted: bool = False) -> None:
        """A request let in by `admit` ended with `status`, having cost `usd`; `counted`:
        its outcome was (a spending cap's refusal)."""
        client.inflight -= 1
        if not counted:
            outcome = "served" if status < 400 else "forbidden" if status == 403 else "failed"
            client.outcomes[outcome] += 1
        if usd > 0:
            self.charge(client, usd)

    def charge(self, client: Client, usd: float) -> None:
        """`usd` spent by the client in the current day and month (an answer's cost, a hedge
        loser's)."""
        (day, _), (month, _) = self._periods(self.clock.time())
        client.spend(usd, day, month)
        if self.on_spent is not None:
            self.on_spent()

    # ------------------------------------------------------------------ views

    def status(self) -> dict[str, Any]:
        """Every client: who it is, its limits and its current use."""
        wall, now = self.clock.time(), self.clock.monotonic()
        (day, day_end), (month, month_end) = self._periods(wall)
        out: dict[str, Any] = {}
        for c in self._clients.values():
            cfg = c.cfg
            recent = sum(1 for t in c._minute if t > now - MINUTE)
            limited = self.over_budget(c) or self._limited(c)
            out[c.name] = {
                "uids": list(cfg.uids), "tcp_token": bool(cfg.tcp_token),
                "models": list(cfg.models) if cfg.models is not None else None,
                "max_rpm": cfg.max_rpm or None, "max_concurrency": cfg.max_concurrency or None,
                "max_cost_per_day": cfg.max_cost_per_day or None,
                "max_cost_per_month": cfg.max_cost_per_month or None,
                "requests_last_minute": recent, "inflight": c.inflight,
                "spent_usd": {"day": round(c.spent("day", day), 9),
                              "month": round(c.spent("month", month), 9)},
                "resets_at": {"day": day_end, "month": month_end},
                "limited": limited.limit if limited is not None else None,
            }
        return out

    def metrics(self) -> list[str]:
        """The Prometheus lines of the clients' counters."""
        from failoverd.metrics import labels

        if not self._clients:
            return []
        out = ["# HELP failoverd_client_requests_total Requests of each [clients.<name>] by "
               "outcome (served, failed, forbidden, or the limit that refused it).",
               "# TYPE failoverd_client_requests_total counter"]
        for c in self._clients.values():
            out += [f"failoverd_client_requests_total{labels(client=c.name, outcome=o)} {n}"
                    for o, n in sorted(c.outcomes.items())]
        out += ["# HELP failoverd_client_cost_usd_total What each client's answers cost (USD, "
                "at the models' prices) since the start.",
                "# TYPE failoverd_client_cost_usd_total counter"]
        out += [f"failoverd_client_cost_usd_total{labels(client=c.name)} "
                f"{round(c.cost_total, 9)}" for c in self._clients.values()]
        return out

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        """`{"<name>": {"day": [key, usd], "month": [key, usd]}}`: what each client spent."""
        out: dict[str, Any] = {}
        for c in [*self._clients.values(), *self._gone.values()]:
            entry: dict[str, Any] = {p: list(v) for p, v in (("day", c.day),
                                                             ("month", c.month)) if v[0]}
            told = [limit for limit, key in c._told if key]
            if told:  # a cost cap told in its period is not told again after a restart
                entry["told"] = sorted(told)
            if entry:
                out[c.name] = entry
        return out

    def restore(self, data: Any) -> None:
        """Takes back a snapshot's spending of the current periods (others are dropped); a
        client the configuration no longer has keeps it for a reload that brings it back,
        as across reloads."""
        if not isinstance(data, dict):
            return
        (day, _), (month, _) = self._periods(self.clock.time())
        for name, entry in data.items():
            if not isinstance(name, str) or not isinstance(entry, dict):
                continue
            client = self._clients.get(name) or self._gone.get(name)
            if client is None:
                client = self._gone[name] = Client(ClientConfig(name), self)
            for period, key in (("day", day), ("month", month)):
                held = entry.get(period)
                if (isinstance(held, list) and len(held) == 2 and isinstance(held[0], str)
                        and type(held[1]) in (int, float) and held[1] >= 0
                        and held[0] >= key and len(held[0]) == len(key)):
                    setattr(client, period, (held[0], float(held[1])))
                    told = entry.get("told")
                    if isinstance(told, list) and f"max_cost_per_{period}" in told:
                        client._told.add((f"max_cost_per_{period}", held[0]))
