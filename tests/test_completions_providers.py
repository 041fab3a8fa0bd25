"""POST /v1/completions end to end over each provider kind's own wire format: the official
openai SDK (and curl, and raw HTTP) over the Unix socket, the real daemon, and fake upstreams.

OpenAI-compatible upstreams get the client's body at `{base_url}/completions` with the
upstream model name, and their answers and streams come back byte for byte; Ollama gets
/api/generate and its answer is translated. Failures before the first chunk fail over
invisibly, after it end the stream with an error event; a chat-only model's 404 and a
non-coder's "does not support insert" are `incapable` (no breaker count); what one
/api/generate call cannot express is `incapable` without a call."""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any

import openai
import orjson
import pytest

from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import ERRORS, FakeOpenAI, completion_text, cut_completion
from tests.helpers import HELLO, completion_stream, status
from tests.helpers import sse_payloads as events

INSTRUCT = "gpt-3.5-turbo-instruct"
CODER = "qwen2.5-coder:1.5b"
PLAIN = "qwen2.5:7b"  # an Ollama model whose template takes no suffix
OPENAI_REPLY = FakeOpenAI.reply
OLLAMA_REPLY = FakeOllama.reply
KEYS = {"OA_KEY": "sk-oa", "BK_KEY": "sk-bk", "OL_KEY": "ol-key", "GM_KEY": "g-key"}


def config(oa: FakeOpenAI, bk: FakeOpenAI, ol: FakeOllama, gm_url: str) -> str:
    chains = "".join(f'[chains."{head.split("/")[1]}-then-bk"]\nmodels = ["{head}", '
                     f'"bk/instruct"]\n'
                     for head in ("oa/instruct", "oa/chat", "ol/coder", "ol/plain",
                                  "ol/missing", "gm/flash"))
    return f"""
[providers.oa]
kind = "openai"
base_url = "{oa.url}"
api_key_env = "OA_KEY"
[providers.bk]
kind = "openai"
base_url = "{bk.url}"
api_key_env = "BK_KEY"
[providers.su]
kind = "openai"
base_url = "{bk.url}"
api_key_env = "BK_KEY"
stream_usage = true
[providers.ol]
kind = "ollama"
base_url = "{ol.url}"
api_key_env = "OL_KEY"
[providers.gm]
kind = "gemini"
base_url = "{gm_url}"
api_key_env = "GM_KEY"
[models."oa/instruct"]
provider = "oa"
name = "{INSTRUCT}"
max_retries = 0
[models."oa/chat"]
provider = "oa"
name = "gpt-4o"
max_retries = 0
[models."bk/instruct"]
provider = "bk"
name = "{INSTRUCT}"
[models."su/instruct"]
provider = "su"
name = "{INSTRUCT}"
[models."ol/coder"]
provider = "ol"
name = "{CODER}"
context_window = 8192
max_retries = 0
[models."ol/plain"]
provider = "ol"
name = "{PLAIN}"
max_retries = 0
[models."ol/missing"]
provider = "ol"
name = "starcoder2:3b"
max_retries = 0
[models."gm/flash"]
provider = "gm"
name = "gemini-2.5-flash"
{chains}
[routing]
primary = "oa/instruct"
retry_after_max = 0.2
when_all_unavailable = "fail"
[probes]
kind = "none"
"""


@pytest.fixture
async def rig(fake_openai: Any, fake_ollama: Any, fake_gemini: Any, start_daemon: Any) -> Any:
    oa, bk, ol, gm = (await fake_openai(), await fake_openai(), await fake_ollama(),
                      await fake_gemini())
    d = await start_daemon(config(oa, bk, ol, gm.url), env=KEYS)
    d.oa, d.bk, d.ol, d.gm = oa, bk, ol, gm
    return d


async def complete(d: Any, headers: dict[str, str] | None = None, **body: Any) -> Any:
    return await d.http.post("/v1/completions", json=body, headers=headers)


