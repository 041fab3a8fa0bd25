"""The daemon signing Bedrock requests with the credentials of a config file's profile: an
assumed role (fake STS), an IAM Identity Center role (fake portal), a credential_process (a
real command); a fake Bedrock that accepts only those keys; and the configuration errors a
load reports with the provider's key path."""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from failoverd import config
from failoverd.config import ConfigError
from tests.fakes.bedrock import FakeBedrock, fake_bedrock
from tests.test_aws_profiles import ROLE, home, keys
from tests.test_aws_profiles_fake import SOURCE_KEY, SOURCE_SECRET, FakeAws, fake_aws, issued
from tests.test_aws_profiles_roles import cache, sso_env
from tests.test_bedrock_creds import with_profile
from tests.test_bedrock_e2e import daemon_config
from tests.test_provider_bedrock import HELLO

__all__ = ["fake_aws", "fake_bedrock"]  # the fixtures

MakeBedrock = Callable[..., Awaitable[FakeBedrock]]
MakeAws = Callable[..., Awaitable[FakeAws]]


async def test_daemon_signs_with_an_assumed_role(
        tmp_path: Path, fake_bedrock: MakeBedrock, fake_aws: MakeAws, fake_openai: Any,
        start_daemon: Any) -> None:
    sts = await fake_aws(trust={ROLE: {SOURCE_KEY}})
    key, secret, token = issued(1)
    fake = await fake_bedrock(access_key=key, secret_key=secret, session_token=token)
    backup = await fake_openai()
    env = home(tmp_path, config=f"[profile bedrock]\nrole_arn = {ROLE}\nsource_profile = base\n"
               "role_session_name = failoverd-e2e\n",
               credentials="[base]\n" + keys(SOURCE_KEY, SOURCE_SECRET))
    env["AWS_ENDPOINT_URL_STS"] = sts.url
    d = await start_daemon(with_profile(daemon_config(fake, backup.url), "bedrock"), env=env)
    for _ in range(2):
        raw = await d.openai.chat.completions.with_raw_response.create(
            model="default", messages=HELLO["messages"])
        assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
    assert fake.auth_failures == [] and backup.requests == []
    # signed with the assumed role's keys and session token, assumed once
    assert fake.requests[-1].headers["Authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={key}/")
    assert fake.requests[-1].headers["X-Amz-Security-Token"] == token
    assert [(c["_caller"], c["RoleArn"], c["RoleSessionName"]) for c in sts.sts_calls] == \
        [(SOURCE_KEY, ROLE, "failoverd-e2e")]


async def test_daemon_fails_over_when_the_role_is_refused_and_when_sts_throttles(
        tmp_path: Path, fake_bedrock: MakeBedrock, fake_aws: MakeAws, fake_openai: Any,
        start_daemon: Any) -> None:
    sts = await fake_aws()  # the role trusts no one
    fake = await fake_bedrock()
    backup = await fake_openai()
    env = home(tmp_path, config=f"[profile bedrock]\nrole_arn = {ROLE}\nsource_profile = base\n",
               credentials="[base]\n" + keys(SOURCE_KEY, SOURCE_SECRET))
    env["AWS_ENDPOINT_URL_STS"] = sts.url
    d = await start_daemon(with_profile(daemon_config(fake, backup.url), "bedrock"), env=env)
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    # AccessDenied: the provider's credentials refused (auth), as a refused key is
    assert raw.headers["x-failoverd-failover"] == "bedrock/sonnet>backup/gpt:auth"
    assert fake.requests == []
    status = (await d.http.get("/v1/status")).json()
    assert status["providers"]["bedrock"]["credentials"] == "auth"


async def test_daemon_throttled_sts_is_a_connection_failure(
        tmp_path: Path, fake_bedrock: MakeBedrock, fake_aws: MakeAws, fake_openai: Any,
        start_daemon: Any) -> None:
    sts = await fake_aws(trust={ROLE: {SOURCE_KEY}})
    sts.sts_fail.append((400, "Throttling", "Rate exceeded"))
    fake = await fake_bedrock()
    backup = await fake_openai()
    env = home(tmp_path, config=f"[profile bedrock]\nrole_arn = {ROLE}\nsource_profile = base\n",
               credentials="[base]\n" + keys(SOURCE_KEY, SOURCE_SECRET))
    env["AWS_ENDPOINT_URL_STS"] = sts.url
    d = await start_daemon(with_profile(daemon_config(fake, backup.url), "bedrock"), env=env)
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-failover"] == "bedrock/sonnet>backup/gpt:connection"
    status = (await d.http.get("/v1/status")).json()
    assert status["providers"]["bedrock"]["credentials"] == "ok"  # not blocked


