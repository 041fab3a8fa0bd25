"""Review of the AWS profiles (credential_process, assumed roles, IAM Identity Center) and of
Bedrock's cache point resend: each test shows a defect found in review, against real
subprocesses and fake servers on 127.0.0.1 speaking AWS's wire formats."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from failoverd import awsprocess
from failoverd.awscreds import (
    AssumeRole,
    AwsConfigError,
    AwsCredentials,
    AwsCredentialsError,
    CredentialProcess,
    SharedFile,
    SsoRole,
    choose_source,
    open_source,
)
from failoverd.clock import ManualClock
from failoverd.http1 import HttpClient
from tests.test_aws_profiles import ROLE, home, keys
from tests.test_aws_profiles_fake import FakeAws, issued
from tests.test_aws_profiles_roles import cache, sso_env

# ------------------------------------------------------------------ credential_process

# a helper that starts a worker of its own (as a wrapper script starts the real helper), which
# holds the helper's standard output and error, and hangs: the worker writes its pid first
_WRAPPER = '''
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
open(sys.argv[1], "w").write(str(worker.pid))
time.sleep(30)
'''


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie left to an init that does not reap is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


async def test_a_timed_out_command_is_killed_with_its_children(tmp_path: Path) -> None:
    """The time limit kills the helper's own children too, and the call ends at it: before,
    only the helper was killed, and waiting for it lasted as long as a child held its pipes
    (every request of the provider waiting on the credentials meanwhile)."""
    script, pidfile = tmp_path / "wrapper.py", tmp_path / "worker.pid"
    script.write_text(_WRAPPER)
    source = CredentialProcess("p", (sys.executable, str(script), str(pidfile)), timeout=1.0)
    started = time.monotonic()
    with pytest.raises(AwsCredentialsError, match=r"did not finish within 1 s") as err:
        await awsprocess.run(source, ManualClock())
    assert err.value.transient
    assert time.monotonic() - started < 5
    worker = int(pidfile.read_text())
    for _ in range(50):  # the kernel's delivery of SIGKILL, not a timer of ours
        if not _alive(worker):
            break
        time.sleep(0.01)
    assert not _alive(worker)


# ------------------------------------------------------------------ IAM Identity Center


@dataclass
class _CliRefreshesFirst(FakeAws):
    """OIDC where the AWS CLI refreshed the session's token a moment before failoverd's call:
    the CLI spent the refresh token (OIDC answers invalid_grant to it now) and wrote its new
    token to the cache file."""

    cache_file: Path | None = None

    async def _oidc(self, request: web.Request) -> web.Response:
        if self.cache_file is not None:
            data = json.loads(self.cache_file.read_text())
            data.update(accessToken="aoaFROMTHECLI", refreshToken="aorFROMTHECLI",
                        expiresAt=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                time.gmtime(self.now() + 8 * 3600)))
            self.cache_file.write_text(json.dumps(data))
        return await super()._oidc(request)


async def test_an_sso_token_the_cli_refreshed_meanwhile_serves(
        tmp_path: Path, http_client: HttpClient) -> None:
    """The token expired; the AWS CLI refreshed it between failoverd's read of the cache and
    its CreateToken call, which OIDC then refuses (the refresh token served once). The cache
    holds a valid token: it serves, instead of an `auth` failure (which blocks every model of
    the provider) telling to log in."""
    clock = ManualClock(wall=time.time())
    fake = await _CliRefreshesFirst(now=clock.time, sso_tokens={"aoaFROMTHECLI"},
                                    sso_roles={("111122223333", "BedrockUser")}).start()
    try:
        env = sso_env(tmp_path, fake)
        registration = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                     time.gmtime(clock.time() + 86400 * 80))
        fake.cache_file = cache(tmp_path, "corp", "aoaEXPIRED", clock.time() - 60,
                                clientId="client-1", clientSecret="client-secret-1",
                                refreshToken="aorSPENT", registrationExpiresAt=registration)
        creds = open_source(choose_source(env, "dev"), client=http_client, clock=clock)
        got = await creds.get()
        assert got.access_key_id == issued(1)[0]
        assert [c["refreshToken"] for c in fake.oidc_calls] == ["aorSPENT"]
        assert fake.sso_calls == [("BedrockUser", "111122223333", "aoaFROMTHECLI")]
        # the CLI's file is left as the CLI wrote it
        assert json.loads(fake.cache_file.read_text())["refreshToken"] == "aorFROMTHECLI"
    finally:
        await fake.close()


# ------------------------------------------------------------------ botocore's order


def test_a_source_profile_with_keys_gives_what_botocore_takes_first(tmp_path: Path) -> None:
    """botocore resolves a source_profile that has keys with its whole profile chain (SSO,
    the credentials file's keys, credential_process, the config file's keys: its
    `_resolve_credentials_from_profile`), not with the keys alone: a credential_process
    comes before keys in the config file, an SSO role before any keys."""
    env = home(tmp_path, config=(
        f"[profile viaprocess]\nrole_arn = {ROLE}\nsource_profile = helper\n"
        f"[profile helper]\ncredential_process = {sys.executable} -c pass\n" + keys() +
        f"[profile viasso]\nrole_arn = {ROLE}\nsource_profile = sso\n"
        "[profile sso]\nsso_start_url = https://corp.awsapps.com/start\n"
        "sso_region = eu-west-1\nsso_account_id = 111122223333\nsso_role_name = Dev\n"
        f"[profile viakeys]\nrole_arn = {ROLE}\nsource_profile = both\n"
        f"[profile both]\ncredential_process = {sys.executable} -c pass\n"),
        credentials="[sso]\n" + keys("AKIASSOTOO") + "[both]\n" + keys("AKIACREDFILE"))
    role = choose_source(env, "viaprocess")
    assert isinstance(role, AssumeRole) and isinstance(role.source, CredentialProcess)
    role = choose_source(env, "viasso")
    assert isinstance(role, AssumeRole) and isinstance(role.source, SsoRole)
    # the credentials file's keys still come before a credential_process
    role = choose_source(env, "viakeys")
    assert isinstance(role, AssumeRole) and isinstance(role.source, SharedFile)
    assert role.source.path.endswith("credentials")


def test_an_eks_web_identity_in_the_environment_is_not_passed_over(tmp_path: Path) -> None:
    """AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN (EKS IAM roles for service accounts):
    botocore assumes that role (AssumeRoleWithWebIdentity) before a profile's SSO, keys or
    credential_process, and before the container's and the instance's roles. failoverd does
    not speak it: the load says so, where it used to sign silently as another identity (the
    node's instance role, a Pod Identity role, the default profile's keys)."""
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.sig")
    env = {**home(tmp_path, credentials="[default]\n" + keys("AKIADEFAULT") +
                  "[named]\n" + keys("AKIANAMED")),
           "AWS_WEB_IDENTITY_TOKEN_FILE": str(token), "AWS_ROLE_ARN": ROLE,
           "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:1/creds"}
    with pytest.raises(AwsConfigError, match="AWS_WEB_IDENTITY_TOKEN_FILE") as err:
        choose_source(env)
    assert "AssumeRoleWithWebIdentity" in str(err.value)
    no_profile = {k: v for k, v in env.items() if k != "HOME"}
    with pytest.raises(AwsConfigError, match="AWS_WEB_IDENTITY_TOKEN_FILE"):
        choose_source(no_profile)
    # as in botocore: the environment's keys come first, and a profile the configuration
    # names (aws_profile) leaves the environment's web identity aside
    assert isinstance(choose_source({**env, "AWS_ACCESS_KEY_ID": "AKIAENV",
                                     "AWS_SECRET_ACCESS_KEY": "s"}), AwsCredentials)
    named = choose_source(env, "named")
    assert isinstance(named, SharedFile) and named.profile == "named"
    # an assumed role of the profile comes before it too (botocore's AssumeRoleProvider)
    role_env = {**env, **home(tmp_path, config=f"[default]\nrole_arn = {ROLE}\n"
                              "source_profile = named\n")}
    assert isinstance(choose_source(role_env), AssumeRole)
