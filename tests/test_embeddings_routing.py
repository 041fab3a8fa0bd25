"""POST /v1/embeddings end to end: which models an embeddings request may reach (an embedding
model alone, or down a chain of them; never a chat model, nor a chat request an embedding
model), the configuration rules that keep the two apart, the body's validation, breakers and
probes, the fast path, and what /v1/models and /metrics say. The daemon runs in-process on a
Unix socket; `simulated` providers are the upstreams (their vectors are deterministic), and an
HTTP upstream only where a probe's call must be told from a chat."""

from __future__ import annotations

import asyncio
import base64
import datetime
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import web

from failoverd import config
from failoverd.clock import ManualClock
from tests.fakes.base import Logged, fake_fixture
from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO, problems, status
from tests.test_fastpath import connect, paths, post, read_answer
from tests.test_sdk_clients import curl

EMBED = "sim/embed"  # upstream name "nomic-embed-text"
DOWN = "down/embed"  # every call a 429; upstream name "bge-m3"
BGE = "sim/bge"  # upstream name "bge-m3" too: with DOWN, an ambiguous name
CHAT = "sim/chat"  # a chat model whose upstream name is EMBED's
VECTORS = "vectors"  # the chain DOWN, EMBED
TALK = "talk"  # a chain of chat models
FAILOVERD = str(Path(sys.executable).parent / "failoverd")


def sim_config(*, breaker: str = "") -> str:
    """A config body for start_daemon: simulated providers `sim` (answers) and `down` (a 429
    with retry-after 1 s, more than retry_after_max: no same-model retry). No primary and
    fallbacks_from_models: the default chain is whatever chat models there are (CHAT)."""
    return f"""
[providers.sim]
kind = "simulated"
[providers.down]
kind = "simulated"
simulate_failure = "rate_limit"
[models."{EMBED}"]
provider = "sim"
name = "nomic-embed-text"
capabilities = ["embeddings"]
[models."{DOWN}"]
provider = "down"
name = "bge-m3"
capabilities = ["embeddings"]
[models."{BGE}"]
provider = "sim"
name = "bge-m3"
capabilities = ["embeddings"]
[models."{CHAT}"]
provider = "sim"
name = "nomic-embed-text"
[chains.{VECTORS}]
models = ["{DOWN}", "{EMBED}"]
[chains.{TALK}]
models = ["{CHAT}"]
[routing]
fallbacks_from_models = true
retry_after_max = 0.2
when_all_unavailable = "fail"
[breaker]
{breaker}
[probes]
kind = "none"
"""


@pytest.fixture
async def d(start_daemon: Any) -> Any:
    return await start_daemon(sim_config())


async def embed(d: Any, model: str, text: Any = "hello", *, headers: dict[str, str] | None = None,
                **extra: Any) -> httpx.Response:
    return await d.http.post("/v1/embeddings", json={"model": model, "input": text, **extra},
                             headers=headers)


def vectors(resp: httpx.Response) -> list[list[float]]:
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert [item["index"] for item in data] == list(range(len(data)))
    return [item["embedding"] for item in data]


def error(resp: httpx.Response, status_code: int) -> dict[str, Any]:
    assert resp.status_code == status_code, resp.text
    err: dict[str, Any] = resp.json()["error"]
    return err


async def recent_events(d: Any) -> list[dict[str, Any]]:
    """The event ring as GET /v1/events?recent=1 gives it."""
    resp = await d.http.get("/v1/events", params={"recent": "1"})
    assert resp.status_code == 200
    return [orjson.loads(line[5:]) for line in resp.text.splitlines()
            if line.startswith("data:")]


