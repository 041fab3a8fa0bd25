"""End to end: the openai SDK over the Unix socket, the daemon, fake OpenAI upstreams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import openai
import orjson
import pytest

from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO, ask, one_model_config, providers


def two_models(a: FakeOpenAI, b: FakeOpenAI, routing: str = "", extra: str = "") -> str:
    return f"""
[providers.a]
kind = "openai"
base_url = "{a.url}"
api_key_env = "A_KEY"
[providers.b]
kind = "openai"
base_url = "{b.url}"
[models."a/gpt-a"]
provider = "a"
context_window = 8000
[models."b/gpt-b"]
provider = "b"
context_window = 128000
{extra}
[routing]
primary = "a/gpt-a"
fallbacks = ["b/gpt-b"]
retry_after_max = 0.2
deadline = 5
when_all_unavailable = "fail"
{routing}
"""


ENV = {"A_KEY": "sk-test-a"}


@pytest.fixture
async def pair(fake_openai, start_daemon):
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(two_models(a, b), env=ENV)
    return a, b, d


async def test_primary_serves_and_key_is_sent(pair) -> None:
    a, b, d = pair
    _, raw = await ask(d)
    reply = raw.parse()
    assert reply.choices[0].message.content == "from a"
    assert raw.headers["x-failoverd-model"] == "a/gpt-a"
    assert raw.headers["x-failoverd-attempts"] == "1"
    assert "x-failoverd-failover" not in raw.headers
    sent = a.chat_requests()[0]
    assert sent.headers["Authorization"] == "Bearer sk-test-a"
    assert sent.body["model"] == "gpt-a"  # upstream name: the part after the first '/'
    assert b.requests == []


# reason → (fake behaviour, expected upstream calls to a, expected header reason)
FAILOVER_ROWS = [
    ("rate_limit_long", 1, "rate_limit"),  # Retry-After 30 > retry_after_max: no retry
    ("quota", 1, "billing"),
    ("server_error", 2, "server_error"),  # max_retries = 1
    ("overloaded", 2, "overloaded"),
    ("bad_gateway", 2, "server_error"),
    ("auth", 1, "auth"),
    ("forbidden", 1, "auth"),
    ("billing", 1, "billing"),
    ("not_found", 1, "not_found"),
    ("content_filter", 1, "content_filter"),
    ("invalid_json", 2, "invalid_response"),
    ("empty", 2, "invalid_response"),
]


@pytest.mark.parametrize(("behaviour", "calls", "reason"), FAILOVER_ROWS)
async def test_failure_rows_fail_over(pair, behaviour: str, calls: int, reason: str) -> None:
    a, b, d = pair
    a.default = behaviour
    _, raw = await ask(d)
    assert raw.parse().choices[0].message.content == "from b"
    assert raw.headers["x-failoverd-model"] == "b/gpt-b"
    assert raw.headers["x-failoverd-failover"] == f"a/gpt-a>b/gpt-b:{reason}"
    assert len(a.chat_requests()) == calls
    assert raw.headers["x-failoverd-attempts"] == str(calls + 1)


async def test_rate_limit_with_short_retry_after_retries_same_model(pair) -> None:
    a, b, d = pair
    a.push("rate_limit_short")  # retry-after-ms: 50 <= retry_after_max
    _, raw = await ask(d)
    assert raw.headers["x-failoverd-model"] == "a/gpt-a"
    assert raw.headers["x-failoverd-attempts"] == "2"
    assert "x-failoverd-failover" not in raw.headers
    assert b.requests == []


async def test_bad_request_returns_upstream_error_unchanged(pair) -> None:
    a, b, d = pair
    a.push("bad_param")
    with pytest.raises(openai.BadRequestError) as info:
        await d.openai.chat.completions.create(model="default", messages=HELLO)
    assert info.value.status_code == 400
    assert info.value.body["code"] == "invalid_value"
    assert info.value.body["param"] == "temperature"
    assert b.requests == []


async def test_context_overflow_fails_over_only_to_larger_window(fake_openai,
                                                                 start_daemon) -> None:
    a = await fake_openai(default="context")
    small = await fake_openai(reply="small")
    big = await fake_openai(reply="big")
    d = await start_daemon(f"""
{providers(a=a.url, s=small.url, g=big.url)}
[models."a/m"]
provider = "a"
context_window = 128000
[models."s/m"]
provider = "s"
context_window = 32000
[models."g/m"]
provider = "g"
context_window = 1000000
[routing]
primary = "a/m"
fallbacks_from_models = true
when_all_unavailable = "fail"
""")
    raw = await d.openai.chat.completions.with_raw_response.create(model="a/m", messages=HELLO)
    assert raw.parse().choices[0].message.content == "big"
    assert small.requests == []
    assert raw.headers["x-failoverd-failover"] == "a/m>g/m:context_overflow"


async def test_all_candidates_fail_gives_503_with_attempts(pair) -> None:
    a, b, d = pair
    a.default = "server_error"
    b.default = "rate_limit_long"
    resp = await d.http.post("/v1/chat/completions",
                             json={"model": "default", "messages": HELLO})
    assert resp.status_code == 503
    assert int(resp.headers["retry-after"]) >= 1
    err = resp.json()["error"]
    assert err["type"] == "no_model_available"
    assert [(x["model"], x["reason"], x["status"]) for x in err["attempts"]] == [
        ("a/gpt-a", "server_error", 500), ("b/gpt-b", "rate_limit", 429)]
    assert "Rate limit reached" in err["attempts"][1]["message"]


async def test_sdk_sees_503_as_error(pair) -> None:
    a, b, d = pair
    a.default = b.default = "overloaded"
    with pytest.raises(openai.InternalServerError) as info:
        await d.openai.chat.completions.create(model="default", messages=HELLO)
    assert info.value.status_code == 503


async def test_timeout_fails_over_within_deadline(pair) -> None:
    a, b, d = pair
    a.default = "hang"
    started = time.monotonic()
    resp = await d.http.post("/v1/chat/completions",
                             json={"model": "default", "messages": HELLO, "stream": True},
                             headers={"x-failoverd-deadline": "3"})
    # first_token_timeout would be 30 s; the deadline cuts the attempt, then b cannot run
    assert resp.status_code == 503
    assert resp.json()["error"]["attempts"][0]["reason"] == "timeout"
    assert time.monotonic() - started < 5


async def test_deadline_exhaustion_non_streaming(fake_openai, start_daemon) -> None:
    a = await fake_openai(default="hang")
    b = await fake_openai(default="hang")
    d = await start_daemon(two_models(a, b, routing="", extra="").replace("deadline = 5",
                                                                          "deadline = 0.6"),
                           env=ENV)
    started = time.monotonic()
    resp = await d.http.post("/v1/chat/completions", json={"model": "default",
                                                           "messages": HELLO})
    elapsed = time.monotonic() - started
    assert resp.status_code == 503
    reasons = [x["reason"] for x in resp.json()["error"]["attempts"]]
    assert reasons[0] == "timeout"
    assert "deadline" in resp.json()["error"]["attempts"][-1]["message"]
    assert elapsed < 2.0


async def test_streaming_fails_over_before_first_token(pair) -> None:
    a, b, d = pair
    a.push("rate_limit_long")
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO, stream=True)
    assert raw.headers["x-failoverd-model"] == "b/gpt-b"
    assert raw.headers["x-failoverd-failover"] == "a/gpt-a>b/gpt-b:rate_limit"
    text = ""
    async for chunk in raw.parse():
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    assert text == "from b"


async def test_stream_cut_after_first_chunk_ends_with_error(pair) -> None:
    a, b, d = pair
    a.push("cut_stream")
    stream = await d.openai.chat.completions.create(model="a/gpt-a", messages=HELLO,
                                                    stream=True)
    got = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            got.append(chunk)
    assert got  # the first chunks were delivered
    assert "invalid_response" in str(info.value) or "cut" in str(info.value)
    assert b.requests == []  # no failover after the first token


async def test_stream_passthrough_via_curl_style_sse(pair) -> None:
    a, b, d = pair
    async with d.http.stream("POST", "/v1/chat/completions",
                             json={"model": "default", "messages": HELLO,
                                   "stream": True}) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in resp.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunk = orjson.loads(lines[0][6:])
    assert chunk["object"] == "chat.completion.chunk"


async def test_models_endpoint_lists_models_and_chains(pair) -> None:
    a, b, d = pair
    listing = await d.openai.models.list()
    ids = [m.id for m in listing.data]
    assert ids[:2] == ["a/gpt-a", "b/gpt-b"]
    entry = listing.data[0].model_dump()
    assert entry["context_window"] == 8000
    assert entry["state"] == "closed"


async def test_unknown_model_is_404_naming_it(pair) -> None:
    a, b, d = pair
    with pytest.raises(openai.NotFoundError) as info:
        await d.openai.chat.completions.create(model="nope", messages=HELLO)
    assert "'nope'" in info.value.body["message"]


async def test_upstream_name_alias_and_pin(pair) -> None:
    a, b, d = pair
    a.default = "server_error"
    resp = await d.http.post("/v1/chat/completions",
                             json={"model": "gpt-a", "messages": HELLO},
                             headers={"x-failoverd-no-fallback": "1"})
    assert resp.status_code == 503
    assert [x["model"] for x in resp.json()["error"]["attempts"]] == ["a/gpt-a"]
    assert b.requests == []


@pytest.mark.parametrize(("payload", "status", "needle"), [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (b'{"model": "default"}', 400, "'messages' is required"),
    (b'{"messages": "hi"}', 400, "'messages' must be an array"),
    (b'{"messages": []}', 400, "must not be empty"),
    (b'{"messages": [{"role": "wizard", "content": "x"}]}', 400, "messages[0].role"),
    (b'{"messages": [{"role": "user", "content": 5}]}', 400, "messages[0].content"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "'stream'"),
    (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', 400, "max_tokens"),
    (b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', 400, "'model'"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stop": 5}', 400, "'stop'"),
    (b'{"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}', 400,
     "messages[0].content[0].text"),
    (b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', 400,
     "messages[0].content[0].image_url.url"),
    (b'{"messages": [{"role": ["user"], "content": "x"}]}', 400, "messages[0].role"),
    (b'{"messages": [{"role": "assistant", "tool_calls": 5}]}', 400,
     "messages[0].tool_calls"),
    (b'{"messages": [{"role": "assistant", "tool_calls": [{"function": "f"}]}]}', 400,
     "messages[0].tool_calls[0]"),
    (b'{"messages": [{"role": "user", "content": "x"}], "stream_options": "x"}', 400,
     "'stream_options'"),
    (b'{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": ["x"]}}',
     400, "response_format.type"),
    (b'{"messages": [{"role": "user", "content": "x"}], "tool_choice": {"function": "f"}}',
     400, "'tool_choice'"),
])
async def test_bad_input_is_named_and_daemon_keeps_serving(pair, payload, status,
                                                           needle) -> None:
    a, b, d = pair
    resp = await d.http.post("/v1/chat/completions", content=payload,
                             headers={"content-type": "application/json"})
    assert resp.status_code == status
    assert needle in resp.json()["error"]["message"]
    ok = await d.openai.chat.completions.create(model="default", messages=HELLO)
    assert ok.choices[0].message.content == "from a"
    assert len(a.chat_requests()) == 1


async def test_oversize_body_is_413(fake_openai, start_daemon) -> None:
    a = await fake_openai()
    b = await fake_openai()
    d = await start_daemon(two_models(a, b).replace(
        "[providers.a]", "max_body_bytes = 2048\n[providers.a]", 1), env=ENV)
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}
    resp = await d.http.post("/v1/chat/completions", json=big)
    assert resp.status_code == 413
    assert "max_body_bytes" in resp.json()["error"]["message"]
    assert a.requests == []


async def test_chunked_and_slow_bodies_are_read_whole_and_capped(fake_openai,
                                                                 start_daemon) -> None:
    """A body that has fully arrived is taken at once; one still arriving is read as it
    comes, with the cap enforced on the way (no Content-Length to check up front)."""
    a = await fake_openai()
    b = await fake_openai()
    d = await start_daemon(two_models(a, b).replace(
        "[providers.a]", "max_body_bytes = 2048\n[providers.a]", 1), env=ENV)

    async def pieces(*parts: bytes, pause: float = 0.0) -> AsyncIterator[bytes]:
        for part in parts:
            await asyncio.sleep(pause)
            yield part

    small = orjson.dumps({"messages": HELLO})
    for pause in (0.0, 0.05):
        resp = await d.http.post("/v1/chat/completions",
                                 content=pieces(small[:10], small[10:], pause=pause))
        assert resp.status_code == 200, resp.text
        big = orjson.dumps({"messages": [{"role": "user", "content": "x" * 5000}]})
        resp = await d.http.post("/v1/chat/completions",
                                 content=pieces(big[:1000], big[1000:], pause=pause))
        assert resp.status_code == 413
        assert resp.json()["error"]["message"] == \
            "request body exceeds max_body_bytes (2048)"
    # a chunked body in one piece: all of it is there when the handler starts
    for body, status in ((small, 200), (big, 413)):
        reader, writer = await asyncio.open_unix_connection(d.socket)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert len(a.chat_requests()) == 3


async def test_bad_deadline_header(pair) -> None:
    a, b, d = pair
    resp = await d.http.post("/v1/chat/completions", json={"messages": HELLO},
                             headers={"x-failoverd-deadline": "soon"})
    assert resp.status_code == 400
    assert "x-failoverd-deadline" in resp.json()["error"]["message"]


async def test_curl_over_unix_socket(pair) -> None:
    import asyncio
    import shutil
    a, b, d = pair
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--unix-socket", d.socket, "-i", "http://failoverd/v1/chat/completions",
        "-H", "content-type: application/json",
        "-d", '{"model":"default","messages":[{"role":"user","content":"hi"}]}',
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    head, _, body = out.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200")
    assert "x-failoverd-model: a/gpt-a" in head.lower()
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "from a"


async def test_httpx_transport_reused_keepalive(pair) -> None:
    a, b, d = pair
    for _ in range(3):
        r = await d.http.post("/v1/chat/completions", json={"messages": HELLO})
        assert r.status_code == 200
    # upstream connections are pooled: one aiohttp session for every provider
    assert isinstance(d.http, httpx.AsyncClient)
    assert len(a.chat_requests()) == 3


async def test_reasoning_model_gets_max_completion_tokens(fake_openai, start_daemon) -> None:
    a = await fake_openai()
    b = await fake_openai()
    d = await start_daemon(two_models(a, b).replace(
        'provider = "a"\n', 'provider = "a"\ncapabilities = ["reasoning"]\n', 1), env=ENV)
    await d.openai.chat.completions.create(model="a/gpt-a", messages=HELLO, max_tokens=77)
    await d.openai.chat.completions.create(model="b/gpt-b", messages=HELLO, max_tokens=77)
    sent_a = a.chat_requests()[0].body
    assert sent_a["max_completion_tokens"] == 77 and "max_tokens" not in sent_a
    assert b.chat_requests()[0].body["max_tokens"] == 77  # other models get it unchanged


async def test_large_body_is_read_whole(fake_openai, start_daemon) -> None:
    a = await fake_openai(reply="from a")
    d = await start_daemon(one_model_config(a.url))
    prompt = "word " * 150_000  # 750 KB: many socket reads (the fake takes up to 1 MB)
    reply = await d.openai.chat.completions.create(
        model="default", messages=[{"role": "user", "content": prompt}])
    assert reply.choices[0].message.content == "from a"
    assert a.chat_requests()[0].body["messages"][0]["content"] == prompt


async def test_client_going_away_cancels_the_request(fake_openai, start_daemon) -> None:
    a = await fake_openai(default="slow:5")
    d = await start_daemon(one_model_config(a.url, model="max_concurrency = 1"))
    with pytest.raises(httpx.ReadTimeout):
        await d.http.post("/v1/chat/completions", json={"messages": HELLO}, timeout=0.3)
    for _ in range(100):  # bounded: the cancellation lands within a few loop turns
        status = (await d.http.get("/v1/status")).json()
        if status["inflight"] == 0:
            break
        await asyncio.sleep(0.02)
    assert status["inflight"] == 0
    assert status["models"]["a/m"]["inflight"] == 0  # the concurrency slot is free again
    metrics = (await d.http.get("/metrics")).text
    assert 'failoverd_requests_total{model="",outcome="cancelled"} 1' in metrics
    assert 'outcome="ok"' not in metrics
    # the abandoned upstream call's connection was closed, not pooled
    up = origin(a.url)
    assert f'failoverd_upstream_connections_opened_total{{upstream="{up}"}} 1' in metrics
    assert f'failoverd_upstream_connections{{upstream="{up}"}} 0' in metrics
    assert f'failoverd_upstream_idle_connections{{upstream="{up}"}} 0' in metrics


def origin(url: str) -> str:
    """scheme://host:port of a fake's URL, as the upstream connection metrics name it."""
    parts = httpx.URL(url)
    return f"{parts.scheme}://{parts.host}:{parts.port}"