async def raw_stream(d: Any, **body: Any) -> tuple[Any, bytes]:
    """A streamed completion's response and its whole body as the client got it."""
    async with d.http.stream("POST", "/v1/completions", json={**body, "stream": True}) as resp:
        return resp, await resp.aread()


async def metrics(d: Any) -> str:
    text: str = (await d.http.get("/metrics")).text
    return text


def tokens(model: str, prompt: int, completion: int) -> list[str]:
    return [f'failoverd_tokens_total{{model="{model}",kind="prompt"}} {prompt}',
            f'failoverd_tokens_total{{model="{model}",kind="completion"}} {completion}']


def words(text: str) -> int:
    return len(text.split())


# ------------------------------------------------------------- what the OpenAI fake answers


def openai_usage(prompt: str, suffix: str | None, text: str) -> dict[str, int]:
    """The fake's usage: a token per word of prompt and suffix, and per word generated."""
    used = words(prompt) + words(suffix or "")
    return {"prompt_tokens": used, "completion_tokens": words(text),
            "total_tokens": used + words(text)}


def openai_answer(body: dict[str, Any], created: int) -> dict[str, Any]:
    """What the OpenAI fake answers a one-prompt, one-choice request, as it serialises it."""
    pieces, finish = cut_completion(
        completion_text(OPENAI_REPLY, body["prompt"], body.get("suffix")),
        body.get("max_tokens", 16), body.get("stop"))
    text = "".join(pieces)
    return {"id": "cmpl-fake", "object": "text_completion", "created": created,
            "model": INSTRUCT, "system_fingerprint": "fp_fake",
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
            "usage": openai_usage(body["prompt"], body.get("suffix"), text)}


def openai_stream(body: dict[str, Any], created: int, *, usage: bool) -> bytes:
    """The OpenAI fake's whole SSE body for a one-prompt, one-choice request."""
    pieces, finish = cut_completion(
        completion_text(OPENAI_REPLY, body["prompt"], body.get("suffix")),
        body.get("max_tokens", 16), body.get("stop"))
    base = {"id": "cmpl-fake", "object": "text_completion", "created": created,
            "model": INSTRUCT}
    out = b""
    for text, end in [*((p, None) for p in pieces), ("", finish)]:
        chunk: dict[str, Any] = {**base, "choices": [
            {"text": text, "index": 0, "logprobs": None, "finish_reason": end}]}
        if usage:
            chunk["usage"] = None
        out += b"data: " + orjson.dumps(chunk) + b"\n\n"
    if usage:
        out += b"data: " + orjson.dumps({**base, "choices": [], "usage": openai_usage(
            body["prompt"], body.get("suffix"), "".join(pieces))}) + b"\n\n"
    return out + b"data: [DONE]\n\n"


# ------------------------------------------------------------- OpenAI-compatible upstreams