def float32(values: list[float]) -> list[float]:
    """`values` as little-endian float32 holds them (what a base64 vector carries)."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


# ---------------------------------------------------------------------- configuration

CONFIG_BASE = """
[providers.sim]
kind = "simulated"
[providers.claude]
kind = "anthropic"
api_key_env = "ANTHROPIC_KEY"
[models."sim/embed"]
provider = "sim"
capabilities = ["embeddings"]
[models."sim/chat"]
provider = "sim"
[models."sim/embed2"]
provider = "sim"
capabilities = ["embeddings"]
[models."sim/chat2"]
provider = "sim"
"""
ENV = {"ANTHROPIC_KEY": "sk-ant-test"}
# each: what is added to CONFIG_BASE, and the problems it makes (all of them, by key path)
CONFIG_PROBLEMS = {
    "with other capabilities": (
        '[models."sim/both"]\nprovider = "sim"\ncapabilities = ["embeddings", "tools", '
        '"vision"]\n',
        ['models."sim/both".capabilities: \'embeddings\' marks an embedding model, which has '
         "no chat capabilities; remove 'tools', 'vision'"]),
    "with a tier": (
        '[models."sim/tiered"]\nprovider = "sim"\ncapabilities = ["embeddings"]\n'
        'tier = "small"\n',
        ['models."sim/tiered".tier: an embedding model takes no part in auto routing']),
    "on an anthropic provider": (
        '[models."claude/embed"]\nprovider = "claude"\ncapabilities = ["embeddings"]\n',
        ['models."claude/embed".capabilities: provider kind \'anthropic\' has no embeddings '
         "API (kinds with one: openai, gemini, ollama, vertex, simulated)"]),
    "as the primary and a fallback": (
        '[routing]\nprimary = "sim/embed"\nfallbacks = ["sim/chat", "sim/embed2"]\n',
        ["routing.primary: 'sim/embed' is an embedding model",
         "routing.fallbacks[1]: 'sim/embed2' is an embedding model"]),
    "mixed with chat models in a chain": (
        '[chains.mixed]\nmodels = ["sim/chat", "sim/embed", "sim/embed2"]\n'
        '[chains.mixed_too]\nmodels = ["sim/embed", "sim/chat"]\n',
        ["chains.mixed.models: mixes embedding models (sim/embed, sim/embed2) with chat "
         "models", "chains.mixed_too.models: mixes embedding models (sim/embed) with chat "
         "models"]),
}


@pytest.mark.parametrize("case", list(CONFIG_PROBLEMS))
def test_embedding_models_misconfigured_are_problems_by_key_path(case: str) -> None:
    extra, expected = CONFIG_PROBLEMS[case]
    found = problems(CONFIG_BASE + extra, ENV)
    assert len(found) == len(expected), found
    for problem, start in zip(found, expected, strict=True):
        assert problem.startswith(start), (problem, start)


def test_the_default_chain_never_holds_an_embedding_model() -> None:
    # the first [models] entry is an embedding model: the first chat model is the primary,
    # and fallbacks_from_models takes the chat models only
    cfg = config.loads(CONFIG_BASE + "[routing]\nfallbacks_from_models = true\n", env=ENV)
    assert cfg.routing.primary == ""
    assert cfg.default_chain == ("sim/chat", "sim/chat2")
    cfg = config.loads(CONFIG_BASE, env=ENV)
    assert cfg.default_chain == ("sim/chat",)
    cfg = config.loads(CONFIG_BASE + '[routing]\nprimary = "sim/chat2"\n'
                       "fallbacks_from_models = true\n", env=ENV)
    assert cfg.default_chain == ("sim/chat2", "sim/chat")
    assert cfg.fallbacks_for("sim/chat") == ("sim/chat", "sim/chat2")
    # a chain of embedding models alone is fine, and so is a config of them alone
    cfg = config.loads(CONFIG_BASE + '[chains.vec]\nmodels = ["sim/embed2", "sim/embed"]\n',
                       env=ENV)
    assert cfg.chains["vec"].models == ("sim/embed2", "sim/embed")
    cfg = config.loads('[providers.sim]\nkind = "simulated"\n[models."sim/e"]\n'
                       'provider = "sim"\ncapabilities = ["embeddings"]\n', env={})
    assert cfg.default_chain == ()


async def test_check_config_lists_every_embedding_problem_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.toml"
    path.write_text(CONFIG_BASE + "".join(extra for extra, _ in CONFIG_PROBLEMS.values()))
    proc = await asyncio.create_subprocess_exec(
        FAILOVERD, "--check-config", "--config", str(path), env={**os.environ, **ENV},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2, out.decode()
    lines = out.decode().splitlines()
    assert str(path) in lines[0]
    assert [line.strip().split(": ", 1)[0] for line in lines[1:]] == [
        'models."sim/both".capabilities', 'models."sim/tiered".tier',
        'models."claude/embed".capabilities', "routing.primary", "routing.fallbacks[1]",
        "chains.mixed.models", "chains.mixed_too.models"]


# ---------------------------------------------------------------------- routing


async def test_an_embedding_model_is_served_alone(d: Any) -> None:
    resp = await embed(d, EMBED, ["first text", "second text"])
    first, second = vectors(resp)
    assert len(first) == len(second) == 64 and first != second
    assert abs(sum(x * x for x in first) - 1) < 1e-4  # a unit vector
    assert resp.headers["x-failoverd-model"] == EMBED
    assert resp.headers["x-failoverd-attempts"] == "1"
    assert "x-failoverd-failover" not in resp.headers
    body = resp.json()
    assert (body["object"], body["model"]) == ("list", "nomic-embed-text")
    # 10 and 11 characters: len // 4 + 1 tokens each
    assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    # deterministic: the same text embeds the same way, alone or among others
    assert vectors(await embed(d, EMBED, "second text")) == [second]
    short = vectors(await embed(d, EMBED, "second text", dimensions=3))[0]
    assert len(short) == 3 and abs(sum(x * x for x in short) - 1) < 1e-4

    # a failing embedding model is not replaced by anything: vectors of another model would
    # not be comparable with the ones the client has stored
    resp = await embed(d, DOWN)
    err = error(resp, 503)
    assert err["code"] == "no_model_available"
    assert [(a["model"], a["reason"]) for a in err["attempts"]] == [(DOWN, "rate_limit")]
    assert resp.headers["x-failoverd-attempts"] == "1"
    assert "x-failoverd-model" not in resp.headers
    assert "Retry-After" in resp.headers
    metrics = (await d.http.get("/metrics")).text
    assert "failoverd_failovers_total{" not in metrics
    assert 'failoverd_requests_total{model="",outcome="no_model_available"} 1' in metrics


async def test_a_chain_of_embedding_models_fails_over(d: Any) -> None:
    resp = await embed(d, VECTORS, ["first text", "second text"])
    assert resp.headers["x-failoverd-model"] == EMBED
    assert resp.headers["x-failoverd-failover"] == f"{DOWN}>{EMBED}:rate_limit"
    assert resp.headers["x-failoverd-attempts"] == "2"
    # the chain's answer is the model's own
    assert vectors(resp) == vectors(await embed(d, EMBED, ["first text", "second text"]))

    failovers = [e for e in await recent_events(d) if e["type"] == "model:failover"]
    assert len(failovers) == 1
    event = failovers[0]
    assert (event["from_model"], event["to_model"]) == (DOWN, EMBED)
    assert (event["reason"], event["status"]) == ("rate_limit", 429)
    metrics = (await d.http.get("/metrics")).text
    assert (f'failoverd_failovers_total{{from_model="{DOWN}",to_model="{EMBED}",'
            f'reason="rate_limit"}} 1') in metrics
    assert f'failoverd_requests_total{{model="{EMBED}",outcome="ok"}} 2' in metrics

    # x-failoverd-no-fallback: the chain's head alone
    resp = await embed(d, VECTORS, headers={"x-failoverd-no-fallback": "1"})
    err = error(resp, 503)
    assert [a["model"] for a in err["attempts"]] == [DOWN]
    assert "x-failoverd-failover" not in resp.headers
    assert len([e for e in await recent_events(d) if e["type"] == "model:failover"]) == 1


async def test_an_operator_rotates_an_embedding_chain(d: Any) -> None:
    resp = await d.http.post(f"/v1/chains/{VECTORS}/next")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"chain": VECTORS, "head": EMBED, "models": [EMBED, DOWN]}
    assert (await status(d))["chains"][VECTORS] == {"models": [EMBED, DOWN], "head": EMBED}
    resp = await embed(d, VECTORS)
    assert resp.headers["x-failoverd-model"] == EMBED
    assert resp.headers["x-failoverd-attempts"] == "1"
    assert "x-failoverd-failover" not in resp.headers
    # pinned, the rotated chain's head is the one served
    resp = await embed(d, VECTORS, headers={"x-failoverd-no-fallback": "true"})
    assert resp.headers["x-failoverd-model"] == EMBED

    resp = await d.http.post(f"/v1/chains/{VECTORS}/reset")
    assert resp.json()["models"] == [DOWN, EMBED]
    resp = await embed(d, VECTORS)
    assert resp.headers["x-failoverd-failover"] == f"{DOWN}>{EMBED}:rate_limit"


async def test_an_upstream_name_is_resolved_among_models_of_the_same_kind(d: Any) -> None:
    # "nomic-embed-text" is EMBED's name and CHAT's: each endpoint finds its own kind
    resp = await embed(d, "nomic-embed-text")
    assert vectors(resp) == vectors(await embed(d, EMBED))
    assert resp.headers["x-failoverd-model"] == EMBED
    resp = await d.http.post("/v1/chat/completions",
                             json={"model": "nomic-embed-text", "messages": HELLO})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == CHAT
    # two embedding models named "bge-m3": ambiguous
    err = error(await embed(d, "bge-m3"), 404)
    assert (err["code"], err["param"]) == ("model_not_found", "model")
    assert "'bge-m3' is ambiguous" in err["message"]
    # an unknown name: the known embedding models and chains, and no chat one
    err = error(await embed(d, "text-embedding-3-large"), 404)
    assert err["code"] == "model_not_found"
    assert err["message"].endswith(f"; known: {EMBED}, {DOWN}, {BGE}, {VECTORS}")


@pytest.mark.parametrize(("model", "names"), [
    pytest.param("default", "'default' names the chat models", id="default"),
    pytest.param("auto", "'auto' names the chat models", id="auto"),
    pytest.param(CHAT, f"model {CHAT!r} is not an embedding model", id="chat model"),
    pytest.param(TALK, f"chain {TALK!r} is a chain of chat models", id="chat chain"),
])
async def test_chat_models_are_refused_on_the_embeddings_endpoint(d: Any, model: str,
                                                                  names: str) -> None:
    err = error(await embed(d, model), 400)
    assert (err["type"], err["code"], err["param"]) == (
        "invalid_request_error", "model_not_embedding", "model")
    assert names in err["message"]
    if model in ("default", "auto"):  # and what to name instead
        assert err["message"].endswith(f"; known: {EMBED}, {DOWN}, {BGE}, {VECTORS}")
    assert (await d.http.get("/metrics")).text.count('outcome="ok"') == 0


async def test_embedding_models_are_refused_on_the_chat_endpoints(d: Any) -> None:
    for model, which in ((EMBED, f"model {EMBED!r} is an embedding model"),
                         (VECTORS, f"chain {VECTORS!r} holds embedding models")):
        resp = await d.http.post("/v1/chat/completions",
                                 json={"model": model, "messages": HELLO})
        err = error(resp, 400)
        assert (err["code"], err["param"]) == ("model_not_chat", "model")
        assert err["message"] == f"{which}: call POST /v1/embeddings"
        resp = await d.http.post("/v1/messages", json={
            "model": model, "max_tokens": 16, "messages": HELLO})
        assert resp.status_code == 400, resp.text
        assert resp.json()["type"] == "error"
        assert resp.json()["error"]["type"] == "invalid_request_error"
        assert resp.json()["error"]["message"] == f"{which}: call POST /v1/embeddings"
        resp = await d.http.post("/v1/responses", json={"model": model, "input": "hi"})
        assert error(resp, 400)["code"] == "model_not_chat"
    # pinned, too, and through the openai SDK
    resp = await d.http.post("/v1/chat/completions", json={"model": EMBED, "messages": HELLO},
                             headers={"x-failoverd-no-fallback": "1"})
    assert error(resp, 400)["code"] == "model_not_chat"
    with pytest.raises(openai.BadRequestError) as info:
        await d.openai.chat.completions.create(model=EMBED, messages=HELLO)
    assert info.value.code == "model_not_chat"
    # the default chain is CHAT alone (no primary, fallbacks_from_models)
    resp = await d.http.post("/v1/chat/completions", json={"model": "default",
                                                           "messages": HELLO})
    assert resp.headers["x-failoverd-model"] == CHAT
    assert (await status(d))["chains"]["default"] == {"models": [CHAT], "head": CHAT}


async def test_a_session_cannot_send_a_chat_to_an_embedding_model(d: Any) -> None:
    for target in (EMBED, VECTORS):
        resp = await d.http.post("/v1/sessions/s1", json={"model": target})
        err = error(resp, 400)
        assert (err["code"], err["param"]) == ("model_not_chat", "model")
        resp = await d.http.post("/v1/chat/completions", json={
            "model": "default", "messages": HELLO}, headers={"x-failoverd-session": "s1"})
        assert resp.headers["x-failoverd-model"] == CHAT
    # nor does a session change where an embeddings request goes
    resp = await d.http.post("/v1/sessions/s2", json={"model": CHAT})
    assert resp.status_code == 200, resp.text
    resp = await embed(d, EMBED, headers={"x-failoverd-session": "s2"})
    assert resp.headers["x-failoverd-model"] == EMBED


EMBEDDINGS_ONLY = ('[providers.sim]\nkind = "simulated"\n'
                   f'[models."{EMBED}"]\nprovider = "sim"\ncapabilities = ["embeddings"]\n'
                   '[probes]\nkind = "none"\n')


async def test_a_config_of_embedding_models_alone_serves_them(start_daemon: Any) -> None:
    d = await start_daemon(EMBEDDINGS_ONLY)
    assert vectors(await embed(d, EMBED))
    # no chat model: the default chain is empty, which a chat request is told
    resp = await d.http.post("/v1/chat/completions",
                             json={"model": "default", "messages": HELLO})
    err = error(resp, 404)
    assert err["code"] == "model_not_found"
    assert "no chat model is configured" in err["message"]
    assert (await status(d))["chains"]["default"] == {"models": [], "head": None}
    assert (await d.http.get("/v1/health")).json() == {"status": "ok",
                                                       "models": {EMBED: "closed"}}


async def test_rotating_an_empty_default_chain_is_a_client_error(start_daemon: Any) -> None:
    d = await start_daemon(EMBEDDINGS_ONLY)
    for action in ("next", "reset"):
        resp = await d.http.post(f"/v1/chains/default/{action}")
        assert resp.status_code == 409, resp.text
        assert resp.json()["error"]["type"] == "invalid_request_error"
        assert resp.json()["error"]["code"] == "chain_empty"
    assert vectors(await embed(d, EMBED))


async def test_auto_without_chat_models_is_the_same_404_as_default(start_daemon: Any) -> None:
    d = await start_daemon(EMBEDDINGS_ONLY)
    resp = await d.http.post("/v1/chat/completions", json={"model": "auto", "messages": HELLO})
    err = error(resp, 404)
    assert err["code"] == "model_not_found"
    assert "no chat model is configured" in err["message"]


# ---------------------------------------------------------------------- the body


BAD_BODIES: list[tuple[Any, str | None, str]] = [
    ({"model": EMBED}, "input", "'input' is required"),
    ({"model": EMBED, "input": ""}, "input", "'input' must not be an empty string"),
    ({"model": EMBED, "input": []}, "input", "'input' must be a non-empty string"),
    ({"model": EMBED, "input": ["a", ""]}, "input", "'input[1]' must not be an empty string"),
    ({"model": EMBED, "input": [[]]}, "input", "'input[0]' must be a non-empty string"),
    ({"model": EMBED, "input": ["text", [1, 2]]}, "input",
     "'input' mixes strings and token arrays"),
    ({"model": EMBED, "input": [[1, 2], "text"]}, "input",
     "'input' mixes strings and token arrays"),
    ({"model": EMBED, "input": [1, -2]}, "input", "'input[0]' must be a non-empty string"),
    ({"model": EMBED, "input": 7}, "input", "'input' must be a non-empty string"),
    ({"model": EMBED, "input": ["x"] * 2049}, "input",
     "'input' holds 2049 items; at most 2048 per request"),
    ({"model": EMBED, "input": "x", "encoding_format": "binary"}, "encoding_format",
     "'encoding_format' must be one of float, base64, got 'binary'"),
    ({"model": EMBED, "input": "x", "dimensions": 0}, "dimensions",
     "'dimensions' must be a positive integer, got 0"),
    ({"model": EMBED, "input": "x", "dimensions": True}, "dimensions",
     "'dimensions' must be a positive integer, got True"),
    ({"model": EMBED, "input": "x", "dimensions": "3"}, "dimensions",
     "'dimensions' must be a positive integer, got '3'"),
    ({"model": EMBED, "input": "x", "user": 5}, "user", "'user' must be a string"),
    ({"input": "x"}, "model", "'model' is required"),
    ({"model": "", "input": "x"}, "model", "'model' is required"),
    ([{"model": EMBED, "input": "x"}], None, "request body must be a JSON object"),
    ("text", None, "request body must be a JSON object"),
]


async def test_a_bad_body_is_a_400_naming_the_param_and_the_daemon_serves_on(d: Any) -> None:
    for body, param, message in BAD_BODIES:
        resp = await d.http.post("/v1/embeddings", json=body)
        err = error(resp, 400)
        assert (err["type"], err["param"]) == ("invalid_request_error", param), body
        assert err["message"].startswith(message), (err["message"], message)
    resp = await d.http.post("/v1/embeddings", content=b'{"model": ',
                             headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    metrics = (await d.http.get("/metrics")).text
    assert f'failoverd_rejected_requests_total{{why="bad_input"}} {len(BAD_BODIES) + 1}' \
        in metrics
    assert "failoverd_requests_total{" not in metrics  # nothing reached a model
    # the limits themselves are fine: 2048 inputs, token arrays, one token array
    resp = await embed(d, EMBED, ["x"] * 2048, dimensions=1)
    assert len(vectors(resp)) == 2048
    assert len(vectors(await embed(d, EMBED, [[1, 2], [3]]))) == 2
    assert len(vectors(await embed(d, EMBED, [1, 2, 3]))) == 1
    assert (await d.http.get("/v1/health")).json()["models"][EMBED] == "closed"


# ---------------------------------------------------------------------- breakers and probes


async def test_failures_open_an_embedding_models_breaker(start_daemon: Any) -> None:
    d = await start_daemon(sim_config(breaker="failure_threshold = 2\nopen_seconds = 30"))
    for _ in range(2):
        error(await embed(d, DOWN), 503)
    entry = (await status(d))["models"][DOWN]
    assert (entry["state"], entry["reason"]) == ("open", "rate_limit")
    opened = [e for e in await recent_events(d) if e["type"] == "breaker:opened"]
    assert [(e["model"], e["reason"]) for e in opened] == [(DOWN, "rate_limit")]
    health = (await d.http.get("/v1/health")).json()
    # overall, and for each kind apart (a monitor may watch one of them)
    assert (health["status"], health["chat"], health["embeddings"]) == (
        "degraded", "ok", "degraded")
    # every chat model out, embeddings up: "degraded" (200) overall, "down" for chat
    assert (await d.http.post(f"/v1/models/{CHAT}/open")).status_code == 200
    resp = await d.http.get("/v1/health")
    assert resp.status_code == 200
    assert (resp.json()["status"], resp.json()["chat"]) == ("degraded", "down")
    assert (await d.http.post(f"/v1/models/{CHAT}/reset")).status_code == 200
    # open: skipped without a call, alone and in its chain
    resp = await embed(d, DOWN)
    assert [a["reason"] for a in error(resp, 503)["attempts"]] == ["unavailable"]
    assert resp.headers["x-failoverd-attempts"] == "0"
    resp = await embed(d, VECTORS)
    assert resp.headers["x-failoverd-model"] == EMBED
    assert resp.headers["x-failoverd-attempts"] == "1"
    models = (await d.http.get("/v1/models")).json()["data"]
    assert {m["id"]: m.get("state") for m in models}[DOWN] == "open"


@dataclass
class VectorsOpenAI(FakeOpenAI):
    """FakeOpenAI's chat and model list, and a minimal POST /v1/embeddings of this module's
    own (logged like the chat; "ok" is one fixed vector per input, an ERRORS key that
    error), so that a probe's call can be told from a chat."""

    def _routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/chat/completions", self._chat)
        router.add_get("/v1/models", self._models)
        router.add_post("/v1/embeddings", self._vectors)

    async def _vectors(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        self.requests.append(Logged(request.path, dict(request.headers), body))
        early = await self._preamble(self._next())
        if early is not None:
            return early
        items = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": i, "embedding": [0.6, -0.8]}
                     for i in range(len(items))],
            "usage": {"prompt_tokens": len(items), "total_tokens": len(items)}})


