"""Prompt caching and extended thinking towards Claude on Bedrock (the Converse API).

Claude Code sessions failed over to Bedrock paid the whole prompt every turn (the breakpoints
were dropped) and lost thinking. Now a client's cache_control breakpoints become Converse
cachePoint blocks at the same places, for the models with prompt caching on Bedrock, and
cache reads and writes come back in the usage. The fake Bedrock Runtime refuses cachePoints
where the real one does (a model without prompt caching, Nova's tools, more than 4, a 1h ttl
on a model without the hour-long cache) and keeps a cache of the prefixes it saw; a refusal
the id rule did not foresee fails over as `incapable`, never the client's 400. Thinking: a
request's reasoning (an Anthropic client's budget) is Converse's thinking field for the Claude
models that think, with the Anthropic adapter's rules, its signed and redacted thinking comes
back to Anthropic clients (streamed with the signature before the block's stop) and goes back
to Bedrock as reasoningContent blocks, so a tool loop keeps thinking on, also when it fails
over from Anthropic to Bedrock.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx2
import pytest

from failoverd.failures import FailureReason
from failoverd.providers.bedrock import classify_error
from failoverd.translate import bedrock as translate
from failoverd.translate.anthropic import anthropic_to_canonical
from failoverd.translate.bedrock_cache import caches
from failoverd.translate.bedrock_stream import StreamTranslator
from tests.fakes.anthropic import signature
from tests.fakes.bedrock import API_KEY, NO_CACHING, FakeBedrock, fake_bedrock
from tests.test_claude_code import claude_code_body, post_stream
from tests.test_prompt_caching import EPHEMERAL, HOUR, LONG, tool_loop
from tests.test_sdk_clients import WEATHER, anthropic_client, openai_client

__all__ = ["fake_bedrock"]  # the fixture

SONNET_45 = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
SONNET_37 = "us.anthropic.claude-3-7-sonnet-20250219-v1:0"
SONNET_35 = "anthropic.claude-3-5-sonnet-20240620-v1:0"
NOVA = "us.amazon.nova-pro-v1:0"
KEY_ENV = "FAILOVERD_TEST_BEDROCK_KEY"
POINT = {"cachePoint": {"type": "default"}}
HOUR_POINT = {"cachePoint": {"type": "default", "ttl": "1h"}}


def config(fake: FakeBedrock, backup_url: str) -> str:
    return f"""
[providers.bedrock]
kind = "bedrock"
region = "us-east-1"
base_url = "{fake.url}"
api_key_env = "{KEY_ENV}"
[providers.backup]
kind = "openai"
base_url = "{backup_url}"
[models."bedrock/sonnet45"]
provider = "bedrock"
name = "{SONNET_45}"
context_window = 200000
max_output_tokens = 64000
capabilities = ["tools", "vision", "reasoning"]
[models."bedrock/sonnet35"]
provider = "bedrock"
name = "{SONNET_35}"
context_window = 200000
capabilities = ["tools", "vision"]
[models."backup/gpt"]
provider = "backup"
context_window = 200000
capabilities = ["tools", "vision", "reasoning"]
[routing]
primary = "bedrock/sonnet45"
fallbacks = ["backup/gpt"]
retry_after_max = 0.2
deadline = 10
when_all_unavailable = "fail"
[probes]
kind = "none"
"""


@pytest.fixture
async def rig(fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_openai: Any,
              start_daemon: Any) -> Any:
    fake, backup = await fake_bedrock(), await fake_openai()
    d = await start_daemon(config(fake, backup.url), env={KEY_ENV: API_KEY})
    client = anthropic_client(d.socket)
    yield fake, backup, d, client
    await client.close()


def points(request: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, cachePoint) of every cache point in a Converse request, `where` naming the
    block it follows."""
    lists = [("tools", (request.get("toolConfig") or {}).get("tools") or []),
             ("system", request.get("system") or []),
             *((f"messages[{i}]", m["content"]) for i, m in enumerate(request["messages"]))]
    out = []
    for where, blocks in lists:
        for j, block in enumerate(blocks):
            if "cachePoint" in block:
                kind = next(iter(blocks[j - 1]))
                out.append((f"{where}.{kind}[{j - 1}]", block["cachePoint"]))
    return out


