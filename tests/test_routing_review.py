"""Routing and control review: the contract end to end on odd inputs.

Session key precedence on both fronts, the failure table's retry and breaker columns for the
reasons other tests leave out, chain names and session keys with '/' and ':' on the control
API, concurrent chain rotation, /v1/select on bad input, and failoverctl against a daemon
that dies or a socket that does not speak failoverd (exit 2, never a traceback).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from failoverd.clock import ManualClock
from tests.fakes.openai import FakeOpenAI
from tests.helpers import (
    GPT,
    HELLO,
    QWEN,
    failoverctl,
    gpt_qwen_config,
    gpt_qwen_daemon,
    providers,
    status,
)

CHAIN = "team/fast:1"  # a chain name with '/' and ':'


def review_toml(a: FakeOpenAI, o: FakeOpenAI, routing: str = "", extra: str = "") -> str:
    return gpt_qwen_config(a, o, provider_a=extra, routing=f"deadline = 5\n{routing}",
                           chain=CHAIN,
                           tail="[breaker]\nopen_seconds = 5\nmax_open_seconds = 600\n")


@pytest.fixture
async def rig(fake_openai, start_daemon) -> Any:
    clock = ManualClock()
    return *await gpt_qwen_daemon(fake_openai, start_daemon, review_toml, clock=clock), clock


async def model_status(d: Any, model: str) -> dict[str, Any]:
    models: dict[str, Any] = (await status(d))["models"]
    return models[model]


# ------------------------------------------------------------------ sessions


async def test_session_key_precedence_on_both_fronts(rig) -> None:
    """Header beats OpenAI `user`, and header beats Anthropic `metadata.user_id`."""
    a, o, d, _ = rig
    assert (await d.http.post("/v1/sessions/by-header", json={"model": QWEN})).status_code == 200
    assert (await d.http.post("/v1/sessions/by-body", json={"model": GPT})).status_code == 200
    header = {"x-failoverd-session": "by-header"}

    openai_body = {"model": GPT, "user": "by-body", "messages": HELLO}
    resp = await d.http.post("/v1/chat/completions", json=openai_body, headers=header)
    assert resp.headers["x-failoverd-model"] == QWEN
    # without the header the `user` field names the session (pinned to the requested model)
    resp = await d.http.post("/v1/chat/completions", json={**openai_body, "model": QWEN})
    assert resp.headers["x-failoverd-model"] == GPT

    anthropic_body = {"model": GPT, "max_tokens": 16, "metadata": {"user_id": "by-body"},
                      "messages": HELLO}
    resp = await d.http.post("/v1/messages", json=anthropic_body, headers=header)
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == QWEN
    resp = await d.http.post("/v1/messages", json={**anthropic_body, "model": QWEN})
    assert resp.headers["x-failoverd-model"] == GPT
    assert resp.json()["type"] == "message"


@pytest.mark.parametrize("key", ["team/alice", "user:42", "a/b:c/d"])
async def test_session_keys_with_slash_and_colon_in_the_path(rig, key: str) -> None:
    a, o, d, _ = rig
    resp = await d.http.post(f"/v1/sessions/{key}", json={"model": QWEN})
    assert resp.status_code == 200, resp.text
    assert resp.json()["key"] == key
    got = await d.http.get(f"/v1/sessions/{key}")
    assert got.status_code == 200 and got.json()["preference"] == QWEN
    resp = await d.http.post("/v1/chat/completions", json={"messages": HELLO},
                             headers={"x-failoverd-session": key})
    assert resp.headers["x-failoverd-model"] == QWEN
    gone = await d.http.delete(f"/v1/sessions/{key}")
    assert gone.status_code == 200 and gone.json() == {"deleted": key}
    missing = await d.http.get(f"/v1/sessions/{key}")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "session_not_found"


async def test_huge_session_key_from_header_is_found_by_its_path(rig) -> None:
    a, o, d, _ = rig
    key = "k" * 3000
    await d.http.post(f"/v1/sessions/{key}", json={"model": QWEN})
    resp = await d.http.post("/v1/chat/completions", json={"messages": HELLO},
                             headers={"x-failoverd-session": key})
    assert resp.headers["x-failoverd-model"] == QWEN
    stored = (await d.http.get(f"/v1/sessions/{key}")).json()["key"]
    assert len(stored) < 300 and stored.startswith("k" * 200 + "#")


# ------------------------------------------------------------------ chains


async def test_chain_name_with_slash_and_colon_rotates_over_http_and_ctl(rig) -> None:
    a, o, d, _ = rig
    resp = await d.http.post(f"/v1/chains/{CHAIN}/next")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"chain": CHAIN, "head": GPT, "models": [GPT, QWEN]}
    chat = await d.http.post("/v1/chat/completions", json={"model": CHAIN, "messages": HELLO})
    assert chat.headers["x-failoverd-model"] == GPT
    code, out, err = await failoverctl(d.socket, "chain-reset", CHAIN)
    assert (code, out.strip()) == (0, f"{CHAIN}: head is now {QWEN}"), err
    resp = await d.http.post(f"/v1/chains/{CHAIN}/reset")
    assert resp.json()["head"] == QWEN
    resp = await d.http.post("/v1/chains/team/nope/next")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "chain_not_found"


async def test_concurrent_chain_next_calls_each_move_the_head_once(rig) -> None:
    a, o, d, _ = rig
    answers = await asyncio.gather(*(d.http.post("/v1/chains/default/next") for _ in range(7)))
    assert all(r.status_code == 200 for r in answers)
    # seven rotations of a two-model chain: the second model leads
    assert sorted(r.json()["head"] for r in answers) == sorted([QWEN, GPT] * 3 + [QWEN])
    status = (await d.http.get("/v1/status")).json()
    assert status["chains"]["default"]["head"] == QWEN
    chat = await d.http.post("/v1/chat/completions", json={"messages": HELLO})
    assert chat.headers["x-failoverd-model"] == QWEN


async def test_reload_forgets_the_rotation_of_a_chain_it_changed_or_removed(rig) -> None:
    a, o, d, _ = rig
    path = Path(d.sup.config_path)
    original = path.read_text()
    chain_block = f'[chains."{CHAIN}"]\nmodels = ["{QWEN}", "{GPT}"]\n'
    for name in (CHAIN, "default"):
        assert (await d.http.post(f"/v1/chains/{name}/next")).status_code == 200

    async def heads() -> dict[str, str]:
        chains = (await d.http.get("/v1/status")).json()["chains"]
        return {name: c["head"] for name, c in chains.items()}

    async def reload(text: str) -> None:
        path.write_text(text)
        resp = await d.http.post("/v1/reload")
        assert resp.status_code == 200, resp.text

    await reload(original + "\n# a comment: nothing changed\n")
    assert await heads() == {"default": QWEN, CHAIN: GPT}  # unchanged chains keep it
    await reload(original.replace(chain_block, ""))  # the chain goes away ...
    await reload(original)  # ... and comes back: from its configured order
    assert await heads() == {"default": QWEN, CHAIN: QWEN}
    # the default chain changes (primary and fallback swapped): its rotation is forgotten too
    await reload(original.replace(f'primary = "{GPT}"\nfallbacks = ["{QWEN}"]',
                                  f'primary = "{QWEN}"\nfallbacks = ["{GPT}"]'))
    assert await heads() == {"default": QWEN, CHAIN: QWEN}
    chat = await d.http.post("/v1/chat/completions", json={"messages": HELLO})
    assert chat.headers["x-failoverd-model"] == QWEN


# ------------------------------------------------------------------ select


@pytest.mark.parametrize("session", [123, ["x"], {"k": 1}, True])
async def test_select_with_a_non_string_session_is_400(rig, session: Any) -> None:
    a, o, d, _ = rig
    resp = await d.http.post("/v1/select", json={"needs": [], "session": session})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "session"
    assert (await d.http.get("/v1/health")).status_code == 200


async def test_select_follows_a_sessions_preference(rig) -> None:
    a, o, d, _ = rig
    await d.http.post("/v1/sessions/s1", json={"model": QWEN})
    resp = await d.http.post("/v1/select", json={"session": "s1"})
    assert [c["model"] for c in resp.json()["candidates"]] == [QWEN, GPT]


async def test_select_honours_the_no_fallback_header_as_the_request_does(rig) -> None:
    a, o, d, _ = rig
    pin = {"x-failoverd-no-fallback": "1"}
    resp = await d.http.post("/v1/select", json={"model": GPT}, headers=pin)
    assert [c["model"] for c in resp.json()["candidates"]] == [GPT]
    resp = await d.http.post("/v1/select", json={"model": GPT})
    assert [c["model"] for c in resp.json()["candidates"]] == [GPT, QWEN]


async def test_select_of_a_chat_body_without_model_routes_it_as_a_request(rig) -> None:
    """A request without "model" goes down the default chain; select said auto."""
    a, o, d, _ = rig
    sel = (await d.http.post("/v1/select", json={"messages": HELLO})).json()
    assert sel["model"] == "default" and sel["decision"] is None
    assert [c["model"] for c in sel["candidates"]] == [GPT, QWEN]
    chat = await d.http.post("/v1/chat/completions", json={"messages": HELLO})
    assert chat.headers["x-failoverd-model"] == GPT


# ------------------------------------------------------------------ capabilities


async def test_omitted_capabilities_are_unknown_and_not_skipped_end_to_end(rig) -> None:
    """QWEN's entry omits `capabilities`: a tools request may go there; an empty list may not."""
    a, o, d, _ = rig
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    resp = await d.http.post("/v1/chat/completions", json={
        "model": CHAIN, "messages": HELLO, "tools": tools})
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == QWEN
    assert len(o.chat_requests()) == 1