vectors_openai = fake_fixture(VectorsOpenAI, "vectors_openai")


def probed_config(a: FakeOpenAI) -> str:
    return f"""
[providers.a]
kind = "openai"
base_url = "{a.url}"
[models."a/chat"]
provider = "a"
name = "gpt-test"
[models."a/embed"]
provider = "a"
name = "text-embedding-3-small"
capabilities = ["embeddings"]
max_retries = 0
[routing]
when_all_unavailable = "fail"
[breaker]
failure_threshold = 1
open_seconds = 30
[probes]
kind = "none"
recovery_kind = "chat"
jitter = 0
"""


async def test_a_chat_probe_of_an_embedding_model_embeds_a_word(vectors_openai: Any,
                                                                 start_daemon: Any) -> None:
    a = await vectors_openai()
    clock = ManualClock()
    d = await start_daemon(probed_config(a), clock=clock)
    resp = await d.http.post("/v1/models/a/embed/probe", json={"kind": "chat"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["last_probe"]["ok"] is True
    assert [(r.path, r.body) for r in a.requests] == [
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "ping"})]
    # the chat model on the same upstream gets a chat
    resp = await d.http.post("/v1/models/a/chat/probe", json={"kind": "chat"})
    assert resp.status_code == 200, resp.text
    assert a.requests[-1].path == "/v1/chat/completions"
    assert a.requests[-1].body["messages"] == [{"role": "user", "content": "ping"}]

    # a failed call opens the breaker; the recovery probe (recovery_kind "chat") at the end of
    # its open period embeds "ping", and its success closes the breaker
    a.push("server_error")
    resp = await d.http.post("/v1/embeddings", json={"model": "a/embed", "input": "x"})
    assert error(resp, 503)["attempts"][0]["reason"] == "server_error"
    assert (await status(d))["models"]["a/embed"]["state"] == "open"
    job = d.sup.prober.scheduler.get_job("recover:a/embed")
    assert job is not None
    wait = d.sup.service.health.retry_in("a/embed")
    assert wait is not None and wait > 20
    clock.advance(wait + 0.1)
    sent = len(a.requests)
    job.modify(next_run_time=datetime.datetime.now(datetime.UTC))

    async def closed() -> bool:
        return (await status(d))["models"]["a/embed"]["state"] == "closed"

    async with asyncio.timeout(5):
        while not await closed():
            await asyncio.sleep(0.01)
    assert [(r.path, r.body["input"]) for r in a.requests[sent:]] == [
        ("/v1/embeddings", "ping")]
    assert len(a.chat_requests()) == 1  # the chat model's probe, and nothing else
    types = [e["type"] for e in await recent_events(d)]
    assert "breaker:closed" in types
    metrics = (await d.http.get("/metrics")).text
    assert 'failoverd_probes_total{model="a/embed",outcome="ok"} 2' in metrics
    resp = await d.http.post("/v1/embeddings", json={"model": "a/embed", "input": "x"})
    assert vectors(resp) == [[0.6, -0.8]]