async def test_daemon_signs_with_an_sso_role(
        tmp_path: Path, fake_bedrock: MakeBedrock, fake_aws: MakeAws, fake_openai: Any,
        start_daemon: Any) -> None:
    portal = await fake_aws(sso_tokens={"aoaLOGGEDIN"},
                            sso_roles={("111122223333", "BedrockUser")})
    key, secret, token = issued(1)
    fake = await fake_bedrock(access_key=key, secret_key=secret, session_token=token)
    backup = await fake_openai()
    env = sso_env(tmp_path, portal)
    cache(tmp_path, "corp", "aoaLOGGEDIN", time.time() + 8 * 3600)
    d = await start_daemon(with_profile(daemon_config(fake, backup.url), "dev"), env=env)
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
    assert fake.requests[-1].headers["X-Amz-Security-Token"] == token
    assert portal.sso_calls == [("BedrockUser", "111122223333", "aoaLOGGEDIN")]


async def test_daemon_signs_with_a_credential_process(
        tmp_path: Path, fake_bedrock: MakeBedrock, fake_openai: Any,
        start_daemon: Any) -> None:
    fake = await fake_bedrock(session_token="helper-token")
    backup = await fake_openai()
    helper = tmp_path / "helper.py"
    helper.write_text(
        "import json, sys, time\n"
        "print(json.dumps({'Version': 1, 'AccessKeyId': sys.argv[1], 'SecretAccessKey':\n"
        "    sys.argv[2], 'SessionToken': 'helper-token', 'Expiration': time.strftime(\n"
        "    '%Y-%m-%dT%H:%M:%SZ', time.gmtime(time.time() + 3600))}))\n")
    env = home(tmp_path, config=f"[default]\ncredential_process = {sys.executable} {helper} "
               f"{fake.access_key} {fake.secret_key}\n")
    d = await start_daemon(daemon_config(fake, backup.url), env=env)
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
    assert fake.auth_failures == []
    assert fake.requests[-1].headers["X-Amz-Security-Token"] == "helper-token"


@pytest.mark.parametrize(("profile", "problem"), [
    (f"role_arn = {ROLE}\nsource_profile = base\nmfa_serial = arn:aws:iam::1:mfa/me\n",
     "providers.b.aws_profile: profile [p] ({config}): mfa_serial is set"),
    (f"role_arn = {ROLE}\nsource_profile = p\n",
     "providers.b.aws_profile: profile [p] ({config}): source_profile makes a loop: p -> p"),
    ("sso_session = corp\nsso_account_id = 1\n",
     "providers.b.aws_profile: profile [p] ({config}): sso_role_name is missing"),
])
def test_load_reports_profile_problems(tmp_path: Path, profile: str, problem: str) -> None:
    env = home(tmp_path, config="[profile p]\n" + profile + "[profile base]\n" + keys() +
               "[sso-session corp]\nsso_start_url = https://x.awsapps.com/start\n"
               "sso_region = us-east-1\n")
    body = ('[providers.b]\nkind = "bedrock"\nregion = "us-east-1"\naws_profile = "p"\n'
            '[models."b/m"]\nprovider = "b"\n')
    with pytest.raises(ConfigError) as err:
        config.loads(body, env=env)
    assert err.value.problems[0].startswith(
        problem.format(config=tmp_path / ".aws" / "config")), err.value.problems


async def test_bedrock_refusing_the_assumed_role_as_expired_assumes_it_again(
        tmp_path: Path, fake_bedrock: MakeBedrock, fake_aws: MakeAws, fake_openai: Any,
        start_daemon: Any) -> None:
    """The role's session revoked before its Expiration: Bedrock's ExpiredTokenException makes
    the next request assume the role again; the one refused fails over as a connection
    failure, blocking nothing."""
    sts = await fake_aws(trust={ROLE: {SOURCE_KEY}})
    key, secret, token = issued(1)
    fake = await fake_bedrock(access_key=key, secret_key=secret, session_token=token)
    backup = await fake_openai()
    env = home(tmp_path, config=f"[profile bedrock]\nrole_arn = {ROLE}\nsource_profile = base\n",
               credentials="[base]\n" + keys(SOURCE_KEY, SOURCE_SECRET))
    env["AWS_ENDPOINT_URL_STS"] = sts.url
    d = await start_daemon(with_profile(daemon_config(fake, backup.url), "bedrock"), env=env)
    first = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert first.headers["x-failoverd-model"] == "bedrock/sonnet"
    fake.push("expired")
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-failover"] == "bedrock/sonnet>backup/gpt:connection"
    fake.access_key, fake.secret_key, fake.session_token = issued(2)  # only the new ones
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
    assert fake.requests[-1].headers["X-Amz-Security-Token"] == issued(2)[2]
    assert len(sts.sts_calls) == 2
    status = (await d.http.get("/v1/status")).json()
    assert status["providers"]["bedrock"]["credentials"] == "ok"