def converse(body: dict[str, Any], model: str) -> dict[str, Any]:
    return translate.to_request(anthropic_to_canonical(body), model=model)


# ------------------------------------------------------------------ the translation


def test_claude_code_breakpoints_become_cache_points_where_they_were() -> None:
    request = converse(claude_code_body("m"), SONNET_45)
    assert points(request) == [
        ("system.text[0]", {"type": "default", "ttl": "1h"}),  # the hour-long cache: 4.5
        ("messages[0].text[0]", {"type": "default"})]
    assert "_failoverd_cache" not in str(request)
    request = converse(tool_loop("m"), SONNET_45)
    assert points(request) == [
        ("tools.toolSpec[0]", {"type": "default"}),
        # 1h after a 5m breakpoint (the tool's): Bedrock refuses it, so it is cached for 5m
        ("system.text[0]", {"type": "default"}),
        ("messages[2].toolResult[0]", {"type": "default"})]


def test_which_models_cache() -> None:
    assert all(map(caches, [SONNET_45, SONNET_37, NOVA, "anthropic.claude-3-5-haiku-20241022-v1:0",
                            "anthropic.claude-sonnet-4-20250514-v1:0",
                            "eu.anthropic.claude-opus-4-1-20250805-v1:0",
                            "global.anthropic.claude-haiku-4-5-20251001-v1:0",
                            "anthropic.claude-sonnet-4-6",
                            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
                            "us.anthropic.claude-opus-4-20250514-v1:0"]))
    assert not any(map(caches, [SONNET_35, "anthropic.claude-3-haiku-20240307-v1:0",
                                "anthropic.claude-3-5-sonnet-20241022-v2:0",
                                "us.meta.llama3-3-70b-instruct-v1:0", "us.deepseek.r1-v1:0",
                                "arn:aws:bedrock:us-east-1:123456789012:application-inference-"
                                "profile/a1b2c3d4e5f6"]))


def test_older_claude_gets_the_5_minute_cache_nova_none_in_tools_others_none() -> None:
    assert points(converse(tool_loop("m"), SONNET_37)) == [
        ("tools.toolSpec[0]", {"type": "default"}), ("system.text[0]", {"type": "default"}),
        ("messages[2].toolResult[0]", {"type": "default"})]
    assert points(converse(tool_loop("m"), NOVA)) == [
        ("system.text[0]", {"type": "default"}),
        ("messages[2].toolResult[0]", {"type": "default"})]
    request = converse(tool_loop("m"), SONNET_35)
    assert points(request) == []
    assert "_failoverd_cache" not in str(request)


def test_the_last_four_are_kept() -> None:
    body = tool_loop("m")
    body["messages"][0] = {"role": "user", "content": [
        {"type": "text", "text": "a", "cache_control": EPHEMERAL},
        {"type": "text", "text": "b", "cache_control": EPHEMERAL}]}
    assert [where for where, _ in points(converse(body, SONNET_45))] == [
        "system.text[0]", "messages[0].text[0]", "messages[0].text[2]",
        "messages[2].toolResult[0]"]


def test_automatic_caching_marks_the_end_of_the_prompt() -> None:
    body = {**tool_loop("m"), "cache_control": EPHEMERAL}
    body["messages"][2]["content"][0].pop("cache_control")
    body["messages"].append({"role": "assistant", "content": "It is"})  # a prefill
    assert points(converse(body, SONNET_45))[-1] == ("messages[3].text[0]",
                                                     {"type": "default"})


