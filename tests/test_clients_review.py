"""[clients.<name>] under attack: the model list and the limits on both paths (the fast path
and aiohttp's, which a chunked body takes), on every proxied endpoint; a session pinned, a
hedge and a failover to a model outside the list; the concurrency permit given back on every
way a request ends; the 429s as the real SDKs take them (Retry-After, x-should-retry)."""

from __future__ import annotations

import asyncio
import calendar
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from failoverd import clients
from failoverd.clientconfig import ClientConfig
from failoverd.clock import ManualClock
from failoverd.hedge import HedgeInfo
from tests.helpers import HELLO, chat, metric, status, tcp_listener, until

UID = os.getuid()
LATE = float(calendar.timegm((2026, 12, 7, 23, 50, 0, 0, 0, 0)))  # ten minutes to 00:00 UTC
PRICED = "cost = { input = 100.0, output = 100.0 }"  # an answer of the fakes: $0.0015


def body(llama: Any, free: Any, cloud: Any, clients: str, head: str = "") -> str:
    """The default chain local/llama (priced, hedged after 50 ms) > cloud/big > local/free,
    each on its own fake; embeddings local/embed and cloud/embed (a chain "vectors" of the
    cloud's first); `clients`: the [clients.*] tables."""
    return f"""{head}
[providers.llama]
kind = "openai"
base_url = "{llama.url}"
[providers.free]
kind = "openai"
base_url = "{free.url}"
[providers.cloud]
kind = "openai"
base_url = "{cloud.url}"
[models."local/llama"]
provider = "llama"
hedge_after = 0.05
{PRICED}
[models."local/free"]
provider = "free"
[models."cloud/big"]
provider = "cloud"
[models."local/embed"]
provider = "free"
capabilities = ["embeddings"]
[models."cloud/embed"]
provider = "cloud"
capabilities = ["embeddings"]
[chains.vectors]
models = ["cloud/embed", "local/embed"]
[routing]
primary = "local/llama"
fallbacks = ["cloud/big", "local/free"]
retry_after_max = 0.2
when_all_unavailable = "fail"
[probes]
kind = "none"
{clients}"""


def batch(**limits: Any) -> str:
    extra = "".join(f"\n{k} = {v}" for k, v in limits.items())
    return f"""
[clients.batch]
uids = [{UID}]
models = ["local/*"]{extra}"""


async def chunked(d: Any, path: str, payload: bytes, **headers: str) -> httpx.Response:
    """A request whose body comes chunked: the fast path hands it to aiohttp."""
    async def parts() -> AsyncIterator[bytes]:
        yield payload

    return await d.http.post(path, content=parts(), headers={
        "Content-Type": "application/json", **headers})


def fast(d: Any) -> Any:
    return d.sup.fast


async def test_the_list_and_the_limits_hold_on_both_paths_and_every_endpoint(
        fake_openai: Any, start_daemon: Any) -> None:
    llama, free, cloud = (await fake_openai(reply="llama"), await fake_openai(reply="free"),
                          await fake_openai(reply="cloud"))
    clock = ManualClock(wall=LATE - 3600)
    d = await start_daemon(body(llama, free, cloud, batch(max_rpm=7)), clock=clock)
    handed = fast(d).handed_off
    chat_cloud = b'{"model": "cloud/big", "messages": [{"role": "user", "content": "hi"}]}'
    resp = await chunked(d, "/v1/chat/completions", chat_cloud)
    assert resp.status_code == 403 and resp.json()["error"]["client"] == "batch"
    assert fast(d).handed_off == handed + 1  # it went through aiohttp's server
    resp = await chunked(d, "/v1/messages", b'{"model": "cloud/big", "max_tokens": 8, '
                         b'"messages": [{"role": "user", "content": "hi"}]}')
    assert resp.status_code == 403
    assert resp.json()["error"]["type"] == "permission_error"
    # every proxied endpoint, on the fast path
    for path, payload in (
            ("/v1/embeddings", {"model": "cloud/embed", "input": "hi"}),
            ("/v1/embeddings", {"model": "vectors", "input": "hi"}),
            ("/v1/completions", {"model": "cloud/big", "prompt": "hi"}),
            ("/v1/responses", {"model": "cloud/big", "input": "hi"})):
        resp = await d.http.post(path, json=payload)
        assert resp.status_code == 403, (path, payload, resp.text)
        assert f"'{payload['model']}'" in resp.json()["error"]["message"]
    resp = await d.http.post("/v1/embeddings", json={"model": "local/embed", "input": "hi"})
    assert resp.status_code == 200
    assert not cloud.requests
    # seven admitted in the minute (the 403s too): the next is refused on either path
    assert (await status(d))["clients"]["batch"]["requests_last_minute"] == 7
    resp = await chunked(d, "/v1/chat/completions", chat_cloud)
    assert resp.status_code == 429 and resp.json()["error"]["limit"] == "max_rpm"
    assert (await d.http.post("/v1/embeddings", json={"model": "local/embed", "input": "hi"})
            ).status_code == 429
    assert (await status(d))["clients"]["batch"]["inflight"] == 0


