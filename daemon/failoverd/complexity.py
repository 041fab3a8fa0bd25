"""A local complexity classifier for ``model: "auto"``: which tier should answer a request.

Sub-millisecond and dependency-free: word-set lookups and a few precompiled regular
expressions over the last user message (at most its first `SCAN_HEAD` and last `SCAN_TAIL`
characters), the estimated prompt size, the conversation depth and whether tools are
offered. Each signal adds to a score in [0, 1] and names itself in ``reasons``:

======================  ======  ==============================================================
reason                  weight  signal
======================  ======  ==============================================================
short                   0       under 40 estimated tokens in the last user message
greeting / lookup       0       "hi", "thanks"; "what is", "who", "translate", "define" ...
code                    0.35    ``` fences, def/class/function, imports, lines ending ; { }
code_task               0.3     "write a function", "fix this bug", "review", "refactor" ...
                                (0.1 when code is already present)
proof                   0.6     prove, proof, theorem, lemma, derive, rigorous
analysis                0.25    analyze, trade-offs, compare, evaluate, step by step ...
                                (each distinct marker, at most 0.75)
system_design           0.2+    "design a ... system/service", distributed, scalability; or two
                                of latency, consistency, availability, replication ...
                                (0.1 + 0.1 per distinct marker, at most 0.5)
math                    0.25    LaTeX, equations, integrals, matrices
multi_part              0.2     three or more numbered/bulleted items or questions
long / very_long        0.15    prompt over 1,500 / 0.35 over 8,000 estimated tokens
deep                    0.1     six or more user turns
tools                   0.1     tools (or legacy functions) offered
effort_high             0.3     reasoning_effort (or reasoning.effort) "high" (0.15 for "medium")
======================  ======  ==============================================================

Tiers: score < 0.25 small, < 0.6 medium, else large. A request with no signal at all
(neither short nor any marker) gets tier None and the router uses the default chain.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from failoverd.config import Tier
from failoverd.tokens import estimate, text_tokens

logger = logging.getLogger(__name__)

SCAN_HEAD = 3000
SCAN_TAIL = 1000
SHORT_TOKENS = 40
LONG_TOKENS = 1500
VERY_LONG_TOKENS = 8000
DEEP_TURNS = 6
MEDIUM_AT = 0.25
LARGE_AT = 0.6

# Single-word markers are looked up in the set of the message's words: one regex pass to
# split words, then set intersections, is several times faster than one case-insensitive
# alternation per marker class. Phrases and shapes get small regexes over lowercased text.
_WORD = re.compile(r"[a-z][a-z'-]*")

_CODE_TASK_WORDS = frozenset({
    "fix", "debug", "bug", "bugs", "buggy", "review", "refactor", "refactoring", "traceback",
    "stacktrace", "exception", "segfault", "sql", "regex", "compile", "compiler", "unittest",
})
_PROOF_WORDS = frozenset({
    "prove", "proves", "proving", "proof", "proofs", "theorem", "lemma", "corollary",
    "derive", "derivation", "rigorous", "rigorously",
})
_ANALYSIS_WORDS = frozenset({
    "analyze", "analyse", "analyzes", "analyses", "analyzing", "analysing", "analysis",
    "tradeoff", "tradeoffs", "trade-off", "trade-offs", "compare", "comparing", "comparison",
    "contrast", "evaluate", "evaluating", "evaluation", "critique", "implications",
    "comprehensive", "thorough", "thoroughly", "justify", "essay", "strategy", "strategies",
    "optimize", "optimise", "in-depth", "step-by-step",
})
_ANALYSIS_PHRASES = ("step by step", "pros and cons", "in depth")
_DESIGN_STRONG_WORDS = frozenset({"distributed", "scalable", "scalability"})
_DESIGN_WEAK_WORDS = frozenset({
    "consistency", "availability", "fault-tolerant", "fault-tolerance", "latency",
    "throughput", "sharding", "replication",
})
_MATH_WORDS = frozenset({
    "integral", "integrals", "derivative", "derivatives", "eigenvalue", "eigenvalues",
    "eigenvector", "eigenvectors", "matrix", "matrices", "polynomial", "polynomials",
    "equation", "equations", "probability", "induction", "convergence", "converges",
})

_GREETING = re.compile(
    r"^\s*(hi|hello|hey|thanks|thank you|good (morning|evening|night)|ok(ay)?|bye)\b[\s!.?]*$")
_LOOKUP = re.compile(
    r"^\s*(what('s| is| are| was| were)|who|when|where|which|how (many|much|old|far|long)|"
    r"define|translate|spell|convert|name|list|tell me)\b")
_CODE_KEYWORDS = frozenset({
    "def", "class", "function", "fn", "func", "import", "include", "const", "let", "var",
})
_CODE_LINE = re.compile(
    r"^[ \t]*(async\s+)?(def|class|function|fn|func)\s+\w+\s*[(:<{]|"
    r"^[ \t]*from\s+[\w.]+\s+import\s|^[ \t]*import\s+[\w.]+(\s+as\s+\w+)?\s*;?[ \t]*$|"
    r"^[ \t]*#include\s*[<\"]|^[ \t]*(const|let|var)\s+\w+\s*=", re.MULTILINE)
_CODE_ENDINGS = (";\n", "{\n", "}\n", ";\r\n", "{\r\n", "}\r\n")
_CODE_TASK = re.compile(
    r"\b(write|implement|create|code|build) (me )?(a |an |the )?(\w+ )?"
    r"(function|class|method|script|program|module|query|test|endpoint|api)|\bunit tests?\b")
_DESIGN = re.compile(
    r"\bdesign (a|an|the)\b.{0,60}\b(system|service|platform|architecture|pipeline|"
    r"database|protocol)\b|\bsystem design\b")
_LATEX = re.compile(r"\\(frac|int|sum|prod|lim|sqrt|begin|mathbb|partial|nabla)\b|\$[^$\n]+\$")
_POWER = re.compile(r"[\w)]\s*\^\s*\d")
_EQUATION = re.compile(r"[a-z]\s*[-+*/]\s*\d+\s*=\s*-?\d")
_ENUMERATED = re.compile(r"^\s*(\d+[.)]|[-*\u2022]|\(?[a-z]\))\s+\S", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Decision:
    """The classifier's answer: a tier (None: no signal), its score and the signals seen."""

    tier: Tier | None
    score: float
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for /v1/select."""
        return {"tier": self.tier, "score": round(self.score, 2), "reasons": list(self.reasons)}


def classify(body: Mapping[str, Any]) -> Decision:
    """Maps a canonical request body to a tier; never raises on malformed input."""
    messages = body.get("messages")
    message_list: list[Any] = messages if isinstance(messages, list) else []
    text = _last_user_text(message_list)
    user_turns = sum(1 for m in message_list if isinstance(m, Mapping) and m.get("role") == "user")
    if len(text) > SCAN_HEAD + SCAN_TAIL:
        # Markers live in the ask and the question at the end; a long middle is payload.
        text = text[:SCAN_HEAD] + "\n" + text[-SCAN_TAIL:]
    scan = text

    score = 0.0
    reasons: list[str] = []

    def add(reason: str, weight: float) -> None:
        nonlocal score
        score += weight
        reasons.append(reason)

    lower = scan.lower()
    words = set(_WORD.findall(lower))
    has_code = _looks_like_code(scan, words)
    if has_code:
        add("code", 0.35)
    if words & _CODE_TASK_WORDS or _CODE_TASK.search(lower):
        add("code_task", 0.1 if has_code else 0.3)
    if words & _PROOF_WORDS:
        add("proof", 0.6)
    analysis = len(words & _ANALYSIS_WORDS) + sum(p in lower for p in _ANALYSIS_PHRASES)
    if analysis:
        add("analysis", min(0.25 * analysis, 0.75))
    strong = len(words & _DESIGN_STRONG_WORDS) + (_DESIGN.search(lower) is not None)
    weak = len(words & _DESIGN_WEAK_WORDS)
    if strong or weak >= 2:
        add("system_design", min(0.1 + 0.1 * (strong + weak), 0.5))
    if _looks_like_math(scan, lower, words):
        add("math", 0.25)
    if len(_ENUMERATED.findall(scan)) >= 3 or scan.count("?") >= 3:
        add("multi_part", 0.2)

    prompt_tokens = estimate(body)
    if prompt_tokens > VERY_LONG_TOKENS:
        add("very_long", 0.35)
    elif prompt_tokens > LONG_TOKENS:
        add("long", 0.15)
    if user_turns >= DEEP_TURNS:
        add("deep", 0.1)
    # the same signals requirements.infer reads: the legacy spelling of tools, and the
    # OpenRouter / Responses-style {"reasoning": {"effort": ...}}
    if any(isinstance(body.get(k), list) and body[k] for k in ("tools", "functions")):
        add("tools", 0.1)
    effort = body.get("reasoning_effort")
    reasoning = body.get("reasoning")
    if effort is None and isinstance(reasoning, Mapping):
        effort = reasoning.get("effort")
    if effort == "high":
        add("effort_high", 0.3)
    elif effort == "medium":
        add("effort_medium", 0.15)

    if not reasons:
        # Weightless signals only count when nothing heavier spoke.
        if text and text_tokens(text) < SHORT_TOKENS:
            reasons.append("short")
        if _GREETING.search(lower):
            reasons.append("greeting")
        elif _LOOKUP.search(lower):
            reasons.append("lookup")
    if not reasons:
        return Decision(None, 0.0, ("no_signal",))
    score = round(min(score, 1.0), 4)
    tier: Tier = "small" if score < MEDIUM_AT else "medium" if score < LARGE_AT else "large"
    return Decision(tier, score, tuple(reasons))


def route_header(decision: Decision) -> str:
    """The ``x-failoverd-route`` value, e.g. ``tier=small;score=0.00;reasons=short,lookup``.

    ASCII only and built from the decision alone: no prompt text ever reaches the header.
    """
    tier = decision.tier or "default"
    reasons = ",".join(decision.reasons) or "none"
    return f"tier={tier};score={decision.score:.2f};reasons={reasons}"


def _looks_like_code(scan: str, words: set[str]) -> bool:
    # Cheap substring tests first; the line regex only runs when a keyword is present.
    if "```" in scan or "=>" in scan or any(e in scan for e in _CODE_ENDINGS):
        return True
    if scan.rstrip().endswith((";", "{", "}")):
        return True
    return bool(words & _CODE_KEYWORDS) and _CODE_LINE.search(scan) is not None


def _looks_like_math(scan: str, lower: str, words: set[str]) -> bool:
    if words & _MATH_WORDS:
        return True
    if ("\\" in scan or "$" in scan) and _LATEX.search(scan):
        return True
    if "^" in scan and _POWER.search(lower):
        return True
    return "=" in scan and _EQUATION.search(lower) is not None


def _last_user_text(messages: list[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, Mapping) and m.get("role") == "user":
            return _text_of(m.get("content"))
    return ""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, Mapping)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""
