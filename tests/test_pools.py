"""Pools end to end: requests spread over models that are the same model behind two
providers (two keys), by the pool's strategy, through the daemon to real fake upstreams."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from failoverd.balance import Balancer
from failoverd.pools import PoolConfig
from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO, failoverctl, problems, providers, status

A, B, C = "key1/gpt-5", "key2/gpt-5", "other/claude"


def pooled(a: FakeOpenAI, b: FakeOpenAI, c: FakeOpenAI, *, pool: str = "",
           routing: str = "") -> str:
    return f"""
{providers(key1=a.url, key2=b.url, other=c.url)}
[models."{A}"]
provider = "key1"
name = "gpt-5"
[models."{B}"]
provider = "key2"
name = "gpt-5"
[models."{C}"]
provider = "other"
name = "claude"
[pools.gpt]
models = ["{A}", "{B}"]
{pool}
[routing]
primary = "{A}"
fallbacks = ["{B}", "{C}"]
when_all_unavailable = "fail"
{routing}
[probes]
kind = "none"
"""


async def three(fake_openai: Any) -> tuple[FakeOpenAI, FakeOpenAI, FakeOpenAI]:
    return (await fake_openai(reply="from 1"), await fake_openai(reply="from 2"),
            await fake_openai(reply="from c"))


async def chat(d: Any, model: str = "default", **headers: str) -> Any:
    resp = await d.http.post("/v1/chat/completions", json={"model": model, "messages": HELLO},
                             headers=headers)
    assert resp.status_code == 200, resp.text
    return resp


async def served(d: Any, n: int, model: str = "default", **headers: str) -> list[str]:
    return [(await chat(d, model, **headers)).headers["x-failoverd-model"] for _ in range(n)]


async def test_round_robin_takes_turns_and_is_no_failover(fake_openai: Any,
                                                          start_daemon: Any) -> None:
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c))
    resp = await chat(d)
    assert "x-failoverd-failover" not in resp.headers  # a turn, not a failover
    assert await served(d, 5) == [B, A, B, A, B]
    assert (len(a.chat_requests()), len(b.chat_requests()), len(c.chat_requests())) == (3, 3, 0)
    # the same model, whichever key serves: the upstream's name, not the id
    assert {r.body["model"] for r in a.chat_requests() + b.chat_requests()} == {"gpt-5"}
    assert not [e for e in d.sup.service.bus.recent() if e.type == "model:failover"]


async def test_weights_spread_smoothly(fake_openai: Any, start_daemon: Any) -> None:
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c, pool="weights = [3, 1]"))
    got = await served(d, 8)
    assert Counter(got) == {A: 6, B: 2}
    assert got[:4] == [A, A, B, A]  # interleaved, not three in a row then one


async def test_a_failing_member_fails_over_to_the_other_then_the_chain(
        fake_openai: Any, start_daemon: Any) -> None:
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c))
    a.push("rate_limit_long")
    resp = await chat(d)  # key1's turn: its 429 goes to key2, the pool's other place
    assert resp.headers["x-failoverd-model"] == B
    assert resp.headers["x-failoverd-failover"] == f"{A}>{B}:rate_limit"
    b.push("rate_limit_long")
    a.push("rate_limit_long")
    resp = await chat(d)  # key2's turn, then key1, then the rest of the chain
    assert resp.headers["x-failoverd-model"] == C
    assert resp.headers["x-failoverd-failover"] == f"{B}>{A}:rate_limit,{A}>{C}:rate_limit"


async def test_an_open_member_is_passed_over_without_a_failover(fake_openai: Any,
                                                                start_daemon: Any) -> None:
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c))
    assert (await d.http.post(f"/v1/models/{A}/open", json={})).status_code == 200
    for _ in range(4):
        resp = await chat(d)
        assert resp.headers["x-failoverd-model"] == B
        assert "x-failoverd-failover" not in resp.headers  # available members come first
    assert a.chat_requests() == []
    assert (await d.http.post(f"/v1/models/{A}/reset")).status_code == 200
    assert set(await served(d, 2)) == {A, B}


async def test_a_session_stays_with_one_member(fake_openai: Any, start_daemon: Any) -> None:
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c))
    firsts = {}
    for n in range(16):
        got = await served(d, 3, **{"x-failoverd-session": f"conversation-{n}"})
        assert len(set(got)) == 1, got  # the upstream's prompt cache keeps serving it
        firsts[n] = got[0]
    assert set(firsts.values()) == {A, B}  # the sessions themselves are spread
    # a restart or another daemon sends each session to the same member (no process salt)
    again = await served(d, 1, **{"x-failoverd-session": "conversation-3"})
    assert again == [firsts[3]]


async def test_naming_the_pool_a_member_or_pinning(fake_openai: Any,
                                                   start_daemon: Any) -> None:
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c))
    assert set(await served(d, 2, "gpt")) == {A, B}
    # a model named by its id is served by that model
    assert await served(d, 3, B) == [B, B, B]
    # the pool with x-failoverd-no-fallback: one member, each in turn
    pinned = await served(d, 2, "gpt", **{"x-failoverd-no-fallback": "1"})
    assert set(pinned) == {A, B}
    a.push("rate_limit_long")
    b.push("rate_limit_long")
    resp = await d.http.post("/v1/chat/completions", json={"model": "gpt", "messages": HELLO})
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == C  # the pool, then the default chain
    models = {m["id"]: m for m in (await d.http.get("/v1/models")).json()["data"]}
    assert models["gpt"]["pool"] == [A, B] and models["gpt"]["strategy"] == "round_robin"
    assert models["gpt"]["owned_by"] == "failoverd" and A in models
    one = await d.openai.models.retrieve("gpt")  # the SDK's models.retrieve
    assert one.id == "gpt"


async def test_select_previews_without_taking_a_turn(fake_openai: Any,
                                                     start_daemon: Any) -> None:
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c))
    for _ in range(3):
        sel = (await d.http.post("/v1/select", json={"model": "default"})).json()
        assert [x["model"] for x in sel["candidates"]] == [A, B, C]
    assert await served(d, 2) == [A, B]


async def test_least_busy_sends_to_the_member_with_fewer_calls(fake_openai: Any,
                                                               start_daemon: Any) -> None:
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c, pool='strategy = "least_busy"'))
    a.push("slow:1.0")
    first = asyncio.create_task(chat(d))  # key1's turn; it takes its time

    async def in_flight() -> None:
        while not a.chat_requests():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(in_flight(), 5)
    # key1 has a call under way: key2, the idle one, serves all of these, turns or not
    assert await served(d, 3) == [B, B, B]
    assert (await first).headers["x-failoverd-model"] == A


async def test_embeddings_pool(fake_openai: Any, start_daemon: Any) -> None:
    a, b, c = await three(fake_openai)
    text = f"""
{providers(key1=a.url, key2=b.url)}
[models."key1/emb"]
provider = "key1"
name = "text-embedding-3-small"
capabilities = ["embeddings"]
[models."key2/emb"]
provider = "key2"
name = "text-embedding-3-small"
capabilities = ["embeddings"]
[models."key1/chat"]
provider = "key1"
[pools.vectors]
models = ["key1/emb", "key2/emb"]
[routing]
primary = "key1/chat"
[probes]
kind = "none"
"""
    d = await start_daemon(text)
    got = []
    for _ in range(4):
        resp = await d.http.post("/v1/embeddings", json={"model": "vectors", "input": "hi"})
        assert resp.status_code == 200, resp.text
        got.append(resp.headers["x-failoverd-model"])
    assert got == ["key1/emb", "key2/emb", "key1/emb", "key2/emb"]
    resp = await d.http.post("/v1/chat/completions",
                             json={"model": "vectors", "messages": HELLO})
    assert resp.status_code == 400
    assert "pool 'vectors' holds embedding models" in resp.text


BASE = """
[providers.p]
kind = "simulated"
[models."p/a"]
provider = "p"
[models."p/b"]
provider = "p"
[models."p/e"]
provider = "p"
capabilities = ["embeddings"]
[chains.fast]
models = ["p/a"]
[routing]
primary = "p/a"
"""


@pytest.mark.parametrize(("pool", "message"), [
    ('models = ["p/a", "p/x"]', "pools.gpt.models[1]: no model 'p/x' in [models]"),
    ('models = ["p/a"]', "pools.gpt.models: needs two or more models"),
    ('models = ["p/a", "p/a"]', "pools.gpt.models: lists a model twice"),
    ("strategy = \"fastest\"\nmodels = [\"p/a\", \"p/b\"]",
     "pools.gpt.strategy: must be one of round_robin, least_busy, random; got 'fastest'"),
    ('models = ["p/a", "p/b"]\nweights = [1]', "pools.gpt.weights: has 1 weight(s) for 2"),
    ('models = ["p/a", "p/b"]\nweights = [1, 0]', "pools.gpt.weights: must each be greater"),
    ('models = ["p/a", "p/b"]\nweights = [1, "x"]', "pools.gpt.weights: must be a list of"),
    ('models = ["p/a", "p/e"]', "pools.gpt.models: mixes models of kinds chat, embeddings"),
    ("", "pools.gpt.models: is required"),
    ('models = ["p/a", "p/b"]\nspread = 1', "pools.gpt.spread: unknown key"),
])
def test_config_problems_name_the_key(pool: str, message: str) -> None:
    found = problems(BASE + f"[pools.gpt]\n{pool}\n")
    assert any(p.startswith(message) for p in found), found


def test_a_model_belongs_to_one_pool_and_names_do_not_clash() -> None:
    text = BASE + ('[pools.one]\nmodels = ["p/a", "p/b"]\n'
                   '[pools.two]\nmodels = ["p/b", "p/a"]\n'
                   '[pools.fast]\nmodels = ["p/a", "p/b"]\n'
                   '[pools."p/a"]\nmodels = ["p/a", "p/b"]\n')
    found = "\n".join(problems(text))
    assert "pools.two.models: 'p/b' is already in pool 'one'" in found
    assert "pools.fast: a pool cannot share its name with a model, a chain" in found
    assert 'pools."p/a": a pool cannot share its name' in found


def test_places_in_a_chain_are_kept() -> None:
    """The pool's models trade places; what stands between them stays where it is, and a model
    the client named itself stays first."""
    pool = PoolConfig("g", ("a", "b", "c"), "round_robin", (1.0, 1.0, 1.0))
    down: set[str] = set()
    balancer = Balancer({"g": pool}, available=lambda m: m not in down, inflight=lambda _: 0)
    chain = ("a", "x", "b", "y", "c")
    orders = [balancer.order(chain) for _ in range(3)]
    assert [o[0] for o in orders] == ["a", "b", "c"]
    assert all(o[1] == "x" and o[3] == "y" for o in orders)
    assert all(sorted(o[i] for i in (0, 2, 4)) == ["a", "b", "c"] for o in orders)
    assert balancer.order(chain, keep_first=True)[0] == "a"
    down.add("a")
    orders = [balancer.order(chain) for _ in range(6)]
    assert {o[0] for o in orders} == {"b", "c"}  # the one down is never first ...
    assert {o[4] for o in orders} == {"a"}  # ... but last of the pool's places, not dropped
    assert balancer.order(("x", "y")) == ("x", "y")


async def test_status_and_failoverctl_show_the_pools(fake_openai: Any,
                                                     start_daemon: Any) -> None:
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c, pool='weights = [2, 1]'))
    pools = (await status(d))["pools"]
    assert pools == {"gpt": {"strategy": "round_robin", "next": A, "models": [
        {"model": A, "weight": 2.0, "inflight": 0}, {"model": B, "weight": 1.0, "inflight": 0}]}}
    await served(d, 1)  # A's turn taken: 2 - 3 + 2 = 1 against B's 2
    assert (await status(d))["pools"]["gpt"]["next"] == B
    code, out, _ = await failoverctl(d.socket, "status")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("gpt "))
    assert row.split() == ["gpt", "round_robin", B, f"{A}*2", f"{B}*1"]


async def test_a_session_pinned_to_a_pool(fake_openai: Any, start_daemon: Any,
                                          short_dir: Any) -> None:
    """POST /v1/sessions/{key} with a pool: the session's requests start at the pool (hashed
    over it, as a session is), whatever model they ask for; a reload that removes the pool
    drops the pin."""
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c).replace(f'primary = "{A}"', f'primary = "{C}"')
                           .replace(f'fallbacks = ["{B}", "{C}"]', f'fallbacks = ["{A}", "{B}"]'))
    assert await served(d, 1) == [C]
    firsts = set()
    for n in range(12):
        key = f"pinned-{n}"
        resp = await d.http.post(f"/v1/sessions/{key}", json={"model": "gpt"})
        assert resp.status_code == 200, resp.text
        got = await served(d, 2, **{"x-failoverd-session": key})
        assert len(set(got)) == 1 and got[0] in (A, B)
        firsts.add(got[0])
    assert firsts == {A, B}
    assert (await d.http.get("/v1/sessions/pinned-0")).json()["preference"] == "gpt"
    path = short_dir / "d.toml"
    path.write_text(path.read_text().replace("[pools.gpt]", "[pools.other]"))
    assert (await d.http.post("/v1/reload")).json()["ok"] is True
    assert (await d.http.get("/v1/sessions/pinned-0")).json()["preference"] is None
    assert await served(d, 1, **{"x-failoverd-session": "pinned-0"}) == [C]
