"""POST /v1/responses, reviewed against the openai SDK's own types and stream accumulator.

Every event the encoder writes is validated as the SDK's ``ResponseStreamEvent`` and fed to
the SDK's ``ResponseStreamState`` (what ``client.responses.stream()`` runs), whose final
response must agree with the ``response.completed`` event; end to end tests use the SDK over
the Unix socket with the rig of tests/test_responses_front.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from openai._models import construct_type
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from failoverd.translate.responses_front import responses_to_canonical
from failoverd.translate.responses_response import canonical_to_responses, response_echo
from failoverd.translate.responses_stream import ResponsesStreamEncoder
from tests.fakes.openai import FakeOpenAI
from tests.test_responses_front import WEATHER, config

EVENT = TypeAdapter(ResponseStreamEvent)


def delta(**fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields}]}


def finish(reason: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}


def stream(chunks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Any]:
    """The events for `chunks`, each checked against the SDK's types, and the response the
    SDK's stream helper assembles from them (None when the stream did not complete)."""
    encoder = ResponsesStreamEncoder("m", response_echo(None))
    data = b"".join(encoder.feed(c) for c in chunks) + encoder.finish()
    state = ResponseStreamState(input_tools=omit, text_format=omit)
    events = []
    for block in data.decode().split("\n\n"):
        if not block:
            continue
        name, payload = block.split("\n")
        event = json.loads(payload.removeprefix("data: "))
        assert name == "event: " + event["type"]
        EVENT.validate_python(event)  # raises on a missing or mistyped field
        state.handle_event(construct_type(type_=ResponseStreamEvent, value=event))
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events, state._completed_response


def completed_output(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events, final = stream(chunks)
    assert events[-1]["type"] == "response.completed"
    output: list[dict[str, Any]] = events[-1]["response"]["output"]
    # the SDK's stream helper assembles the same output from the item events
    assert [i.model_dump(exclude_none=True) for i in final.output] == [
        i.model_dump(exclude_none=True)
        for i in Response.model_validate(events[-1]["response"]).output]
    return output


# ------------------------------------------------------------------ refusals

def test_a_streamed_refusal_is_a_refusal_part() -> None:
    """A Chat Completions ``delta.refusal`` (OpenAI's structured-output refusals) was dropped:
    the message came out as an empty output_text."""
    events, final = stream([delta(role="assistant", content=""), delta(refusal="I can't"),
                            delta(refusal=" help with that"), finish("stop")])
    kinds = [e["type"] for e in events]
    assert kinds[2:] == ["response.output_item.added", "response.content_part.added",
                         "response.refusal.delta", "response.refusal.delta",
                         "response.refusal.done", "response.content_part.done",
                         "response.output_item.done", "response.completed"]
    assert events[3]["part"] == {"type": "refusal", "refusal": ""}
    assert events[6]["refusal"] == "I can't help with that"
    assert events[7]["part"] == {"type": "refusal", "refusal": "I can't help with that"}
    [message] = events[-1]["response"]["output"]
    assert message["content"] == [{"type": "refusal", "refusal": "I can't help with that"}]
    assert final.output[0].content[0].type == "refusal" and final.output_text == ""


def test_text_then_a_refusal_are_two_parts_of_one_message() -> None:
    events, _ = stream([delta(content="Sure"), delta(refusal="no"), finish("stop")])
    added = [e for e in events if e["type"] == "response.content_part.added"]
    assert [(e["content_index"], e["part"]["type"]) for e in added] == [
        (0, "output_text"), (1, "refusal")]
    done = [e for e in events if e["type"] == "response.content_part.done"]
    assert [e["content_index"] for e in done] == [0, 1]
    [message] = completed_output([delta(content="Sure"), delta(refusal="no"), finish("stop")])
    assert [p["type"] for p in message["content"]] == ["output_text", "refusal"]


# ------------------------------------------------------------------ calls without arguments

def test_a_call_without_arguments_has_the_empty_object() -> None:
    """An upstream that streams a call's name and no argument deltas (or "") gave
    ``arguments: ""``, which the Agents SDK's json.loads refuses; OpenAI sends "{}"."""
    chunks = [delta(tool_calls=[{"index": 0, "id": "call_a", "type": "function",
                                 "function": {"name": "now", "arguments": ""}}]),
              finish("tool_calls")]
    events, final = stream(chunks)
    deltas = "".join(e["delta"] for e in events
                     if e["type"] == "response.function_call_arguments.delta")
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert deltas == done["arguments"] == "{}"
    assert final.output[0].arguments == "{}"
    r = canonical_to_responses({"choices": [{"index": 0, "finish_reason": "tool_calls",
                                             "message": {"role": "assistant", "tool_calls": [
                                                 {"id": "call_a", "type": "function",
                                                  "function": {"name": "now",
                                                               "arguments": ""}}]}}]},
                               "m", response_echo(None))
    assert r["output"][0]["arguments"] == "{}"


# ------------------------------------------------------------------ reasoning

def test_reasoning_under_its_other_name_is_a_reasoning_item() -> None:
    """vLLM, Ollama, OpenRouter and LM Studio name the reasoning ``reasoning``, not
    ``reasoning_content``: it was dropped."""
    [item, message] = completed_output([delta(reasoning="let me think"),
                                        delta(content="42"), finish("stop")])
    assert item["type"] == "reasoning"
    assert item["summary"] == [{"type": "summary_text", "text": "let me think"}]
    assert message["content"][0]["text"] == "42"
    r = canonical_to_responses({"choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": "42",
                                                         "reasoning": "let me think"}}]},
                               "m", response_echo(None))
    assert [i["type"] for i in r["output"]] == ["reasoning", "message"]
    assert r["output"][0]["summary"][0]["text"] == "let me think"
    # both names (vLLM 0.10 sends both): one item, not the text twice
    [item, _] = completed_output([delta(reasoning_content="a", reasoning="a"),
                                  delta(content="b"), finish("stop")])
    assert item["summary"][0]["text"] == "a"


