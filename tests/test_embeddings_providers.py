"""POST /v1/embeddings end to end: the official openai SDK over the Unix socket, the real
daemon, and each provider kind's fake upstream speaking its own wire format (OpenAI's
/v1/embeddings, Ollama's /api/embed, Gemini's batchEmbedContents): the vectors, what went
upstream, failures and failover down a chain of embedding models, token-id inputs, and the
encodings."""

from __future__ import annotations

import base64
import struct
from typing import Any

import openai
import pytest

from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import EMBEDDING_DIMENSIONS, ERRORS, FakeOpenAI, fake_embedding

KINDS = ("openai", "ollama", "gemini")
MODEL = {"openai": "oa/te3", "ollama": "ol/nomic", "gemini": "gm/emb"}
NAME = {"openai": "text-embedding-3-small", "ollama": "nomic-embed-text",
        "gemini": "gemini-embedding-001"}
BACKUP = "bk/te3"  # the second model of every chain: the same model at another provider
KEYS = {"OA_KEY": "sk-oa", "OL_KEY": "ol-key", "GM_KEY": "g-key", "BK_KEY": "sk-bk"}
TOKENS = [[1, 2, 3], [4, 5]]


def config(oa: FakeOpenAI, ol: FakeOllama, gm: FakeGemini, bk: FakeOpenAI) -> str:
    chains = "".join(f'[chains."{kind}-then-backup"]\nmodels = ["{MODEL[kind]}", "{BACKUP}"]\n'
                     for kind in KINDS)
    chains += f'[chains."ada-then-backup"]\nmodels = ["oa/ada", "{BACKUP}"]\n'
    return f"""
[providers.oa]
kind = "openai"
base_url = "{oa.url}"
api_key_env = "OA_KEY"
[providers.ol]
kind = "ollama"
base_url = "{ol.url}"
api_key_env = "OL_KEY"
[providers.gm]
kind = "gemini"
base_url = "{gm.url}"
api_key_env = "GM_KEY"
[providers.bk]
kind = "openai"
base_url = "{bk.url}"
api_key_env = "BK_KEY"
[models."{MODEL['openai']}"]
provider = "oa"
name = "{NAME['openai']}"
capabilities = ["embeddings"]
max_retries = 0
[models."oa/ada"]
provider = "oa"
name = "text-embedding-ada-002"
capabilities = ["embeddings"]
[models."{MODEL['ollama']}"]
provider = "ol"
name = "{NAME['ollama']}"
capabilities = ["embeddings"]
max_retries = 0
[models."ol/missing"]
provider = "ol"
name = "mxbai-embed-large"
capabilities = ["embeddings"]
[models."{MODEL['gemini']}"]
provider = "gm"
name = "{NAME['gemini']}"
capabilities = ["embeddings"]
max_retries = 0
[models."{BACKUP}"]
provider = "bk"
name = "text-embedding-3-small"
capabilities = ["embeddings"]
{chains}
[routing]
retry_after_max = 0.2
when_all_unavailable = "fail"
[probes]
interval = 3600
jitter = 0
"""


@pytest.fixture
async def rig(fake_openai, fake_ollama, fake_gemini, start_daemon):
    fakes = {"openai": await fake_openai(), "ollama": await fake_ollama(),
             "gemini": await fake_gemini()}
    bk = await fake_openai()
    d = await start_daemon(config(fakes["openai"], fakes["ollama"], fakes["gemini"], bk),
                           env=KEYS)
    return fakes, bk, d


