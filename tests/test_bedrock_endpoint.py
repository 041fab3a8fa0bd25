"""A bedrock provider without base_url reaches the endpoint botocore would: the environment's
AWS_ENDPOINT_URL_BEDROCK_RUNTIME / AWS_ENDPOINT_URL, the profile's [services] section or
endpoint_url (awsendpoints.py); base_url wins over them all. The daemon against a fake Bedrock
on 127.0.0.1 reached only through these settings."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from failoverd import config
from failoverd.errors import ConfigError, UpstreamError
from failoverd.failures import FailureReason
from failoverd.http1 import HttpClient
from failoverd.providers import make_provider
from tests.fakes.bedrock import ACCESS_KEY, SECRET_KEY, FakeBedrock, fake_bedrock
from tests.test_aws_endpoints import SERVICES
from tests.test_aws_profiles import home, keys
from tests.test_bedrock_e2e import daemon_config
from tests.test_provider_bedrock import HELLO, LIMITS

__all__ = ["fake_bedrock"]  # the fixture


def test_bedrock_endpoint_from_the_profile_and_the_environment(tmp_path: Path) -> None:
    body = ('[providers.b]\nkind = "bedrock"\nregion = "us-east-1"\n{extra}'
            '[models."b/m"]\nprovider = "b"\nname = "anthropic.claude-3-5-haiku-20241022-v1:0"\n')
    env = {**home(tmp_path, config="[profile p]\nservices = private\n" + SERVICES,
                  credentials="[p]\n" + keys()),
           "AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "env-secret"}
    cfg = config.loads(body.format(extra='aws_profile = "p"\n'), env=env)
    assert cfg.providers["b"].base_url == "http://127.0.0.1:7/bedrock"
    # the environment's keys sign; AWS_PROFILE's endpoints still serve, as in botocore
    cfg = config.loads(body.format(extra=""), env={**env, "AWS_PROFILE": "p"})
    assert cfg.providers["b"].base_url == "http://127.0.0.1:7/bedrock"
    cfg = config.loads(body.format(extra=""), env=env)
    assert cfg.providers["b"].base_url == "https://bedrock-runtime.us-east-1.amazonaws.com"
    cfg = config.loads(body.format(extra=""), env={
        **env, "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": "https://vpce-0abc.example.com"})
    assert cfg.providers["b"].base_url == "https://vpce-0abc.example.com"
    # the provider's base_url wins over all (botocore's endpoint_url argument)
    cfg = config.loads(body.format(extra='base_url = "http://127.0.0.1:2"\n'), env={
        **env, "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": "https://vpce-0abc.example.com"})
    assert cfg.providers["b"].base_url == "http://127.0.0.1:2"
    # an API key takes the same endpoints
    cfg = config.loads(body.format(extra='api_key_env = "BEDROCK_KEY"\n'),
                       env={**env, "BEDROCK_KEY": "ABSK-key", "AWS_PROFILE": "p"})
    assert cfg.providers["b"].base_url == "http://127.0.0.1:7/bedrock"
    with pytest.raises(ConfigError) as caught:
        config.loads(body.format(extra=""), env={**env, "AWS_ENDPOINT_URL": "bad"})
    assert caught.value.problems == [
        "providers.b: environment variable AWS_ENDPOINT_URL is not a usable URL (http:// or "
        "https://, a host, a port up to 65535): 'bad'"]


@pytest.mark.parametrize("where", ["environment", "services", "profile"])
async def test_the_daemon_reaches_bedrock_through_the_configured_endpoint(
        where: str, tmp_path: Path, fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
        fake_openai: Any, start_daemon: Any) -> None:
    fake = await fake_bedrock(session_token="profile-token")
    backup = await fake_openai()
    body = daemon_config(fake, backup.url).replace(f'base_url = "{fake.url}"\n', "", 1)
    profile = {"environment": "", "services": "services = mine\n",
               "profile": f"endpoint_url = {fake.url}\n"}[where]
    env = home(tmp_path, config=(f"[profile bedrock]\n{profile}"
                                 f"[services mine]\nbedrock_runtime =\n"
                                 f"  endpoint_url = {fake.url}\n"),
               credentials="[bedrock]\n" + keys(ACCESS_KEY, SECRET_KEY)
               + "aws_session_token = profile-token\n")
    env["AWS_PROFILE"] = "bedrock"
    if where == "environment":
        env["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = fake.url
    d = await start_daemon(body, env=env)
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
    assert fake.auth_failures == [] and backup.requests == []
    # signed for the provider's region whatever the host (the fake checks the scope)
    assert fake.requests[-1].headers["Authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")


def test_a_config_file_that_cannot_be_parsed_fails_the_environments_keys_too(
        tmp_path: Path) -> None:
    """As botocore (and every AWS CLI command) fails on it: the endpoint settings are read
    whatever signs. Reported once when the profile's credentials fail on it as well."""
    env = home(tmp_path, config="[profile p\nendpoint_url = http://127.0.0.1:1\n")
    body = ('[providers.b]\nkind = "bedrock"\nregion = "us-east-1"\n{extra}'
            '[models."b/m"]\nprovider = "b"\n')
    problem = f"{tmp_path}/.aws/config is not a valid config file"
    for extra, more, key in (("", {"AWS_ACCESS_KEY_ID": "AKIAENV",
                                   "AWS_SECRET_ACCESS_KEY": "s"}, "providers.b"),
                             ('aws_profile = "p"\n', {}, "providers.b.aws_profile")):
        with pytest.raises(ConfigError) as caught:
            config.loads(body.format(extra=extra), env={**env, **more})
        assert [p for p in caught.value.problems if problem in p] == [
            f"{key}: {problem}: File contains no section headers."], caught.value.problems