async def test_the_body_goes_upstream_as_it_is_and_the_answer_comes_back_byte_for_byte(
        rig: Any) -> None:
    d = rig
    body = {"model": "oa/instruct", "prompt": "def fib(n):", "suffix": "    return a",
            "max_tokens": 6, "temperature": 0.2, "top_p": 0.9, "stop": ["\n\n", "#"],
            "seed": 7, "user": "u1", "presence_penalty": 0.5, "stream": False,
            "stream_options": {"include_usage": True}}
    resp = await complete(d, **body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "oa/instruct"
    assert "x-failoverd-failover" not in resp.headers
    expected = openai_answer(body, resp.json()["created"])
    assert expected["choices"][0]["finish_reason"] == "length"
    # aiohttp's json.dumps spacing, which failoverd's orjson would not write: untouched
    assert resp.content == json.dumps(expected).encode()
    (sent,) = d.oa.completion_requests()
    assert sent.path == "/v1/completions"
    # the upstream model name; the stream-only keys dropped from a request not streamed
    assert sent.body == {**{k: v for k, v in body.items()
                            if k not in ("stream", "stream_options")}, "model": INSTRUCT}
    assert sent.headers["Authorization"] == "Bearer sk-oa"
    assert d.oa.chat_requests() == [] and d.bk.requests == []
    usage = expected["usage"]
    text = await metrics(d)
    for line in tokens("oa/instruct", usage["prompt_tokens"], usage["completion_tokens"]):
        assert line in text
    assert 'failoverd_requests_total{model="oa/instruct",outcome="ok"} 1' in text


async def test_the_sdk_gets_several_prompts_n_echo_and_logprobs_passed_through(
        rig: Any) -> None:
    d = rig
    raw = await d.openai.completions.with_raw_response.create(
        model="oa/instruct", prompt=["one two", "three"], n=2, echo=True, logprobs=1,
        max_tokens=3, best_of=2)
    got = raw.parse()
    (sent,) = d.oa.completion_requests()
    assert sent.body == {"model": INSTRUCT, "prompt": ["one two", "three"], "n": 2,
                         "echo": True, "logprobs": 1, "max_tokens": 3, "best_of": 2}
    assert raw.http_response.content == json.dumps(raw.http_response.json()).encode()
    assert [c.index for c in got.choices] == [0, 1, 2, 3]
    texts = [c.text for c in got.choices]
    assert texts[:2] == ["one twoHello from the"] * 2
    assert texts[2:] == ["threeHello from the"] * 2
    assert all(c.finish_reason == "length" for c in got.choices)
    logprobs = got.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens == ["one two", "Hello", " from", " the"]
    assert logprobs.text_offset == [0, 7, 12, 17]
    # the fake's count, echoed prompts included: the upstream's usage as it is
    assert got.usage is not None
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (3, 2 * 4 + 2 * 3)


async def test_a_stream_passes_through_byte_for_byte(rig: Any) -> None:
    d = rig
    body = {"model": "oa/instruct", "prompt": "SELECT * FROM", "suffix": "WHERE id = 1",
            "max_tokens": 5, "stream_options": {"include_usage": True}}
    resp, raw = await raw_stream(d, **body)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    created = events(raw)[0]["created"]
    assert raw == openai_stream(body, created, usage=True)
    (sent,) = d.oa.completion_requests()
    assert sent.body == {**body, "model": INSTRUCT, "stream": True}
    # without include_usage: no usage chunk, and none asked of the upstream
    del body["stream_options"]
    resp, raw = await raw_stream(d, **body)
    assert raw == openai_stream(body, events(raw)[0]["created"], usage=False)
    assert d.oa.completion_requests()[1].body == {**body, "model": INSTRUCT, "stream": True}
    text = await metrics(d)
    # the first stream's usage counted; the second told none
    for line in tokens("oa/instruct", 3 + 4, 5):
        assert line in text
    assert 'failoverd_requests_total{model="oa/instruct",outcome="ok"} 2' in text


async def test_the_sdk_streams_what_the_upstream_streams(rig: Any) -> None:
    d = rig
    stream = await d.openai.completions.create(
        model="oa/instruct", prompt="x = ", stop="fake", stream=True,
        stream_options={"include_usage": True})
    pieces, finishes, usage = await completion_stream(stream)
    # cut before the stop sequence, finish_reason stop
    assert "".join(pieces) == "Hello from the "
    assert finishes[-1] == "stop" and finishes[:-1] == [None] * (len(finishes) - 1)
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (2, 3)


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_curl_gets_the_upstream_stream_unchanged(rig: Any) -> None:
    d = rig
    body = {"model": "oa/instruct", "prompt": "curl", "max_tokens": 2, "stream": True}
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sN", "--unix-socket", d.socket, "http://failoverd/v1/completions",
        "-H", "content-type: application/json", "-d", orjson.dumps(body).decode(),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    assert out == openai_stream(body, events(out)[0]["created"], usage=False)


async def test_stream_usage_asks_a_text_stream_for_its_usage(rig: Any) -> None:
    d = rig
    body = {"model": "su/instruct", "prompt": "count me", "max_tokens": 3}
    resp, raw = await raw_stream(d, **body)
    assert resp.status_code == 200
    # the client that did not ask never sees the usage chunk
    assert all(e == "[DONE]" or e["choices"] for e in events(raw))
    (sent,) = d.bk.completion_requests()
    assert sent.body["stream_options"] == {"include_usage": True}
    for line in tokens("su/instruct", 2, 3):
        assert line in await metrics(d)


@pytest.mark.parametrize(("behaviour", "stream", "reason"), [
    ("rate_limit", False, "rate_limit"),
    ("server_error", False, "server_error"),
    ("invalid_json", False, "invalid_response"),
    ("rate_limit", True, "rate_limit"),
    ("overloaded", True, "overloaded"),
    ("error_first", True, "billing"),  # a 200 whose first event is an error
    ("openrouter_error_first", True, "server_error"),
])
async def test_a_failure_before_the_first_chunk_fails_over_down_the_chain(
        rig: Any, behaviour: str, stream: bool, reason: str) -> None:
    d = rig
    d.oa.push(behaviour)
    body = {"model": "instruct-then-bk", "prompt": "fail over", "max_tokens": 4}
    if stream:
        resp, raw = await raw_stream(d, **body)
        assert raw == openai_stream(body, events(raw)[0]["created"], usage=False)
    else:
        resp = await complete(d, **body)
        assert resp.json() == openai_answer(body, resp.json()["created"])
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-failover"] == f"oa/instruct>bk/instruct:{reason}"
    assert resp.headers["x-failoverd-model"] == "bk/instruct"
    assert len(d.oa.completion_requests()) == 1  # max_retries = 0: straight down the chain
    (sent,) = d.bk.completion_requests()
    assert sent.body["model"] == INSTRUCT and sent.headers["Authorization"] == "Bearer sk-bk"
    assert (f'failoverd_failovers_total{{from_model="oa/instruct",to_model="bk/instruct",'
            f'reason="{reason}"}} 1') in await metrics(d)


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("stream_error", "server_error"),
    ("openrouter_error_mid", "server_error"),
    ("cut_stream", "invalid_response"),  # the body ended before [DONE]
])
async def test_a_failure_mid_stream_ends_it_with_an_error_event(
        rig: Any, behaviour: str, reason: str) -> None:
    d = rig
    d.oa.push(behaviour)
    resp, raw = await raw_stream(d, model="instruct-then-bk", prompt="break", max_tokens=9)
    assert resp.status_code == 200 and "x-failoverd-failover" not in resp.headers
    *chunks, last = events(raw)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello from"
    assert last["error"]["type"] == reason, last
    assert "[DONE]" not in events(raw)
    assert d.bk.requests == []  # too late to fail over
    assert 'failoverd_requests_total{model="oa/instruct",outcome="stream_error"} 1' \
        in await metrics(d)
    # the SDK raises it
    d.oa.push(behaviour)
    stream = await d.openai.completions.create(model="oa/instruct", prompt="break",
                                               max_tokens=9, stream=True)
    pieces = []
    with pytest.raises(openai.APIError):
        async for event in stream:
            pieces.extend(c.text for c in event.choices)
    assert "".join(pieces) == "Hello from"


