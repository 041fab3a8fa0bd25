"""Capability and context checks, truncation, and the auto chain built from tiers."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from failoverd import config
from failoverd.complexity import Decision, classify
from failoverd.config import ModelConfig
from failoverd.requirements import Requirements, from_spec, infer
from failoverd.selection import auto_chain, check, output_reservation, truncate
from failoverd.tokens import estimate

CONFIG = """
[providers.sim]
kind = "simulated"

[models."sim/tiny"]
provider = "sim"
context_window = 8192
capabilities = ["tools"]
tier = "small"
cost = { input = 0.1, output = 0.4 }

[models."sim/mini"]
provider = "sim"
context_window = 128000
capabilities = ["tools", "vision", "json"]
tier = "small"
cost = { input = 0.15, output = 0.6 }

[models."sim/cheap-small"]
provider = "sim"
context_window = 32000
capabilities = []
tier = "small"
cost = { input = 0.05, output = 0.1 }

[models."sim/mid"]
provider = "sim"
context_window = 200000
capabilities = ["tools", "vision", "json"]
tier = "medium"
cost = { input = 1.0, output = 4.0 }

[models."sim/mid-cheap"]
provider = "sim"
context_window = 128000
capabilities = ["tools", "json"]
tier = "medium"
cost = { input = 0.5, output = 2.0 }

[models."sim/big"]
provider = "sim"
context_window = 200000
max_output_tokens = 64000
capabilities = ["tools", "vision", "reasoning", "json"]
tier = "large"
cost = { input = 3.0, output = 15.0 }

[models."sim/huge"]
provider = "sim"
capabilities = ["tools", "vision", "reasoning", "json", "long_context"]
tier = "large"
cost = { input = 15.0, output = 75.0 }

[models."sim/untiered"]
provider = "sim"
capabilities = ["tools", "vision", "reasoning", "json"]

