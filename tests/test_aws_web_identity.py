"""AssumeRoleWithWebIdentity (awswebidentity.py): EKS IAM roles for service accounts
(``AWS_WEB_IDENTITY_TOKEN_FILE`` + ``AWS_ROLE_ARN``) and a profile's
``web_identity_token_file``, against a fake STS on 127.0.0.1 that speaks its Query protocol,
its XML answer and its error bodies: where the chain takes it, the unsigned call with the
token read from the file at every fetch, the refresh on the injected clock, chained roles,
how its errors count, the configuration errors, and the daemon signing Bedrock requests
with the role's keys."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web

from failoverd import awswebidentity, config
from failoverd.awscreds import (
    REFRESH_AHEAD,
    AssumeRole,
    AwsConfigError,
    AwsCredentials,
    AwsCredentialsError,
    SharedFile,
    WebIdentityRole,
    choose_source,
    open_source,
)
from failoverd.clock import ManualClock
from failoverd.config import ConfigError
from failoverd.http1 import HttpClient
from tests.fakes.bedrock import FakeBedrock, fake_bedrock
from tests.test_aws_profiles import NO_IMDS, ROLE, home, keys
from tests.test_aws_profiles_fake import FakeAws, issued
from tests.test_bedrock_e2e import daemon_config
from tests.test_provider_bedrock import HELLO

__all__ = ["fake_bedrock"]  # the fixture

_NS = "https://sts.amazonaws.com/doc/2011-06-15/"
JWT = ("eyJhbGciOiJSUzI1NiIsImtpZCI6ImZha2UifQ.eyJhdWQiOlsic3RzLmFtYXpvbmF3cy5jb20iXSwic3ViIjoic3"
       "lzdGVtOnNlcnZpY2VhY2NvdW50OmRlZmF1bHQ6ZmFpbG92ZXJkIn0.c2lnbmF0dXJlLW9uZQ")
JWT2 = JWT[:-3] + "dHdv"  # the token the kubelet writes next
ROLE2 = "arn:aws:iam::210987654321:role/bedrock-cross-account"


@dataclass
class FakeWebSts(FakeAws):
    """`FakeAws`'s STS, which also answers AssumeRoleWithWebIdentity: a token in `tokens`
    assumes a role of `web_roles`; one in `expired` is ExpiredTokenException; any other is
    InvalidIdentityToken (the issuer's keys do not verify it)."""

    tokens: set[str] = field(default_factory=set)
    expired: set[str] = field(default_factory=set)
    web_roles: set[str] = field(default_factory=set)
    echo: bool = False  # a gateway's error page that echoes the request
    on_web: Callable[[], None] | None = None  # called at every AssumeRoleWithWebIdentity
    # (form, headers) of each AssumeRoleWithWebIdentity call
    web_calls: list[tuple[dict[str, str], dict[str, str]]] = field(default_factory=list)

    async def _sts(self, request: web.Request) -> web.Response:
        body = await request.read()
        form = dict(parse_qsl(body.decode()))
        if form.get("Action") != "AssumeRoleWithWebIdentity":
            return await super()._sts(request)  # AssumeRole, signed
        self.web_calls.append((form, dict(request.headers)))
        if self.on_web is not None:
            self.on_web()
        if self.echo:
            return web.Response(status=502, text=f"<html>bad gateway for {body.decode()}"
                                f"</html>", content_type="text/html")
        if self.sts_fail:
            return self.sts_error(*self.sts_fail.pop(0))
        token, role = form.get("WebIdentityToken", ""), form.get("RoleArn", "")
        if token in self.expired:
            return self.sts_error(400, "ExpiredTokenException", "Token expired: current "
                                  f"date/time {int(self.now())} must be before the expiration "
                                  f"date/time{int(self.now()) - 60}")
        if token not in self.tokens:
            return self.sts_error(400, "InvalidIdentityToken", "Couldn't retrieve "
                                  "verification key from your identity provider,  please "
                                  "reference AssumeRoleWithWebIdentity documentation for "
                                  "requirements")
        if role not in self.web_roles:
            return self.sts_error(403, "AccessDenied", "Not authorized to perform "
                                  "sts:AssumeRoleWithWebIdentity")
        key, secret, session = self.issue()
        duration = int(form.get("DurationSeconds", "3600"))
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.now() + duration))
        name = form.get("RoleSessionName", "")
        xml = f"""<AssumeRoleWithWebIdentityResponse xmlns="{_NS}">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:default:failoverd</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>{role.replace(":iam::", ":sts::").replace(":role/", ":assumed-role/")}/{name}</Arn>
      <AssumedRoleId>AROACLKWSDQRAOEXAMPLE:{name}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>{session}</SessionToken>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <Expiration>{expires}</Expiration>
      <AccessKeyId>{key}</AccessKeyId>
    </Credentials>
    <Provider>arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/FAKE</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata>
    <RequestId>ad4156e9-bce1-11e2-82e6-6b6efEXAMPLE</RequestId>
  </ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>
"""
        return web.Response(text=xml, content_type="text/xml")


