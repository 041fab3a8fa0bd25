"""Review of long agent sessions through the translation layer: many-turn tool loops whose
serving provider changes between turns (failover), end to end.

The daemon on a Unix socket; fake Anthropic, OpenAI-compatible, Gemini and Ollama upstreams
on 127.0.0.1, each refusing in validation what the real API refuses (tests/fakes/); the
official anthropic and openai SDKs as the agents. Each turn is built from what the SDK gave
the agent for the turn before, as an agent loop builds it.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest

from tests.fakes.anthropic import FakeAnthropic, signature
from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama
from tests.fakes.openai import FakeOpenAI
from tests.helpers import providers
from tests.test_sdk_clients import anthropic_client

CHAIN = ["ant/claude", "oai/kimi", "gem/flash", "oll/qwen"]
THINK = {"type": "enabled", "budget_tokens": 2048}
TOOL = {"name": "get_weather", "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": TOOL["input_schema"]}}
ASK = {"role": "user", "content": "Weather in Paris?"}
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAAB"
       "JRU5ErkJggg==")


def config(ant: FakeAnthropic, oai: FakeOpenAI, gem: FakeGemini, oll: FakeOllama) -> str:
    caps = 'capabilities = ["tools", "vision", "reasoning", "json"]'
    return f"""
{providers(ant=("anthropic", ant.url), oai=oai.url)}
{providers(gem=("gemini", gem.url), oll=("ollama", oll.url))}
[models."ant/claude"]
provider = "ant"
{caps}
max_output_tokens = 32000
[models."oai/kimi"]
provider = "oai"
{caps}
[models."gem/flash"]
provider = "gem"
{caps}
[models."oll/qwen"]
provider = "oll"
capabilities = ["tools", "vision", "reasoning"]
context_window = 32000
[chains.agent]
models = {json.dumps(CHAIN)}
[routing]
primary = "ant/claude"
when_all_unavailable = "fail"
retry_after_max = 0.2
[probes]
kind = "none"
"""


class Session:
    """The rig: fakes, daemon, clients, and `serve(model)`, which makes the next request to
    chain "agent" fail over until `model` serves it (each model before it answers a 429
    with a Retry-After too long to wait for)."""

    def __init__(self, ant: FakeAnthropic, oai: FakeOpenAI, gem: FakeGemini, oll: FakeOllama,
                 d: Any, client: anthropic.AsyncAnthropic) -> None:
        self.ant, self.oai, self.gem, self.oll = ant, oai, gem, oll
        self.d, self.client = d, client
        self.fakes: dict[str, Any] = dict(zip(CHAIN, (ant, oai, gem, oll), strict=True))

    async def serve(self, model: str, behaviour: str = "ok") -> None:
        for name in CHAIN:
            await self.d.http.post(f"/v1/models/{name}/reset")
            self.fakes[name].script.clear()
        for name in CHAIN[:CHAIN.index(model)]:
            self.fakes[name].push("busy" if name == "oll/qwen" else "rate_limit")
        self.fakes[model].push(behaviour)

    def requests(self, model: str) -> list[Any]:
        """The requests for answers the upstream of `model` got."""
        fake = self.fakes[model]
        found: list[Any] = (fake.message_requests() if model == "ant/claude"
                            else fake.chat_requests())
        return found

    def last(self, model: str) -> dict[str, Any]:
        """The body the upstream of `model` got last for an answer."""
        body: dict[str, Any] = self.requests(model)[-1].body
        return body


@pytest.fixture
async def s(fake_anthropic: Any, fake_openai: Any, fake_gemini: Any, fake_ollama: Any,
            start_daemon: Any) -> Any:
    ant = await fake_anthropic()
    # Kimi numbers its calls functions.<name>:<n>, and (as many local models) writes "\n\n"
    # before them
    oai = await fake_openai(call_id="functions.get_weather:0", call_text="\n\n")
    gem, oll = await fake_gemini(), await fake_ollama()
    d = await start_daemon(config(ant, oai, gem, oll))
    client = anthropic_client(d.socket)
    yield Session(ant, oai, gem, oll, d, client)
    await client.close()


async def turn(s: Session, served_by: str, messages: list[dict[str, Any]], *,
               stream: bool = True, behaviour: str = "ok",
               **kwargs: Any) -> anthropic.types.Message:
    """One Anthropic-SDK turn of chain "agent", served by `served_by` (its fake's
    `behaviour`)."""
    await s.serve(served_by, behaviour)
    params: dict[str, Any] = {"model": "agent", "max_tokens": 4096, "tools": [TOOL],
                              "messages": messages, **kwargs}
    if stream:
        async with s.client.messages.stream(**params) as events:
            message = await events.get_final_message()
            served = events.response.headers["x-failoverd-model"]
    else:
        raw = await s.client.messages.with_raw_response.create(**params)
        message, served = await raw.parse(), raw.headers["x-failoverd-model"]
    assert served == served_by
    return message


def replay(message: anthropic.types.Message) -> dict[str, Any]:
    """An answer as an agent puts it back in the history: the blocks as they came."""
    return {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                             for b in message.content]}


def results(message: anthropic.types.Message, text: str = "18C, sunny") -> dict[str, Any]:
    return {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": b.id, "content": text}
        for b in message.content if b.type == "tool_use"]}


# ------------------------------------------------------------------ Anthropic agent


async def test_claude_code_loop_moves_from_anthropic_to_kimi_and_back(s: Session) -> None:
    """Turn 1 Anthropic (thinking, tool_use, streamed); turn 2 (the tool result) fails over
    to an OpenAI-compatible model that calls two tools in parallel after "\\n\\n"; turn 3
    back on Anthropic: the loop's last turn has no signed thinking, so no thinking; turn 4 a
    new question, thinking on again with the first turn's signed block still in the
    history."""
    s.oai.calls_after_result, s.oai.parallel = True, 2
    first = await turn(s, "ant/claude", [ASK], thinking=THINK)
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use"]
    assert first.content[0].signature == signature(s.ant.thinking)
    assert first.stop_reason == "tool_use" and first.usage.input_tokens > 0
    history = [ASK, replay(first), results(first)]

    second = await turn(s, "oai/kimi", history, thinking=THINK)
    sent = s.last("oai/kimi")
    assert sent["reasoning_effort"] == "low" and "thinking" not in str(sent["messages"])
    uses = [b for b in second.content if b.type == "tool_use"]
    assert [u.id for u in uses] == ["functions.get_weather:0", "functions.get_weather:0_2"]
    assert [u.input for u in uses] == [{"city": "Paris"}, {"city": "Paris1"}]
    assert second.stop_reason == "tool_use"
    assert (second.usage.input_tokens, second.usage.output_tokens) == (9, 6)
    history += [replay(second), results(second)]

    third = await turn(s, "ant/claude", history, thinking=THINK)
    sent = s.last("ant/claude")
    assert "thinking" not in sent  # the loop's last assistant turn has no signed thinking
    assert sent["messages"][1]["content"][0]["signature"] == signature(s.ant.thinking)
    ids = [b["id"] for b in sent["messages"][3]["content"] if b["type"] == "tool_use"]
    answered = [b["tool_use_id"] for b in sent["messages"][4]["content"]]
    assert answered == ids and len(set(ids)) == 2
    history += [replay(third), results(third),
                {"role": "assistant", "content": "It is sunny."},
                {"role": "user", "content": "And in London?"}]

    await turn(s, "ant/claude", history, thinking=THINK, stream=False)
    assert s.last("ant/claude")["thinking"] == THINK


async def test_gemini_and_ollama_serve_the_middle_of_an_anthropic_loop(s: Session) -> None:
    """Anthropic, then Gemini (two parallel calls, both call_0/call_1, with the placeholder
    thought signature replayed on the first), then Ollama (arguments as objects, results
    named), then Anthropic again with the repeated ids made unique."""
    s.gem.tool_calls = 2
    first = await turn(s, "ant/claude", [ASK], thinking=THINK)
    history = [ASK, replay(first), results(first)]
    # Gemini answers the tool result with two more calls when told to by the fake's tools
    s.gem.reply = "Let me check two more."
    second = await turn(s, "gem/flash", [*history, {"role": "assistant", "content": "Hmm."},
                                         {"role": "user", "content": "Check Lyon too."}])
    sent = s.last("gem/flash")
    model_turn = sent["contents"][1]
    assert model_turn["role"] == "model"
    calls = [p for p in model_turn["parts"] if "functionCall" in p]
    assert calls[0]["thoughtSignature"]  # the placeholder Gemini documents
    assert [u.id for u in second.content if u.type == "tool_use"] == ["call_0", "call_1"]
    history = [*history, {"role": "assistant", "content": "Hmm."},
               {"role": "user", "content": "Check Lyon too."}, replay(second),
               results(second, "Lyon: 20C")]

    third = await turn(s, "oll/qwen", [*history, {"role": "assistant", "content": "Ok."},
                                       {"role": "user", "content": "And Nice?"}])
    sent = s.last("oll/qwen")
    assert all(isinstance(c["function"]["arguments"], dict)
               for m in sent["messages"] for c in m.get("tool_calls") or [])
    assert [m.get("tool_name") for m in sent["messages"] if m["role"] == "tool"] == [
        "get_weather"] * 3
    assert [u.id for u in third.content if u.type == "tool_use"] == ["call_0"]
    history = [*history, {"role": "assistant", "content": "Ok."},
               {"role": "user", "content": "And Nice?"}, replay(third),
               results(third, "Nice: 24C")]

    await turn(s, "ant/claude", history, thinking=THINK)
    sent = s.last("ant/claude")
    uses = [b["id"] for m in sent["messages"] for b in m["content"] if b["type"] == "tool_use"]
    answered = [b["tool_use_id"] for m in sent["messages"] for b in m["content"]
                if b["type"] == "tool_result"]
    assert uses == answered and len(set(uses)) == 4


def screenshot_loop() -> list[dict[str, Any]]:
    """A Claude Code turn after a screenshot tool ran: the result is text and an image."""
    return [ASK, {"role": "assistant", "content": [
        {"type": "text", "text": "Taking a screenshot."},
        {"type": "tool_use", "id": "toolu_01Shot", "name": "get_weather",
         "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01Shot", "content": [
                {"type": "text", "text": "the screen:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PNG}}]},
            {"type": "text", "text": "What do you see?"}]}]


async def test_a_tool_result_with_an_image_fails_over_to_an_openai_model(s: Session) -> None:
    """OpenAI takes images only in user messages ("Image URLs are only allowed for messages
    with role 'user'"): the tool message keeps the text and the image follows in the user
    message after the results. It was OpenAI's 400, passed to the agent as its own."""
    answer = await turn(s, "oai/kimi", screenshot_loop(), tool_choice={"type": "none"})
    assert answer.content[0].text == s.oai.reply
    messages = s.last("oai/kimi")["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "user"]
    assert messages[2]["content"] == [{"type": "text", "text": "the screen:"}]
    assert messages[3]["content"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "text", "text": "What do you see?"}]


async def test_max_tokens_in_the_middle_of_a_tool_call(s: Session) -> None:
    """An OpenAI-compatible answer cut by max_tokens inside a tool call's arguments reaches
    the Anthropic agent as Anthropic's own: stop_reason max_tokens, the tool_use block's input
    as much as came; Anthropic's cut reaches an OpenAI agent as finish_reason length with the
    partial arguments."""
    cut = await turn(s, "oai/kimi", [ASK], behaviour="length_in_call")
    assert cut.stop_reason == "max_tokens"
    assert cut.content[-1].type == "tool_use"
    assert cut.content[-1].name == "get_weather"

    s.ant.push("max_tokens_in_call")
    chunks = [c async for c in await s.d.openai.chat.completions.create(
        model="ant/claude", messages=[ASK], tools=[WEATHER], stream=True,
        stream_options={"include_usage": True})]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    arguments = "".join(t.function.arguments or "" for c in chunks if c.choices
                        for t in c.choices[0].delta.tool_calls or [])
    assert finishes[-1] == "length"
    assert arguments and '{"city":"Paris","days":2}'.startswith(arguments)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7


def foreign_history() -> list[dict[str, Any]]:
    """An OpenAI agent's history with the tool-call ids of three providers: Kimi's
    `functions.get_weather:0` (two in parallel), then Gemini's and Ollama's `call_0`, each
    answering a new question."""
    def calls(*ids: str) -> dict[str, Any]:
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": i, "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            for i in ids]}

    def result(i: str) -> dict[str, Any]:
        return {"role": "tool", "tool_call_id": i, "content": f"{i}: 18C"}

    kimi = ("functions.get_weather:0", "functions.get_weather:1")
    return [ASK, calls(*kimi), *map(result, kimi),
            {"role": "assistant", "content": "Sunny."},
            {"role": "user", "content": "London?"}, calls("call_0"), result("call_0"),
            {"role": "assistant", "content": "Rainy."},
            {"role": "user", "content": "Lyon?"}, calls("call_0"), result("call_0")]


