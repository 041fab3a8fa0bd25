"""`[pools.<name>]`: models that are the same model (one model behind two API keys, two
regions, two resellers), among which requests are spread instead of always starting at the
first. The configuration side; balance.py orders a request's candidates by it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from failoverd.catalog import ModelConfig
from failoverd.tomlreader import Section

Strategy = Literal["round_robin", "least_busy", "random"]
MAX_WEIGHT = 1_000_000.0


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    models: tuple[str, ...]
    strategy: Strategy = "round_robin"
    weights: tuple[float, ...] = ()  # one per model, all 1 when not given


def read_pools(top: Section, models: Mapping[str, ModelConfig],
               taken: Mapping[str, object]) -> dict[str, PoolConfig]:
    """Every `[pools.<name>]` table; `taken`: names a pool may not have (chains). Problems
    go to the section's list, each naming its key."""
    pools: dict[str, PoolConfig] = {}
    member_of: dict[str, str] = {}
    psec = top.table("pools")
    for name in psec.data:
        psec.seen.add(name)
        sec = psec.table(name)
        psec.plain_name(name, "a pool name")
        if name in models or name in taken or name in ("default", "auto"):
            sec.problem("", "a pool cannot share its name with a model, a chain or "
                        "'default'/'auto'")
        members = sec.strings("models", None)
        strategy: Strategy = sec.choice("strategy", Strategy, "round_robin")
        weights = _weights(sec, members)
        if members is None:
            if "models" not in sec.data:  # else its problem is said already
                sec.problem("models", "is required: the ids of two or more models that are "
                            "the same model")
            sec.finish()
            continue
        if len(set(members)) != len(members):
            sec.problem("models", "lists a model twice")
        elif len(members) < 2:
            sec.problem("models", "needs two or more models to spread requests over")
        ok = True
        for i, m in enumerate(members):
            if m not in models:
                sec.problems.append(f"{sec.key_path('models')}[{i}]: no model {m!r} in "
                                    "[models]")
                ok = False
            elif m in member_of and member_of[m] != name:
                sec.problem("models", f"{m!r} is already in pool {member_of[m]!r}: a model "
                            "belongs to one pool")
                ok = False
            else:
                member_of[m] = name
        kinds = {models[m].kind for m in members if m in models}
        if len(kinds) > 1:
            sec.problem("models", f"mixes models of kinds {', '.join(sorted(kinds))}: the "
                        "models of a pool stand in for each other")
            ok = False
        sec.finish()
        if ok and len(members) >= 2 and len(set(members)) == len(members):
            pools[name] = PoolConfig(name, members, strategy, weights or (1.0,) * len(members))
    return pools


def _weights(sec: Section, members: tuple[str, ...] | None) -> tuple[float, ...]:
    raw = sec.get("weights", list, None)
    if raw is None:
        return ()
    if any(isinstance(w, bool) or not isinstance(w, int | float) for w in raw):
        sec.problem("weights", "must be a list of numbers")
        return ()
    if not all(0 < w <= MAX_WEIGHT for w in raw):
        sec.problem("weights", f"must each be greater than 0 and at most {MAX_WEIGHT:g}")
        return ()
    if members is not None and len(raw) != len(members):
        sec.problem("weights", f"has {len(raw)} weight(s) for {len(members)} model(s): one "
                    "per model, in the order of `models`")
        return ()
    return tuple(float(w) for w in raw)