async def test_upstream_connections_are_kept_alive_and_counted(pair) -> None:
    a, b, d = pair
    for _ in range(3):
        await d.openai.chat.completions.create(model="default", messages=HELLO)
    metrics = (await d.http.get("/metrics")).text
    up = origin(a.url)
    assert f'failoverd_upstream_connections_opened_total{{upstream="{up}"}} 1' in metrics
    assert f'failoverd_upstream_connections{{upstream="{up}"}} 1' in metrics
    assert f'failoverd_upstream_idle_connections{{upstream="{up}"}} 1' in metrics
    assert origin(b.url) not in metrics  # never called: no pool


async def test_queue_waits_for_the_capable_model_only(fake_openai, start_daemon) -> None:
    a = await fake_openai(reply="text only")
    b = await fake_openai(reply="sees")
    d = await start_daemon(f"""
{providers(a=a.url, b=b.url)}
[models."a/text"]
provider = "a"
capabilities = []
[models."b/vision"]
provider = "b"
capabilities = ["vision"]
[routing]
primary = "a/text"
fallbacks = ["b/vision"]
when_all_unavailable = "queue"
queue_timeout = 5
""")
    started = time.monotonic()
    assert (await d.http.post("/v1/models/b/vision/open", json={"seconds": 0.3})).status_code == 200
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    resp = await d.http.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": [image]}]})
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == "b/vision"
    assert 0.25 < time.monotonic() - started < 3
    assert a.requests == []


