"""Gemini and Ollama as the real APIs answer, through the daemon: the failure reasons of the
error bodies they really send, and the requests failoverd sends them.

Sources for the wire formats: Google's announcement "Depleted prepay credits now return HTTP
402 instead of 429" (402 RESOURCE_EXHAUSTED "Your prepayment credits are depleted", a 429
with the same text before), the AI Studio monthly spending cap 429; Ollama's
`server/routes.go` (`truncate` on /api/chat, default true) and the errors its servers send
for a prompt longer than `num_ctx`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes.gemini import FakeGemini
from tests.fakes.ollama import FakeOllama
from tests.helpers import providers

GEMINI = "g/gemini-2.5-flash"
SMALL = "o/qwen2.5:7b"
BIG = "big/llama3.2:latest"


@pytest.fixture
async def rig(fake_gemini: Any, fake_ollama: Any, start_daemon: Any
              ) -> AsyncIterator[tuple[FakeGemini, FakeOllama, FakeOllama, Any]]:
    gemini: FakeGemini = await fake_gemini()
    small: FakeOllama = await fake_ollama(reply="from the small one")
    big: FakeOllama = await fake_ollama(reply="from the big one")
    d = await start_daemon(f"""
{providers(g=("gemini", gemini.url), o=("ollama", small.url), big=("ollama", big.url))}
[models."{GEMINI}"]
provider = "g"
context_window = 1048576
[models."{SMALL}"]
provider = "o"
context_window = 4096
[models."{BIG}"]
provider = "big"
context_window = 131072
[chains.gemini]
models = ["{GEMINI}", "{BIG}"]
[chains.ollama]
models = ["{SMALL}", "{BIG}"]
[routing]
primary = "{GEMINI}"
when_all_unavailable = "fail"
""")
    yield gemini, small, big, d


async def ask(d: Any, chain: str, content: str = "hi", *, stream: bool = False
              ) -> tuple[dict[str, str], str]:
    """(headers, answer text) of one OpenAI-front request to `chain`."""
    messages = [{"role": "user", "content": content}]
    if not stream:
        raw = await d.openai.chat.completions.with_raw_response.create(
            model=chain, messages=messages)
        return dict(raw.headers), raw.parse().choices[0].message.content or ""
    raw = await d.openai.chat.completions.with_raw_response.create(
        model=chain, messages=messages, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    return dict(raw.headers), text


# ------------------------------------------------------------------ Gemini: money, not rate


@pytest.mark.parametrize("behaviour", ["prepay_depleted", "prepay_depleted_429", "spend_cap"])
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_gemini_out_of_money_is_billing(rig: Any, behaviour: str, stream: bool) -> None:
    # a 402 RESOURCE_EXHAUSTED (or the older 429 with the same words, or the monthly spending
    # cap) was a rate_limit: the breaker opened for the RetryInfo's seconds and every request
    # went to Gemini first again, instead of opening the provider for billing_open_seconds
    gemini, _small, big, d = rig
    gemini.default = behaviour
    headers, text = await ask(d, "gemini", stream=stream)
    assert headers["x-failoverd-failover"] == f"{GEMINI}>{BIG}:billing"
    assert text == big.reply
    status = (await d.http.get("/v1/status")).json()
    assert status["providers"]["g"]["credentials"] == "billing"


async def test_gemini_free_tier_quota_naming_billing_stays_a_rate_limit(rig: Any) -> None:
    gemini, _small, big, d = rig
    gemini.default = "rate_limit"  # "... please check your plan and billing details ..."
    headers, _text = await ask(d, "gemini")
    assert headers["x-failoverd-failover"] == f"{GEMINI}>{BIG}:rate_limit"


# ------------------------------------------------------------------ Ollama: too long a prompt


@pytest.mark.parametrize("behaviour", ["context_size", "context_500"])
@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_ollama_context_errors_fail_over_to_a_larger_window(
        rig: Any, behaviour: str, stream: bool) -> None:
    # llama.cpp's 400 "exceeds the available context size" was a bad_request (the client got
    # a 400 though a larger model was next), an older server's 500 "the input length exceeds
    # the context length" a server_error (retried on the same model, held against its breaker)
    _gemini, small, big, d = rig
    small.default = behaviour
    headers, text = await ask(d, "ollama", stream=stream)
    assert headers["x-failoverd-failover"] == f"{SMALL}>{BIG}:context_overflow"
    assert text == big.reply
    assert len(small.chat_requests()) == 1  # not retried on the same model
    status = (await d.http.get("/v1/status")).json()
    assert status["models"][SMALL]["consecutive_failures"] == 0


async def test_ollama_is_told_not_to_truncate_a_prompt_longer_than_the_window(rig: Any) -> None:
    # num_ctx alone does not stop Ollama from dropping the start of a longer prompt and
    # answering 200; failoverd's estimate (~2,250 tokens) fits the 4,096 window, Ollama's
    # tokenizer (4,500) does not: the small model must refuse, not answer from half a prompt
    _gemini, small, big, d = rig
    headers, text = await ask(d, "ollama", "x" * 9000)
    sent = small.chat_requests()[0].body
    assert sent["options"]["num_ctx"] == 4096 and sent["truncate"] is False
    assert headers["x-failoverd-failover"] == f"{SMALL}>{BIG}:context_overflow"
    assert text == big.reply
    # a short prompt is answered by the small one, still with truncate off
    headers, text = await ask(d, "ollama", "hi")
    assert headers["x-failoverd-model"] == SMALL and text == small.reply
    assert small.chat_requests()[-1].body["truncate"] is False


async def test_ollama_without_a_window_gets_no_truncate_flag(fake_ollama: Any,
                                                            start_daemon: Any) -> None:
    ol: FakeOllama = await fake_ollama()
    d = await start_daemon(f"""
[providers.o]
kind = "ollama"
base_url = "{ol.url}"
[models."o/qwen2.5:7b"]
provider = "o"
[routing]
primary = "o/qwen2.5:7b"
""")
    await ask(d, "o/qwen2.5:7b")
    assert "truncate" not in ol.chat_requests()[0].body
    assert "options" not in ol.chat_requests()[0].body
