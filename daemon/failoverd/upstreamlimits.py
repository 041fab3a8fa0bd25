"""What the upstreams' own rate-limit headers say of a model's budget, before any 429.

Providers tell their remaining budget in the headers of their answers, successes included
(read from every 200 and a stream's 200 head; an error's wait is the failure's own, its
Retry-After, which the breaker and the same-model retry go by):
OpenAI and the servers that copy it (Groq, DeepSeek, Together, Azure OpenAI v1)
``x-ratelimit-remaining-requests`` / ``-tokens`` with ``x-ratelimit-reset-requests`` /
``-tokens`` as Go durations ("6m0s", "1s", "120ms"); OpenRouter a plain
``X-RateLimit-Remaining`` (requests) with ``X-RateLimit-Reset`` as an epoch in milliseconds;
Anthropic ``anthropic-ratelimit-requests-remaining`` / ``-reset`` and
``anthropic-ratelimit-input-tokens-remaining`` / ``-reset`` (falling back to the
``-tokens-`` pair), the resets as RFC 3339 times.

A model whose last answer said its remaining requests are 0 is skipped as unavailable
(``upstream_rpm``) until the stated reset; one whose remaining (input) tokens are below a
request's estimated prompt is skipped for that request (``upstream_tpm``) until the tokens'
reset; remaining tokens of 0 skip every request (Anthropic rounds its token counts to the
nearest thousand: they are taken as up to 499 more). It is knowledge, not a breaker: nothing
is counted against the model and nothing is announced. An answer with new figures replaces
the old ones when its request was sent no earlier than theirs: the figures are the rate
limiter's when it admitted a request, so a slow answer to an older request is older news, and
so is one to a request sent before a reload changed the model or its provider. New figures
that free a model which was held back (requests again, more tokens, a sooner reset) wake the
requests waiting in the queue at once (`wake`, set by health.HealthRegistry only while one
waits: with no one waiting, an answer compares nothing).

Resets are taken into the daemon's monotonic clock from the moment the request was sent (the
adapter's `start` stamp; a non-streamed answer comes only once its completion is made):
durations as they are, absolute times (Anthropic's, OpenRouter's) through the wall clock as it
stood when the answer came (``Clock.time``; a later step of the wall clock moves nothing).
They are kept as written and read only when needed (a count of 0, a request over the tokens,
/v1/status). A reset that does not parse, is not in the future, or is not finite is not
trusted (the figure it goes with cannot skip anything); one more than `MAX_RESET` away is cut
to it. A count that is not a non-negative integer (Azure's ``-1``, a word) is ignored.

A request's own size comes from the context of its task (`ask`): the router sets it when it
routes a chat request (`routes.py`), and every other kind of request clears it. It is measured
only in the task that asked and in the tasks that `adopt` it (a hedged attempt's lane): a task
that merely inherited the context (a prober's job scheduled while the request was routed, a
hook) measures nothing. It is measured lazily: a quick ceiling of its estimate (`_ceiling`, from
its strings' lengths) first, the estimate itself (tokens.py, up to milliseconds for a long
prompt) only when the ceiling is over a live token budget. An Anthropic request that uses
prompt caching is not measured against Anthropic's input-token budget, which does not count
cache reads.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

import orjson

from failoverd.clock import Clock
from failoverd.metrics import UPSTREAM_SKIPS
from failoverd.providers.http import go_duration
from failoverd.tokens import estimate

__all__ = ["MAX_RESET", "Headers", "UpstreamLimits", "adopt", "ask"]

logger = logging.getLogger(__name__)

# the longest reset trusted: a daily quota's reset (Groq's requests per day) is cut to this,
# after which the next answer tells again; a longer one is more likely a wrong clock or unit
MAX_RESET = 3600.0
# the longest count read (digits); anything longer is no budget a provider tells
_MAX_DIGITS = 18
# Anthropic's token counts are rounded to the nearest thousand: the real one may be this
# much higher
_ANTHROPIC_ROUNDING = 499

class Headers(Protocol):
    """An answer's headers, looked up case-insensitively (http1's Headers)."""

    def get(self, name: str) -> str | None: ...


class _Known:
    """What the last answer of a model said. Its resets are kept as written and read when
    first needed (a count of 0, a request over the tokens, /v1/status): most answers leave
    plenty, and then no reset is ever parsed."""

    __slots__ = ("form", "at", "offset", "requests", "requests_reset", "requests_until",
                 "tokens", "tokens_reset", "tokens_until")

    def __init__(self, at: float = -math.inf) -> None:
        self.form = "openai"  # how its resets are written: openai, openrouter, anthropic
        # monotonic time the request of the answer was sent: answers to requests sent before
        # it are older news (and, after a reload, perhaps another account's)
        self.at = at
        self.offset = 0.0  # the wall clock less the monotonic one when the answer came
        self.requests: int | None = None
        self.requests_reset: str | None = None
        self.requests_until: float | None = None  # monotonic, 0.0: unusable; None: not read
        self.tokens: int | None = None
        self.tokens_reset: str | None = None
        self.tokens_until: float | None = None


class _Request:
    """The request being routed in this task: its prompt, estimated on demand."""

    __slots__ = ("owner", "_body", "_tokens", "_ceiling", "_caching")

    def __init__(self, body: Mapping[str, Any], tokens: int | None) -> None:
        # the task routing it (see `_measured`); looked up only once some upstream has told a
        # token budget: a daemon whose upstreams send none pays nothing for it
        self.owner = _task() if _told_tokens else None
        self._body = body
        self._tokens = tokens
        self._ceiling: int | None = tokens
        self._caching: bool | None = None

    def fits(self, budget: int) -> bool:
        """Whether the prompt's quick ceiling (`_ceiling`) is within `budget` tokens: the
        prompt fits without estimating it."""
        if self._ceiling is None:
            self._ceiling = _ceiling(self._body)
        return self._ceiling <= budget

    def over(self, budget: int) -> bool:
        """Whether the prompt's estimate is more than `budget` tokens. The estimate costs
        up to milliseconds for a long prompt (tokens.py): asked only after `fits` found the
        quick ceiling over the budget."""
        if self._tokens is None:
            self._tokens = estimate(self._body)
        return self._tokens > budget

    def adopted(self, owner: asyncio.Task[Any] | None) -> _Request:
        """The same request, routed by `owner` too (see `adopt`)."""
        twin = _Request(self._body, self._tokens)
        twin.owner, twin._ceiling, twin._caching = owner, self._ceiling, self._caching
        return twin

    def caching(self) -> bool:
        if self._caching is None:
            self._caching = _uses_cache(self._body)
        return self._caching


_REQUEST: contextvars.ContextVar[_Request | None] = contextvars.ContextVar(
    "failoverd_upstream_request", default=None)


def _task() -> asyncio.Task[Any] | None:
    try:
        return _current_task()
    except RuntimeError:  # no event loop running
        return None


_current_task = asyncio.current_task
_told_tokens = False  # whether any upstream has told a token budget yet


def _measured() -> _Request | None:
    """The request this task routes. A task started while a request was routed inherits
    its context, the request with it (a prober's job that the request's failure scheduled
    through APScheduler, a hook): that one is not its to measure."""
    request = _REQUEST.get()
    if request is None or request.owner is None or request.owner is not _task():
        return None  # (None: routed before any token budget was told, not measured)
    return request


def adopt(task: asyncio.Task[Any] | None = None) -> None:
    """`task` (default: the current one) routes, for the task that asked, the request it
    inherited (a hedged attempt's lane, which the dispatcher starts for that request):
    measured there too. Run in the task's own context (hedge.lane_task does it before the
    task's first step); a task that only inherited the context (a job, a hook) does not."""
    owner = task if task is not None else _task()
    request = _REQUEST.get()
    if request is not None and request.owner is not None and request.owner is not owner:
        _REQUEST.set(request.adopted(owner))


def ask(body: Mapping[str, Any] | None, tokens: int | None = None) -> None:
    """Names the request this task routes from now on (`tokens`: its prompt estimate when
    already made), or none (None: a request whose size is not measured)."""
    _REQUEST.set(None if body is None else _Request(body, tokens))


class UpstreamLimits:
    """Per model, the budget its upstream's last answer told (see the module docstring)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._known: dict[str, _Known] = {}
        # told once when new figures free a model that was held back (the queue's wake-up,
        # health.HealthRegistry._notify); set only while a request waits in the queue
        self.wake: Callable[[], None] | None = None

    # ------------------------------------------------------------------ reading answers

    def start(self) -> float:
        """The stamp of a request about to be sent, for `seen` (the monotonic clock)."""
        return self.clock.monotonic()

    def seen(self, family: str, model_id: str, headers: Headers,
             sent: float | None = None) -> None:
        """Reads an answer's rate-limit headers: a few lookups, nothing kept (or allocated
        but by the lookups) when there are none, the counts only when there are. `sent`:
        the request's `start` stamp (None: now), which orders the answers and from which
        their durations count."""
        if family == "anthropic":
            requests = headers.get("anthropic-ratelimit-requests-remaining")
            tokens = headers.get("anthropic-ratelimit-input-tokens-remaining")
            tokens_reset = "anthropic-ratelimit-input-tokens-reset"
            if tokens is None:
                tokens = headers.get("anthropic-ratelimit-tokens-remaining")
                tokens_reset = "anthropic-ratelimit-tokens-reset"
            if requests is not None or tokens is not None:
                self._update(model_id, "anthropic", requests,
                             headers.get("anthropic-ratelimit-requests-reset"), tokens,
                             headers.get(tokens_reset), sent)
            return
        requests = headers.get("x-ratelimit-remaining-requests")
        tokens = headers.get("x-ratelimit-remaining-tokens")
        if requests is not None or tokens is not None:
            self._update(model_id, "openai", requests,
                         headers.get("x-ratelimit-reset-requests"), tokens,
                         headers.get("x-ratelimit-reset-tokens"), sent)
            return
        requests = headers.get("x-ratelimit-remaining")  # OpenRouter: requests
        if requests is not None:
            self._update(model_id, "openrouter", requests, headers.get("x-ratelimit-reset"),
                         None, None, sent)

    def _update(self, model_id: str, form: str, requests: str | None,
                requests_reset: str | None, tokens: str | None,
                tokens_reset: str | None, sent: float | None) -> None:
        requests_left, tokens_left = _count(requests), _count(tokens)
        if requests_left is None and tokens_left is None:
            return  # nothing usable: what an earlier answer said stands
        now = self.clock.monotonic()
        if sent is None or sent > now:
            sent = now
        known = self._known.get(model_id)
        if known is None:
            known = self._known[model_id] = _Known()
        elif sent < known.at:
            # a request sent before the one whose figures are kept (a long answer arriving
            # after a short one), or before the model's settings changed: older news
            return
        wake = self.wake
        before = self._held(known, now) if wake is not None else None
        was_out = self._requests_wait(known, now) > 0
        known.form, known.at = form, sent
        known.offset = self.clock.time() - now
        if requests_left is not None:
            known.requests, known.requests_reset = requests_left, requests_reset
            known.requests_until = None
        if tokens_left is not None:
            known.tokens, known.tokens_reset = tokens_left, tokens_reset
            known.tokens_until = None
            global _told_tokens
            _told_tokens = True
        if requests_left == 0 and not was_out:
            wait = self._requests_wait(known, now)
            if wait > 0:
                logger.info("%s: its upstream says no requests remain for %.1fs: skipped "
                            "until then", model_id, wait)
        if before is not None and wake is not None and _freed(before, self._held(known, now)):
            self.wake = None
            wake()

    def _held(self, known: _Known, now: float) -> tuple[float, float, int]:
        """What may hold the model back now: the wait for its requests, and its token
        budget while that budget's reset is ahead (its reset and count; 0, 0 when not)."""
        requests = self._requests_wait(known, now)
        if known.tokens is None:
            return requests, 0.0, 0
        until = self._tokens_until(known)
        return (requests, until, known.tokens) if until > now else (requests, 0.0, 0)

    def _until(self, known: _Known, reset: str | None) -> float:
        """A reset as written, in monotonic time (0.0 when it is not trusted)."""
        if reset is None:
            return 0.0
        # the wall clock as it stood with the monotonic one when the answer came: a jump of
        # the wall clock since then moves nothing
        wall = known.at + known.offset
        if known.form == "openai":
            wait = _duration(reset, wall)
        else:
            wait = (_rfc3339(reset, wall) if known.form == "anthropic"
                    else _epoch_or_delta(reset, wall))
        return 0.0 if wait is None else known.at + wait

    def _requests_until(self, known: _Known) -> float:
        if known.requests_until is None:
            known.requests_until = self._until(known, known.requests_reset)
        return known.requests_until

    def _tokens_until(self, known: _Known) -> float:
        if known.tokens_until is None:
            known.tokens_until = self._until(known, known.tokens_reset)
        return known.tokens_until

    # ------------------------------------------------------------------ admission

    def blocked(self, model_id: str, now: float) -> str | None:
        """Why the model is not to be called now for the request this task routes
        ("upstream_rpm", "upstream_tpm"), else None."""
        known = self._known.get(model_id)
        if known is None:
            return None
        # on every admission: the counts are looked at before any call
        if known.requests == 0 and self._requests_wait(known, now) > 0:
            return "upstream_rpm"
        if known.tokens is not None and self._tokens_wait(known, now) > 0:
            return "upstream_tpm"
        return None

    def refused(self, model_id: str, why: str) -> None:
        """Counts a call not made for `why` (failoverd_upstream_limit_skips_total)."""
        UPSTREAM_SKIPS[(model_id, why)] += 1

    def wait(self, model_id: str, now: float) -> float:
        """Seconds until the model's known budget admits the request this task routes."""
        known = self._known.get(model_id)
        if known is None:
            return 0.0
        return max(self._requests_wait(known, now), self._tokens_wait(known, now))

    def _requests_wait(self, known: _Known, now: float) -> float:
        if known.requests != 0:
            return 0.0
        until = self._requests_until(known)
        return until - now if until > now else 0.0

    def _tokens_wait(self, known: _Known, now: float) -> float:
        budget = known.tokens
        if budget is None:
            return 0.0
        if known.form == "anthropic":
            # Anthropic rounds its token counts to the nearest thousand: up to this many more
            # may be left (a "0" is not none, and a prompt just over the count may go)
            budget += _ANTHROPIC_ROUNDING
        request = None
        if budget > 0:
            # the cheap answers first: no request measured, a cached Anthropic prompt, a
            # prompt whose ceiling fits; then whether the budget is still live; the estimate
            # last
            request = _measured()
            if request is None or (known.form == "anthropic" and request.caching()) \
                    or request.fits(budget):
                return 0.0
        until = self._tokens_until(known)
        if until <= now or (request is not None and not request.over(budget)):
            return 0.0
        return until - now

    # ------------------------------------------------------------------ keeping

    def forget(self, model_id: str) -> None:
        """Drops what is known of a model (its settings changed or it went away); the
        answers to requests sent before, still under way, are not taken either (they may
        tell another account's budget)."""
        self._known[model_id] = _Known(self.clock.monotonic())

    def status(self, model_id: str) -> dict[str, Any] | None:
        """`/v1/status`' `upstream_limits` of a model: the last answer's figures, when it
        came (`at`) and the resets still ahead (epoch seconds, null when passed or unknown);
        None when no answer told any."""
        known = self._known.get(model_id)
        if known is None or (known.requests is None and known.tokens is None):
            return None
        now, wall = self.clock.monotonic(), self.clock.time()

        def at(until: float) -> float | None:
            return round(wall + until - now, 3) if until > now else None

        return {"requests_remaining": known.requests,
                "requests_reset_at": at(self._requests_until(known)),
                "tokens_remaining": known.tokens,
                "tokens_reset_at": at(self._tokens_until(known)),
                "at": round(wall + known.at - now, 3)}


