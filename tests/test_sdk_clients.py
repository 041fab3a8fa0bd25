"""Real official clients end to end: the openai and anthropic SDKs (and curl) over the Unix
socket, each served by its own API and by the other one (fake upstreams on 127.0.0.1).

What other files already prove is not repeated here (plain calls, tools, images and
failover per provider kind: test_chat, test_cross_provider, test_messages_front).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import anthropic
import httpx
import httpx2
import openai
import pytest

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai import FakeOpenAI
from tests.helpers import providers

USER = [{"role": "user", "content": "hi"}]
PIN = {"x-failoverd-no-fallback": "1"}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def config(oai: FakeOpenAI, ant: FakeAnthropic) -> str:
    return f"""
{providers(oai=oai.url, ant=("anthropic", ant.url))}
[models."oai/gpt"]
provider = "oai"
capabilities = ["tools", "vision", "json"]
[models."ant/claude"]
provider = "ant"
capabilities = ["tools", "vision", "json"]
[chains.both]
models = ["ant/claude", "oai/gpt"]
[routing]
primary = "oai/gpt"
when_all_unavailable = "fail"
"""


def reasoning_config(oai: FakeOpenAI, ant: FakeAnthropic) -> str:
    """`config`'s two models, both able to reason (thinking on towards Anthropic)."""
    return config(oai, ant).replace('"json"]', '"json", "reasoning"]')


def anthropic_client(socket: str, max_retries: int = 0) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key="unused", base_url="http://failoverd", max_retries=max_retries,
        http_client=httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=socket),
                                       timeout=30))


def openai_client(socket: str, max_retries: int = 0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key="unused", base_url="http://failoverd/v1", max_retries=max_retries,
        http_client=httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=socket),
                                      timeout=30))


@pytest.fixture
async def rig(fake_openai, fake_anthropic, start_daemon):
    oai = await fake_openai()
    ant = await fake_anthropic()
    d = await start_daemon(config(oai, ant))
    client = anthropic_client(d.socket)
    yield oai, ant, d, client
    await client.close()


