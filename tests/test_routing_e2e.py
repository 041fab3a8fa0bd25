"""Smart routing end to end: capabilities, context policy, auto tiers, sticky sessions."""

from __future__ import annotations

import pytest

from failoverd.clock import ManualClock
from tests.fakes.openai import FakeOpenAI
from tests.helpers import providers


def three_tier(small: FakeOpenAI, medium: FakeOpenAI, large: FakeOpenAI,
               routing: str = "") -> str:
    return f"""
{providers(s=small.url, m=medium.url, l=large.url)}
[models."s/small"]
provider = "s"
tier = "small"
context_window = 4000
capabilities = ["tools"]
cost = {{ input = 0.1, output = 0.4 }}
[models."m/medium"]
provider = "m"
tier = "medium"
context_window = 32000
capabilities = ["tools", "vision"]
cost = {{ input = 1.0, output = 4.0 }}
[models."l/large"]
provider = "l"
tier = "large"
context_window = 200000
capabilities = ["tools", "vision", "reasoning", "json"]
cost = {{ input = 3.0, output = 15.0 }}
[routing]
primary = "s/small"
fallbacks = ["m/medium", "l/large"]
when_all_unavailable = "fail"
sticky_seconds = 300
{routing}
"""


@pytest.fixture
async def tiers(fake_openai, start_daemon):
    small = await fake_openai(reply="small")
    medium = await fake_openai(reply="medium")
    large = await fake_openai(reply="large")
    clock = ManualClock()
    d = await start_daemon(three_tier(small, medium, large), clock=clock)
    return small, medium, large, d, clock


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


async def test_vision_request_skips_models_without_vision(tiers) -> None:
    small, medium, large, d, _ = tiers
    resp = await d.http.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": [{"type": "text", "text": "what is this?"}, IMAGE]}]})
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == "m/medium"
    assert small.requests == []  # never called: it cannot see


async def test_reasoning_request_goes_to_reasoning_model(tiers) -> None:
    small, medium, large, d, _ = tiers
    resp = await d.http.post("/v1/chat/completions", json={
        "reasoning_effort": "high", "messages": [{"role": "user", "content": "think"}]})
    assert resp.headers["x-failoverd-model"] == "l/large"
    assert small.requests == [] and medium.requests == []


async def test_no_capable_model_is_503_with_reasons(tiers) -> None:
    small, medium, large, d, _ = tiers
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "s/small", "messages": [{"role": "user", "content": [IMAGE]}],
        "response_format": {"type": "json_object"}},
        headers={"x-failoverd-no-fallback": "1"})
    assert resp.status_code == 503
    attempts = resp.json()["error"]["attempts"]
    assert attempts == [{"model": "s/small", "reason": "incapable", "status": None,
                         "message": "lacks capability: json, vision",
                         "upstream_request_id": None}]


def long_conversation(turns: int, words: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "be brief"}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i} " + "lorem " * words})
        messages.append({"role": "assistant", "content": f"answer {i}"})
    messages.append({"role": "user", "content": "final question"})
    return messages


async def test_context_skip_goes_to_larger_window(tiers) -> None:
    small, medium, large, d, _ = tiers
    resp = await d.http.post("/v1/chat/completions",
                             json={"messages": long_conversation(10, 600)})  # ~8k tokens
    assert resp.headers["x-failoverd-model"] == "m/medium"
    assert small.requests == []


@pytest.mark.parametrize("policy", ["truncate", "fail"])
async def test_context_truncate_and_fail(fake_openai, start_daemon, policy: str) -> None:
    small = await fake_openai(reply="small")
    medium = await fake_openai(reply="medium")
    large = await fake_openai(reply="large")
    d = await start_daemon(three_tier(small, medium, large,
                                      routing=f'context_policy = "{policy}"'))
    messages = long_conversation(10, 600)
    resp = await d.http.post("/v1/chat/completions", json={"messages": messages})
    if policy == "fail":
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert "context_policy = fail" in error["message"]
        assert error["type"] == "context_overflow"
        assert error["code"] == "context_length_exceeded"  # no failover was aborted
        assert d.sup.service.metrics.requests[("s/small", "context_overflow")] == 1
        assert small.requests == medium.requests == large.requests == []
        return
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == "s/small"
    sent = small.chat_requests()[0].body["messages"]
    assert sent[0] == messages[0]  # the system prompt stays
    assert sent[-1] == messages[-1]  # so does the last user turn
    assert len(sent) < len(messages)
    assert "dropped" in resp.headers["x-failoverd-notice"]
    assert resp.json()["failoverd"]["notices"]


