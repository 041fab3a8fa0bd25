"""The daemon signing Bedrock requests with credentials from the chain's other sources: a
profile of the shared credentials file, a container's credential endpoint, the EC2 instance's
role (fake endpoints on 127.0.0.1); and failing over when there are none to be had."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.fakes.awsmeta import FakeMetadata, fake_metadata
from tests.fakes.bedrock import ACCESS_KEY, SECRET_KEY, FakeBedrock, fake_bedrock
from tests.test_awscreds import write_profiles
from tests.test_bedrock_e2e import daemon_config
from tests.test_provider_bedrock import HELLO

__all__ = ["fake_bedrock", "fake_metadata"]  # the fixtures


def with_profile(body: str, profile: str) -> str:
    return body.replace('region = "us-east-1"\n', f'region = "us-east-1"\naws_profile = '
                        f'"{profile}"\n', 1)


async def test_daemon_signs_with_a_profile_of_the_shared_credentials_file(
        tmp_path: Path, fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
        fake_openai: Any, start_daemon: Any) -> None:
    fake = await fake_bedrock(session_token="profile-token")
    backup = await fake_openai()
    path = tmp_path / "credentials"
    write_profiles(path, default=("AKIANOTTHISONE000001", "wrong", ""),
                   bedrock=(ACCESS_KEY, SECRET_KEY, "profile-token"))
    # the environment's keys are not used when the configuration names a profile
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(path), "AWS_ACCESS_KEY_ID": "AKIAENV",
           "AWS_SECRET_ACCESS_KEY": "env-secret"}
    d = await start_daemon(with_profile(daemon_config(fake, backup.url), "bedrock"), env=env)
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
    assert fake.auth_failures == [] and backup.requests == []
    assert fake.requests[-1].headers["Authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert fake.requests[-1].headers["X-Amz-Security-Token"] == "profile-token"


async def test_daemon_signs_with_a_containers_role(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], fake_openai: Any,
        start_daemon: Any) -> None:
    meta = await fake_metadata()
    fake = await fake_bedrock(access_key=meta.access_key, secret_key=meta.secret_key,
                              session_token=meta.session_token)
    backup = await fake_openai()
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{meta.url}/creds",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN": meta.auth_token}
    d = await start_daemon(daemon_config(fake, backup.url), env=env)
    for _ in range(3):
        raw = await d.openai.chat.completions.with_raw_response.create(
            model="default", messages=HELLO["messages"])
        assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
    assert fake.auth_failures == [] and backup.requests == []
    assert meta.calls == [("GET", "/creds")]  # fetched once, then cached
    assert fake.requests[-1].headers["X-Amz-Security-Token"] == meta.session_token


async def test_daemon_signs_with_the_instance_role(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], fake_openai: Any,
        start_daemon: Any) -> None:
    meta = await fake_metadata()
    fake = await fake_bedrock(access_key=meta.access_key, secret_key=meta.secret_key,
                              session_token=meta.session_token)
    backup = await fake_openai()
    # no other source: the instance metadata service, where the tests point it
    d = await start_daemon(daemon_config(fake, backup.url),
                           env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": meta.url})
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"], stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in raw.parse()
                    if c.choices]) == "Hello from the fake Bedrock"
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
    assert fake.auth_failures == [] and backup.requests == []
    assert meta.calls[0] == ("PUT", "/latest/api/token") and len(meta.calls) == 3


async def test_no_instance_metadata_is_an_auth_failure_that_fails_over(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_openai: Any,
        start_daemon: Any) -> None:
    """A host without IMDS (nothing listens): the configuration loads, each Bedrock call
    fails as `auth` without reaching Bedrock, the backup serves, the daemon goes on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fake = await fake_bedrock()
    backup = await fake_openai()
    d = await start_daemon(daemon_config(fake, backup.url),
                           env={"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://127.0.0.1:{port}"})
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-model"] == "backup/gpt"
    assert raw.headers["x-failoverd-failover"] == "bedrock/sonnet>backup/gpt:auth"
    assert fake.requests == []  # never sent unsigned
    for _ in range(2):
        answer = await d.openai.chat.completions.create(model="default",
                                                        messages=HELLO["messages"])
        assert answer.choices[0].message.content
    assert len(backup.requests) == 3
    assert not d.task.done()


async def test_an_expired_token_fetches_new_credentials_and_blocks_nothing(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], fake_openai: Any,
        start_daemon: Any) -> None:
    """A container role's credentials revoked (or expired early) before their Expiration:
    Bedrock's ExpiredTokenException makes the next request fetch new ones. It fails over once,
    as a connection failure, not as auth, which would close every Bedrock model for an hour."""
    meta = await fake_metadata()
    fake = await fake_bedrock(access_key=meta.access_key, secret_key=meta.secret_key,
                              session_token=meta.session_token)
    backup = await fake_openai()
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{meta.url}/creds",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN": meta.auth_token}
    d = await start_daemon(daemon_config(fake, backup.url), env=env)
    first = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert first.headers["x-failoverd-model"] == "bedrock/sonnet"
    # the role's credentials are replaced; Bedrock refuses the old token as expired
    meta.rotate(2, meta.expires)
    fake.push("expired")
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-failover"] == "bedrock/sonnet>backup/gpt:connection"
    fake.access_key, fake.secret_key = meta.access_key, meta.secret_key
    fake.session_token = meta.session_token  # from now on only the new ones are valid
    status = (await d.http.get("/v1/status")).json()
    assert status["providers"]["bedrock"]["credentials"] == "ok"  # not blocked
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"  # signed with the new ones
    assert fake.requests[-1].headers["X-Amz-Security-Token"] == "metadata-session-token-2"
    assert meta.calls == [("GET", "/creds"), ("GET", "/creds")]


async def test_an_expired_token_from_the_environment_stays_an_auth_failure(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]], fake_openai: Any,
        start_daemon: Any) -> None:
    """The environment's credentials change only with a restart: their expiry is auth."""
    fake = await fake_bedrock()
    backup = await fake_openai()
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    d = await start_daemon(daemon_config(fake, backup.url), env=env)
    fake.push("expired")
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-failover"] == "bedrock/sonnet>backup/gpt:auth"
    status = (await d.http.get("/v1/status")).json()
    assert status["providers"]["bedrock"]["credentials"] == "auth"


async def test_an_expired_token_after_the_file_was_rewritten_reads_it_again(
        tmp_path: Path, fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
        fake_openai: Any, start_daemon: Any) -> None:
    fake = await fake_bedrock(session_token="token-1")
    backup = await fake_openai()
    path = tmp_path / "credentials"
    write_profiles(path, default=(ACCESS_KEY, SECRET_KEY, "token-1"))
    d = await start_daemon(daemon_config(fake, backup.url),
                           env={"AWS_SHARED_CREDENTIALS_FILE": str(path)})
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
    # a credential helper writes a new session token; Bedrock refuses the old one before
    # failoverd's next look at the file
    write_profiles(path, default=(ACCESS_KEY, SECRET_KEY, "token-2-longer"))
    fake.push("expired")
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-failover"] == "bedrock/sonnet>backup/gpt:connection"
    fake.session_token = "token-2-longer"
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
    assert fake.requests[-1].headers["X-Amz-Security-Token"] == "token-2-longer"
