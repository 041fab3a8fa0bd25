"""Translation review: what real clients send across provider kinds, end to end.

The daemon on a Unix socket, fake upstreams of every kind on 127.0.0.1 (the Anthropic fake
refuses what the real API refuses in validation), and the official openai and anthropic SDKs.
"""

from __future__ import annotations

import re

import anthropic
import httpx2
import pytest

from failoverd.errors import TranslationError
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI
from tests.helpers import providers

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
TOOL = {"name": "get_weather", "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}
ANTHROPIC_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def config(oai: FakeOpenAI, ant: FakeAnthropic, gem: FakeGemini) -> str:
    caps = 'capabilities = ["tools", "vision", "reasoning", "json"]'
    return f"""
{providers(oai=oai.url, ant=("anthropic", ant.url), gem=("gemini", gem.url))}
[models."oai/kimi"]
provider = "oai"
{caps}
[models."ant/claude"]
provider = "ant"
{caps}
max_output_tokens = 32000
[models."gem/flash"]
provider = "gem"
{caps}
[chains.kimi-claude]
models = ["oai/kimi", "ant/claude"]
[chains.gemini-claude]
models = ["gem/flash", "ant/claude"]
[routing]
primary = "ant/claude"
when_all_unavailable = "fail"
retry_after_max = 0.2
[probes]
kind = "none"
"""


@pytest.fixture
async def rig(fake_openai, fake_anthropic, fake_gemini, start_daemon):
    oai = await fake_openai(call_id="functions.get_weather:0")  # as Kimi numbers its calls
    ant = await fake_anthropic()
    gem = await fake_gemini()
    d = await start_daemon(config(oai, ant, gem))
    client = anthropic.AsyncAnthropic(
        api_key="unused", base_url="http://failoverd", max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=d.socket),
                                       timeout=30))
    yield oai, ant, gem, d, client
    await client.close()


def _tool_blocks(body: dict, kind: str) -> list[dict]:
    return [b for m in body["messages"] if isinstance(m["content"], list)
            for b in m["content"] if b["type"] == kind]


async def test_openai_client_forcing_a_tool_with_reasoning_is_served_by_anthropic(rig) -> None:
    oai, ant, gem, d, client = rig
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        reply = await d.openai.chat.completions.create(
            model="ant/claude", messages=[{"role": "user", "content": "weather in Paris?"}],
            tools=[WEATHER], tool_choice=choice, reasoning_effort="high",
            max_completion_tokens=30000)
        assert reply.choices[0].finish_reason == "tool_calls"
        assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"
        sent = ant.message_requests()[-1].body
        assert sent["tool_choice"]["type"] in ("any", "tool") and "thinking" not in sent
    # with the model free to choose, the reasoning still asks for thinking
    await d.openai.chat.completions.create(
        model="ant/claude", messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[WEATHER], tool_choice="auto", reasoning_effort="high",
        max_completion_tokens=30000)
    assert ant.message_requests()[-1].body["thinking"] == {"type": "enabled",
                                                            "budget_tokens": 24576}


async def test_tool_loop_begun_on_kimi_fails_over_to_anthropic(rig) -> None:
    oai, ant, gem, d, client = rig
    messages: list[dict] = [{"role": "user", "content": "weather in Paris?"}]
    first = await d.openai.chat.completions.create(model="kimi-claude", messages=messages,
                                                   tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    assert call.id == "functions.get_weather:0"
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "21 degrees"}]
    oai.push("overloaded", "overloaded")  # the same-model retry included
    for stream in (False, True):
        raw = await d.openai.chat.completions.with_raw_response.create(
            model="kimi-claude", messages=messages, tools=[WEATHER], stream=stream)
        assert raw.headers["x-failoverd-model"] == "ant/claude"
        oai.push("overloaded", "overloaded")
        sent = ant.message_requests()[-1].body
        (use,) = _tool_blocks(sent, "tool_use")
        (result,) = _tool_blocks(sent, "tool_result")
        assert ANTHROPIC_ID.match(use["id"]) and result["tool_use_id"] == use["id"]
        assert result["content"] == [{"type": "text", "text": "21 degrees"}]


async def test_anthropic_client_tool_loop_begun_on_gemini_fails_over_to_anthropic(rig) -> None:
    oai, ant, gem, d, client = rig
    messages: list[dict] = []
    ids = []
    for city in ("Paris", "London"):  # Gemini numbers every answer's calls from call_0
        messages.append({"role": "user", "content": f"weather in {city}?"})
        ask = await client.messages.create(model="gemini-claude", max_tokens=200,
                                           tools=[TOOL], messages=messages)
        use = next(b for b in ask.content if b.type == "tool_use")
        ids.append(use.id)
        messages += [{"role": "assistant", "content": [b.model_dump() for b in ask.content]},
                     {"role": "user", "content": [{"type": "tool_result",
                                                   "tool_use_id": use.id,
                                                   "content": f"{city}: 21 degrees"}]}]
        if city == "Paris":
            answer = await client.messages.create(model="gemini-claude", max_tokens=200,
                                                  tools=[TOOL], messages=messages)
            messages.append({"role": "assistant", "content": answer.content[0].text})
    assert ids == ["call_0", "call_0"]
    assert ant.message_requests() == []
    gem.push("overloaded", "overloaded")
    async with client.messages.stream(model="gemini-claude", max_tokens=200, tools=[TOOL],
                                      messages=messages) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"  # the fake calls a tool whenever it has tools
    sent = ant.message_requests()[-1].body
    uses = [b["id"] for b in _tool_blocks(sent, "tool_use")]
    results = [b["tool_use_id"] for b in _tool_blocks(sent, "tool_result")]
    assert len(set(uses)) == 2 and results == uses
    assert all(ANTHROPIC_ID.match(i) for i in uses)


