"""POST /v1/completions (OpenAI's legacy Completions API) through the daemon: validation,
routing down a chat request's candidates (failover, pinning, chains, refusals of `auto` and
embedding models), providers without the API (Anthropic, Gemini) skipped as incapable, the
official openai SDK plain and streamed, curl, the fast path and the metrics. Simulated
upstreams; the OpenAI-compatible and Ollama wire formats are in
test_completions_providers.py."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import orjson
import pytest

from tests.helpers import completion_stream, status

CONFIG = """
[providers.busy]
kind = "simulated"
simulate_failure = "overloaded"
[providers.sim]
kind = "simulated"
[providers.ant]
kind = "anthropic"
base_url = "{ant}"
[models."busy/code"]
provider = "busy"
max_retries = 0
[models."ant/claude"]
provider = "ant"
[models."sim/code"]
provider = "sim"
[models."sim/embed"]
provider = "sim"
capabilities = ["embeddings"]
[chains.claude-first]
models = ["ant/claude", "sim/code"]
[routing]
primary = "busy/code"
fallbacks = ["sim/code"]
when_all_unavailable = "fail"
[probes]
kind = "none"
"""


@pytest.fixture
async def daemon(fake_anthropic: Any, start_daemon: Any) -> Any:
    ant = await fake_anthropic()
    d = await start_daemon(CONFIG.format(ant=ant.url))
    d.ant = ant
    return d


async def complete(d: Any, **body: Any) -> Any:
    return await d.http.post("/v1/completions", json=body)


async def test_the_sdk_gets_a_completion_after_a_failover(daemon: Any) -> None:
    d = daemon
    raw = await d.openai.completions.with_raw_response.create(
        model="default", prompt="def fib(n):", suffix="\n    return a", max_tokens=5)
    assert raw.headers["x-failoverd-model"] == "sim/code"
    assert raw.headers["x-failoverd-failover"] == "busy/code>sim/code:overloaded"
    assert raw.headers["x-failoverd-attempts"] == "2"
    answer = raw.parse()
    assert answer.object == "text_completion" and answer.model == "code"
    (choice,) = answer.choices
    assert len(choice.text.split()) == 5 and choice.finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    # OpenAI's default of 16 tokens when max_tokens is unset; `n` answers per prompt
    answer = await d.openai.completions.create(model="sim/code", prompt=["a", "b"], n=2)
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert all(len(c.text.split()) == 12 and c.finish_reason == "stop"
               for c in answer.choices)


async def test_the_sdk_streams_a_completion(daemon: Any) -> None:
    d = daemon
    stream = await d.openai.completions.create(
        model="default", prompt="SELECT", max_tokens=3, stream=True,
        stream_options={"include_usage": True})
    pieces, finishes, usage = await completion_stream(stream)
    assert len("".join(pieces).split()) == 3 and finishes[-1] == "length"
    assert usage is not None and usage.completion_tokens == 3
    metrics = (await d.http.get("/metrics")).text
    assert 'failoverd_requests_total{model="sim/code",outcome="ok"} 1' in metrics
    assert 'failoverd_tokens_total{model="sim/code",kind="completion"} 3' in metrics
    assert ('failoverd_failovers_total{from_model="busy/code",to_model="sim/code",'
            'reason="overloaded"} 1') in metrics


async def test_a_model_without_the_api_is_incapable_and_the_chain_goes_on(
        daemon: Any) -> None:
    d = daemon
    resp = await complete(d, model="claude-first", prompt="x")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "sim/code"
    assert resp.headers["x-failoverd-failover"] == "ant/claude>sim/code:incapable"
    assert resp.headers["x-failoverd-attempts"] == "1"  # Anthropic was never called
    assert d.ant.requests == []
    # alone: a 503 naming why, which no retry cures
    resp = await d.http.post("/v1/completions", json={"model": "ant/claude", "prompt": "x"},
                             headers={"x-failoverd-no-fallback": "1"})
    assert resp.status_code == 503 and resp.headers["x-should-retry"] == "false"
    (attempt,) = resp.json()["error"]["attempts"]
    assert attempt["reason"] == "incapable"
    assert "no text completions" in attempt["message"]
    # incapable is no failure of the model
    assert (await status(d))["models"]["ant/claude"]["consecutive_failures"] == 0


async def test_routing_refusals_and_pinning(daemon: Any) -> None:
    d = daemon
    for model, code, words in (("auto", "invalid_request_error", "'auto' routing"),
                               ("sim/embed", "model_not_chat", "embedding model"),
                               ("nope", "model_not_found", "is not a configured model")):
        resp = await complete(d, model=model, prompt="x")
        assert resp.status_code in (400, 404), resp.text
        error = resp.json()["error"]
        assert error["code"] == code and words in error["message"] and error["param"] == "model"
    resp = await d.http.post("/v1/completions", json={"model": "default", "prompt": "x"},
                             headers={"x-failoverd-no-fallback": "1"})
    assert resp.status_code == 503
    assert [a["model"] for a in resp.json()["error"]["attempts"]] == ["busy/code"]
    # the operator's rotation of the default chain applies
    assert (await d.http.post("/v1/chains/default/next")).status_code == 200
    resp = await complete(d, model="default", prompt="x")
    assert resp.headers["x-failoverd-model"] == "sim/code"
    assert "x-failoverd-failover" not in resp.headers


BAD = [
    ({"model": "default"}, "prompt", "'prompt' is required"),
    ({"model": "default", "prompt": []}, "prompt", "'prompt' must be a string"),
    ({"model": "default", "prompt": ["a", [1]]}, "prompt", "'prompt' must be a string"),
    ({"model": "default", "prompt": 3}, "prompt", "'prompt' must be a string"),
    ({"model": 3, "prompt": "x"}, "model", "'model' must be a string"),
    ({"model": "default", "prompt": "x", "suffix": 1}, "suffix", "'suffix' must be a string"),
    ({"model": "default", "prompt": "x", "max_tokens": -1}, "max_tokens", "'max_tokens' must"),
    ({"model": "default", "prompt": "x", "max_tokens": True}, "max_tokens", "'max_tokens' must"),
    ({"model": "default", "prompt": "x", "n": 0}, "n", "'n' must"),
    ({"model": "default", "prompt": "x", "n": 129}, "n", "'n' must be at most 128"),
    ({"model": "default", "prompt": "x", "stream": "yes"}, "stream", "'stream' must be"),
    ({"model": "default", "prompt": "x", "stop": [1]}, "stop", "'stop' must be"),
    ({"model": "default", "prompt": "x", "stream_options": []}, "stream_options", "'stream_"),
]


async def test_bad_bodies_are_400s_naming_the_field(daemon: Any) -> None:
    d = daemon
    for body, param, message in BAD:
        resp = await d.http.post("/v1/completions", json=body)
        assert resp.status_code == 400, (body, resp.text)
        error = resp.json()["error"]
        assert error["param"] == param and error["message"].startswith(message), (body, error)
    resp = await d.http.post("/v1/completions", content=b"[1]",
                             headers={"content-type": "application/json"})
    assert resp.status_code == 400
    # the daemon keeps serving; token prompts are fine
    resp = await complete(d, model="sim/code", prompt=[[1, 2], [3]], max_tokens=2)
    assert resp.status_code == 200 and len(resp.json()["choices"]) == 2
    metrics = (await d.http.get("/metrics")).text
    assert f'failoverd_rejected_requests_total{{why="bad_input"}} {len(BAD) + 1}' in metrics


async def test_the_fast_path_serves_it(daemon: Any) -> None:
    d = daemon
    fast = d.sup.fast
    assert fast is not None
    served, handed_off = fast.served, fast.handed_off
    for stream in (False, True, False):
        resp = await complete(d, model="sim/code", prompt="x", stream=stream)
        assert resp.status_code == 200
    assert (fast.served, fast.handed_off) == (served + 3, handed_off)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_curl_streams_a_completion(daemon: Any) -> None:
    d = daemon
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sN", "--unix-socket", d.socket, "http://failoverd/v1/completions",
        "-H", "content-type: application/json",
        "-d", orjson.dumps({"model": "sim/code", "prompt": "x", "stream": True,
                            "max_tokens": 2}).decode(),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    events = [line[6:] for line in out.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
