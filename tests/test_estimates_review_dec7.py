"""Request sizing review (Dec 7): the token estimate that context matching relies on, checked
against real tokenizer counts and end to end through the daemon with fake upstreams.

Real counts below come from OpenAI's cl100k_base and o200k_base tokenizers (both give the
same count for these strings: their pre-split keeps digits in groups of at most three and
never joins a digit with a symbol, so ``-0.2081,`` is five tokens however the BPE merges)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from failoverd.tokens import text_tokens
from tests.helpers import pair_config, providers


def floats(n: int) -> str:
    """A compact JSON array of n four-decimal floats in [-1, 1), as a tool returns data."""
    return orjson.dumps([round(((i * 7919) % 20000 - 10000) / 10000, 4)
                         for i in range(n)]).decode()


def readings(n: int) -> str:
    """A sensor API's JSON answer: n timestamped readings."""
    return orjson.dumps({"sensor": "t-17", "unit": "C", "readings": [
        {"t": 1700000000 + 60 * i, "v": round(20 + ((i * 37) % 100) / 10, 1)}
        for i in range(n)]}).decode()


def hexes(n: int) -> str:
    """n 64-bit ids in hex, one a line (hashes, trace ids)."""
    return "\n".join(f"{(i * 2654435761) % 2**64:016x}" for i in range(n))


# (text, real tokens); characters / 4, as the estimate counted them, gave 5542, 3260, 2124
DATA = [
    pytest.param(floats(3000), 14701, id="numeric-array"),
    pytest.param(readings(500), 6516, id="api-json"),
    pytest.param(hexes(500), 4489, id="hex-ids"),
    pytest.param(",".join(str((i * 7) % 10) for i in range(2000)), 3999, id="digit-list"),
]


@pytest.mark.parametrize(("text", "real"), DATA)
def test_json_numbers_and_ids_are_not_counted_as_prose(text: str, real: int) -> None:
    """Numbers, JSON punctuation and ids cost a token every two or three characters, not
    every four: estimated as prose, a tool result of data came out at a third of its size."""
    got = text_tokens(text)
    assert 0.85 * real <= got <= 1.25 * real, (got, real)


def test_prose_and_code_stay_near_their_real_counts() -> None:
    """The same rules keep English and source code near their real counts."""
    prose = ("Failover keeps a program working when its preferred model is rate limited, "
             "overloaded or down. The daemon tries the next model in the chain. ") * 20
    # cl100k and o200k: 561
    assert 0.85 * 561 <= text_tokens(prose) <= 1.15 * 561
    code = ("async def fetch(session: ClientSession, url: str) -> dict[str, Any]:\n"
            "    async with session.get(url, timeout=10) as resp:\n"
            "        return await resp.json()\n") * 20
    # cl100k and o200k: 760
    assert 0.85 * 760 <= text_tokens(code) <= 1.25 * 760


def test_a_long_string_is_estimated_from_samples_like_a_short_one() -> None:
    """A megabyte-sized string is sampled; its estimate scales with the short one's."""
    unit = floats(300)
    one = text_tokens(unit)
    many = text_tokens(unit * 200)
    assert 0.9 * 200 * one <= many <= 1.1 * 200 * one


async def test_a_data_heavy_tool_result_skips_a_window_it_would_overflow(
        fake_openai: Any, start_daemon: Any) -> None:
    """An agent's conversation whose tool returned 3000 numbers (14,701 real tokens) does
    not fit an 8k model. Estimated as characters / 4 (5,542) it was sent there, the upstream
    refused it with context_length_exceeded and only then did the request fail over; now the
    small window is skipped without a call and the larger model answers at once."""
    a = await fake_openai(reply="small")
    b = await fake_openai(reply="large")
    a.default = "context"  # what the real 8k upstream answers to a 14.7k-token prompt
    d = await start_daemon(pair_config(a, b, a_window=8192, b_window=128000))
    messages = [
        {"role": "user", "content": "Summarise the sensor readings."},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "read_sensor", "arguments": '{"id": "t-17"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": floats(3000)},
    ]
    tools = [{"type": "function", "function": {
        "name": "read_sensor", "parameters": {"type": "object", "properties": {
            "id": {"type": "string"}}}}}]
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "default", "messages": messages, "tools": tools, "max_tokens": 500})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "b/gpt-b"
    assert resp.headers["x-failoverd-attempts"] == "1"
    assert a.chat_requests() == []
    select = await d.http.post("/v1/select", json={
        "model": "default", "messages": messages, "tools": tools, "max_tokens": 500})
    first = select.json()["candidates"][0]
    assert first["model"] == "a/gpt-a" and not first["eligible"]
    assert first["reason"].startswith("context window 8192 <")


# ------------------------------------------------------------------ sessions