# ------------------------------------------------------------------ reasoning sent back

THOUGHT = "The user wants Paris weather; call get_weather."


def test_a_replayed_reasoning_item_is_the_next_assistant_turns_unsigned_thinking() -> None:
    """The Agents SDK sends every output item back; a reasoning item's text goes with the
    assistant turn after it (thinking_blocks, unsigned: never sent to Anthropic, the
    reasoning_content of a model that asks for it back), not dropped."""
    out = responses_to_canonical({"model": "m", "input": [
        {"role": "user", "content": "weather?"},
        {"id": "rs_1", "type": "reasoning", "encrypted_content": None,
         "summary": [{"type": "summary_text", "text": "first"},
                     {"type": "summary_text", "text": "second"}]},
        {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "c1",
         "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"id": "rs_2", "type": "reasoning", "summary": [], "content": [
            {"type": "reasoning_text", "text": "raw"}]},
        {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Sunny.", "annotations": []}]},
        {"id": "rs_3", "type": "reasoning", "summary": []},  # no text: nothing to carry
        {"role": "user", "content": "thanks"},
        {"id": "rs_4", "type": "reasoning", "summary": [
            {"type": "summary_text", "text": "orphan"}]}]})  # no turn after it
    assistant = [m for m in out["messages"] if m["role"] == "assistant"]
    assert assistant[0]["thinking_blocks"] == [
        {"type": "thinking", "thinking": "first\n\nsecond", "signature": ""}]
    assert assistant[0]["tool_calls"][0]["id"] == "c1"
    assert assistant[1]["thinking_blocks"] == [
        {"type": "thinking", "thinking": "raw", "signature": ""}]
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "tool",
                                                    "assistant", "user"]
    assert all("thinking_blocks" not in m for m in out["messages"] if m["role"] != "assistant")
    # text then a call in one turn: the reasoning between them joins that turn
    out = responses_to_canonical({"model": "m", "input": [
        {"role": "user", "content": "x"},
        {"type": "message", "role": "assistant", "content": [
            {"type": "output_text", "text": "Checking."}]},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "t"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}]})
    assert out["messages"][-1]["thinking_blocks"] == [
        {"type": "thinking", "thinking": "t", "signature": ""}]