async def test_anthropic_client_top_level_cache_control_reaches_anthropic_only(rig) -> None:
    oai, ant, gem, d, client = rig
    for model in ("ant/claude", "oai/kimi"):
        msg = await client.messages.create(
            model=model, max_tokens=50, messages=[{"role": "user", "content": "hi"}],
            cache_control={"type": "ephemeral"})
        assert msg.content[0].text in (ant.reply, oai.reply)
    # automatic prompt caching: Anthropic's to apply; OpenAI refuses the unknown field
    assert ant.message_requests()[-1].body["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in oai.chat_requests()[-1].body


@pytest.mark.parametrize("model", ["ant/claude", "gem/flash"])
async def test_openai_stream_helper_assembles_tool_calls_and_usage(rig, model: str) -> None:
    oai, ant, gem, d, client = rig
    async with d.openai.chat.completions.stream(
            model=model, messages=[{"role": "user", "content": "weather in Paris?"}],
            tools=[WEATHER], stream_options={"include_usage": True},
            extra_headers={"x-failoverd-no-fallback": "1"}) as stream:
        done = [e async for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [e.name for e in done] == ["get_weather"]
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert choice.message.tool_calls[0].function.parsed_arguments is None  # not strict
    assert final.usage is not None and final.usage.prompt_tokens > 0


async def test_structured_outputs_cross_both_fronts(rig) -> None:
    oai, ant, gem, d, client = rig
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "degrees": {"type": "integer"}},
              "required": ["city", "degrees"], "additionalProperties": False}
    output_config = {"format": {"type": "json_schema", "schema": schema}}
    # the anthropic SDK's structured outputs, served by Anthropic and by an OpenAI upstream
    msg = await client.messages.create(model="ant/claude", max_tokens=100,
                                       messages=[{"role": "user", "content": "Paris?"}],
                                       output_config=output_config)
    assert ant.message_requests()[-1].body["output_config"] == output_config
    assert msg.content[0].text == '{"city":"Paris","degrees":21}'
    await client.messages.create(model="oai/kimi", max_tokens=100,
                                 messages=[{"role": "user", "content": "Paris?"}],
                                 output_config=output_config)
    assert oai.chat_requests()[-1].body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": schema,
                                               "strict": True}}
    # the openai SDK's parse() helper served by Anthropic
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema,
                                                  "strict": True}}
    reply = await d.openai.chat.completions.create(
        model="ant/claude", messages=[{"role": "user", "content": "Paris?"}],
        response_format=fmt, extra_headers={"x-failoverd-no-fallback": "1"})
    assert reply.choices[0].message.content == '{"city":"Paris","degrees":21}'
    assert ant.message_requests()[-1].body["output_config"] == output_config
    with pytest.raises(anthropic.BadRequestError) as info:  # no equivalent: named
        await client.messages.create(model="ant/claude", max_tokens=100,
                                     messages=[{"role": "user", "content": "Paris?"}],
                                     output_config={"verbosity": "low"})
    # (effort is taken: it guides adaptive thinking, tests/test_claude_code.py)
    assert info.value.body["error"]["param"] == "output_config.verbosity"


def test_unknown_fields_set_to_null_are_fields_not_set() -> None:
    from failoverd.translate.anthropic import anthropic_to_canonical
    from failoverd.translate.responses_front import responses_to_canonical

    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    assert anthropic_to_canonical({**body, "container": None}) == anthropic_to_canonical(body)
    with pytest.raises(TranslationError, match="container: not supported"):
        anthropic_to_canonical({**body, "container": "c_1"})
    plain = {"model": "m", "input": "hi"}
    assert responses_to_canonical({**plain, "context_management": None}) == \
        responses_to_canonical(plain)
    with pytest.raises(TranslationError, match="context_management"):
        responses_to_canonical({**plain, "context_management": [{"type": "compaction"}]})


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_under_either_name_reaches_anthropic_clients(field: str) -> None:
    from failoverd.translate.anthropic import (
        AnthropicStreamEncoder,
        canonical_to_anthropic_response,
    )

    answer = canonical_to_anthropic_response({"choices": [{"message": {
        "role": "assistant", "content": "4", field: "2+2"}, "finish_reason": "stop"}]}, "m")
    assert answer["content"][0] == {"type": "thinking", "thinking": "2+2", "signature": ""}
    encoder = AnthropicStreamEncoder("m")
    events = encoder.feed({"choices": [{"index": 0, "delta": {field: "2+2"}}]})
    assert b'"thinking_delta"' in events and b"2+2" in events
