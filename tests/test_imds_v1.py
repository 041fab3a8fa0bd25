"""The EC2 instance role's credentials by IMDSv1 when the IMDSv2 session token cannot be had,
as botocore falls back: the token call refused as unknown (403/404/405) or not answered (a
container past the hop limit of the PUT's answer), unless AWS_EC2_METADATA_V1_DISABLED=true."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from failoverd import awsmetadata
from failoverd.awscreds import AwsCredentialsError, InstanceMetadata, choose_source
from failoverd.http1 import HttpClient
from tests.fakes.awsmeta import ROLE, FakeMetadata, fake_metadata

__all__ = ["fake_metadata"]  # the fixture

Factory = Callable[..., Awaitable[FakeMetadata]]


def source(fake: FakeMetadata, v1: bool = True) -> InstanceMetadata:
    env = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": fake.url}
    if not v1:
        env["AWS_EC2_METADATA_V1_DISABLED"] = "true"
    chosen = choose_source(env)
    assert isinstance(chosen, InstanceMetadata) and chosen.v1 is v1
    return chosen


@pytest.mark.parametrize("status", [403, 404, 405])
async def test_a_refused_token_call_falls_back_to_imdsv1(fake_metadata: Factory,
                                                         status: int) -> None:
    fake = await fake_metadata(v1=True, token_status=status)
    async with HttpClient() as client:
        creds = await awsmetadata.fetch_instance(client, source(fake))
    assert creds.access_key_id == fake.access_key and creds.session_token == fake.session_token
    assert fake.v1_calls == 2  # the role's name and its credentials, without a token
    assert [c[0] for c in fake.calls] == ["PUT", "GET", "GET"]


async def test_an_unanswered_token_call_falls_back_to_imdsv1(fake_metadata: Factory,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setattr(awsmetadata, "IMDS_TIMEOUT", 0.2)
    fake = await fake_metadata(v1=True, token_hang=True)
    async with HttpClient() as client:
        creds = await awsmetadata.fetch_instance(client, source(fake))
    assert creds.access_key_id == fake.access_key and fake.v1_calls == 2


async def test_imdsv1_disabled_keeps_to_imdsv2(fake_metadata: Factory) -> None:
    fake = await fake_metadata(v1=True, token_status=405)
    async with HttpClient() as client:
        with pytest.raises(AwsCredentialsError, match="gave no IMDSv2 token"):
            await awsmetadata.fetch_instance(client, source(fake, v1=False))
    assert fake.v1_calls == 0 and [c[0] for c in fake.calls] == ["PUT"]


async def test_an_instance_that_requires_imdsv2_says_why(fake_metadata: Factory,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """IMDSv2 required (v1 answers 401) and the token call not answered: the hop limit."""
    monkeypatch.setattr(awsmetadata, "IMDS_TIMEOUT", 0.2)
    fake = await fake_metadata(v1=False, token_hang=True)
    async with HttpClient() as client:
        with pytest.raises(AwsCredentialsError, match="requires IMDSv2, but its token call got "
                                                      "no answer .*hop limit"):
            await awsmetadata.fetch_instance(client, source(fake))


async def test_imdsv2_is_used_when_it_answers(fake_metadata: Factory) -> None:
    fake = await fake_metadata(v1=True)
    async with HttpClient() as client:
        creds = await awsmetadata.fetch_instance(client, source(fake))
    assert creds.access_key_id == fake.access_key and fake.v1_calls == 0
    assert ROLE in fake.calls[-1][1]


async def test_no_service_at_all_is_still_the_chains_last_resort() -> None:
    async with HttpClient() as client:
        with pytest.raises(AwsCredentialsError, match="the last source of the credential chain"):
            await awsmetadata.fetch_instance(
                client, InstanceMetadata("http://127.0.0.1:9"))


@pytest.mark.parametrize(("env", "endpoint"), [
    ({"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6"}, "http://[fd00:ec2::254]"),
    ({"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv4"}, "http://169.254.169.254"),
    ({"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "IPv6",
      "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:8080"}, "http://127.0.0.1:8080"),
])
def test_the_endpoint_mode_picks_the_address(env: dict[str, str], endpoint: str) -> None:
    chosen = choose_source(env)
    assert isinstance(chosen, InstanceMetadata) and chosen.endpoint == endpoint


def test_an_unknown_endpoint_mode_is_a_config_error() -> None:
    from failoverd.awscreds import AwsConfigError

    with pytest.raises(AwsConfigError, match="must be IPv4 or IPv6, got 'ipv5'"):
        choose_source({"AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE": "ipv5"})
