"""Property-based fuzzing of request JSON validation: the front ends (chat completions,
messages, responses, completions, embeddings) and the provider translations after them.

Bodies are valid requests with one to three drawn changes anywhere in the tree: a value
replaced by another JSON type, null, a huge or negative number, deep nesting, odd unicode, an
empty string, list or object; a key dropped or added; an item added. What the daemon reads
(orjson) is what the functions get. A front end must return the canonical request or raise
RequestError naming the field; a canonical request must translate for every upstream API or
raise RequestError (what the dispatcher turns into "incapable", the next candidate's turn):
any other exception is a traceback at error level and, at the front, a 500. The same bodies,
fewer, go through a real daemon (simulated providers) on both of its paths.

Examples: a few hundred, derandomized, in the normal suite; `FAILOVERD_FUZZ_EXAMPLES=N` runs N
per property from a fresh random seed (a long hunt).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from failoverd.api.body import MAX_DEPTH
from failoverd.api.fronts import ANTHROPIC, OPENAI, RESPONSES
from failoverd.errors import RequestError
from failoverd.translate import bedrock, completions, embeddings, gemini, ollama
from failoverd.translate.anthropic_request import canonical_to_anthropic

EXAMPLES = int(os.environ.get("FAILOVERD_FUZZ_EXAMPLES", "0"))
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


def fuzz(examples: int) -> settings:
    """`examples` derandomized in the normal suite; FAILOVERD_FUZZ_EXAMPLES from a new seed."""
    return settings(max_examples=EXAMPLES or examples, derandomize=not EXAMPLES,
                    deadline=None, database=None, print_blob=True,
                    # in the suite a failure is reported as found (shrinking it could take
                    # longer than the test's timeout); a hunt shrinks it
                    phases=tuple(Phase) if EXAMPLES else NO_SHRINK,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
       "/5+hHgAHggJ/PchI7wAAAABJRU5ErkJggg==")
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {
    "type": "array", "items": {"type": "string", "enum": ["x", "y"]}}}, "required": ["a"]}

CHAT: dict[str, Any] = {
    "model": "default",
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "what is in it?"},
                                     {"type": "image_url", "image_url": {"url": PNG}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get", "arguments": "{\"a\": 1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "user", "content": "and then?"}],
    "tools": [{"type": "function", "function": {"name": "get", "description": "gets",
                                                "parameters": SCHEMA}}],
    "tool_choice": "auto", "temperature": 0.5, "top_p": 1, "max_tokens": 100,
    "stop": ["\n\n"], "user": "u1", "stream": False,
    "response_format": {"type": "json_schema",
                        "json_schema": {"name": "answer", "schema": SCHEMA}},
}
MESSAGES: dict[str, Any] = {
    "model": "default", "max_tokens": 100,
    "system": [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "what is in it?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PNG.split(",", 1)[1]}}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "looking"},
            {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"a": 1}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "42"},
            {"type": "text", "text": "and then?"}]}],
    "tools": [{"name": "get", "description": "gets", "input_schema": SCHEMA}],
    "tool_choice": {"type": "auto"}, "temperature": 0.5, "stop_sequences": ["\n\n"],
    "metadata": {"user_id": "u1"}, "stream": False,
}
RESPONSES_BODY: dict[str, Any] = {
    "model": "default", "instructions": "be brief",
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "what is in it?"},
                                     {"type": "input_image", "image_url": PNG}]},
        {"type": "function_call", "call_id": "c1", "name": "get", "arguments": "{\"a\": 1}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"role": "user", "content": "and then?"}],
    "tools": [{"type": "function", "name": "get", "description": "gets",
               "parameters": SCHEMA}],
    "tool_choice": "auto", "max_output_tokens": 100, "temperature": 0.5, "store": False,
    "text": {"format": {"type": "json_schema", "name": "answer", "schema": SCHEMA}},
    "metadata": {"k": "v"}, "stream": False,
}
# second seeds: streams, reasoning and the rarer fields
CHAT_2: dict[str, Any] = {
    "model": "default", "stream": True, "stream_options": {"include_usage": True}, "n": 2,
    "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}],
    "reasoning_effort": "low", "tools": CHAT["tools"], "parallel_tool_calls": False,
    "tool_choice": {"type": "function", "function": {"name": "get"}}, "seed": 1,
    "max_completion_tokens": 50, "presence_penalty": 0.5,
}
MESSAGES_2: dict[str, Any] = {
    "model": "default", "max_tokens": 4096, "thinking": {"type": "enabled", "budget_tokens": 2048},
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "sum it up"}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "c2ln"},
            {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": False,
             "content": [{"type": "text", "text": "42"}]}]}],
    "tools": MESSAGES["tools"], "tool_choice": {"type": "any"}, "stream": True,
}
RESPONSES_2: dict[str, Any] = {
    "model": "default", "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "ok"}]},
        {"role": "user", "content": "more"}],
    "reasoning": {"effort": "low"}, "text": {"format": {"type": "json_object"}},
    "tool_choice": {"type": "function", "name": "get"}, "tools": RESPONSES_BODY["tools"],
    "parallel_tool_calls": False, "stream": True, "top_p": 0.9, "truncation": "disabled",
}
COMPLETIONS: dict[str, Any] = {
    "model": "default", "prompt": ["def f(", "class A:"], "suffix": "\n", "max_tokens": 16,
    "n": 2, "stop": ["\n"], "echo": False, "logprobs": 0, "stream": False, "temperature": 0.2,
}
EMBEDDINGS: dict[str, Any] = {
    "model": "local/embed-model", "input": ["one", "two"], "encoding_format": "float",
    "dimensions": 8, "user": "u1",
}

# ---------------------------------------------------------------------- mutations

_ODD_TEXT = st.sampled_from(["", " ", "\x00", "\u202e", "\ufeff", "\U0001f600" * 3,
                             "a\r\nb", "\\", "\"", "null", "0", "x" * 300, "\ud7ff\ue000",
                             "e\u0301", "\u0000\u001f"]) | st.text(max_size=20)
_NUMBERS = st.sampled_from([0, -1, 1, 2 ** 31, 2 ** 63 - 1, 2 ** 64 - 1, -(2 ** 63), 1.5,
                            -0.0, 1e308, -1e308, 5e-324, 10 ** 30]) | st.integers() \
    | st.floats(allow_nan=False, allow_infinity=False)


def _deep(depth: int, inner: Any) -> Any:
    for i in range(depth):
        inner = [inner] if i % 2 else {"a": inner}
    return inner


_ODD: st.SearchStrategy[Any] = st.one_of(
    st.none(), st.booleans(), _NUMBERS, _ODD_TEXT, st.just([]), st.just({}), st.just([None]),
    st.just([[]]), st.just({"": None}), st.just({"type": None}), st.just({"type": "text"}),
    st.integers(150, 230).map(lambda n: _deep(n, "x")),
    st.recursive(st.none() | st.booleans() | _NUMBERS | _ODD_TEXT,
                 lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(_ODD_TEXT, inner, max_size=3), max_leaves=8),
).map(copy.deepcopy)  # a fresh value every time: a later change must not alter the strategy


def _paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [at]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*at, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*at, i))
    return found


def _at(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


@st.composite
def almost(draw: st.DrawFn, seed: dict[str, Any]) -> Any:
    """`seed` with one to three drawn changes."""
    body: Any = copy.deepcopy(seed)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(body)))
        how = draw(st.sampled_from(["replace", "replace", "replace", "drop", "add", "wrap"]))
        if not path:
            if how == "replace" and draw(st.integers(0, 4)) == 0:
                body = draw(_ODD)  # not even an object
            elif how == "add" and isinstance(body, dict):
                body[draw(st.sampled_from(["extra", "n", "seed", "stream_options",
                                           "reasoning_effort", "tools", "thinking",
                                           "parallel_tool_calls", "logit_bias"]))] = draw(_ODD)
            continue
        parent, last = _at(body, path[:-1]), path[-1]
        if how == "replace":
            parent[last] = draw(_ODD)
        elif how == "drop":
            del parent[last]
        elif how == "wrap":
            parent[last] = [parent[last]]
        elif isinstance(parent, list):
            parent.insert(last, draw(_ODD))
        else:
            parent[draw(_ODD_TEXT)] = draw(_ODD)
    # what the daemon parses: JSON text read by orjson (a lone surrogate or a number beyond
    # a double is refused there, as not valid JSON, before any validation)
    try:
        return orjson.loads(json.dumps(body))
    except orjson.JSONDecodeError:
        return copy.deepcopy(seed)


# ---------------------------------------------------------------------- the property


def _named(exc: RequestError) -> bool:
    """Whether a 400 names what is wrong: its param, or a field quoted in its message."""
    return bool(exc.param) or "'" in exc.message or ":" in exc.message \
        or "request body" in exc.message


def _translations(canonical: dict[str, Any]) -> list[Callable[[], Any]]:
    """Every upstream API's request for `canonical` (the simulated and OpenAI-compatible
    providers take it as it is: it must serialise)."""
    return [
        lambda: canonical,
        lambda: canonical_to_anthropic(canonical, "claude-sonnet-4-5", 4096,
                                       max_output_tokens=8192),
        lambda: gemini.to_request(canonical),
        lambda: ollama.to_request(canonical, "llama3", stream=bool(canonical.get("stream")),
                                  context_window=8192),
        lambda: bedrock.to_request(canonical, max_output_tokens=8192,
                                   model="anthropic.claude-sonnet-4-5"),
    ]


def depth(value: Any) -> int:
    """How deep `value` nests arrays and objects."""
    deepest, level = 0, [value]
    while level:
        deepest += 1
        level = [v for node in level if isinstance(node, dict | list)
                 for v in (node.values() if isinstance(node, dict) else node)]
    return deepest - 1


def check_front(canonical: Callable[[Any], dict[str, Any]], body: Any) -> dict[str, Any] | None:
    """The front end's canonical request, None for its 400 (which names the field); anything
    else fails the test."""
    if depth(body) > MAX_DEPTH:
        return None  # read_json's 400, before any front end
    try:
        result = canonical(body)
    except RequestError as exc:
        assert exc.status == 400, exc
        assert _named(exc), exc.message
        return None
    for translate in _translations(result):
        try:
            orjson.dumps(translate())  # what the adapter sends must serialise
        except RequestError as exc:
            assert _named(exc), exc.message
    return result


def _chat(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")  # read_json's own check
    return OPENAI.canonical(body)


def _messages(body: Any) -> dict[str, Any]:
    return ANTHROPIC.canonical(body)


def _responses(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    return RESPONSES.canonical(body)


FRONTS: dict[str, tuple[Callable[[Any], dict[str, Any]], list[dict[str, Any]]]] = {
    "chat": (_chat, [CHAT, CHAT_2]), "messages": (_messages, [MESSAGES, MESSAGES_2]),
    "responses": (_responses, [RESPONSES_BODY, RESPONSES_2]),
}


@pytest.mark.parametrize("front", list(FRONTS))
def test_the_seeds_are_valid(front: str) -> None:
    canonical, seeds = FRONTS[front]
    for seed in seeds:
        assert check_front(canonical, copy.deepcopy(seed)) is not None
    assert completions.validate(copy.deepcopy(COMPLETIONS))
    assert embeddings.validate(copy.deepcopy(EMBEDDINGS))


@pytest.mark.parametrize("front", list(FRONTS))
@fuzz(150)
@given(data=st.data())
def test_almost_right_chat_bodies_are_translated_or_named(front: str,
                                                         data: st.DataObject) -> None:
    canonical, seeds = FRONTS[front]
    check_front(canonical, data.draw(st.sampled_from(seeds).flatmap(almost)))


@fuzz(100)
@given(body=almost(COMPLETIONS))
def test_almost_right_completions_are_validated_or_named(body: Any) -> None:
    if depth(body) > MAX_DEPTH:
        return  # read_json's 400
    try:
        valid = completions.validate(body)
    except RequestError as exc:
        assert _named(exc), exc.message
        return
    orjson.dumps(valid)
    try:
        ollama.to_generate(valid, "llama3", stream=False)
    except RequestError as exc:
        assert _named(exc), exc.message


@fuzz(100)
@given(body=almost(EMBEDDINGS))
def test_almost_right_embeddings_are_validated_or_named(body: Any) -> None:
    if depth(body) > MAX_DEPTH:
        return  # read_json's 400
    try:
        valid = embeddings.validate(body)
    except RequestError as exc:
        assert _named(exc), exc.message
        return
    orjson.dumps(valid)
    try:
        embeddings.texts(valid, "gemini")
    except RequestError as exc:
        assert _named(exc), exc.message


# ---------------------------------------------------------------------- what the hunt found


def _chat_with_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"model": "default", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "get", "parameters": schema}}]}


@pytest.mark.parametrize("required", [["a", []], ["a", {"b": 1}], 7, "a", ["a", None]])
def test_a_schema_whose_required_is_not_a_list_of_names_translates_for_gemini(
        required: Any) -> None:
    """`required: [[]]` in a tool's schema raised TypeError (unhashable list) in the Gemini
    translation: a traceback and an `incapable` failover for a bad client field (found by
    fuzzing). What is not a property's name is dropped, as names not among the properties."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": required}
    request = gemini.to_request(OPENAI.canonical(_chat_with_schema(schema)))
    declared = request["tools"][0]["functionDeclarations"][0]["parameters"]
    assert declared.get("required", []) == (["a"] if isinstance(required, list) else [])


