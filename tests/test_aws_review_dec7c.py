"""Review of the AWS profiles (credential_process, assumed roles, IAM Identity Center) and of
Bedrock's cache point resend: each test shows a defect found in review, against real
subprocesses and fake servers on 127.0.0.1 speaking AWS's wire formats."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from failoverd import awsprocess
from failoverd.awscreds import (
    FILE_CHECK_EVERY,
    AssumeRole,
    AwsCredentials,
    AwsCredentialsError,
    CredentialProcess,
    SharedFile,
    SsoRole,
    WebIdentityRole,
    choose_source,
    open_source,
)
from failoverd.clock import ManualClock
from failoverd.config import ModelConfig, ProviderConfig
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import HttpClient
from failoverd.providers.base import AttemptLimits
from failoverd.providers.bedrock import BedrockProvider
from tests.fakes.base import fake_fixture, serve_app
from tests.fakes.bedrock import ACCESS_KEY, SECRET_KEY, FakeBedrock, fake_bedrock
from tests.test_aws_profiles import ROLE, home, keys
from tests.test_aws_profiles_fake import FakeAws, fake_aws, issued
from tests.test_aws_profiles_roles import cache, sso_env
from tests.test_bedrock_creds import with_profile
from tests.test_bedrock_e2e import daemon_config
from tests.test_provider_bedrock import HELLO, MODEL

__all__ = ["fake_aws", "fake_bedrock"]  # the fixtures

LIMITS = AttemptLimits(total=5, connect=2, first_token=5, idle=5)

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
    credential_process, and before the container's and the instance's roles. failoverd used
    to sign silently as another identity (the node's instance role, a Pod Identity role, the
    default profile's keys), then refused it; it now assumes the role, at botocore's place."""
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.e30.sig")
    env = {**home(tmp_path, credentials="[default]\n" + keys("AKIADEFAULT") +
                  "[named]\n" + keys("AKIANAMED")),
           "AWS_WEB_IDENTITY_TOKEN_FILE": str(token), "AWS_ROLE_ARN": ROLE,
           "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:1/creds"}
    found = choose_source(env, region="eu-west-1")
    assert found == WebIdentityRole("", ROLE, str(token), "https://sts.eu-west-1.amazonaws.com")
    no_profile = {k: v for k, v in env.items() if k != "HOME"}
    assert choose_source(no_profile, region="eu-west-1") == found
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


# ------------------------------------------------------------------ Bedrock's ExpiredToken


@dataclass
class _RotatingBedrock(FakeBedrock):
    """The fake Bedrock Runtime, where a call signed with the `old` key waits for `release`
    and is then refused as expired (the token ran out while it was under way)."""

    old: str = "AKIAOLDROTATED000001"
    held: asyncio.Event = field(default_factory=asyncio.Event, kw_only=True)
    release: asyncio.Event = field(default_factory=asyncio.Event, kw_only=True)

    async def _converse(self, request: web.Request) -> web.StreamResponse:
        if f"Credential={self.old}/" in request.headers.get("Authorization", ""):
            self.held.set()
            await self.release.wait()
            return self._error("expired", "")
        return await super()._converse(request)


rotating_bedrock = fake_fixture(_RotatingBedrock, "rotating_bedrock")


async def test_an_expired_token_refuses_the_credentials_it_was_signed_with(
        tmp_path: Path, rotating_bedrock: Callable[..., Awaitable[_RotatingBedrock]],
        http_client: HttpClient) -> None:
    """A call signed with the old keys of a rotated credentials file is refused as expired
    after another call read the new ones: the refusal is of the old keys (the next request
    has others: `connection`). Before, the adapter told the source that its last signer's
    keys, the new ones, were refused; the file unchanged since, that meant no others were to
    be had: `auth`, which blocks every model of the provider for auth_open_seconds."""
    fake = await rotating_bedrock()
    path = tmp_path / "credentials"
    path.write_text("[default]\n" + keys(fake.old, "old-secret"))
    clock = ManualClock(wall=time.time())
    cfg = ProviderConfig(name="bedrock", kind="bedrock", base_url=fake.url, region="us-east-1",
                         aws=SharedFile(str(path), "default"))
    provider = BedrockProvider(cfg, http_client, clock=clock)
    model = ModelConfig(id="bedrock/haiku", provider="bedrock",
                        name="anthropic.claude-3-haiku-20240307-v1:0")
    body = {"messages": [{"role": "user", "content": "hi"}]}
    under_way = asyncio.create_task(provider.complete(body, model, LIMITS))
    await fake.held.wait()
    # the helper rotated the file: the next request reads it and signs with the new keys
    path.write_text("[default]\n" + keys(ACCESS_KEY, SECRET_KEY) + "# rotated\n")
    clock.advance(FILE_CHECK_EVERY)
    answer = await provider.complete(body, model, LIMITS)
    assert answer.body["choices"][0]["message"]["content"] == fake.reply
    fake.release.set()
    with pytest.raises(UpstreamError) as err:
        await under_way
    assert "ExpiredTokenException" in err.value.message
    assert err.value.reason is FailureReason.CONNECTION
    # and the new keys still serve
    answer = await provider.complete(body, model, LIMITS)
    assert fake.auth_failures == []


