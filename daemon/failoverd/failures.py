"""Failure reasons and what the router and breakers do about each (DESIGN.md's table).

Every upstream failure is classified once, at the adapter edge, into a FailureReason;
everything inward decides on the reason, never on message text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FailureReason(enum.StrEnum):
    RATE_LIMIT = "rate_limit"
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    INVALID_RESPONSE = "invalid_response"
    AUTH = "auth"
    BILLING = "billing"
    NOT_FOUND = "not_found"
    CONTEXT_OVERFLOW = "context_overflow"
    CONTENT_FILTER = "content_filter"
    BAD_REQUEST = "bad_request"
    CANCELLED = "cancelled"
    # Not upstream failures: the router skipped a candidate without calling it.
    UNAVAILABLE = "unavailable"  # breaker open / credentials blocked
    INCAPABLE = "incapable"  # lacks a capability the request needs, or too small a context


class BreakerEffect(enum.Enum):
    COUNT = "count"  # a failure in the breaker's window
    IGNORE = "ignore"  # not the model's fault
    OPEN_PROVIDER_AUTH = "auth"  # every model of the provider, auth_open_seconds
    OPEN_PROVIDER_BILLING = "billing"  # every model of the provider, billing_open_seconds
    OPEN_MODEL_MAX = "open_max"  # this model, max_open_seconds


@dataclass(frozen=True, slots=True)
class Policy:
    """What happens after a failure with this reason."""

    retry_same: bool  # same-model retry allowed (rate_limit: only within retry_after_max)
    retry_once: bool  # at most one same-model retry whatever max_retries says
    fail_over: bool
    breaker: BreakerEffect


POLICY: dict[FailureReason, Policy] = {
    FailureReason.RATE_LIMIT: Policy(True, False, True, BreakerEffect.COUNT),
    FailureReason.OVERLOADED: Policy(True, False, True, BreakerEffect.COUNT),
    FailureReason.SERVER_ERROR: Policy(True, False, True, BreakerEffect.COUNT),
    FailureReason.TIMEOUT: Policy(False, False, True, BreakerEffect.COUNT),
    FailureReason.CONNECTION: Policy(False, False, True, BreakerEffect.COUNT),
    FailureReason.INVALID_RESPONSE: Policy(True, True, True, BreakerEffect.COUNT),
    FailureReason.AUTH: Policy(False, False, True, BreakerEffect.OPEN_PROVIDER_AUTH),
    FailureReason.BILLING: Policy(False, False, True, BreakerEffect.OPEN_PROVIDER_BILLING),
    FailureReason.NOT_FOUND: Policy(False, False, True, BreakerEffect.OPEN_MODEL_MAX),
    FailureReason.CONTEXT_OVERFLOW: Policy(False, False, True, BreakerEffect.IGNORE),
    FailureReason.CONTENT_FILTER: Policy(False, False, True, BreakerEffect.IGNORE),
    FailureReason.BAD_REQUEST: Policy(False, False, False, BreakerEffect.IGNORE),
    FailureReason.CANCELLED: Policy(False, False, False, BreakerEffect.IGNORE),
    FailureReason.UNAVAILABLE: Policy(False, False, True, BreakerEffect.IGNORE),
    FailureReason.INCAPABLE: Policy(False, False, True, BreakerEffect.IGNORE),
}


def policy(reason: FailureReason) -> Policy:
    return POLICY[reason]