@pytest.fixture
async def fake_sts() -> AsyncIterator[Callable[..., Awaitable[FakeWebSts]]]:
    started: list[FakeWebSts] = []

    async def make(**kwargs: Any) -> FakeWebSts:
        fake = await FakeWebSts(**kwargs).start()
        assert isinstance(fake, FakeWebSts)
        started.append(fake)
        return fake

    yield make
    for fake in started:
        await fake.close()


MakeSts = Callable[..., Awaitable[FakeWebSts]]


def token_file(tmp_path: Path, token: str = JWT, *, at: float | None = None) -> Path:
    """The projected token file, modified at `at` (wall time; by default an hour ago)."""
    path = tmp_path / "token"
    path.write_text(token + "\n")
    stamp = time.time() - 3600 if at is None else at
    os.utime(path, (stamp, stamp))
    return path


def irsa(path: Path, sts: FakeWebSts, **more: str) -> dict[str, str]:
    """The environment EKS gives a pod with a service account's role."""
    return {"AWS_WEB_IDENTITY_TOKEN_FILE": str(path), "AWS_ROLE_ARN": ROLE,
            "AWS_ENDPOINT_URL_STS": sts.url, **NO_IMDS, **more}


# ------------------------------------------------------------------ the call


async def test_the_environment_assumes_the_role_unsigned_with_the_file_token(
        tmp_path: Path, fake_sts: MakeSts, http_client: HttpClient) -> None:
    clock = ManualClock()
    sts = await fake_sts(now=clock.time, tokens={JWT}, web_roles={ROLE})
    env = irsa(token_file(tmp_path), sts, AWS_ROLE_SESSION_NAME="failoverd-pod")
    source = choose_source(env, region="us-east-1")
    assert source == WebIdentityRole("", ROLE, str(tmp_path / "token"), sts.url,
                                     "failoverd-pod")
    creds = await open_source(source, client=http_client, clock=clock).get()
    key, secret, session = issued(1)
    assert creds == AwsCredentials(key, secret, session, expires=clock.time() + 3600)
    [(form, headers)] = sts.web_calls
    assert form == {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
                    "RoleArn": ROLE, "RoleSessionName": "failoverd-pod",
                    "WebIdentityToken": JWT}  # the file's token, its line break dropped
    # unsigned, as botocore sends it: no SigV4 header at all
    assert not {"Authorization", "X-Amz-Date", "X-Amz-Security-Token"} & set(headers)
    assert headers["Content-Type"].startswith("application/x-www-form-urlencoded")


async def test_a_rotated_token_is_read_at_the_refresh(
        tmp_path: Path, fake_sts: MakeSts, http_client: HttpClient) -> None:
    """The kubelet rewrites the token file; the role is assumed again REFRESH_AHEAD seconds
    before its credentials expire, with the token the file holds then; concurrent calls
    share one STS call."""
    clock = ManualClock()
    sts = await fake_sts(now=clock.time, tokens={JWT, JWT2}, web_roles={ROLE})
    path = token_file(tmp_path)
    source = open_source(choose_source(irsa(path, sts)), client=http_client, clock=clock)
    first = await asyncio.gather(*(source.get() for _ in range(5)))
    assert {c.access_key_id for c in first} == {issued(1)[0]} and len(sts.web_calls) == 1
    clock.advance(3600 - REFRESH_AHEAD - 1)
    token_file(tmp_path, JWT2)
    assert (await source.get()).access_key_id == issued(1)[0]  # not due yet
    assert len(sts.web_calls) == 1
    clock.advance(2)
    # the first call due fetches; those meanwhile keep the current ones, which still serve
    assert (await source.get()).access_key_id == issued(2)[0]
    again = await asyncio.gather(*(source.get() for _ in range(5)))
    assert {c.access_key_id for c in again} == {issued(2)[0]}
    assert [form["WebIdentityToken"] for form, _ in sts.web_calls] == [JWT, JWT2]
    # no session name given: failoverd-<epoch seconds>, as botocore's botocore-session-<...>
    assert [form["RoleSessionName"] for form, _ in sts.web_calls] == \
        [f"failoverd-{int(clock.time() - 3600 + REFRESH_AHEAD - 1)}",
         f"failoverd-{int(clock.time())}"]