async def test_an_sso_cache_file_caught_half_written_is_transient(
        tmp_path: Path, http_client: HttpClient) -> None:
    """The AWS CLI writes its token cache in place (botocore's JSONFileCache: truncate, then
    write): read at that moment the file is empty or cut. That says nothing of the login: a
    `connection` failure, asked again shortly, not an `auth` one blocking the provider's
    models with advice to log in. A file that stays unreadable is still the login's."""
    clock = ManualClock(wall=time.time())
    fake = await FakeAws(now=clock.time).start()
    try:
        env = sso_env(tmp_path, fake)
        path = cache(tmp_path, "corp", "aoaLOGGEDIN", clock.time() + 3600)
        path.write_text(path.read_text()[:40])  # caught between the truncate and the write
        creds = open_source(choose_source(env, "dev"), client=http_client, clock=clock)
        with pytest.raises(AwsCredentialsError) as err:
            await creds.get()
        assert err.value.transient, str(err.value)
        # still so a minute later: a broken file, for the operator
        old = clock.time() - 60
        os.utime(path, (old, old))
        clock.advance(10)
        with pytest.raises(AwsCredentialsError) as err:
            await creds.get()
        assert not err.value.transient
        assert str(err.value).endswith("run `aws sso login --profile dev`")
    finally:
        await fake.close()


# ------------------------------------------------------------------ a caller's cancellation

_SLOW = '''
import json, pathlib, sys, time
runs = pathlib.Path(sys.argv[1])
runs.write_text(str(int(runs.read_text()) + 1 if runs.exists() else 1))
time.sleep(0.6)  # a helper that asks a vault over the network
print(json.dumps({"Version": 1, "AccessKeyId": "ASIASLOWHELPER000001",
                  "SecretAccessKey": "slow/Secret+Key" + "0" * 25, "SessionToken": "slow"}))
'''


async def test_a_fetch_outlives_the_request_that_started_it(tmp_path: Path,
                                                            http_client: HttpClient) -> None:
    """A credential_process slower than the attempts that wait for it (their first-token
    limit, a client's deadline, a client gone): each attempt's end cancelled the fetch, killing
    the command, and the next attempt started it again, so credentials never came. The fetch
    now goes on by itself; later requests join it, and it serves them when done."""
    script, runs = tmp_path / "slow.py", tmp_path / "runs"
    script.write_text(_SLOW)
    creds = open_source(CredentialProcess("p", (sys.executable, str(script), str(runs))),
                        client=http_client, clock=ManualClock(wall=time.time()))
    for _ in range(2):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):  # an attempt's limit
                await creds.get()
    got = await creds.get()
    assert got.access_key_id == "ASIASLOWHELPER000001"
    assert runs.read_text() == "1"  # one run, which the cancelled attempts did not kill


@dataclass
class _SlowOidc(FakeAws):
    """OIDC that has spent the refresh token (and issued the next) before its answer, which
    waits for `release`."""

    held: asyncio.Event = field(default_factory=asyncio.Event, kw_only=True)
    release: asyncio.Event = field(default_factory=asyncio.Event, kw_only=True)

    async def _oidc(self, request: web.Request) -> web.Response:
        answer = await super()._oidc(request)
        self.held.set()
        await self.release.wait()
        return answer


