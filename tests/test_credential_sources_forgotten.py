"""The run-time credential sources (AWS temporary credentials, Google tokens) are shared by
the providers that use one, across reloads, and forgotten once no provider holds them: a
daemon reloaded many times with changing sources keeps none of the old ones."""

from __future__ import annotations

import asyncio
import gc

import pytest

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


async def test_a_google_token_fetch_outlives_the_caller_that_gave_up() -> None:
    """A token endpoint slower than a request's attempt: the request gives up, the fetch goes
    on, and the next request has its token without a second fetch."""
    from failoverd.clock import ManualClock

    calls = 0
    gate = asyncio.Event()

    async def fetch() -> tuple[str, float]:
        nonlocal calls
        calls += 1
        await gate.wait()
        return f"ya29.token-{calls}", 3600.0

    source = googlecreds.TokenSource(fetch, ManualClock(), "a slow endpoint")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(source.get(), 0.05)  # the attempt's time is up
    gate.set()
    token = await asyncio.wait_for(source.get(), 2)
    assert token.token == "ya29.token-1" and calls == 1