async def test_a_session_pin_a_hedge_and_a_failover_stay_in_the_list(
        fake_openai: Any, start_daemon: Any) -> None:
    llama, free, cloud = (await fake_openai(reply="llama"), await fake_openai(reply="free"),
                          await fake_openai(reply="cloud"))
    d = await start_daemon(body(llama, free, cloud, batch()))
    # a session whose preference an operator (or another client) set to a cloud model
    resp = await d.http.post("/v1/sessions/job-1", json={"model": "cloud/big"})
    assert resp.status_code == 200
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="local/llama", messages=HELLO, extra_headers={"x-failoverd-session": "job-1"})
    assert raw.headers["x-failoverd-model"] == "local/llama"
    # the slow first model is hedged: to the next model of the client's, not to the cloud
    llama.push("slow:0.5")
    raw = await d.openai.chat.completions.with_raw_response.create(model="local/llama",
                                                                   messages=HELLO)
    assert raw.headers["x-failoverd-model"] == "local/free", dict(raw.headers)
    assert raw.parse().choices[0].message.content == "free"
    # a failover the same way
    llama.push("auth")
    raw = await d.openai.chat.completions.with_raw_response.create(model="local/llama",
                                                                   messages=HELLO)
    assert raw.headers["x-failoverd-model"] == "local/free"
    assert not cloud.requests
    # the session's pin is skipped, visibly, when nothing of the client's serves
    llama.push("auth")
    free.push("auth")
    resp = await chat(d, "local/llama", **{"x-failoverd-session": "job-1"})
    assert resp.status_code == 503
    attempts = {a["model"]: a for a in resp.json()["error"]["attempts"]}
    assert "not in clients.batch.models" in attempts["cloud/big"]["message"]
    assert not cloud.requests
    await until(lambda: d.sup.service.clients.status()["batch"]["inflight"] == 0)


async def test_the_concurrency_permit_comes_back_however_a_request_ends(
        fake_openai: Any, start_daemon: Any) -> None:
    llama, free, cloud = await fake_openai(), await fake_openai(), await fake_openai()
    d = await start_daemon(body(llama, free, cloud, batch(max_concurrency=1)))
    inflight = lambda: d.sup.service.clients.status()["batch"]["inflight"]  # noqa: E731
    # the 403, and a body that is no JSON
    assert (await chat(d, "cloud/big")).status_code == 403
    assert (await d.http.post("/v1/chat/completions", content=b"{")).status_code == 400
    assert inflight() == 0
    # a stream whose client goes away in the middle
    llama.push("slow_stream:0.3")
    async with d.http.stream("POST", "/v1/chat/completions", json={
            "model": "local/llama", "messages": HELLO, "stream": True}) as resp:
        assert resp.status_code == 200
        async for _ in resp.aiter_bytes():
            break
        assert inflight() == 1
        assert (await chat(d, "local/free")).status_code == 429
    await until(lambda: inflight() == 0)
    # a request that hangs and whose client gives up
    free.push("hang")
    task = asyncio.create_task(chat(d, "local/free"))
    await until(lambda: inflight() == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: inflight() == 0)
    assert (await chat(d, "local/free")).status_code == 200
    # every candidate fails: the 503
    llama.push("auth")
    free.push("auth")
    assert (await chat(d, "local/llama")).status_code == 503
    assert inflight() == 0