def test_openai_clients_breakpoints_as_litellm_spells_them() -> None:
    body = {"messages": [
        {"role": "system", "content": LONG, "cache_control": HOUR},
        {"role": "user", "content": "Weather in Paris?", "cache_control": EPHEMERAL},
        {"role": "assistant", "content": "Checking.", "cache_control": EPHEMERAL,
         "tool_calls": [{"id": "call_1", "type": "function", "cache_control": EPHEMERAL,
                         "function": {"name": "get_weather", "arguments": '{"city": "P"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C",
         "cache_control": EPHEMERAL}], "tools": [WEATHER]}
    assert [where for where, _ in points(translate.to_request(body, model=SONNET_37))] == [
        "messages[0].text[0]", "messages[1].text[0]", "messages[1].toolUse[2]",
        "messages[2].toolResult[0]"]  # the last four of five (the system one left out)


def test_a_breakpoint_on_a_tool_result_with_an_image_follows_the_result() -> None:
    png = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42"
           "mP8/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg==")
    body = {"tools": [WEATHER], "messages": [
        {"role": "user", "content": "Look"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [
            {"type": "image_url", "image_url": {"url": png}, "cache_control": EPHEMERAL}]}]}
    request = translate.to_request(body, model=SONNET_45)
    assert points(request) == [("messages[2].toolResult[0]", {"type": "default"})]
    assert "_failoverd_cache" not in str(request)


# ------------------------------------------------------------------ the daemon


async def test_a_claude_code_tool_loop_reads_the_cache_on_its_second_turn(rig: Any) -> None:
    fake, _, _, client = rig
    body = tool_loop("bedrock/sonnet45")
    first = await client.messages.create(**body)
    sent = fake.requests[-1].body
    assert points(sent) == [("tools.toolSpec[0]", {"type": "default"}),
                            ("system.text[0]", {"type": "default"}),
                            ("messages[2].toolResult[0]", {"type": "default"})]
    assert first.usage.cache_creation_input_tokens > 1000  # the long system prompt, written
    assert not first.usage.cache_read_input_tokens
    second = await client.messages.create(**body)
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert not second.usage.cache_creation_input_tokens
    assert second.usage.input_tokens == first.usage.input_tokens  # only what is not cached


async def test_a_streamed_claude_code_turn_keeps_its_breakpoints(rig: Any) -> None:
    fake, _, d, _ = rig
    usages = []
    for _ in range(2):
        resp, events = await post_stream(d, claude_code_body("bedrock/sonnet45"))
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-failoverd-model"] == "bedrock/sonnet45"
        usages.append(next(e for e in events if e["type"] == "message_delta")["usage"])
    assert points(fake.requests[-1].body) == [("system.text[0]", HOUR_POINT["cachePoint"]),
                                              ("messages[0].text[0]", {"type": "default"})]
    assert usages[0]["cache_creation_input_tokens"] > 0
    assert usages[1]["cache_read_input_tokens"] == usages[0]["cache_creation_input_tokens"]


async def test_openai_clients_see_cache_reads_and_writes(rig: Any) -> None:
    fake, _, d, _ = rig
    client = openai_client(d.socket)
    messages: list[Any] = [{"role": "system", "content": LONG, "cache_control": HOUR},
                           {"role": "user", "content": "Hi"}]
    try:
        first = await client.chat.completions.create(model="bedrock/sonnet45",
                                                     messages=messages)
        second = await client.chat.completions.create(model="bedrock/sonnet45",
                                                      messages=messages)
    finally:
        await client.close()
    assert points(fake.requests[-1].body) == [("system.text[0]", HOUR_POINT["cachePoint"])]
    assert first.usage is not None and second.usage is not None
    written = (first.usage.model_extra or {}).get("cache_creation_input_tokens")
    assert written and written > 1000
    assert second.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens == written


async def test_a_model_without_prompt_caching_gets_no_cache_point(rig: Any) -> None:
    """Claude 3.5 Sonnet (v1) has no prompt caching: the fake refuses a cachePoint there, as
    Bedrock does, so this answer proves none was sent."""
    fake, _, _, client = rig
    body = {**tool_loop("bedrock/sonnet35"), "cache_control": EPHEMERAL}
    answer = await client.messages.with_raw_response.create(**body)
    assert answer.headers["x-failoverd-model"] == "bedrock/sonnet35"
    assert points(fake.requests[-1].body) == []


async def test_a_refused_cache_point_is_sent_again_without_it(rig: Any) -> None:
    """A model that refuses the cachePoint failoverd's id rule gave it (here the 403 some
    accounts get, which would otherwise block every model of the provider as `auth`) gets the
    request again without cache points and serves it: no failover, the provider stays open."""
    fake, backup, _, client = rig
    fake.push("no_caching_403")
    raw = await client.messages.with_raw_response.create(**tool_loop("default"))
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet45"
    assert "x-failoverd-failover" not in raw.headers
    assert points(fake.requests[-1].body) == []
    assert len(backup.requests) == 0
    again = await client.messages.with_raw_response.create(**tool_loop("default"))
    assert again.headers["x-failoverd-model"] == "bedrock/sonnet45"


@pytest.mark.parametrize("status,message,kind", [
    (400, NO_CACHING, "ValidationException"),
    (403, NO_CACHING, "AccessDeniedException"),
    (400, "Malformed input request: #/toolConfig/tools/1: extraneous key [cachePoint] is not "
          "permitted, please reformat your input and try again.", "ValidationException"),
    (None, NO_CACHING, "validationException"),
])
def test_cache_point_refusals_are_incapable(status: int | None, message: str,
                                            kind: str) -> None:
    assert classify_error(status, message, kind) is FailureReason.INCAPABLE


async def test_the_fake_refuses_cache_points_where_bedrock_does(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]]) -> None:
    fake = await fake_bedrock()
    nova_tools = converse(tool_loop("m"), NOVA)
    nova_tools["toolConfig"]["tools"].append(POINT)  # Nova caches no tools
    one = {"messages": [{"role": "user", "content": [{"text": "hi"}, POINT]}]}
    hour = {"messages": [{"role": "user", "content": [{"text": "hi"}, HOUR_POINT]}]}
    async with httpx2.AsyncClient(base_url=fake.url) as http:
        async def send(model: str, request: dict[str, Any]) -> tuple[int, str]:
            resp = await http.post(f"/model/{quote(model, safe='')}/converse", json=request,
                                   headers={"Authorization": f"Bearer {API_KEY}"})
            return resp.status_code, resp.json().get("message", "")

        assert await send(SONNET_35, one) == (400, NO_CACHING)
        status, message = await send(NOVA, nova_tools)
        assert status == 400 and "extraneous key [cachePoint]" in message
        assert classify_error(400, message, "ValidationException") is FailureReason.INCAPABLE
        assert (await send(SONNET_37, hour))[0] == 400  # no hour-long cache before 4.5
        assert await send(SONNET_45, hour) == (200, "")
        assert (await send(SONNET_45, {"messages": [{"role": "user", "content": [
            {"text": "a"}, POINT, {"text": "b"}, POINT, {"text": "c"}, POINT,
            {"text": "d"}, POINT, {"text": "e"}, POINT]}]}))[0] == 400