def expected(kind: str, item: Any, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The vector the kind's fake gives `item` (OpenAI's and Ollama's name the model as
    failoverd sent it, Gemini's as its URL does)."""
    return fake_embedding(NAME[kind], item, dimensions)


def embeds(fake: Any) -> list[Any]:
    """The embeddings requests a fake got, whatever its kind."""
    return fake.embedding_requests() if isinstance(fake, FakeOpenAI) else fake.embed_requests()


def sent_inputs(kind: str, body: dict[str, Any]) -> list[Any]:
    """The inputs a logged upstream body carries, one by one."""
    if kind == "gemini":
        assert all(r["model"] == f"models/{NAME['gemini']}" for r in body["requests"])
        return [r["content"]["parts"][0]["text"] for r in body["requests"]]
    value = body["input"]
    return [value] if isinstance(value, str) else value


def attempts(resp: Any) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = resp.json()["error"]["attempts"]
    return result


@pytest.mark.parametrize("kind", KINDS)
async def test_sdk_default_base64_vectors_and_what_went_upstream(rig, kind: str) -> None:
    fakes, bk, d = rig
    fake = fakes[kind]
    raw = await d.openai.embeddings.with_raw_response.create(model=MODEL[kind],
                                                             input=["alpha", "beta"])
    # the SDK asked for base64 (its default) and got it, whatever the upstream sends
    wire = raw.http_response.json()
    assert all(isinstance(item["embedding"], str) for item in wire["data"])
    assert raw.headers["x-failoverd-model"] == MODEL[kind]
    resp = raw.parse()
    assert [e.embedding for e in resp.data] == [expected(kind, "alpha"), expected(kind, "beta")]
    assert [e.index for e in resp.data] == [0, 1]
    assert resp.model == NAME[kind]
    # OpenAI's count (a token per 4 characters), Ollama's prompt_eval_count, Gemini's none
    assert resp.usage.prompt_tokens == {"openai": 4, "ollama": 4, "gemini": 0}[kind]
    (sent,) = embeds(fake)
    if kind == "openai":
        assert sent.body == {"model": NAME[kind], "input": ["alpha", "beta"],
                             "encoding_format": "base64"}
        assert sent.headers["Authorization"] == "Bearer sk-oa"
    elif kind == "ollama":
        assert sent.body == {"model": NAME[kind], "input": ["alpha", "beta"], "truncate": False}
        assert sent.headers["Authorization"] == "Bearer ol-key"
    else:
        assert sent.path == f"/v1beta/models/{NAME[kind]}:batchEmbedContents"
        assert sent.body == {"requests": [
            {"model": f"models/{NAME[kind]}", "content": {"parts": [{"text": text}]}}
            for text in ("alpha", "beta")]}
        assert sent.headers["x-goog-api-key"] == "g-key"
        assert "key" not in sent.query
    assert bk.requests == []


@pytest.mark.parametrize("kind", KINDS)
async def test_float_encoding_and_dimensions_reach_the_upstream(rig, kind: str) -> None:
    fakes, _, d = rig
    resp = await d.openai.embeddings.create(model=MODEL[kind], input="gamma",
                                            encoding_format="float", dimensions=4)
    assert [e.embedding for e in resp.data] == [expected(kind, "gamma", 4)]
    (sent,) = embeds(fakes[kind])
    assert sent_inputs(kind, sent.body) == ["gamma"]
    if kind == "gemini":
        assert sent.body["requests"][0]["outputDimensionality"] == 4
    else:
        assert sent.body["dimensions"] == 4
    if kind == "openai":
        assert sent.body["encoding_format"] == "float"


@pytest.mark.parametrize(("kind", "behaviour", "reason"), [
    ("openai", "rate_limit", "rate_limit"),
    ("gemini", "rate_limit", "rate_limit"),
    ("ollama", "busy", "overloaded"),  # Ollama itself has no 429: its queue is full
    ("openai", "missing_embedding", "invalid_response"),
    ("ollama", "missing_embedding", "invalid_response"),
    ("gemini", "missing_embedding", "invalid_response"),
])
async def test_failover_down_a_chain_of_embedding_models(rig, kind: str, behaviour: str,
                                                         reason: str) -> None:
    fakes, bk, d = rig
    fakes[kind].push(behaviour)
    raw = await d.openai.embeddings.with_raw_response.create(
        model=f"{kind}-then-backup", input=["one", "two"])
    assert raw.headers["x-failoverd-failover"] == f"{MODEL[kind]}>{BACKUP}:{reason}"
    assert raw.headers["x-failoverd-model"] == BACKUP
    resp = raw.parse()
    assert [e.embedding for e in resp.data] == [
        fake_embedding("text-embedding-3-small", text, EMBEDDING_DIMENSIONS)
        for text in ("one", "two")]
    assert len(embeds(fakes[kind])) == 1  # max_retries = 0: straight down the chain
    (sent,) = bk.embedding_requests()
    assert sent.body["model"] == "text-embedding-3-small"
    assert sent.headers["Authorization"] == "Bearer sk-bk"


@pytest.mark.parametrize(("model", "behaviour", "reason", "message"), [
    ("oa/te3", "auth", "auth", "Incorrect API key provided"),
    ("ol/nomic", "unauthorized", "auth", "unauthorized"),
    ("gm/emb", "bad_key", "auth", "API key not valid"),  # Gemini's 400 for a bad key
    ("ol/missing", None, "not_found", 'model "mxbai-embed-large" not found'),
])
async def test_failure_of_a_model_alone_is_classified(rig, model: str, behaviour: str | None,
                                                      reason: str, message: str) -> None:
    fakes, bk, d = rig
    kind = {"oa": "openai", "ol": "ollama", "gm": "gemini"}[model[:2]]
    if behaviour is not None:
        fakes[kind].push(behaviour)
    resp = await d.http.post("/v1/embeddings", json={"model": model, "input": "x"})
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "no_model_available"
    (attempt,) = attempts(resp)
    assert attempt["model"] == model
    assert attempt["reason"] == reason
    assert message in attempt["message"]
    assert len(embeds(fakes[kind])) == 1
    assert bk.requests == []


@pytest.mark.parametrize("kind", KINDS)
async def test_upstream_400_is_the_clients_and_ends_the_chain(rig, kind: str) -> None:
    fakes, bk, d = rig
    fakes[kind].push({"openai": "bad_param", "ollama": "bad_request",
                      "gemini": "bad_request"}[kind])
    with pytest.raises(openai.BadRequestError) as caught:
        await d.openai.embeddings.create(model=f"{kind}-then-backup", input="x")
    assert caught.value.status_code == 400
    message = {"openai": "Invalid value for 'temperature'",
               "ollama": "invalid character 'x' looking for beginning of value",
               "gemini": "Invalid JSON payload received"}[kind]
    assert message in caught.value.message
    if kind != "openai":  # another API's 400, in OpenAI's shape
        assert caught.value.code == "upstream_bad_request"
    assert bk.requests == []


async def test_openai_400_passes_through_unchanged(rig) -> None:
    fakes, _, d = rig
    fakes["openai"].push("bad_param")
    resp = await d.http.post("/v1/embeddings", json={"model": MODEL["openai"], "input": "x"})
    assert resp.status_code == 400
    assert resp.content == ERRORS["bad_param"][1]  # the same API: the upstream's own body


async def test_model_refusing_dimensions_is_incapable(rig) -> None:
    """OpenAI's 400 "does not support specifying dimensions" (text-embedding-ada-002) is the
    model lacking a feature: the next candidate may have it, and alone it is a 503 that names
    the upstream's reason and tells the SDK not to retry."""
    fakes, bk, d = rig
    raw = await d.openai.embeddings.with_raw_response.create(
        model="ada-then-backup", input="x", dimensions=4)
    assert raw.headers["x-failoverd-failover"] == f"oa/ada>{BACKUP}:incapable"
    assert raw.parse().data[0].embedding == fake_embedding("text-embedding-3-small", "x", 4)
    assert bk.embedding_requests()[0].body["dimensions"] == 4
    resp = await d.http.post("/v1/embeddings", json={"model": "oa/ada", "input": "x",
                                                     "dimensions": 4})
    assert resp.status_code == 503
    assert resp.headers["x-should-retry"] == "false"
    assert attempts(resp) == [{"model": "oa/ada", "reason": "incapable", "status": 400,
                               "message": "This model does not support specifying "
                                          "dimensions.", "upstream_request_id": None}]
    sent = fakes["openai"].embedding_requests()
    assert [(r.body["model"], r.body["dimensions"]) for r in sent] == [
        ("text-embedding-ada-002", 4)] * 2


async def test_token_ids_go_to_openai_as_they_are(rig) -> None:
    fakes, _, d = rig
    resp = await d.openai.embeddings.create(model=MODEL["openai"], input=TOKENS)
    assert [e.embedding for e in resp.data] == [expected("openai", t) for t in TOKENS]
    assert resp.usage.prompt_tokens == 5
    (sent,) = fakes["openai"].embedding_requests()
    assert sent.body["input"] == TOKENS


@pytest.mark.parametrize("kind", ["ollama", "gemini"])
async def test_token_ids_are_incapable_on_text_only_apis(rig, kind: str) -> None:
    fakes, bk, d = rig
    # down a chain: the OpenAI-compatible backup takes them, the text-only API never sees them
    raw = await d.openai.embeddings.with_raw_response.create(model=f"{kind}-then-backup",
                                                             input=[[1, 2, 3]])
    assert raw.headers["x-failoverd-model"] == BACKUP
    assert raw.headers["x-failoverd-failover"] == f"{MODEL[kind]}>{BACKUP}:incapable"
    assert [e.embedding for e in raw.parse().data] == [
        fake_embedding("text-embedding-3-small", [1, 2, 3], EMBEDDING_DIMENSIONS)]
    assert bk.embedding_requests()[0].body["input"] == [[1, 2, 3]]
    # alone: nobody can, and retrying will not change that
    resp = await d.http.post("/v1/embeddings", json={"model": MODEL[kind], "input": [1, 2, 3]})
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "no_model_available"
    assert resp.headers["x-should-retry"] == "false"
    (attempt,) = attempts(resp)
    assert attempt["reason"] == "incapable"
    assert "embeds text only, not token ids" in attempt["message"]
    assert embeds(fakes[kind]) == []


def float32(text: str) -> list[float]:
    data = base64.b64decode(text)
    return list(struct.unpack(f"<{len(data) // 4}f", data))


async def test_openai_server_ignoring_encoding_format_is_conformed(rig) -> None:
    fakes, _, d = rig
    oa = fakes["openai"]
    oa.default = "floats"  # a compatible server that always answers floats
    resp = await d.http.post("/v1/embeddings", json={
        "model": MODEL["openai"], "input": ["alpha", "beta"], "encoding_format": "base64"})
    assert resp.status_code == 200
    data = resp.json()["data"]
    assert all(isinstance(item["embedding"], str) for item in data)
    assert [float32(item["embedding"]) for item in data] == [
        expected("openai", "alpha"), expected("openai", "beta")]
    assert resp.json()["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert isinstance(oa.embedding_requests()[-1].body["input"], list)
    # the SDK's own default (base64) decodes to the same numbers
    sdk = await d.openai.embeddings.create(model=MODEL["openai"], input="alpha")
    assert sdk.data[0].embedding == expected("openai", "alpha")
    # and the other way: a server that always answers base64, to a client that wants floats
    oa.default = "base64"
    for ask in ({"encoding_format": "float"}, {}):
        resp = await d.http.post("/v1/embeddings", json={
            "model": MODEL["openai"], "input": "alpha", **ask})
        assert resp.json()["data"][0]["embedding"] == expected("openai", "alpha")


@pytest.mark.parametrize("kind", KINDS)
async def test_chat_probe_of_an_embedding_model_embeds_ping(rig, kind: str) -> None:
    fakes, _, d = rig
    resp = await d.http.post(f"/v1/models/{MODEL[kind]}/probe", json={"kind": "chat"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["ok"] is True
    (sent,) = embeds(fakes[kind])
    assert sent_inputs(kind, sent.body) == ["ping"]
    assert fakes[kind].chat_requests() == []


async def test_gemini_more_than_100_inputs(rig) -> None:
    """Gemini takes at most 100 requests per batchEmbedContents call: 250 inputs go in three,
    their vectors joined in input order."""
    fakes, _, d = rig
    texts = [f"text {i}" for i in range(250)]
    resp = await d.openai.embeddings.create(model=MODEL["gemini"], input=texts,
                                            encoding_format="float")
    assert [e.embedding for e in resp.data] == [expected("gemini", t) for t in texts]
    # sent at once: in whatever order they arrived
    assert sorted(len(r.body["requests"]) for r in fakes["gemini"].embed_requests()) == [
        50, 100, 100]


async def test_gemini_one_failed_batch_fails_the_request_over(rig) -> None:
    """One of the calls of a large request refused: the request fails over as a whole (no
    answer with a hole in it), down the chain to the backup."""
    fakes, bk, d = rig
    fakes["gemini"].push("ok", "rate_limit", "ok")
    texts = [f"text {i}" for i in range(250)]
    resp = await d.http.post("/v1/embeddings", json={
        "model": "gemini-then-backup", "input": texts, "encoding_format": "float"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-failover"] == f"{MODEL['gemini']}>{BACKUP}:rate_limit"
    assert len(resp.json()["data"]) == 250
    assert len(bk.embedding_requests()) == 1


async def test_ollama_refuses_an_input_longer_than_its_context_instead_of_cutting_it(
        rig) -> None:
    """Ollama cuts an over-long input silently unless told not to, and the vector is then that
    of the text's start: failoverd sends `truncate: false`, so it is a context_overflow, as
    OpenAI's 400 for the same input is."""
    fakes, _, d = rig
    resp = await d.http.post("/v1/embeddings", json={"model": MODEL["ollama"],
                                                     "input": ["short", "x" * 2000]})
    assert resp.status_code == 503, resp.text
    (attempt,) = attempts(resp)
    assert attempt["reason"] == "context_overflow" and attempt["status"] == 400
    assert "exceeds the context length" in attempt["message"]
    (sent,) = embeds(fakes["ollama"])
    assert sent.body["truncate"] is False
