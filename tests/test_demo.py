"""The README's first command: `failoverd --demo` works with no keys, network or broker."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from importlib import resources

import httpx

from failoverd import config as config_mod


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
        pooled = text.split("--- pool 'small'", 1)[1].split("--- chain 'hedged'", 1)[0]
        served = [line.split(": ", 1)[1] for line in pooled.splitlines()
                  if line.startswith("x-failoverd-model: ")]
        assert sorted(served) == ["local-2/small-model", "local/small-model"], text
        assert "x-failoverd-failover" not in pooled
        # the slow first model of chain 'hedged' is raced, and the hedge serves
        hedged = text.split("--- chain 'hedged'", 1)[1]
        assert "x-failoverd-hedge: slow-cloud/large-model>local/medium-model:won" in hedged
        assert "x-failoverd-model: local/medium-model" in hedged
        assert "x-failoverd-failover" not in hedged


async def _until_serving(proc: asyncio.subprocess.Process) -> tuple[str, str]:
    """The demo's output up to its "keeps serving" hint, and the socket it listens on."""
    assert proc.stdout is not None
    lines: list[str] = []
    while not lines or not lines[-1].startswith("Ctrl-C stops it"):
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, "\n".join(lines)  # it ended early
        lines.append(line.decode().rstrip("\n"))
    listening = next(x for x in lines if x.startswith("failoverd demo listening on "))
    return "\n".join(lines), listening.removeprefix("failoverd demo listening on ")


async def test_demo_chain_hedged_shows_a_hedge_through_the_socket() -> None:
    """The README's curl to the chain `hedged`: its first model answers 2 s late, so after its
    hedge_after (0.5 s) the next one is called alongside it and serves, plain and streamed;
    the cancelled loser is not held against the slow model, and neither is its probe."""
    cfg = config_mod.loads(resources.files("failoverd").joinpath("demo.toml").read_text(),
                           env={})
    slow = cfg.models["slow-cloud/large-model"]
    latency = cfg.providers[slow.provider].simulate_latency
    assert slow.hedge_after is not None and 0 < slow.hedge_after < latency
    assert cfg.probes.timeout > latency  # a probe waits for the slow answer
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "failoverd.cli.daemon", "--demo",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        text, sock = await _until_serving(proc)
        assert "HTTP 200" in text and "x-failoverd-failover: busy-cloud" in text
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=sock),
                                     base_url="http://failoverd", timeout=30) as http:
            # an operator's probe of the slow model meanwhile: slow, not failed
            probe = asyncio.create_task(http.post(f"/v1/models/{slow.id}/probe", json={}))
            for stream in (False, True):
                started = time.monotonic()
                body = {"model": "hedged", "stream": stream, "messages": [
                    {"role": "user", "content": "hi"}]}
                async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
                    raw = (await resp.aread()).decode()
                took = time.monotonic() - started
                assert resp.status_code == 200, raw
                assert resp.headers["x-failoverd-hedge"] == \
                    "slow-cloud/large-model>local/medium-model:won"
                assert resp.headers["x-failoverd-model"] == "local/medium-model"
                assert resp.headers["x-failoverd-attempts"] == "2"
                assert "x-failoverd-failover" not in resp.headers  # a hedge is no failover
                assert "[local/medium-model] simulated answer" in (
                    "".join(json.loads(x[6:])["choices"][0]["delta"].get("content") or ""
                            for x in raw.splitlines() if x.startswith("data: {"))
                    if stream else json.loads(raw)["choices"][0]["message"]["content"])
                assert slow.hedge_after <= took < latency, took
            probed = await asyncio.wait_for(probe, 10)
            assert probed.status_code == 200, probed.text
            assert probed.json()["last_probe"]["ok"] is True
            entry = (await http.get("/v1/status")).json()["models"][slow.id]
            assert (entry["state"], entry["consecutive_failures"], entry["inflight"]) == (
                "closed", 0, 0)
            metrics = (await http.get("/metrics")).text
            # these two and the demo's own scripted request to the chain
            assert ('failoverd_hedges_total{model="slow-cloud/large-model",'
                    'to_model="local/medium-model",outcome="won"} 3') in metrics
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        await asyncio.wait_for(proc.wait(), 10)
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
