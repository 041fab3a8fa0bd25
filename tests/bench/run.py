"""Benchmark orchestrator: the upstream directly vs failoverd vs LiteLLM's proxy, in one run.

    python -m tests.bench.run [--requests N] [--quick] [--no-litellm] [--uvloop] [--markdown]
                              [--litellm PATH] [--streams N] [--json FILE]

Starts the fake upstream (tests/bench/upstream.py), the byte pipe (forwarder.py) and the
minimal HTTP proxy (minimal.py), failoverd on a Unix socket and a loopback
TCP listener (and, with --uvloop, a second failoverd under uvloop), and LiteLLM's proxy (one
worker, same upstream, no database, telemetry off, local cost map; binary from --litellm or
$LITELLM_BIN, skipped with a note when missing). Every measurement is a separate load
generator process (tests/bench/load.py); targets alternate inside each round and the report
takes the median over rounds. Loopback and Unix sockets only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
_UVLOOP_MAIN = ("import asyncio, sys, uvloop;"
                " asyncio.set_event_loop_policy(uvloop.EventLoopPolicy());"
                " from failoverd.cli.daemon import main; sys.exit(main(sys.argv[1:]))")
_PLAIN_MAIN = "import sys; from failoverd.cli.daemon import main; sys.exit(main(sys.argv[1:]))"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- processes


@dataclass
class Target:
    """One thing to load: its name, the load generator's address arguments and model."""

    name: str
    address: list[str]
    model: str
    pid: int = 0
    kind: str = "failoverd"  # direct | pipe | minimal | failoverd | litellm