# ------------------------------------------------------------------ errors


async def _fetch(source: WebIdentityRole, client: HttpClient,
                 clock: ManualClock) -> AwsCredentialsError:
    with pytest.raises(AwsCredentialsError) as err:
        await awswebidentity.fetch(client, source, clock)
    assert JWT not in str(err.value)
    return err.value


@pytest.mark.parametrize(("fail", "transient", "shown"), [
    ((400, "Throttling", "Rate exceeded"), True, "HTTP 400 Throttling: Rate exceeded"),
    ((503, "ServiceUnavailable", "Service is unavailable"), True, "ServiceUnavailable"),
    ((400, "IDPCommunicationError", "The identity provider could not be reached"), True,
     "IDPCommunicationError"),
    ((403, "IDPRejectedClaim", "Claim rejected"), False, "IDPRejectedClaim"),
    ((400, "InvalidParameterValue", "Bad RoleSessionName"), False, "InvalidParameterValue"),
])
async def test_sts_errors_count_as_for_assume_role(
        tmp_path: Path, fake_sts: MakeSts, http_client: HttpClient,
        fail: tuple[int, str, str], transient: bool, shown: str) -> None:
    clock = ManualClock()
    sts = await fake_sts(now=clock.time, tokens={JWT}, web_roles={ROLE}, sts_fail=[fail])
    source = choose_source(irsa(token_file(tmp_path), sts))
    assert isinstance(source, WebIdentityRole)
    err = await _fetch(source, http_client, clock)
    assert err.transient is transient and shown in str(err)
    assert f"STS AssumeRoleWithWebIdentity of {ROLE} (AWS_WEB_IDENTITY_TOKEN_FILE)" in str(err)


async def test_a_refused_token_is_auth_unless_the_file_just_changed(
        tmp_path: Path, fake_sts: MakeSts, http_client: HttpClient) -> None:
    """An expired or unverifiable token from a file the kubelet last wrote long ago is a
    refusal (auth); from a file written in the last seconds it may be a rotation under way
    (the Go SDK retries InvalidIdentityToken): transient, the file read again next time."""
    clock = ManualClock()
    sts = await fake_sts(now=clock.time, tokens=set(), expired={JWT}, web_roles={ROLE})
    path = token_file(tmp_path)
    source = choose_source(irsa(path, sts))
    assert isinstance(source, WebIdentityRole)
    err = await _fetch(source, http_client, clock)
    assert not err.transient and "HTTP 400 ExpiredTokenException: Token expired" in str(err)
    token_file(tmp_path, at=clock.time() - 2)
    err = await _fetch(source, http_client, clock)
    assert err.transient and "the token file changed 2 s ago" in str(err)
    token_file(tmp_path, JWT2)  # unknown to the issuer's keys
    err = await _fetch(source, http_client, clock)
    assert not err.transient and "InvalidIdentityToken: Couldn't retrieve" in str(err)
    token_file(tmp_path, JWT2, at=clock.time())
    assert (await _fetch(source, http_client, clock)).transient
    # rewritten while STS answered: the next read has the new token
    token_file(tmp_path, JWT2)
    sts.on_web = lambda: token_file(tmp_path, JWT, at=time.time() - 1800)
    err = await _fetch(source, http_client, clock)
    assert err.transient and "changed since it was read" in str(err)
    sts.on_web = None
    # a role that does not trust the token is a refusal, the file's age aside
    token_file(tmp_path, JWT2, at=clock.time())
    sts.tokens.add(JWT2)
    sts.web_roles.clear()
    err = await _fetch(source, http_client, clock)
    assert not err.transient and "HTTP 403 AccessDenied" in str(err)


async def test_the_token_never_shows(tmp_path: Path, fake_sts: MakeSts,
                                     http_client: HttpClient, caplog: Any) -> None:
    clock = ManualClock()
    sts = await fake_sts(now=clock.time, echo=True)
    source = choose_source(irsa(token_file(tmp_path), sts))
    assert isinstance(source, WebIdentityRole)
    err = await _fetch(source, http_client, clock)
    assert err.transient and "***" in str(err) and JWT[:40] not in str(err)
    sts.echo = False
    sts.tokens.add(JWT)
    sts.web_roles.add(ROLE)
    caplog.set_level("DEBUG")
    creds = await open_source(source, client=http_client, clock=clock).get()
    assert creds.access_key_id == issued(1)[0]
    assert JWT[:40] not in caplog.text and issued(1)[0] in caplog.text
    assert JWT[:40] not in repr(source)