async def test_a_failed_chat_probe_of_an_embedding_model_is_a_probe_failure(
        start_daemon: Any) -> None:
    d = await start_daemon(sim_config(breaker="failure_threshold = 1"))
    resp = await d.http.post(f"/v1/models/{DOWN}/probe", json={"kind": "chat"})
    assert resp.status_code == 502, resp.text
    assert resp.json()["last_probe"]["reason"] == "rate_limit"
    failed = [e for e in await recent_events(d) if e["type"] == "probe:failed"]
    assert [(e["model"], e["kind"]) for e in failed] == [(DOWN, "chat")]
    resp = await d.http.post(f"/v1/models/{EMBED}/probe", json={"kind": "chat"})
    assert resp.status_code == 200 and resp.json()["ok"] is True


# ---------------------------------------------------------------------- fast path, encodings


async def test_the_fast_path_serves_embeddings_on_a_kept_connection(d: Any) -> None:
    before = paths(d)
    texts = ["one", "two", "three"]
    async with connect(d.socket) as (reader, writer):
        for n, text in enumerate(texts, 1):
            writer.write(post({"model": EMBED, "input": text}, "/v1/embeddings"))
            answer = await read_answer(reader)
            assert answer.status == 200, answer
            assert answer.headers["x-failoverd-model"] == EMBED
            assert answer.headers["Content-Type"] == "application/json"
            assert "Connection" not in answer.headers
            assert len(answer.json()["data"][0]["embedding"]) == 64
            assert paths(d) == (before[0] + n, before[1])
        # a refusal on the same connection, which stays open for the next request
        writer.write(post({"model": "default", "input": "x"}, "/v1/embeddings"))
        refused = await read_answer(reader)
        assert refused.status == 400 and refused.json()["error"]["code"] == \
            "model_not_embedding"
        writer.write(post({"model": VECTORS, "input": "one"}, "/v1/embeddings"))
        answer = await read_answer(reader)
        assert answer.headers["x-failoverd-failover"] == f"{DOWN}>{EMBED}:rate_limit"
    assert paths(d) == (before[0] + len(texts) + 2, before[1])
    head, body = await curl("--unix-socket", d.socket, "-H", "Content-Type: application/json",
                            "--data-binary", orjson.dumps({"model": EMBED, "input": "one"}),
                            "http://failoverd/v1/embeddings")
    assert head.startswith("HTTP/1.1 200 OK\r\n"), head
    fields = dict(line.split(": ", 1) for line in head.split("\r\n")[1:])
    assert {k.lower(): v for k, v in fields.items()}["x-failoverd-model"] == EMBED
    assert orjson.loads(body)["data"][0]["embedding"] == \
        vectors(await embed(d, EMBED, "one"))[0]
    assert paths(d)[0] == before[0] + len(texts) + 4  # curl's and the last call
    assert paths(d)[1] == before[1]