# ------------------------------------------------------------------ thinking: the translation

THINK = {"type": "enabled", "budget_tokens": 2048}
TOOL = {"name": "get_weather", "description": "Weather for a city",
        "input_schema": WEATHER["function"]["parameters"]}
ASK = {"role": "user", "content": "Weather in Paris?"}
REDACTED = base64.b64encode(b"encrypted thinking, opaque to all but Claude").decode()


def thinking_of(request: dict[str, Any]) -> Any:
    return (request.get("additionalModelRequestFields") or {}).get("thinking")


def test_thinking_goes_to_the_claude_models_that_think() -> None:
    body = {"messages": [ASK], "reasoning_effort": "high", "max_tokens": 32000,
            "temperature": 0.3, "top_p": 0.9}
    request = translate.to_request(body, model=SONNET_45)
    assert thinking_of(request) == {"type": "enabled", "budget_tokens": 24576}
    assert request["inferenceConfig"] == {"maxTokens": 32000}  # no sampling knobs with it
    for model in (SONNET_37, "anthropic.claude-sonnet-4-20250514-v1:0",
                  "us.anthropic.claude-opus-4-1-20250805-v1:0",
                  "global.anthropic.claude-haiku-4-5-20251001-v1:0"):
        assert thinking_of(translate.to_request(body, model=model)) is not None, model
    for model in (SONNET_35, "anthropic.claude-3-5-haiku-20241022-v1:0",
                  "global.anthropic.claude-opus-4-7", NOVA, "us.deepseek.r1-v1:0"):
        request = translate.to_request(body, model=model)
        assert thinking_of(request) is None, model
        assert request["inferenceConfig"]["temperature"] == 0.3