async def test_a_chat_only_model_is_incapable_and_its_breaker_stays_closed(rig: Any) -> None:
    d = rig
    for _ in range(3):
        resp = await complete(d, model="chat-then-bk", prompt="hi", max_tokens=2)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-failoverd-failover"] == "oa/chat>bk/instruct:incapable"
        assert resp.headers["x-failoverd-model"] == "bk/instruct"
    assert [r.body["model"] for r in d.oa.completion_requests()] == ["gpt-4o"] * 3
    # alone: a 503 naming OpenAI's refusal, which no retry cures
    resp = await complete(d, {"x-failoverd-no-fallback": "1"}, model="oa/chat", prompt="hi")
    assert resp.status_code == 503 and resp.headers["x-should-retry"] == "false"
    (attempt,) = resp.json()["error"]["attempts"]
    assert attempt["reason"] == "incapable" and "This is a chat model" in attempt["message"]
    model = (await status(d))["models"]["oa/chat"]
    assert model["consecutive_failures"] == 0 and model["state"] == "closed", model
    # chat to the same model is untouched
    chat = await d.openai.chat.completions.create(model="oa/chat", messages=HELLO)
    assert chat.choices[0].message.content == OPENAI_REPLY
    assert 'failoverd_breaker_state{model="oa/chat"} 0' in await metrics(d)