async def test_the_sdks_do_not_retry_a_spent_cap(
        fake_openai: Any, start_daemon: Any) -> None:
    llama, free, cloud = await fake_openai(), await fake_openai(), await fake_openai()
    clock = ManualClock(wall=LATE)
    clients = f"""
[clients.batch]
uids = [{UID}]
models = ["local/llama"]
max_cost_per_day = 0.001"""
    d = await start_daemon(body(llama, free, cloud, clients), clock=clock)
    assert (await chat(d, "local/llama")).status_code == 200  # $0.0015: past the cap
    # the SDKs' default retries (2) are not spent on it: x-should-retry false
    sdk = openai.AsyncOpenAI(api_key="unused", base_url="http://failoverd/v1",
                             http_client=httpx.AsyncClient(
                                 transport=httpx.AsyncHTTPTransport(uds=d.socket)))
    async with sdk:
        with pytest.raises(openai.RateLimitError) as info:
            await sdk.chat.completions.create(model="local/llama", messages=HELLO)
    assert info.value.code == "insufficient_quota"
    assert info.value.response.headers["retry-after"] == "600"
    claude = anthropic.AsyncAnthropic(api_key="unused", base_url="http://failoverd",
                                      http_client=httpx2.AsyncClient(
                                          transport=httpx2.AsyncHTTPTransport(uds=d.socket)))
    async with claude:
        with pytest.raises(anthropic.RateLimitError):
            await claude.messages.create(model="local/llama", max_tokens=8, messages=HELLO)
    assert await metric(d, 'failoverd_client_requests_total{client="batch",'
                        'outcome="max_cost_per_day"} 2')
    assert len(llama.chat_requests()) == 1


async def test_a_client_lists_only_its_models(fake_openai: Any, start_daemon: Any) -> None:
    llama, free, cloud = await fake_openai(), await fake_openai(), await fake_openai()
    d = await start_daemon(body(llama, free, cloud, f"""
[clients.batch]
uids = [{UID}]
models = ["local/llama", "vectors"]"""))
    listed = [m.id async for m in d.openai.models.list()]
    # its model, its chain and the chain's models (which it may name too)
    assert sorted(listed) == ["cloud/embed", "local/embed", "local/llama", "vectors"]
    assert (await d.openai.models.retrieve("local/llama")).id == "local/llama"
    with pytest.raises(openai.NotFoundError) as info:
        await d.openai.models.retrieve("cloud/big")
    assert info.value.message.endswith(
        "no model, chain or pool 'cloud/big' is configured among client 'batch''s "
        "(clients.batch.models)")
    resp = await d.http.get("/v1/models", headers={"anthropic-version": "2023-06-01"})
    assert [m["id"] for m in resp.json()["data"]] == ["local/llama"]  # chat ones only


async def test_a_client_kept_to_some_models_may_not_change_what_everyone_gets(
        fake_openai: Any, start_daemon: Any, short_dir: Any) -> None:
    llama, free, cloud = await fake_openai(), await fake_openai(), await fake_openai()
    d = await start_daemon(body(llama, free, cloud, batch(max_rpm=100)))
    for path in ("/v1/models/local/free/open", "/v1/models/local/free/reset",
                 "/v1/chains/default/next", "/v1/reload"):
        resp = await d.http.post(path)
        assert resp.status_code == 403, path
        assert resp.json()["error"]["client"] == "batch"
        assert "is the operator's" in resp.json()["error"]["message"]
    assert d.sup.service.model_state("local/free") == "closed"
    # its own session's preference it may set (its requests are narrowed anyway), and read
    assert (await d.http.post("/v1/sessions/job-1", json={"model": "local/free"})
            ).status_code == 200
    assert (await d.http.get("/v1/status")).status_code == 200
    # a client with no model list (limits or not) may, as any peer allowed in
    path = short_dir / "d.toml"
    path.write_text(path.read_text().replace('models = ["local/*"]', ""))
    assert d.sup.service.clients.status()["batch"]["models"] == ["local/*"]
    assert d.sup.reload()
    assert d.sup.service.clients.status()["batch"]["models"] is None
    assert (await d.http.post("/v1/models/local/free/open")).status_code == 200


async def test_count_tokens_keeps_a_client_to_its_models(
        fake_openai: Any, start_daemon: Any) -> None:
    llama, free, cloud = await fake_openai(), await fake_openai(), await fake_openai()
    d = await start_daemon(body(llama, free, cloud, batch()))
    resp = await d.http.post("/v1/messages/count_tokens",
                             json={"model": "cloud/big", "messages": HELLO})
    assert resp.status_code == 403
    assert resp.json()["error"]["type"] == "permission_error"
    assert "clients.batch.models" in resp.json()["error"]["message"]
    # its own models are counted, and with its first model out the count names the next it
    # may use (not cloud/big, the next in the default fallbacks); no request was spent on
    # its limits
    local = await d.http.post("/v1/messages/count_tokens",
                              json={"model": "local/free", "messages": HELLO})
    assert local.status_code == 200 and local.json()["input_tokens"] > 0
    d.sup.service.health.force_open("local/llama", None)
    chain = await d.http.post("/v1/messages/count_tokens",
                              json={"model": "local/llama", "messages": HELLO})
    assert chain.status_code == 200 and chain.headers["x-failoverd-model"] == "local/free"
    assert d.sup.service.clients.status()["batch"]["requests_last_minute"] == 0


