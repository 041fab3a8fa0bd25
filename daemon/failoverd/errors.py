"""failoverd's exceptions.

The tree::

    FailoverdError
    ├── ConfigError            the configuration is invalid (.problems: list of "key.path: message")
    ├── RequestError           the client's request is unusable (.status 400/413/..., .param)
    │   └── TranslationError   the request cannot be expressed for the target provider
    ├── UpstreamError          one upstream attempt failed (.reason, .status, .provider, .model,
    │   │                      .retry_after, .body: the upstream error body for bad_request
    │   │                      passthrough, .local: failoverd's own resources ran out,
    │   │                      .upstream_request_id: the id the upstream gave its answer)
    │   └── ContextRefused     context_policy "fail": a candidate's window is too small, the
    │                          request ends without calling it
    ├── NoModelAvailable       every candidate failed or was skipped (.attempts)
    ├── ListenError            the daemon cannot get its listening socket (bad socket
    │                          activation, path in use by a live daemon, bind failure)
    └── StateError             the state file cannot be written in ``daemon.state_dir``

Edge exceptions (the HTTP client's, aiomqtt's, OSError from sockets) are translated into these at
the edges (provider adapters, MQTT publisher) and never travel inward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from failoverd.failures import FailureReason


class FailoverdError(Exception):
    """Root of failoverd's exceptions."""


class ConfigError(FailoverdError):
    """The configuration failed validation; every problem is listed by key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


class RequestError(FailoverdError):
    """The client sent something failoverd cannot serve. The message names the problem."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str = "invalid_request_error",
    ) -> None:
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        super().__init__(message)


class TranslationError(RequestError):
    """Part of the request has no equivalent on the target provider's API."""


class UpstreamError(FailoverdError):
    """One upstream attempt failed, classified at the adapter edge."""

    def __init__(
        self,
        reason: FailureReason,
        message: str,
        *,
        status: int | None = None,
        provider: str = "",
        model: str = "",
        retry_after: float | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        local: bool = False,
    ) -> None:
        self.reason = reason
        self.message = message
        # an HTTP error status, or None: an error inside a 200 (a stream's error event, an
        # error body) or with no response at all has none to report to clients
        self.status = status if status is not None and status >= 400 else None
        self.provider = provider
        self.model = model
        self.retry_after = retry_after
        self.body = body
        self.content_type = content_type
        # failoverd's own trouble (out of file descriptors, memory or ports), not the
        # upstream's: it fails over like any connection failure, but no breaker counts it
        self.local = local
        # the request id of the upstream's answer, when it sent one (requestid.py; set by
        # the dispatcher for the attempt that failed)
        self.upstream_request_id: str | None = None
        super().__init__(f"{reason}: {message}")


class ContextRefused(UpstreamError):
    """The context policy `fail` ended the request at a candidate whose context window is too
    small for it (no call was made): a 400 context_overflow to the client."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One line of the attempts list returned to a client when every candidate failed."""

    model: str
    reason: str
    status: int | None
    message: str
    # the id the upstream gave its answer (requestid.py); None: no call, or none sent
    upstream_request_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "reason": self.reason,
            "status": self.status,
            "message": self.message,
            "upstream_request_id": self.upstream_request_id,
        }


class NoModelAvailable(FailoverdError):
    """Every candidate failed or was skipped."""

    def __init__(self, attempts: list[Attempt], retry_after: float) -> None:
        self.attempts = attempts
        self.retry_after = retry_after
        super().__init__("no model available: " + "; ".join(
            f"{a.model}: {a.reason}" for a in attempts) if attempts else "no candidates")


class ListenError(FailoverdError):
    """The daemon cannot get its listening socket (bad activation, path in use, bind failure)."""


class StateError(FailoverdError):
    """The state file cannot be written in ``daemon.state_dir`` (checked at start)."""
