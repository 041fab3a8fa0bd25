"""A review of POST /v1/embeddings, GET /v1/models/{id} and failoverd_cost_usd_total end to
end, as an operator meets them: the real daemon on a Unix socket, real aiohttp upstreams that
answer as servers in the wild do (an error inside a 200, OpenAI's per-request token cap,
llama.cpp's batch limit, vectors a converter cannot take), and the official SDKs.

Passing tests pin what works and is worth keeping: Gemini's batches ending together, half-open
trials given back on every path, a client's short deadline and departure, a hook's abort,
every outcome counted once with its cost, a reload under a request, the model endpoints.
The tests under "defects" were the review's findings, fixed since.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from failoverd.clock import ManualClock
from tests.fakes.base import AppServer
from tests.helpers import failoverctl, status, until
from tests.test_sdk_clients import anthropic_client

Answer = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]


class Upstream(AppServer):
    """A real aiohttp server standing for any upstream: every request is logged (path, JSON
    body) and answered by the next scripted answer, else `default`. `cancelled` counts the
    handlers cut because failoverd dropped the call (aiohttp's handler_cancellation)."""

    def __init__(self, default: Answer) -> None:
        self.default = default
        self.script: list[Answer] = []
        self.requests: list[tuple[str, Any]] = []
        self.cancelled = 0

    async def start(self) -> Upstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        await self._serve(app, "", handler_cancellation=True)
        return self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        self.requests.append((request.path, orjson.loads(raw) if raw else None))
        answer = self.script.pop(0) if self.script else self.default
        try:
            return await answer(request, self.requests[-1][1])
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


@pytest.fixture
async def upstream() -> Any:
    """A factory of started Upstreams, all closed after the test."""
    made: list[Upstream] = []

    async def make(default: Answer) -> Upstream:
        made.append(await Upstream(default).start())
        return made[-1]

    yield make
    for u in made:
        await u.close()


def vectors(vector: Any, *, tokens: int = 3) -> Answer:
    """OpenAI's answer: `vector` for every input (a list of floats, or a base64 string),
    whatever encoding was asked."""
    async def answer(request: web.Request, body: Any) -> web.StreamResponse:
        items = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": i, "embedding": vector}
                     for i in range(len(items))],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
    return answer


def reply(data: Any, status_code: int = 200) -> Answer:
    async def answer(request: web.Request, body: Any) -> web.StreamResponse:
        return web.json_response(data, status=status_code)
    return answer


def hang(release: asyncio.Event | None = None, then: Answer | None = None) -> Answer:
    """No answer (until `release` is set, then `then`'s)."""
    async def answer(request: web.Request, body: Any) -> web.StreamResponse:
        if release is None or then is None:
            await asyncio.sleep(3600)
            raise AssertionError("never answers")
        await release.wait()
        return await then(request, body)
    return answer


def gemini_vectors() -> Answer:
    """batchEmbedContents' answer: one vector per request of the batch."""
    async def answer(request: web.Request, body: Any) -> web.StreamResponse:
        return web.json_response({"embeddings": [{"values": [0.6, -0.8]}
                                                 for _ in body["requests"]]})
    return answer


A, B = "a/te3", "b/te3"  # the same model at two OpenAI-compatible providers
OK_B = [0.5, 0.25]


def pair(a: Upstream, b: Upstream, *, head: str = "", a_model: str = "",
         tail: str = "") -> str:
    """A config body: A at upstream `a`, B at `b`, chain `vectors` = [A, B]; A costs 0.02 USD
    per 1M input tokens; no probes; failing fast when all are down."""
    return f"""{head}
[providers.a]
kind = "openai"
base_url = "{a.url}/v1"
[providers.b]
kind = "openai"
base_url = "{b.url}/v1"
[models."{A}"]
provider = "a"
name = "text-embedding-3-small"
capabilities = ["embeddings"]
cost = {{ input = 0.02 }}
{a_model}
[models."{B}"]
provider = "b"
name = "text-embedding-3-small"
capabilities = ["embeddings"]
[chains.vectors]
models = ["{A}", "{B}"]
[routing]
retry_after_max = 0.2
when_all_unavailable = "fail"
[probes]
kind = "none"
{tail}"""


async def embed(d: Any, model: str, text: Any = "x", *, headers: dict[str, str] | None = None,
                **extra: Any) -> Any:
    return await d.http.post("/v1/embeddings", json={"model": model, "input": text, **extra},
                             headers=headers)


