"""POST /v1/responses, reviewed against the openai SDK's own types and stream accumulator.

Every event the encoder writes is validated as the SDK's ``ResponseStreamEvent`` and fed to
the SDK's ``ResponseStreamState`` (what ``client.responses.stream()`` runs), whose final
response must agree with the ``response.completed`` event; end to end tests use the SDK over
the Unix socket with the rig of tests/test_responses_front.
"""

from __future__ import annotations

import json
from typing import Any

from openai._models import construct_type
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from failoverd.translate.responses_response import canonical_to_responses, response_echo
from failoverd.translate.responses_stream import ResponsesStreamEncoder

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