[routing]
primary = "sim/big"
fallbacks = ["sim/mid", "sim/tiny"]
"""


@pytest.fixture(scope="module")
def cfg() -> config.Config:
    return config.loads(CONFIG, env={})


def model(**kw: Any) -> ModelConfig:
    return ModelConfig(id=kw.pop("id", "m"), provider="p", name="m", **kw)


# ------------------------------------------------------------------ check

@pytest.mark.parametrize(("m", "req", "reason"), [
    (model(), Requirements(), None),
    (model(capabilities=frozenset({"tools"})), from_spec(["vision"], 10),
     "lacks capability: vision"),
    (model(), from_spec(["vision", "tools"], 10), "lacks capabilities: tools, vision"),
    (model(capabilities=frozenset({"tools", "vision"})), from_spec(["tools"], 10), None),
    (model(context_window=8192), from_spec([], 12000), "context window 8192 < 12000 needed tokens"),
    (model(context_window=8192), from_spec([], 8000, 192), None),
    (model(context_window=8192), from_spec([], 8000, 193),
     "context window 8192 < 8193 needed tokens"),
    (model(), from_spec([], 10_000_000, 10_000), None),  # unknown window: assumed to fit
    # a model cannot write past its max_output_tokens, so only that much is reserved
    (model(context_window=8192, max_output_tokens=1000), from_spec([], 7000, 32000), None),
    (model(context_window=8192, max_output_tokens=2000), from_spec([], 7000, 32000),
     "context window 8192 < 9000 needed tokens"),
    # capabilities are reported before size
    (model(context_window=10), from_spec(["json"], 100), "lacks capability: json"),
])
def test_check(m: ModelConfig, req: Requirements, reason: str | None) -> None:
    assert check(m, req) == reason


def test_output_reservation() -> None:
    assert output_reservation(model(), from_spec([], 5)) == 0
    assert output_reservation(model(), from_spec([], 5, 700)) == 700
    assert output_reservation(model(max_output_tokens=500), from_spec([], 5, 700)) == 500


def test_check_on_an_inferred_request(cfg: config.Config) -> None:
    image = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}
    req = infer(image)
    assert check(cfg.models["sim/tiny"], req) == "lacks capability: vision"
    assert check(cfg.models["sim/mini"], req) is None


# ------------------------------------------------------------------ truncate

def msg(role: str, text: str = "", **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": text, **extra}


def conversation() -> dict[str, Any]:
    filler = "lorem ipsum dolor sit amet " * 40  # ~270 tokens
    return {"model": "x", "max_tokens": 100, "messages": [
        msg("system", "You are terse."),
        msg("user", "first " + filler),
        msg("assistant", "answer one " + filler),
        msg("user", "second: look it up " + filler),
        msg("assistant", None, tool_calls=[{"id": "c1", "type": "function", "function": {
            "name": "search", "arguments": '{"q": "' + filler + '"}'}}]),
        msg("tool", "result " + filler, tool_call_id="c1"),
        msg("assistant", "answer two " + filler),
        msg("developer", "Keep answers short."),
        msg("user", "third " + filler),
        msg("assistant", "answer three " + filler),
        msg("user", "last question"),
    ]}


def contents(body: dict[str, Any]) -> list[str]:
    return [f"{m['role']}:{(m.get('content') or '').split(' ')[0]}" for m in body["messages"]]


def test_truncate_returns_an_equal_copy_when_it_fits() -> None:
    body = conversation()
    out = truncate(body, 1_000_000, 100)
    assert out == body and out is not body and out["messages"] is not body["messages"]


def test_truncate_with_unknown_window_keeps_everything() -> None:
    body = conversation()
    assert truncate(body, None, 100) == body


def test_truncate_drops_the_oldest_turn_first() -> None:
    body = conversation()
    full = estimate(body)
    out = truncate(body, full + 100 - 50, 100)  # just too small for everything
    assert out is not None
    assert contents(out) == [
        "system:You", "user:second:", "assistant:", "tool:result", "assistant:answer",
        "developer:Keep", "user:third", "assistant:answer", "user:last"]
    assert estimate(out) + 100 <= full + 50


def test_truncate_keeps_tool_calls_with_their_results() -> None:
    body = conversation()
    full = estimate(body)
    # room for barely more than the kept part: the tool turn must go as a whole
    out = truncate(body, full - 900, 100)
    assert out is not None
    roles = [m["role"] for m in out["messages"]]
    assert "tool" not in roles
    assert not any(m.get("tool_calls") for m in out["messages"])
    assert contents(out) == ["system:You", "developer:Keep", "user:third", "assistant:answer",
                             "user:last"]
    for i, m in enumerate(out["messages"]):
        if m["role"] == "tool":  # never orphaned
            assert out["messages"][i - 1].get("tool_calls") or \
                out["messages"][i - 1]["role"] == "tool"


def test_truncate_down_to_system_and_last_user_turn() -> None:
    body = conversation()
    minimal = {**body, "messages": [m for m in body["messages"]
                                    if m["role"] in ("system", "developer")]
               + [body["messages"][-1]]}
    window = estimate(minimal) + 100
    out = truncate(body, window, 100)
    assert out is not None
    assert contents(out) == ["system:You", "developer:Keep", "user:last"]
    assert truncate(body, window - 1, 100) is None


def test_truncate_keeps_the_whole_last_user_turn_of_an_agent_loop() -> None:
    filler = "tool output " * 300
    body = {"messages": [
        msg("system", "agent"),
        msg("user", "old " * 500),
        msg("assistant", "old answer"),
        msg("user", "do the task"),
        msg("assistant", None, tool_calls=[{"id": "a", "type": "function",
                                            "function": {"name": "run", "arguments": "{}"}}]),
        msg("tool", filler, tool_call_id="a"),
    ]}
    tail = {"messages": [body["messages"][0], *body["messages"][3:]]}
    out = truncate(body, estimate(tail), None)
    assert out is not None and out["messages"] == tail["messages"]
    assert truncate(body, estimate(tail) - 1, None) is None


def test_truncate_never_mutates_its_input() -> None:
    body = conversation()
    pristine = copy.deepcopy(body)
    truncate(body, estimate(body) - 500, 100)
    truncate(body, 10, 100)
    assert body == pristine


def test_truncate_drops_leading_non_user_messages_as_a_turn() -> None:
    body = {"messages": [msg("assistant", "Welcome! " * 200), msg("user", "hi")]}
    out = truncate(body, estimate({"messages": [msg("user", "hi")]}), None)
    assert out is not None and contents(out) == ["user:hi"]


# ------------------------------------------------------------------ auto_chain

ALL_UP = lambda _model_id: True  # noqa: E731


def test_auto_small_starts_with_the_cheapest_capable_small_model(cfg: config.Config) -> None:
    chain, skipped = auto_chain(cfg, Decision("small", 0.0, ("short",)), ALL_UP,
                                from_spec([], 100))
    assert chain == ["sim/cheap-small", "sim/tiny", "sim/mini",
                     "sim/mid-cheap", "sim/mid", "sim/big", "sim/huge"]
    assert skipped == []


def test_auto_skips_incapable_and_unhealthy_models(cfg: config.Config) -> None:
    down = {"sim/mini"}
    chain, skipped = auto_chain(cfg, Decision("small", 0.1, ("tools",)),
                                lambda m: m not in down, from_spec(["tools"], 100))
    assert chain == ["sim/tiny", "sim/mid-cheap", "sim/mid", "sim/big", "sim/huge"]
    assert skipped == [("sim/cheap-small", "lacks capability: tools"),
                       ("sim/mini", "unavailable")]


@pytest.mark.parametrize(("decision", "req", "chain"), [
    (Decision("medium", 0.4, ("code",)), from_spec([], 100),
     ["sim/mid-cheap", "sim/mid", "sim/big", "sim/huge"]),
    (Decision("medium", 0.4, ("code",)), from_spec(["vision"], 100),
     ["sim/mid", "sim/big", "sim/huge"]),
    (Decision("large", 0.8, ("proof",)), from_spec([], 100), ["sim/big", "sim/huge"]),
    (Decision("large", 0.8, ("proof",)), from_spec(["long_context"], 100), ["sim/huge"]),
    # context: only windows that fit; unknown windows are assumed to fit
    (Decision("small", 0.0, ("short",)), from_spec([], 100_000),
     ["sim/mini", "sim/mid-cheap", "sim/mid", "sim/big", "sim/huge"]),
    (Decision("small", 0.0, ("short",)), from_spec([], 150_000, 10_000),
     ["sim/mid", "sim/big", "sim/huge"]),
])
def test_auto_routing_table(cfg: config.Config, decision: Decision, req: Requirements,
                            chain: list[str]) -> None:
    assert auto_chain(cfg, decision, ALL_UP, req)[0] == chain


def test_auto_without_signal_uses_the_default_chain(cfg: config.Config) -> None:
    chain, skipped = auto_chain(cfg, Decision(None, 0.0, ("no_signal",)), ALL_UP,
                                from_spec([], 10))
    assert chain == ["sim/big", "sim/mid", "sim/tiny"] == list(cfg.default_chain)
    assert skipped == []


def test_auto_without_tiered_models_uses_the_default_chain() -> None:
    cfg = config.loads("""