def inflight(d: Any, model: str) -> int:
    """Calls to `model` holding a breaker permit now."""
    value: int = d.sup.service.health.status()["models"][model]["inflight"]
    return value


async def metric_lines(d: Any, *names: str) -> list[str]:
    text = (await d.http.get("/metrics")).text
    return sorted(line for line in text.splitlines()
                  if line.startswith(names) and not line.startswith("#"))


# ---------------------------------------------------------------------- defects

@pytest.mark.parametrize("bad", [[0.5, None], [[0.5], [0.25]]], ids=["null", "nested"])
async def test_a_vector_that_is_no_float32_fails_over_as_invalid_response(
        upstream: Any, start_daemon: Any, bad: list[Any]) -> None:
    a, b = await upstream(vectors(bad)), await upstream(vectors(OK_B))
    d = await start_daemon(pair(a, b))
    # the openai SDK asks for base64: failoverd converts the floats a server sent instead
    raw = await d.openai.embeddings.with_raw_response.create(model="vectors", input="x")
    assert raw.headers["x-failoverd-model"] == B
    assert raw.headers["x-failoverd-failover"] == f"{A}>{B}:invalid_response"
    assert [list(e.embedding) for e in raw.parse().data] == [OK_B]


async def test_a_base64_vector_cut_short_is_invalid_response(upstream: Any,
                                                             start_daemon: Any) -> None:
    odd = base64.b64encode(struct.pack("<f", 0.5) + b"\0").decode()  # 5 bytes
    a, b = await upstream(vectors([])), await upstream(vectors(OK_B))
    d = await start_daemon(pair(a, b))
    for vector in (odd, "AAAA"):  # a server that sends base64 though floats were asked
        a.default = vectors(vector)
        resp = await embed(d, "vectors", encoding_format="float")
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-failoverd-failover"] == f"{A}>{B}:invalid_response"
        assert resp.json()["data"][0]["embedding"] == OK_B


# OpenAI's 400 for an embeddings request over its 300,000-token cap (as langchain#31227,
# gpt-researcher#1524 and spiceai#6142 got it)
TOKENS_PER_REQUEST = {"error": {
    "message": "Requested 453357 tokens, max 300000 tokens per request",
    "type": "max_tokens_per_request", "param": None, "code": "max_tokens_per_request"}}


async def test_openais_tokens_per_request_cap_is_no_rate_limit(upstream: Any,
                                                               start_daemon: Any) -> None:
    a, b = await upstream(reply(TOKENS_PER_REQUEST, 400)), await upstream(vectors(OK_B))
    d = await start_daemon(pair(a, b, tail="[breaker]\nfailure_threshold = 3\n"))
    for _ in range(3):  # a client and its SDK's two retries
        resp = await embed(d, A, ["a long chunk"] * 400)
        assert "rate_limit" not in resp.text
    entry = (await status(d))["models"][A]
    assert (entry["state"], entry["consecutive_failures"]) == ("closed", 0)
    a.default = vectors([1.0])
    assert (await embed(d, A)).status_code == 200  # other clients' small requests go on


# llama.cpp's server for an input longer than its physical batch (n_ubatch, 512 tokens by
# default): a 500 of type server_error (ggml-org/llama.cpp#12295, lemonade-sdk/lemonade#3591)
LLAMACPP_TOO_LARGE = {"error": {
    "code": 500, "message": "input (992 tokens) is too large to process. increase the physical "
    "batch size (current batch size: 512)", "type": "server_error"}}


async def test_llamacpp_input_over_its_batch_is_no_server_fault(upstream: Any,
                                                                start_daemon: Any) -> None:
    a, b = await upstream(reply(LLAMACPP_TOO_LARGE, 500)), await upstream(vectors(OK_B))
    d = await start_daemon(pair(a, b, a_model="max_retries = 1",
                                tail="[breaker]\nfailure_threshold = 2\n"))
    for n in (1, 2):
        resp = await embed(d, A, "a chunk of 992 tokens")
        assert resp.json()["error"]["attempts"][0]["reason"] in ("context_overflow",
                                                                 "incapable")
        assert len(a.requests) == n  # no same-model retry of the same input
    entry = (await status(d))["models"][A]
    assert (entry["state"], entry["consecutive_failures"]) == ("closed", 0)


