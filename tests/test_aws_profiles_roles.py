"""Assumed roles and IAM Identity Center roles at run time, against a fake STS, SSO portal and
OIDC on 127.0.0.1 speaking the real XML and JSON (tests/test_aws_profiles_fake.py): the
AssumeRole call signed with the source's keys, chains, refresh before expiry by one call,
errors as auth or transient; the SSO token cache, its refresh, and the login advice."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from failoverd.awscreds import (
    AssumeRole,
    AwsCredentialsError,
    SsoRole,
    choose_source,
    open_source,
)
from failoverd.clock import ManualClock
from failoverd.http1 import HttpClient
from tests.test_aws_profiles import ROLE, home, keys
from tests.test_aws_profiles_fake import SOURCE_KEY, SOURCE_SECRET, FakeAws, fake_aws, issued

__all__ = ["fake_aws"]  # the fixture

MakeAws = Callable[..., Awaitable[FakeAws]]


def role_env(tmp_path: Path, fake: FakeAws, extra: str = "") -> dict[str, str]:
    env = home(tmp_path, config=(
        f"[profile bedrock]\nrole_arn = {ROLE}\nsource_profile = base\n{extra}"
        f"[profile outer]\nrole_arn = {ROLE}-outer\nsource_profile = bedrock\n"),
        credentials="[base]\n" + keys(SOURCE_KEY, SOURCE_SECRET))
    return {**env, "AWS_ENDPOINT_URL_STS": fake.url}


# ------------------------------------------------------------------ STS


async def test_assume_role_signed_with_the_source_and_refreshed(
        tmp_path: Path, fake_aws: MakeAws, http_client: HttpClient) -> None:
    clock = ManualClock(wall=time.time())
    fake = await fake_aws(now=clock.time, trust={ROLE: {SOURCE_KEY}},
                          external_ids={ROLE: "partner-42"})
    env = role_env(tmp_path, fake, "external_id = partner-42\nduration_seconds = 900\n")
    source = choose_source(env, "bedrock", region="us-east-1")
    assert isinstance(source, AssumeRole)
    creds = open_source(source, client=http_client, clock=clock)
    got = await asyncio.gather(*(creds.get() for _ in range(5)))  # one call for all
    key, secret, token = issued(1)
    assert {(c.access_key_id, c.secret_access_key, c.session_token) for c in got} == \
        {(key, secret, token)}
    assert got[0].expires == pytest.approx(clock.time() + 900, abs=1)
    assert len(fake.sts_calls) == 1
    call = fake.sts_calls[0]
    assert call["_caller"] == SOURCE_KEY  # signed (and checked) with the source's keys
    assert call["_type"] == "application/x-www-form-urlencoded; charset=utf-8"
    assert (call["Action"], call["Version"], call["RoleArn"], call["DurationSeconds"],
            call["ExternalId"]) == ("AssumeRole", "2011-06-15", ROLE, "900", "partner-42")
    assert call["RoleSessionName"] == f"failoverd-{int(clock.time())}"
    clock.advance(900 - 301)
    assert (await creds.get()).access_key_id == key
    clock.advance(2)  # within 5 minutes of the expiry: assumed again
    assert (await creds.get()).access_key_id == issued(2)[0]
    assert len(fake.sts_calls) == 2


async def test_chained_roles(tmp_path: Path, fake_aws: MakeAws,
                             http_client: HttpClient) -> None:
    clock = ManualClock(wall=time.time())
    fake = await fake_aws(now=clock.time, trust={ROLE: {SOURCE_KEY}})
    # the outer role trusts the credentials the first assumption gives
    fake.trust[f"{ROLE}-outer"] = {issued(1)[0]}
    source = choose_source(role_env(tmp_path, fake), "outer")
    creds = await open_source(source, client=http_client, clock=clock).get()
    assert creds.access_key_id == issued(2)[0]
    assert [c["_caller"] for c in fake.sts_calls] == [SOURCE_KEY, issued(1)[0]]
    assert [c["RoleArn"] for c in fake.sts_calls] == [ROLE, f"{ROLE}-outer"]


@pytest.mark.parametrize(("fail", "message", "transient"), [
    (None, f"refused: HTTP 403 AccessDenied: User: arn:aws:iam::123456789012:user/failoverd is "
     f"not authorized to perform: sts:AssumeRole on resource: {ROLE}", False),
    ((400, "Throttling", "Rate exceeded"), "refused: HTTP 400 Throttling: Rate exceeded", True),
    ((503, "ServiceUnavailable", "Service is unavailable"), "HTTP 503 ServiceUnavailable", True),
    ((403, "InvalidClientTokenId", "The security token included in the request is invalid."),
     "HTTP 403 InvalidClientTokenId: The security token", False),
    ((400, "ValidationError", "The requested DurationSeconds exceeds the MaxSessionDuration "
      "set for this role."), "HTTP 400 ValidationError: The requested DurationSeconds", False),
])
async def test_sts_errors(tmp_path: Path, fake_aws: MakeAws, http_client: HttpClient,
                          fail: tuple[int, str, str] | None, message: str,
                          transient: bool) -> None:
    clock = ManualClock(wall=time.time())
    fake = await fake_aws(now=clock.time)  # trusts no one
    if fail is not None:
        fake.sts_fail.append(fail)
    creds = open_source(choose_source(role_env(tmp_path, fake), "bedrock"),
                        client=http_client, clock=clock)
    with pytest.raises(AwsCredentialsError) as err:
        await creds.get()
    text = str(err.value)
    assert text.startswith(f"STS AssumeRole of {ROLE} (profile [bedrock]) "), text
    assert message in text, text
    assert err.value.transient is transient
    assert SOURCE_SECRET not in text


async def test_a_wrong_source_secret_and_an_unreadable_answer(
        tmp_path: Path, fake_aws: MakeAws, http_client: HttpClient) -> None:
    clock = ManualClock(wall=time.time())
    fake = await fake_aws(now=clock.time, trust={ROLE: {SOURCE_KEY}})
    fake.keys[SOURCE_KEY] = ("another-secret", "")
    creds = open_source(choose_source(role_env(tmp_path, fake), "bedrock"),
                        client=http_client, clock=clock)
    with pytest.raises(AwsCredentialsError, match="HTTP 403 SignatureDoesNotMatch") as err:
        await creds.get()
    assert not err.value.transient
    # a proxy's HTML page, or a cut answer: the endpoint's trouble, not a refusal
    from failoverd.awssts import parse_answer
    for body in (b"<html>502 Bad Gateway", b"<AssumeRoleResponse><AssumeRoleResult>",
                 b'<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>'):
        with pytest.raises(AwsCredentialsError) as err:
            parse_answer(body, "STS")
        assert err.value.transient


async def test_sts_unreachable_is_transient(tmp_path: Path, http_client: HttpClient) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = home(tmp_path, config=f"[profile r]\nrole_arn = {ROLE}\nsource_profile = r\n" + keys())
    env["AWS_ENDPOINT_URL_STS"] = f"http://127.0.0.1:{port}"
    creds = open_source(choose_source(env, "r"), client=http_client, clock=ManualClock())
    with pytest.raises(AwsCredentialsError) as err:
        await creds.get()
    assert err.value.transient and f"127.0.0.1:{port}" in str(err.value)


# ------------------------------------------------------------------ IAM Identity Center

START = "https://corp.awsapps.com/start"


def sso_env(tmp_path: Path, fake: FakeAws) -> dict[str, str]:
    env = home(tmp_path, config=(
        "[profile dev]\nsso_session = corp\nsso_account_id = 111122223333\n"
        "sso_role_name = BedrockUser\n"
        f"[sso-session corp]\nsso_start_url = {START}\nsso_region = eu-west-1\n"
        f"[profile legacy]\nsso_start_url = {START}\nsso_region = eu-west-1\n"
        "sso_account_id = 111122223333\nsso_role_name = BedrockUser\n"))
    return {**env, "AWS_ENDPOINT_URL_SSO": fake.url, "AWS_ENDPOINT_URL_SSO_OIDC": fake.url}


def cache(tmp_path: Path, key: str, token: str, expires: float, **extra: str) -> Path:
    folder = tmp_path / ".aws" / "sso" / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (hashlib.sha1(key.encode()).hexdigest() + ".json")
    path.write_text(json.dumps({
        "startUrl": START, "region": "eu-west-1", "accessToken": token,
        "expiresAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)), **extra}))
    return path


async def test_sso_role_credentials(tmp_path: Path, fake_aws: MakeAws,
                                    http_client: HttpClient) -> None:
    clock = ManualClock(wall=time.time())
    fake = await fake_aws(now=clock.time, sso_tokens={"aoaLOGGEDIN"},
                          sso_roles={("111122223333", "BedrockUser")})
    env = sso_env(tmp_path, fake)
    cache(tmp_path, "corp", "aoaLOGGEDIN", clock.time() + 8 * 3600)
    source = choose_source(env, "dev")
    assert isinstance(source, SsoRole)
    creds = open_source(source, client=http_client, clock=clock)
    got = await asyncio.gather(*(creds.get() for _ in range(3)))
    assert {c.access_key_id for c in got} == {issued(1)[0]}
    assert got[0].session_token == issued(1)[2]
    assert got[0].expires == pytest.approx(clock.time() + 3600, abs=1)
    assert fake.sso_calls == [("BedrockUser", "111122223333", "aoaLOGGEDIN")]
    clock.advance(3600 - 299)
    assert (await creds.get()).access_key_id == issued(2)[0]
    # a legacy profile: the cache file named by the start URL's SHA-1
    cache(tmp_path, START, "aoaLOGGEDIN", clock.time() + 3600)
    legacy = open_source(choose_source(env, "legacy"), client=http_client, clock=clock)
    assert (await legacy.get()).access_key_id == issued(3)[0]


async def test_sso_without_a_valid_token_says_to_log_in(
        tmp_path: Path, fake_aws: MakeAws, http_client: HttpClient) -> None:
    clock = ManualClock(wall=time.time())
    fake = await fake_aws(now=clock.time, sso_roles={("111122223333", "BedrockUser")})
    env = sso_env(tmp_path, fake)
    creds = open_source(choose_source(env, "legacy"), client=http_client, clock=clock)
    with pytest.raises(AwsCredentialsError) as err:
        await creds.get()
    assert "no SSO token cached" in str(err.value)
    assert str(err.value).endswith("run `aws sso login --profile legacy`")
    assert not err.value.transient and fake.sso_calls == []
    # expired, and a legacy token cannot be refreshed
    cache(tmp_path, START, "aoaOLD", clock.time() - 60)
    clock.advance(10)
    with pytest.raises(AwsCredentialsError, match=r"the SSO token of profile \[legacy\] expired "
                       r"at .*: run `aws sso login --profile legacy`"):
        await creds.get()
    # valid by its time, but the portal no longer knows it (a logout elsewhere)
    cache(tmp_path, START, "aoaREVOKED", clock.time() + 3600)
    clock.advance(10)
    with pytest.raises(AwsCredentialsError) as err:
        await creds.get()
    assert "refused the SSO token (HTTP 401: Session token not found or invalid)" in \
        str(err.value)
    assert "aoaREVOKED" not in str(err.value) and not err.value.transient
    # the operator logs in: the next fetch reads the new token
    fake.sso_tokens.add("aoaNEW")
    cache(tmp_path, START, "aoaNEW", clock.time() + 3600)
    clock.advance(10)
    assert (await creds.get()).access_key_id == issued(1)[0]
    # the portal's trouble is transient
    fake.sso_fail.append(429)
    clock.advance(3600)
    cache(tmp_path, START, "aoaNEW", clock.time() + 3600)
    with pytest.raises(AwsCredentialsError, match="HTTP 429: Rate exceeded") as err:
        await creds.get()
    assert err.value.transient


async def test_sso_session_token_refreshed_with_oidc(
        tmp_path: Path, fake_aws: MakeAws, http_client: HttpClient) -> None:
    clock = ManualClock(wall=time.time())
    fake = await fake_aws(now=clock.time, sso_roles={("111122223333", "BedrockUser")},
                          refresh={("client-1", "client-secret-1", "aorOLDrefresh")})
    env = sso_env(tmp_path, fake)
    # expires in 10 minutes: within botocore's 15-minute window, so refreshed first
    registration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.time() + 86400 * 80))
    path = cache(tmp_path, "corp", "aoaALMOSTOLD", clock.time() + 600, clientId="client-1",
                 clientSecret="client-secret-1", refreshToken="aorOLDrefresh",
                 registrationExpiresAt=registration)
    creds = open_source(choose_source(env, "dev"), client=http_client, clock=clock)
    assert (await creds.get()).access_key_id == issued(1)[0]
    assert fake.oidc_calls == [{"clientId": "client-1", "clientSecret": "client-secret-1",
                                "grantType": "refresh_token", "refreshToken": "aorOLDrefresh"}]
    assert fake.sso_calls == [("BedrockUser", "111122223333", "aoaFAKEaccessToken1")]
    written = json.loads(path.read_text())
    assert written["accessToken"] == "aoaFAKEaccessToken1"
    assert written["refreshToken"] == "aorFAKErefreshToken1"
    assert written["clientId"] == "client-1" and written["startUrl"] == START
    assert written["expiresAt"] == time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                 time.gmtime(clock.time() + 28800))
    assert path.stat().st_mode & 0o777 == 0o600
    # a refused refresh with the token still valid: the token serves, with a warning
    fake.refresh.clear()
    cache(tmp_path, "corp", "aoaSTILLGOOD", clock.time() + 300, clientId="client-1",
          clientSecret="client-secret-1", refreshToken="aorGONE",
          registrationExpiresAt=registration)
    fake.sso_tokens.add("aoaSTILLGOOD")
    clock.advance(3600)
    cache(tmp_path, "corp", "aoaSTILLGOOD", clock.time() + 300, clientId="client-1",
          clientSecret="client-secret-1", refreshToken="aorGONE",
          registrationExpiresAt=registration)
    assert (await creds.get()).access_key_id == issued(2)[0]
    assert fake.sso_calls[-1][2] == "aoaSTILLGOOD"
    # expired and the refresh refused: log in again
    clock.advance(3600)
    with pytest.raises(AwsCredentialsError) as err:
        await creds.get()
    text = str(err.value)
    assert "expired and refreshing it failed" in text and "invalid_grant" in text
    assert text.endswith("run `aws sso login --profile dev`")
    assert "client-secret-1" not in text and "aorGONE" not in text


async def test_expired_token_of_the_source(tmp_path: Path, fake_aws: MakeAws,
                                           http_client: HttpClient) -> None:
    """STS refusing the source's session token as expired: a refusal while the credentials
    file still holds that token (auth), transient when a helper rewrote it meanwhile (the next
    call signs with the new one), as for Bedrock's own ExpiredTokenException."""
    clock = ManualClock(wall=time.time())
    fake = await fake_aws(now=clock.time, trust={ROLE: {SOURCE_KEY}})
    fake.keys[SOURCE_KEY] = (SOURCE_SECRET, "old-session-token")
    env = role_env(tmp_path, fake)
    creds_file = tmp_path / ".aws" / "credentials"
    creds_file.write_text("[base]\n" + keys(SOURCE_KEY, SOURCE_SECRET) +
                          "aws_session_token = old-session-token\n")
    creds = open_source(choose_source(env, "bedrock"), client=http_client, clock=clock)
    fake.sts_fail.append((400, "ExpiredToken", "The security token included in the request is "
                          "expired"))
    with pytest.raises(AwsCredentialsError, match="HTTP 400 ExpiredToken") as err:
        await creds.get()
    assert not err.value.transient
    fake.sts_fail.append((400, "ExpiredToken", "The security token included in the request is "
                          "expired"))

    def rotate() -> None:  # while the call is under way
        creds_file.write_text("[base]\n" + keys(SOURCE_KEY, SOURCE_SECRET) +
                              "aws_session_token = new-session-token\n")
        fake.keys[SOURCE_KEY] = (SOURCE_SECRET, "new-session-token")
        fake.on_sts = None

    fake.on_sts = rotate
    clock.advance(10)
    with pytest.raises(AwsCredentialsError, match="HTTP 400 ExpiredToken") as err:
        await creds.get()
    assert err.value.transient
    clock.advance(10)
    assert (await creds.get()).access_key_id == issued(1)[0]
    assert fake.sts_calls[-1]["_caller"] == SOURCE_KEY