@pytest.mark.parametrize("extra,budget", [
    ({"max_tokens": 2000, "reasoning_effort": "medium"}, 1999),  # cut to maxTokens - 1
    ({"max_tokens": 1000, "reasoning_effort": "low"}, None),  # under Claude's 1024
    ({"reasoning_effort": "high"}, 4095),  # no maxTokens: Anthropic's default 4096
    ({"reasoning_effort": "none", "max_tokens": 9000}, None),
    ({"reasoning_effort": "high", "max_tokens": 32000, "tools": [WEATHER],
      "tool_choice": "required"}, None),  # a forced call goes without thinking
    ({"reasoning_effort": "high", "max_tokens": 32000,
      "messages": [ASK, {"role": "assistant", "content": "It is"}]}, None),  # a prefill
])
def test_the_budget_as_towards_anthropic(extra: dict[str, Any], budget: int | None) -> None:
    request = translate.to_request({"messages": [ASK], **extra}, model=SONNET_45)
    assert (thinking_of(request) or {}).get("budget_tokens") == budget
    if budget is not None:
        assert request["inferenceConfig"]["maxTokens"] > budget


def test_signed_thinking_is_replayed_first_or_in_its_order() -> None:
    signed = {"type": "thinking", "thinking": "hmm", "signature": "c2ln"}
    redacted = {"type": "redacted_thinking", "data": REDACTED}
    call = {"id": "toolu_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    history = [ASK, {"role": "assistant", "content": "Checking.", "tool_calls": [call],
                     "thinking_blocks": [redacted, signed,
                                         {"type": "thinking", "thinking": "x", "signature": ""}]},
               {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"}]
    body = {"messages": history, "tools": [WEATHER], "reasoning_effort": "low",
            "max_tokens": 8000}
    request = translate.to_request(body, model=SONNET_45)
    assert request["messages"][1]["content"] == [
        {"reasoningContent": {"redactedContent": REDACTED}},
        {"reasoningContent": {"reasoningText": {"text": "hmm", "signature": "c2ln"}}},
        {"text": "Checking."},
        {"toolUse": {"toolUseId": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}}]
    assert thinking_of(request) == {"type": "enabled", "budget_tokens": 2048}
    # interleaved: the turn's own order
    history[1] = {**history[1], "thinking_blocks": [signed, signed],
                  "anthropic_order": "tx9ut", "content": "Checking."}
    history[1]["tool_calls"] = [call]
    blocks = translate.to_request(body, model=SONNET_45)["messages"][1]["content"]
    assert [next(iter(b)) for b in blocks] == ["reasoningContent", "text", "toolUse",
                                               "reasoningContent"]
    # towards a model that does not think: none of it, and no thinking
    request = translate.to_request(body, model=SONNET_35)
    assert [next(iter(b)) for b in request["messages"][1]["content"]] == ["text", "toolUse"]
    assert thinking_of(request) is None


def test_a_tool_loop_another_provider_served_goes_without_thinking() -> None:
    history = [ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"}]
    request = translate.to_request({"messages": history, "tools": [WEATHER],
                                    "reasoning_effort": "high", "max_tokens": 32000},
                                   model=SONNET_45)
    assert thinking_of(request) is None


def test_answers_carry_signed_and_redacted_thinking() -> None:
    response = {"output": {"message": {"role": "assistant", "content": [
        {"reasoningContent": {"redactedContent": REDACTED}},
        {"reasoningContent": {"reasoningText": {"text": "Let me see.", "signature": "c2ln"}}},
        {"text": "Checking."},
        {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {}}},
        {"reasoningContent": {"reasoningText": {"text": " More.", "signature": "c2lnMg"}}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 3, "outputTokens": 4}}
    message = translate.to_completion(response, "m")["choices"][0]["message"]
    assert message["reasoning_content"] == "Let me see. More."
    assert message["thinking_blocks"] == [
        {"type": "redacted_thinking", "data": REDACTED},
        {"type": "thinking", "thinking": "Let me see.", "signature": "c2ln"},
        {"type": "thinking", "thinking": " More.", "signature": "c2lnMg"}]
    assert message["anthropic_order"] == "ttx9ut"  # interleaved: its order kept
    # DeepSeek-R1's reasoning has no signature: reasoning_content only
    response["output"]["message"]["content"] = [
        {"reasoningContent": {"reasoningText": {"text": "hmm"}}}, {"text": "Hi"}]
    message = translate.to_completion(response, "m")["choices"][0]["message"]
    assert message["reasoning_content"] == "hmm" and "thinking_blocks" not in message


def test_a_stream_signs_its_reasoning_block_when_it_stops() -> None:
    translator = StreamTranslator("m")
    events = [("messageStart", {"role": "assistant"}),
              ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {
                  "reasoningContent": {"redactedContent": REDACTED[:8]}}}),
              ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {
                  "reasoningContent": {"redactedContent": REDACTED[8:]}}}),
              ("contentBlockStop", {"contentBlockIndex": 0}),
              ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {
                  "reasoningContent": {"text": "Let me"}}}),
              ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {
                  "reasoningContent": {"signature": "c2ln"}}}),
              ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {
                  "reasoningContent": {"signature": "MDEy"}}}),
              ("contentBlockStop", {"contentBlockIndex": 1}),
              ("contentBlockDelta", {"contentBlockIndex": 2, "delta": {"text": "Hi"}})]
    deltas = [c["choices"][0]["delta"] for kind, data in events
              for c in translator.feed(kind, data)]
    assert deltas[1:] == [
        {"thinking_blocks": [{"type": "redacted_thinking", "data": REDACTED}]},
        {"reasoning_content": "Let me"},
        {"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "c2lnMDEy"}]},
        {"content": "Hi"}]


# ------------------------------------------------------------------ thinking: the daemon


async def ask(client: Any, model: str, messages: list[dict[str, Any]], stream: bool) -> Any:
    kwargs: dict[str, Any] = {"model": model, "max_tokens": 4096, "thinking": THINK,
                              "tools": [TOOL], "messages": messages}
    if not stream:
        return await client.messages.create(**kwargs)
    async with client.messages.stream(**kwargs) as events:
        return await events.get_final_message()


def next_turn(answer: Any) -> list[dict[str, Any]]:
    call = next(b for b in answer.content if b.type == "tool_use")
    return [ASK, {"role": "assistant",
                  "content": [b.model_dump(exclude_none=True) for b in answer.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                          "content": "18C, sunny"}]}]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_tool_loop_on_bedrock_keeps_thinking_on(rig: Any, stream: bool) -> None:
    fake, _, _, client = rig
    first = await ask(client, "bedrock/sonnet45", [ASK], stream)
    assert thinking_of(fake.requests[-1].body) == THINK
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
    assert first.content[0].thinking == fake.thinking
    assert first.content[0].signature == signature(fake.thinking)

    second = await ask(client, "bedrock/sonnet45", next_turn(first), stream)
    sent = fake.requests[-1].body
    assert thinking_of(sent) == THINK  # kept on in the tool loop
    assert sent["messages"][1]["content"][0] == {"reasoningContent": {"reasoningText": {
        "text": fake.thinking, "signature": signature(fake.thinking)}}}
    assert second.content[0].type == "thinking"
    assert second.content[0].signature == signature(fake.thinking)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_redacted_thinking_reaches_the_client_and_goes_back(rig: Any,
                                                                 stream: bool) -> None:
    fake, _, _, client = rig
    fake.redacted = REDACTED
    first = await ask(client, "bedrock/sonnet45", [ASK], stream)
    assert [b.type for b in first.content] == ["redacted_thinking", "thinking", "text",
                                               "tool_use"]
    assert first.content[0].data == REDACTED
    await ask(client, "bedrock/sonnet45", next_turn(first), stream)
    assert fake.requests[-1].body["messages"][1]["content"][0] == {
        "reasoningContent": {"redactedContent": REDACTED}}


