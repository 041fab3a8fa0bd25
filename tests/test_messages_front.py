"""POST /v1/messages (Anthropic shape) through the official anthropic SDK, served by every
provider kind, plus the OpenAI front end served by Anthropic, and failovers across both."""

from __future__ import annotations

import json

import anthropic
import httpx2
import pytest

from tests.helpers import providers

PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
           "RU5ErkJggg==")
TOOL = {"name": "get_weather", "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}
KINDS = ["anthropic/claude-sonnet-4-5", "openai/gpt-5", "gemini/gemini-2.5-flash",
         "ollama/qwen2.5:7b"]


@pytest.fixture
async def four(fake_anthropic, fake_openai, fake_gemini, fake_ollama,
               start_daemon):
    fakes = {"anthropic": await fake_anthropic(), "openai": await fake_openai(),
             "gemini": await fake_gemini(), "ollama": await fake_ollama()}
    base = {"anthropic": fakes["anthropic"].url, "openai": fakes["openai"].url,
            "gemini": fakes["gemini"].url, "ollama": fakes["ollama"].url}
    providers = "".join(f'[providers.{k}]\nkind = "{k}"\nbase_url = "{u}"\n'
                        for k, u in base.items())
    providers = providers.replace('kind = "anthropic"\n',
                                  'kind = "anthropic"\napi_key_env = "ANTHROPIC_KEY"\n')
    models = "".join(f'[models."{m}"]\nprovider = "{m.split("/")[0]}"\n'
                     f'capabilities = ["tools", "vision"]\n' for m in KINDS)
    d = await start_daemon(providers + models + """
[chains.claude-first]
models = ["anthropic/claude-sonnet-4-5", "openai/gpt-5"]
[chains.openai-first]
models = ["openai/gpt-5", "gemini/gemini-2.5-flash"]
[chains.gemini-first]
models = ["gemini/gemini-2.5-flash", "ollama/qwen2.5:7b"]
[routing]
primary = "anthropic/claude-sonnet-4-5"
when_all_unavailable = "fail"
""", env={"ANTHROPIC_KEY": "sk-ant-test"})
    client = anthropic.AsyncAnthropic(
        api_key="unused", base_url="http://failoverd", max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=d.socket)))
    yield fakes, d, client
    await client.close()


def fake_for(fakes, model_id: str):
    return fakes[model_id.split("/")[0]]


def upstream_requests(fake) -> list:
    for name in ("message_requests", "chat_requests"):
        if hasattr(fake, name):
            return getattr(fake, name)()
    raise AssertionError(fake)


@pytest.mark.parametrize("model", KINDS)
async def test_anthropic_client_text_and_stream(four, model: str) -> None:
    fakes, d, client = four
    fake = fake_for(fakes, model)
    msg = await client.messages.create(model=model, max_tokens=100, system="be terse",
                                       messages=[{"role": "user", "content": "hi"}])
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text" and msg.content[0].text == fake.reply
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens > 0
    async with client.messages.stream(model=model, max_tokens=100,
                                      messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == fake.reply
    assert final.stop_reason == "end_turn"
    others = [f for k, f in fakes.items() if f is not fake]
    assert all(upstream_requests(f) == [] for f in others)


@pytest.mark.parametrize("model", KINDS)
async def test_anthropic_client_tools_round_trip(four, model: str) -> None:
    fakes, d, client = four
    messages: list[dict] = [{"role": "user", "content": "weather in Paris?"}]
    first = await client.messages.create(model=model, max_tokens=200, tools=[TOOL],
                                         messages=messages)
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input["city"].startswith("Paris")
    messages += [{"role": "assistant", "content": [b.model_dump() for b in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                               "content": "21 degrees"}]}]
    await client.messages.create(model=model, max_tokens=200, tools=[TOOL], messages=messages)
    sent = json.dumps(upstream_requests(fake_for(fakes, model))[-1].body)
    assert "21 degrees" in sent


@pytest.mark.parametrize("model", KINDS)
async def test_anthropic_client_streams_tool_calls(four, model: str) -> None:
    fakes, d, client = four
    async with client.messages.stream(model=model, max_tokens=200, tools=[TOOL], messages=[
            {"role": "user", "content": "weather in Paris?"}]) as stream:
        final = await stream.get_final_message()
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input["city"].startswith("Paris")
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("model", KINDS)
async def test_anthropic_client_image_input(four, model: str) -> None:
    fakes, d, client = four
    await client.messages.create(model=model, max_tokens=50, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": PNG_B64}},
        {"type": "text", "text": "what is this?"}]}])
    assert PNG_B64 in json.dumps(upstream_requests(fake_for(fakes, model))[-1].body)


