"""DESIGN.md promises about the HTTP API and failoverctl that no other module checks end to end:
`daemon.max_inflight`'s own 503 `overloaded`, `failoverctl reload` and its exit codes, the
default `node`, and slow successes (`breaker.slow_call_seconds`) opening a live breaker."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.helpers import (
    HELLO,
    failoverctl,
    one_model_config,
    pair_config,
    status,
    until,
    until_async,
)

CHAT = {"model": "default", "messages": HELLO}
MESSAGES = {"model": "default", "max_tokens": 16, "messages": HELLO}


async def test_beyond_max_inflight_failoverd_answers_503_overloaded_itself(
        fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai(reply="from a")
    # a body's first lines are still in start_daemon's [daemon] table
    d = await start_daemon("max_inflight = 1\n" + one_model_config(a.url))
    a.push("hang")
    # a second client on the same socket holds the one in-flight slot
    holder = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=d.socket),
                               base_url="http://failoverd", timeout=30)
    held = asyncio.create_task(holder.post("/v1/chat/completions", json=CHAT))
    try:
        await until_async(lambda: _inflight(d, 1))
        resp = await d.http.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 503
        error = resp.json()["error"]
        assert error["type"] == "overloaded"
        assert "max_inflight" in error["message"]
        assert int(resp.headers["retry-after"]) >= 1
        # failoverd's own refusal: no upstream call, no attempt headers
        assert "x-failoverd-attempts" not in resp.headers
        assert "x-failoverd-model" not in resp.headers
        # the Anthropic front end gets it in its own shape, as the error type its SDK retries
        resp = await d.http.post("/v1/messages", json=MESSAGES)
        assert resp.status_code == 503
        assert resp.json()["type"] == "error"
        assert resp.json()["error"]["type"] == "overloaded_error"
        # only the held request reached the upstream (it may get there after the refusals:
        # the slot is taken before the upstream call is made)
        await until(lambda: len(a.chat_requests()) == 1)
        assert len(a.chat_requests()) == 1
    finally:
        held.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await held
        await holder.aclose()
    # the slot comes back once the held client went away, and the daemon serves again
    await until_async(lambda: _inflight(d, 0))
    resp = await d.http.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "a/m"


async def _inflight(d: Any, n: int) -> bool:
    return int((await status(d))["inflight"]) == n


async def test_failoverctl_reload_exits_0_when_applied_and_1_when_rejected(
        fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(pair_config(a, b))
    path = Path(d.sup.config_path)
    good = path.read_text()

    path.write_text(good.replace('primary = "a/gpt-a"', 'primary = "b/gpt-b"'))
    code, out, err = await failoverctl(d.socket, "reload")
    assert code == 0, err
    assert out.strip() == f"reloaded {path}"
    resp = await d.http.post("/v1/chat/completions", json=CHAT)
    assert resp.headers["x-failoverd-model"] == "b/gpt-b"  # the new config is live

    path.write_text(good + "\n[breaker]\nfailure_rate = 7\n")
    code, out, err = await failoverctl(d.socket, "reload")
    assert code == 1
    assert "config rejected:" in err and "breaker.failure_rate: must be in (0, 1]" in err
    code, out, err = await failoverctl(d.socket, "--json", "reload")
    assert code == 1
    answer = orjson.loads(out)
    assert answer["ok"] is False
    assert any(p.startswith("breaker.failure_rate:") for p in answer["problems"])
    # the rejected file changed nothing: the last good config keeps serving
    resp = await d.http.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "b/gpt-b"


async def test_node_defaults_to_the_hostname(fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai()
    d = await start_daemon(one_model_config(a.url))  # no daemon.node
    assert (await status(d))["node"] == socket.gethostname()
    assert (await d.http.post("/v1/reload")).status_code == 200  # emits config:reloaded
    events = (await d.http.get("/v1/events", params={"recent": "1"})).text
    emitted = [orjson.loads(line[6:]) for line in events.splitlines()
               if line.startswith("data: ")]
    assert emitted and {e["node"] for e in emitted} == {socket.gethostname()}


async def test_slow_successes_open_the_breaker_and_traffic_moves_on(
        fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai(default="slow:0.12", reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(pair_config(a, b, tail="""[breaker]
