"""Smart routing and context review: auto tiers, capabilities, context policy, hooks, sessions
and /v1/select end to end, against real fake upstreams and real clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest

from failoverd.clock import ManualClock
from failoverd.sessions import SessionStore
from tests.helpers import one_model_config
from tests.test_hooks_e2e import config as hook_config
from tests.test_hooks_e2e import hooks_toml, long_conversation, printing_hook
from tests.test_routing_e2e import three_tier
from tests.test_routing_e2e import tiers as tiers  # the fixture

SMALL, MEDIUM, LARGE = "s/small", "m/medium", "l/large"
# content_filter fails over at once, is never retried and never counted by a breaker: a model
# can fail it again and again without its breaker hiding the routing under test
FILTERED = "content_filter"


async def reload(d: Any, text: str) -> None:
    """Rewrites the daemon's config file and reloads it through POST /v1/reload."""
    Path(d.sup.config_path).write_text(text)
    resp = await d.http.post("/v1/reload")
    assert resp.status_code == 200, resp.text


def ask(text: str = "hi") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


# ------------------------------------------------------------------ sessions


async def test_a_second_failover_keeps_the_session_off_its_failing_primary(tiers: Any) -> None:
    """Primary fails -> medium; medium fails too -> large. The session must stay on large
    for its next requests, not go back to the primary that is still failing."""
    small, medium, large, d, clock = tiers
    small.default = FILTERED
    headers = {"x-failoverd-session": "agent-7"}
    r1 = await d.http.post("/v1/chat/completions", json=ask(), headers=headers)
    assert r1.headers["x-failoverd-model"] == MEDIUM
    medium.push(FILTERED)
    r2 = await d.http.post("/v1/chat/completions", json=ask(), headers=headers)
    assert r2.headers["x-failoverd-model"] == LARGE
    calls = len(small.chat_requests())
    r3 = await d.http.post("/v1/chat/completions", json=ask(), headers=headers)
    assert r3.headers["x-failoverd-model"] == LARGE
    assert r3.headers["x-failoverd-attempts"] == "1"
    assert len(small.chat_requests()) == calls  # the failing primary was not asked again
    session = (await d.http.get("/v1/sessions/agent-7")).json()
    assert session["sticky"]["from_model"] == SMALL
    assert session["sticky"]["model"] == LARGE
    # the window still ends, and the session goes home
    small.default = "ok"
    clock.advance(301)
    r4 = await d.http.post("/v1/chat/completions", json=ask(), headers=headers)
    assert r4.headers["x-failoverd-model"] == SMALL


def test_a_failover_without_stickiness_still_counts_as_use_of_a_pinned_session() -> None:
    """sticky_seconds = 0: a pinned session whose request failed over was used all the same;
    its day-long expiry runs from that use."""
    clock = ManualClock()
    store = SessionStore(clock, ttl=100.0, sticky_seconds=0)
    store.set_preference("s", MEDIUM)
    clock.advance(90)
    store.note_served("s", MEDIUM, LARGE)
    clock.advance(90)
    session = store.get("s")
    assert session is not None and session.preference == MEDIUM and session.sticky is None


# ------------------------------------------------------------------ auto routing


async def test_auto_falling_back_to_the_default_chain_lists_each_model_once(tiers: Any) -> None:
    """No tiered model can serve (json: only l/large has it, and it is forced open): auto
    falls back to the default chain, whose walk records every model. The 503's attempts must
    name each model once, with the walk's reason, as /v1/select does."""
    small, medium, large, d, _ = tiers
    assert (await d.http.post(f"/v1/models/{LARGE}/open")).status_code == 200
    body = {"model": "auto", "response_format": {"type": "json_object"}, **ask("What is 2+2?")}
    resp = await d.http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 503
    attempts = resp.json()["error"]["attempts"]
    assert [(a["model"], a["reason"]) for a in attempts] == [
        (SMALL, "incapable"), (MEDIUM, "incapable"), (LARGE, "unavailable")]
    assert small.requests == medium.requests == large.requests == []
    sel = (await d.http.post("/v1/select", json=body)).json()
    assert [c["model"] for c in sel["candidates"]] == [SMALL, MEDIUM, LARGE]
    assert not any(c["eligible"] for c in sel["candidates"])