@pytest.mark.parametrize(("prompt", "tier_model"), [
    ("What is the capital of France?", "s/small"),
    ("Review this code and fix the bug:\n```python\ndef add(a, b):\n    return a - b\n```",
     "m/medium"),
    ("Prove that there are infinitely many primes, then derive the asymptotic density and "
     "analyze the trade-offs of three proof strategies step by step.", "l/large"),
])
async def test_auto_routes_by_complexity(tiers, prompt: str, tier_model: str) -> None:
    small, medium, large, d, _ = tiers
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "auto", "messages": [{"role": "user", "content": prompt}]})
    assert resp.status_code == 200
    assert resp.headers["x-failoverd-model"] == tier_model
    route = resp.headers["x-failoverd-route"]
    assert route.startswith(f"tier={tier_model.split('/')[1]}")
    assert prompt[:10] not in route  # reasons only, never prompt text
    # /v1/select returns the same decision without any upstream call
    calls = len(small.requests) + len(medium.requests) + len(large.requests)
    sel = (await d.http.post("/v1/select", json={
        "model": "auto", "messages": [{"role": "user", "content": prompt}]})).json()
    assert sel["route"] == route
    assert [c["model"] for c in sel["candidates"] if c["eligible"]][0] == tier_model
    assert len(small.requests) + len(medium.requests) + len(large.requests) == calls


async def test_auto_escalates_when_tier_fails(tiers) -> None:
    small, medium, large, d, _ = tiers
    small.default = "overloaded"
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "auto", "messages": [{"role": "user", "content": "hi, what time zone is Paris?"}]})
    assert resp.headers["x-failoverd-model"] == "m/medium"
    assert resp.headers["x-failoverd-failover"] == "s/small>m/medium:overloaded"


async def test_session_sticks_to_fallback_then_returns(tiers) -> None:
    small, medium, large, d, clock = tiers
    hello = {"messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-failoverd-session": "chat-42"}
    small.push("overloaded", "overloaded")  # one request's worth (max_retries = 1)
    r1 = await d.http.post("/v1/chat/completions", json=hello, headers=headers)
    assert r1.headers["x-failoverd-model"] == "m/medium"
    # the primary is fine again, but the session stays on its fallback: no flapping
    r2 = await d.http.post("/v1/chat/completions", json=hello, headers=headers)
    assert r2.headers["x-failoverd-model"] == "m/medium"
    assert len(small.chat_requests()) == 2
    session = (await d.http.get("/v1/sessions/chat-42")).json()
    assert session["sticky"]["model"] == "m/medium"
    # another session is not affected
    r3 = await d.http.post("/v1/chat/completions", json=hello,
                           headers={"x-failoverd-session": "other"})
    assert r3.headers["x-failoverd-model"] == "s/small"
    clock.advance(301)
    r4 = await d.http.post("/v1/chat/completions", json=hello, headers=headers)
    assert r4.headers["x-failoverd-model"] == "s/small"


async def test_session_preference_via_api_and_openai_user_field(tiers) -> None:
    small, medium, large, d, _ = tiers
    r = await d.http.post("/v1/sessions/alice", json={"model": "l/large"})
    assert r.status_code == 200
    resp = await d.openai.chat.completions.with_raw_response.create(
        model="default", user="alice", messages=[{"role": "user", "content": "hi"}])
    assert resp.headers["x-failoverd-model"] == "l/large"
    bad = await d.http.post("/v1/sessions/alice", json={"model": "nope"})
    assert bad.status_code == 400 and "nope" in bad.json()["error"]["message"]
    assert (await d.http.delete("/v1/sessions/alice")).status_code == 200
    assert (await d.http.get("/v1/sessions/alice")).status_code == 404


async def test_sticky_fallback_only_redirects_requests_from_the_same_head(tiers) -> None:
    small, medium, large, d, clock = tiers
    headers = {"x-failoverd-session": "s1"}
    small.push("overloaded", "overloaded")
    r1 = await d.http.post("/v1/chat/completions", headers=headers,
                           json={"messages": [{"role": "user", "content": "hi"}]})
    assert r1.headers["x-failoverd-model"] == "m/medium"
    # the same session asking for another model is not redirected to its sticky fallback
    r2 = await d.http.post("/v1/chat/completions", headers=headers, json={
        "model": "l/large", "messages": [{"role": "user", "content": "hi"}]})
    assert r2.headers["x-failoverd-model"] == "l/large"


async def test_pin_applies_to_auto_and_to_a_rotated_chain(tiers) -> None:
    small, medium, large, d, clock = tiers
    small.default = "overloaded"
    pin = {"x-failoverd-no-fallback": "1"}
    resp = await d.http.post("/v1/chat/completions", headers=pin, json={
        "model": "auto", "messages": [{"role": "user", "content": "What is 2+2?"}]})
    assert resp.status_code == 503
    assert [a["model"] for a in resp.json()["error"]["attempts"]] == ["s/small"]
    assert medium.requests == [] and large.requests == []
    await d.http.post("/v1/chains/default/next")  # the operator moves off the primary
    resp = await d.http.post("/v1/chat/completions", headers=pin,
                             json={"messages": [{"role": "user", "content": "hi"}]})
    assert resp.headers["x-failoverd-model"] == "m/medium"