async def test_a_cancelled_request_does_not_lose_the_refreshed_sso_token(
        tmp_path: Path, http_client: HttpClient) -> None:
    """The request whose fetch refreshes the SSO token is cancelled while OIDC answers: OIDC
    has spent the old refresh token. Before, the call was dropped with the new token and its
    refresh token, so the next request refreshed with the spent one, was refused, and the
    operator had to log in again. Now the refresh completes and the cache file has it."""
    clock = ManualClock(wall=time.time())
    fake = await _SlowOidc(now=clock.time, sso_roles={("111122223333", "BedrockUser")},
                           refresh={("client-1", "client-secret-1", "aorONCE")}).start()
    try:
        env = sso_env(tmp_path, fake)
        registration = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                     time.gmtime(clock.time() + 86400 * 80))
        path = cache(tmp_path, "corp", "aoaEXPIRED", clock.time() - 60, clientId="client-1",
                     clientSecret="client-secret-1", refreshToken="aorONCE",
                     registrationExpiresAt=registration)
        creds = open_source(choose_source(env, "dev"), client=http_client, clock=clock)
        request = asyncio.create_task(creds.get())
        await fake.held.wait()
        request.cancel()  # its client went away
        with pytest.raises(asyncio.CancelledError):
            await request
        fake.release.set()
        got = await creds.get()
        assert got.access_key_id == issued(1)[0]
        assert len(fake.oidc_calls) == 1
        written = json.loads(path.read_text())
        assert written["refreshToken"] == "aorFAKErefreshToken1"
    finally:
        fake.release.set()
        await fake.close()


# ------------------------------------------------------------------ secrets echoed back


async def _echo(request: web.Request) -> web.Response:
    """A gateway's error page that shows the request it refused, headers and body."""
    lines = [f"{k}: {v}" for k, v in request.headers.items()]
    return web.Response(status=400, text="Bad request\n" + "\n".join(lines) + "\n\n" +
                        (await request.text()))


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/", _echo)
    app.router.add_post("/token", _echo)
    runner, port = await serve_app(app)
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_sts_and_oidc_errors_that_echo_the_request_show_no_secret(
        tmp_path: Path, echo_url: str, http_client: HttpClient) -> None:
    """An endpoint (AWS_ENDPOINT_URL_STS / _SSO_OIDC: a gateway, a VPC endpoint's proxy)
    whose error echoes the request: the source's session token (STS) and the client secret and
    refresh token (OIDC) are masked in the error, as the container endpoint's token and the
    SSO portal's bearer token are."""
    clock = ManualClock(wall=time.time())
    session = "FwoGZXIvYXdzSESSIONtokenOfTheSource"
    env = {**home(tmp_path, config=f"[profile r]\nrole_arn = {ROLE}\nsource_profile = s\n",
                  credentials="[s]\n" + keys() + f"aws_session_token = {session}\n"),
           "AWS_ENDPOINT_URL_STS": echo_url}
    creds = open_source(choose_source(env, "r"), client=http_client, clock=clock)
    with pytest.raises(AwsCredentialsError) as err:
        await creds.get()
    assert "HTTP 400" in str(err.value) and session[:12] not in str(err.value)
    env = {**sso_env(tmp_path, FakeAws()), "AWS_ENDPOINT_URL_SSO_OIDC": echo_url}
    registration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.time() + 86400))
    cache(tmp_path, "corp", "aoaEXPIRED", clock.time() - 60, clientId="client-1",
          clientSecret="theClientSecretOfTheRegistration",
          refreshToken="aorTheRefreshTokenOfTheLogin", registrationExpiresAt=registration)
    creds = open_source(choose_source(env, "dev"), client=http_client, clock=clock)
    with pytest.raises(AwsCredentialsError) as err:
        await creds.get()
    assert "HTTP 400" in str(err.value)
    assert "theClientSecret" not in str(err.value) and "aorTheRefresh" not in str(err.value)


