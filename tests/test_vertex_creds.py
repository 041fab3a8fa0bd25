"""Google credentials for vertex providers: the configuration keys and the chain of sources
(googlecreds.py), the token cache on a manual clock, and the grants against a fake token
endpoint and metadata server (googletoken.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from failoverd import config
from failoverd.clock import ManualClock
from failoverd.errors import ConfigError
from failoverd.googlecreds import (
    REFRESH_AHEAD,
    RETRY_KEEPING,
    RETRY_WITHOUT,
    AuthorizedUser,
    GoogleConfigError,
    GoogleCredentialsError,
    MetadataServer,
    ServiceAccount,
    TokenSource,
    choose_source,
    open_source,
)
from failoverd.http1 import HttpClient
from tests.fakes.vertex import PROJECT, FakeGoogleAuth, ServiceKey, fake_google_auth, rsa_key

__all__ = ["fake_google_auth", "rsa_key"]  # the fixtures


def write(path: Path, data: dict[str, Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(data))
    return str(path)


def user(token_uri: str = "https://oauth2.googleapis.com/token", **extra: Any
         ) -> dict[str, Any]:
    auth = FakeGoogleAuth()
    return {"type": "authorized_user", "client_id": auth.client_id,
            "client_secret": auth.client_secret, "refresh_token": auth.refresh_token,
            "token_uri": token_uri, **extra}


# ------------------------------------------------------------------ the chain


def test_the_chain_of_sources(rsa_key: ServiceKey, tmp_path: Path) -> None:
    sa = write(tmp_path / "sa.json", rsa_key.account("https://oauth2.googleapis.com/token"))
    person = write(tmp_path / "user.json", user(quota_project_id="billed-project"))
    adc = write(tmp_path / "home" / ".config" / "gcloud" / "application_default_credentials"
                ".json", user())
    home = str(tmp_path / "home")
    # the provider's file first, whatever the environment says
    found = choose_source({"GOOGLE_APPLICATION_CREDENTIALS": person, "HOME": home}, sa)
    assert isinstance(found, ServiceAccount) and found.project_id == PROJECT
    # then GOOGLE_APPLICATION_CREDENTIALS
    found = choose_source({"GOOGLE_APPLICATION_CREDENTIALS": person, "HOME": home})
    assert isinstance(found, AuthorizedUser) and found.quota_project_id == "billed-project"
    # then gcloud's file (CLOUDSDK_CONFIG moves it)
    found = choose_source({"HOME": home})
    assert isinstance(found, AuthorizedUser) and found.path == adc
    moved = write(tmp_path / "gcloud2" / "application_default_credentials.json",
                  user(quota_project_id="moved"))
    found = choose_source({"HOME": home, "CLOUDSDK_CONFIG": str(tmp_path / "gcloud2")})
    assert isinstance(found, AuthorizedUser) and found.path == moved
    # then the metadata server (no HOME, as under systemd: no gcloud file)
    assert choose_source({}) == MetadataServer("metadata.google.internal")
    assert choose_source({"GCE_METADATA_HOST": "127.0.0.1:8080"}) == \
        MetadataServer("127.0.0.1:8080")
    # a named file that is not there is an error, not a fall through to the next source
    with pytest.raises(GoogleConfigError, match="GOOGLE_APPLICATION_CREDENTIALS: .* does not "
                                                "exist"):
        choose_source({"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "nope.json")})


def test_files_it_cannot_read(rsa_key: ServiceKey, tmp_path: Path) -> None:
    cases: dict[str, Any] = {
        "external_account": {"type": "external_account", "audience": "x"},
        "no Google credentials file": {"type": "api_key"},
        "has no client_email": {**rsa_key.account("https://oauth2.googleapis.com/token"),
                                "client_email": ""},
        "has no refresh_token": {**user(), "refresh_token": ""},
        "private_key: no -----BEGIN": {**rsa_key.account("https://x.example/token"),
                                       "private_key": "not a key"},
        "token_uri must be https": rsa_key.account("http://tokens.example.com/token"),
    }
    for words, data in cases.items():
        path = write(tmp_path / "f.json", data)
        with pytest.raises(GoogleConfigError, match=words):
            choose_source({}, path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GoogleConfigError, match="is not JSON"):
        choose_source({}, str(tmp_path / "bad.json"))
    (tmp_path / "big.json").write_bytes(b" " * 70_000)
    with pytest.raises(GoogleConfigError, match="larger than"):
        choose_source({}, str(tmp_path / "big.json"))
    with pytest.raises(GoogleConfigError, match="not a regular file"):
        choose_source({}, str(tmp_path))


# ------------------------------------------------------------------ configuration


def vertex_toml(extra: str = "", region: str = 'region = "us-east5"\n') -> str:
    return f'[providers.v]\nkind = "vertex"\n{region}{extra}'


MODEL = '\n[models."v/flash"]\nprovider = "v"\nname = "gemini-2.5-flash"\n'


def test_configuration(rsa_key: ServiceKey, tmp_path: Path) -> None:
    sa = write(tmp_path / "sa.json", rsa_key.account("https://oauth2.googleapis.com/token"))
    cfg = config.loads(vertex_toml(f'google_credentials_file = "{sa}"\n') + MODEL, env={})
    p = cfg.providers["v"]
    assert p.kind == "vertex" and p.region == "us-east5" and p.project == PROJECT
    assert p.base_url == "https://us-east5-aiplatform.googleapis.com"
    assert isinstance(p.google, ServiceAccount)
    assert "PRIVATE" not in repr(cfg) and str(p.google.key.d) not in repr(cfg)
    # the project given wins; "global" has its own host; base_url overrides it
    cfg = config.loads(vertex_toml(f'google_credentials_file = "{sa}"\nproject = "other-1"\n',
                                   'region = "global"\n') + MODEL, env={})
    assert cfg.providers["v"].project == "other-1"
    assert cfg.providers["v"].base_url == "https://aiplatform.googleapis.com"
    cfg = config.loads(vertex_toml('project = "p-123456"\nbase_url = "http://127.0.0.1:9/v1"\n')
                       + MODEL, env={"GCE_METADATA_HOST": "127.0.0.1:9"})
    assert cfg.providers["v"].base_url == "http://127.0.0.1:9/v1"
    assert cfg.providers["v"].google == MetadataServer("127.0.0.1:9")
    # a user's file names its project as the quota project
    person = write(tmp_path / "user.json", user(quota_project_id="quota-proj"))
    cfg = config.loads(vertex_toml() + MODEL, env={"GOOGLE_APPLICATION_CREDENTIALS": person})
    assert cfg.providers["v"].project == "quota-proj"
    assert "refresh" not in repr(cfg) and FakeGoogleAuth().client_secret not in repr(cfg)


@pytest.mark.parametrize(("body", "env", "problem"), [
    (vertex_toml('project = "p-123456"\n', ""), {},
     'providers.v.region: is required for kind = "vertex"'),
    (vertex_toml('project = "p-123456"\n', 'region = "us-east-1"\n'), {},
     'providers.v.region: must be a Vertex AI location such as "us-east5"'),
    (vertex_toml('project = "Bad Project"\n'), {},
     'providers.v.project: must be a Google Cloud project id'),
    (vertex_toml('project = "p-123456"\napi_key_env = "KEY"\n'), {"KEY": "AIzaXXXX"},
     'providers.v.api_key_env: kind = "vertex" takes Google credentials'),
    (vertex_toml('project = "p-123456"\ngoogle_credentials_file = "/nope/sa.json"\n'), {},
     "providers.v.google_credentials_file: /nope/sa.json does not exist"),
    (vertex_toml('project = "p-123456"\ngoogle_credentials_file = ""\n'), {},
     "providers.v.google_credentials_file: must name a file"),
    ('[providers.o]\nkind = "openai"\nproject = "p-123456"\n', {},
     'providers.o.project: only valid for kind = "vertex"'),
    ('[providers.o]\nkind = "gemini"\ngoogle_credentials_file = "/x.json"\n', {},
     'providers.o.google_credentials_file: only valid for kind = "vertex"'),
    ('[providers.b]\nkind = "bedrock"\nregion = "us-east5"\n', {"AWS_ACCESS_KEY_ID": "A",
                                                                "AWS_SECRET_ACCESS_KEY": "B"},
     'providers.b.region: must be an AWS region name such as "us-east-1"'),
])
def test_configuration_problems(body: str, env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.loads(body, env=env)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


# ------------------------------------------------------------------ the token cache


class Endpoint:
    """A token endpoint as the cache sees it: the fetch it is given (failoverd's own code is
    not replaced: this is the injected seam)."""

    def __init__(self) -> None:
        self.calls = 0
        self.lifetime = 3600.0
        self.error: GoogleCredentialsError | None = None
        self.gate: asyncio.Event | None = None

    async def fetch(self) -> tuple[str, float]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return f"token-{self.calls}", self.lifetime


async def test_tokens_are_cached_and_refreshed_ahead_of_expiry() -> None:
    clock, endpoint = ManualClock(), Endpoint()
    source = TokenSource(endpoint.fetch, clock, "the test endpoint")
    first = await source.get()
    assert first.token == "token-1" and first.expires == clock.time() + 3600
    assert (await source.get()) is first and endpoint.calls == 1
    clock.advance(3600 - REFRESH_AHEAD - 1)
    assert (await source.get()) is first
    clock.advance(2)  # within REFRESH_AHEAD of the expiry: a new one
    assert (await source.get()).token == "token-2" and endpoint.calls == 2


async def test_a_failed_refresh_keeps_the_token_until_it_expires() -> None:
    clock, endpoint = ManualClock(), Endpoint()
    source = TokenSource(endpoint.fetch, clock, "the test endpoint")
    first = await source.get()
    clock.advance(3600 - REFRESH_AHEAD + 1)
    endpoint.error = GoogleCredentialsError("down", transient=True)
    assert (await source.get()) is first and endpoint.calls == 2
    assert (await source.get()) is first and endpoint.calls == 2  # not asked again yet
    clock.advance(RETRY_KEEPING)
    assert (await source.get()) is first and endpoint.calls == 3
    clock.advance(REFRESH_AHEAD)  # expired: the error now
    with pytest.raises(GoogleCredentialsError) as caught:
        await source.get()
    assert caught.value.transient and endpoint.calls == 4
    with pytest.raises(GoogleCredentialsError):  # failed moments ago: not asked again
        await source.get()
    assert endpoint.calls == 4
    clock.advance(RETRY_WITHOUT)
    endpoint.error = None
    assert (await source.get()).token == "token-5"


async def test_one_fetch_serves_concurrent_calls() -> None:
    clock, endpoint = ManualClock(), Endpoint()
    endpoint.gate = asyncio.Event()
    source = TokenSource(endpoint.fetch, clock, "the test endpoint")
    waiting = [asyncio.ensure_future(source.get()) for _ in range(20)]
    await asyncio.sleep(0)
    endpoint.gate.set()
    tokens = await asyncio.gather(*waiting)
    assert endpoint.calls == 1 and all(t is tokens[0] for t in tokens)


async def test_refusals() -> None:
    clock, endpoint = ManualClock(), Endpoint()
    source = TokenSource(endpoint.fetch, clock, "the test endpoint")
    first = await source.get()
    assert source.refused(first)  # revoked early: the next call has another
    second = await source.get()
    assert second.token == "token-2" and second.after_refusal
    assert not source.refused(second)  # refused too: the credentials' trouble
    third = await source.get()
    assert third.token == "token-3" and third.after_refusal  # fetched for a refusal too
    # a token replaced meanwhile: the next call has the new one already
    assert source.refused(first)
    assert (await source.get()) is third
    # a token fetched for a refusal that served a while is stale when refused, not bad
    clock.advance(RETRY_KEEPING)
    assert source.refused(third)
    assert (await source.get()).token == "token-4"


# ------------------------------------------------------------------ the grants


async def test_user_credentials_and_their_secrets(
        fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]], http_client: HttpClient,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    auth = await fake_google_auth()
    source = choose_source({}, write(tmp_path / "u.json", user(f"{auth.url}/token")))
    tokens = open_source(source, client=http_client, clock=ManualClock())
    with caplog.at_level(logging.DEBUG, logger="failoverd"):
        token = await tokens.get()
        assert token.token == auth.issued[0] and token.token not in repr(token)
        assert auth.grants == [{"grant_type": "refresh_token", "client_id": auth.client_id,
                                "client_secret": auth.client_secret,
                                "refresh_token": auth.refresh_token}]
        # a refusal that echoes the secrets does not pass them on
        auth.refuse = True
        tokens.refused(token)
        with pytest.raises(GoogleCredentialsError) as caught:
            await tokens.get()
    assert not caught.value.transient and "invalid_grant" in str(caught.value)
    for secret in (auth.client_secret, auth.refresh_token, token.token):
        assert secret not in str(caught.value) and secret not in caplog.text
    # the same source, client and clock share one cache (a reload keeps its token)
    assert open_source(source, client=http_client, clock=tokens._clock) is tokens


async def test_metadata_server(fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]],
                               http_client: HttpClient) -> None:
    auth = await fake_google_auth()
    source = choose_source({"GCE_METADATA_HOST": auth.host})
    tokens = open_source(source, client=http_client, clock=ManualClock())
    assert (await tokens.get()).token == auth.issued[0] and auth.metadata_calls == 1
    auth.fail = 503
    tokens.refused(await tokens.get())
    with pytest.raises(GoogleCredentialsError) as caught:
        await tokens.get()
    assert caught.value.transient
    # no metadata server at all (its name does not resolve): the chain's last resort, and
    # not transient; a port that does not answer: test_vertex_review.py
    nowhere = open_source(choose_source({"GCE_METADATA_HOST": "metadata.invalid"}),
                          client=http_client, clock=ManualClock())
    with pytest.raises(GoogleCredentialsError) as caught:
        await nowhere.get()
    assert "last source of the credential chain" in str(caught.value)
    assert caught.value.transient is (caught.value.no_host is False)


async def test_service_account_grant_failures(
        fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]], http_client: HttpClient,
        rsa_key: ServiceKey, tmp_path: Path) -> None:
    auth = await fake_google_auth(modulus=rsa_key.modulus)
    source = choose_source({}, write(tmp_path / "sa.json",
                                     rsa_key.account(f"{auth.url}/token")))
    clock = ManualClock()
    tokens = open_source(source, client=http_client, clock=clock)
    assert (await tokens.get()).token == auth.issued[0]  # the fake checked the signature
    clock.advance(3600)
    auth.fail = 500
    with pytest.raises(GoogleCredentialsError) as caught:
        await tokens.get()
    assert caught.value.transient and "HTTP 500" in str(caught.value)
    assert auth.grants[-1]["assertion"] not in str(caught.value)