[providers.sim]
kind = "simulated"
[models."sim/a"]
provider = "sim"
[models."sim/b"]
provider = "sim"
[routing]
primary = "sim/b"
fallbacks = ["sim/a"]
""", env={})
    chain, _ = auto_chain(cfg, Decision("large", 0.9, ("proof",)), ALL_UP, from_spec([], 1))
    assert chain == ["sim/b", "sim/a"]


def test_auto_with_every_tiered_model_down_falls_back_to_the_default_chain(
        cfg: config.Config) -> None:
    chain, skipped = auto_chain(cfg, Decision("large", 0.9, ("proof",)), lambda m: False,
                                from_spec([], 1))
    assert chain == list(cfg.default_chain)
    # sim/big is in the default chain: the router records it there, once
    assert skipped == [("sim/huge", "unavailable")]


def test_auto_end_to_end_from_labelled_prompts(cfg: config.Config) -> None:
    def route(text: str) -> str:
        body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
        return auto_chain(cfg, classify(body), ALL_UP, infer(body))[0][0]

    assert route("What is the capital of France?") == "sim/cheap-small"
    assert route("Write a Python function that reverses a linked list.") == "sim/mid-cheap"
    assert route("Prove that the square root of 2 is irrational.") == "sim/big"


def test_omitted_capabilities_are_not_screened() -> None:
    cfg = config.loads('[providers.p]\nkind = "simulated"\n[models."p/any"]\nprovider = "p"\n'
                       '[models."p/none"]\nprovider = "p"\ncapabilities = []\n', env={})
    needs = from_spec(["tools", "vision"], 10)
    assert check(cfg.models["p/any"], needs) is None  # unknown: not refused
    assert check(cfg.models["p/none"], needs) == "lacks capabilities: tools, vision"
