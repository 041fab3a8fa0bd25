"""The benchmark runs end to end (tiny counts, no LiteLLM) and reports sane numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.bench
def test_benchmark_quick_run_reports_sane_numbers(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.run", "--quick", "--no-litellm", "--requests", "200",
         "--streams", "20", "--markdown", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=50, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    results = report["results"]
    assert set(results) == {"direct", "python byte pipe", "python minimal proxy",
                            "failoverd unix", "failoverd tcp"}

    direct = results["direct"]
    for name, r in results.items():
        assert r["errors"] == 0 and r["non_200"] == 0, name
        assert r["rps_c1"] > 50 and r["rps_c50"] > 50, name
        assert 0 < r["p50_c1_ms"] <= r["p99_c1_ms"] < 1000, name
        assert 0 < r["p50_c50_ms"] <= r["p99_c50_ms"] < 5000, name
        assert 0 < r["ttfc_p50_ms"] < 1000, name
    for name in ("failoverd unix", "failoverd tcp"):
        fd = results[name]
        # a proxy cannot be faster than what it proxies to
        assert fd["p50_c1_ms"] > direct["p50_c1_ms"], name
        # every failover request really hit the 429ing primary first, then the fallback
        assert fd["failover_ok"], fd["failover_headers"]
        assert fd["failover_headers"]["x-failoverd-attempts"] == "2"
        assert fd["failover_p50_ms"] > direct["p50_c1_ms"]
        assert 1 < fd["cpu_us_c50"] < 100_000, fd["cpu_us_c50"]  # the daemon's CPU per request
    assert direct["cpu_us_c50"] is None  # the upstream is not a proxy: no figure
    # every proxy relayed the long streams whole (no errors above), at some CPU per event
    # (the pipe's may round to nothing: CPU time is counted in 10 ms ticks)
    for name in ("python byte pipe", "python minimal proxy", "failoverd unix", "failoverd tcp"):
        assert 0 <= results[name]["cpu_us_per_event"] < 10_000, name
    assert results["failoverd unix"]["cpu_us_per_event"] > 0
    assert direct["cpu_us_per_event"] is None

    mem = report["memory"]["failoverd"]
    assert 5 * 1024 < mem["idle_start_kb"] < 500 * 1024
    assert mem["streams"]["open"] == 20
    assert mem["streams"]["still_open_at_release"] == 20  # they stayed open while measured
    assert mem["streams"]["rss_kb"] >= mem["idle_start_kb"] // 2

    checks = {c["target"] for c in report["checks"]}
    assert "added p50 at c=1" in checks and "idle RSS (after load)" in checks
    assert any("LiteLLM skipped" in n for n in report["notes"])
    # the printed markdown carries the table rows
    assert "| failoverd unix |" in done.stdout and "| direct |" in done.stdout