def _freed(before: tuple[float, float, int], after: tuple[float, float, int]) -> bool:
    """Whether the figures `after` (see UpstreamLimits._held) may admit a request that those
    `before` held back: a shorter wait for requests, or (with requests left) a token budget
    that was live and is now gone, larger, or reset sooner."""
    if after[0] < before[0]:
        return True
    if after[0] > 0:
        return False  # still no requests left, no sooner: what the tokens say frees nothing
    return before[1] > 0 and (after[1] == 0 or after[1] < before[1] or after[2] > before[2])


def _count(value: str | None) -> int | None:
    """A remaining count: a non-negative integer, else None (ignored)."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > _MAX_DIGITS or not (value.isascii() and value.isdigit()):
        return None
    return int(value)


def _trusted(wait: float) -> float | None:
    """A reset `wait` seconds away, cut to MAX_RESET; None when it is not in the future."""
    if not math.isfinite(wait) or wait <= 0:
        return None
    return min(wait, MAX_RESET)


def _duration(value: str, wall: float) -> float | None:
    """OpenAI's reset: a Go duration ("6m0s", "120ms"), or a plain number (Azure sends "0"):
    seconds, unless it can only be an epoch (in seconds or milliseconds, as the plain
    X-RateLimit-Reset is written), which taken for seconds was cut to an hour's skip."""
    seconds = go_duration(value)
    if seconds is None:
        return _epoch_or_delta(value, wall)
    return _trusted(seconds)