async def test_a_request_the_sticky_fallback_cannot_serve_does_not_move_the_session(
        fake_openai: Any, start_daemon: Any) -> None:
    """small fails, medium serves: the session sticks to medium. One request needing
    reasoning (which only large has) skips medium and small without a call and large
    answers it. medium never failed, so the session's next plain request belongs on medium,
    not on large for another five minutes."""
    from failoverd.clock import ManualClock
    from tests.test_routing_e2e import three_tier

    small, medium, large = [await fake_openai(reply=n) for n in ("s", "m", "l")]
    small.default = "content_filter"
    d = await start_daemon(three_tier(small, medium, large), clock=ManualClock())
    headers = {"x-failoverd-session": "agent-9"}
    plain = {"messages": [{"role": "user", "content": "hi"}]}
    first = await d.http.post("/v1/chat/completions", json=plain, headers=headers)
    assert first.headers["x-failoverd-model"] == "m/medium"
    deep = {**plain, "reasoning_effort": "high"}
    second = await d.http.post("/v1/chat/completions", json=deep, headers=headers)
    assert second.headers["x-failoverd-model"] == "l/large"
    third = await d.http.post("/v1/chat/completions", json=plain, headers=headers)
    assert third.headers["x-failoverd-model"] == "m/medium"


# ------------------------------------------------------------------ output reservation


def _claude_config(claude: Any, big: Any, tail: str = "") -> str:
    return f"""
{providers(c=("anthropic", claude.url), b=big.url)}
[models."c/claude"]
provider = "c"
context_window = 8000
max_output_tokens = 4000
[models."b/big"]
provider = "b"
context_window = 128000
[routing]
primary = "c/claude"
fallbacks = ["b/big"]
when_all_unavailable = "fail"
{tail}
[probes]
kind = "none"
"""


async def test_an_anthropic_upstream_is_sent_the_output_room_the_window_has_left(
        fake_openai: Any, fake_anthropic: Any, start_daemon: Any) -> None:
    """An OpenAI client omits max_tokens. The Anthropic adapter must send one: it sent the
    model's max_output_tokens (4,000), and with a ~6,000-token prompt that is over the
    8,000 window, which Anthropic refuses ("input length and max_tokens exceed context
    limit") where an OpenAI model would write until the window is full. It now gets what the
    window has left after the prompt."""
    claude = await fake_anthropic()
    big = await fake_openai(reply="big")
    d = await start_daemon(_claude_config(claude, big))
    prompt = "Failover keeps a program working when its preferred model is down. " * 450
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": prompt}]})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == "c/claude"
    select = (await d.http.post("/v1/select", json={
        "messages": [{"role": "user", "content": prompt}]})).json()
    estimate = select["requirements"]["prompt_tokens"]
    assert 5000 < estimate < 7500
    sent = claude.message_requests()[-1].body["max_tokens"]
    assert sent == 8000 - estimate
    # a short prompt leaves room for the whole default, and a client's own limit is kept
    await d.http.post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": "hi"}]})
    assert claude.message_requests()[-1].body["max_tokens"] == 4000
    await d.http.post("/v1/chat/completions", json={
        "model": "default", "max_tokens": 100, "messages": [{"role": "user", "content": prompt}]})
    assert claude.message_requests()[-1].body["max_tokens"] == 100


async def test_a_truncated_request_leaves_room_for_an_anthropic_answer(
        fake_openai: Any, fake_anthropic: Any, start_daemon: Any) -> None:
    """context_policy = truncate with no max_tokens: the truncation kept room for an answer
    (up to 4096 tokens, here the model's 4,000) and that is the max_tokens sent; filling the
    window with history left none."""
    claude = await fake_anthropic()
    big = await fake_openai(reply="big")
    d = await start_daemon(_claude_config(claude, big, 'context_policy = "truncate"'))
    turn = "Failover keeps a program working when its preferred model is down. " * 60
    messages: list[dict[str, Any]] = []
    for i in range(12):  # ~9,600 tokens of history over an 8,000 window
        messages += [{"role": "user", "content": f"{i} {turn}"},
                     {"role": "assistant", "content": "ok"}]
    messages.append({"role": "user", "content": "and now?"})
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "c/claude", "messages": messages, "stream": False},
        headers={"x-failoverd-no-fallback": "1"})
    assert resp.status_code == 200, resp.text
    sent = claude.message_requests()[-1].body
    assert len(sent["messages"]) < len(messages)
    assert sent["max_tokens"] == 4000
    kept = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
             else "".join(b["text"] for b in m["content"])} for m in sent["messages"]]
    select = (await d.http.post("/v1/select", json={"messages": kept})).json()
    assert select["requirements"]["prompt_tokens"] + 4000 <= 8000
