"""Review of the Anthropic adapter against what api.anthropic.com really sends: error bodies
quoted from its answers (spend limit, disabled organization, a max_tokens above the model's),
stop_reason "refusal" (the safety classifiers; Anthropic's guidance is to retry on a fallback
model), the empty end_turn answer its docs describe, and tools without parameters streamed as
one empty input_json_delta. The daemon runs with the fake Anthropic API first and the fake
OpenAI API second; clients are the official SDKs and httpx over the Unix socket.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest

CONFIG = """
[providers.ant]
kind = "anthropic"
base_url = "{ant}"
api_key_env = "ANT_KEY"
[providers.oai]
kind = "openai"
base_url = "{oai}"
[models."ant/claude"]
provider = "ant"
name = "claude-sonnet-4-5"
capabilities = ["tools"]
[models."oai/gpt"]
provider = "oai"
name = "gpt-test"
capabilities = ["tools"]
[chains.c]
models = ["ant/claude", "oai/gpt"]
[routing]
primary = "ant/claude"
when_all_unavailable = "fail"
[probes]
kind = "none"
"""

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def rig(fake_anthropic, fake_openai, start_daemon):
    ant = await fake_anthropic()
    oai = await fake_openai(reply="from openai")
    d = await start_daemon(CONFIG.format(ant=ant.url, oai=oai.url), env={"ANT_KEY": "sk-ant-k"})
    client = anthropic.AsyncAnthropic(
        api_key="unused", base_url="http://failoverd", max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=d.socket)))
    yield ant, oai, d, client
    await client.close()


# ------------------------------------------------------------------ 400s that are not the client's


@pytest.mark.parametrize(("behaviour", "reason", "again"), [
    ("spend_limit", "billing", False),  # the provider stays closed for billing_open_seconds
    ("org_disabled", "auth", False),  # likewise for auth_open_seconds
    ("max_tokens_over", "incapable", True),  # another model may write that much
])
async def test_anthropic_400s_about_the_account_or_model_fail_over(
        rig, behaviour: str, reason: str, again: bool) -> None:
    """These were bad_request: the client got Anthropic's 400 and no other model was tried."""
    ant, oai, d, client = rig
    ant.default = behaviour
    raw = await client.messages.with_raw_response.create(model="c", max_tokens=100,
                                                         messages=HI)
    assert raw.headers["x-failoverd-failover"] == f"ant/claude>oai/gpt:{reason}"
    assert (await raw.parse()).content[0].text == "from openai"
    resp = await d.openai.chat.completions.create(model="c", messages=HI)
    assert resp.choices[0].message.content == "from openai"
    assert len(ant.message_requests()) == (2 if again else 1)


# ------------------------------------------------------------------ refusals


async def test_refusal_fails_over_as_content_filter_for_both_fronts(rig) -> None:
    """A 200 with stop_reason "refusal" reached the client as the answer ("Hello..",
    finish_reason content_filter) though another model would answer it."""
    ant, oai, d, client = rig
    ant.default = "refusal"
    raw = await client.messages.with_raw_response.create(model="c", max_tokens=100,
                                                         messages=HI)
    assert raw.headers["x-failoverd-failover"] == "ant/claude>oai/gpt:content_filter"
    assert (await raw.parse()).content[0].text == "from openai"
    resp = await d.openai.chat.completions.with_raw_response.create(model="c", messages=HI)
    assert resp.headers["x-failoverd-failover"] == "ant/claude>oai/gpt:content_filter"
    assert resp.parse().choices[0].message.content == "from openai"
    # not the model's fault: its breaker does not count it, and it still serves
    ant.default = "ok"
    again = await d.openai.chat.completions.create(model="c", messages=HI)
    assert again.choices[0].message.content == ant.reply


async def test_streamed_refusal_before_any_block_fails_over(rig) -> None:
    ant, oai, d, client = rig
    ant.default = "refusal"
    async with client.messages.stream(model="c", max_tokens=100, messages=HI) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == "from openai"
    chunks = await d.openai.chat.completions.create(model="c", messages=HI, stream=True)
    got = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    assert got == "from openai"


async def test_refusal_pinned_to_anthropic_names_the_category(rig) -> None:
    ant, oai, d, client = rig
    ant.default = "refusal"
    resp = await d.http.post("/v1/messages", headers={"x-failoverd-no-fallback": "1"},
                             json={"model": "ant/claude", "max_tokens": 100, "messages": HI})
    assert len(oai.chat_requests()) == 0
    [attempt] = resp.json()["error"]["attempts"]
    assert attempt["reason"] == "content_filter"
    assert "cyber" in attempt["message"]


# ------------------------------------------------------------------ empty answers


async def test_empty_end_turn_is_retried_once_then_fails_over(rig) -> None:
    """Anthropic documents answers with no content and end_turn (after tool results): a client
    got an empty message; DESIGN calls a 200 without an answer invalid_response."""
    ant, oai, d, client = rig
    ant.default = "empty"
    raw = await client.messages.with_raw_response.create(model="c", max_tokens=100,
                                                         messages=HI)
    assert raw.headers["x-failoverd-failover"] == "ant/claude>oai/gpt:invalid_response"
    assert (await raw.parse()).content[0].text == "from openai"
    assert len(ant.message_requests()) == 2  # one same-model retry
    chunks = await d.openai.chat.completions.create(model="c", messages=HI, stream=True)
    got = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    assert got == "from openai"
    assert len(ant.message_requests()) > 2  # tried (a third failure may open its breaker)


async def test_empty_end_turn_after_a_prefill_is_an_answer(rig) -> None:
    """After an assistant prefill an empty continuation is legitimate: the prefill was it."""
    ant, oai, d, client = rig
    ant.default = "empty"
    for stream in (False, True):
        resp = await d.http.post("/v1/messages", json={
            "model": "c", "max_tokens": 100, "stream": stream, "messages": HI + [
                {"role": "assistant", "content": '{"answer": "yes"}'}]})
        assert resp.status_code == 200, resp.text
        assert "x-failoverd-failover" not in resp.headers
    assert len(oai.chat_requests()) == 0


# ------------------------------------------------------------------ tools without parameters

NO_ARGS = {"name": "get_time", "description": "The time now",
           "input_schema": {"type": "object", "properties": {}}}


async def test_streamed_tool_without_parameters_has_json_object_arguments(rig) -> None:
    """Anthropic streams a parameterless call's input as one empty input_json_delta: OpenAI
    clients got arguments "" (json.loads fails) where the non-streamed answer says "{}"."""
    ant, oai, d, client = rig
    tools: list[Any] = [{"type": "function", "function": {
        "name": "get_time", "description": "The time now", "parameters": NO_ARGS["input_schema"]}}]
    plain = await d.openai.chat.completions.create(model="ant/claude", messages=HI, tools=tools)
    assert plain.choices[0].message.tool_calls[0].function.arguments == "{}"
    chunks = await d.openai.chat.completions.create(model="ant/claude", messages=HI,
                                                    tools=tools, stream=True)
    arguments = "".join([call.function.arguments or "" async for c in chunks if c.choices
                         for call in c.choices[0].delta.tool_calls or []])
    assert json.loads(arguments) == {}
    # the Anthropic front, streamed: input {} as before
    async with client.messages.stream(model="ant/claude", max_tokens=100, messages=HI,
                                      tools=[NO_ARGS]) as stream:
        message = await stream.get_final_message()
    assert [b.input for b in message.content if b.type == "tool_use"] == [{}]
