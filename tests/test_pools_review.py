"""Review of pools (balance.py, pools.py and their wiring): the cases an operator and an
adversarial client reach that tests/test_pools.py does not, each through the real daemon to
fake upstreams speaking OpenAI's wire format."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from failoverd import config as config_mod
from failoverd.balance import Balancer
from failoverd.errors import ConfigError
from failoverd.pools import PoolConfig
from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO
from tests.test_pools import BASE, A, B, C, chat, pooled, served, three


def same_name(a: FakeOpenAI, b: FakeOpenAI, c: FakeOpenAI, **kw: Any) -> str:
    """The pooled config with both members named gpt-5 upstream, and their embedding twins."""
    return pooled(a, b, c, **kw).replace('name = "claude"', 'name = "claude"\n'
                                         '[models."key1/emb"]\nprovider = "key1"\n'
                                         'name = "text-embedding-3-small"\n'
                                         'capabilities = ["embeddings"]\n'
                                         '[models."key2/emb"]\nprovider = "key2"\n'
                                         'name = "text-embedding-3-small"\n'
                                         'capabilities = ["embeddings"]\n'
                                         '[pools.vectors]\nmodels = ["key1/emb", "key2/emb"]\n')


async def test_the_upstream_name_the_pool_members_share_asks_for_the_pool(
        fake_openai: Any, start_daemon: Any) -> None:
    """Two keys of gpt-5 in one pool: a client asking for "gpt-5" (as unmodified programs do)
    is spread over them, not refused as ambiguous; the same for an embedding pool."""
    a, b, c = await three(fake_openai)
    d = await start_daemon(same_name(a, b, c))
    assert Counter(await served(d, 4, "gpt-5")) == {A: 2, B: 2}
    got = []
    for _ in range(4):
        resp = await d.http.post("/v1/embeddings", json={"model": "text-embedding-3-small",
                                                         "input": "hi"})
        assert resp.status_code == 200, resp.text
        got.append(resp.headers["x-failoverd-model"])
    assert Counter(got) == {"key1/emb": 2, "key2/emb": 2}
    # legacy completions take the same route
    texts = []
    for _ in range(2):
        resp = await d.http.post("/v1/completions", json={"model": "gpt-5", "prompt": "hi"})
        assert resp.status_code == 200, resp.text
        texts.append(resp.headers["x-failoverd-model"])
    assert set(texts) == {A, B}


async def test_a_name_shared_outside_one_pool_stays_ambiguous(fake_openai: Any,
                                                              start_daemon: Any) -> None:
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c).replace('name = "claude"', 'name = "gpt-5"'))
    resp = await d.http.post("/v1/chat/completions", json={"model": "gpt-5",
                                                           "messages": HELLO})
    assert resp.status_code == 404 and "ambiguous" in resp.text


async def test_speech_by_the_shared_upstream_name_is_spread(start_daemon: Any) -> None:
    """tts-1 at two keys in a pool: "tts-1" names them both, so neither is kept first."""
    d = await start_daemon("""