@pytest.mark.parametrize("model", CHAIN)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_history_with_other_providers_ids_goes_to_every_kind(
        s: Session, model: str, stream: bool) -> None:
    raw = await s.d.openai.chat.completions.with_raw_response.create(
        model=model, messages=foreign_history(), tools=[WEATHER], stream=stream,
        extra_headers={"x-failoverd-no-fallback": "1"})
    assert raw.headers["x-failoverd-model"] == model
    if stream:
        assert [c async for c in raw.parse()]
    sent = s.last(model)
    if model == "ant/claude":
        uses = [b["id"] for m in sent["messages"] for b in m["content"]
                if b["type"] == "tool_use"]
        answered = [b["tool_use_id"] for m in sent["messages"] for b in m["content"]
                    if b["type"] == "tool_result"]
        assert uses == answered and len(set(uses)) == 4
    elif model == "gem/flash":
        responses = [p["functionResponse"]["response"] for c in sent["contents"]
                     for p in c["parts"] if "functionResponse" in p]
        assert responses == [{"result": "functions.get_weather:0: 18C"},
                             {"result": "functions.get_weather:1: 18C"},
                             {"result": "call_0: 18C"}, {"result": "call_0: 18C"}]
    elif model == "oll/qwen":
        assert [m.get("tool_name") for m in sent["messages"] if m["role"] == "tool"] == [
            "get_weather"] * 4
    else:
        assert sent["messages"] == foreign_history()