def _rfc3339(value: str, wall: float) -> float | None:
    """Anthropic's reset: an RFC 3339 time, as seconds from `wall`."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        return None  # RFC 3339 always has an offset: a time without one is no such time
    return _trusted(when.timestamp() - wall)


def _epoch_or_delta(value: str, wall: float) -> float | None:
    """OpenRouter's X-RateLimit-Reset: an epoch in milliseconds (in seconds too, as some
    servers of the same header write it), or, for a small number, seconds from now."""
    try:
        number = float(value)
    except ValueError:
        return None
    if number > 1e11:
        return _trusted(number / 1000.0 - wall)
    if number > 1e9:
        return _trusted(number - wall)
    return _trusted(number)


# what one part or character can cost at most in tokens.estimate: an image (pixel_tokens'
# most, about 1,600), an emoji (2.5 a character)
_PART_CEILING = 1600
_CHAR_CEILING = 3


def _ceiling(body: Mapping[str, Any]) -> int:
    """More tokens than tokens.estimate can make of `body`, from the lengths of its strings
    (C-speed `len`, no character classes): 3 a character, the most an image costs per part,
    the JSON's bytes of the tools and schemas. A PDF part (2,000 tokens a page) has no such
    ceiling: an int larger than any budget then, so the estimate decides."""
    total = 3  # the reply's priming
    # JSON is estimated as text too: its bytes at 3 (a digit between commas, a case change
    # cost more than one token a character)
    for key in ("tools", "functions"):
        tools = body.get(key)
        if isinstance(tools, list) and tools:
            total += 8 * len(tools) + _CHAR_CEILING * len(_dumps(tools))
    fmt = body.get("response_format")
    if isinstance(fmt, Mapping):
        total += _CHAR_CEILING * len(_dumps(fmt))
    messages = body.get("messages")
    if not isinstance(messages, list):
        return total
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        total += 8
        for key, value in message.items():
            if isinstance(value, str):
                total += _CHAR_CEILING * len(value)
            elif key == "content" and isinstance(value, list):
                for part in value:
                    if isinstance(part, str):
                        total += _CHAR_CEILING * len(part)
                    elif not isinstance(part, Mapping):
                        continue
                    else:
                        # by its type, as tokens.content_tokens reads it: an image part's
                        # stray "text" key is no text
                        kind = part.get("type")
                        if kind == "file":
                            return 1 << 62
                        text = (part.get("text") if kind == "text" else
                                part.get("refusal") if kind == "refusal" else None)
                        total += (_CHAR_CEILING * len(text) if isinstance(text, str)
                                  else _PART_CEILING)
            elif isinstance(value, (list, Mapping)):  # tool calls, thinking blocks
                total += _CHAR_CEILING * len(_dumps(value))
    return total


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return b""


def _uses_cache(body: Mapping[str, Any]) -> bool:
    """Whether a canonical request carries prompt-caching breakpoints (``cache_control``
    on itself, a message, a content part or a tool)."""
    if "cache_control" in body:
        return True
    for key in ("messages", "tools"):
        items = body.get(key)
        if not isinstance(items, list):
            continue
        for item in items:
            if not isinstance(item, dict):
                continue
            if "cache_control" in item:
                return True
            content = item.get("content")
            if isinstance(content, list) and any(
                    isinstance(p, dict) and "cache_control" in p for p in content):
                return True
    return False
