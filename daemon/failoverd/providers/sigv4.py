"""AWS Signature Version 4 for request headers (the Bedrock adapter's alternative to an API key).

Written with the standard library (hmac, hashlib), as AWS documents it: a canonical request
(method, URI, query, the signed headers, the payload's SHA-256), a string to sign over its
hash, a signing key derived from the secret for the day, region and service, and an
``Authorization`` header naming the credential scope, the signed headers and the signature.

Two details that hand-written signers get wrong against Bedrock:

- The canonical URI of every service but S3 is the request path URI-encoded once more: a
  model id's ``:`` travels as ``%3A`` and is signed as ``%253A``, as botocore signs it.
- A session token (temporary credentials) is sent and signed as ``x-amz-security-token``.

The signer reads the wall clock through an injected ``now`` (seconds since the epoch), so
tests sign at the test suite's instant.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, urlsplit

__all__ = ["ALGORITHM", "Signer", "canonical_request", "signing_key"]

ALGORITHM = "AWS4-HMAC-SHA256"
_UNRESERVED = "-_.~"
# headers never signed: proxies and the client's own stack may change or drop them
_UNSIGNED = frozenset({"authorization", "user-agent", "expect", "x-amzn-trace-id",
                       "content-length", "connection", "accept-encoding"})


def _encode(text: str) -> str:
    """URI-encode as AWS means it: every byte but the unreserved ones, uppercase hex."""
    return quote(text, safe=_UNRESERVED)


def _canonical_uri(path: str, double_encode: bool) -> str:
    if not path:
        return "/"
    if not double_encode:
        return path
    return "/".join(_encode(segment) for segment in path.split("/"))


def _canonical_query(query: str) -> str:
    pairs = [(_encode(k), _encode(v)) for k, v in parse_qsl(query, keep_blank_values=True)]
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def _header_value(value: str) -> str:
    # trimmed, inner runs of spaces collapsed to one
    return " ".join(value.split())


def canonical_request(method: str, path: str, query: str, headers: Mapping[str, str],
                      payload_hash: str, *, double_encode: bool = True
                      ) -> tuple[str, str]:
    """(canonical request, signed header names joined by ';'). `path` and `query` are as
    they go on the wire (percent-encoded); `headers` are the ones to sign, host included."""
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower().strip()
        value = _header_value(value)
        lowered[key] = f"{lowered[key]},{value}" if key in lowered else value
    names = sorted(lowered)
    signed = ";".join(names)
    lines = "".join(f"{name}:{lowered[name]}\n" for name in names)
    text = "\n".join((method.upper(), _canonical_uri(path, double_encode),
                      _canonical_query(query), lines, signed, payload_hash))
    return text, signed


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The day's key: HMAC chain over the date, region, service and "aws4_request"."""
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs requests for one service and region with one set of credentials."""

    access_key: str
    secret_key: str = field(repr=False)
    region: str
    service: str
    session_token: str = field(default="", repr=False)
    now: Callable[[], float] = time.time
    # the request path is URI-encoded once more (every service but S3)
    double_encode: bool = True

    def sign(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
             *, host: str | None = None) -> dict[str, str]:
        """The headers to add to a request so it is signed: ``X-Amz-Date``,
        ``X-Amz-Security-Token`` (with a session token) and ``Authorization``.

        Every header of `headers` is signed except the few a client stack may change
        (User-Agent, Accept-Encoding, ...). `host` is the Host header as it will be sent
        (default: the URL's host, with its port when one is given); the path and query are
        signed as the URL spells them, which must be how they go on the wire.
        """
        parts = urlsplit(url)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.now()))
        date = stamp[:8]
        added = {"X-Amz-Date": stamp}
        if self.session_token:
            added["X-Amz-Security-Token"] = self.session_token
        signed_headers = {name: value for name, value in headers.items()
                          if name.lower() not in _UNSIGNED and name.lower() != "host"}
        signed_headers["host"] = host if host is not None else parts.netloc
        signed_headers.update(added)
        payload_hash = hashlib.sha256(body or b"").hexdigest()
        creq, signed = canonical_request(method, parts.path, parts.query, signed_headers,
                                         payload_hash, double_encode=self.double_encode)
        scope = f"{date}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join((ALGORITHM, stamp, scope,
                             hashlib.sha256(creq.encode()).hexdigest()))
        key = signing_key(self.secret_key, date, self.region, self.service)
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        added["Authorization"] = (f"{ALGORITHM} Credential={self.access_key}/{scope}, "
                                  f"SignedHeaders={signed}, Signature={signature}")
        return added
