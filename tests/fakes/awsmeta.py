"""Fake AWS credential endpoints on 127.0.0.1 (real aiohttp servers): the EC2 instance metadata
service with IMDSv2 sessions, and a container's credential endpoint (ECS task role, EKS Pod
Identity).

`FakeMetadata` speaks both, as AWS documents them:

- ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` (1..21600) answers a
  session token; without that header 400. ``GET /latest/meta-data/iam/security-credentials/``
  answers the role's name and ``.../<role>`` its credentials (``Code``, ``LastUpdated``,
  ``Type``, ``AccessKeyId``, ``SecretAccessKey``, ``Token``, ``Expiration``), only with a
  valid ``X-aws-ec2-metadata-token`` header: 401 otherwise (IMDSv2 required).
- ``GET /creds`` (the container endpoint) answers ``{AccessKeyId, SecretAccessKey, Token,
  Expiration}`` when its ``Authorization`` header is `auth_token`, else 403 with
  ``{"code", "message"}``.

`fail` set to a status makes every credentials answer that status; `hang` makes them never
answer. `v1` lets the metadata GETs through without a session token (IMDSv1, optional on an
instance); `token_status` set makes the token call answer that status (405: IMDSv2 off),
`token_hang` never answer (a container past the hop limit). Every request is logged in
`calls` as (method, path); `v1_calls` counts the GETs served without a token.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from tests.fakes.base import AppServer, fake_fixture

ROLE = "failoverd-bedrock-role"


def iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


@dataclass
class FakeMetadata(AppServer):
    access_key: str = "ASIAFAKEMETADATA0001"
    secret_key: str = "fake/metadata/Secret+Key0000000000000000"
    session_token: str = "metadata-session-token-1"
    expires: float = field(default_factory=lambda: time.time() + 6 * 3600)
    auth_token: str = "container-auth-token"
    fail: int = 0
    hang: bool = False
    v1: bool = False
    v1_calls: int = 0
    token_status: int = 0
    token_hang: bool = False
    calls: list[tuple[str, str]] = field(default_factory=list)
    imds_tokens: set[str] = field(default_factory=set)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> FakeMetadata:
        app = web.Application()
        app.router.add_put("/latest/api/token", self._token)
        app.router.add_get("/latest/meta-data/iam/security-credentials/", self._role)
        app.router.add_get("/latest/meta-data/iam/security-credentials/{role}", self._role_creds)
        app.router.add_get("/creds", self._container)
        await self._serve(app, "")
        return self

    def rotate(self, n: int, expires: float) -> None:
        """New credentials (numbered `n`) expiring at `expires`."""
        self.access_key = f"ASIAFAKEMETADATA{n:04d}"
        self.secret_key = f"fake/metadata/Secret+Key{n:016d}"
        self.session_token = f"metadata-session-token-{n}"
        self.expires = expires

    def _credentials(self) -> dict[str, str]:
        return {"AccessKeyId": self.access_key, "SecretAccessKey": self.secret_key,
                "Token": self.session_token, "Expiration": iso(self.expires)}

    async def _trouble(self) -> web.Response | None:
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail:
            return web.json_response({"code": "Unavailable", "message": "the fake is down"},
                                     status=self.fail)
        return None

    # ------------------------------------------------------------------ IMDSv2

    async def _token(self, request: web.Request) -> web.Response:
        self.calls.append((request.method, request.path))
        if self.token_hang:
            await asyncio.sleep(3600)
        if self.token_status:
            return web.Response(status=self.token_status, text="Method Not Allowed")
        ttl = request.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
            return web.Response(status=400, text="bad ttl")
        token = secrets.token_urlsafe(24)
        self.imds_tokens.add(token)
        return web.Response(text=token, headers={"X-aws-ec2-metadata-token-ttl-seconds": ttl})

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        self.calls.append((request.method, request.path))
        token = request.headers.get("X-aws-ec2-metadata-token")
        if token is None and self.v1:
            self.v1_calls += 1
            return None
        if token not in self.imds_tokens:
            return web.Response(status=401, text="Unauthorized")
        return None

    async def _role(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        return refused or web.Response(text=ROLE)

    async def _role_creds(self, request: web.Request) -> web.Response:
        refused = self._unauthorized(request)
        if refused is not None:
            return refused
        if request.match_info["role"] != ROLE:
            return web.Response(status=404, text="Not Found")
        trouble = await self._trouble()
        if trouble is not None:
            return trouble
        body = {"Code": "Success", "LastUpdated": iso(time.time()), "Type": "AWS-HMAC",
                **self._credentials()}
        # IMDS answers text/plain, pretty-printed
        return web.Response(text=orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())

    # ------------------------------------------------------------------ container

    async def _container(self, request: web.Request) -> web.Response:
        self.calls.append((request.method, request.path))
        if request.headers.get("Authorization") != self.auth_token:
            return web.json_response({"code": "AccessDeniedException",
                                      "message": "Unable to validate the token"}, status=403)
        trouble = await self._trouble()
        return trouble or web.json_response(self._credentials())


fake_metadata = fake_fixture(FakeMetadata, "fake_metadata")
