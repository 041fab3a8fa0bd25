"""Smart routing and context review: auto tiers, capabilities, context policy, hooks, sessions
and /v1/select end to end, against real fake upstreams and real clients."""

from __future__ import annotations

from typing import Any

import pytest

from failoverd.clock import ManualClock
from failoverd.sessions import SessionStore
from tests.test_routing_e2e import three_tier

SMALL, MEDIUM, LARGE = "s/small", "m/medium", "l/large"
# content_filter fails over at once, is never retried and never counted by a breaker: a model
# can fail it again and again without its breaker hiding the routing under test
FILTERED = "content_filter"
NO_BREAKER = "[breaker]\nfailure_threshold = 1000\nminimum_calls = 1000\n"


def ask(text: str = "hi") -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


@pytest.fixture
async def tiers(fake_openai: Any, start_daemon: Any) -> Any:
    small = await fake_openai(reply="small")
    medium = await fake_openai(reply="medium")
    large = await fake_openai(reply="large")
    clock = ManualClock()
    d = await start_daemon(three_tier(small, medium, large, routing=NO_BREAKER), clock=clock)
    return small, medium, large, d, clock


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