async def test_a_server_that_ignores_dimensions_is_incapable(upstream: Any,
                                                              start_daemon: Any) -> None:
    """llama.cpp and LM Studio ignore `dimensions`: vectors of another length than asked are
    not served (a store of 256-dimension vectors cannot take 768); the model is incapable of
    the request, not broken (no breaker count), and the chain goes on."""
    a = await upstream(vectors([0.1, 0.2, 0.3, 0.4]))  # always four, whatever is asked
    b = await upstream(vectors([0.5, 0.25]))
    d = await start_daemon(pair(a, b, tail="[breaker]\nfailure_threshold = 1\n"))
    for encoding in ("float", "base64"):
        resp = await embed(d, "vectors", dimensions=2, encoding_format=encoding)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-failoverd-failover"] == f"{A}>{B}:incapable"
    resp = await embed(d, A, dimensions=2)
    assert resp.status_code == 503
    assert "vectors of 4 dimensions where 2 were asked for" in resp.json()["error"][
        "attempts"][0]["message"]
    assert resp.headers["x-should-retry"] == "false"
    assert (await status(d))["models"][A]["state"] == "closed"
    assert (await embed(d, A)).status_code == 200  # without dimensions it serves


async def test_the_simulated_provider_bounds_the_vectors_it_makes(start_daemon: Any) -> None:
    """Vectors are made on the event loop: 2048 inputs of 4096 dimensions would hold every
    other request for seconds, so the simulated upstream refuses more than 2^20 values, as
    a real server bounds its batch."""
    d = await start_daemon('[providers.s]\nkind = "simulated"\n[models."s/e"]\n'
                           'provider = "s"\ncapabilities = ["embeddings"]\n'
                           '[probes]\nkind = "none"\n')
    resp = await embed(d, "s/e", ["text"] * 2048, dimensions=4096)
    assert resp.status_code == 400 and "2048 x 4096" in resp.text
    resp = await embed(d, "s/e", ["text"] * 16, dimensions=4096)
    assert resp.status_code == 200 and len(resp.json()["data"]) == 16


def floats_only(refusal: str) -> Answer:
    """A server that cannot send base64: for a base64 request, vLLM's 400 (before 0.6)
    (`refusal` "400") or OpenRouter's empty list ("empty"); floats otherwise."""
    async def answer(request: web.Request, body: Any) -> web.StreamResponse:
        if body.get("encoding_format") == "base64":
            if refusal == "400":
                return web.json_response({"object": "error", "message": "base64 encoding is "
                                          "not currently supported", "type":
                                          "BadRequestError", "param": None, "code": 400},
                                         status=400)
            return web.json_response({"object": "list", "data": [], "model": body["model"]})
        return await vectors([0.5, -0.25])(request, body)
    return answer


@pytest.mark.parametrize("refusal", ["400", "empty"])
async def test_a_server_without_base64_is_asked_for_floats(upstream: Any, start_daemon: Any,
                                                           refusal: str) -> None:
    """The official SDKs ask for base64 unless told; a server that cannot send it is asked
    for floats once it refused (in the same attempt), and from then on at once; the client
    gets the base64 it asked for."""
    a, b = await upstream(floats_only(refusal)), await upstream(vectors(OK_B))
    d = await start_daemon(pair(a, b))
    for _ in range(2):
        raw = await d.openai.embeddings.with_raw_response.create(model=A, input="x")
        assert raw.headers["x-failoverd-attempts"] == "1"
        assert "x-failoverd-failover" not in raw.headers
        assert [list(e.embedding) for e in raw.parse().data] == [[0.5, -0.25]]
    assert [body.get("encoding_format") for _, body in a.requests] == [
        "base64", "float", "float"]
    assert b.requests == []
    # a client that asks for floats itself was never the problem
    resp = await embed(d, A, encoding_format="float")
    assert resp.json()["data"][0]["embedding"] == [0.5, -0.25]


# ---------------------------------------------------------------------- what works

async def test_an_error_inside_a_200_fails_the_chain_over(upstream: Any,
                                                          start_daemon: Any) -> None:
    # OpenRouter answers some failures with a 200 whose body is an error
    in_band = {"error": {"message": "Rate limit exceeded: free-models-per-min.", "code": 429}}
    a, b = await upstream(reply(in_band)), await upstream(vectors(OK_B))
    d = await start_daemon(pair(a, b))
    result = await d.openai.embeddings.with_raw_response.create(model="vectors", input="x")
    assert result.headers["x-failoverd-failover"] == f"{A}>{B}:rate_limit"
    assert [list(e.embedding) for e in result.parse().data] == [OK_B]
    assert (await status(d))["models"][A]["reason"] in (None, "rate_limit")


