"""Prometheus metrics, kept as plain counters and rendered on GET /metrics.

Updates are dict increments on the request path; formatting happens only when scraped.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from failoverd.catalog import Cost

TOKEN_KINDS = ("prompt", "completion", "cache_read", "cache_write")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0)

# Upstream calls an adapter sent again at once within one attempt, by (model, why): not
# failovers nor retries ("cache_points": Bedrock refused them, sent again without them).
# Adapters hold no Metrics and one daemon runs per process: process-wide, rendered by render.
RESENT: defaultdict[tuple[str, str], int] = defaultdict(int)
# Calls not made because the upstream's own rate-limit headers said the model's budget was
# gone, by (model, limit): upstream_rpm, upstream_tpm (upstreamlimits.py); process-wide too.
UPSTREAM_SKIPS: defaultdict[tuple[str, str], int] = defaultdict(int)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(**values: str) -> str:
    """``{name="value",...}`` with the values escaped (a model id may hold a quote, a
    backslash or a line break: unescaped, one such id makes Prometheus reject the whole
    scrape); "" for none."""
    return _labels(tuple(values), tuple(values.values()))


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    if not names:
        return ""
    return "{" + ",".join(f'{n}="{_esc(v)}"' for n, v in zip(names, values, strict=True)) + "}"


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


class Metrics:
    """failoverd's counters; gauges are read from their owners at scrape time."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)  # (model, outcome)
        self.failovers: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        # (model, to_model, outcome): hedged attempts (hedge.py)
        self.hedges: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.rejections: defaultdict[str, int] = defaultdict(int)
        self.upstream: defaultdict[tuple[str, str], Histogram] = defaultdict(Histogram)
        self.probes: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.tokens: defaultdict[tuple[str, str], int] = defaultdict(int)  # (model, kind)
        self.unreported: defaultdict[str, int] = defaultdict(int)  # answers without usage
        # USD spent per model at its configured cost (prices: USD per 1M tokens, input and
        # output, set from the configuration at start and on every reload)
        self.cost: defaultdict[str, float] = defaultdict(float)
        self.prices: dict[str, Cost] = {}
        # tokens and cost of models a reload removed, for the totals since the start
        self.retired_tokens: defaultdict[str, int] = defaultdict(int)
        self.retired_cost = 0.0
        self.gauges: list[Callable[[], Iterable[str]]] = []

    def served(self, model: str) -> None:
        self.requests[(model, "ok")] += 1

    def stream_ended(self, model: str, ok: bool) -> None:
        """A stream reached its end: ``ok``, or ``stream_error`` when it broke after its first
        chunk (the client got an error event)."""
        self.requests[(model, "ok" if ok else "stream_error")] += 1

    def failover(self, from_model: str, to_model: str, reason: str) -> None:
        self.failovers[(from_model, to_model, reason)] += 1

    def hedged(self, model: str, to_model: str, outcome: str) -> None:
        """An attempt on `model` was hedged to `to_model`: the hedge `won`, `lost`,
        `failed`, was `cancelled`, or its model's hedge budget refused it (`budget`: never
        started; hedge.HedgeOutcome)."""
        self.hedges[(model, to_model, outcome)] += 1

    def cancelled(self, model: str = "") -> None:
        """A request the client left (or a stop cut): under the model that was serving it,
        once one was (a stream that had begun), else under none."""
        self.requests[(model, "cancelled")] += 1

    def rejected(self, why: str) -> None:
        self.rejections[why] += 1

    def failed(self, model: str, outcome: str) -> None:
        """A request that ended with an error and no failover: `bad_request` (the upstream's
        refusal passed on), `aborted` (a hook aborted the failover) or `context_overflow`
        (context_policy fail), under the model it ended at; `internal_error` (a defect in
        failoverd answered with a 500) under none."""
        self.requests[(model, outcome)] += 1

    def exhausted(self) -> None:
        self.requests[("", "no_model_available")] += 1

    def upstream_latency(self, model: str, seconds: float, ok: bool) -> None:
        self.upstream[(model, "ok" if ok else "error")].observe(seconds)

    def usage(self, model: str, usage: Any) -> float:
        """Tokens of one answer as the upstream reported them (canonical usage): ``prompt``
        (cache reads and writes included), ``completion``, and of the prompt ``cache_read``
        and ``cache_write``. An answer with no usage (a stream whose client did not ask for
        ``stream_options.include_usage``, an upstream that tells none) is counted apart, so
        the token counts are known to be a lower bound. Returns what the answer cost (USD
        at the model's prices; 0 without them)."""
        if not isinstance(usage, dict):
            self.unreported[model] += 1
            return 0.0
        tokens = self.tokens
        prompt = _count(usage.get("prompt_tokens"))
        completion = _count(usage.get("completion_tokens"))
        written = _count(usage.get("cache_creation_input_tokens"))
        details = usage.get("prompt_tokens_details")
        read = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
        for kind, value in (("prompt", prompt), ("completion", completion),
                            ("cache_write", written), ("cache_read", read)):
            if value:
                tokens[(model, kind)] += value
        price = self.prices.get(model)
        if price is None:
            return 0.0
        fresh = max(prompt - read - written, 0)
        read_price = price.input if price.cache_read is None else price.cache_read
        write_price = price.input if price.cache_write is None else price.cache_write
        spent = (fresh * price.input + read * read_price + written * write_price
                 + completion * price.output) / 1e6
        if spent > 0:
            self.cost[model] += spent
            return spent
        return 0.0

    def totals(self) -> dict[str, Any]:
        """Tokens by kind and cost since the start, models a reload removed included."""
        tokens = dict.fromkeys(TOKEN_KINDS, 0)
        for (_, kind), n in self.tokens.items():
            tokens[kind] += n
        for kind, n in self.retired_tokens.items():
            tokens[kind] += n
        return {"tokens": tokens,
                "cost_usd": round(sum(self.cost.values()) + self.retired_cost, 9)}

    def probe(self, model: str, ok: bool) -> None:
        self.probes[(model, "ok" if ok else "failed")] += 1

    def forget_models(self, keep: Iterable[str]) -> None:
        """Drops the series of models a reload removed (kept: those in `keep`, and the ""
        of requests no model served), so the series do not grow with every model id ever
        configured; Prometheus treats a vanished series as ended."""
        kept = {"", *keep}
        for (model, kind), n in self.tokens.items():
            if model not in kept:  # the totals since the start keep what they used
                self.retired_tokens[kind] += n
        self.retired_cost += sum(c for m, c in self.cost.items() if m not in kept)
        for series in (self.requests, self.upstream, self.probes, self.tokens):
            for key in [k for k in series if k[0] not in kept]:
                del series[key]
        for model in [m for m in self.unreported if m not in kept]:
            del self.unreported[model]
        for model in [m for m in self.cost if m not in kept]:
            del self.cost[model]
        for series3 in (self.failovers, self.hedges):
            for hop in [k for k in series3 if k[0] not in kept or k[1] not in kept]:
                del series3[hop]

    def render(self) -> str:
        out: list[str] = []

        def counter(name: str, help_: str, labels: tuple[str, ...],
                    items: Iterable[tuple[tuple[str, ...], int]]) -> None:
            out.append(f"# HELP {name} {help_}\n# TYPE {name} counter")
            out.extend(f"{name}{_labels(labels, k)} {v}" for k, v in sorted(items))

        counter("failoverd_requests_total", "Client requests by serving model and outcome.",
                ("model", "outcome"), self.requests.items())
        counter("failoverd_failovers_total", "Failovers from one model to the next.",
                ("from_model", "to_model", "reason"), self.failovers.items())
        counter("failoverd_hedges_total", "Hedged attempts: a model slow to its first byte "
                "raced the next candidate (outcome of the hedge: won, lost, failed, "
                "cancelled; budget: refused by the model's hedge budget, not started).",
                ("model", "to_model", "outcome"), self.hedges.items())
        counter("failoverd_rejected_requests_total", "Requests refused by failoverd itself.",
                ("why",), (((k,), v) for k, v in self.rejections.items()))
        counter("failoverd_probes_total", "Health probes by model and outcome.",
                ("model", "outcome"), self.probes.items())
        counter("failoverd_tokens_total", "Tokens of answers as upstreams reported them, by "
                "model and kind (prompt, completion; cache_read and cache_write are part of "
                "prompt).", ("model", "kind"), self.tokens.items())
        counter("failoverd_usage_unreported_total", "Answers served without a token usage "
                "(streams without stream_options.include_usage).", ("model",),
                (((k,), v) for k, v in self.unreported.items()))
        counter("failoverd_upstream_resends_total", "Upstream calls sent again at once within "
                "one attempt (not failovers), by model and why.", ("model", "why"),
                RESENT.items())
        counter("failoverd_upstream_limit_skips_total", "Calls not made because the "
                "upstream's rate-limit headers said the model's budget was gone until their "
                "reset, by model and limit (upstream_rpm, upstream_tpm).", ("model", "limit"),
                UPSTREAM_SKIPS.items())
        name = "failoverd_cost_usd_total"
        out.append(f"# HELP {name} US dollars spent by model: the reported tokens at the "
                   "model's configured cost.\n"
                   f"# TYPE {name} counter")
        out.extend(f'{name}{{model="{_esc(model)}"}} {spent:.9g}'
                   for model, spent in sorted(self.cost.items()))
        name = "failoverd_upstream_latency_seconds"
        out.append(f"# HELP {name} Upstream call latency.\n# TYPE {name} histogram")
        for (model, result), h in sorted(self.upstream.items()):
            cumulative = 0
            for bound, n in zip((*h.buckets, float("inf")), h.counts, strict=True):
                cumulative += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                out.append(f'{name}_bucket{{model="{_esc(model)}",result="{result}",'
                           f'le="{le}"}} {cumulative}')
            out.append(f'{name}_sum{{model="{_esc(model)}",result="{result}"}} {h.sum:.6f}')
            out.append(f'{name}_count{{model="{_esc(model)}",result="{result}"}} {h.count}')
        for gauge in self.gauges:
            out.extend(gauge())
        return "\n".join(out) + "\n"


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0