async def test_the_token_file_is_read_at_call_time(
        tmp_path: Path, fake_sts: MakeSts, http_client: HttpClient) -> None:
    """Missing at load is no configuration error (botocore reads it only when it assumes
    the role; a reload must not fail while a volume is remounted): the call fails (auth),
    naming the variable, and works once the file is there."""
    clock = ManualClock()
    sts = await fake_sts(now=clock.time, tokens={JWT}, web_roles={ROLE})
    path = tmp_path / "token"
    source = choose_source(irsa(path, sts))
    assert isinstance(source, WebIdentityRole)
    err = await _fetch(source, http_client, clock)
    assert not err.transient and f"AWS_WEB_IDENTITY_TOKEN_FILE {path} does not exist" in str(err)
    os.mkfifo(path)  # would block the event loop if opened
    assert "is not a regular file" in str(await _fetch(source, http_client, clock))
    path.unlink()
    path.write_text("x" * 20_001)
    assert "too long for a token" in str(await _fetch(source, http_client, clock))
    token_file(tmp_path, "")
    assert not (await _fetch(source, http_client, clock)).transient  # empty, long ago
    token_file(tmp_path, "", at=clock.time())
    assert (await _fetch(source, http_client, clock)).transient  # empty, being written
    token_file(tmp_path)
    assert (await awswebidentity.fetch(http_client, source, clock)).access_key_id == \
        issued(1)[0]
    assert sts.web_calls[-1][0]["WebIdentityToken"] == JWT and len(sts.web_calls) == 1


# ------------------------------------------------------------------ the chain


def test_where_the_chain_takes_it(tmp_path: Path) -> None:
    path = tmp_path / "token"
    env = {**home(tmp_path, credentials="[default]\n" + keys("AKIADEFAULT") +
                  "[named]\n" + keys("AKIANAMED"),
                  config=f"[profile wid]\nrole_arn = {ROLE2}\nweb_identity_token_file = /p/t\n"
                  "role_session_name = from-profile\nduration_seconds = 900\n"
                  f"[profile merged]\nrole_arn = {ROLE2}\nweb_identity_token_file = /p/t\n"
                  "role_session_name = from-profile\n"),
           "AWS_WEB_IDENTITY_TOKEN_FILE": str(path), "AWS_ROLE_ARN": ROLE}
    sts = "https://sts.eu-west-1.amazonaws.com"
    env_role = WebIdentityRole("", ROLE, str(path), sts)
    # before the default profile's keys, after the environment's
    assert choose_source(env, region="eu-west-1") == env_role
    assert isinstance(choose_source({**env, "AWS_ACCESS_KEY_ID": "AKIAENV",
                                     "AWS_SECRET_ACCESS_KEY": "s"}), AwsCredentials)
    # AWS_PROFILE still lets the environment's web identity first (botocore's session has
    # no explicit profile then), each of its keys over the profile's
    assert choose_source({**env, "AWS_PROFILE": "named"}, region="eu-west-1") == env_role
    assert choose_source({**env, "AWS_PROFILE": "merged"}, region="eu-west-1") == \
        WebIdentityRole("", ROLE, str(path), sts, "from-profile")
    no_arn = {k: v for k, v in env.items() if k != "AWS_ROLE_ARN"}
    assert choose_source({**no_arn, "AWS_PROFILE": "merged"}, region="eu-west-1") == \
        WebIdentityRole("", ROLE2, str(path), sts, "from-profile")
    # AWS_ROLE_ARN alone (no AWS_WEB_IDENTITY_TOKEN_FILE) stands for the profile's role_arn
    no_file = {k: v for k, v in env.items() if k != "AWS_WEB_IDENTITY_TOKEN_FILE"}
    assert choose_source({**no_file, "AWS_PROFILE": "merged"}, region="eu-west-1") == \
        WebIdentityRole("merged", ROLE, "/p/t", sts, "from-profile")
    assert isinstance(choose_source(no_file), SharedFile)  # nothing without a token file
    # aws_profile: the profile's own, the environment's aside
    assert choose_source(env, "wid", region="eu-west-1") == \
        WebIdentityRole("wid", ROLE2, "/p/t", sts, "from-profile", 900)
    named = choose_source(env, "named")
    assert isinstance(named, SharedFile) and named.profile == "named"


