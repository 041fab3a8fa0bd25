"""The AWS endpoints as botocore configures them (awsendpoints.py): AWS_ENDPOINT_URL_<SERVICE>,
AWS_ENDPOINT_URL, a profile's ``[services]`` section and ``endpoint_url``, the switch that
ignores them all, and ``sts_regional_endpoints``; an assumed role reaching a fake STS on
127.0.0.1 through a ``[services]`` section (a VPC's private STS endpoint). Bedrock's own:
tests/test_bedrock_endpoint.py."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from failoverd import config
from failoverd.awscreds import (
    AssumeRole,
    AwsConfigError,
    SsoRole,
    WebIdentityRole,
    choose_source,
    open_source,
)
from failoverd.awsendpoints import GLOBAL_STS, Endpoints, sts_url
from failoverd.awsprofiles import endpoints
from failoverd.clock import ManualClock
from failoverd.errors import ConfigError
from failoverd.http1 import HttpClient
from tests.test_aws_profiles import ROLE, home, keys
from tests.test_aws_profiles_fake import SOURCE_KEY, SOURCE_SECRET, FakeAws, fake_aws, issued
from tests.test_aws_profiles_roles import START, cache

__all__ = ["fake_aws"]  # the fixture

SERVICES = """[services private]
bedrock_runtime =
  endpoint_url = http://127.0.0.1:7/bedrock/
sts =
  endpoint_url = http://127.0.0.1:8