@pytest.mark.parametrize("model", CHAIN)
async def test_a_prefill_with_stop_sequences_to_every_kind(s: Session, model: str) -> None:
    """An Anthropic agent's assistant prefill and stop sequences: Anthropic gets the prefill
    without its trailing space, Ollama continues it, an OpenAI model gets it as the last
    message; Gemini refuses a conversation that ends on a model turn, so it is skipped as
    incapable (was its 400, the agent's error)."""
    messages = [ASK, {"role": "assistant", "content": "The weather is "}]
    params: dict[str, Any] = {"max_tokens": 200, "messages": messages,
                              "stop_sequences": ["fake", "\n\nHuman:"]}
    if model == "gem/flash":
        with pytest.raises(anthropic.APIStatusError) as info:
            await s.client.messages.create(model=model, **params,
                                           extra_headers={"x-failoverd-no-fallback": "1"})
        assert info.value.status_code == 503 and "incapable" in str(info.value.body)
        assert not s.gem.chat_requests()
        return
    answer = await s.client.messages.create(model=model, **params,
                                            extra_headers={"x-failoverd-no-fallback": "1"})
    assert answer.stop_reason in ("end_turn", "stop_sequence")
    assert answer.content and answer.content[0].type == "text"
    sent = s.last(model)
    if model == "ant/claude":
        assert sent["messages"][-1]["content"] == [{"type": "text", "text": "The weather is"}]
        assert sent["stop_sequences"] == ["fake", "\n\nHuman:"]
        assert (answer.stop_reason, answer.stop_sequence) == ("stop_sequence", "fake")
    elif model == "oll/qwen":
        assert sent["messages"][-1] == {"role": "assistant", "content": "The weather is "}
        assert sent["options"]["stop"] == ["fake", "\n\nHuman:"]
    else:
        assert sent["messages"][-1] == {"role": "assistant", "content": "The weather is "}
        assert sent["stop"] == ["fake", "\n\nHuman:"]