def gemini_pair(g: Upstream, b: Upstream, *, tail: str = "") -> str:
    """Gemini model G (one call at a time, no same-model retry) and B, chain [G, B]."""
    return f"""
[providers.g]
kind = "gemini"
base_url = "{g.url}"
api_key_env = "GEMINI_KEY"
[providers.b]
kind = "openai"
base_url = "{b.url}/v1"
[models."g/emb"]
provider = "g"
name = "gemini-embedding-001"
capabilities = ["embeddings"]
max_concurrency = 1
max_retries = 0
[models."{B}"]
provider = "b"
name = "text-embedding-3-small"
capabilities = ["embeddings"]
[chains.vectors]
models = ["g/emb", "{B}"]
[routing]
when_all_unavailable = "fail"
[probes]
kind = "none"
{tail}"""


GEMINI_429 = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                        "message": "Resource has been exhausted (e.g. check quota)."}}


async def test_gemini_batches_end_together_and_give_the_model_back(upstream: Any,
                                                                   start_daemon: Any) -> None:
    g, b = await upstream(hang()), await upstream(vectors(OK_B))
    g.script = [reply(GEMINI_429, 429)]  # the first batch; the others never answer
    d = await start_daemon(gemini_pair(g, b), env={"GEMINI_KEY": "k"})
    async with asyncio.timeout(5):
        resp = await embed(d, "vectors", ["text"] * 250)  # three batches
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-failover"] == f"g/emb>{B}:rate_limit"
    assert len(resp.json()["data"]) == 250
    # the batches still running were called off, and the model's one slot is free again
    await until(lambda: g.cancelled == len(g.requests) - 1)
    assert (await status(d))["models"]["g/emb"]["inflight"] == 0
    g.default = gemini_vectors()
    resp = await embed(d, "g/emb", ["text"] * 250)
    assert resp.headers["x-failoverd-model"] == "g/emb" and len(resp.json()["data"]) == 250
    assert all(path.endswith("/models/gemini-embedding-001:batchEmbedContents")
               and len(body["requests"]) <= 100 for path, body in g.requests)


async def test_a_half_open_trial_survives_incapable_and_abandoned_requests(
        upstream: Any, start_daemon: Any) -> None:
    g, b = await upstream(hang()), await upstream(vectors(OK_B))
    g.script = [reply({"error": {"code": 500, "status": "INTERNAL",
                                 "message": "An internal error has occurred."}}, 500)]
    clock = ManualClock()
    d = await start_daemon(gemini_pair(g, b, tail="[breaker]\nfailure_threshold = 1\n"
                                                  "half_open_calls = 1\n"),
                           env={"GEMINI_KEY": "k"}, clock=clock)
    assert (await embed(d, "g/emb")).status_code == 503
    assert (await status(d))["models"]["g/emb"]["state"] == "open"
    wait = d.sup.service.health.retry_in("g/emb")
    assert wait is not None
    clock.advance(wait + 0.1)
    # token ids: Gemini embeds text only; no call, and the trial is not used up
    resp = await embed(d, "g/emb", [[1, 2, 3]])
    assert resp.json()["error"]["attempts"][0]["reason"] == "incapable"
    assert resp.headers["x-failoverd-attempts"] == "0"
    # a client that leaves while three batches run: all three called off, the trial back
    sent = len(g.requests)
    leaving = asyncio.create_task(embed(d, "g/emb", ["text"] * 250))
    await until(lambda: len(g.requests) == sent + 3)
    leaving.cancel()
    await until(lambda: g.cancelled == 3)
    await until(lambda: inflight(d, "g/emb") == 0)
    g.default = gemini_vectors()
    resp = await embed(d, "g/emb", ["text"] * 250)
    assert resp.status_code == 200, resp.text
    entry = (await status(d))["models"]["g/emb"]
    assert (entry["state"], entry["inflight"]) == ("closed", 0)


async def test_a_short_client_deadline_and_a_client_that_leaves(upstream: Any,
                                                                start_daemon: Any) -> None:
    a, b = await upstream(hang()), await upstream(vectors(OK_B))
    d = await start_daemon(pair(a, b, a_model="max_concurrency = 1",
                                tail="[breaker]\nfailure_threshold = 1\n"))
    async with asyncio.timeout(3):
        resp = await embed(d, A, headers={"x-failoverd-deadline": "0.2"})
    assert resp.status_code == 503
    assert resp.json()["error"]["attempts"][0]["reason"] == "timeout"
    # the client's impatience is not held against the model
    assert (await status(d))["models"][A]["state"] == "closed"
    leaving = asyncio.create_task(embed(d, A))
    await until(lambda: len(a.requests) == 2)
    leaving.cancel()
    await until(lambda: a.cancelled == 2)  # the upstream call ended with the client
    await until(lambda: inflight(d, A) == 0)
    a.default = vectors([1.0])
    assert (await embed(d, A)).status_code == 200  # its one slot was given back
    assert await metric_lines(d, "failoverd_requests_total") == [
        'failoverd_requests_total{model="",outcome="cancelled"} 1',
        'failoverd_requests_total{model="",outcome="no_model_available"} 1',
        f'failoverd_requests_total{{model="{A}",outcome="ok"}} 1']