async def test_base64_vectors_decode_to_the_float_ones(d: Any) -> None:
    texts = ["a first text", "a second text"]
    floats = vectors(await embed(d, EMBED, texts, encoding_format="float"))
    assert floats == vectors(await embed(d, EMBED, texts))  # float is the default
    encoded = vectors(await embed(d, EMBED, texts, encoding_format="base64"))
    assert all(isinstance(e, str) for e in encoded)
    decoded = [list(struct.unpack(f"<{len(base64.b64decode(e)) // 4}f", base64.b64decode(e)))
               for e in encoded]
    assert decoded == [float32(f) for f in floats]
    # through a chain's failover and with dimensions, too
    encoded = vectors(await embed(d, VECTORS, texts, encoding_format="base64", dimensions=5))
    floats = vectors(await embed(d, EMBED, texts, dimensions=5))
    assert [len(base64.b64decode(e)) for e in encoded] == [20, 20]
    assert [list(struct.unpack("<5f", base64.b64decode(e))) for e in encoded] == \
        [float32(f) for f in floats]
    # the openai SDK asks for base64 and decodes it
    result = await d.openai.embeddings.create(model=EMBED, input=texts)
    assert [list(map(float, item.embedding)) for item in result.data] == \
        [float32(f) for f in vectors(await embed(d, EMBED, texts))]
    assert result.model == "nomic-embed-text"
    assert result.usage.prompt_tokens == 4 + 4  # 12 and 13 characters