async def test_a_reload_swaps_a_client_token_at_once(
        fake_openai: Any, start_daemon: Any, short_dir: Any) -> None:
    llama, free, cloud = await fake_openai(), await fake_openai(), await fake_openai()
    port, head = tcp_listener(short_dir)
    token = short_dir / "batch.token"
    token.write_text("old-token\n")
    d = await start_daemon(body(llama, free, cloud, f"""
[clients.batch]
tcp_token_file = "{token}"
models = ["local/*"]
max_concurrency = 1""", head=head))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as tcp:
        def ask(**headers: str) -> Any:
            return tcp.post("/v1/chat/completions", headers=headers,
                            json={"model": "local/free", "messages": HELLO})

        assert (await ask(Authorization="Bearer old-token")).status_code == 200
        # the daemon-wide token beside it does not take the client's limits away
        free.push("slow:0.5")
        first = asyncio.create_task(ask(**{"x-api-key": "old-token"}))
        await until(lambda: len(free.requests) == 2)
        resp = await ask(Authorization="Bearer s3cret", **{"x-api-key": "old-token"})
        assert resp.status_code == 429
        assert (await first).status_code == 200
        token.write_text("new-token\n")
        assert d.sup.reload()
        assert (await ask(Authorization="Bearer old-token")).status_code == 401
        assert (await ask(Authorization="Bearer new-token")).status_code == 200
        # and the new token is the same client, its counts kept
        assert d.sup.service.clients.status()["batch"]["inflight"] == 0
        assert await metric(d, 'failoverd_client_requests_total{client="batch",'
                            'outcome="served"} 3')


async def test_a_drain_gives_the_permits_back(fake_openai: Any, start_daemon: Any) -> None:
    llama, free, cloud = await fake_openai(), await fake_openai(), await fake_openai()
    d = await start_daemon(body(llama, free, cloud, batch(max_concurrency=2),
                                head="shutdown_timeout = 0.3"))
    clients = d.sup.service.clients
    free.push("slow:0.1")  # finishes within the drain
    free.push("hang")  # cut at its end
    done = asyncio.create_task(chat(d, "local/free"))
    await until(lambda: len(free.requests) == 1)
    cut = asyncio.create_task(chat(d, "local/free"))
    await until(lambda: clients.status()["batch"]["inflight"] == 2)
    await d.stop()
    assert (await done).status_code == 200
    assert (await cut).status_code == 503
    entry = clients.status()["batch"]
    assert entry["inflight"] == 0


async def test_status_metrics_and_log_agree_with_what_happened(
        fake_openai: Any, start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="failoverd.access")
    llama, free, cloud = await fake_openai(), await fake_openai(), await fake_openai()
    clock = ManualClock(wall=LATE - 3600)
    d = await start_daemon(body(llama, free, cloud, batch(max_rpm=5),
                                head="access_log = true"), clock=clock)
    codes = [(await chat(d, model)).status_code
             for model in ("local/free", "cloud/big", "local/llama", "local/free", "cloud/big",
                           "local/free", "local/free")]
    assert codes == [200, 403, 200, 200, 403, 429, 429]
    entry = (await status(d))["clients"]["batch"]
    assert (entry["requests_last_minute"], entry["inflight"], entry["limited"]) == (
        5, 0, "max_rpm")
    assert entry["spent_usd"]["day"] == pytest.approx(0.0015)  # local/llama's one answer
    for outcome, n in (("served", 3), ("forbidden", 2), ("max_rpm", 2)):
        assert await metric(d, f'failoverd_client_requests_total{{client="batch",'
                            f'outcome="{outcome}"}} {n}')
    assert await metric(d, 'failoverd_client_cost_usd_total{client="batch"} 0.0015')
    access = [r.access for r in caplog.records  # type: ignore[attr-defined]
              if r.name == "failoverd.access"]
    assert [(a["status"], a["client"]) for a in access] == [(c, "batch") for c in codes]
    assert [e.fields["limit"] for e in d.sup.service.bus.recent() if e.type == "client:limited"
            ] == ["max_rpm"]