@pytest.mark.parametrize(("extra", "route"), [
    ({"reasoning_effort": "high"}, "tier=medium;score=0.30;reasons=effort_high"),
    ({"reasoning": {"effort": "high"}}, "tier=medium;score=0.30;reasons=effort_high"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
     "tier=small;score=0.10;reasons=tools"),
    ({"functions": [{"name": "f", "parameters": {}}]}, "tier=small;score=0.10;reasons=tools"),
], ids=["reasoning_effort", "reasoning.effort", "tools", "legacy functions"])
async def test_auto_scores_every_spelling_of_effort_and_tools(tiers: Any, extra: dict[str, Any],
                                                              route: str) -> None:
    """The classifier weighs what requirements.infer reads: OpenRouter's reasoning.effort
    and the legacy functions count as reasoning_effort and tools do."""
    small, medium, large, d, _ = tiers
    body = {"model": "auto", **ask("hi"), **extra}
    resp = await d.http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-route"] == route
    sel = (await d.http.post("/v1/select", json=body)).json()
    assert sel["route"] == route


PNG = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


@pytest.mark.parametrize("content", [
    [{"type": "image", "source": PNG}, {"type": "text", "text": "what is this?"}],
    [{"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
     {"type": "text", "text": "what is this?"}],
    [{"type": "tool_result", "tool_use_id": "t1",
      "content": [{"type": "image", "source": PNG}]}],
], ids=["base64", "url", "in a tool_result"])
async def test_anthropic_images_need_vision_under_auto(tiers: Any, content: Any) -> None:
    """Every Anthropic image shape makes a vision request: auto skips s/small for it."""
    small, medium, large, d, _ = tiers
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if content[0]["type"] == "tool_result":
        messages[:0] = [{"role": "user", "content": "show me"}, {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "camera", "input": {}}]}]
    resp = await d.http.post("/v1/messages", json={
        "model": "auto", "max_tokens": 50, "messages": messages,
        "tools": [{"name": "camera", "input_schema": {"type": "object"}}]})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-failoverd-model"] == MEDIUM
    assert resp.json()["type"] == "message"
    assert small.requests == []


# ------------------------------------------------------------------ context policy