# (prompt tokens with cache reads, cached, completion) as each fake counts a plain answer
USAGE = {"ant/claude": (15, 3, 7), "oai/kimi": (9, 0, 6), "gem/flash": (9, 0, 6),
         "oll/qwen": (26, 0, 7)}


@pytest.mark.parametrize("model", CHAIN)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_usage_is_accounted_in_both_directions(s: Session, model: str,
                                                     stream: bool) -> None:
    prompt, cached, completion = USAGE[model]
    pin = {"x-failoverd-no-fallback": "1"}
    if stream:
        async with s.client.messages.stream(model=model, max_tokens=100, messages=[ASK],
                                            extra_headers=pin) as events:
            message = await events.get_final_message()
        chunks = [c async for c in await s.d.openai.chat.completions.create(
            model=model, messages=[ASK], stream=True, extra_headers=pin,
            stream_options={"include_usage": True})]
        usage = chunks[-1].usage
    else:
        message = await s.client.messages.create(model=model, max_tokens=100, messages=[ASK],
                                                 extra_headers=pin)
        usage = (await s.d.openai.chat.completions.create(
            model=model, messages=[ASK], extra_headers=pin)).usage
    assert (message.usage.input_tokens, message.usage.output_tokens) == (
        prompt - cached, completion)
    assert (message.usage.cache_read_input_tokens or 0) == cached
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)
    assert usage.total_tokens == prompt + completion
    assert ((usage.prompt_tokens_details.cached_tokens or 0) if usage.prompt_tokens_details
            else 0) == cached