async def test_a_failing_commands_stderr_cut_inside_a_secret_shows_none_of_it(
        tmp_path: Path) -> None:
    """Only the end of standard error is kept: when that end begins inside a secret, the
    secret's tail has neither its key's name nor the length of a base64 run to be masked by.
    A message in Japanese (3 bytes a character) has all of the kept end quoted."""
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
    script = tmp_path / "fails.py"
    script.write_text("import sys\nsys.stderr.write('aws_secret_access_key=" + secret +
                      "\\n' + '\\u30a8' * 334)\nsys.exit(1)\n")
    source = CredentialProcess("p", (sys.executable, str(script)))
    with pytest.raises(AwsCredentialsError) as err:
        await awsprocess.run(source, ManualClock())
    text = str(err.value)
    assert "exited with 1" in text and "\u30a8" * 10 in text
    assert secret[-12:] not in text, text


@pytest.mark.skipif(os.geteuid() != 0, reason="changes a file's owner: needs root")
async def test_a_refreshed_sso_token_keeps_the_cache_files_owner(
        tmp_path: Path, fake_aws: Callable[..., Awaitable[FakeAws]],
        http_client: HttpClient) -> None:
    """A daemon run as root with the user's HOME (sudo -E) refreshes the user's token: the
    file it writes in place of the user's must stay the user's, or the user's own aws CLI
    can no longer read its SSO cache (0600, now root's). botocore writes the file in place,
    which keeps its owner."""
    clock = ManualClock(wall=time.time())
    fake = await fake_aws(now=clock.time, sso_roles={("111122223333", "BedrockUser")},
                          refresh={("client-1", "client-secret-1", "aorOLD")})
    env = sso_env(tmp_path, fake)
    registration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.time() + 86400))
    path = cache(tmp_path, "corp", "aoaOLD", clock.time() + 60, clientId="client-1",
                 clientSecret="client-secret-1", refreshToken="aorOLD",
                 registrationExpiresAt=registration)
    os.chown(path, 4321, 4322)
    creds = open_source(choose_source(env, "dev"), client=http_client, clock=clock)
    assert (await creds.get()).access_key_id == issued(1)[0]
    st = path.stat()
    assert json.loads(path.read_text())["accessToken"] == "aoaFAKEaccessToken1"
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4321, 4322, 0o600)


_SLOW_KEYS = '''
import json, pathlib, sys, time
runs = pathlib.Path(sys.argv[1])
runs.write_text(str(int(runs.read_text()) + 1 if runs.exists() else 1))
time.sleep(0.6)
print(json.dumps({"Version": 1, "AccessKeyId": sys.argv[2], "SecretAccessKey": sys.argv[3]}))
'''


async def test_daemon_streams_once_a_slow_credential_process_is_done(
        tmp_path: Path, fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
        fake_openai: Any, start_daemon: Any) -> None:
    """A stream's first-token limit (0.2 s) is shorter than the profile's credential_process
    (0.6 s): the attempt that started the command gives up and fails over, and the command
    goes on. A request for the same provider's patient model joins that one run and is
    served by it (before: the cancelled attempt killed the command, and each request started
    its own)."""
    fake, backup = await fake_bedrock(), await fake_openai()
    script, runs = tmp_path / "slow.py", tmp_path / "runs"
    script.write_text(_SLOW_KEYS)
    env = home(tmp_path, config=f"[profile slow]\ncredential_process = {sys.executable} "
               f"{script} {runs} {ACCESS_KEY} {SECRET_KEY}\n")
    body = with_profile(daemon_config(fake, backup.url), "slow").replace(
        'context_window = 200000\ncapabilities = ["tools", "vision"]\n[models."backup/gpt"]',
        'context_window = 200000\ncapabilities = ["tools", "vision"]\nfirst_token_timeout = '
        f'0.2\n[models."bedrock/patient"]\nprovider = "bedrock"\nname = "{MODEL.name}"\n'
        '[models."backup/gpt"]', 1)
    d = await start_daemon(body, env=env)

    async def stream(model: str) -> Any:
        return await d.http.post("/v1/chat/completions", json={
            "model": model, "messages": HELLO["messages"], "stream": True})

    hurried = await stream("default")
    assert hurried.status_code == 200
    assert hurried.headers["x-failoverd-failover"] == "bedrock/sonnet>backup/gpt:timeout"
    patient = await stream("bedrock/patient")
    assert patient.status_code == 200 and patient.headers["x-failoverd-model"] == \
        "bedrock/patient"
    deltas = [json.loads(line[6:]) for line in patient.text.splitlines()
              if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in deltas
                   if c["choices"]) == fake.reply
    assert runs.read_text() == "1" and fake.auth_failures == []