def turns(n: int, words: int) -> list[dict[str, Any]]:
    """A system prompt, `n` long question/answer turns and a short last question."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "be brief"}]
    for i in range(n):
        messages += [{"role": "user", "content": f"question {i} " + "lorem " * words},
                     {"role": "assistant", "content": f"answer {i}"}]
    return [*messages, {"role": "user", "content": "and now?"}]


async def test_truncate_reserves_only_what_the_model_can_write(fake_openai: Any,
                                                               start_daemon: Any) -> None:
    up = await fake_openai(reply="ok")
    d = await start_daemon(one_model_config(
        up.url, model="context_window = 8000\nmax_output_tokens = 1000",
        tail='[routing]\ncontext_policy = "truncate"\nwhen_all_unavailable = "fail"'))
    # about 9,100 estimated tokens, 2,700 of them in the oldest turn: without it, 6,400 fit
    # the window with the 1,000 tokens the model can write (not with the 16,000 asked for)
    messages = turns(8, 800)
    messages[1]["content"] += " lorem" * 1600
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "a/m", "max_tokens": 16000, "messages": messages})
    assert resp.status_code == 200, resp.text
    sent = up.chat_requests()[0].body["messages"]
    assert sent[0] == messages[0] and sent[-1] == messages[-1]
    assert sent[1:] == messages[3:]  # just the oldest turn went: the rest fits with 1,000


@pytest.mark.parametrize("chosen_by", ["hook", "routing"])
async def test_context_fail_at_a_fallback_reports_no_hop(fake_openai: Any, start_daemon: Any,
                                                         tmp_path: Path, chosen_by: str) -> None:
    a, b, c = [await fake_openai(reply=n) for n in "abc"]
    a.default = "rate_limit_long"
    if chosen_by == "hook":
        text = hook_config(a, b, c, b_window=1000,
                           hooks=hooks_toml(printing_hook(tmp_path, {"context": "fail"})))
    else:
        text = hook_config(a, b, c, b_window=1000, routing='context_policy = "fail"')
    d = await start_daemon(text)
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "default", "messages": long_conversation()})
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "context_overflow"
    assert resp.json()["error"]["code"] == "context_length_exceeded"
    assert b.chat_requests() == [] and c.chat_requests() == []
    assert resp.headers["x-failoverd-attempts"] == "1"
    assert "x-failoverd-failover" not in resp.headers


# ------------------------------------------------------------------ select and sessions


@pytest.mark.parametrize("how", ["user", "header"])
async def test_select_orders_like_the_request_for_the_same_body(tiers: Any, how: str) -> None:
    small, medium, large, d, _ = tiers
    assert (await d.http.post("/v1/sessions/alice", json={"model": LARGE})).status_code == 200
    body = {"model": "default", **ask()}
    headers = {}
    if how == "user":
        body["user"] = "alice"
    else:
        headers["x-failoverd-session"] = "alice"
    real = await d.http.post("/v1/chat/completions", json=body, headers=headers)
    assert real.headers["x-failoverd-model"] == LARGE
    sel = (await d.http.post("/v1/select", json=body, headers=headers)).json()
    assert [c["model"] for c in sel["candidates"]] == [LARGE, SMALL, MEDIUM]


async def test_a_session_pinned_to_a_model_a_reload_removed_routes_by_its_request(
        fake_openai: Any, start_daemon: Any) -> None:
    small, medium, large = [await fake_openai(reply=n) for n in ("small", "medium", "large")]
    original = three_tier(small, medium, large)
    d = await start_daemon(original)
    assert (await d.http.post("/v1/sessions/alice", json={"model": MEDIUM})).status_code == 200
    headers = {"x-failoverd-session": "alice"}
    r = await d.http.post("/v1/chat/completions", json=ask(), headers=headers)
    assert r.headers["x-failoverd-model"] == MEDIUM
    removed = original.replace('[models."m/medium"]\nprovider = "m"\ntier = "medium"\n',
                               '[models."x/gone"]\nprovider = "m"\n')
    removed = removed.replace('fallbacks = ["m/medium", "l/large"]', 'fallbacks = ["l/large"]')
    await reload(d, removed)
    r = await d.http.post("/v1/chat/completions", json=ask(), headers=headers)
    assert r.status_code == 200 and r.headers["x-failoverd-model"] == SMALL
    # a sticky failover survives a reload that keeps its models
    small.push(FILTERED)
    r = await d.http.post("/v1/chat/completions", json=ask(), headers={"x-failoverd-session": "b"})
    assert r.headers["x-failoverd-model"] == LARGE
    await reload(d, removed + "\n# nothing changed\n")
    r = await d.http.post("/v1/chat/completions", json=ask(), headers={"x-failoverd-session": "b"})
    assert r.headers["x-failoverd-model"] == LARGE and r.headers["x-failoverd-attempts"] == "1"


async def test_a_reload_drops_session_references_to_removed_models(
        fake_openai: Any, start_daemon: Any) -> None:
    small, medium, large = [await fake_openai(reply=n) for n in ("small", "medium", "large")]
    original = three_tier(small, medium, large)
    d = await start_daemon(original)
    assert (await d.http.post("/v1/sessions/alice", json={"model": LARGE})).status_code == 200
    small.push(FILTERED)
    r = await d.http.post("/v1/chat/completions", json=ask(), headers={"x-failoverd-session": "b"})
    assert r.headers["x-failoverd-model"] == MEDIUM
    gone = original.replace('[models."l/large"]', '[models."x/other"]')
    gone = gone.replace('fallbacks = ["m/medium", "l/large"]', 'fallbacks = ["m/medium"]')
    gone = gone.replace('[models."m/medium"]', '[models."y/other"]').replace(
        'fallbacks = ["m/medium"]', "fallbacks = []")
    await reload(d, gone)
    alice = (await d.http.get("/v1/sessions/alice")).json()
    assert alice["preference"] is None and alice["preferred"] is None
    bob = (await d.http.get("/v1/sessions/b")).json()
    assert bob["sticky"] is None and bob["preferred"] is None


def tool_use_turn(i: int, words: int) -> list[dict[str, Any]]:
    """One Anthropic turn: a long question, a tool call, its result with a remark, an answer."""
    return [
        {"role": "user", "content": f"question {i} " + "lorem " * words},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": f"toolu_{i}", "name": "lookup", "input": {"q": i}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_{i}", "content": f"result {i}"},
            {"type": "text", "text": "go on"}]},
        {"role": "assistant", "content": f"answer {i}"},
    ]


async def test_truncation_sends_an_anthropic_upstream_a_valid_conversation(
        fake_anthropic: Any, start_daemon: Any) -> None:
    """Anthropic SDK in, Anthropic upstream out, window too small: the oldest turns go whole
    (tool_use with its tool_result), the system prompt and the last turn (an agent loop's
    pending tool call and result) stay, and the conversation still starts with the user."""
    ant = await fake_anthropic(reply="fine")
    d = await start_daemon(f"""
