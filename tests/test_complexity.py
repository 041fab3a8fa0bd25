"""The complexity classifier: a labelled table of prompts, no-signal handling, the header."""

from __future__ import annotations

import time
from typing import Any

import pytest

from failoverd.complexity import Decision, classify, route_header


def _user(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], **extra}


SNIPPET = '''```python
def average(xs):
    total = 0
    for x in xs:
        total += x
    return total / len(xs)
```'''

JS_SNIPPET = """function debounce(fn, ms) {
  let t;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}"""

LABELLED: list[tuple[str, str]] = [
    # small: simple questions, chit-chat, one-word tasks
    ("small", "What is the capital of France?"),
    ("small", "hi"),
    ("small", "translate 'cat' to French"),
    ("small", "Thanks!"),
    ("small", "Who wrote Pride and Prejudice?"),
    ("small", "How many legs does a spider have?"),
    ("small", "Define photosynthesis in one sentence."),
    ("small", "Convert 5 miles to kilometers"),
    ("small", "Give me a synonym for happy."),
    # medium: code with a task
    ("medium", f"Can you review this code?\n{SNIPPET}"),
    ("medium", "Write a Python function that checks whether a string is a palindrome."),
    ("medium", f"Fix this bug: it crashes on an empty list.\n{SNIPPET}"),
    ("medium", f"Why does this not work?\n{JS_SNIPPET}"),
    ("medium", "Write a SQL query that returns the ten customers with the highest total orders."),
    ("medium", "Refactor my class so it uses dataclasses instead of a hand-written __init__."),
    ("medium", "Explain step by step how to solve x^2 - 5x + 6 = 0"),
    ("medium", "I get a traceback: KeyError: 'id' when I load the config. What does it mean?"),
    # large: proofs, multi-part analyses, design trade-off essays
    ("large", "Prove that there are infinitely many prime numbers."),
    ("large", "Prove by induction that the sum of the first n odd numbers is n^2."),
    ("large", r"Derive the closed form of $\sum_{k=1}^{n} k^2$ and prove it is correct."),
    ("large", "Design a distributed rate limiter service for a global API and discuss the "
              "trade-offs between consistency, availability and latency."),
    ("large", "Write an in-depth essay analyzing the causes of the 2008 financial crisis, "
              "comparing the roles of regulators, banks and rating agencies."),
    ("large", "Analyze the following business decision:\n1. the market size\n2. the "
              "competitors\n3. the risks\n4. the expected return\nand justify a "
              "recommendation."),
    ("large", "State and prove the spectral theorem for real symmetric matrices."),
    ("large", "Compare microservices and a modular monolith for a 20-person team: evaluate "
              "the trade-offs in deployment, scalability and fault tolerance."),
]


@pytest.mark.parametrize(("tier", "prompt"), LABELLED, ids=[p[:40] for _, p in LABELLED])
def test_labelled_prompt_gets_its_tier(tier: str, prompt: str) -> None:
    decision = classify(_user(prompt))
    assert decision.tier == tier, decision


def test_table_is_large_enough_and_covers_every_tier() -> None:
    assert len(LABELLED) >= 20
    assert {t for t, _ in LABELLED} == {"small", "medium", "large"}


def test_prose_without_any_marker_has_no_signal() -> None:
    text = ("My sister and I are planning a trip to the coast next month with our two dogs, "
            "and we would love some ideas for a relaxed weekend where everyone, including "
            "the dogs, can enjoy the beach, some good food and a couple of quiet walks "
            "along the cliffs in the evening when it is cooler.")
    decision = classify(_user(text))
    assert decision == Decision(None, 0.0, ("no_signal",))
    assert route_header(decision) == "tier=default;score=0.00;reasons=no_signal"


def test_empty_or_malformed_body_has_no_signal() -> None:
    assert classify({}).tier is None
    assert classify({"messages": "nope"}).tier is None
    assert classify({"messages": [None, 3, {"role": "user", "content": 5}]}).tier is None


def test_explicit_high_reasoning_effort_raises_the_tier() -> None:
    plain = classify(_user("Write a Python function that merges two sorted lists."))
    effort = classify(_user("Write a Python function that merges two sorted lists.",
                            reasoning_effort="high"))
    assert plain.tier == "medium"
    assert effort.tier == "large"
    assert "effort_high" in effort.reasons


def test_tools_and_deep_conversations_add_weight() -> None:
    history: list[dict[str, Any]] = []
    for i in range(6):
        history += [{"role": "user", "content": f"And the next item, number {i}?"},
                    {"role": "assistant", "content": "Sure."}]
    history.pop()  # end on the user's turn
    body = {"messages": history,
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]}
    decision = classify(body)
    assert {"deep", "tools"} <= set(decision.reasons)
    assert decision.tier == "small"
    assert decision.score == pytest.approx(0.2)


def test_long_prompt_escalates() -> None:
    paragraph = "The committee reviewed the quarterly figures and the staffing plan. " * 40
    body = {"messages": [{"role": "system", "content": paragraph * 20},
                         {"role": "user", "content": "Summarise the above."}]}
    decision = classify(body)
    assert "very_long" in decision.reasons
    assert decision.tier == "medium"


def test_content_parts_are_read() -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Prove that the square root of 2 is irrational."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]}]}
    assert classify(body).tier == "large"


def test_only_the_last_user_message_is_scanned_for_markers() -> None:
    body = {"messages": [
        {"role": "system", "content": "You are a coding agent. ```python\ndef f(): pass\n```"},
        {"role": "user", "content": "Prove Fermat's little theorem."},
        {"role": "assistant", "content": "Here is a proof ..."},
        {"role": "user", "content": "thanks"},
    ]}
    decision = classify(body)
    assert decision.tier == "small"
    assert decision.reasons == ("short", "greeting")


def test_route_header_is_ascii_and_carries_no_prompt_text() -> None:
    secret = "Prove the Riemann hypothesis for my thesis about zêta 秘密"
    header = route_header(classify(_user(secret)))
    assert header.isascii()
    assert header.startswith("tier=large;score=")
    assert "Riemann" not in header and "thesis" not in header
    assert route_header(Decision("small", 0.123, ("short", "lookup"))) == (
        "tier=small;score=0.12;reasons=short,lookup")


def test_classify_is_fast_on_a_large_request() -> None:
    text = ("Some ordinary text with a few words; and (parentheses) here. " * 2000)
    body = _user(text)
    classify(body)  # warm the regex cache
    started = time.perf_counter()
    for _ in range(10):
        classify(body)
    per_call = (time.perf_counter() - started) / 10
    assert per_call < 0.02
