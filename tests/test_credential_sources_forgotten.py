"""The run-time credential sources (AWS temporary credentials, Google tokens) are shared by
the providers that use one, across reloads, and forgotten once no provider holds them: a
daemon reloaded many times with changing sources keeps none of the old ones."""

from __future__ import annotations

import gc

from failoverd import awscreds, googlecreds
from failoverd.http1 import HttpClient


async def test_aws_sources_are_shared_then_forgotten() -> None:
    async with HttpClient() as client:
        env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://127.0.0.1:9/creds"}
        source = awscreds.choose_source(env)
        first = awscreds.open_source(source, client=client)
        assert awscreds.open_source(source, client=client) is first  # a reload's providers
        others = [awscreds.open_source(awscreds.choose_source(
            {"AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:9/creds/{i}"}),
            client=client) for i in range(50)]
        assert len(awscreds._refreshing[client]) == 51
        del others
        gc.collect()
        assert list(awscreds._refreshing[client].values()) == [first]


async def test_google_sources_are_shared_then_forgotten() -> None:
    async with HttpClient() as client:
        sources = [googlecreds.MetadataServer(host=f"127.0.0.1:{9000 + i}") for i in range(20)]
        held = [googlecreds.open_source(s, client=client) for s in sources]
        assert googlecreds.open_source(sources[0], client=client) is held[0]
        assert len(googlecreds._sources[client]) == 20
        del held[1:]
        gc.collect()
        assert list(googlecreds._sources[client].values()) == held
