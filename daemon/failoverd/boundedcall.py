"""One small HTTP call within a time limit, as the credential sources make them: Google's
token endpoint and metadata server (googletoken.py), the AWS container endpoint and instance
metadata service, STS and the IAM Identity Center portal (awsmetadata.py and the modules
calling through it).

The HTTP client's errors stop here: no connection, no answer within the time limit or one too
long is a `CallFailed`, which each credential module turns into its own error (always the
endpoint's trouble, never the credentials'), as is an answer of a `transient_status`.
"""

from __future__ import annotations

import socket
from typing import AnyStr

from failoverd.http1 import Headers, HttpClientError, Requester
from failoverd.timeouts import timeout

__all__ = ["CallFailed", "call", "transient_status"]


class CallFailed(Exception):
    """The call got no usable answer. `no_host`: the host name does not resolve (no such
    host, not a resolver's temporary failure)."""

    def __init__(self, message: str, *, no_host: bool = False) -> None:
        super().__init__(message)
        self.no_host = no_host


async def call(client: Requester, method: str, url: str, headers: dict[str, str],
               seconds: float, data: bytes | None = None, *, limit: int,
               where: str) -> tuple[int, Headers, bytes]:
    """(status, headers, body) of one call, within `seconds` (connecting included); a body
    over `limit` bytes is a `CallFailed`. `where`: the URL as errors show it (without its
    secrets)."""
    resp = None
    try:
        with timeout(seconds):
            resp = await client.request(method, url, headers=headers, data=data,
                                        connect_timeout=seconds)
            body = await resp.read_upto(limit + 1)
    except BaseException as exc:
        if resp is not None:
            resp.close()
        if isinstance(exc, TimeoutError):
            raise CallFailed(f"{where}: no answer within {seconds:g} s") from None
        if isinstance(exc, HttpClientError | OSError):
            cause = exc if isinstance(exc, socket.gaierror) else exc.__cause__
            raise CallFailed(f"{where}: {exc}",
                             no_host=isinstance(cause, socket.gaierror)
                             and cause.errno != socket.EAI_AGAIN) from None
        raise
    if len(body) > limit:
        resp.close()
        raise CallFailed(f"{where}: the answer is too long (over {limit // 1024} KiB)")
    resp.release()
    return resp.status, resp.headers, body


def transient_status(status: int) -> bool:
    """Whether an error status is the endpoint's trouble (throttled, down), not a refusal of
    the credentials."""
    return status >= 500 or status == 429


def masked(text: AnyStr, *secrets: str) -> AnyStr:
    """`text` (an error page, which may echo the request) with each of `secrets` as
    ``***``; an empty secret masks nothing."""
    for secret in secrets:
        if secret:
            if isinstance(text, bytes):
                text = text.replace(secret.encode(), b"***")
            else:
                text = text.replace(secret, "***")
    return text