async def test_sse_comments_are_not_a_first_token(fake_openai, start_daemon) -> None:
    a = await fake_openai(default="comments:5")  # "processing" for 5 s before any token
    b = await fake_openai(reply="from b")
    d = await start_daemon(two_models(a, b).replace(
        "context_window = 8000", "context_window = 8000\nfirst_token_timeout = 0.5"), env=ENV)
    started = time.monotonic()
    resp = await d.http.post("/v1/chat/completions",
                             json={"model": "default", "messages": HELLO, "stream": True})
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == "b/gpt-b"
    assert resp.headers["x-failoverd-failover"] == "a/gpt-a>b/gpt-b:timeout"
    assert time.monotonic() - started < 3


async def test_in_stream_error_first_is_classified_by_its_code(pair) -> None:
    a, b, d = pair
    a.push("error_first")  # 200, then data: {"error": {"code": "insufficient_quota"}}
    resp = await d.http.post("/v1/chat/completions",
                             json={"model": "default", "messages": HELLO, "stream": True})
    assert resp.headers["x-failoverd-failover"] == "a/gpt-a>b/gpt-b:billing"
    assert resp.headers["x-failoverd-attempts"] == "2"  # billing: no same-model retry
    status = (await d.http.get("/v1/status")).json()
    assert status["providers"]["a"]["credentials"] == "billing"