"""


def test_the_order_of_the_configured_endpoints() -> None:
    profile = {"services": "private", "endpoint_url": "http://127.0.0.1:6"}
    services = {"private": {"bedrock_runtime": "\nendpoint_url = http://127.0.0.1:7/bedrock/"}}
    ends = Endpoints({}, profile, services, "profile [p] (config)")
    default = "https://bedrock-runtime.us-east-1.amazonaws.com"
    # the services section's for the service; the profile's endpoint_url for the others
    assert ends.url("BEDROCK_RUNTIME", default) == "http://127.0.0.1:7/bedrock"
    assert ends.url("STS", "x") == "http://127.0.0.1:6"
    # the variables before the file: the service's, then the global one
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:5"}
    assert Endpoints(env, profile, services).url("BEDROCK_RUNTIME", default) == \
        "http://127.0.0.1:5"
    env["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"] = "https://vpce-1.example.com/"
    assert Endpoints(env, profile, services).url("BEDROCK_RUNTIME", default) == \
        "https://vpce-1.example.com"
    # turned off by the profile's key, or the variable, which wins over the key
    off = {**profile, "ignore_configured_endpoint_urls": "true"}
    assert Endpoints(env, off, services).url("BEDROCK_RUNTIME", default) == default
    assert Endpoints({**env, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "false"}, off,
                     services).url("BEDROCK_RUNTIME", default) == "https://vpce-1.example.com"
    assert Endpoints({"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "TRUE"}, profile,
                     services).url("STS", "d") == "d"


@pytest.mark.parametrize(("profile", "services", "env", "message"), [
    ({"services": "gone"}, {}, {}, "profile [p]: services names [services gone], which the "
     "config file does not have"),
    # botocore's InvalidConfigError too: neither is taken for no services key
    ({"services": ""}, {}, {}, "profile [p]: services is empty: name a [services NAME]"),
    ({"services": "empty"}, {"empty": {}}, {}, "profile [p]: services names [services empty], "
     "which has no keys"),
    ({"services": "s"}, {"s": {"sts": "http://127.0.0.1:8"}}, {},
     "[services s] sts must hold nested keys on the lines below it"),
    ({"services": "s"}, {"s": {"sts": "\nendpoint_url http://x"}}, {},
     "[services s] sts: 'endpoint_url http://x' is no \"key = value\" line"),
    ({"services": "s"}, {"s": {"sts": "\nendpoint_url = ftp://x"}}, {},
     "[services s] sts endpoint_url is not a usable URL"),
    ({"endpoint_url": "nowhere"}, {}, {}, "profile [p]: endpoint_url is not a usable URL"),
    ({}, {}, {"AWS_ENDPOINT_URL": "http://user:pw@:x"},
     "environment variable AWS_ENDPOINT_URL is not a usable URL"),
    ({"sts_regional_endpoints": "Regional"}, {}, {},
     "profile [p]: sts_regional_endpoints must be legacy or regional, got 'Regional'"),
    ({}, {}, {"AWS_STS_REGIONAL_ENDPOINTS": "global"},
     "environment variable AWS_STS_REGIONAL_ENDPOINTS must be legacy or regional"),
])
def test_settings_that_cannot_serve(profile: dict[str, str], services: dict[str, Any],
                                    env: dict[str, str], message: str) -> None:
    with pytest.raises(AwsConfigError) as caught:
        Endpoints(env, profile, services, "profile [p]").sts("us-east-1")
    assert str(caught.value).startswith(message), str(caught.value)
    assert "pw" not in str(caught.value)


def test_sts_regional_and_legacy(tmp_path: Path) -> None:
    env = home(tmp_path, config=f"[profile r]\nrole_arn = {ROLE}\nsource_profile = base\n",
               credentials="[base]\n" + keys())
    # regional by default (botocore's since 1.40), signed for the region
    role = choose_source(env, "r", region="eu-west-1")
    assert isinstance(role, AssumeRole)
    assert (role.endpoint, role.region) == ("https://sts.eu-west-1.amazonaws.com", "eu-west-1")
    # legacy: the global endpoint for the regions that had it, signed for us-east-1; the
    # others keep their own
    legacy = {**env, "AWS_STS_REGIONAL_ENDPOINTS": "legacy"}
    role = choose_source(legacy, "r", region="eu-west-1")
    assert isinstance(role, AssumeRole)
    assert (role.endpoint, role.region) == (GLOBAL_STS, "us-east-1")
    role = choose_source(legacy, "r", region="ap-east-1")
    assert isinstance(role, AssumeRole)
    assert role.endpoint == "https://sts.ap-east-1.amazonaws.com"
    # the profile's key; the variable over it
    env = home(tmp_path, config=f"[profile r]\nrole_arn = {ROLE}\nsource_profile = base\n"
               "sts_regional_endpoints = legacy\n")
    role = choose_source(env, "r", region="us-west-2")
    assert isinstance(role, AssumeRole) and role.endpoint == GLOBAL_STS
    role = choose_source({**env, "AWS_STS_REGIONAL_ENDPOINTS": "regional"}, "r",
                         region="us-west-2")
    assert isinstance(role, AssumeRole)
    assert role.endpoint == "https://sts.us-west-2.amazonaws.com"
    # a configured endpoint wins over both, signed for the region
    role = choose_source({**env, "AWS_ENDPOINT_URL_STS": "http://127.0.0.1:9"}, "r",
                         region="us-west-2")
    assert isinstance(role, AssumeRole)
    assert (role.endpoint, role.region) == ("http://127.0.0.1:9", "us-west-2")


def test_the_profile_in_uses_endpoints_serve_the_whole_chain(tmp_path: Path) -> None:
    """botocore reads the session's profile for every client: a chained role's and a web
    identity source's STS calls go where the profile in use says, not where theirs do."""
    token = tmp_path / "token"
    token.write_text("eyJ.token")
    env = home(tmp_path, config=(
        f"[profile outer]\nrole_arn = {ROLE}-outer\nsource_profile = web\nservices = private\n"
        f"[profile web]\nrole_arn = {ROLE}\nweb_identity_token_file = {token}\n"
        "endpoint_url = http://127.0.0.1:1\n" + SERVICES))
    outer = choose_source(env, "outer", region="us-east-1")
    assert isinstance(outer, AssumeRole) and isinstance(outer.source, WebIdentityRole)
    assert outer.endpoint == outer.source.endpoint == "http://127.0.0.1:8"
    # the portal and OIDC too (sso, sso_oidc keys; else the profile's endpoint_url)
    env = home(tmp_path, config=(
        "[profile sso]\nsso_session = corp\nsso_account_id = 111122223333\n"
        "sso_role_name = Bedrock\nservices = idc\nendpoint_url = http://127.0.0.1:3\n"
        "[sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\n"
        "sso_region = eu-west-1\n"
        "[services idc]\nsso =\n  endpoint_url = http://127.0.0.1:2\n"))
    sso = choose_source(env, "sso")
    assert isinstance(sso, SsoRole)
    assert (sso.endpoint, sso.oidc_endpoint) == ("http://127.0.0.1:2", "http://127.0.0.1:3")


def test_endpoints_of_a_profile_that_is_not_there(tmp_path: Path) -> None:
    env = home(tmp_path, config="[default]\nendpoint_url = http://127.0.0.1:4\n" + SERVICES)
    assert endpoints(env).url("STS", "d") == "http://127.0.0.1:4"
    assert endpoints({**env, "AWS_PROFILE": "other"}).url("STS", "d") == "d"
    assert endpoints({**env, "AWS_DEFAULT_PROFILE": "other"}).url("STS", "d") == "d"
    assert endpoints({}).url("BEDROCK_RUNTIME", "d") == "d"  # no HOME: no files