# ---------------------------------------------------------------------- models, metrics


async def test_models_list_and_metrics_count_embedding_models(d: Any) -> None:
    data = {m["id"]: m for m in (await d.http.get("/v1/models")).json()["data"]}
    assert data[EMBED]["capabilities"] == ["embeddings"]
    assert data[EMBED]["tier"] is None
    assert data[EMBED]["state"] == "closed"
    assert data[VECTORS]["chain"] == [DOWN, EMBED]
    assert data[CHAT]["capabilities"] == []  # omitted: unknown, listed as none
    one = (await d.http.get(f"/v1/models/{EMBED}")).json()  # the SDKs' models.retrieve
    assert (one["id"], one["capabilities"]) == (EMBED, ["embeddings"])
    await embed(d, EMBED, ["first text", "second text"])  # 3 + 3 tokens
    await embed(d, VECTORS, "hello")  # 2 tokens, after a failover
    metrics = (await d.http.get("/metrics")).text
    assert f'failoverd_requests_total{{model="{EMBED}",outcome="ok"}} 2' in metrics
    assert f'failoverd_tokens_total{{model="{EMBED}",kind="prompt"}} 8' in metrics
    assert f'failoverd_tokens_total{{model="{EMBED}",kind="completion"}}' not in metrics
    assert f'failoverd_usage_unreported_total{{model="{EMBED}"}}' not in metrics
    assert f'failoverd_upstream_latency_seconds_count{{model="{EMBED}",result="ok"}} 2' \
        in metrics
    assert f'failoverd_upstream_latency_seconds_count{{model="{DOWN}",result="error"}} 1' \
        in metrics


async def test_select_previews_an_embedding_chain(d: Any) -> None:
    """POST /v1/select for an embedding chain or model: the candidates its endpoint would
    try, with each one's availability (no requirements to check, no sessions)."""
    resp = await d.http.post("/v1/select", json={"model": VECTORS})
    assert resp.status_code == 200, resp.text
    got = resp.json()
    assert [(c["model"], c["eligible"]) for c in got["candidates"]] == [
        (DOWN, True), (EMBED, True)]
    for _ in range(3):  # DOWN's breaker opens (threshold 3 by default)
        await embed(d, DOWN)
    got = (await d.http.post("/v1/select", json={"model": VECTORS})).json()
    assert [(c["model"], c["eligible"], c["reason"]) for c in got["candidates"]] == [
        (DOWN, False, "open"), (EMBED, True, None)]
    one = (await d.http.post("/v1/select", json={"model": EMBED})).json()
    assert [c["model"] for c in one["candidates"]] == [EMBED]  # alone, as served