async def test_a_hook_aborts_an_embeddings_failover(upstream: Any, start_daemon: Any,
                                                    tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    hook = tmp_path / "hook"
    hook.write_text(f"#!/bin/sh\ncat >> '{seen}'\n"
                    'echo \'{"abort": true, "messages": ["keep one vector space"]}\'\n')
    hook.chmod(0o755)
    limited = {"error": {"message": "Rate limit reached for text-embedding-3-small",
                         "type": "requests", "code": "rate_limit_exceeded"}}
    a, b = await upstream(reply(limited, 429)), await upstream(vectors(OK_B))
    d = await start_daemon(pair(a, b, tail=f'[[hooks]]\nevents = ["model:failover"]\n'
                                           f'exec = ["{hook}"]\ntimeout = 5\n'))
    resp = await embed(d, "vectors")
    assert resp.status_code == 429
    assert resp.json()["error"]["code"] == "failover_aborted"
    assert resp.headers["x-failoverd-notice"] == "keep one vector space"
    assert b.requests == []
    event = orjson.loads(seen.read_bytes())
    assert {k: event[k] for k in ("type", "from_model", "to_model", "reason", "status",
                                  "session", "session_tokens")} == {
        "type": "model:failover", "from_model": A, "to_model": B, "reason": "rate_limit",
        "status": 429, "session": None, "session_tokens": None}
    assert await metric_lines(d, "failoverd_requests_total", "failoverd_failovers_total") == [
        f'failoverd_requests_total{{model="{A}",outcome="aborted"}} 1']


async def test_every_outcome_is_counted_once_with_its_cost(upstream: Any,
                                                           start_daemon: Any) -> None:
    a, b = await upstream(vectors([1.0], tokens=3)), await upstream(vectors(OK_B))
    d = await start_daemon(pair(a, b, head="max_inflight = 1"))
    assert (await embed(d, A)).status_code == 200  # ok: 3 tokens at 0.02 USD per 1M
    assert (await d.http.post("/v1/embeddings", json={"model": A})).status_code == 400
    assert (await embed(d, "no/such-model")).status_code == 404
    bad_param = {"error": {"message": "Invalid value for 'encoding_format'.",
                           "type": "invalid_request_error", "param": "encoding_format",
                           "code": None}}
    a.script = [reply(bad_param, 400)]
    resp = await embed(d, "vectors")
    assert resp.status_code == 400 and resp.json() == bad_param  # passed on, no failover
    a.script = [reply({"error": {"message": "boom"}}, 500)] * 2  # with its one retry
    assert (await embed(d, A)).status_code == 503
    a.script = [hang()]
    first = asyncio.create_task(embed(d, A))
    await until(lambda: len(a.requests) == 5)
    resp = await embed(d, A)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "overloaded"
    first.cancel()
    await until(lambda: a.cancelled == 1)
    await until(lambda: d.sup.service.inflight == 0)
    assert await metric_lines(d, "failoverd_requests_total", "failoverd_rejected",
                              "failoverd_tokens_total", "failoverd_cost_usd_total",
                              "failoverd_usage_unreported") == sorted([
        'failoverd_cost_usd_total{model="a/te3"} 6e-08',
        'failoverd_rejected_requests_total{why="bad_input"} 2',
        'failoverd_rejected_requests_total{why="overloaded"} 1',
        'failoverd_requests_total{model="",outcome="cancelled"} 1',
        'failoverd_requests_total{model="",outcome="no_model_available"} 1',
        f'failoverd_requests_total{{model="{A}",outcome="bad_request"}} 1',
        f'failoverd_requests_total{{model="{A}",outcome="ok"}} 1',
        f'failoverd_tokens_total{{model="{A}",kind="prompt"}} 3'])


async def test_a_reload_under_an_embeddings_request(upstream: Any, start_daemon: Any,
                                                    short_dir: Path) -> None:
    release = asyncio.Event()
    a = await upstream(hang(release, vectors([1.0])))
    b = await upstream(vectors(OK_B))
    d = await start_daemon(pair(a, b))
    running = asyncio.create_task(embed(d, "vectors"))
    await until(lambda: len(a.requests) == 1)
    toml = short_dir / "d.toml"
    text = toml.read_text()
    without_a = text.replace(f'models = ["{A}", "{B}"]', f'models = ["{B}"]')
    toml.write_text(without_a[:without_a.index(f'[models."{A}"]')]
                    + without_a[without_a.index(f'[models."{B}"]'):])
    resp = await d.http.post("/v1/reload")
    assert resp.status_code == 200, resp.text
    release.set()
    served = await running  # the request keeps the configuration it started with
    assert served.status_code == 200 and served.headers["x-failoverd-model"] == A
    assert served.json()["data"][0]["embedding"] == [1.0]
    assert (await embed(d, A)).json()["error"]["code"] == "model_not_found"
    assert (await embed(d, "vectors")).headers["x-failoverd-model"] == B


MODELS = """
[providers.sim]
kind = "simulated"
[models."sim/chat"]
provider = "sim"
context_window = 32768
[models."ol/nomic-embed-text:v1.5"]
provider = "sim"
capabilities = ["embeddings"]
cost = { input = 0.01, cache_read = 0.001 }
[chains."team/vectors:main"]
models = ["ol/nomic-embed-text:v1.5"]
[probes]
kind = "none"
"""


async def test_model_endpoints_for_each_client(start_daemon: Any) -> None:
    d = await start_daemon(MODELS)
    embedder, chain = "ol/nomic-embed-text:v1.5", "team/vectors:main"
    client = anthropic_client(d.socket)
    try:  # the anthropic SDK pages through the list, and retrieves ids with '/' and ':'
        # no Anthropic client calls embeddings: its list leaves them out; retrieve finds them
        assert [m.id async for m in client.models.list()] == ["sim/chat"]
        one = await client.models.retrieve(embedder)
        assert one.type == "model" and one.id == embedder
        own = one.model_dump()["failoverd"]
        assert own["capabilities"] == ["embeddings"]
        assert own["cost"] == {"input": 0.01, "output": 0.0, "cache_read": 0.001}
        assert (await client.models.retrieve(chain)).model_dump()["failoverd"]["chain"] == [
            embedder]
    finally:
        await client.close()
    assert (await d.openai.models.retrieve(chain)).model_dump()["chain"] == [embedder]
    vector = await d.openai.embeddings.create(model=chain, input="x", dimensions=3)
    assert len(vector.data[0].embedding) == 3
    # failoverctl sends no anthropic-version: it gets (and shows) failoverd's own list
    code, out, _ = await failoverctl(d.socket, "models")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()[1:] if line.strip()
            and not line.startswith("-")] == ["sim/chat", embedder]
    assert "embeddings" in next(line for line in out.splitlines() if embedder in line)
    code, out, _ = await failoverctl(d.socket, "--json", "models")
    assert code == 0 and orjson.loads(out)["object"] == "list"