@pytest.mark.parametrize("schema", [
    {"type": "object", "definitions": ["x"], "properties": {"a": {"$ref": "#/definitions/x"}}},
    {"type": "object", "$defs": {"x": [1]}, "properties": {"a": {"$ref": "#/$defs/x"}}},
    {"type": "object", "properties": {"a": {"allOf": [5]}}},
    {"type": "object", "properties": {"a": {"type": "string", "format": ["date-time"]}}},
])
def test_odd_schema_parts_are_a_request_error_or_dropped_for_gemini(schema: Any) -> None:
    """Definitions that are no object, a $ref to one, a lone allOf that is no schema and a
    format that is no string each raised TypeError in the Gemini translation."""
    try:
        request = gemini.to_request(OPENAI.canonical(_chat_with_schema(schema)))
    except RequestError as exc:
        assert exc.param and exc.param.startswith("tools[0]")
    else:
        assert "format" not in str(request["tools"])


@pytest.mark.parametrize("effort", [[], ["low"], {"x": 1}])
def test_a_reasoning_effort_that_is_no_string_is_named_for_gemini(effort: Any) -> None:
    """An unhashable reasoning_effort raised TypeError looking it up in the Gemini table."""
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}],
            "reasoning_effort": effort}
    with pytest.raises(RequestError) as info:
        gemini.to_request(OPENAI.canonical(body))
    assert info.value.param == "reasoning_effort"


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m", "input": [{"role": [None], "content": "hi"}]}, "input[0].role"),
    ({"model": "m", "input": [{"role": {"a": 1}, "content": "hi"}]}, "input[0].role"),
    ({"model": "m", "input": "hi", "reasoning": {"effort": ["low"]}}, "reasoning.effort"),
])
def test_responses_fields_that_are_unhashable_are_named(body: dict[str, Any],
                                                        param: str) -> None:
    """A Responses input item's role (or reasoning.effort) given as an array or object raised
    TypeError (unhashable, looked up in a set): the fast path's 500 (found by fuzzing)."""
    with pytest.raises(RequestError) as info:
        RESPONSES.canonical(body)
    assert info.value.param == param


def test_an_anthropic_output_effort_that_is_no_string_is_named() -> None:
    """output_config.effort given as an array raised TypeError (a dict lookup): a 500."""
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
            "output_config": {"effort": ["high"]}}
    with pytest.raises(RequestError) as info:
        ANTHROPIC.canonical(body)
    assert info.value.param == "output_config.effort"
