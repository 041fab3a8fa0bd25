"""Spreads requests over a pool's models (pools.py): a request's candidates keep their order,
but the places the pool's models hold in it are filled anew for each request, by the pool's
strategy, available models first. A request of a session goes to the same model each time
(rendezvous hashing), so an upstream's prompt cache keeps serving the conversation."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Mapping, Sequence

from failoverd.pools import PoolConfig

_SPAN = float(2 ** 64)
CYCLES_MAX = 256  # round robin cycles kept (sets of a pool's places), before starting anew


class Balancer:
    """One configuration's pools and whose turn it is in each (a reload starts anew)."""

    __slots__ = ("active", "names", "_available", "_current", "_inflight", "_place", "_pool_of",
                 "_rng", "_weight")

    def __init__(self, pools: Mapping[str, PoolConfig], *,
                 available: Callable[[str], bool], inflight: Callable[[str], int],
                 rng: random.Random | None = None, names: frozenset[str] = frozenset()) -> None:
        self.active = bool(pools)
        # what a request's "model" asks for a pool by: the pools' names and the upstream
        # names their models share (router.pool_names); any other names one model
        self.names = names or frozenset(pools)
        self._pool_of = {m: p for p in pools.values() for m in p.models}
        self._place = {m: i for p in pools.values() for i, m in enumerate(p.models)}
        self._weight = {m: w for p in pools.values() for m, w in zip(p.models, p.weights,
                                                                     strict=True)}
        # smooth weighted round robin: each model's standing, per set of places (_round_robin)
        self._current: dict[tuple[str, ...], list[float]] = {}
        self._available = available
        self._inflight = inflight
        self._rng = rng or random.Random()  # noqa: S311 - spreading load, not secrets

    def order(self, candidates: tuple[str, ...], *, keep_first: bool = False,
              session: str | None = None, advance: bool = True) -> tuple[str, ...]:
        """`candidates` with each pool's places filled for this request. `keep_first`: the
        client named the first model itself, which stays first; `session`: the request's
        session key; `advance`: False for a preview (/v1/select), which takes no turn."""
        places: dict[str, list[int]] = {}
        pool_of = self._pool_of
        for i, model_id in enumerate(candidates):
            pool = pool_of.get(model_id)
            if pool is not None and not (keep_first and i == 0):
                places.setdefault(pool.name, []).append(i)
        out: list[str] | None = None
        for at in places.values():
            if len(at) < 2:
                continue
            members = [candidates[i] for i in at]
            ranked = self._rank(pool_of[members[0]], members, session, advance)
            if out is None:
                out = list(candidates)
            for i, model_id in zip(at, ranked, strict=True):
                out[i] = model_id
        return candidates if out is None else tuple(out)

    def _rank(self, pool: PoolConfig, members: list[str], session: str | None,
              advance: bool) -> list[str]:
        weight = self._weight
        if session is not None:
            ranked = sorted(members, key=lambda m: _rendezvous(session, m, weight[m]),
                            reverse=True)
        elif pool.strategy == "random":
            # weighted sampling without replacement (Efraimidis and Spirakis)
            rng = self._rng
            ranked = sorted(members, key=lambda m: rng.random() ** (1.0 / weight[m]),
                            reverse=True)
        else:
            ranked = self._round_robin(members, advance)
            if pool.strategy == "least_busy":
                # calls under way per weight, as nginx's least_conn; stable: ties keep their turn
                inflight = self._inflight
                ranked.sort(key=lambda m: inflight(m) / weight[m])
        # the available first, each part in its order; while all before the last are
        # available the order stands, whatever the last is (one query fewer per request)
        available = self._available
        for k in range(len(ranked) - 1):
            if not available(ranked[k]):
                rest = ranked[k + 1:]
                up = [m for m in rest if available(m)]
                return [*ranked[:k], *up, ranked[k], *(m for m in rest if m not in up)]
        return ranked

    def _round_robin(self, members: Sequence[str], advance: bool) -> list[str]:
        """Smooth weighted round robin (as nginx's upstreams): each turn every model gains its
        weight, the one ahead serves and gives back the total; the rest follow by standing.

        One cycle per set of the pool's models a request's candidates hold (in the pool's
        order, which breaks ties, whatever order a chain lists them in): a chain that lists
        two of a pool's three models spreads its requests over those two, whatever the
        requests naming all three do. One cycle shared by both sent every request of the
        first to the same model."""
        key = tuple(sorted(members, key=self._place.__getitem__))
        current = self._current.get(key)
        if current is None:
            if len(self._current) >= CYCLES_MAX:  # auto's subsets vary with availability
                self._current.clear()
            current = self._current[key] = [0.0] * len(key)
        weight = self._weight
        standing = [c + weight[m] for c, m in zip(current, key, strict=True)]
        first = max(range(len(key)), key=standing.__getitem__)  # ties: the pool's order
        if advance:
            current[:] = standing
            current[first] -= sum(weight[m] for m in key)
        rest = sorted((i for i in range(len(key)) if i != first), key=standing.__getitem__,
                      reverse=True)
        return [key[first], *(key[i] for i in rest)]


def _rendezvous(session: str, model_id: str, weight: float) -> float:
    """Weighted rendezvous hashing's score: the highest serves the session, and a model
    leaving or coming moves only the sessions it wins or loses."""
    digest = hashlib.blake2b(f"{session}\0{model_id}".encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "big") + 1.0) / (_SPAN + 2.0)  # in (0, 1)
    return -weight / math.log(u)