[providers.ant]
kind = "anthropic"
base_url = "{ant.url}"
[models."ant/claude"]
provider = "ant"
context_window = 3000
capabilities = ["tools"]
[routing]
primary = "ant/claude"
context_policy = "truncate"
when_all_unavailable = "fail"
""")
    messages = [m for i in range(4) for m in tool_use_turn(i, 600)]  # ~4,000 tokens
    messages += [
        {"role": "user", "content": "final task"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_last", "name": "lookup", "input": {"q": "x"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_last", "content": "last result"}]},
    ]
    client = anthropic.AsyncAnthropic(
        api_key="unused", base_url="http://failoverd", max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.AsyncHTTPTransport(uds=d.socket)))
    tools: Any = [{"name": "lookup", "description": "look up",
                   "input_schema": {"type": "object", "properties": {"q": {}}}}]
    try:
        raw = await client.messages.with_raw_response.create(
            model="default", max_tokens=200, system="be brief", tools=tools,
            messages=messages)
    finally:
        await client.close()
    assert raw.headers["x-failoverd-model"] == "ant/claude"
    assert "dropped" in raw.headers["x-failoverd-notice"]
    sent = ant.message_requests()[0].body
    assert sent["system"] == [{"type": "text", "text": "be brief"}]
    kept = sent["messages"]
    assert kept[0]["role"] == "user" and len(kept) < len(messages)
    assert kept[-3:] == [  # the last user turn, whole
        {"role": "user", "content": [{"type": "text", "text": "final task"}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_last", "name": "lookup", "input": {"q": "x"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_last",
                                      "content": [{"type": "text", "text": "last result"}]}]}]
    # every tool_result answers a tool_use of the assistant message just before it
    for prev, message in zip(kept, kept[1:], strict=False):
        results = [b["tool_use_id"] for b in message["content"]
                   if isinstance(message["content"], list) and b["type"] == "tool_result"]
        if results:
            calls = [b["id"] for b in prev["content"] if b["type"] == "tool_use"]
            assert prev["role"] == "assistant" and results == calls
    text = orjson.dumps(kept).decode()
    assert "question 0" not in text and "question 3" in text  # oldest first, newest kept


async def test_an_expired_session_is_gone_for_delete_as_for_get(tiers: Any) -> None:
    """A session unused for a day is forgotten: DELETE says 404 as GET does, even before
    anything swept it out of memory."""
    small, medium, large, d, clock = tiers
    assert (await d.http.post("/v1/sessions/old", json={"model": LARGE})).status_code == 200
    clock.advance(86_400)
    resp = await d.http.delete("/v1/sessions/old")
    assert resp.status_code == 404, resp.text
    assert resp.json()["error"]["code"] == "session_not_found"
    assert (await d.http.get("/v1/sessions/old")).status_code == 404
    assert (await d.http.post("/v1/sessions/old", json={"model": LARGE})).status_code == 200
    clock.advance(86_399)  # one second short of a day: still there
    assert (await d.http.delete("/v1/sessions/old")).status_code == 200


async def test_select_under_truncate_names_the_model_that_serves(fake_openai: Any,
                                                                 start_daemon: Any) -> None:
    small, medium, large = [await fake_openai(reply=n) for n in ("small", "medium", "large")]
    d = await start_daemon(three_tier(small, medium, large,
                                      routing='context_policy = "truncate"'))
    body = {"model": "default", "messages": turns(10, 600)}  # about 8,000 tokens
    real = await d.http.post("/v1/chat/completions", json=body)
    assert real.headers["x-failoverd-model"] == SMALL
    sel = (await d.http.post("/v1/select", json=body)).json()
    eligible = [c["model"] for c in sel["candidates"] if c["eligible"]]
    assert eligible[0] == SMALL


async def test_a_model_auto_skipped_but_a_session_put_first_is_listed_once(tiers: Any) -> None:
    """auto skips an open model; the session's pin puts it first all the same (and it is
    skipped again as unavailable): the 503's attempts name it once, not twice."""
    small, medium, large, d, _ = tiers
    assert (await d.http.post(f"/v1/models/{SMALL}/open", json={})).status_code == 200
    assert (await d.http.post("/v1/sessions/pinned", json={"model": SMALL})).status_code == 200
    medium.default = large.default = "server_error"
    resp = await d.http.post("/v1/chat/completions", json={"model": "auto", **ask()},
                             headers={"x-failoverd-session": "pinned"})
    assert resp.status_code == 503, resp.text
    attempts = [a["model"] for a in resp.json()["error"]["attempts"]]
    assert attempts.count(SMALL) == 1, attempts
    assert attempts[0] == SMALL and set(attempts) == {SMALL, MEDIUM, LARGE}