@dataclass
class Bench:
    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def spawn(self, argv: list[str], name: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        out = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=kwargs.pop("stdout", out),
                                stderr=out, cwd=ROOT, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)  # our own session: the proxy's workers
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_connectable(addr: str | tuple[str, int], proc: subprocess.Popen[bytes],
                     timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        family = socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET
        with socket.socket(family) as s, contextlib.suppress(OSError):
            s.connect(addr)
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen within {timeout:.0f}s")


# word chunks of the long stream (`/long/`), plus its first, last and [DONE] events
LONG_CHUNKS = 200
LONG_EVENTS = LONG_CHUNKS + 3


def start_upstream(bench: Bench) -> int:
    proc = bench.spawn([PY, "-m", "tests.bench.upstream", "--slow-interval", "0.5",
                        "--slow-seconds", "120", "--long-chunks", str(LONG_CHUNKS)],
                       "upstream", stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("READY "):
        raise RuntimeError(f"upstream did not start: {line!r}")
    return int(line.split()[1])


def failoverd_toml(tmp: Path, name: str, up: int, tcp_port: int) -> str:
    base = f"http://127.0.0.1:{up}"
    return f"""
[daemon]
socket = "{tmp}/{name}.sock"
state_dir = "{tmp}/{name}-state"
tcp = "127.0.0.1:{tcp_port}"
tcp_token_file = "{tmp}/token"
max_inflight = 4096

[providers.up]
kind = "openai"
base_url = "{base}/v1"
[providers.limited]
kind = "openai"
base_url = "{base}/429/v1"
[providers.slow]
kind = "openai"
base_url = "{base}/slow/v1"
[providers.long]
kind = "openai"
base_url = "{base}/long/v1"

[models."up/m"]
provider = "up"
[models."limited/m"]
provider = "limited"
[models."slow/m"]
provider = "slow"
[models."long/m"]
provider = "long"

[routing]
primary = "up/m"
fallbacks = []

[chains.failover]
models = ["limited/m", "up/m"]

# the 429 benchmark must hit the primary every time: keep its breaker closed
[breaker]
failure_threshold = 1000000000
minimum_calls = 1000000000

[probes]
kind = "none"
recovery_kind = "none"
"""


def start_failoverd(bench: Bench, name: str, up: int, uvloop: bool) -> tuple[Target, Target]:
    tmp = bench.tmp
    (tmp / "token").write_text("bench-token\n")
    tcp_port = free_port()
    config = tmp / f"{name}.toml"
    config.write_text(failoverd_toml(tmp, name, up, tcp_port))
    proc = bench.spawn([PY, "-c", _UVLOOP_MAIN if uvloop else _PLAIN_MAIN, "--config",
                        str(config)], name)
    wait_connectable(str(tmp / f"{name}.sock"), proc, 30, name)
    wait_connectable(("127.0.0.1", tcp_port), proc, 10, name)
    label = "failoverd+uvloop" if uvloop else "failoverd"
    return (Target(f"{label} unix", ["--unix", str(tmp / f"{name}.sock")], "up/m", proc.pid),
            Target(f"{label} tcp", ["--tcp", f"127.0.0.1:{tcp_port}", "--token", "bench-token"],
                   "up/m", proc.pid))


def start_pipe(bench: Bench, up: int) -> Target:
    """The byte pipe (`forwarder.py`): the ceiling any Python proxy on asyncio can reach."""
    path = str(bench.tmp / "pipe.sock")
    proc = bench.spawn([PY, "-m", "tests.bench.forwarder", "--unix", path, "--upstream-port",
                        str(up)], "pipe")
    wait_connectable(path, proc, 30, "byte pipe")
    return Target("python byte pipe", ["--unix", path], "m", proc.pid, "pipe")


def start_minimal(bench: Bench, up: int) -> Target:
    """The minimal HTTP proxy (`minimal.py`): the ceiling of a Python proxy that parses
    requests and uses failoverd's upstream client, but decides nothing."""
    path = str(bench.tmp / "minimal.sock")
    proc = bench.spawn([PY, "-m", "tests.bench.minimal", "--unix", path, "--upstream-port",
                        str(up)], "minimal")
    wait_connectable(path, proc, 30, "minimal proxy")
    return Target("python minimal proxy", ["--unix", path], "m", proc.pid, "minimal")


def litellm_yaml(up: int) -> str:
    return f"""model_list:
  - model_name: bench
    litellm_params: {{model: openai/m, api_base: "http://127.0.0.1:{up}/v1", api_key: sk-bench}}
  - model_name: bench-429
    litellm_params: {{model: openai/m, api_base: "http://127.0.0.1:{up}/429/v1",
                      api_key: sk-bench}}
  - model_name: bench-slow
    litellm_params: {{model: openai/m, api_base: "http://127.0.0.1:{up}/slow/v1",
                      api_key: sk-bench}}
litellm_settings:
  telemetry: false
  turn_off_message_logging: true
  num_retries: 0
  request_timeout: 60
router_settings:
  num_retries: 0
  fallbacks: [{{"bench-429": ["bench"]}}]
general_settings:
  disable_spend_logs: true
"""


def start_litellm(bench: Bench, binary: str, up: int) -> Target | None:
    config = bench.tmp / "litellm.yaml"
    config.write_text(litellm_yaml(up))
    port = free_port()
    key = "sk-" + secrets.token_hex(32)  # it refuses to start without a strong master key
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",)}
    env.update(LITELLM_MASTER_KEY=key, LITELLM_LOCAL_MODEL_COST_MAP="True",
               LITELLM_TELEMETRY="False",
               LITELLM_LOG="ERROR", DISABLE_SCHEMA_UPDATE="True", NO_PROXY="*")
    proc = bench.spawn([binary, "--config", str(config), "--host", "127.0.0.1", "--port",
                        str(port), "--num_workers", "1", "--telemetry", "False"],
                       "litellm", env=env)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (bench.tmp / "litellm.log").read_text(errors="replace").strip()[-300:]
            bench.notes.append(f"LiteLLM exited with {proc.returncode} at start; skipped: {tail}")
            return None
        with contextlib.suppress(OSError):
            with opener.open(f"http://127.0.0.1:{port}/health/liveliness", timeout=2) as resp:
                if resp.status == 200:
                    return Target("litellm proxy",
                                  ["--tcp", f"127.0.0.1:{port}", "--token", key], "bench",
                                  proc.pid, "litellm")
        time.sleep(0.5)
    bench.notes.append("LiteLLM did not become ready within 180 s; skipped")
    return None


def rss_kb(pid: int, tree: bool = False) -> int:
    """VmRSS of `pid` (and, with `tree`, of its descendants) in KiB."""
    total = 0
    for p in _tree(pid) if tree else [pid]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(k) for k in (task / "children").read_text().split())
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its descendants, in seconds."""
    ticks = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            # the fields after the parenthesised command name; utime and stime are 14 and 15
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- load


def load(target: Target, requests: int, concurrency: int, *, model: str | None = None,
         stream: bool = False, path: str = "", timeout: float = 300) -> dict[str, Any]:
    warmup = min(200, max(concurrency, requests // 10))
    argv = [PY, "-m", "tests.bench.load", *target.address, "--model", model or target.model,
            "--requests", str(requests), "--concurrency", str(concurrency),
            "--warmup", str(warmup), "--timeout", str(timeout)]
    if stream:
        argv.append("--stream")
    if path:
        argv += ["--path", path]
    done = subprocess.run(argv, capture_output=True, cwd=ROOT, timeout=timeout + 30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed on {target.name}: {done.stderr.decode()[-800:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.splitlines()[-1])
    result["sent"] = requests + warmup  # what the target served, warm-up included
    bad = {k: v for k, v in result["statuses"].items() if k != "200"}
    if bad or result["errors"]:
        log(f"{target.name}: non-200 answers {bad}, errors {result['errors']}")
    return result


def hold_streams(target: Target, count: int, seconds: float) -> dict[str, Any]:
    """Opens `count` slow streams through failoverd and samples its RSS while they are open."""
    argv = [PY, "-m", "tests.bench.load", *target.address, "--model", "slow/m", "--stream",
            "--hold", "--concurrency", str(count), "--hold-seconds", str(seconds)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        first = orjson.loads(proc.stdout.readline() or b"{}")
        rss = rss_kb(target.pid)
        proc.stdin.write(b"release\n")
        proc.stdin.flush()
        final = orjson.loads(proc.stdout.readline() or b"{}")
        proc.wait(seconds + 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return {"open": first.get("open", 0), "open_seconds": first.get("seconds"),
            "rss_kb": rss, "still_open_at_release": final.get("still_open_at_release", 0)}


def _failed_over(headers: dict[str, str]) -> bool:
    """Whether failoverd really tried the 429ing primary first (its breaker stayed closed)."""
    return (headers.get("x-failoverd-attempts") == "2"
            and headers.get("x-failoverd-failover", "").endswith(":rate_limit"))


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs)) if runs else 0.0


@dataclass
class Plan:
    rounds: int
    n1: int
    n50: int
    n_stream: int
    n_long: int
    n_failover: int
    lite_div: int
    direct_mul: int
    streams: int
    hold_seconds: float


# targets with no fallback to fail over to
_NO_FAILOVER = ("direct", "pipe", "minimal")


def measure(bench: Bench, targets: list[Target], plan: Plan) -> dict[str, Any]:
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {
        t.name: {"c1": [], "c50": [], "stream": [], "long": [], "failover": []}
        for t in targets}
    for rnd in range(plan.rounds):
        for t in targets:  # alternate: every target once per round, in turn
            # scaled so each run lasts long enough: direct is ~10x faster, LiteLLM far slower
            div = plan.lite_div if t.kind == "litellm" else 1
            mul = plan.direct_mul if t.kind in ("direct", "pipe") else 1
            r = rows[t.name]
            r["c1"].append(load(t, max(20, plan.n1 * mul // div), 1))
            before = cpu_seconds(t.pid) if t.pid else 0.0
            r["c50"].append(load(t, max(100, plan.n50 * mul // div), 50))
            if t.pid:  # the proxy's own CPU per request (steadier than rps on a busy box)
                used = cpu_seconds(t.pid) - before
                r["c50"][-1]["cpu_us_per_request"] = 1e6 * used / r["c50"][-1]["sent"]
            r["stream"].append(load(t, max(20, plan.n_stream // div), 1, stream=True))
            if t.pid and t.kind != "litellm":  # the proxy's CPU per relayed stream event
                before = cpu_seconds(t.pid)
                if t.kind == "failoverd":
                    long = load(t, plan.n_long, 10, model="long/m", stream=True)
                else:
                    long = load(t, plan.n_long, 10, stream=True,
                                path="/long/v1/chat/completions")
                used = cpu_seconds(t.pid) - before
                long["cpu_us_per_event"] = 1e6 * used / (long["sent"] * LONG_EVENTS)
                r["long"].append(long)
            if t.kind not in _NO_FAILOVER:
                model = "bench-429" if t.kind == "litellm" else "failover"
                r["failover"].append(load(t, max(20, plan.n_failover // div), 1, model=model))
            log(f"round {rnd + 1}/{plan.rounds} {t.name}: c1 {r['c1'][-1]['rps']:.0f} rps, "
                f"c50 {r['c50'][-1]['rps']:.0f} rps")
    out: dict[str, Any] = {}
    for t in targets:
        r = rows[t.name]
        fo = r["failover"]
        out[t.name] = {
            "kind": t.kind,
            "rps_c1": median(r["c1"], "rps"), "rps_c50": median(r["c50"], "rps"),
            "p50_c1_ms": median(r["c1"], "p50_ms"), "p99_c1_ms": median(r["c1"], "p99_ms"),
            "p50_c50_ms": median(r["c50"], "p50_ms"), "p99_c50_ms": median(r["c50"], "p99_ms"),
            "cpu_us_c50": median(r["c50"], "cpu_us_per_request") if t.pid else None,
            "ttfc_p50_ms": median(r["stream"], "ttfb_p50_ms"),
            "ttfc_p99_ms": median(r["stream"], "ttfb_p99_ms"),
            "cpu_us_per_event": median(r["long"], "cpu_us_per_event") if r["long"] else None,
            "failover_p50_ms": median(fo, "p50_ms") if fo else None,
            "failover_p99_ms": median(fo, "p99_ms") if fo else None,
            "failover_ok": bool(fo) and all(
                set(x["statuses"]) == {"200"} and not x["errors"] for x in fo)
            and (t.kind != "failoverd" or _failed_over(fo[-1]["headers"])),
            "failover_headers": fo[-1]["headers"] if fo else {},
            "errors": sum(x["errors"] for k in ("c1", "c50", "stream", "long") for x in r[k]),
            "non_200": sum(v for k in ("c1", "c50", "stream", "long") for x in r[k]
                           for s, v in x["statuses"].items() if s != "200"),
        }
    return out


# ---------------------------------------------------------------------- report


def check_targets(results: dict[str, Any], memory: dict[str, Any]) -> list[dict[str, Any]]:
    direct = results["direct"]
    fd = results.get("failoverd unix")
    lite = results.get("litellm proxy")
    checks: list[dict[str, Any]] = []
    if fd is None:
        return checks

    def add(name: str, value: float | None, limit: float, unit: str, higher: bool) -> None:
        ok = value is not None and (value >= limit if higher else value <= limit)
        checks.append({"target": name, "value": value, "limit": limit, "unit": unit,
                       "ok": ok, "higher_is_better": higher})

    if lite is not None and lite["rps_c50"]:
        add("throughput vs LiteLLM (c=50)", fd["rps_c50"] / lite["rps_c50"], 20, "x", True)
    add("throughput vs direct (c=50)", 100 * fd["rps_c50"] / direct["rps_c50"], 40, "%", True)
    # not targets: how far failoverd is from a proxy that does no work at all, and from one
    # that parses HTTP but decides nothing
    for name, label in (("python byte pipe", "the byte pipe"),
                        ("python minimal proxy", "the minimal proxy")):
        other = results.get(name)
        if other is not None and other["rps_c50"]:
            checks.append({"target": f"(throughput vs {label}, c=50)",
                           "value": 100 * fd["rps_c50"] / other["rps_c50"], "limit": None,
                           "unit": "%", "ok": None, "higher_is_better": True})
    add("added p50 at c=1", fd["p50_c1_ms"] - direct["p50_c1_ms"], 0.5, "ms", False)
    fo = fd["failover_p50_ms"] if fd["failover_ok"] else None
    add("immediate 429 on the primary adds (vs direct)",
        None if fo is None else fo - direct["p50_c1_ms"], 2, "ms", False)
    add("idle RSS (after load)", memory["failoverd"]["idle_after_kb"] / 1024, 80, "MB", False)
    return checks


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}"
    return str(v)


def table(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |",
                 "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*r) for r in [headers, *rows])


def render(report: dict[str, Any], markdown: bool) -> str:
    res = report["results"]
    direct = res["direct"]
    perf = []
    for name, r in res.items():
        added = None if name == "direct" else r["p50_c1_ms"] - direct["p50_c1_ms"]
        fo = r["failover_p50_ms"]
        perf.append([name, _fmt(r["rps_c1"]), _fmt(r["rps_c50"]), _fmt(r["p50_c1_ms"]),
                     _fmt(r["p99_c1_ms"]), _fmt(r["p50_c50_ms"]), _fmt(r["p99_c50_ms"]),
                     _fmt(added), _fmt(r["cpu_us_c50"], 0), _fmt(r["ttfc_p50_ms"]),
                     _fmt(r.get("cpu_us_per_event"), 1),
                     _fmt(None if fo is None else fo - direct["p50_c1_ms"])
                     + ("" if fo is None or r["failover_ok"] else " (errors)")])
    parts = [table(["target", "rps c=1", "rps c=50", "p50 c=1 ms", "p99 c=1 ms", "p50 c=50 ms",
                    "p99 c=50 ms", "added p50 c=1 ms", "CPU µs/req c=50", "stream TTFC p50 ms",
                    f"CPU µs/event ({LONG_EVENTS}-event stream)", "429→fallback adds ms"],
                   perf, markdown)]
    mem_rows = []
    for name, m in report["memory"].items():
        streams = m.get("streams")
        mem_rows.append([name, _fmt(m["idle_start_kb"] / 1024, 1),
                         _fmt(m["idle_after_kb"] / 1024, 1),
                         _fmt(streams["rss_kb"] / 1024, 1) if streams else "n/a",
                         str(streams["open"]) if streams else "n/a",
                         _fmt((streams["rss_kb"] - m["idle_after_kb"]) / max(1, streams["open"]),
                              1) if streams else "n/a"])
    parts.append(table(["process", "RSS idle at start MB", "RSS idle after load MB",
                        "RSS with open streams MB", "open streams", "KB per stream"],
                       mem_rows, markdown))
    checks = [[c["target"], f"{_fmt(c['value'])} {c['unit']}",
               "" if c["limit"] is None else
               f"{'≥' if c['higher_is_better'] else '≤'} {_fmt(c['limit'])} {c['unit']}",
               "" if c["ok"] is None else "PASS" if c["ok"] else "FAIL"]
              for c in report["checks"]]
    parts.append(table(["target (failoverd unix)", "measured", "goal", ""], checks, markdown))
    m = report["machine"]
    parts.append(f"Machine: {m['cpu']}, {m['nproc']} cores, Python {m['python']}, "
                 f"tools on {m['tool_loop']}; {report['plan']}.")
    parts.extend(f"Note: {n}" for n in report["notes"])
    return "\n\n".join(parts)


def machine() -> dict[str, Any]:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop  # noqa: F401
        tool_loop = "uvloop"
    except ImportError:
        tool_loop = "asyncio"
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "tool_loop": tool_loop}


# ---------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.bench.run",
                                description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=0,
                   help="requests per run at concurrency 50 (default 5000, --quick 300)")
    p.add_argument("--rounds", type=int, default=0, help="default 3 (--quick: 1)")
    p.add_argument("--quick", action="store_true", help="small counts, one round")
    p.add_argument("--streams", type=int, default=0,
                   help="concurrent open streams for the RSS measurement (default 1000)")
    p.add_argument("--no-litellm", action="store_true")
    p.add_argument("--litellm", default=os.environ.get("LITELLM_BIN", ""),
                   help="litellm binary (default $LITELLM_BIN)")
    p.add_argument("--uvloop", action="store_true",
                   help="also run a failoverd under uvloop (needs uvloop installed)")
    p.add_argument("--markdown", action="store_true", help="print markdown tables")
    p.add_argument("--json", default="", help="also write the full report to this file")
    return p


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


@contextlib.contextmanager
def bench_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="fob-", dir="/tmp"))  # AF_UNIX paths are short
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    n50 = args.requests or (300 if args.quick else 5000)
    plan = Plan(rounds=args.rounds or (1 if args.quick else 3), n1=max(50, n50 // 5), n50=n50,
                n_stream=max(50, n50 // 10), n_long=max(30, n50 // 25),
                n_failover=max(50, n50 // 10),
                lite_div=10, direct_mul=5,
                streams=args.streams or (50 if args.quick else 1000),
                hold_seconds=20 if args.quick else 60)
    _raise_fd_limit(4 * plan.streams + 1024)
    with bench_dir() as tmp:
        bench = Bench(tmp)
        try:
            return _run(bench, args, plan)
        finally:
            bench.stop_all()


def _run(bench: Bench, args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    up = start_upstream(bench)
    targets = [Target("direct", ["--tcp", f"127.0.0.1:{up}"], "m", kind="direct"),
               start_pipe(bench, up), start_minimal(bench, up)]
    daemons = {"failoverd": start_failoverd(bench, "fod", up, uvloop=False)}
    if args.uvloop:
        try:
            import uvloop  # noqa: F401
            daemons["failoverd+uvloop"] = start_failoverd(bench, "fodu", up, uvloop=True)
        except ImportError:
            bench.notes.append("--uvloop given but uvloop is not installed; skipped")
    for pair in daemons.values():
        targets.extend(pair)
    memory: dict[str, Any] = {name: {"idle_start_kb": rss_kb(pair[0].pid)}
                              for name, pair in daemons.items()}
    lite: Target | None = None
    if args.no_litellm:
        bench.notes.append("LiteLLM skipped (--no-litellm)")
    elif not args.litellm or not shutil.which(args.litellm):
        bench.notes.append("LiteLLM skipped: no binary (give --litellm PATH or $LITELLM_BIN; "
                           "install it in its own venv: pip install 'litellm[proxy]')")
    else:
        log("starting LiteLLM (takes a while)")
        lite = start_litellm(bench, args.litellm, up)
        if lite is not None:
            targets.append(lite)
            memory["litellm proxy"] = {"idle_start_kb": rss_kb(lite.pid, tree=True)}
    plan_text = (f"{plan.rounds} round(s), {plan.n1} requests at c=1 and {plan.n50} at c=50 "
                 f"per target and round (direct: {plan.direct_mul}x, LiteLLM: "
                 f"1/{plan.lite_div} of that), medians over rounds")
    log(plan_text)
    results = measure(bench, targets, plan)
    time.sleep(0.5)
    for name, pair in daemons.items():
        memory[name]["idle_after_kb"] = rss_kb(pair[0].pid)
    if lite is not None:
        memory["litellm proxy"]["idle_after_kb"] = rss_kb(lite.pid, tree=True)
    for name, pair in daemons.items():
        log(f"{name}: holding {plan.streams} open streams")
        memory[name]["streams"] = hold_streams(pair[0], plan.streams, plan.hold_seconds)
        if memory[name]["streams"]["open"] < plan.streams:
            bench.notes.append(f"{name}: only {memory[name]['streams']['open']} of "
                               f"{plan.streams} streams opened")
    for name, r in results.items():
        if r["errors"] or r["non_200"]:
            bench.notes.append(f"{name}: {r['errors']} errors, {r['non_200']} non-200 answers")
        if r["kind"] not in _NO_FAILOVER and not r["failover_ok"]:
            bench.notes.append(f"{name}: the 429 failover run had errors or non-200 answers")
    report: dict[str, Any] = {"machine": machine(), "plan": plan_text, "results": results,
                              "memory": memory, "notes": bench.notes}
    report["checks"] = check_targets(results, memory)
    return report


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    report = run(args)
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(render(report, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