TOOL_CHOICES = [({"type": "any"}, "required"),
                ({"type": "tool", "name": "get_weather"},
                 {"type": "function", "function": {"name": "get_weather"}}),
                ({"type": "auto", "disable_parallel_tool_use": True}, "auto"),
                ({"type": "none"}, "none")]


@pytest.mark.parametrize("model", CHAIN)
@pytest.mark.parametrize(("choice", "canonical"), TOOL_CHOICES,
                         ids=["any", "tool", "auto-serial", "none"])
async def test_tool_choice_variants_mid_loop(s: Session, model: str, choice: dict[str, Any],
                                             canonical: Any) -> None:
    """Each tool_choice an Anthropic agent sends, mid tool loop, with thinking asked for: what
    the upstream can express it gets; a forced call Ollama cannot force is incapable."""
    first = await turn(s, "ant/claude", [ASK])
    messages = [ASK, replay(first), results(first)]
    params: dict[str, Any] = {"model": model, "max_tokens": 4096, "tools": [TOOL],
                              "messages": messages, "tool_choice": choice, "thinking": THINK,
                              "extra_headers": {"x-failoverd-no-fallback": "1"}}
    if model == "oll/qwen" and choice["type"] in ("any", "tool"):
        with pytest.raises(anthropic.APIStatusError) as info:
            await s.client.messages.create(**params)
        assert info.value.status_code == 503
        return
    answer = await s.client.messages.create(**params)
    assert answer.stop_reason in ("tool_use", "end_turn")
    sent = s.last(model)
    if model == "ant/claude":
        assert "thinking" not in sent  # forced: refused with thinking; else no signed block
        assert sent["tool_choice"] == choice
    elif model == "oai/kimi":
        assert sent["tool_choice"] == canonical
        serial = choice.get("disable_parallel_tool_use") is True
        assert sent.get("parallel_tool_calls") == (False if serial else None)
    elif model == "gem/flash":
        mode = sent["toolConfig"]["functionCallingConfig"]["mode"]
        assert mode == {"any": "ANY", "tool": "ANY", "auto": "AUTO", "none": "NONE"}[
            choice["type"]]
    else:
        assert ("tools" in sent) is (choice["type"] != "none")


