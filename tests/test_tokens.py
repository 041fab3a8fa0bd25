"""The token estimator: known counts, bounds per kind of text, structure, speed."""

from __future__ import annotations

import time

import pytest

from failoverd import tokens
from failoverd.tokens import estimate, message_tokens, text_tokens

# Counts from OpenAI's cl100k_base tokenizer (tiktoken), for strings whose split is well
# known: "hello world" -> [hello][ world]; the pangram is one token per word plus the period;
# OpenAI's cookbook shows "tiktoken is great!" as [t][ik][token][ is][ great][!].
KNOWN: list[tuple[str, int]] = [
    ("hello world", 2),
    ("The quick brown fox jumps over the lazy dog.", 10),
    ("tiktoken is great!", 6),
    # [def][ add][(a][,][ b][):\n][   ][ return][ a][ +][ b][\n]
    ("def add(a, b):\n    return a + b\n", 12),
]


@pytest.mark.parametrize(("text", "real"), KNOWN)
def test_known_counts_within_the_documented_bound(text: str, real: int) -> None:
    got = text_tokens(text)
    # short strings: a token or two either way, else 25%
    assert abs(got - real) <= max(2, 0.25 * real), (got, real)


ENGLISH = (
    "Failover keeps a program working when its preferred model is rate limited, "
    "overloaded or down. The daemon tries the next model in the chain, remembers which "
    "models are failing, and probes them in the background until they recover. "
)


def test_english_prose_is_near_four_thirds_tokens_per_word() -> None:
    text = ENGLISH * 30
    words = len(text.split())
    # OpenAI's rule of thumb: 100 tokens ~ 75 words for English (1.33/word); allow ±25%
    assert 1.33 * words * 0.75 <= text_tokens(text) <= 1.33 * words * 1.25


def test_code_is_near_three_and_a_half_characters_per_token() -> None:
    code = (
        "async def fetch(session: ClientSession, url: str) -> dict[str, Any]:\n"
        "    async with session.get(url, timeout=10) as resp:\n"
        "        resp.raise_for_status()\n"
        "        return await resp.json()\n"
    ) * 40
    # BPE tokenizers land around 3-4 characters per token on Python source
    got = text_tokens(code)
    assert len(code) / 4.5 <= got <= len(code) / 2.5


def test_cjk_counts_about_one_token_per_character() -> None:
    text = "故障转移让程序在首选模型被限流或宕机时继续工作。" * 20
    got = text_tokens(text)
    # cl100k spends ~1-1.5 tokens per CJK character, o200k ~0.7-1
    assert 0.6 * len(text) <= got <= 1.5 * len(text)


def test_non_latin_text_is_not_counted_as_characters_over_four() -> None:
    russian = "Переключение на резервную модель происходит автоматически. " * 10
    assert text_tokens(russian) > len(russian) / 4


def test_monotonic_in_text_length() -> None:
    for unit in (ENGLISH, "x = f(y); ", "测试", "é"):
        counts = [text_tokens(unit * n) for n in range(0, 50, 7)]
        assert counts == sorted(counts)
        assert counts[0] == 0 and counts[-1] > 0


def test_message_overhead_and_reply_priming() -> None:
    body = {"messages": [{"role": "user", "content": "hello world"}]}
    # OpenAI's accounting: 3 per message + 1 for the role + content + 3 priming = 9 for this
    assert estimate(body) == tokens.TOKENS_PER_MESSAGE + text_tokens("hello world") + \
        tokens.REPLY_PRIMING_TOKENS
    assert 8 <= estimate(body) <= 11
    named = {"role": "user", "name": "alice", "content": "hello world"}
    assert message_tokens(named) > message_tokens(body["messages"][0])


def test_images_cost_a_flat_amount_whatever_their_url_size() -> None:
    huge_url = "data:image/png;base64," + "A" * 200_000
    high = {"role": "user", "content": [
        {"type": "text", "text": "hello world"},
        {"type": "image_url", "image_url": {"url": huge_url}},
    ]}
    low = {"role": "user", "content": [
        {"type": "text", "text": "hello world"},
        {"type": "image_url", "image_url": {"url": huge_url, "detail": "low"}},
    ]}
    text_only = {"role": "user", "content": "hello world"}
    assert message_tokens(high) - message_tokens(text_only) == tokens.IMAGE_TOKENS == 765
    assert message_tokens(low) - message_tokens(text_only) == tokens.IMAGE_TOKENS_LOW == 85


def test_tools_add_their_schema_size() -> None:
    base = {"messages": [{"role": "user", "content": "weather in Paris?"}]}
    tool = {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}}
    one = estimate({**base, "tools": [tool]})
    two = estimate({**base, "tools": [tool, tool]})
    assert 30 <= one - estimate(base) <= 120
    assert two - one == one - estimate(base)


def test_tool_calls_and_tool_results_are_counted() -> None:
    call = {"role": "assistant", "content": None, "tool_calls": [{
        "id": "c1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    result = {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 21, "sky": "clear"}'}
    assert message_tokens(call) > tokens.TOKENS_PER_MESSAGE + tokens.TOKENS_PER_TOOL
    assert message_tokens(result) > tokens.TOKENS_PER_MESSAGE


def test_json_schema_response_format_is_counted() -> None:
    base = {"messages": [{"role": "user", "content": "list three colours"}]}
    fmt = {"type": "json_schema", "json_schema": {"name": "colours", "schema": {
        "type": "object", "properties": {"colours": {"type": "array"}}}}}
    assert estimate({**base, "response_format": fmt}) > estimate(base) + 10


def test_malformed_bodies_do_not_raise() -> None:
    assert estimate({}) == tokens.REPLY_PRIMING_TOKENS
    odd = {"messages": [None, 7, {"role": "user", "content": [None, 3, {"type": "text"}]}],
           "tools": [object()]}
    assert estimate(odd) >= tokens.REPLY_PRIMING_TOKENS
    lone_surrogate = "abc\ud800def"
    assert text_tokens(lone_surrogate) > 0


def test_a_100_kb_request_is_estimated_fast() -> None:
    body = {"messages": [
        {"role": "system", "content": ENGLISH * 200},
        {"role": "user", "content": ("def f(x):\n    return x * 2  # 测试\n" * 2000)},
    ]}
    assert sum(len(m["content"]) for m in body["messages"]) > 100_000
    estimate(body)
    started = time.perf_counter()
    for _ in range(10):
        estimate(body)
    assert (time.perf_counter() - started) / 10 < 0.02
