"""The AWS credential chain of a bedrock provider without an API key (awscreds.py): which source
the configuration chooses, the shared credentials file read again when it changes (on a manual
clock), and the signer taking each request's credentials from the source."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from failoverd import config
from failoverd.awscreds import (
    AwsConfigError,
    AwsCredentials,
    AwsCredentialsError,
    ContainerEndpoint,
    InstanceMetadata,
    RefreshingCredentials,
    SharedFile,
    SharedFileCredentials,
    choose_source,
    open_source,
    read_profile,
)
from failoverd.clock import ManualClock
from failoverd.config import ProviderConfig
from failoverd.errors import ConfigError
from failoverd.http1 import HttpClient
from failoverd.providers.bedrock import BedrockProvider
from tests.fakes.awsmeta import ROLE, FakeMetadata, fake_metadata
from tests.fakes.bedrock import ACCESS_KEY, SECRET_KEY, FakeBedrock, fake_bedrock
from tests.test_provider_bedrock import HELLO, LIMITS, MODEL

__all__ = ["fake_bedrock", "fake_metadata"]  # the fixtures

NO_IMDS = {"AWS_EC2_METADATA_DISABLED": "true"}


def write_profiles(path: Path, **profiles: tuple[str, str, str]) -> None:
    """Writes the shared credentials file: profile -> (key id, secret, session token)."""
    text = "# written by the tests\n"
    for name, (key_id, secret, token) in profiles.items():
        text += f"[{name}]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"
        if token:
            text += f"aws_session_token = {token}\n"
        text += "region = us-east-1 ; not read here\n\n"
    path.write_text(text)


# ------------------------------------------------------------------ choosing the source


def test_the_environment_comes_first(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    write_profiles(creds, default=("AKIAFILE", "file-secret", ""))
    env = {"AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "env-secret",
           "AWS_SESSION_TOKEN": "tok", "AWS_SHARED_CREDENTIALS_FILE": str(creds)}
    assert choose_source(env) == AwsCredentials("AKIAENV", "env-secret", "tok")
    # a profile named in the configuration means the file, over the environment
    assert choose_source(env, "default") == SharedFile(str(creds), "default")


def test_the_shared_file_default_profile_and_aws_profile(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    default = home / ".aws" / "credentials"
    write_profiles(default, default=("AKIADEFAULT", "s1", ""), prod=("AKIAPROD", "s2", "t2"))
    env = {"HOME": str(home)}
    assert choose_source(env) == SharedFile(str(default), "default")
    assert choose_source({**env, "AWS_PROFILE": "prod"}) == SharedFile(str(default), "prod")
    assert read_profile(str(default), "prod") == AwsCredentials("AKIAPROD", "s2", "t2")
    # AWS_SHARED_CREDENTIALS_FILE moves it; "~/" is the daemon's HOME
    other = home / "elsewhere.ini"
    write_profiles(other, default=("AKIAOTHER", "s3", ""))
    assert choose_source({**env, "AWS_SHARED_CREDENTIALS_FILE": "~/elsewhere.ini"}) == \
        SharedFile(str(other), "default")


@pytest.mark.parametrize(("files", "env", "profile", "message"), [
    # no HOME (systemd): no default file, and nothing else
    ({}, {}, "", "has no credentials: set AWS_ACCESS_KEY_ID"),
    ({}, {}, "prod", "profile 'prod' is named, but there is no shared credentials file: HOME "
     "is not set"),
    ({"credentials": "[default]\naws_access_key_id = A\naws_secret_access_key = S\n"},
     {}, "prod", "{dir}/credentials has no profile [prod] with aws_access_key_id"),
    ({"credentials": "[default]\naws_access_key_id = A\n"}, {}, "",
     "profile [default] of {dir}/credentials has no aws_secret_access_key"),
    ({"credentials": "aws_access_key_id = A\n"}, {}, "",
     "{dir}/credentials is not a valid credentials file: File contains no section headers."),
    ({}, {"AWS_PROFILE": "gone"}, "", "{dir}/credentials does not exist"),
    # a file without the default profile is passed over, as the SDKs do
    ({"credentials": "[other]\naws_access_key_id = A\naws_secret_access_key = S\n"},
     {}, "", "has no credentials"),
    ({}, {"AWS_ACCESS_KEY_ID": "A"}, "",
     "environment variable AWS_SECRET_ACCESS_KEY is not set or empty"),
])
def test_choice_problems(tmp_path: Path, files: dict[str, str], env: dict[str, str],
                         profile: str, message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    if files or "AWS_PROFILE" in env:
        env = {**env, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials")}
    with pytest.raises(AwsConfigError) as err:
        choose_source({**env, **NO_IMDS}, profile)
    assert str(err.value).startswith(message.format(dir=tmp_path)), str(err.value)


def _bedrock(extra: str, kind: str = "bedrock") -> str:
    return (f'[providers.b]\nkind = "{kind}"\n{extra}\n'
            '[models."b/m"]\nprovider = "b"\n')


def test_config_aws_profile(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    write_profiles(creds, prod=("AKIAPROD", "s2", "t2"))
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(creds), **NO_IMDS}
    cfg = config.loads(_bedrock('region = "us-east-1"\naws_profile = "prod"'), env=env)
    assert cfg.providers["b"].aws == SharedFile(str(creds), "prod")
    assert "s2" not in repr(cfg.providers["b"])


@pytest.mark.parametrize(("text", "kind", "problem"), [
    ('aws_profile = "prod"', "openai", 'providers.b.aws_profile: only valid for kind = '
     '"bedrock"'),
    ('region = "us-east-1"\naws_profile = "prod"\napi_key_env = "K"', "bedrock",
     "providers.b.aws_profile: names AWS credentials, but the provider has a Bedrock API key"),
    ('region = "us-east-1"\naws_profile = ""', "bedrock",
     "providers.b.aws_profile: must name a profile"),
    ('region = "us-east-1"\naws_profile = "nope"', "bedrock",
     "providers.b.aws_profile: {dir}/credentials has no profile [nope]"),
    ('region = "us-east-1"', "bedrock", "providers.b: has no credentials: set "
     "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
])
def test_config_problems(tmp_path: Path, text: str, kind: str, problem: str) -> None:
    creds = tmp_path / "credentials"
    write_profiles(creds, prod=("AKIAPROD", "s2", ""))
    env = {"K": "key", **NO_IMDS}
    if "aws_profile" in text:
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(creds)
    with pytest.raises(ConfigError) as err:
        config.loads(_bedrock(text, kind), env=env)
    assert err.value.problems and err.value.problems[0].startswith(
        problem.format(dir=tmp_path)), err.value.problems
    assert len(err.value.problems) == 1, err.value.problems


# ------------------------------------------------------------------ the file, read again


async def test_a_rewritten_file_is_read_again_after_the_check_interval(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "credentials"
    write_profiles(path, default=("AKIAFIRST", "s1", "t1"))
    clock = ManualClock()
    source = SharedFileCredentials(SharedFile(str(path), "default"), clock, check_every=5)
    first = await source.get()
    assert first == AwsCredentials("AKIAFIRST", "s1", "t1")
    write_profiles(path, default=("AKIASECOND", "s2", "t2"))
    os.utime(path, ns=(1, 10**18))  # a new mtime even on a coarse filesystem clock
    assert await source.get() is first  # not looked at again before the interval
    clock.advance(5)
    assert await source.get() == AwsCredentials("AKIASECOND", "s2", "t2")

    # a half-written file keeps the credentials read before, with one warning per change
    path.write_text("[default]\naws_access_key_id = AKIATHIRD\n")
    os.utime(path, ns=(1, 2 * 10**18))
    with caplog.at_level(logging.WARNING, logger="failoverd.awscreds"):
        clock.advance(5)
        assert (await source.get()).access_key_id == "AKIASECOND"
        clock.advance(5)
        assert (await source.get()).access_key_id == "AKIASECOND"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "has no aws_secret_access_key" in warnings[0]
    assert "s2" not in warnings[0]

    path.unlink()  # gone: still the last good ones
    clock.advance(5)
    assert (await source.get()).access_key_id == "AKIASECOND"


async def test_a_file_unreadable_at_first_use_is_an_error(tmp_path: Path) -> None:
    source = SharedFileCredentials(SharedFile(str(tmp_path / "missing"), "default"),
                                   ManualClock())
    with pytest.raises(AwsCredentialsError, match="missing does not exist"):
        await source.get()


async def test_requests_are_signed_with_the_rotated_key(
        tmp_path: Path, fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
        http_client: HttpClient) -> None:
    """A credential helper rewrites the file: the next request (after the check interval)
    is signed with the new key and session token, which the fake Bedrock verifies."""
    fake = await fake_bedrock(session_token="token-one")
    path = tmp_path / "credentials"
    write_profiles(path, default=(ACCESS_KEY, SECRET_KEY, "token-one"))
    cfg = ProviderConfig(name="bedrock", kind="bedrock", base_url=fake.url, region="us-east-1",
                         aws=SharedFile(str(path), "default"))
    clock = ManualClock()
    provider = BedrockProvider(cfg, http_client, clock=clock)
    await provider.complete(HELLO, MODEL, LIMITS)
    fake.access_key, fake.secret_key, fake.session_token = (
        "ASIAROTATED000000002", "rotated/Secret+Key0000", "token-two")
    write_profiles(path, default=(fake.access_key, fake.secret_key, fake.session_token))
    os.utime(path, ns=(1, 10**18))
    clock.advance(5)
    await provider.complete(HELLO, MODEL, LIMITS)
    assert fake.auth_failures == []
    assert fake.requests[-1].headers["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=ASIAROTATED000000002/")
    assert fake.requests[-1].headers["X-Amz-Security-Token"] == "token-two"


# ------------------------------------------------------------------ a container's endpoint


@pytest.mark.parametrize(("env", "want"), [
    ({"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc?x=1"},
     ContainerEndpoint("http://169.254.170.2/v2/credentials/abc?x=1")),
    # the relative URI wins over the full one, as in the SDKs
    ({"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/c",
      "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:1/x"},
     ContainerEndpoint("http://169.254.170.2/v2/c")),
    ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://169.254.170.23/v1/credentials",
      "AWS_CONTAINER_AUTHORIZATION_TOKEN": "t",
      "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": "/var/run/token"},
     ContainerEndpoint("http://169.254.170.23/v1/credentials", "", "/var/run/token")),
    ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "https://creds.example.com/get",
      "AWS_CONTAINER_AUTHORIZATION_TOKEN": "Basic abcd"},
     ContainerEndpoint("https://creds.example.com/get", "Basic abcd")),
    ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://[::1]:8080/get"},
     ContainerEndpoint("http://[::1]:8080/get")),
])
def test_container_endpoint_choice(env: dict[str, str], want: ContainerEndpoint) -> None:
    assert choose_source({**env, **NO_IMDS}) == want


@pytest.mark.parametrize(("env", "message"), [
    ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://creds.example.com/get"},
     "environment variable AWS_CONTAINER_CREDENTIALS_FULL_URI names creds.example.com over "
     "plain http: only https, a loopback address or"),
    ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "ftp://127.0.0.1/x"},
     "environment variable AWS_CONTAINER_CREDENTIALS_FULL_URI is not a usable URL"),
    ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1/x",
      "AWS_CONTAINER_AUTHORIZATION_TOKEN": "a\u0001b"},
     "environment variable AWS_CONTAINER_AUTHORIZATION_TOKEN holds a line break"),
])
def test_container_endpoint_problems(env: dict[str, str], message: str) -> None:
    with pytest.raises(AwsConfigError) as err:
        choose_source({**env, **NO_IMDS})
    assert str(err.value).startswith(message), str(err.value)


def container(fake: FakeMetadata, clock: ManualClock, client: HttpClient, *,
              token: str = "", token_file: str = "") -> RefreshingCredentials:
    source = open_source(ContainerEndpoint(f"{fake.url}/creds", token, token_file),
                         client=client, clock=clock)
    assert isinstance(source, RefreshingCredentials)
    return source


async def test_container_credentials_with_a_token_file(
        tmp_path: Path, fake_metadata: Callable[..., Awaitable[FakeMetadata]],
        http_client: HttpClient) -> None:
    fake = await fake_metadata()
    token_file = tmp_path / "eks-pod-identity-token"
    token_file.write_text("wrong-token\n")
    clock = ManualClock(wall=time.time())
    source = container(fake, clock, http_client, token_file=str(token_file))
    with pytest.raises(AwsCredentialsError, match=r"/creds refused: HTTP 403: Unable to "
                       r"validate the token"):
        await source.get()
    token_file.write_text(fake.auth_token + "\n")  # rotated by the agent: read at every fetch
    clock.advance(5)  # past the fail-fast pause
    creds = await source.get()
    assert creds == AwsCredentials(fake.access_key, fake.secret_key, fake.session_token,
                                   expires=float(int(fake.expires)))


async def test_temporary_credentials_are_refreshed_before_they_expire(
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], http_client: HttpClient,
        caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(wall=float(int(time.time())))
    t0 = clock.time()
    fake = await fake_metadata()
    fake.rotate(1, t0 + 3600)
    source = container(fake, clock, http_client, token=fake.auth_token)
    first = await source.get()
    assert first.access_key_id == "ASIAFAKEMETADATA0001" and first.expires == t0 + 3600

    def at(when: float) -> None:
        clock.advance(t0 + when - clock.time())

    fake.rotate(2, t0 + 7200)
    at(3600 - 301)  # not yet in the last 5 minutes
    assert await source.get() is first
    assert len(fake.calls) == 1
    at(3600 - 299)
    second = await source.get()
    assert second.access_key_id == "ASIAFAKEMETADATA0002" and len(fake.calls) == 2

    # a failed refresh keeps the current ones until they expire, then calls fail
    fake.fail = 500
    at(7200 - 200)
    with caplog.at_level(logging.WARNING, logger="failoverd.awscreds"):
        assert await source.get() is second
    assert len(fake.calls) == 3
    assert "HTTP 500: the fake is down; the current ones serve until they expire in 200 s" \
        in caplog.text
    clock.advance(30)
    assert await source.get() is second and len(fake.calls) == 3  # not asked again yet
    clock.advance(200)  # expired
    with pytest.raises(AwsCredentialsError, match="HTTP 500"):
        await source.get()
    assert len(fake.calls) == 4
    with pytest.raises(AwsCredentialsError, match="HTTP 500"):
        await source.get()  # failed moments ago: at once, without a call
    assert len(fake.calls) == 4
    fake.fail = 0
    fake.rotate(3, clock.time() + 3600)
    clock.advance(5)
    assert (await source.get()).access_key_id == "ASIAFAKEMETADATA0003"


async def test_concurrent_requests_share_one_fetch(
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], http_client: HttpClient) -> None:
    clock = ManualClock(wall=float(int(time.time())))
    fake = await fake_metadata()
    fake.rotate(1, clock.time() + 3600)
    source = container(fake, clock, http_client, token=fake.auth_token)
    got = await asyncio.gather(*(source.get() for _ in range(20)))
    assert {c.access_key_id for c in got} == {"ASIAFAKEMETADATA0001"}
    assert len(fake.calls) == 1
    # in the refresh window: one call fetches, the others keep using the current ones
    fake.rotate(2, clock.time() + 7200)
    clock.advance(3600 - 100)
    got = await asyncio.gather(*(source.get() for _ in range(20)))
    assert len(fake.calls) == 2
    assert {c.access_key_id for c in got} <= {"ASIAFAKEMETADATA0001", "ASIAFAKEMETADATA0002"}
    assert (await source.get()).access_key_id == "ASIAFAKEMETADATA0002"


# ------------------------------------------------------------------ the instance's role


@pytest.mark.parametrize(("env", "want"), [
    ({}, InstanceMetadata("http://169.254.169.254")),
    ({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://[fd00:ec2::254]/"},
     InstanceMetadata("http://[fd00:ec2::254]")),
    ({"AWS_EC2_METADATA_DISABLED": "false"}, InstanceMetadata()),
])
def test_instance_metadata_is_the_last_resort(env: dict[str, str],
                                               want: InstanceMetadata) -> None:
    assert choose_source(env) == want


@pytest.mark.parametrize("disabled", ["true", "TRUE", "True"])
def test_instance_metadata_disabled(disabled: str) -> None:
    with pytest.raises(AwsConfigError, match="AWS_EC2_METADATA_DISABLED=true turns off"):
        choose_source({"AWS_EC2_METADATA_DISABLED": disabled})
    with pytest.raises(AwsConfigError, match="AWS_EC2_METADATA_SERVICE_ENDPOINT is not a usable"):
        choose_source({"AWS_EC2_METADATA_SERVICE_ENDPOINT": "169.254.169.254"})


def instance(endpoint: str, clock: ManualClock, client: HttpClient) -> RefreshingCredentials:
    source = open_source(InstanceMetadata(endpoint), client=client, clock=clock)
    assert isinstance(source, RefreshingCredentials)
    return source


async def test_instance_role_credentials_over_imdsv2(
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], http_client: HttpClient) -> None:
    clock = ManualClock(wall=float(int(time.time())))
    meta = await fake_metadata()
    meta.rotate(1, clock.time() + 3600)
    # IMDSv2 only: the fake refuses a call without a session token
    resp = await http_client.request("GET", f"{meta.url}/latest/meta-data/iam/"
                                     "security-credentials/", headers={}, connect_timeout=1)
    assert resp.status == 401
    await resp.read()
    meta.calls.clear()
    source = instance(meta.url, clock, http_client)
    creds = await source.get()
    assert creds == AwsCredentials("ASIAFAKEMETADATA0001", meta.secret_key, meta.session_token,
                                   expires=clock.time() + 3600)
    assert meta.calls == [("PUT", "/latest/api/token"),
                          ("GET", "/latest/meta-data/iam/security-credentials/"),
                          ("GET", f"/latest/meta-data/iam/security-credentials/{ROLE}")]
    meta.rotate(2, clock.time() + 7200)
    clock.advance(3600 - 299)
    assert (await source.get()).access_key_id == "ASIAFAKEMETADATA0002"
    assert len(meta.calls) == 6


async def test_a_host_without_instance_metadata_fails_fast(
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], http_client: HttpClient) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    clock = ManualClock(wall=time.time())
    source = instance(f"http://127.0.0.1:{port}", clock, http_client)
    with pytest.raises(AwsCredentialsError, match=f"127.0.0.1:{port}/latest/api/token"):
        await source.get()
    # an endpoint that does not answer: the 1 s limit per call
    meta = await fake_metadata(hang=True)
    source = instance(meta.url, clock, http_client)
    started = time.monotonic()
    with pytest.raises(AwsCredentialsError, match="no answer within 1 s"):
        await source.get()
    assert time.monotonic() - started < 2.5