# ------------------------------------------------------------------ failure table


@pytest.mark.parametrize(("behaviour", "counted"), [
    ("server_error", True), ("content_filter", False), ("context", False),
])
async def test_breaker_column_counts_or_ignores(rig, behaviour: str, counted: bool) -> None:
    a, o, d, _ = rig
    a.default = behaviour
    resp = await d.http.post("/v1/chat/completions", json={"messages": HELLO})
    assert resp.headers["x-failoverd-model"] == QWEN
    status = await model_status(d, GPT)
    assert status["state"] == "closed"
    assert (status["consecutive_failures"] > 0) is counted


async def test_bad_request_is_not_counted_and_not_failed_over(rig) -> None:
    a, o, d, _ = rig
    a.default = "bad_param"
    resp = await d.http.post("/v1/chat/completions", json={"messages": HELLO})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "temperature"  # the upstream's own error
    assert resp.headers["x-failoverd-attempts"] == "1"
    assert "x-failoverd-model" not in resp.headers
    assert o.requests == []
    assert (await model_status(d, GPT))["consecutive_failures"] == 0


async def test_not_found_opens_the_model_for_max_open_seconds(rig) -> None:
    a, o, d, clock = rig
    a.default = "not_found"
    resp = await d.http.post("/v1/chat/completions", json={"messages": HELLO})
    assert resp.headers["x-failoverd-failover"] == f"{GPT}>{QWEN}:not_found"
    assert len(a.chat_requests()) == 1  # no same-model retry
    status = await model_status(d, GPT)
    assert status["state"] == "open" and status["reason"] == "not_found"
    assert status["retry_at"] == pytest.approx(clock.time() + 600, abs=61)