async def test_deepseek_in_thinking_mode_gets_its_reasoning_back_from_the_reasoning_item(
        fake_openai: Any, fake_anthropic: Any, start_daemon: Any) -> None:
    """An Agents SDK tool loop on DeepSeek's thinking mode: the next turn's history has the
    reasoning item; DeepSeek's 400 for a turn without its reasoning_content is learned, and
    the request sent again carries the item's text, not the placeholder."""
    deepseek: FakeOpenAI = await fake_openai(thinking=THOUGHT)
    d = await start_daemon(config(deepseek, await fake_anthropic()))
    first = await d.openai.responses.create(model="oai/gpt", input="weather in Paris?",
                                            tools=[WEATHER])
    assert [i.type for i in first.output] == ["reasoning", "function_call"]
    call = first.output[1]
    history: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    history += [{**i.model_dump(exclude_none=True), "encrypted_content": None}
                if i.type == "reasoning" else i.model_dump(exclude_none=True)
                for i in first.output]
    history.append({"type": "function_call_output", "call_id": call.call_id,
                    "output": "sunny"})
    before = len(deepseek.chat_requests())
    async with d.openai.responses.stream(model="oai/gpt", input=history,
                                         tools=[WEATHER]) as events:
        second = await events.get_final_response()
    assert second.output_text == deepseek.reply
    refused, accepted = deepseek.chat_requests()[before:]
    turns = [m for m in accepted.body["messages"] if m["role"] == "assistant"]
    assert turns[0]["reasoning_content"] == THOUGHT
    assert "thinking_blocks" not in turns[0]  # never sent as such
    assert all("thinking_blocks" not in m and "reasoning_content" not in m
               for m in refused.body["messages"])  # not to a model that did not ask


async def test_the_reasoning_item_never_reaches_an_upstream_that_did_not_ask(
        fake_openai: Any, fake_anthropic: Any, start_daemon: Any) -> None:
    oai = await fake_openai()
    ant = await fake_anthropic()
    d = await start_daemon(config(oai, ant))
    history = [{"role": "user", "content": "weather?"},
               {"id": "rs_1", "type": "reasoning", "summary": [
                   {"type": "summary_text", "text": THOUGHT}]},
               {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                "arguments": "{\"city\":\"Paris\"}"},
               {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]
    for model in ("oai/gpt", "ant/claude"):
        r = await d.openai.responses.create(model=model, input=history, tools=[WEATHER])
        assert r.status == "completed"
    assert THOUGHT.encode() not in orjson.dumps(oai.chat_requests()[-1].body)
    assert THOUGHT.encode() not in orjson.dumps(ant.message_requests()[-1].body)


# ------------------------------------------------------------------ max_output_tokens

async def test_a_cut_in_the_last_of_two_calls_makes_only_that_call_incomplete(
        fake_openai: Any, fake_anthropic: Any, start_daemon: Any) -> None:
    """max_output_tokens hit halfway through the second of two parallel calls: the first call
    is whole. Streamed, every call still open was done as incomplete and the final response
    marked the text before them incomplete too (its output_item.done had said completed);
    not streamed, the message was incomplete and every call completed."""
    oai: FakeOpenAI = await fake_openai(default="length_in_call", call_text="Checking.")
    oai.parallel = 2
    d = await start_daemon(config(oai, await fake_anthropic()))
    kwargs: dict[str, Any] = {"model": "oai/gpt", "input": "weather?", "tools": [WEATHER],
                              "max_output_tokens": 30}
    events = [e async for e in await d.openai.responses.create(**kwargs, stream=True)]
    done = [(e.item.type, e.item.status) for e in events
            if e.type == "response.output_item.done"]
    assert done == [("message", "completed"), ("function_call", "completed"),
                    ("function_call", "incomplete")]
    assert events[-1].type == "response.incomplete"
    assert [(i.type, i.status) for i in events[-1].response.output] == done
    # not streamed (the fake cuts streams only): the same statuses
    calls = [{"id": f"c{k}", "type": "function", "function": {"name": "f", "arguments": a}}
             for k, a in enumerate(('{"a": 1}', '{"a"'))]
    r = canonical_to_responses({"choices": [{"index": 0, "finish_reason": "length", "message": {
        "role": "assistant", "content": "Checking.", "tool_calls": calls}}]},
        "m", response_echo(None))
    assert r["status"] == "incomplete"
    assert [(i["type"], i["status"]) for i in r["output"]] == done