async def test_a_wrong_configured_endpoint_is_named_in_the_404s_message(
        tmp_path: Path, fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
        http_client: HttpClient) -> None:
    """A path Bedrock does not know (here a proxy prefix the fake does not have) said only
    "check base_url", which the provider does not have: the endpoint came from the
    environment."""
    fake = await fake_bedrock()
    env = {**home(tmp_path), "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
           "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": fake.url.rstrip("/") + "/wrong-prefix"}
    cfg = config.loads('[providers.b]\nkind = "bedrock"\nregion = "us-east-1"\n'
                       '[models."b/m"]\nprovider = "b"\nname = "anthropic.claude-x"\n', env=env)
    provider = make_provider(cfg.providers["b"], http_client)
    with pytest.raises(UpstreamError) as caught:
        await provider.complete(HELLO, cfg.models["b/m"], LIMITS)
    assert caught.value.reason is FailureReason.NOT_FOUND
    assert f"{fake.url.rstrip('/')}/wrong-prefix: check base_url, or without it the AWS " \
        "endpoint settings: AWS_ENDPOINT_URL_BEDROCK_RUNTIME" in str(caught.value)


@pytest.mark.parametrize(("url", "why"), [
    ("https://proxy.example.com/bedrock?team=a", "no query or fragment"),
    ("https://user:s3cret-pw@proxy.example.com", "no user name or password"),
    ("http://my_proxy:8080", "a host name of letters, digits"),
])
def test_a_bedrock_base_url_follows_the_endpoints_rules(url: str, why: str) -> None:
    """The paths are appended to base_url as to a configured endpoint: a query took them
    (https://h/bedrock?team=a/model/... asked for /bedrock), a password stood in a 404's
    message."""
    body = (f'[providers.b]\nkind = "bedrock"\nregion = "us-east-1"\nbase_url = "{url}"\n'
            'api_key_env = "K"\n[models."b/m"]\nprovider = "b"\n')
    with pytest.raises(ConfigError) as caught:
        config.loads(body, env={"K": "ABSK-key"})
    assert len(caught.value.problems) == 1, caught.value.problems
    assert caught.value.problems[0].startswith(
        f"providers.b.base_url: is not a usable URL ({why}"), caught.value.problems
    assert "s3cret" not in str(caught.value.problems)