async def test_an_assumed_role_reaches_a_private_sts_through_a_services_section(
        tmp_path: Path, fake_aws: Callable[..., Awaitable[FakeAws]],
        http_client: HttpClient) -> None:
    clock = ManualClock(wall=time.time())
    fake = await fake_aws(now=clock.time, trust={ROLE: {SOURCE_KEY}}, region="eu-west-3")
    env = home(tmp_path, config=(
        f"[profile bedrock]\nrole_arn = {ROLE}\nsource_profile = base\nservices = vpc\n"
        f"[services vpc]\nsts =\n  endpoint_url = {fake.url}\n"),
        credentials="[base]\n" + keys(SOURCE_KEY, SOURCE_SECRET))
    source = choose_source(env, "bedrock", region="eu-west-3")
    assert isinstance(source, AssumeRole) and source.endpoint == fake.url.rstrip("/")
    creds = await open_source(source, client=http_client, clock=clock).get()
    assert creds.access_key_id == issued(1)[0]
    # signed for the provider's region (the fake checks the scope), by the source's keys
    assert [c["_caller"] for c in fake.sts_calls] == [SOURCE_KEY]


@pytest.mark.parametrize(("url", "why"), [
    # joined as "https://h/p?x=1/model/..." the request went to /p with the model in the query
    ("https://vpce-1.example.com/p?x=1", "no query or fragment"),
    ("https://vpce-1.example.com#top", "no query or fragment"),
    ("https://vpce-1.example.com/?", "no query or fragment"),
    # never sent, but it stood in the base_url that a 404's message quotes
    ("https://AKIA:s3cret-pw@vpce-1.example.com", "no user name or password"),
    ("http://my_host:9", "a host name of letters, digits"),
    ("http://exa mple.com", "a host name of letters, digits"),
    ("http://-bad.example.com", "a host name of letters, digits"),
])
def test_an_endpoint_is_scheme_host_port_and_path(url: str, why: str) -> None:
    """botocore appends the paths to the URL's path and keeps a query after them; failoverd's
    callers append to the URL, so what cannot be appended to is refused, naming the key."""
    env = {"AWS_ENDPOINT_URL_BEDROCK_RUNTIME": url}
    with pytest.raises(AwsConfigError) as caught:
        Endpoints(env).url("BEDROCK_RUNTIME", "d")
    message = str(caught.value)
    assert message.startswith("environment variable AWS_ENDPOINT_URL_BEDROCK_RUNTIME is not a "
                              f"usable URL ({why}"), message
    assert "s3cret" not in message and "x=1" not in message
    # what serves: a path (kept), an IPv6 address, a port, a trailing dot
    for good in ("https://vpce-1.example.com/proxy/bedrock", "http://[::1]:8080",
                 "https://bedrock-runtime.us-east-1.amazonaws.com."):
        assert Endpoints({"AWS_ENDPOINT_URL": good}).url("BEDROCK_RUNTIME", "d") == good


def test_sts_regional_endpoints_as_botocore_reads_it() -> None:
    """Each case checked against botocore 1.43: the variable set but empty wins over the
    profile's key and means regional; aws-global is the global endpoint in either mode; a bad
    value fails every client (Bedrock's, a configured STS's), not only the default STS."""
    legacy = {"sts_regional_endpoints": "legacy"}
    assert Endpoints({}, legacy).sts("us-east-1") == (GLOBAL_STS, "us-east-1")
    assert Endpoints({"AWS_STS_REGIONAL_ENDPOINTS": ""}, legacy).sts("us-east-1") == \
        ("https://sts.us-east-1.amazonaws.com", "us-east-1")
    assert Endpoints({}, {"sts_regional_endpoints": ""}).sts("eu-west-1")[0] == \
        "https://sts.eu-west-1.amazonaws.com"
    assert Endpoints({}).sts("aws-global") == (GLOBAL_STS, "us-east-1")
    assert Endpoints({}).sts("cn-north-1") == ("https://sts.cn-north-1.amazonaws.com.cn",
                                               "cn-north-1")
    bad = {"AWS_STS_REGIONAL_ENDPOINTS": "global"}
    for call in (lambda e: e.url("BEDROCK_RUNTIME", "d"), lambda e: e.sts("eu-west-1")):
        for env in (bad, {**bad, "AWS_ENDPOINT_URL_STS": "http://127.0.0.1:9"},
                    {**bad, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}):
            with pytest.raises(AwsConfigError, match="AWS_STS_REGIONAL_ENDPOINTS must be"):
                call(Endpoints(env))


