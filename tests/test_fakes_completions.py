"""The fake upstreams' completion routes, talked to directly (no daemon): OpenAI's legacy
`POST /v1/completions` (with the official SDK and raw SSE) and Ollama's `POST /api/generate`
(NDJSON and one JSON object), so daemon tests can trust what they answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.fakes.ollama import ERRORS as OLLAMA_ERRORS
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import CHAT_ONLY, ERRORS, FakeOpenAI, completion_text
from tests.helpers import sse_payloads as sse

MakeOpenAI = Callable[..., Awaitable[FakeOpenAI]]
MakeOllama = Callable[..., Awaitable[FakeOllama]]
INSTRUCT = "gpt-3.5-turbo-instruct"
REPLY = "Hello from the fake upstream"


def ndjson(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in raw.split(b"\n") if line]


async def test_openai_sdk_completion_with_suffix(fake_openai: MakeOpenAI) -> None:
    fake = await fake_openai()
    client = openai.AsyncOpenAI(base_url=fake.url, api_key="sk-test", max_retries=0)
    async with client:
        got = await client.completions.create(model=INSTRUCT, prompt="def add(a, b):",
                                              suffix="return c", max_tokens=50, user="u1")
    assert got.object == "text_completion" and got.model == INSTRUCT
    (choice,) = got.choices
    assert choice.text == f"{REPLY} after: def add(a, b): before: return c"
    assert choice.text == completion_text(REPLY, "def add(a, b):", "return c")
    assert (choice.index, choice.finish_reason, choice.logprobs) == (0, "stop", None)
    assert got.usage is not None
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (5, 12)
    assert got.usage.total_tokens == 17
    (logged,) = fake.completion_requests()
    assert logged.path == "/v1/completions"
    assert logged.body["suffix"] == "return c" and logged.body["user"] == "u1"
    assert logged.headers["Authorization"] == "Bearer sk-test"
    assert fake.chat_requests() == []


async def test_openai_prompts_times_n_indexed_and_cut_by_max_tokens(
        fake_openai: MakeOpenAI) -> None:
    fake = await fake_openai()
    async with httpx.AsyncClient() as http:
        resp = await http.post(f"{fake.url}/completions", json={
            "model": INSTRUCT, "prompt": ["a", "b"], "n": 2, "max_tokens": 3})
        tokens = await http.post(f"{fake.url}/completions", json={
            "model": INSTRUCT, "prompt": [[1, 2, 3]], "max_tokens": None})
    body = resp.json()
    assert [(c["index"], c["text"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "Hello from the", "length"), (1, "Hello from the", "length"),
        (2, "Hello from the", "length"), (3, "Hello from the", "length")]
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 12, "total_tokens": 14}
    (choice,) = tokens.json()["choices"]
    assert choice["text"] == f"{REPLY} after: [1,2,3]" and choice["finish_reason"] == "stop"
    assert tokens.json()["usage"]["prompt_tokens"] == 3


async def test_openai_default_max_tokens_stop_echo_logprobs(fake_openai: MakeOpenAI) -> None:
    fake = await fake_openai()
    long_prompt = " ".join(f"w{i}" for i in range(20))
    async with httpx.AsyncClient() as http:
        default = (await http.post(f"{fake.url}/completions", json={
            "model": INSTRUCT, "prompt": long_prompt})).json()
        stopped = (await http.post(f"{fake.url}/completions", json={
            "model": INSTRUCT, "prompt": "x", "stop": [" fake", "zzz"]})).json()
        echoed = (await http.post(f"{fake.url}/completions", json={
            "model": INSTRUCT, "prompt": "Say:", "echo": True, "max_tokens": 2,
            "logprobs": 1})).json()
    assert len(default["choices"][0]["text"].split(" ")) == 16
    assert default["choices"][0]["finish_reason"] == "length"
    assert stopped["choices"][0]["text"] == "Hello from the"
    assert stopped["choices"][0]["finish_reason"] == "stop"
    (choice,) = echoed["choices"]
    assert choice["text"] == "Say:Hello from"
    assert choice["logprobs"]["tokens"] == ["Say:", "Hello", " from"]
    assert choice["logprobs"]["text_offset"] == [0, 4, 9]


async def test_openai_stream_with_usage_through_the_sdk(fake_openai: MakeOpenAI) -> None:
    fake = await fake_openai()
    client = openai.AsyncOpenAI(base_url=fake.url, api_key="sk-test", max_retries=0)
    async with client:
        stream = await client.completions.create(
            model=INSTRUCT, prompt="p", n=2, max_tokens=4, stream=True,
            stream_options={"include_usage": True})
        chunks = [c async for c in stream]
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        texts[choice.index] += choice.text
        if choice.finish_reason:
            finishes[choice.index] = choice.finish_reason
        assert chunk.object == "text_completion" and chunk.usage is None
    assert texts == {0: "Hello from the fake", 1: "Hello from the fake"}
    assert finishes == {0: "length", 1: "length"}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


async def test_openai_raw_stream_shape(fake_openai: MakeOpenAI) -> None:
    fake = await fake_openai()
    async with httpx.AsyncClient() as http:
        resp = await http.post(f"{fake.url}/completions", json={
            "model": INSTRUCT, "prompt": "p", "max_tokens": 2, "stream": True})
    assert resp.headers["content-type"] == "text/event-stream"
    events = sse(resp.content)
    assert events[-1] == "[DONE]"
    assert [e["choices"] for e in events[:-1]] == [
        [{"text": "Hello", "index": 0, "logprobs": None, "finish_reason": None}],
        [{"text": " from", "index": 0, "logprobs": None, "finish_reason": None}],
        [{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}]]
    assert all("usage" not in e for e in events[:-1])


@pytest.mark.parametrize("behaviour", ["rate_limit", "overloaded", "server_error", "auth",
                                       "not_found", "bad_gateway"])
async def test_openai_scripted_errors(fake_openai: MakeOpenAI, behaviour: str) -> None:
    fake = await fake_openai()
    fake.push(behaviour)
    async with httpx.AsyncClient() as http:
        failed = await http.post(f"{fake.url}/completions",
                                 json={"model": INSTRUCT, "prompt": "p"})
        ok = await http.post(f"{fake.url}/completions", json={"model": INSTRUCT, "prompt": "p"})
    status, body, headers = ERRORS[behaviour]
    assert (failed.status_code, failed.content) == (status, body)
    assert all(failed.headers.get(k) == v for k, v in headers.items())
    assert ok.status_code == 200
    assert len(fake.completion_requests()) == 2


async def test_openai_chat_only_model_and_bad_prompt(fake_openai: MakeOpenAI) -> None:
    fake = await fake_openai(chat_only_models={"gpt-4o", "gpt-4.1"})
    async with httpx.AsyncClient() as http:
        chat = await http.post(f"{fake.url}/completions",
                               json={"model": "gpt-4.1", "prompt": "p"})
        bad = await http.post(f"{fake.url}/completions",
                              json={"model": INSTRUCT, "prompt": ["a", [1]]})
    assert chat.status_code == 404
    assert chat.json() == {"error": {"message": CHAT_ONLY, "type": "invalid_request_error",
                                     "param": "model", "code": None}}
    assert bad.status_code == 400 and "'$.prompt' is invalid" in bad.json()["error"]["message"]


@pytest.mark.parametrize("behaviour", ["stream_error", "cut_stream", "no_done",
                                       "error_first", "llamacpp_error_event"])
async def test_openai_stream_failures(fake_openai: MakeOpenAI, behaviour: str) -> None:
    fake = await fake_openai()
    fake.push(behaviour)
    async with httpx.AsyncClient() as http:
        try:
            resp = await http.post(f"{fake.url}/completions", json={
                "model": INSTRUCT, "prompt": "p", "stream": True})
            raw = resp.content
        except httpx.RemoteProtocolError:
            raw = None
    if behaviour == "cut_stream":
        assert raw is None  # the connection died mid-body
        return
    assert raw is not None
    events = sse(raw)
    if behaviour == "stream_error":
        assert [e["choices"][0]["text"] for e in events[:2]] == ["Hello", " from"]
        assert events[2]["error"]["type"] == "server_error" and len(events) == 3
    elif behaviour == "no_done":
        assert events[-1]["choices"][0]["finish_reason"] == "stop" and "[DONE]" not in events
    elif behaviour == "error_first":
        assert events == [orjson.loads(ERRORS["quota"][1])]
    else:
        assert raw.startswith(b"error: {") and events == ["[DONE]"]


async def test_ollama_generate_plain_and_num_predict(fake_ollama: MakeOllama) -> None:
    fake = await fake_ollama()
    async with httpx.AsyncClient() as http:
        plain = (await http.post(f"{fake.url}/api/generate", json={
            "model": "qwen2.5:7b", "prompt": "Why?", "stream": False, "system": "be brief",
            "keep_alive": "5m", "options": {"temperature": 0.2, "seed": 7}})).json()
        cut = (await http.post(f"{fake.url}/api/generate", json={
            "model": "llama3.2", "prompt": "Why?", "stream": False, "raw": True,
            "options": {"num_predict": 2}})).json()
    assert plain["response"] == "Hello from the fake Ollama after: Why?"
    assert plain["done"] is True and plain["done_reason"] == "stop"
    assert plain["prompt_eval_count"] == 6 and plain["eval_count"] == 7
    assert len(plain["context"]) == 13
    assert {"total_duration", "load_duration", "prompt_eval_duration",
            "eval_duration"} <= plain.keys()
    assert (cut["response"], cut["done_reason"], cut["eval_count"]) == ("Hello from", "length",
                                                                        2)
    assert "context" not in cut  # raw: Ollama sends no context
    first = fake.generate_requests()[0]
    assert first.body["system"] == "be brief" and first.body["options"]["seed"] == 7
    assert fake.chat_requests() == []


async def test_ollama_generate_streams_by_default_with_suffix(fake_ollama: MakeOllama) -> None:
    fake = await fake_ollama()
    async with httpx.AsyncClient() as http:
        resp = await http.post(f"{fake.url}/api/generate", json={
            "model": "qwen2.5-coder:1.5b", "prompt": "def f():", "suffix": "return x",
            "options": {"stop": [" before"]}})
    assert resp.headers["content-type"] == "application/x-ndjson"
    lines = ndjson(resp.content)
    assert all(line["done"] is False for line in lines[:-1])
    assert "".join(line["response"] for line in lines[:-1]) == \
        "Hello from the fake Ollama after: def f():"
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["response"] == "" and final["eval_count"] == len(lines) - 1


async def test_ollama_generate_refusals(fake_ollama: MakeOllama) -> None:
    fake = await fake_ollama()

    async def post(body: dict[str, Any]) -> httpx.Response:
        async with httpx.AsyncClient() as http:
            return await http.post(f"{fake.url}/api/generate", json={"stream": False, **body})

    missing = await post({"model": "mistral", "prompt": "p"})
    assert (missing.status_code, missing.json()) == (
        404, {"error": 'model "mistral" not found, try pulling it first'})
    no_insert = await post({"model": "qwen2.5:7b", "prompt": "p", "suffix": "s"})
    assert (no_insert.status_code, no_insert.json()) == (
        400, {"error": "registry.ollama.ai/library/qwen2.5:7b does not support insert"})
    embedder = await post({"model": "nomic-embed-text", "prompt": "p"})
    assert (embedder.status_code, embedder.json()) == (
        400, {"error": '"nomic-embed-text" does not support generate'})
    raw = await post({"model": "qwen2.5:7b", "prompt": "p", "raw": True, "system": "s"})
    assert raw.status_code == 400 and raw.json()["error"].startswith("raw mode")
    array = await post({"model": "qwen2.5:7b", "prompt": ["a"]})
    assert array.status_code == 400 and "GenerateRequest.prompt" in array.json()["error"]
    load = await post({"model": "qwen2.5-coder:1.5b", "prompt": "", "suffix": "s"})
    assert load.status_code == 200
    assert (load.json()["done_reason"], load.json()["response"]) == ("load", "")
    assert len(fake.generate_requests()) == 6


async def test_ollama_generate_scripted_and_stream_errors(fake_ollama: MakeOllama) -> None:
    fake = await fake_ollama()
    fake.push("busy", "stream_error", "stream_error", "no_done")
    body = {"model": "qwen2.5:7b", "prompt": "p"}
    async with httpx.AsyncClient() as http:
        busy = await http.post(f"{fake.url}/api/generate", json=body)
        streamed = await http.post(f"{fake.url}/api/generate", json=body)
        whole = await http.post(f"{fake.url}/api/generate", json={**body, "stream": False})
        no_done = await http.post(f"{fake.url}/api/generate", json=body)
    assert (busy.status_code, busy.json()["error"]) == (503, OLLAMA_ERRORS["busy"][1])
    lines = ndjson(streamed.content)
    assert [line.get("response") for line in lines[:2]] == ["Hello", " from"]
    assert lines[2] == {"error": "an error was encountered while running the model: "
                                 "unexpected EOF"} and len(lines) == 3
    assert whole.status_code == 500 and "unexpected EOF" in whole.json()["error"]
    assert all(line["done"] is False for line in ndjson(no_done.content))
