"""The simulated provider answers in OpenAI's wire format, through the daemon: ``n`` choices
(as an OpenAI-compatible upstream, which gets ``n`` passed through, and Gemini's
candidateCount), n above OpenAI's 128 refused as OpenAI does, and the usage chunk a stream
owes ``stream_options.include_usage`` (the Anthropic front asks for it for message_delta)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from failoverd.providers.simulated import MAX_N
from tests.helpers import sse_json as sse

CONFIG = """
[providers.sim]
kind = "simulated"
[models."sim/a"]
provider = "sim"
[models."sim/b"]
provider = "sim"
[routing]
primary = "sim/a"
fallbacks = ["sim/b"]
[probes]
kind = "none"
"""
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def daemon(start_daemon: Any) -> Any:
    return await start_daemon(CONFIG)


async def test_n_choices_not_streamed(daemon: Any) -> None:
    resp = await daemon.http.post("/v1/chat/completions",
                                  json={"model": "default", "messages": HELLO, "n": 3})
    assert resp.status_code == 200
    body = resp.json()
    choices = body["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    texts = [c["message"]["content"] for c in choices]
    assert len(set(texts)) == 3 and all(t.startswith("[sim/a] simulated answer") for t in texts)
    assert all(c["finish_reason"] == "stop" and c["message"]["role"] == "assistant"
               for c in choices)
    # the first choice is the n = 1 answer; usage counts every choice
    one = (await daemon.http.post("/v1/chat/completions",
                                  json={"model": "default", "messages": HELLO})).json()
    assert [c["message"]["content"] for c in one["choices"]] == texts[:1]
    assert body["usage"]["completion_tokens"] > one["usage"]["completion_tokens"] * 2


async def test_n_choices_with_the_openai_sdk(daemon: Any) -> None:
    answer = await daemon.openai.chat.completions.create(
        model="sim/b", messages=HELLO, n=2)
    assert [c.index for c in answer.choices] == [0, 1]
    assert all(c.message.content.startswith("[sim/b]") for c in answer.choices)


async def test_n_choices_streamed_with_usage(daemon: Any) -> None:
    resp = await daemon.http.post("/v1/chat/completions", json={
        "model": "default", "messages": HELLO, "n": 2, "stream": True,
        "stream_options": {"include_usage": True}})
    assert resp.status_code == 200
    chunks = sse(resp.text)
    assert resp.text.rstrip().endswith("data: [DONE]")
    text: dict[int, str] = {}
    finished: list[int] = []
    for chunk in chunks[:-1]:
        [choice] = chunk["choices"]
        text[choice["index"]] = text.get(choice["index"], "") + (
            choice["delta"].get("content") or "")
        if choice["finish_reason"]:
            finished.append(choice["index"])
    assert finished == [0, 1]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    whole = (await daemon.http.post("/v1/chat/completions", json={
        "model": "default", "messages": HELLO, "n": 2})).json()
    assert [text[0], text[1]] == [c["message"]["content"] for c in whole["choices"]]
    assert chunks[-1]["usage"] == whole["usage"]


async def test_a_stream_without_include_usage_has_no_usage_chunk(daemon: Any) -> None:
    resp = await daemon.http.post("/v1/chat/completions", json={
        "model": "default", "messages": HELLO, "stream": True})
    chunks = sse(resp.text)
    assert all(c["choices"] and "usage" not in c for c in chunks)


@pytest.mark.parametrize("stream", [False, True])
async def test_n_above_openais_limit_is_openais_400(daemon: Any, stream: bool) -> None:
    resp = await daemon.http.post("/v1/chat/completions", json={
        "model": "default", "messages": HELLO, "n": MAX_N + 1, "stream": stream})
    assert resp.status_code == 400, resp.text
    assert f"from 1 to {MAX_N}" in resp.json()["error"]["message"]
    assert resp.headers.get("x-failoverd-model") in (None, "sim/a")
    # a bad request is the client's: no failover, and the breaker does not count it
    assert "x-failoverd-failover" not in resp.headers
    status = (await daemon.http.get("/v1/status")).json()
    assert status["models"]["sim/a"]["state"] == "closed"


async def test_anthropic_front_stream_reports_usage(daemon: Any) -> None:
    resp = await daemon.http.post("/v1/messages", json={
        "model": "default", "max_tokens": 100, "stream": True,
        "messages": [{"role": "user", "content": "hello there"}]})
    assert resp.status_code == 200
    events = [orjson.loads(line[6:]) for line in resp.text.splitlines()
              if line.startswith("data: ")]
    [delta] = [e for e in events if e["type"] == "message_delta"]
    assert delta["usage"]["output_tokens"] > 0