def test_a_bad_sts_regional_endpoints_fails_a_bedrock_provider_signing_with_any_keys(
        tmp_path: Path) -> None:
    """As every botocore client fails on it (the AWS CLI's bedrock-runtime commands too)."""
    env = {**home(tmp_path, config="[default]\nsts_regional_endpoints = Legacy\n"),
           "AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "env-secret"}
    body = '[providers.b]\nkind = "bedrock"\nregion = "us-east-1"\n[models."b/m"]\nprovider = "b"\n'
    with pytest.raises(ConfigError) as caught:
        config.loads(body, env=env)
    assert caught.value.problems == [
        "providers.b: profile [default] (" + str(tmp_path / ".aws" / "config") + "): "
        "sts_regional_endpoints must be legacy or regional, got 'Legacy'"]


def test_an_empty_services_key_or_section_in_the_files(tmp_path: Path) -> None:
    env = home(tmp_path, config="[profile e]\nservices =\n[profile m]\nservices = none\n"
               "[services none]\n")
    for profile, message in (("e", "services is empty"), ("m", "which has no keys")):
        with pytest.raises(AwsConfigError, match=message):
            endpoints(env, profile).url("STS", "d")
    # turned off, nothing is read, as botocore does not look for the section then
    off = {**env, "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}
    assert endpoints(off, "e").url("STS", "d") == "d"


async def test_the_portal_and_oidc_reached_through_a_services_section(
        tmp_path: Path, fake_aws: Callable[..., Awaitable[FakeAws]],
        http_client: HttpClient) -> None:
    """The sso and sso_oidc keys (the service ids SSO, SSO OIDC in lower case, "_" for "-")
    carry the calls to a fake IAM Identity Center on 127.0.0.1: the token refreshed at OIDC,
    then the role's credentials from the portal; the profile's endpoint_url is a dead port."""
    clock = ManualClock(wall=time.time())
    fake = await fake_aws(now=clock.time, sso_roles={("111122223333", "BedrockUser")},
                          refresh={("client-1", "client-secret-1", "aorOLDrefresh")})
    env = home(tmp_path, config=(
        "[profile dev]\nsso_session = corp\nsso_account_id = 111122223333\n"
        "sso_role_name = BedrockUser\nservices = idc\nendpoint_url = http://127.0.0.1:1\n"
        f"[sso-session corp]\nsso_start_url = {START}\nsso_region = eu-west-1\n"
        f"[services idc]\nsso =\n  endpoint_url = {fake.url}\n"
        f"sso_oidc =\n  endpoint_url = {fake.url}\n"))
    registration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.time() + 86400))
    cache(tmp_path, "corp", "aoaALMOSTOLD", clock.time() + 600, clientId="client-1",
          clientSecret="client-secret-1", refreshToken="aorOLDrefresh",
          registrationExpiresAt=registration)
    creds = await open_source(choose_source(env, "dev"), client=http_client, clock=clock).get()
    assert creds.access_key_id == issued(1)[0]
    assert [c["refreshToken"] for c in fake.oidc_calls] == ["aorOLDrefresh"]
    assert fake.sso_calls == [("BedrockUser", "111122223333", "aoaFAKEaccessToken1")]


@pytest.mark.parametrize("path", ["/sts", "/sts/"])
async def test_an_sts_endpoint_with_a_path_is_called_at_that_path(
        path: str, tmp_path: Path, http_client: HttpClient) -> None:
    """botocore posts the Query protocol's "/" at the endpoint's path as it is given (with or
    without its trailing "/"), "/" only when there is none: a proxy's prefix is kept as is.
    The fake answers only there, and checks the signature over that path."""
    clock = ManualClock(wall=time.time())
    fake = FakeAws(now=clock.time, trust={ROLE: {SOURCE_KEY}})
    app = web.Application()
    app.router.add_post(path, fake._sts)
    await fake._serve(app, path)
    try:
        env = {**home(tmp_path, config=f"[profile r]\nrole_arn = {ROLE}\nsource_profile = b\n",
                      credentials="[b]\n" + keys(SOURCE_KEY, SOURCE_SECRET)),
               "AWS_ENDPOINT_URL_STS": fake.url}
        source = choose_source(env, "r", region="us-east-1")
        assert isinstance(source, AssumeRole) and source.endpoint == fake.url
        creds = await open_source(source, client=http_client, clock=clock).get()
        assert creds.access_key_id == issued(1)[0]
        assert [c["_caller"] for c in fake.sts_calls] == [SOURCE_KEY]
    finally:
        await fake.close()
    # and the default endpoints, without a path, get "/"
    assert sts_url("https://sts.us-east-1.amazonaws.com") == \
        "https://sts.us-east-1.amazonaws.com/"


def test_masked_hides_each_secret_and_an_empty_one_nothing() -> None:
    from failoverd.boundedcall import masked
    assert masked(b"token=abc&key=xyz", "abc", "xyz") == b"token=***&key=***"
    assert masked("said abc", "abc", "") == "said ***"  # "" would put *** between every byte
