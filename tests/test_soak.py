"""A bounded chaos soak: the real daemon under mixed, concurrent traffic from real clients
while its upstreams misbehave at random, then global invariants once it has settled.

Traffic: the openai and anthropic SDKs, plain and streamed, raw clients that leave mid-stream
or before any answer, sessions, x-failoverd-no-fallback, short x-failoverd-deadline; valid
and invalid reloads and operator open/reset in the middle; a /v1/events reader throughout.
Upstreams (two OpenAI fakes, one Anthropic fake, one OpenAI fake that sometimes refuses the
key, one closed port) answer from a seeded script of the fakes' own behaviours.

Invariants: every request got a well-formed answer; nothing stays in flight; every request the
daemon saw is counted once in /metrics; the failover events the reader saw are the failovers
counted; /v1/status agrees with the state file; no ERROR log line or traceback but the ones a
rejected reload writes; every reachable model still serves, and the daemon stops in time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.helpers import free_port, status, until, until_async

USER = [{"role": "user", "content": "hi"}]
MODELS = ("o1/gpt-a", "an/claude", "o2/gpt-b", "o3/gpt-c", "dead/m")
REACHABLE = MODELS[:4]
REQUESTED = ("default", "default", "default", "alt", "an/claude", "o2/gpt-b", "o1/gpt-a",
             "tail")
# statuses DESIGN.md's table gives a chat request: 503 no_model_available (or failoverd's own
# overloaded), an upstream's refusal passed on (4xx), an aborted failover's upstream status
ERROR_STATUSES = {400, 401, 403, 404, 413, 429, 500, 502, 503, 529}

OPENAI_BEHAVIOURS = (
    ["ok"] * 24 + ["rate_limit", "rate_limit_short", "rate_limit_bare", "overloaded",
                   "server_error", "bad_gateway", "hang", "slow:0.2", "invalid_json", "empty",
                   "cut_stream", "stream_error", "slow_stream:0.03"])
ANTHROPIC_BEHAVIOURS = (
    ["ok"] * 20 + ["overloaded", "overloaded_503", "api_error", "hang", "invalid_json",
                   "cut_stream", "stream_error", "no_stop"])
AUTH_BEHAVIOURS = ["ok"] * 8 + ["auth", "server_error"]


def config(o1: FakeOpenAI, o2: FakeOpenAI, o3: FakeOpenAI, an: FakeAnthropic, dead: int,
           *, b_concurrency: int = 5, broken: bool = False) -> str:
    return f"""shutdown_timeout = 1