slow_call_seconds = 0.05
failure_rate = 1.0
minimum_calls = 2
open_seconds = 60
max_open_seconds = 60
"""))
    for _ in range(2):  # slow, but answers: the client is served each time
        resp = await d.http.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "a/gpt-a"
    model = (await status(d))["models"]["a/gpt-a"]
    assert (model["state"], model["reason"]) == ("open", "slow_calls")
    resp = await d.http.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "b/gpt-b"
    assert len(a.chat_requests()) == 2  # the open breaker spared it the third call


async def test_a_session_pinned_to_a_chain_is_served_by_that_chain_on_both_fronts(
        fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(pair_config(a, b, tail='[chains."team/local"]\nmodels = ["b/gpt-b"]\n'))
    resp = await d.http.post("/v1/sessions/u-7", json={"model": "team/local"})
    assert resp.status_code == 200
    assert (await d.http.get("/v1/sessions/u-7")).json()["preference"] == "team/local"
    # the session key from the header, the OpenAI `user` field and Anthropic metadata.user_id
    by_header = await d.http.post("/v1/chat/completions", json=CHAT,
                                  headers={"x-failoverd-session": "u-7"})
    by_user = await d.http.post("/v1/chat/completions", json={**CHAT, "user": "u-7"})
    by_metadata = await d.http.post("/v1/messages",
                                    json={**MESSAGES, "metadata": {"user_id": "u-7"}})
    for resp in (by_header, by_user, by_metadata):
        assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "b/gpt-b"
    # other sessions keep the default chain; a forgotten preference is gone
    other = await d.http.post("/v1/chat/completions", json={**CHAT, "user": "u-8"})
    assert other.headers["x-failoverd-model"] == "a/gpt-a"
    assert (await d.http.delete("/v1/sessions/u-7")).status_code == 200
    again = await d.http.post("/v1/chat/completions", json={**CHAT, "user": "u-7"})
    assert again.headers["x-failoverd-model"] == "a/gpt-a"


async def test_provider_timeout_caps_plain_calls_but_not_a_stream_that_keeps_flowing(
        fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai(reply="one two three four five six")
    b = await fake_openai(reply="from b")
    d = await start_daemon(pair_config(a, b).replace(
        f'base_url = "{a.url}"', f'base_url = "{a.url}"\ntimeout = 0.3'))
    # a stream of six words 0.1 s apart outlives `timeout` and is served whole by a
    a.push("slow_stream:0.1")
    async with d.http.stream("POST", "/v1/chat/completions",
                             json={**CHAT, "stream": True}) as resp:
        assert resp.headers["x-failoverd-model"] == "a/gpt-a"
        text = (await resp.aread()).decode()
    assert '"error"' not in text and text.rstrip().endswith("data: [DONE]")
    words = "".join(orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                    for line in text.splitlines()
                    if line.startswith("data: {") and orjson.loads(line[6:])["choices"])
    assert words == "one two three four five six"
    # the same time without an answer on a plain call is a timeout: b serves
    a.push("slow:0.6")
    resp = await d.http.post("/v1/chat/completions", json=CHAT)
    assert resp.headers["x-failoverd-model"] == "b/gpt-b"
    assert resp.headers["x-failoverd-failover"] == "a/gpt-a>b/gpt-b:timeout"


async def test_no_model_available_on_the_anthropic_front_streaming_or_not(
        fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai(default="server_error")
    b = await fake_openai(default="rate_limit_long")
    d = await start_daemon(pair_config(a, b))
    for stream in (False, True):
        resp = await d.http.post("/v1/messages", json={**MESSAGES, "stream": stream})
        assert resp.status_code == 503, stream
        assert resp.headers["content-type"].startswith("application/json")  # no SSE begun
        assert int(resp.headers["retry-after"]) >= 1
        assert resp.headers["x-failoverd-failover"] == "a/gpt-a>b/gpt-b:server_error"
        assert int(resp.headers["x-failoverd-attempts"]) >= 2
        body = resp.json()
        assert body["type"] == "error"
        error = body["error"]
        assert error["type"] == "no_model_available" and error["message"]
        attempts = error["attempts"]
        # DESIGN.md's fields, and each attempt's upstream id (README: Request ids)
        assert all(set(x) == {"model", "reason", "status", "message", "upstream_request_id"}
                   for x in attempts)
        assert [(x["model"], x["reason"], x["status"]) for x in attempts][-1] == (
            "b/gpt-b", "rate_limit", 429)
        assert (attempts[0]["model"], attempts[0]["reason"]) == ("a/gpt-a", "server_error")
        assert "Rate limit reached" in attempts[-1]["message"]


async def test_unknown_paths_and_methods_get_json_errors_in_the_clients_shape(
        fake_openai: Any, start_daemon: Any) -> None:
    a = await fake_openai()
    d = await start_daemon(one_model_config(a.url))
    resp = await d.http.post("/v1/messages/batches", json={"requests": []})
    assert resp.status_code == 404
    assert resp.json() == {"type": "error", "error": {
        "type": "not_found_error",
        "message": "POST /v1/messages/batches: failoverd serves no such endpoint "
                   "(proxied: POST /v1/chat/completions, POST /v1/messages, POST "
                   "/v1/responses, POST /v1/completions, POST /v1/embeddings, POST "
                   "/v1/audio/transcriptions, POST /v1/audio/translations and POST "
                   "/v1/audio/speech)"}}
    resp = await d.http.post("/v1/images/generations", json={"input": "x"})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "unknown_url"
    assert resp.json()["error"]["type"] == "invalid_request_error"
    # a GET of the chat endpoint: the fast path hands it to aiohttp, which routes it
    resp = await d.http.get("/v1/chat/completions")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"
    assert resp.json()["error"]["message"] == (
        "GET /v1/chat/completions: method not allowed here (allowed: POST)")
    # and the daemon keeps serving
    resp = await d.http.post("/v1/chat/completions", json={"messages": HELLO})
    assert resp.status_code == 200