# ------------------------------------------------------------------ OpenAI agent


async def test_openai_agent_session_through_every_kind(s: Session) -> None:
    """An openai-SDK agent (streamed, the SDK's stream helper assembling each answer):
    Gemini calls two tools in parallel, Anthropic takes their results and calls one more,
    Ollama answers that one's result, Kimi the next question. Every turn's request is one
    its upstream validates, and each answer is one the SDK assembles."""
    s.gem.tool_calls = 2
    messages: list[Any] = [ASK]

    async def step(model: str) -> Any:
        await s.serve(model)
        before = len(s.requests(model))
        async with s.d.openai.chat.completions.stream(
                model="agent", messages=messages, tools=[WEATHER], reasoning_effort="low",
                stream_options={"include_usage": True}) as stream:
            final = await stream.get_final_completion()
        assert len(s.requests(model)) == before + 1  # it served the turn
        assert final.usage is not None and final.usage.total_tokens > 0
        message = final.choices[0].message
        messages.append(message.model_dump(exclude_none=True, exclude={"parsed"}))
        for call in message.tool_calls or []:
            assert json.loads(call.function.arguments)["city"].startswith("Paris")
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "18C"})
        return final.choices[0]

    first = await step("gem/flash")
    assert first.finish_reason == "tool_calls"
    assert [c.id for c in first.message.tool_calls] == ["call_0", "call_1"]
    second = await step("ant/claude")
    assert second.finish_reason == "tool_calls"
    sent = s.last("ant/claude")
    assert "thinking" not in sent  # its last assistant turn was Gemini's
    assert [b["tool_use_id"] for b in sent["messages"][-1]["content"]] == ["call_0", "call_1"]
    third = await step("oll/qwen")
    assert third.finish_reason == "stop" and third.message.content == s.oll.reply
    messages.append({"role": "user", "content": "And London?"})
    fourth = await step("oai/kimi")
    assert fourth.finish_reason == "tool_calls"
    sent = s.last("oai/kimi")["messages"]
    assert [m["role"] for m in sent] == [m["role"] for m in messages[:-2]]


async def test_blank_tool_output_and_text_reach_anthropic_without_blank_blocks(
        s: Session) -> None:
    """A command that printed only a newline, and an empty text block beside it: Anthropic
    refuses empty and whitespace-only text blocks, so they are left out."""
    first = await turn(s, "ant/claude", [ASK])
    call = next(b for b in first.content if b.type == "tool_use")
    blank = {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": call.id, "content": "\n"},
        {"type": "text", "text": ""}]}
    await turn(s, "ant/claude", [ASK, replay(first), blank], stream=False)
    assert s.last("ant/claude")["messages"][-1]["content"] == [
        {"type": "tool_result", "tool_use_id": call.id}]
    for model in ("oai/kimi", "gem/flash", "oll/qwen"):  # blank is fine elsewhere
        await turn(s, model, [ASK, replay(first), blank])
