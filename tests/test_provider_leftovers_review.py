"""Review leftovers: vendors' failures as they really send them, through the daemon.

Sources: GLM's business codes (docs.bigmodel.cn/cn/api/api-code; 1113 with a 429 in dify#5850
and CowAgent#2910; 1301's body on the safety audit page; 1305 inside a 200 in
llm-simple-router#95), Kimi's 429 engine_overloaded_error (MoonshotAI-Cookbook#16), Groq's 413
"Request too large ... tokens per minute (TPM)" (gpt-researcher#985, code
rate_limit_exceeded), Anthropic's 413 request_too_large (its errors page: a 32 MB byte limit
Cloudflare enforces), Ollama's done_reason "load" (oh-my-pi#7465) and thinking-only answers
(ollama#16184).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO, pair_config, providers, status


@pytest.fixture
async def pair(fake_openai: Any, start_daemon: Any) -> tuple[FakeOpenAI, FakeOpenAI, Any]:
    """a/gpt-a (128,000 tokens) failing over to b/gpt-b (8,000 tokens): a smaller window."""
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(pair_config(a, b, a_window=128000, b_window=8000))
    return a, b, d


async def _ask(d: Any, stream: bool) -> tuple[str, dict[str, str]]:
    """(answer text, headers) of one OpenAI-SDK request to the default chain."""
    if not stream:
        raw = await d.openai.chat.completions.with_raw_response.create(
            model="default", messages=HELLO)
        return raw.parse().choices[0].message.content or "", dict(raw.headers)
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    return text, dict(raw.headers)


# ------------------------------------------------------------------ OpenAI-compatible vendors


@pytest.mark.parametrize(("behaviour", "reason", "a_calls", "counted"), [
    # GLM: an empty account was rate_limit (its Chinese text names no balance): the breaker
    # opened one model at a time instead of every model of the provider
    ("glm_balance", "billing", 1, False),
    # GLM: "Prompt 超长" and the unsafe-content refusal were bad_request: no failover at all
    ("glm_unsafe", "content_filter", 1, False),
    # GLM's busy model was rate_limit (no retry); inside a 200 it was server_error
    ("glm_busy", "overloaded", 2, True),
    ("glm_busy_200", "overloaded", 2, True),
    # Kimi's overloaded engine was rate_limit: no same-model retry with backoff
    ("kimi_overloaded", "overloaded", 2, True),
    # Groq's over-the-TPM request was context_overflow: no failover to the smaller window b,
    # though b has no such quota; it is no fault of the model either
    ("groq_tpm", "incapable", 1, False),
])
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_vendor_failures_get_their_reason(pair: Any, behaviour: str, reason: str,
                                                a_calls: int, counted: bool,
                                                stream: bool) -> None:
    a, b, d = pair
    a.default = behaviour
    text, headers = await _ask(d, stream)
    assert text == "from b"
    assert headers["x-failoverd-failover"] == f"a/gpt-a>b/gpt-b:{reason}"
    assert len(a.chat_requests()) == a_calls
    model = (await status(d))["models"]["a/gpt-a"]
    assert (model["consecutive_failures"] > 0) is counted


async def test_glm_prompt_too_long_fails_over_to_a_larger_window(
        fake_openai: Any, start_daemon: Any) -> None:
    """GLM's 1261 "Prompt 超长" was bad_request: the client got the 400."""
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    d = await start_daemon(pair_config(a, b, a_window=8000, b_window=128000))
    a.default = "glm_context"
    text, headers = await _ask(d, stream=False)
    assert text == "from b"
    assert headers["x-failoverd-failover"] == "a/gpt-a>b/gpt-b:context_overflow"


# ------------------------------------------------------------------ Ollama: empty answers


@pytest.fixture
async def ollamas(fake_ollama: Any, start_daemon: Any) -> tuple[Any, Any, Any]:
    """o/qwen2.5:7b failing over to big/llama3.2:latest."""
    small = await fake_ollama(reply="from the small one")
    big = await fake_ollama(reply="from the big one")
    d = await start_daemon(f"""
{providers(o=("ollama", small.url), big=("ollama", big.url))}
[models."o/qwen2.5:7b"]
provider = "o"
[models."big/llama3.2:latest"]
provider = "big"
[routing]
primary = "o/qwen2.5:7b"
fallbacks = ["big/llama3.2:latest"]
when_all_unavailable = "fail"
[probes]
kind = "none"
""")
    return small, big, d


@pytest.mark.parametrize("behaviour", ["load", "thinking_only"])
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_ollama_without_an_answer_fails_over(ollamas: Any, behaviour: str,
                                                   stream: bool) -> None:
    """done_reason "load" (the model was only loaded) and an answer all in message.thinking
    were successful empty answers: the client got "" while another model could answer, as
    Gemini's and Anthropic's empty answers already fail over."""
    small, big, d = ollamas
    small.default = behaviour
    text, headers = await _ask(d, stream)
    assert text == "from the big one"
    assert headers["x-failoverd-failover"] == \
        "o/qwen2.5:7b>big/llama3.2:latest:invalid_response"


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_ollama_empty_answers_that_are_answers_stay(ollamas: Any, stream: bool) -> None:
    """A cut answer (done_reason length) and a tool call without text are answers."""
    small, big, d = ollamas
    small.default = "length"
    text, headers = await _ask(d, stream)
    assert text == "from the small one" and "x-failoverd-failover" not in headers
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    messages = [{"role": "user", "content": "weather?"}]
    if stream:
        chunks = [c async for c in await d.openai.chat.completions.create(
            model="default", messages=messages, tools=tools, stream=True)]
        calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
    else:
        answer = await d.openai.chat.completions.create(model="default", messages=messages,
                                                        tools=tools)
        calls = list(answer.choices[0].message.tool_calls or ())
    assert calls and calls[0].function.name == "weather"
    assert big.requests == []


# ------------------------------------------------------------------ Anthropic: 32 MB


async def test_anthropic_request_too_large_fails_over_to_any_window(
        fake_anthropic: Any, fake_openai: Any, start_daemon: Any) -> None:
    """Anthropic's 413 request_too_large is its 32 MB byte limit, not the context window: it was
    context_overflow, so a model with a smaller window (which may take 32 MB of images, or the
    request's few tokens) was skipped and the client got a 503."""
    ant = await fake_anthropic()
    oai = await fake_openai(reply="from openai")
    d = await start_daemon(f"""
{providers(ant=("anthropic", ant.url), oai=oai.url)}
[models."ant/claude"]
provider = "ant"
name = "claude-sonnet-4-5"
context_window = 200000
[models."oai/gpt"]
provider = "oai"
name = "gpt-test"
context_window = 128000
[routing]
primary = "ant/claude"
fallbacks = ["oai/gpt"]
when_all_unavailable = "fail"
[probes]
kind = "none"
""")
    ant.default = "request_too_large"
    for stream in (False, True):
        text, headers = await _ask(d, stream)
        assert text == "from openai"
        assert headers["x-failoverd-failover"] == "ant/claude>oai/gpt:incapable"
    assert (await status(d))["models"]["ant/claude"]["consecutive_failures"] == 0