async def test_the_streamed_thinking_block_is_signed_before_its_stop(rig: Any) -> None:
    fake, _, d, _ = rig
    resp, events = await post_stream(d, {"model": "bedrock/sonnet45", "max_tokens": 4096,
                                         "thinking": THINK, "stream": True,
                                         "messages": [ASK]})
    assert resp.status_code == 200, resp.text
    block = [e for e in events if e.get("index") == 0]
    assert block[0]["content_block"]["type"] == "thinking"
    assert [e["delta"]["type"] for e in block[1:-1]] == ["thinking_delta", "thinking_delta",
                                                         "signature_delta"]
    assert block[-2]["delta"]["signature"] == signature(fake.thinking)
    assert block[-1]["type"] == "content_block_stop"


async def test_a_loop_whose_turn_another_provider_served_has_no_400(rig: Any) -> None:
    fake, _, d, client = rig
    fake.push("unavailable", "unavailable", "unavailable")
    raw = await client.messages.with_raw_response.create(
        model="default", max_tokens=4096, thinking=THINK, tools=[TOOL], messages=[ASK])
    assert raw.headers["x-failoverd-model"] == "backup/gpt"
    first = await raw.parse()
    await d.http.post("/v1/models/bedrock/sonnet45/reset")
    messages = next_turn(first)
    messages[1]["content"].insert(0, {"type": "thinking", "thinking": "hmm", "signature": ""})
    second = await ask(client, "bedrock/sonnet45", messages, False)  # no 400
    sent = fake.requests[-1].body
    assert thinking_of(sent) is None
    assert "toolUse" in sent["messages"][1]["content"][0]
    assert second.content[0].type == "text"