async def test_rate_limit_opens_at_least_for_its_retry_after(fake_openai, start_daemon) -> None:
    a = await fake_openai(reply="from a", default="rate_limit_long")  # Retry-After: 30
    o = await fake_openai(reply="from qwen")
    clock = ManualClock()
    toml = review_toml(a, o).replace("[breaker]", "[breaker]\nfailure_threshold = 1")
    d = await start_daemon(toml, clock=clock)
    resp = await d.http.post("/v1/chat/completions", json={"messages": HELLO})
    assert resp.headers["x-failoverd-failover"] == f"{GPT}>{QWEN}:rate_limit"
    status = await model_status(d, GPT)
    assert status["state"] == "open"
    assert status["retry_at"] >= clock.time() + 30  # open_seconds is 5: Retry-After wins


async def test_timeout_and_connection_are_never_retried_on_the_same_model(
        fake_openai, start_daemon, short_dir: Path) -> None:
    a = await fake_openai(reply="from a", default="hang")
    o = await fake_openai(reply="from qwen")
    d = await start_daemon(review_toml(a, o, extra="timeout = 0.3").replace(
        'provider = "a"\n', 'provider = "a"\nmax_retries = 3\n'))
    resp = await d.http.post("/v1/chat/completions", json={"messages": HELLO})
    assert resp.headers["x-failoverd-failover"] == f"{GPT}>{QWEN}:timeout"
    assert resp.headers["x-failoverd-attempts"] == "2"
    assert len(a.chat_requests()) == 1

    # a refused connection: nothing listens on the closed fake's port any more
    refused = await fake_openai()
    await refused.close()
    d2 = await start_daemon(review_toml(refused, o).replace(
        'provider = "a"\n', 'provider = "a"\nmax_retries = 3\n'), name="d2")
    resp = await d2.http.post("/v1/chat/completions", json={"messages": HELLO})
    assert resp.headers["x-failoverd-failover"] == f"{GPT}>{QWEN}:connection"
    assert resp.headers["x-failoverd-attempts"] == "2"