async def curl(*args: str) -> tuple[str, str]:
    """curl's (head, body) for `args` (with -i); skips the test without curl."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    proc = await asyncio.create_subprocess_exec("curl", "-sS", "-i", *args,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    head, _, body = out.decode().partition("\r\n\r\n")
    return head, body


# ------------------------------------------------------------------ openai SDK

async def test_openai_sdk_typed_503_then_its_retry_honours_retry_after(rig) -> None:
    oai, ant, d, client = rig
    oai.push("server_error", "server_error")  # failoverd's own retry included: both fail
    with pytest.raises(openai.InternalServerError) as info:
        await d.openai.chat.completions.create(model="oai/gpt", messages=USER,
                                               extra_headers=PIN)
    err = info.value
    assert err.status_code == 503 and err.code == "no_model_available"
    assert err.type == "no_model_available"
    assert [a["reason"] for a in err.body["attempts"]] == ["server_error"]
    assert err.response.headers["Retry-After"] == "1"
    # the SDK's own retry waits for our Retry-After, then the recovered model serves
    await d.http.post("/v1/models/oai/gpt/reset")
    oai.push("server_error", "server_error")
    retrying = openai_client(d.socket, max_retries=1)
    try:
        started = time.monotonic()
        raw = await retrying.chat.completions.with_raw_response.create(
            model="oai/gpt", messages=USER, extra_headers=PIN)
        elapsed = time.monotonic() - started
    finally:
        await retrying.close()
    assert raw.retries_taken == 1 and 0.9 <= elapsed < 5
    assert raw.parse().choices[0].message.content == oai.reply
    assert len(oai.chat_requests()) == 5


async def test_openai_sdk_bad_request_names_the_param(rig) -> None:
    oai, ant, d, client = rig
    with pytest.raises(openai.BadRequestError) as info:
        await d.openai.chat.completions.create(model="default", messages=USER,
                                               temperature="hot")  # type: ignore[arg-type]
    assert info.value.param == "temperature"
    assert info.value.type == "invalid_request_error"
    assert oai.requests == []


async def test_openai_sdk_tool_choice_served_by_anthropic(rig) -> None:
    oai, ant, d, client = rig
    named = {"type": "function", "function": {"name": "get_weather"}}
    reply = await d.openai.chat.completions.create(
        model="ant/claude", messages=USER, tools=[WEATHER], tool_choice=named,
        parallel_tool_calls=False)
    assert reply.choices[0].finish_reason == "tool_calls"
    assert ant.message_requests()[-1].body["tool_choice"] == {
        "type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}
    await d.openai.chat.completions.create(model="ant/claude", messages=USER,
                                           tools=[WEATHER], tool_choice="none")
    assert ant.message_requests()[-1].body["tool_choice"] == {"type": "none"}
    stream = await d.openai.chat.completions.create(
        model="ant/claude", messages=USER, tools=[WEATHER], tool_choice="required",
        stream=True)
    calls = [t async for c in stream if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert ant.message_requests()[-1].body["tool_choice"] == {"type": "any"}
    assert json.loads("".join(t.function.arguments or "" for t in calls)) == {
        "city": "Paris", "days": 2}


@pytest.mark.parametrize("option", [
    {"response_format": {"type": "json_object"}},
    {"logprobs": True, "top_logprobs": 2},
])
async def test_openai_sdk_options_anthropic_cannot_express_go_to_openai(rig, option) -> None:
    oai, ant, d, client = rig
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="both", messages=USER, **option)
    assert raw.headers["x-failoverd-model"] == "oai/gpt"
    assert raw.headers["x-failoverd-failover"] == "ant/claude>oai/gpt:incapable"
    assert ant.requests == []
    sent = oai.chat_requests()[-1].body
    assert all(sent[k] == v for k, v in option.items())  # passed through untouched


# ------------------------------------------------------------------ anthropic SDK

async def test_anthropic_sdk_stop_sequence_is_reported(rig) -> None:
    oai, ant, d, client = rig
    stops = ["zzz", "fake"]  # the fake's reply is "Hello from the fake Anthropic"
    msg = await client.messages.create(model="ant/claude", max_tokens=50, messages=USER,
                                       stop_sequences=stops)
    assert ant.message_requests()[-1].body["stop_sequences"] == stops
    assert msg.content[0].text == "Hello from the "
    assert (msg.stop_reason, msg.stop_sequence) == ("stop_sequence", "fake")
    async with client.messages.stream(model="ant/claude", max_tokens=50, messages=USER,
                                      stop_sequences=stops) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello from the "
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "fake")
    # an OpenAI client gets OpenAI's "stop" for it
    reply = await d.openai.chat.completions.create(model="ant/claude", messages=USER,
                                                   stop=stops)
    assert reply.choices[0].finish_reason == "stop"
    # an OpenAI upstream cannot tell a stop sequence from a natural end: end_turn
    msg = await client.messages.create(model="oai/gpt", max_tokens=50, messages=USER,
                                       stop_sequences=stops)
    assert oai.chat_requests()[-1].body["stop"] == stops
    assert (msg.stop_reason, msg.stop_sequence) == ("end_turn", None)


async def test_anthropic_sdk_system_blocks_and_metadata_user_id(rig) -> None:
    oai, ant, d, client = rig
    system = [{"type": "text", "text": "be terse", "cache_control": {"type": "ephemeral"}},
              {"type": "text", "text": "answer in French"}]
    for model in ("ant/claude", "oai/gpt"):
        await client.messages.create(model=model, max_tokens=50, messages=USER,
                                     system=system, metadata={"user_id": "user-7"})
    to_ant = ant.message_requests()[-1].body
    assert [b["text"] for b in to_ant["system"]] == ["be terse", "answer in French"]
    assert to_ant["metadata"] == {"user_id": "user-7"}
    to_oai = oai.chat_requests()[-1].body
    assert to_oai["messages"][0]["role"] == "system"
    assert "be terse" in json.dumps(to_oai["messages"][0]["content"])
    assert "answer in French" in json.dumps(to_oai["messages"][0]["content"])
    assert to_oai["user"] == "user-7"


async def test_anthropic_sdk_stream_events_and_usage_from_anthropic(rig) -> None:
    oai, ant, d, client = rig
    stream = await client.messages.create(model="ant/claude", max_tokens=50, messages=USER,
                                          stream=True)
    events = [e async for e in stream]  # the fake's ping is skipped by the SDK or by us
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1:-2] == ["content_block_start"] + ["content_block_delta"] * 5 + [
        "content_block_stop"]
    async with client.messages.stream(model="ant/claude", max_tokens=50,
                                      messages=USER) as helper:
        final = await helper.get_final_message()
    # the fake: input 12 (+3 cache reads) in message_start, 7 output tokens in message_delta
    usage = final.usage
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens) == (
        12, 7, 3)
    assert final.content[0].text == ant.reply


@pytest.mark.parametrize(("model", "fake_name", "error_type"), [
    ("ant/claude", "ant", "overloaded_error"),  # Anthropic's own mid-stream error event
    ("oai/gpt", "oai", "api_error"),            # an OpenAI upstream's, in Anthropic's types
])
async def test_anthropic_sdk_raises_mid_stream_errors(rig, model, fake_name,
                                                      error_type) -> None:
    oai, ant, d, client = rig
    {"ant": ant, "oai": oai}[fake_name].push("stream_error")
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        async with client.messages.stream(model=model, max_tokens=50,
                                          messages=USER) as stream:
            async for text in stream.text_stream:
                seen.append(text)
    assert "".join(seen) == "Hello from"
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == error_type


async def test_anthropic_sdk_typed_errors(rig) -> None:
    oai, ant, d, client = rig
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="nope/x", max_tokens=5, messages=USER)
    assert missing.value.body["error"]["type"] == "not_found_error"  # as Anthropic's 404s
    assert missing.value.body["error"]["param"] == "model"
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(model="default", max_tokens=5, messages=USER,
                                     extra_body={"top_k": 5})  # refused by failoverd
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    assert bad.value.body["error"]["param"] == "top_k"
    ant.default = "overloaded"
    with pytest.raises(anthropic.ServiceUnavailableError) as gone:
        await client.messages.create(model="ant/claude", max_tokens=5, messages=USER,
                                     extra_headers=PIN)
    assert gone.value.body["error"]["type"] == "no_model_available"
    assert gone.value.body["error"]["attempts"][0]["status"] == 529
    assert oai.requests == []


async def test_anthropic_sdk_retry_honours_retry_after(rig) -> None:
    oai, ant, d, client = rig
    ant.push("api_error", "api_error")  # failoverd's own retry included: both fail
    retrying = anthropic_client(d.socket, max_retries=1)
    try:
        started = time.monotonic()
        raw = await retrying.messages.with_raw_response.create(
            model="ant/claude", max_tokens=5, messages=USER, extra_headers=PIN)
        elapsed = time.monotonic() - started
    finally:
        await retrying.close()
    assert raw.retries_taken == 1 and 0.9 <= elapsed < 5
    assert (await raw.parse()).content[0].text == ant.reply
    assert len(ant.message_requests()) == 3


# ------------------------------------------------------------------ curl

async def test_curl_messages_streams_anthropic_events(rig) -> None:
    oai, ant, d, client = rig
    head, body = await curl(
        "--unix-socket", d.socket, "http://failoverd/v1/messages",
        "-H", "content-type: application/json",
        "-d", '{"model":"both","max_tokens":50,"stream":true,'
              '"messages":[{"role":"user","content":"hello"}]}')
    assert head.startswith("HTTP/1.1 200")
    assert "x-failoverd-model: ant/claude" in head.lower()
    names = [line[7:] for line in body.splitlines() if line.startswith("event: ")]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    text = "".join(json.loads(line[6:])["delta"]["text"] for line in body.splitlines()
                   if line.startswith("data: ") and '"text_delta"' in line)
    assert text == ant.reply


async def test_readme_curl_event_examples(rig) -> None:
    oai, ant, d, client = rig
    ant.push("api_error", "api_error")
    await d.openai.chat.completions.create(model="both", messages=USER)  # falls to gpt
    _, recent = await curl("-s", "--unix-socket", d.socket,
                           "http://failoverd/v1/events?recent=1")
    assert "event: model:failover" in recent
    # `curl -N` follows the live stream (cut here by --max-time; exit 28 is expected)
    follow = asyncio.create_task(curl("-N", "--max-time", "3", "--unix-socket", d.socket,
                                      "http://failoverd/v1/events"))
    await asyncio.sleep(0.5)
    await d.http.post("/v1/models/oai/gpt/open")
    head, live = await follow
    assert head.startswith("HTTP/1.1 200") and "text/event-stream" in head
    assert "event: breaker:opened" in live