@pytest.mark.parametrize("message", [
    "The model returned the following errors: 'claude-3-5-sonnet-20240620' does not support "
    "thinking.",
    "Malformed input request: #: extraneous key [thinking] is not permitted, please reformat "
    "your input and try again.",
    "This model doesn't support the reasoningContent.reasoningText.signature field. Remove "
    "reasoningContent.reasoningText.signature and try again.",
])
def test_thinking_refusals_are_incapable(message: str) -> None:
    assert classify_error(400, message, "ValidationException") is FailureReason.INCAPABLE


async def test_a_loop_failed_over_from_anthropic_to_bedrock_keeps_its_thinking(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_anthropic: Any,
        start_daemon: Any) -> None:
    """Claude's signatures hold on Anthropic's API and on Bedrock: a Claude Code loop whose
    Anthropic provider fails mid-loop goes on thinking on Bedrock."""
    fake, ant = await fake_bedrock(), await fake_anthropic()
    text = config(fake, ant.url).replace('kind = "openai"', 'kind = "anthropic"').replace(
        '[models."backup/gpt"]', '[models."backup/claude"]\nname = "claude-sonnet-4-5"\n'
        '[models."backup/gpt"]')
    text += '[chains.claude]\nmodels = ["backup/claude", "bedrock/sonnet45"]\n'
    text = text.replace('[models."backup/claude"]\nname = "claude-sonnet-4-5"\n',
                        '[models."backup/claude"]\nprovider = "backup"\n'
                        'name = "claude-sonnet-4-5"\ncapabilities = ["tools", "reasoning"]\n')
    d = await start_daemon(text, env={KEY_ENV: API_KEY})
    client = anthropic_client(d.socket)
    try:
        first = await ask(client, "claude", [ASK], False)
        assert first.content[0].signature == signature(ant.thinking)
        ant.push("overloaded", "overloaded", "overloaded")
        raw = await client.messages.with_raw_response.create(
            model="claude", max_tokens=4096, thinking=THINK, tools=[TOOL],
            messages=next_turn(first))
    finally:
        await client.close()
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet45"
    sent = fake.requests[-1].body
    assert thinking_of(sent) == THINK
    assert sent["messages"][1]["content"][0]["reasoningContent"]["reasoningText"][
        "signature"] == signature(ant.thinking)