async def test_a_hedge_losers_cost_is_spent_by_the_client_too(
        fake_openai: Any, start_daemon: Any) -> None:
    # a loser that answered in full with the winner is billed by its upstream: the client
    # asked for both calls, so its cap counts both (it counted against the model only)
    llama, free, cloud = await fake_openai(), await fake_openai(), await fake_openai()
    d = await start_daemon(body(llama, free, cloud, batch(max_cost_per_day=1)))
    svc = d.sup.service
    client = next(iter(svc.clients))
    token = clients.CURRENT.set(client)
    try:
        svc.runtime.dispatcher.on_hedge(HedgeInfo(
            "local/llama", "local/free", 0.05, "won", "local/free", None, loser="local/llama",
            loser_usage={"prompt_tokens": 10, "completion_tokens": 5}))
    finally:
        clients.CURRENT.reset(token)
    assert svc.clients.status()["batch"]["spent_usd"]["day"] == pytest.approx(0.0015)
    assert await metric(d, 'failoverd_client_cost_usd_total{client="batch"} 0.0015')
    # a loser of no client's request is the model's alone
    svc.runtime.dispatcher.on_hedge(HedgeInfo(
        "local/llama", "local/free", 0.05, "won", "local/free", None, loser="local/llama",
        loser_usage={"prompt_tokens": 10, "completion_tokens": 5}))
    assert svc.clients.status()["batch"]["spent_usd"]["day"] == pytest.approx(0.0015)


async def test_a_count_past_a_spending_cap_is_no_request(
        fake_openai: Any, start_daemon: Any) -> None:
    # a count narrowed by a reached cap was refused as a bad request (429 with Anthropic's
    # invalid_request_error, no Retry-After), counted as the cap's refusal and could be told
    llama, free, cloud = await fake_openai(), await fake_openai(), await fake_openai()
    d = await start_daemon(body(llama, free, cloud, batch(max_cost_per_day=0.001)))
    assert (await chat(d, "local/llama")).status_code == 200  # $0.0015: past the cap
    resp = await d.http.post("/v1/messages/count_tokens",
                             json={"model": "local/llama", "messages": HELLO})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "local/free"  # where a request would go
    assert resp.json()["input_tokens"] > 0
    scraped = (await d.http.get("/metrics")).text
    assert 'outcome="max_cost_per_day"}' not in scraped
    assert 'failoverd_rejected_requests_total{why="bad_input"} 1' not in scraped
    assert not [e for e in d.sup.service.bus.recent() if e.type == "client:limited"]


async def test_a_count_past_a_spending_cap_with_only_priced_models_is_answered(
        fake_openai: Any, start_daemon: Any) -> None:
    # kept to priced models only, it is still counted (on the first), not refused
    llama, free, cloud = await fake_openai(), await fake_openai(), await fake_openai()
    d2 = await start_daemon(body(llama, free, cloud, batch(max_cost_per_day=0.001).replace(
        '"local/*"', '"local/llama"')))
    assert (await chat(d2, "local/llama")).status_code == 200
    resp = await d2.http.post("/v1/messages/count_tokens",
                              json={"model": "local/llama", "messages": HELLO})
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "local/llama"


def test_a_state_file_with_a_malformed_told_mark_is_read_past() -> None:
    # `told` of another type than a list stopped the daemon's start with a TypeError
    found = clients.Clients(ManualClock())
    found.configure({"a": ClientConfig("a", uids=(1,), max_cost_per_day=1.0)}, {}, {})
    day = found.status()["a"]["spent_usd"]
    key = found._periods(found.clock.time())[0][0]
    for told in (5, True, "max_cost_per_day", None):
        found.restore({"a": {"day": [key, 0.5], "told": told}})
    assert found.status()["a"]["spent_usd"]["day"] == 0.5, day


def test_a_removed_clients_spending_outlives_a_restart() -> None:
    # snapshot() wrote the spending of a client a reload removed, restore() dropped it: a
    # restart then a reload that brought it back started it from nothing
    clock = ManualClock()
    before = clients.Clients(clock)
    before.configure({"a": ClientConfig("a", uids=(1,), max_cost_per_day=1.0)}, {}, {})
    before.charge(next(iter(before)), 0.75)
    before.configure({}, {}, {})  # a reload removed it
    saved = before.snapshot()
    after = clients.Clients(clock)  # the restart, without it
    after.configure({}, {}, {})
    after.restore(saved)
    assert after.snapshot() == saved
    after.configure({"a": ClientConfig("a", uids=(1,), max_cost_per_day=1.0)}, {}, {})
    assert after.status()["a"]["spent_usd"]["day"] == 0.75