async def test_an_upstream_bad_request_passes_through_unchanged(rig: Any) -> None:
    d = rig
    for stream in (False, True):
        d.oa.push("bad_param")
        resp = await complete(d, model="instruct-then-bk", prompt="x", temperature=9,
                              stream=stream)
        assert resp.status_code == 400
        assert resp.content == ERRORS["bad_param"][1]
        assert resp.headers["content-type"].startswith("application/json")
    assert d.bk.requests == []
    assert (await status(d))["models"]["oa/instruct"]["consecutive_failures"] == 0
    assert 'failoverd_requests_total{model="oa/instruct",outcome="bad_request"} 2' \
        in await metrics(d)
    with pytest.raises(openai.BadRequestError) as caught:
        d.oa.push("bad_param")
        await d.openai.completions.create(model="oa/instruct", prompt="x", temperature=9)
    assert caught.value.code == "invalid_value" and caught.value.param == "temperature"


async def test_gemini_has_no_text_completions_and_is_never_called(rig: Any) -> None:
    d = rig
    resp = await complete(d, model="flash-then-bk", prompt="x", max_tokens=1)
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-failover"] == "gm/flash>bk/instruct:incapable"
    assert resp.headers["x-failoverd-attempts"] == "1"
    assert d.gm.requests == []


# ------------------------------------------------------------- Ollama's /api/generate