async def test_api_key_header_sends_the_key_where_the_gateway_wants_it(
        fake_openai, fake_anthropic, start_daemon) -> None:
    """Azure OpenAI takes `api-key: <key>`; some gateways put an Anthropic key elsewhere."""
    a, ant = await fake_openai(reply="from azure"), await fake_anthropic(reply="from ant")
    d = await start_daemon(f"""
[providers.azure]
kind = "openai"
base_url = "{a.url}"
api_key_env = "AZURE_KEY"
api_key_header = "api-key"
[providers.ant]
kind = "anthropic"
base_url = "{ant.url}"
api_key_env = "ANT_KEY"
api_key_header = "x-gateway-key"
[models."azure/gpt"]
provider = "azure"
[models."ant/claude"]
provider = "ant"
[routing]
primary = "azure/gpt"
""", env={"AZURE_KEY": "azure-secret-1", "ANT_KEY": "ant-secret-2"})
    for model in ("azure/gpt", "ant/claude"):
        resp = await d.http.post("/v1/chat/completions", json={"model": model, "messages": HELLO,
                                                               "max_tokens": 5})
        assert resp.status_code == 200, resp.text
    sent = {k.lower(): v for k, v in a.chat_requests()[0].headers.items()}
    assert sent["api-key"] == "azure-secret-1" and "authorization" not in sent
    sent = {k.lower(): v for k, v in ant.requests[-1].headers.items()}
    assert sent["x-gateway-key"] == "ant-secret-2" and "x-api-key" not in sent