[providers.s1]
kind = "simulated"
[providers.s2]
kind = "simulated"
[models."s1/tts"]
provider = "s1"
name = "tts-1"
capabilities = ["speech"]
[models."s2/tts"]
provider = "s2"
name = "tts-1"
capabilities = ["speech"]
[pools.voices]
models = ["s1/tts", "s2/tts"]
[probes]
kind = "none"
""")
    got = []
    for _ in range(4):
        resp = await d.http.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi",
                                                           "voice": "alloy",
                                                           "response_format": "wav"})
        assert resp.status_code == 200, resp.text
        got.append(resp.headers["x-failoverd-model"])
    assert Counter(got) == {"s1/tts": 2, "s2/tts": 2}


async def test_the_operators_next_moves_off_the_pool_member(fake_openai: Any,
                                                            start_daemon: Any) -> None:
    """/v1/chains/default/next is a manual failover away from the head: with key1 and key2
    pooled, the head the operator moved away from gets no more requests, not half of them."""
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c))
    assert (await d.http.post("/v1/chains/default/next")).status_code == 200
    assert await served(d, 4) == [B, B, B, B]
    sel = (await d.http.post("/v1/select", json={"model": "default"})).json()
    assert [x["model"] for x in sel["candidates"]] == [B, C, A]
    assert (await d.http.post("/v1/chains/default/next")).status_code == 200
    assert await served(d, 2) == [C, C]
    assert (await d.http.post("/v1/chains/default/reset")).status_code == 200
    assert set(await served(d, 2)) == {A, B}


async def test_the_operators_next_keeps_spreading_over_the_rest_of_the_pool(
        fake_openai: Any, start_daemon: Any) -> None:
    """Three keys pooled: moving off the first leaves the other two sharing the load."""
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c).replace(f'models = ["{A}", "{B}"]',
                                                   f'models = ["{A}", "{B}", "{C}"]'))
    assert (await d.http.post("/v1/chains/default/next")).status_code == 200
    assert Counter(await served(d, 4)) == {B: 2, C: 2}
    # the same for the legacy completions route (_rotated)
    texts = []
    for _ in range(4):
        resp = await d.http.post("/v1/completions", json={"model": "default", "prompt": "hi"})
        assert resp.status_code == 200, resp.text
        texts.append(resp.headers["x-failoverd-model"])
    assert Counter(texts) == {B: 2, C: 2}


async def test_least_busy_weighs_the_calls_under_way(fake_openai: Any,
                                                     start_daemon: Any) -> None:
    """least_busy with weights [3, 1]: key1 with 2 calls under way is less busy for its
    weight than key2 with 1 (nginx's least_conn compares conns / weight)."""
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c, pool='strategy = "least_busy"\nweights = [3, 1]'))
    for _ in range(2):
        a.push("slow:0.5")
    b.push("slow:0.5")
    held = [asyncio.create_task(chat(d, m)) for m in (A, A, B)]  # by id: that model first

    async def in_flight() -> None:
        while len(a.chat_requests()) < 2 or len(b.chat_requests()) < 1:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(in_flight(), 5)
    assert await served(d, 1) == [A]  # 2/3 < 1/1
    await asyncio.gather(*held)


async def test_count_tokens_takes_no_turn(fake_openai: Any, start_daemon: Any) -> None:
    """An Anthropic client counts its tokens before each message: the count is a question
    about the request, so it takes no turn, or every message would go to the same key."""
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c))
    got = []
    for _ in range(4):
        resp = await d.http.post("/v1/messages/count_tokens",
                                 json={"model": "default", "messages": HELLO})
        assert resp.status_code == 200, resp.text
        got.append((await chat(d)).headers["x-failoverd-model"])
    assert Counter(got) == {A: 2, B: 2}


async def test_pools_are_listed_like_chains(fake_openai: Any, start_daemon: Any) -> None:
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c))
    models = (await d.http.get("/v1/models")).json()
    assert "gpt" in {m["id"] for m in models["data"]}
    status = (await d.http.get("/v1/status")).json()
    assert "gpt" in status.get("pools", {})


@pytest.mark.parametrize(("pool", "message"), [
    ('models = "p/a"', "pools.gpt.models: must be a list, got a string"),
    ('models = ["p/a", 3]', "pools.gpt.models: must be a list of strings, found an integer"),
])
def test_a_wrong_models_value_is_one_problem(pool: str, message: str) -> None:
    """`models` of the wrong type is said once, not also as "is required" (it is there)."""
    with pytest.raises(ConfigError) as info:
        config_mod.loads(BASE + f"[pools.gpt]\n{pool}\n", env={})
    assert info.value.problems == [message]