async def test_invalid_response_is_retried_once_whatever_max_retries(fake_openai,
                                                                     start_daemon) -> None:
    a = await fake_openai(reply="from a", default="invalid_json")
    o = await fake_openai(reply="from qwen")
    d = await start_daemon(review_toml(a, o).replace(
        'provider = "a"\n', 'provider = "a"\nmax_retries = 3\n'))
    resp = await d.http.post("/v1/chat/completions", json={"messages": HELLO})
    assert resp.headers["x-failoverd-failover"] == f"{GPT}>{QWEN}:invalid_response"
    assert len(a.chat_requests()) == 2


async def test_stream_503_carries_retry_after_attempts_and_headers(rig) -> None:
    a, o, d, _ = rig
    a.default = o.default = "server_error"
    resp = await d.http.post("/v1/chat/completions",
                             json={"messages": HELLO, "stream": True})
    assert resp.status_code == 503
    assert int(resp.headers["Retry-After"]) >= 1
    assert resp.headers["x-failoverd-attempts"] == "4"
    assert resp.headers["x-failoverd-failover"] == f"{GPT}>{QWEN}:server_error"
    error = resp.json()["error"]
    assert error["type"] == "no_model_available"
    assert [(x["model"], x["reason"], x["status"]) for x in error["attempts"]] == [
        (GPT, "server_error", 500), (QWEN, "server_error", 500)]
    assert all(set(x) == {"model", "reason", "status", "message", "upstream_request_id"}
               for x in error["attempts"])


@pytest.mark.parametrize("value", ["0", "-1", "86400", "1e9", "nan", "inf", "soon"])
async def test_bad_deadline_header_is_400_and_calls_nothing(rig, value: str) -> None:
    a, o, d, _ = rig
    resp = await d.http.post("/v1/chat/completions", json={"messages": HELLO},
                             headers={"x-failoverd-deadline": value})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "x-failoverd-deadline"
    assert a.requests == [] and o.requests == []


# ------------------------------------------------------------------ failoverctl


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-5"])
async def test_ctl_open_for_rejects_non_finite_and_non_positive(rig, value: str) -> None:
    """nan/inf would travel as JSON null: the model was forced open until reset, exit 0."""
    a, o, d, _ = rig
    code, out, err = await failoverctl(d.socket, "open", GPT, "--for", value)
    assert code == 2, (out, err)
    assert out == "" and "--for" in err
    assert (await model_status(d, GPT))["state"] == "closed"