def ollama_tokens(prompt: str, suffix: str = "") -> int:
    """The fake Ollama's prompt_eval_count: a token per two characters."""
    return max(1, (len(prompt) + len(suffix)) // 2)


async def test_ollama_gets_a_generate_request_and_the_answer_is_a_text_completion(
        rig: Any) -> None:
    d = rig
    prompt, suffix = "def add(a, b):\n", "\n    return c"
    raw = await d.openai.completions.with_raw_response.create(
        model="ol/coder", prompt=prompt, suffix=suffix, max_tokens=40, temperature=0.1,
        top_p=0.9, seed=7, stop=["\n\n"], frequency_penalty=0.2, user="u1")
    assert raw.headers["x-failoverd-model"] == "ol/coder"
    got = raw.parse()
    (sent,) = d.ol.generate_requests()
    assert sent.body == {
        "model": CODER, "prompt": prompt, "stream": False, "suffix": suffix,
        "options": {"num_predict": 40, "temperature": 0.1, "top_p": 0.9, "seed": 7,
                    "frequency_penalty": 0.2, "stop": ["\n\n"], "num_ctx": 8192},
        "truncate": False}
    assert sent.headers["Authorization"] == "Bearer ol-key"
    # fill in the middle: the coder saw both sides (the fake's text holds them)
    text = completion_text(OLLAMA_REPLY, prompt, suffix)
    assert got.object == "text_completion" and got.model == CODER
    assert got.id.startswith("cmpl-")
    (choice,) = got.choices
    assert (choice.text, choice.index, choice.finish_reason, choice.logprobs) == (
        text, 0, "stop", None)
    assert got.usage is not None
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (
        ollama_tokens(prompt, suffix), len(text.split(" ")))
    for line in tokens("ol/coder", ollama_tokens(prompt, suffix), len(text.split(" "))):
        assert line in await metrics(d)


async def test_ollama_num_predict_is_openais_default_of_16_when_unset(rig: Any) -> None:
    d = rig
    prompt = " ".join(f"w{i}" for i in range(20))
    got = await d.openai.completions.create(model="ol/plain", prompt=[prompt])
    (sent,) = d.ol.generate_requests()
    # no context_window: no num_ctx, no truncate; a one-string list is one prompt
    assert sent.body == {"model": PLAIN, "prompt": prompt, "stream": False,
                         "options": {"num_predict": 16}}
    (choice,) = got.choices
    pieces, finish = cut_completion(completion_text(OLLAMA_REPLY, prompt), 16, None)
    assert (choice.text, choice.finish_reason) == ("".join(pieces), "length")
    assert finish == "length"


async def test_ollama_streams_text_completion_chunks(rig: Any) -> None:
    d = rig
    prompt, suffix = "for i in", ":\n    pass"
    stream = await d.openai.completions.create(
        model="ol/coder", prompt=prompt, suffix=suffix, max_tokens=5, stream=True,
        stream_options={"include_usage": True})
    chunks = [event async for event in stream]
    (sent,) = d.ol.generate_requests()
    assert sent.body["stream"] is True and sent.body["suffix"] == suffix
    assert sent.body["options"]["num_predict"] == 5
    *texts, usage_chunk = chunks
    pieces, _ = cut_completion(completion_text(OLLAMA_REPLY, prompt, suffix), 5, None)
    assert [c.choices[0].text for c in texts] == [*pieces, ""]
    assert [c.choices[0].finish_reason for c in texts] == [None] * 5 + ["length"]
    assert all(c.object == "text_completion" and c.model == CODER for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (
        ollama_tokens(prompt, suffix), 5)
    for line in tokens("ol/coder", ollama_tokens(prompt, suffix), 5):
        assert line in await metrics(d)
    # without include_usage: no usage chunk; finish_reason stop when nothing cut it
    resp, raw = await raw_stream(d, model="ol/coder", prompt="p")
    got = events(raw)
    assert got[-1] == "[DONE]"
    assert all(e["choices"] and "usage" not in e for e in got[:-1])
    assert "".join(e["choices"][0]["text"] for e in got[:-1]) == completion_text(
        OLLAMA_REPLY, "p")
    assert got[-2]["choices"][0]["finish_reason"] == "stop"


async def test_an_ollama_stream_is_counted_when_the_client_did_not_ask_for_usage(
        rig: Any) -> None:
    d = rig
    resp, raw = await raw_stream(d, model="ol/plain", prompt="count", max_tokens=3)
    assert resp.status_code == 200 and events(raw)[-1] == "[DONE]"
    for line in tokens("ol/plain", ollama_tokens("count"), 3):
        assert line in await metrics(d)


async def test_a_suffix_for_a_model_without_insert_is_incapable(rig: Any) -> None:
    d = rig
    for stream in (False, True):
        resp = await complete(d, model="plain-then-bk", prompt="a", suffix="b",
                              max_tokens=2, stream=stream)
        assert resp.status_code == 200, resp.text
        # Ollama's 400 says "does not support insert": incapable, the chain goes on
        assert resp.headers["x-failoverd-failover"] == "ol/plain>bk/instruct:incapable"
    assert [r.body["suffix"] for r in d.ol.generate_requests()] == ["b", "b"]
    assert [r.body["suffix"] for r in d.bk.completion_requests()] == ["b", "b"]
    resp = await complete(d, {"x-failoverd-no-fallback": "1"}, model="ol/plain",
                          prompt="a", suffix="b")
    assert resp.status_code == 503 and resp.headers["x-should-retry"] == "false"
    (attempt,) = resp.json()["error"]["attempts"]
    assert attempt["reason"] == "incapable"
    assert f"library/{PLAIN} does not support insert" in attempt["message"]
    model = (await status(d))["models"]["ol/plain"]
    assert model["consecutive_failures"] == 0 and model["state"] == "closed"


@pytest.mark.parametrize("extra", [
    {"prompt": ["one", "two"]},
    {"prompt": [1, 2, 3]},
    {"prompt": [[1, 2]]},
    {"n": 2},
    {"best_of": 2},
    {"echo": True},
    {"logprobs": 1},
    {"logprobs": 1, "stream": True},
], ids=["prompts", "tokens", "token_arrays", "n", "best_of", "echo", "logprobs",
        "logprobs_streamed"])
async def test_what_one_generate_call_cannot_give_is_incapable_without_a_call(
        rig: Any, extra: dict[str, Any]) -> None:
    d = rig
    resp = await complete(d, **{"model": "coder-then-bk", "prompt": "x", "max_tokens": 2,
                                **extra})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-failover"] == "ol/coder>bk/instruct:incapable"
    assert resp.headers["x-failoverd-attempts"] == "1"
    assert d.ol.requests == []
    (sent,) = d.bk.completion_requests()
    assert sent.body["prompt"] == extra.get("prompt", "x")


async def test_logprobs_zero_is_incapable_on_ollama_too(rig: Any) -> None:
    d = rig
    resp = await complete(d, model="coder-then-bk", prompt="x", max_tokens=2, logprobs=0)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["logprobs"] is not None
    assert resp.headers["x-failoverd-failover"] == "ol/coder>bk/instruct:incapable"
    assert d.ol.requests == []


@pytest.mark.parametrize("stream", [False, True])
async def test_a_load_only_answer_is_invalid_and_fails_over(rig: Any, stream: bool) -> None:
    d = rig
    d.ol.push("load")  # Ollama only loaded the model (done_reason "load"): no answer
    resp = await complete(d, model="coder-then-bk", prompt="x", max_tokens=3, stream=stream)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-failover"] == "ol/coder>bk/instruct:invalid_response"
    assert len(d.ol.generate_requests()) == 1
    assert len(d.bk.completion_requests()) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_an_empty_prompt_is_for_another_model_than_ollama(rig: Any, stream: bool) -> None:
    """Ollama answers an empty prompt (fill-in-the-middle at the top of a file) by only
    loading the model: it is not asked, and nothing counts against it."""
    d = rig
    resp = await complete(d, model="coder-then-bk", prompt="", suffix="rest", max_tokens=3,
                          stream=stream)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-failover"] == "ol/coder>bk/instruct:incapable"
    assert d.ol.generate_requests() == []


@pytest.mark.parametrize(("behaviour", "stream", "reason"), [
    ("busy", False, "overloaded"),
    ("busy", True, "overloaded"),
    ("stream_error", False, "server_error"),  # Ollama's 500 when not streaming
    ("out_of_memory", True, "server_error"),
    ("invalid_json", False, "invalid_response"),
])
async def test_an_ollama_failure_before_the_answer_fails_over(
        rig: Any, behaviour: str, stream: bool, reason: str) -> None:
    d = rig
    d.ol.push(behaviour)
    resp = await complete(d, model="coder-then-bk", prompt="go", stream=stream)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-failover"] == f"ol/coder>bk/instruct:{reason}"
    assert len(d.bk.completion_requests()) == 1


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("stream_error", "server_error"),
    ("cut_stream", "invalid_response"),
    ("no_done", "invalid_response"),
])
async def test_an_ollama_failure_mid_stream_ends_it_with_an_error_event(
        rig: Any, behaviour: str, reason: str) -> None:
    d = rig
    d.ol.push(behaviour)
    resp, raw = await raw_stream(d, model="coder-then-bk", prompt="go", max_tokens=9)
    assert resp.status_code == 200 and "x-failoverd-failover" not in resp.headers
    *chunks, last = events(raw)
    assert last["error"]["type"] == reason, last
    assert "".join(c["choices"][0]["text"] for c in chunks).startswith("Hello from")
    assert d.bk.requests == []
    assert 'failoverd_requests_total{model="ol/coder",outcome="stream_error"} 1' \
        in await metrics(d)


async def test_an_unknown_ollama_model_is_not_found(rig: Any) -> None:
    d = rig
    resp = await complete(d, {"x-failoverd-no-fallback": "1"}, model="ol/missing",
                          prompt="x")
    assert resp.status_code == 503
    (attempt,) = resp.json()["error"]["attempts"]
    assert attempt["reason"] == "not_found"
    assert 'model "starcoder2:3b" not found' in attempt["message"]
    # a model that is not there opens its breaker: the chain skips it without a call
    assert (await status(d))["models"]["ol/missing"]["state"] == "open"
    resp = await complete(d, model="missing-then-bk", prompt="x")
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == "bk/instruct"
    assert len(d.ol.generate_requests()) == 1