async def test_a_speech_pool_falls_over_to_the_other_speech_models(start_daemon: Any) -> None:
    """As a speech model's id does (any voice may stand in for another), a speech pool is its
    models, then the other speech models: both keys failing, the third voice answers."""
    d = await start_daemon("""
[providers.s1]
kind = "simulated"
simulate_failure = "server_error"
[providers.s2]
kind = "simulated"
simulate_failure = "server_error"
[providers.s3]
kind = "simulated"
[models."s1/tts"]
provider = "s1"
capabilities = ["speech"]
max_retries = 0
[models."s2/tts"]
provider = "s2"
capabilities = ["speech"]
max_retries = 0
[models."s3/tts"]
provider = "s3"
capabilities = ["speech"]
[pools.voices]
models = ["s1/tts", "s2/tts"]
[probes]
kind = "none"
""")
    resp = await d.http.post("/v1/audio/speech", json={"model": "voices", "input": "hi",
                                                       "voice": "alloy",
                                                       "response_format": "wav"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "s3/tts"


async def test_a_session_sticks_to_the_member_it_failed_over_to(fake_openai: Any,
                                                                start_daemon: Any) -> None:
    """The member a session hashes to fails (a 429 that opens no breaker): the session's
    requests stay with the member that served it (sticky), not hashed back to the failing one
    at each request; the other sessions keep their own member."""
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c))
    key = {"x-failoverd-session": "conversation-7"}
    sel = (await d.http.post("/v1/select", json={"model": "default"}, headers=key)).json()
    home, other = sel["candidates"][0]["model"], sel["candidates"][1]["model"]
    assert {home, other} == {A, B}
    fakes = {A: a, B: b}
    fakes[home].push("rate_limit_long")
    resp = await chat(d, **key)
    assert resp.headers["x-failoverd-model"] == other
    assert resp.headers["x-failoverd-failover"] == f"{home}>{other}:rate_limit"
    before = len(fakes[home].chat_requests())
    assert await served(d, 3, **key) == [other] * 3
    assert len(fakes[home].chat_requests()) == before  # not tried again meanwhile


async def test_turns_are_fair_under_concurrency(fake_openai: Any, start_daemon: Any) -> None:
    """40 requests at once with weights [3, 1]: each takes its own turn, 30 and 10."""
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c, pool="weights = [3, 1]"))
    replies = await asyncio.gather(*(chat(d) for _ in range(40)))
    assert Counter(r.headers["x-failoverd-model"] for r in replies) == {A: 30, B: 10}


async def test_sessions_pinned_to_a_chain_are_spread_over_its_pool(
        fake_openai: Any, start_daemon: Any) -> None:
    """Sessions pinned to a chain that holds a pool are hashed over the pool as the sessions
    asking for that chain by name are, not all sent to the chain's first model."""
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c).replace(
        "[routing]", f'[chains.both]\nmodels = ["{A}", "{B}", "{C}"]\n[routing]'))
    firsts = set()
    for n in range(12):
        key = f"conversation-{n}"
        resp = await d.http.post(f"/v1/sessions/{key}", json={"chain": "both"})
        assert resp.status_code == 200, resp.text
        firsts.update(await served(d, 1, **{"x-failoverd-session": key}))
    assert firsts == {A, B}


async def test_chains_holding_part_of_a_pool_each_spread_their_requests(
        fake_openai: Any, start_daemon: Any) -> None:
    """A pool of three keys; the default chain lists all three, chain "two" only two of them.
    Their requests interleaved, each chain spreads its own requests over the models it
    lists: turns are not one cycle shared by both, which sent every request of "two" to the
    same key (and none of the default chain's to it)."""
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c).replace(
        f'models = ["{A}", "{B}"]', f'models = ["{A}", "{B}", "{C}"]').replace(
        "[routing]", f'[chains.two]\nmodels = ["{A}", "{B}"]\n[routing]'))
    full, two = [], []
    for _ in range(6):
        full += await served(d, 1)
        two += await served(d, 1, "two")
    assert Counter(full) == {A: 2, B: 2, C: 2}
    assert Counter(two) == {A: 3, B: 3}