async def test_openai_client_served_by_anthropic(four) -> None:
    fakes, d, client = four
    fake = fakes["anthropic"]
    model = "anthropic/claude-sonnet-4-5"
    reply = await d.openai.chat.completions.create(model=model, messages=[
        {"role": "system", "content": "be terse"},
        {"role": "user", "content": [{"type": "text", "text": "look"}, {
            "type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}]}])
    assert reply.choices[0].message.content == fake.reply
    sent = fake.message_requests()[-1]
    assert sent.headers["x-api-key"] == "sk-ant-test"
    assert sent.headers["anthropic-version"]
    assert sent.body["system"] in ("be terse", [{"type": "text", "text": "be terse"}])
    assert sent.body["messages"][0]["content"][1]["source"]["data"] == PNG_B64
    stream = await d.openai.chat.completions.create(
        model=model, stream=True, messages=[{"role": "user", "content": "hi"}])
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == fake.reply
    tools = await d.openai.chat.completions.create(model=model, messages=[
        {"role": "user", "content": "weather?"}], tools=[{"type": "function", "function": {
            "name": "get_weather", "parameters": TOOL["input_schema"]}}])
    call = tools.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 2}


async def test_anthropic_529_fails_over_to_openai_for_both_fronts(four) -> None:
    fakes, d, client = four
    fakes["anthropic"].default = "overloaded"
    raw = await client.messages.with_raw_response.create(
        model="claude-first", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-failoverd-failover"] == (
        "anthropic/claude-sonnet-4-5>openai/gpt-5:overloaded")
    assert (await raw.parse()).content[0].text == fakes["openai"].reply
    raw2 = await d.openai.chat.completions.with_raw_response.create(
        model="claude-first", messages=[{"role": "user", "content": "hi"}])
    assert raw2.headers["x-failoverd-model"] == "openai/gpt-5"


async def test_openai_429_to_gemini_and_gemini_down_to_ollama_for_anthropic_client(four) -> None:
    fakes, d, client = four
    fakes["openai"].default = "rate_limit_long"
    raw = await client.messages.with_raw_response.create(
        model="openai-first", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-failoverd-failover"] == (
        "openai/gpt-5>gemini/gemini-2.5-flash:rate_limit")
    fakes["gemini"].default = "overloaded"
    async with client.messages.stream(model="gemini-first", max_tokens=50, messages=[
            {"role": "user", "content": "hi"}]) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == fakes["ollama"].reply


async def test_errors_come_back_in_anthropic_shape(four) -> None:
    fakes, d, client = four
    fakes["anthropic"].default = "overloaded"
    fakes["openai"].default = "server_error"
    with pytest.raises(anthropic.APIStatusError) as info:
        await client.messages.create(model="claude-first", max_tokens=50,
                                     messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 503
    body = info.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "no_model_available"
    assert [a["reason"] for a in body["error"]["attempts"]] == ["overloaded", "server_error"]
    # bad input: named, Anthropic-shaped, daemon keeps serving
    resp = await d.http.post("/v1/messages", json={"model": "default", "max_tokens": 5,
                                                   "messages": "nope"})
    assert resp.status_code == 400
    assert resp.json()["type"] == "error"
    assert "messages" in resp.json()["error"]["message"]
    # an Anthropic bad_request from an Anthropic upstream reaches an Anthropic client unchanged
    fakes["anthropic"].default = "bad_request"
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(model="anthropic/claude-sonnet-4-5", max_tokens=50,
                                     messages=[{"role": "user", "content": "hi"}])
    assert bad.value.body["request_id"] == "req_011CTestFake"
    assert upstream_requests(fakes["openai"])  # earlier failover, not this one
    before = len(upstream_requests(fakes["openai"]))
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(model="anthropic/claude-sonnet-4-5", max_tokens=50,
                                     messages=[{"role": "user", "content": "hi"}])
    assert len(upstream_requests(fakes["openai"])) == before  # bad_request never fails over


async def test_what_anthropic_cannot_express_skips_it_without_a_call(four) -> None:
    fakes, d, client = four
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="claude-first", n=2, messages=[{"role": "user", "content": "two answers"}])
    assert raw.headers["x-failoverd-model"] == "openai/gpt-5"
    assert raw.headers["x-failoverd-attempts"] == "1"  # the skip was not an upstream attempt
    assert upstream_requests(fakes["anthropic"]) == []


async def test_anthropic_stream_errors_use_anthropic_types(four) -> None:
    fakes, d, client = four
    fakes["openai"].push("cut_stream")  # dies after the first words
    body = {"model": "openai/gpt-5", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    async with d.http.stream("POST", "/v1/messages", json=body) as resp:
        text = (await resp.aread()).decode()
    error = json.loads(text.split("event: error\ndata: ")[1].split("\n")[0])
    assert error["type"] == "error"
    assert error["error"]["type"] == "api_error"  # Anthropic's name, not failoverd's reason


async def test_anthropic_stream_carries_hook_notices(fake_anthropic, fake_openai, start_daemon,
                                                     tmp_path) -> None:
    ant = await fake_anthropic(default="overloaded")
    oai = await fake_openai()
    hook = tmp_path / "hook.sh"
    hook.write_text('#!/bin/sh\ncat >/dev/null\necho \'{"messages": ["switched"]}\'\n')
    hook.chmod(0o755)
    d = await start_daemon(f"""
{providers(ant=("anthropic", ant.url), oai=oai.url)}
[models."ant/claude"]
provider = "ant"
[models."oai/gpt"]
provider = "oai"
[routing]
primary = "ant/claude"
fallbacks = ["oai/gpt"]
[[hooks]]
events = ["model:failover"]
exec = ["{hook}"]
""")
    body = {"model": "default", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    async with d.http.stream("POST", "/v1/messages", json=body) as resp:
        text = (await resp.aread()).decode()
    assert resp.headers["x-failoverd-notice"] == "switched"
    start = json.loads(text.split("event: message_start\ndata: ")[1].split("\n")[0])
    assert start["message"]["failoverd"] == {"notices": ["switched"]}