async def test_a_web_identity_role_sources_a_chained_role(
        tmp_path: Path, fake_sts: MakeSts, http_client: HttpClient) -> None:
    clock = ManualClock()
    sts = await fake_sts(now=clock.time, tokens={JWT}, web_roles={ROLE},
                         trust={ROLE2: {issued(1)[0]}})
    path = token_file(tmp_path)
    env = {**home(tmp_path, config=f"[profile cross]\nrole_arn = {ROLE2}\n"
                  "source_profile = pod\nrole_session_name = cross\n"
                  f"[profile pod]\nrole_arn = {ROLE}\nweb_identity_token_file = {path}\n"),
           "AWS_ENDPOINT_URL_STS": sts.url}
    found = choose_source(env, "cross")
    assert isinstance(found, AssumeRole) and found.source == \
        WebIdentityRole("pod", ROLE, str(path), sts.url)
    creds = await open_source(found, client=http_client, clock=clock).get()
    assert creds.access_key_id == issued(2)[0]
    # the web identity role, unsigned, then the chained one signed with its keys
    assert [f["WebIdentityToken"] for f, _ in sts.web_calls] == [JWT]
    assert [(c["Action"], c["_caller"], c["RoleArn"]) for c in sts.sts_calls] == \
        [("AssumeRole", issued(1)[0], ROLE2)]


# ------------------------------------------------------------------ configuration errors


@pytest.mark.parametrize(("more", "message"), [
    ({"AWS_ROLE_ARN": ""}, "environment variable AWS_WEB_IDENTITY_TOKEN_FILE is set (EKS IAM "
     "roles for service accounts), but AWS_ROLE_ARN is not: the role to assume"),
    ({"AWS_ROLE_ARN": "bedrock-invoke"},
     "environment variable AWS_ROLE_ARN is not a role ARN: 'bedrock-invoke'"),
    ({"AWS_ROLE_SESSION_NAME": "has space"},
     "environment variable AWS_ROLE_SESSION_NAME must be 2 to 64 letters"),
    ({"AWS_ENDPOINT_URL_STS": "ftp://x"},
     "environment variable AWS_ENDPOINT_URL_STS is not a usable URL"),
])
def test_environment_problems_name_the_variable(tmp_path: Path, more: dict[str, str],
                                                message: str) -> None:
    env = {"AWS_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "token"), "AWS_ROLE_ARN": ROLE,
           **NO_IMDS, **more}
    with pytest.raises(AwsConfigError) as err:
        choose_source(env)
    assert str(err.value).startswith(message), str(err.value)
    # a default profile without role_arn is named too
    if more == {"AWS_ROLE_ARN": ""}:
        with pytest.raises(AwsConfigError, match=r"and profile \[default\] has no role_arn"):
            choose_source({**env, **home(tmp_path, credentials="[default]\n" + keys())})


# ------------------------------------------------------------------ through the daemon


async def test_daemon_signs_with_the_web_identity_role(
        tmp_path: Path, fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
        fake_sts: MakeSts, fake_openai: Any, start_daemon: Any) -> None:
    sts = await fake_sts(tokens={JWT}, web_roles={ROLE})
    key, secret, session = issued(1)
    fake = await fake_bedrock(access_key=key, secret_key=secret, session_token=session)
    backup = await fake_openai()
    env = irsa(token_file(tmp_path), sts, AWS_ROLE_SESSION_NAME="failoverd-e2e")
    d = await start_daemon(daemon_config(fake, backup.url), env=env)
    for _ in range(2):
        raw = await d.openai.chat.completions.with_raw_response.create(
            model="default", messages=HELLO["messages"])
        assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
    assert fake.auth_failures == [] and backup.requests == []
    assert fake.requests[-1].headers["Authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={key}/")
    assert fake.requests[-1].headers["X-Amz-Security-Token"] == session
    [(form, headers)] = sts.web_calls  # assumed once, unsigned
    assert (form["RoleArn"], form["RoleSessionName"], form["WebIdentityToken"]) == \
        (ROLE, "failoverd-e2e", JWT)
    assert "Authorization" not in headers
    status = (await d.http.get("/v1/status")).text
    assert JWT[:40] not in status and secret not in status


def test_the_load_reports_it_at_the_provider(tmp_path: Path) -> None:
    body = ('[providers.b]\nkind = "bedrock"\nregion = "us-east-1"\n'
            '[models."b/m"]\nprovider = "b"\n')
    env = {"AWS_WEB_IDENTITY_TOKEN_FILE": str(tmp_path / "token"), **NO_IMDS}
    with pytest.raises(ConfigError) as err:
        config.loads(body, env=env)
    assert err.value.problems[0].startswith("providers.b") and \
        "but AWS_ROLE_ARN is not" in err.value.problems[0], err.value.problems
    loaded = config.loads(body, env={**env, "AWS_ROLE_ARN": ROLE})  # no token file yet: fine
    assert loaded is not None