def test_the_available_come_first_whichever_are_out() -> None:
    """Every set of models out, in a pool of four: the order is the turn's order with those
    available first, each part in its order (the last model's state is asked only when it
    matters)."""
    members = ("a", "b", "c", "d")
    pool = PoolConfig("g", members, "round_robin", (1.0, 2.0, 1.0, 1.0))
    for r in range(len(members) + 1):
        for down in itertools.combinations(members, r):
            asked: list[str] = []

            def available(m: str, down: tuple[str, ...] = down,
                          asked: list[str] = asked) -> bool:
                asked.append(m)
                return m not in down

            balancer = Balancer({"g": pool}, available=available, inflight=lambda _: 0)
            plain = Balancer({"g": pool}, available=lambda _: True, inflight=lambda _: 0)
            for _ in range(5):
                turn = plain.order(members)
                want = (*[m for m in turn if m not in down], *[m for m in turn if m in down])
                assert balancer.order(members) == want
            if not down:
                assert len(asked) == 5 * 3  # never the last of the four


async def test_the_status_names_the_next_turn_whatever_order_a_chain_lists_the_pool(
        fake_openai: Any, start_daemon: Any) -> None:
    """The default chain lists the pool's models in the other order: the turns are the
    pool's (one cycle for the same models, ties in the pool's order), so /v1/status's "next"
    is the model the next request gets."""
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c).replace(
        f'primary = "{A}"\nfallbacks = ["{B}", "{C}"]',
        f'primary = "{B}"\nfallbacks = ["{A}", "{C}"]'))
    got, told = [], []
    for _ in range(4):
        told.append((await d.http.get("/v1/status")).json()["pools"]["gpt"]["next"])
        got += await served(d, 1)
    assert told == got == [A, B, A, B]
    assert Counter(await served(d, 4, "gpt")) == {A: 2, B: 2}


async def test_a_reload_that_drops_a_pool_and_its_model_midway(fake_openai: Any,
                                                               start_daemon: Any) -> None:
    """A request under way on key2 when a reload removes the pool and key2: it ends on the
    configuration it started with; the requests after go to key1 alone, and a reload that
    brings the pool back spreads them again, its turns anew."""
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c))
    text = Path(d.sup.config_path).read_text()
    assert await served(d, 1) == [A]
    b.push("slow:0.3")
    under_way = asyncio.create_task(chat(d))  # key2's turn

    async def on_key2() -> None:
        while not b.chat_requests():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(on_key2(), 5)
    Path(d.sup.config_path).write_text(
        text.replace(f'[pools.gpt]\nmodels = ["{A}", "{B}"]\n', "")
        .replace(f'[models."{B}"]\nprovider = "key2"\nname = "gpt-5"\n', "")
        .replace(f'fallbacks = ["{B}", "{C}"]', f'fallbacks = ["{C}"]'))
    assert (await d.http.post("/v1/reload")).status_code == 200
    assert await served(d, 3) == [A, A, A]
    assert (await under_way).headers["x-failoverd-model"] == B
    Path(d.sup.config_path).write_text(text)
    assert (await d.http.post("/v1/reload")).status_code == 200
    assert await served(d, 2) == [A, B]


async def test_auto_routing_spreads_over_a_pool_in_its_tier(fake_openai: Any,
                                                            start_daemon: Any) -> None:
    a, b, c = await three(fake_openai)
    d = await start_daemon(pooled(a, b, c)
                           .replace('name = "gpt-5"\n', 'name = "gpt-5"\ntier = "small"\n')
                           .replace('name = "claude"\n', 'name = "claude"\ntier = "large"\n'))
    got = await served(d, 4, "auto")
    assert Counter(got) == {A: 2, B: 2}
    assert (await d.http.post(f"/v1/models/{A}/open", json={})).status_code == 200
    resp = await chat(d, "auto")
    assert resp.headers["x-failoverd-model"] == B
    assert "x-failoverd-failover" not in resp.headers