async def test_a_request_no_model_can_serve_tells_sdks_not_to_retry(tiers: Any) -> None:
    """Every candidate incapable (here: too long for every window): the 503 carries
    x-should-retry: false, which the OpenAI SDK obeys (one request, not three). An auto skip
    for an open breaker is `unavailable`, and then a retry may well succeed: no such header."""
    small, medium, large, d, _ = tiers
    metrics = d.sup.service.metrics
    client = d.openai.with_options(max_retries=2)
    big = "word " * 200_000  # beyond every window, l/large's 200,000 tokens included
    with pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(model=SMALL,
                                             messages=[{"role": "user", "content": big}])
    assert info.value.status_code == 503
    assert info.value.response.headers["x-should-retry"] == "false"
    error = info.value.body
    assert isinstance(error, dict)
    assert {a["reason"] for a in error["attempts"]} == {"incapable"}
    assert metrics.requests[("", "no_model_available")] == 1  # asked once, not retried
    assert small.requests == medium.requests == large.requests == []
    # an open breaker is no incapacity: no such header, and auto lists it as unavailable
    assert (await d.http.post(f"/v1/models/{LARGE}/open")).status_code == 200
    resp = await d.http.post("/v1/chat/completions", json={
        "model": "auto", "response_format": {"type": "json_object"}, **ask()})
    assert resp.status_code == 503 and "x-should-retry" not in resp.headers
    assert (LARGE, "unavailable") in [(a["model"], a["reason"])
                                      for a in resp.json()["error"]["attempts"]]