async def test_openai_sdk_embeddings_through_a_chain_of_real_shapes(upstream: Any,
                                                                    start_daemon: Any) -> None:
    # vLLM's answer (id, created, usage with completion_tokens and prompt_tokens_details);
    # the SDK asks base64 and this server sends floats: converted, and decoded by the SDK
    async def vllm(request: web.Request, body: Any) -> web.StreamResponse:
        return web.json_response({
            "id": "embd-1", "object": "list", "created": 1, "model": body["model"],
            "data": [{"index": 0, "object": "embedding", "embedding": [0.125, -0.5]}],
            "usage": {"prompt_tokens": 2, "total_tokens": 2, "completion_tokens": 0,
                      "prompt_tokens_details": None}})

    a, b = await upstream(vllm), await upstream(vectors(OK_B))
    d = await start_daemon(pair(a, b))
    result = await d.openai.embeddings.create(model="vectors", input="x",
                                              extra_body={"input_type": "query"})
    assert [list(e.embedding) for e in result.data] == [[0.125, -0.5]]
    path, body = a.requests[0]
    assert path == "/v1/embeddings"
    assert body == {"model": "text-embedding-3-small", "input": "x",
                    "encoding_format": "base64", "input_type": "query"}
    with pytest.raises(openai.BadRequestError) as info:
        await d.openai.embeddings.create(model="default", input="x")
    assert info.value.code == "model_not_embedding"