async def test_ctl_open_for_a_finite_time(rig) -> None:
    a, o, d, clock = rig
    code, out, err = await failoverctl(d.socket, "--json", "open", GPT, "--for", "1.5")
    assert code == 0, err
    data = orjson.loads(out)
    assert data["state"] == "forced_open"
    assert math.isclose(data["retry_at"], clock.time() + 1.5)


async def _serve_once(path: str, answer: bytes) -> asyncio.Server:
    """A Unix socket peer that sends `answer` to any request and drops the connection."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.transport.abort()
    return await asyncio.start_unix_server(handle, path)


@pytest.fixture
async def peer(short_dir: Path) -> AsyncIterator[Any]:
    servers: list[asyncio.Server] = []

    async def start(answer: bytes) -> str:
        path = str(short_dir / f"peer{len(servers)}.sock")
        servers.append(await _serve_once(path, answer))
        return path

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


CUT_BODY = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            b'{"health":')
CUT_STREAM = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n"
              b'1c\r\ndata: {"type":"x","n":1}\n\n\r\n')
NOT_HTTP = b"SSH-2.0-OpenSSH_9.6\r\n\r\n"
NOT_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 9\r\n\r\n<h1>x</h1"


@pytest.mark.parametrize("answer", [CUT_BODY, NOT_HTTP, NOT_JSON],
                         ids=["cut-body", "not-http", "not-json"])
@pytest.mark.parametrize("command", [["status"], ["--json", "models"], ["reset", GPT],
                                     ["--json", "health"]])
async def test_ctl_exits_2_without_a_traceback_when_the_peer_is_not_failoverd(
        peer, answer: bytes, command: list[str]) -> None:
    path = await peer(answer)
    code, out, err = await failoverctl(path, *command)
    assert code == 2, err
    assert out == ""
    assert "Traceback" not in err and err.startswith("failoverctl: ")


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
async def test_ctl_events_follow_exits_2_when_the_daemon_dies_mid_stream(
        peer, json_flag: list[str]) -> None:
    path = await peer(CUT_STREAM)
    code, out, err = await failoverctl(path, *json_flag, "events", "--follow")
    assert code == 2, err
    assert "Traceback" not in err and "dropped the connection" in err
    line = out.strip()
    if json_flag:
        assert orjson.loads(line) == {"type": "x", "n": 1}  # events before the cut are kept
    else:
        assert line.endswith("x n=1")


async def test_ctl_json_on_a_non_json_error_is_still_valid_json(peer) -> None:
    path = await peer(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\n"
                      b"Content-Length: 11\r\n\r\n<h1>no</h1>")
    code, out, err = await failoverctl(path, "--json", "status")
    assert code == 1
    assert orjson.loads(out) == "<h1>no</h1>"


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
async def test_a_fallback_gets_max_tokens_cut_to_what_it_can_write(fake_openai, start_daemon,
                                                                   key: str) -> None:
    """The client wrote for the primary; a fallback with a smaller max_output_tokens would
    refuse 16,000 ("max_tokens is too large"): it gets its own limit, the primary the ask."""
    big, small = await fake_openai(reply="big"), await fake_openai(reply="small")
    big.default = "rate_limit_long"
    d = await start_daemon(f"""
{providers(big=big.url, small=small.url)}
[models."big/m"]
provider = "big"
[models."small/m"]
provider = "small"
max_output_tokens = 1000
[routing]
primary = "big/m"
fallbacks = ["small/m"]
""")
    for stream in (False, True):
        resp = await d.http.post("/v1/chat/completions", json={
            "messages": HELLO, key: 16000, "stream": stream})
        assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "small/m"
    assert {r.body[key] for r in big.chat_requests()} == {16000}
    assert [r.body[key] for r in small.chat_requests()] == [1000, 1000]
    # within the limit: as asked
    resp = await d.http.post("/v1/chat/completions", json={"messages": HELLO, key: 10})
    assert resp.status_code == 200 and small.chat_requests()[-1].body[key] == 10
