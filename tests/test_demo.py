"""The README's first command: `failoverd --demo` works with no keys, network or broker."""

from __future__ import annotations

import asyncio
import sys


async def test_demo_shows_a_failover_and_a_stream() -> None:
    for _ in range(2):  # a second run starts fresh: same failover, no leftover breaker state
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "failoverd.cli.daemon", "--demo", "--once",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        text = out.decode()
        assert proc.returncode == 0, text
        assert "HTTP 200" in text
        assert "x-failoverd-failover: busy-cloud/large-model>local/small-model:rate_limit" in text
        assert "streamed: [local/small-model] simulated answer" in text
        assert "event model:failover" in text  # the audit log line
        # the embedding chain fails over as well, and its vectors are the ones asked for
        assert "x-failoverd-failover: busy-cloud/embed-model>local/embed-model:rate_limit" in text
        vectors = [line for line in text.splitlines() if line.startswith("embedding ")]
        assert [v.split(":")[0] for v in vectors] == ["embedding 0", "embedding 1"]
        assert all(len(v.split(": ", 1)[1].split(",")) == 4 for v in vectors)
        # the pool's two providers take turns, no failover between them
        pooled = text.split("--- pool 'small'", 1)[1]
        served = [line.split(": ", 1)[1] for line in pooled.splitlines()
                  if line.startswith("x-failoverd-model: ")]
        assert sorted(served) == ["local-2/small-model", "local/small-model"], text
        assert "x-failoverd-failover" not in pooled
