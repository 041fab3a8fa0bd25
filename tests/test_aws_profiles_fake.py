"""A fake of the AWS endpoints a profile's credentials come from, on 127.0.0.1 (a real aiohttp
server), speaking their wire formats and error bodies as AWS documents them:

- STS (Query protocol): ``POST /`` of ``Action=AssumeRole&Version=2011-06-15&RoleArn&
  RoleSessionName[&DurationSeconds][&ExternalId]``, SigV4-signed (service ``sts``), answering
  ``AssumeRoleResponse`` XML, or ``ErrorResponse`` XML (``Type``, ``Code``, ``Message``):
  ``InvalidClientTokenId`` for an unknown key, ``SignatureDoesNotMatch``, ``AccessDenied``
  for a caller the role does not trust or a wrong external id, ``ValidationError`` past the
  role's maximum duration;
- the IAM Identity Center portal: ``GET /federation/credentials?role_name&account_id`` with
  ``x-amz-sso_bearer_token``, answering ``{"roleCredentials": {...}}`` (expiration in ms), or
  401 ``UnauthorizedException`` / 403 ``ForbiddenException`` (JSON ``message``, the type in
  ``x-amzn-ErrorType``);
- SSO OIDC CreateToken: ``POST /token`` (JSON ``clientId``, ``clientSecret``, ``grantType``,
  ``refreshToken``), answering ``{"accessToken", "tokenType", "expiresIn", "refreshToken"}``
  or 400 ``{"error": "invalid_grant", "error_description"}``.

Credentials it issues are known to it at once, so a role assumed with another role's
credentials (a chain) is checked like any caller. Issued keys are deterministic
(``ASIAFAKEROLE000000001``, ...), so a fake Bedrock can be told the first ones beforehand.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote

import orjson
import pytest
from aiohttp import web

from tests.fakes.base import AppServer

__all__ = ["FakeAws", "fake_aws", "issued"]

SOURCE_KEY = "AKIAFAKESOURCE000001"
SOURCE_SECRET = "fake/source/Secret+Key000000000000000000"
CALLER = "arn:aws:iam::123456789012:user/failoverd"
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})")
_NS = "https://sts.amazonaws.com/doc/2011-06-15/"


def issued(n: int) -> tuple[str, str, str]:
    """The `n`th credentials (from 1) the fake issues: (key id, secret, session token)."""
    return (f"ASIAFAKEROLE{n:09d}", f"fake/role/Secret+{n:023d}", f"FwoGZXIvYXdzEFAKE//token{n}")


def _sts_signature(method: str, path: str, query: str, headers: dict[str, str], body: bytes,
                   signed: list[str], stamp: str, region: str, secret: str) -> str:
    """The SigV4 signature STS computes for a request as received (written apart from
    failoverd's signer)."""
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~"))
                   for k, v in parse_qsl(query, keep_blank_values=True))
    lines = "".join(f"{n}:{' '.join(headers.get(n, '').split())}\n" for n in signed)
    creq = "\n".join([method, path or "/", "&".join(f"{k}={v}" for k, v in pairs), lines,
                      ";".join(signed), hashlib.sha256(body).hexdigest()])
    scope = f"{stamp[:8]}/{region}/sts/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope,
                         hashlib.sha256(creq.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (stamp[:8], region, "sts", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


@dataclass
class FakeAws(AppServer):
    """See the module docstring. `now`: the wall clock its expirations count from."""

    now: Callable[[], float] = time.time
    region: str = "us-east-1"
    # access key -> (secret, session token): the callers STS knows
    keys: dict[str, tuple[str, str]] = field(
        default_factory=lambda: {SOURCE_KEY: (SOURCE_SECRET, "")})
    trust: dict[str, set[str]] = field(default_factory=dict)  # role ARN -> allowed keys
    external_ids: dict[str, str] = field(default_factory=dict)  # role ARN -> its ExternalId
    max_duration: int = 3600
    sts_fail: list[tuple[int, str, str]] = field(default_factory=list)  # next answers
    sts_calls: list[dict[str, str]] = field(default_factory=list)  # forms, with "_caller"
    sso_tokens: set[str] = field(default_factory=set)
    sso_roles: set[tuple[str, str]] = field(default_factory=set)  # (account, role)
    sso_fail: list[int] = field(default_factory=list)
    sso_calls: list[tuple[str, str, str]] = field(default_factory=list)  # role, account, token
    sso_lasts: float = 3600.0
    # (clientId, clientSecret, refreshToken) that CreateToken accepts
    refresh: set[tuple[str, str, str]] = field(default_factory=set)
    oidc_calls: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0
    on_sts: Callable[[], None] | None = None  # called at every STS request
    url: str = ""

    async def start(self) -> FakeAws:
        app = web.Application()
        app.router.add_post("/", self._sts)
        app.router.add_get("/federation/credentials", self._portal)
        app.router.add_post("/token", self._oidc)
        await self._serve(app, "")
        return self

    def issue(self) -> tuple[str, str, str]:
        self.count += 1
        key, secret, token = issued(self.count)
        self.keys[key] = (secret, token)
        return key, secret, token

    # ------------------------------------------------------------------ STS

    @staticmethod
    def sts_error(status: int, code: str, message: str) -> web.Response:
        kind = "Receiver" if status >= 500 else "Sender"
        body = (f'<ErrorResponse xmlns="{_NS}">\n  <Error>\n    <Type>{kind}</Type>\n'
                f"    <Code>{code}</Code>\n    <Message>{message}</Message>\n  </Error>\n"
                "  <RequestId>4a5b6c7d-fake-11e0-8154-cbc7ccf896c7</RequestId>\n"
                "</ErrorResponse>\n")
        return web.Response(status=status, text=body, content_type="text/xml")

    def _caller(self, request: web.Request, body: bytes) -> tuple[str, web.Response | None]:
        match = _AUTH.fullmatch(request.headers.get("Authorization", ""))
        if match is None:
            return "", self.sts_error(400, "MissingAuthenticationToken",
                                      "Request is missing Authentication Token")
        key, date, region, service, signed_text, signature = match.groups()
        if key not in self.keys:
            return key, self.sts_error(403, "InvalidClientTokenId",
                                       "The security token included in the request is invalid.")
        secret, token = self.keys[key]
        signed = signed_text.split(";")
        stamp = request.headers.get("X-Amz-Date", "")
        headers = {k.lower(): v for k, v in request.headers.items()}
        want = _sts_signature(request.method, request.raw_path.split("?")[0],
                              request.query_string, headers, body, signed, stamp, region,
                              secret)
        if region != self.region or service != "sts" or stamp[:8] != date or \
                not hmac.compare_digest(want, signature) or "host" not in signed:
            return key, self.sts_error(
                403, "SignatureDoesNotMatch", "The request signature we calculated does not "
                "match the signature you provided. Check your AWS Secret Access Key and "
                "signing method.")
        if token and (headers.get("x-amz-security-token") != token
                      or "x-amz-security-token" not in signed):
            return key, self.sts_error(403, "InvalidClientTokenId",
                                       "The security token included in the request is invalid.")
        return key, None

    async def _sts(self, request: web.Request) -> web.Response:
        body = await request.read()
        form = dict(parse_qsl(body.decode()))
        key, refused = self._caller(request, body)
        if self.on_sts is not None:
            self.on_sts()
        self.sts_calls.append({**form, "_caller": key,
                               "_type": request.headers.get("Content-Type", "")})
        if self.sts_fail:
            return self.sts_error(*self.sts_fail.pop(0))
        if refused is not None:
            return refused
        if form.get("Action") != "AssumeRole" or form.get("Version") != "2011-06-15":
            return self.sts_error(400, "InvalidAction", "Could not find operation")
        role = form.get("RoleArn", "")
        if key not in self.trust.get(role, set()) or \
                form.get("ExternalId") != self.external_ids.get(role):
            return self.sts_error(403, "AccessDenied", f"User: {CALLER} is not authorized to "
                                  f"perform: sts:AssumeRole on resource: {role}")
        duration = int(form.get("DurationSeconds", "3600"))
        if duration > self.max_duration:
            return self.sts_error(400, "ValidationError", "The requested DurationSeconds "
                                  "exceeds the MaxSessionDuration set for this role.")
        new_key, secret, token = self.issue()
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.now() + duration))
        name = form.get("RoleSessionName", "")
        xml = f"""<AssumeRoleResponse xmlns="{_NS}">
  <AssumeRoleResult>
    <AssumedRoleUser>
      <Arn>{role.replace(":iam::", ":sts::").replace(":role/", ":assumed-role/")}/{name}</Arn>
      <AssumedRoleId>AROA3XFRBF535PLBIFPI4:{name}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{new_key}</AccessKeyId>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <SessionToken>{token}</SessionToken>
      <Expiration>{expires}</Expiration>
    </Credentials>
  </AssumeRoleResult>
  <ResponseMetadata>
    <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>
  </ResponseMetadata>
</AssumeRoleResponse>
"""
        return web.Response(text=xml, content_type="text/xml")

    # ------------------------------------------------------------------ SSO

    @staticmethod
    def json_error(status: int, kind: str, body: dict[str, Any]) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(body),
                            content_type="application/json",
                            headers={"x-amzn-ErrorType": kind})

    async def _portal(self, request: web.Request) -> web.Response:
        token = request.headers.get("x-amz-sso_bearer_token", "")
        role, account = request.query.get("role_name", ""), request.query.get("account_id", "")
        self.sso_calls.append((role, account, token))
        if self.sso_fail:
            status = self.sso_fail.pop(0)
            if status == 429:
                return self.json_error(429, "TooManyRequestsException",
                                       {"message": "Rate exceeded"})
            return self.json_error(status, "InternalServerException",
                                   {"message": "Internal error"})
        if token not in self.sso_tokens:
            return self.json_error(401, "UnauthorizedException",
                                   {"message": "Session token not found or invalid"})
        if (account, role) not in self.sso_roles:
            return self.json_error(403, "ForbiddenException", {"message": "No access"})
        key, secret, session = self.issue()
        return web.json_response({"roleCredentials": {
            "accessKeyId": key, "secretAccessKey": secret, "sessionToken": session,
            "expiration": int((self.now() + self.sso_lasts) * 1000)}})

    async def _oidc(self, request: web.Request) -> web.Response:
        data = await request.json()
        self.oidc_calls.append(data)
        if data.get("grantType") != "refresh_token":
            return self.json_error(400, "UnsupportedGrantTypeException",
                                   {"error": "unsupported_grant_type"})
        given = (data.get("clientId"), data.get("clientSecret"), data.get("refreshToken"))
        if given not in self.refresh:
            return self.json_error(400, "InvalidGrantException", {
                "error": "invalid_grant", "error_description": "Invalid refresh token provided"})
        self.refresh.discard(given)  # refresh tokens serve once: a new one comes back
        n = len(self.oidc_calls)
        token, refresh = f"aoaFAKEaccessToken{n}", f"aorFAKErefreshToken{n}"
        self.sso_tokens.add(token)
        self.refresh.add((given[0], given[1], refresh))
        return web.json_response({"accessToken": token, "tokenType": "Bearer",
                                  "expiresIn": 28800, "refreshToken": refresh})


@pytest.fixture
async def fake_aws() -> AsyncIterator[Callable[..., Awaitable[FakeAws]]]:
    """A factory of started `FakeAws`, closed after the test."""
    started: list[FakeAws] = []

    async def make(**kwargs: Any) -> FakeAws:
        fake = await FakeAws(**kwargs).start()
        started.append(fake)
        return fake

    yield make
    for fake in started:
        await fake.close()
