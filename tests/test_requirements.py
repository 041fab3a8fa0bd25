"""Requirement inference from canonical request bodies, and requirements stated outright."""

from __future__ import annotations

from typing import Any

import pytest

from failoverd.requirements import Requirements, from_spec, infer
from failoverd.tokens import estimate

USER = {"role": "user", "content": "Describe this picture."}
IMAGE = {"role": "user", "content": [
    {"type": "text", "text": "What is in this image?"},
    {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}},
]}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
CALL = {"role": "assistant", "content": None, "tool_calls": [{
    "id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}
RESULT = {"role": "tool", "tool_call_id": "c1", "content": "21C"}


def body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "default", "messages": list(messages), **extra}


INFERENCE: list[tuple[str, dict[str, Any], set[str], int | None]] = [
    ("text only", body(USER), set(), None),
    ("text parts only", body({"role": "user", "content": [{"type": "text", "text": "hi"}]}),
     set(), None),
    ("image part", body(IMAGE), {"vision"}, None),
    ("image in an earlier turn", body(IMAGE, {"role": "assistant", "content": "A cat."}, USER),
     {"vision"}, None),
    ("tools given", body(USER, tools=[TOOL]), {"tools"}, None),
    ("empty tools list", body(USER, tools=[]), set(), None),
    ("legacy functions", body(USER, functions=[TOOL["function"]]), {"tools"}, None),
    ("tool messages without tools", body(USER, CALL, RESULT), {"tools"}, None),
    ("reasoning_effort", body(USER, reasoning_effort="low"), {"reasoning"}, None),
    ("reasoning_effort none", body(USER, reasoning_effort="none"), set(), None),
    ("anthropic thinking passed through",
     body(USER, thinking={"type": "enabled", "budget_tokens": 2048}), {"reasoning"}, None),
    ("thinking disabled", body(USER, thinking={"type": "disabled"}), set(), None),
    ("json_object", body(USER, response_format={"type": "json_object"}), {"json"}, None),
    ("json_schema", body(USER, response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}}}), {"json"}, None),
    ("response_format text", body(USER, response_format={"type": "text"}), set(), None),
    ("max_tokens", body(USER, max_tokens=512), set(), 512),
    ("max_completion_tokens", body(USER, max_completion_tokens=2048), set(), 2048),
    ("max_completion_tokens wins", body(USER, max_tokens=100, max_completion_tokens=300),
     set(), 300),
    ("bogus max_tokens ignored", body(USER, max_tokens="lots"), set(), None),
    ("boolean max_tokens ignored", body(USER, max_tokens=True), set(), None),
    ("everything", body(IMAGE, CALL, RESULT, tools=[TOOL], reasoning_effort="high",
                        response_format={"type": "json_object"}, max_tokens=64),
     {"tools", "vision", "reasoning", "json"}, 64),
]


@pytest.mark.parametrize(("name", "request_body", "needs", "output"), INFERENCE,
                         ids=[row[0] for row in INFERENCE])
def test_inference_table(name: str, request_body: dict[str, Any], needs: set[str],
                         output: int | None) -> None:
    req = infer(request_body)
    assert req.needs == needs
    assert req.output_tokens == output
    assert req.prompt_tokens == estimate(request_body)
    assert req.total_tokens == req.prompt_tokens + (output or 0)


def test_long_context_is_never_inferred() -> None:
    # size is the context-window check's job; long_context is only ever asked for outright
    huge = body({"role": "user", "content": "word " * 200_000})
    req = infer(huge)
    assert "long_context" not in req.needs
    assert req.prompt_tokens > 150_000


def test_malformed_bodies_infer_nothing() -> None:
    for bad in ({}, {"messages": "x"}, {"messages": [None, 1, {"content": [None]}]},
                {"messages": [], "tools": "yes", "response_format": "json"}):
        req = infer(bad)
        assert req.needs == frozenset()
        assert req.output_tokens is None


def test_infer_does_not_mutate_the_body() -> None:
    original = body(IMAGE, CALL, RESULT, tools=[TOOL], max_tokens=10)
    snapshot = repr(original)
    infer(original)
    assert repr(original) == snapshot


def test_from_spec() -> None:
    req = from_spec(["tools", " vision", ""], 12_000)
    assert req == Requirements(frozenset({"tools", "vision"}), 12_000, None)
    assert req.total_tokens == 12_000
    assert from_spec([], 0, output_tokens=500).total_tokens == 500
    assert from_spec(["long_context"], 1).needs == {"long_context"}


@pytest.mark.parametrize(("needs", "tokens", "output", "message"), [
    (["telepathy"], 10, None, "unknown capability 'telepathy'"),
    ([], -1, None, "tokens must be a non-negative integer"),
    ([], True, None, "tokens must be a non-negative integer"),
    ([], 10, -5, "output_tokens must be a non-negative integer"),
])
def test_from_spec_rejects_bad_input(needs: list[str], tokens: Any, output: Any,
                                     message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_spec(needs, tokens, output)


def test_as_dict_is_json_ready_and_sorted() -> None:
    req = from_spec(["vision", "tools"], 100, 20)
    assert req.as_dict() == {"needs": ["tools", "vision"], "prompt_tokens": 100,
                             "output_tokens": 20, "total_tokens": 120}