[providers.o1]
kind = "openai"
base_url = "{o1.url}"
timeout = 1
connect_timeout = 0.5
[providers.o2]
kind = "openai"
base_url = "{o2.url}"
timeout = 1
[providers.o3]
kind = "openai"
base_url = "{o3.url}"
timeout = 1
[providers.an]
kind = "anthropic"
base_url = "{an.url}"
timeout = 1
max_cost_per_month = 1000
[providers.dead]
kind = "openai"
base_url = "http://127.0.0.1:{dead}/v1"
connect_timeout = 0.5
[models."o1/gpt-a"]
provider = "o1"
cost = {{ input = 2.0, output = 8.0 }}
max_cost_per_day = 1000
max_concurrency = 4
first_token_timeout = 1
stream_idle_timeout = 1
[models."an/claude"]
provider = "an"
cost = {{ input = 3.0, output = 15.0, cache_read = 0.3 }}
max_concurrency = 6
first_token_timeout = 1
stream_idle_timeout = 1
[models."o2/gpt-b"]
provider = "o2"
max_concurrency = {b_concurrency}
first_token_timeout = 1
stream_idle_timeout = 1
[models."o3/gpt-c"]
provider = "o3"
first_token_timeout = 1
stream_idle_timeout = 1
[models."dead/m"]
provider = "dead"
[routing]
primary = "o1/gpt-a"
fallbacks = ["an/claude", "dead/m", "o3/gpt-c", "o2/gpt-b"]
deadline = 3
retry_after_max = 0.1
when_all_unavailable = "queue"
queue_timeout = 0.2
{"bogus_key = 1" if broken else ""}
[chains.alt]
models = ["an/claude", "o2/gpt-b"]
[pools.tail]
models = ["o3/gpt-c", "o2/gpt-b"]
strategy = "least_busy"
[breaker]
failure_threshold = 4
minimum_calls = 20
open_seconds = 0.3
max_open_seconds = 1
auth_open_seconds = 0.5
[probes]
interval = 1
jitter = 0.5
timeout = 0.5
kind = "models"
recovery_kind = "chat"
"""


class Tally:
    """What the clients saw."""

    def __init__(self) -> None:
        self.sent = 0
        self.outcomes: Counter[str] = Counter()
        self.problems: list[str] = []
        self.reasons: Counter[str] = Counter()  # of the attempts in 503s

    def bad(self, what: str) -> None:
        self.problems.append(what)


def _error_shape_ok(body: Any, anthropic_shape: bool) -> bool:
    if not isinstance(body, dict):
        return False
    if anthropic_shape:
        err = body.get("error") if body.get("type") == "error" else None
    else:
        err = body.get("error")
    return isinstance(err, dict) and isinstance(err.get("message"), str) and bool(err.get("type"))


def _check_status_error(tally: Tally, exc: Any, anthropic_shape: bool, what: str) -> None:
    code = exc.status_code
    try:
        body = exc.response.json()
    except ValueError:
        body = None
    if code not in ERROR_STATUSES or not _error_shape_ok(body, anthropic_shape):
        tally.bad(f"{what}: {code} {exc.response.text[:300]}")
        return
    err = body["error"]
    if code == 503 and err.get("type") == "no_model_available" and not isinstance(
            body.get("attempts", err.get("attempts")), list):
        tally.bad(f"{what}: 503 without attempts: {body}")
    tally.outcomes[f"error:{code}"] += 1
    for a in body.get("attempts", err.get("attempts")) or []:
        tally.reasons[f"{a['model']}:{a['reason']}"] += 1


async def openai_call(client: openai.AsyncOpenAI, tally: Tally, model: str,
                      headers: dict[str, str], stream: bool) -> None:
    what = f"openai {'stream' if stream else 'plain'} {model} {headers}"
    try:
        if not stream:
            raw = await client.chat.completions.with_raw_response.create(
                model=model, messages=USER, extra_headers=headers)
            reply = raw.parse()
            if not reply.choices[0].message.content or not raw.headers.get(
                    "x-failoverd-model"):
                tally.bad(f"{what}: empty answer {reply}")
            tally.outcomes["ok"] += 1
            return
        chunks = await client.chat.completions.create(model=model, messages=USER,
                                                      extra_headers=headers, stream=True)
        text = ""
        try:
            async for chunk in chunks:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
        except openai.APIError as exc:
            if isinstance(exc, openai.APIConnectionError):
                raise
            tally.outcomes["stream_error"] += 1  # an error event after the first chunk
            return
        if not text:
            tally.bad(f"{what}: empty stream")
        tally.outcomes["ok"] += 1
    except openai.APIStatusError as exc:
        _check_status_error(tally, exc, False, what)
    except openai.APIConnectionError as exc:
        tally.bad(f"{what}: connection error {exc!r} {exc.__cause__!r}")


async def anthropic_call(client: anthropic.AsyncAnthropic, tally: Tally, model: str,
                         headers: dict[str, str], stream: bool) -> None:
    what = f"anthropic {'stream' if stream else 'plain'} {model} {headers}"
    try:
        if not stream:
            msg = await client.messages.create(model=model, max_tokens=50, messages=USER,
                                               extra_headers=headers)
            if not msg.content or not getattr(msg.content[0], "text", ""):
                tally.bad(f"{what}: empty answer {msg}")
            tally.outcomes["ok"] += 1
            return
        try:
            async with client.messages.stream(model=model, max_tokens=50, messages=USER,
                                              extra_headers=headers) as events:
                text = "".join([t async for t in events.text_stream])
        except anthropic.APIStatusError as exc:
            if exc.response.status_code == 200:  # an error event after the first block
                tally.outcomes["stream_error"] += 1
                return
            raise
        if not text:
            tally.bad(f"{what}: empty stream")
        tally.outcomes["ok"] += 1
    except anthropic.APIStatusError as exc:
        _check_status_error(tally, exc, True, what)
    except anthropic.APIConnectionError as exc:
        tally.bad(f"{what}: connection error {exc!r} {exc.__cause__!r}")


async def raw_leaver(socket: str, tally: Tally, model: str, headers: dict[str, str],
                     early: bool) -> None:
    """A client that asks for a stream and goes away: before any answer (`early`), or once
    the first bytes of it came."""
    body = json.dumps({"model": model, "messages": USER, "stream": True}).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: failoverd\r\n"
            f"Content-Type: application/json\r\n{extra}Content-Length: {len(body)}\r\n\r\n")
    reader, writer = await asyncio.open_unix_connection(socket)
    try:
        writer.write(head.encode() + body)
        await writer.drain()
        if early:
            await asyncio.sleep(0.01)
        else:
            await asyncio.wait_for(reader.read(200), 5)
        tally.outcomes["left"] += 1
    finally:
        writer.transport.abort()


async def events_reader(http: httpx.AsyncClient, seen: list[dict[str, Any]],
                        connected: asyncio.Event) -> None:
    async with http.stream("GET", "/v1/events", timeout=None) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith(": connected"):
                connected.set()
            elif line.startswith("data: "):
                seen.append(json.loads(line[6:]))


def _in_fake(record: logging.LogRecord) -> bool:
    """A fake upstream's own log line (aiohttp's server logs a write to a daemon that hung
    up, as a fake's cut or hang makes it do): not the daemon's."""
    if not record.exc_info or record.exc_info[2] is None:
        return False
    return any("/tests/fakes/" in frame.filename
               for frame in traceback.extract_tb(record.exc_info[2]))


def scrape(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def total(families: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(s.value for s in families.get(name, [])
               if all(s.labels.get(k) == v for k, v in labels.items()))


def script(rng: random.Random, behaviours: list[str], n: int) -> list[str]:
    return [rng.choice(behaviours) for _ in range(n)]


# FAILOVERD_SOAK_SEEDS="1 2 3" runs other seeds (exploration); the suite runs this one
SEEDS = [int(x) for x in os.environ.get("FAILOVERD_SOAK_SEEDS", "20261207").split()]


@pytest.mark.parametrize("seed", SEEDS)
async def test_soak(seed: int, fake_openai: Any, fake_anthropic: Any, start_daemon: Any,
                    short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    rng = random.Random(seed)
    o1, o2, o3 = await fake_openai(), await fake_openai(), await fake_openai()
    an = await fake_anthropic()
    dead = free_port()
    o1.push(*script(rng, OPENAI_BEHAVIOURS, 400))
    o2.push(*script(rng, OPENAI_BEHAVIOURS, 300))
    o3.push(*script(rng, AUTH_BEHAVIOURS, 200))
    an.push(*script(rng, ANTHROPIC_BEHAVIOURS, 400))
    d = await start_daemon(config(o1, o2, o3, an, dead))
    toml = short_dir / "d.toml"
    head = toml.read_text().split("shutdown_timeout = 1\n")[0]

    def rewrite(**kwargs: Any) -> None:
        toml.write_text(head + config(o1, o2, o3, an, dead, **kwargs))

    oai = openai.AsyncOpenAI(
        api_key="unused", base_url="http://failoverd/v1", max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=d.socket),
                                      timeout=30))
    ant = anthropic.AsyncAnthropic(
        api_key="unused", base_url="http://failoverd", max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=d.socket),
                                       timeout=30))
    sse_http = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=d.socket),
                                 base_url="http://failoverd")
    reader: asyncio.Task[None] | None = None
    try:
        seen: list[dict[str, Any]] = []
        connected = asyncio.Event()
        reader = asyncio.create_task(events_reader(sse_http, seen, connected))
        await asyncio.wait_for(connected.wait(), 5)
        baseline = scrape((await d.http.get("/metrics")).text)
        emitted_before = {s.labels["type"]: s.value
                          for s in baseline.get("failoverd_events_total", [])}
        day_before = await status(d)  # the UTC day and month the spending is counted in

        tally = Tally()
        limit = asyncio.Semaphore(30)
        control: list[tuple[str, int]] = []

        async def one(i: int, kind: str, model: str, headers: dict[str, str]) -> None:
            async with limit:
                tally.sent += 1
                if kind == "openai":
                    await openai_call(oai, tally, model, headers, False)
                elif kind == "openai_stream":
                    await openai_call(oai, tally, model, headers, True)
                elif kind == "anthropic":
                    await anthropic_call(ant, tally, model, headers, False)
                elif kind == "anthropic_stream":
                    await anthropic_call(ant, tally, model, headers, True)
                else:
                    await raw_leaver(d.socket, tally, model, headers, kind == "leave_early")

        async def operator(step: int) -> None:
            if step % 4 == 0:
                rewrite(b_concurrency=5 + step % 3)
                resp = await d.http.post("/v1/reload")
                control.append(("reload", resp.status_code))
                assert resp.status_code == 200, resp.text
            elif step % 4 == 1:
                rewrite(broken=True)
                resp = await d.http.post("/v1/reload")
                control.append(("bad reload", resp.status_code))
                assert resp.status_code == 422, resp.text
            elif step % 4 == 2:
                model = rng.choice(REACHABLE)
                resp = await d.http.post(f"/v1/models/{model}/open", json={"seconds": 0.4})
                control.append(("open", resp.status_code))
                assert resp.status_code == 200, resp.text
            else:
                model = rng.choice(REACHABLE)
                resp = await d.http.post(f"/v1/models/{model}/reset")
                control.append(("reset", resp.status_code))
                assert resp.status_code == 200, resp.text

        kinds = (["openai"] * 4 + ["openai_stream"] * 3 + ["anthropic"] * 3
                 + ["anthropic_stream"] * 2 + ["leave_mid", "leave_early"])
        plan = []
        for i in range(int(os.environ.get("FAILOVERD_SOAK_REQUESTS", "300"))):
            headers: dict[str, str] = {}
            if rng.random() < 0.25:
                headers["x-failoverd-session"] = f"s{rng.randrange(8)}"
            if rng.random() < 0.1:
                headers["x-failoverd-no-fallback"] = "1"
            if rng.random() < 0.1:
                headers["x-failoverd-deadline"] = "0.3"
            plan.append((i, rng.choice(kinds), rng.choice(REQUESTED), headers))

        started = time.monotonic()
        tasks = []
        for i, kind, model, headers in plan:
            tasks.append(asyncio.create_task(one(i, kind, model, headers)))
            if i % 36 == 18:
                tasks.append(asyncio.create_task(operator(i // 36)))
            if i % 10 == 0:
                await asyncio.sleep(0.02)
        await asyncio.gather(*tasks)
        traffic_seconds = time.monotonic() - started

        # ---------------------------------------------------------------- settle
        async def settled() -> bool:
            st = await status(d)
            fam = scrape((await d.http.get("/metrics")).text)
            return (all(m["inflight"] == 0 for m in st["models"].values())
                    and total(fam, "failoverd_inflight_requests") == 0)

        await until_async(settled, 10, interval=0.05)
        families = scrape((await d.http.get("/metrics")).text)

        assert not tally.problems, "\n".join(tally.problems[:20])
        assert tally.sent == len(plan)
        steps = [i // 36 for i, *_ in plan if i % 36 == 18]
        assert len(control) == len(steps)

        # every request the daemon saw is counted once: answered, failed, cancelled or refused
        counted = (total(families, "failoverd_requests_total")
                   + total(families, "failoverd_rejected_requests_total"))
        by_outcome: Counter[str] = Counter()
        for sample in families["failoverd_requests_total"]:
            by_outcome[sample.labels["outcome"]] += int(sample.value)
        assert counted == len(plan), (counted, len(plan), by_outcome, tally.outcomes)
        assert total(families, "failoverd_requests_total", outcome="internal_error") == 0

        emitted = Counter({s.labels["type"]: s.value - emitted_before.get(s.labels["type"], 0)
                           for s in families.get("failoverd_events_total", [])})

        # the event reader saw every event emitted since it connected, and lost none (counted
        # afresh at each look: probes go on emitting after the requests are done)
        async def caught_up() -> bool:
            now = scrape((await d.http.get("/metrics")).text)
            emitted_now = Counter({
                s.labels["type"]: s.value - emitted_before.get(s.labels["type"], 0)
                for s in now.get("failoverd_events_total", [])})
            return Counter(e["type"] for e in seen) == +emitted_now

        await until_async(caught_up, 5, interval=0.05)
        assert total(families, "failoverd_sse_dropped_events_total") == 0
        failovers = sum(1 for e in seen if e["type"] == "model:failover")
        assert failovers == total(families, "failoverd_failovers_total") > 0
        assert emitted["config:reloaded"] == sum(1 for k, _ in control if k == "reload")
        assert emitted["config:rejected"] == sum(1 for k, _ in control if k == "bad reload")

        # /v1/status and the state file agree (after the save a transition schedules)
        state_path = short_dir / "d-state" / "state.json"

        async def agree() -> bool:
            st = await status(d)
            await asyncio.sleep(0.01)
            saved = json.loads(state_path.read_text())
            for model_id, entry in st["models"].items():
                snap = saved["breakers"].get(model_id)
                if snap is None or snap["state"] != entry["breaker_state"]:
                    return False
                if snap["open_count"] != entry["open_count"] or snap["reason"] != entry["reason"] \
                        and entry["state"] != "unavailable":
                    return False
            blocked = {p for p, e in st["providers"].items() if e["credentials"] != "ok"}
            return blocked == set(saved["providers"])

        await until_async(agree, 5, interval=0.05)

        # what the priced models spent (budget.py) is what the metrics say they cost, and a
        # provider's cap counts its models' (unless the soak ran across 00:00 UTC)
        st = await status(d)
        if {b["period_key"] for b in st["budgets"]} == {b["period_key"]
                                                          for b in day_before["budgets"]}:
            for model_id in ("o1/gpt-a", "an/claude"):
                entry = st["models"][model_id]
                assert entry["spent_usd"]["day"] == pytest.approx(entry["cost_usd"]), model_id
            assert st["models"]["o1/gpt-a"]["cost_usd"] > 0
            caps = {(b["scope"], b["name"]): b for b in st["budgets"]}
            assert caps[("provider", "an")]["spent_usd"] == pytest.approx(
                st["models"]["an/claude"]["cost_usd"])
            assert not any(b["reached"] for b in st["budgets"])

        # every reachable model still serves
        for fake in (o1, o2, o3, an):
            fake.script.clear()
        for model in MODELS:
            await d.http.post(f"/v1/models/{model}/reset")
        for model in REACHABLE:
            raw = await oai.chat.completions.with_raw_response.create(
                model=model, messages=USER, extra_headers={"x-failoverd-no-fallback": "1"})
            assert raw.headers["x-failoverd-model"] == model
        with pytest.raises(openai.InternalServerError):
            await oai.chat.completions.create(model="dead/m", messages=USER,
                                              extra_headers={"x-failoverd-no-fallback": "1"})

        # no ERROR line, no traceback, but a rejected reload's own lines
        unexpected = [r for r in caplog.records
                      if (r.levelno >= logging.ERROR or r.exc_info)
                      and not r.getMessage().startswith("config rejected")
                      and not _in_fake(r)]
        assert not unexpected, "\n".join(
            f"{r.name} {r.levelname} {r.getMessage()}" for r in unexpected[:10])

        # and it stops cleanly, in time, with a burst of slow requests to drain and cut
        # o2 streams slowly (cut mid-stream), o3 answers late (cut before its answer)
        o2.default, o3.default = "slow_stream:0.5", "slow:3"
        counted_before = sum(d.sup.service.metrics.requests.values())
        burst = Tally()
        calls = []
        for i in range(24):
            model = "o2/gpt-b" if i % 4 == 0 else "o3/gpt-c"
            pin = {"x-failoverd-no-fallback": "1"}
            if i % 2:
                calls.append(openai_call(oai, burst, model, pin, i % 3 == 0))
            else:
                calls.append(anthropic_call(ant, burst, model, pin, i % 3 == 0))
        burst_tasks = [asyncio.create_task(c) for c in calls]
        await until(lambda: d.sup.service.inflight + sum(t.done() for t in burst_tasks)
                    == len(burst_tasks), 5)
        stopping = time.monotonic()
        d.sup.request_stop()
        await asyncio.wait_for(d.task, 1 + 3)
        stopped = time.monotonic() - stopping
        await asyncio.wait_for(asyncio.gather(*burst_tasks), 5)
        assert not burst.problems, "\n".join(burst.problems)
        assert stopped < 1 + 1, stopped
        assert sum(d.sup.service.metrics.requests.values()) - counted_before == len(calls)
        assert d.sup.service.inflight == 0
        print("burst at the stop:", dict(burst.outcomes))
        await asyncio.wait_for(reader, 5)  # the event stream ends with the daemon
        print(f"seed {seed}: {len(plan)} requests in {traffic_seconds:.1f}s, "
              f"{dict(tally.outcomes)}, {dict(by_outcome)}, {failovers} failovers, "
              f"{tally.reasons.most_common()}")
    finally:
        if reader is not None and not reader.done():
            reader.cancel()
        await oai.close()
        await ant.close()
        await sse_http.aclose()
