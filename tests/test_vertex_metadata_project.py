"""A vertex provider that names no project, on Google Cloud: the metadata server's project
(``GET /computeMetadata/v1/project/project-id``), asked at the first call, once, and the
failures that say what to set. A fake metadata server on 127.0.0.1 (GCE_METADATA_HOST)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from aiohttp import web

from failoverd import config
from failoverd.clock import ManualClock
from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.googlecreds import RETRY_WITHOUT, MetadataServer, open_project
from failoverd.http1 import HttpClient
from failoverd.providers.http import probe_limits
from failoverd.providers.vertex import VertexProvider
from tests.fakes.base import fake_fixture
from tests.fakes.openai import FakeOpenAI
from tests.fakes.vertex import LOCATION, PROJECT, FakeGoogleAuth, FakeVertex, fake_vertex

__all__ = ["fake_vertex"]  # the fixture


@dataclass
class FakeMetadata(FakeGoogleAuth):
    """FakeGoogleAuth's metadata server, which also names its project (text, with
    ``Metadata-Flavor: Google``, as the real one answers). `project_status` other than 200
    answers that status instead; `project` is what it names."""

    project: str = PROJECT
    project_status: int = 200
    project_calls: int = 0
    hold: asyncio.Event | None = None  # when given, the project is answered once it is set

    async def start(self) -> FakeMetadata:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_get("/computeMetadata/v1/instance/service-accounts/default/token",
                           self._metadata)
        app.router.add_get("/computeMetadata/v1/project/project-id", self._project)
        await self._serve(app, "")
        return self

    async def _project(self, request: web.Request) -> web.Response:
        self.project_calls += 1
        if self.hold is not None:
            await self.hold.wait()
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403, text="Missing Metadata-Flavor:Google header.")
        if self.project_status != 200:
            return web.Response(status=self.project_status, text="metadata server trouble",
                                headers={"Metadata-Flavor": "Google"})
        return web.Response(text=self.project, content_type="application/text",
                            headers={"Metadata-Flavor": "Google"})


fake_metadata = fake_fixture(FakeMetadata, "fake_metadata")


def toml(vertex_url: str, backup: str = "") -> str:
    body = f"""
[providers.v]
kind = "vertex"
region = "{LOCATION}"
base_url = "{vertex_url}"
[models."v/flash"]
provider = "v"
name = "gemini-2.5-flash"
[models."v/sonnet"]
provider = "v"
name = "claude-sonnet-4-5@20250929"
"""
    if backup:
        body += f"""
[providers.backup]
kind = "openai"
base_url = "{backup}"
[models."backup/gpt"]
provider = "backup"
[routing]
primary = "v/sonnet"
fallbacks = ["v/flash", "backup/gpt"]
deadline = 10
[probes]
kind = "none"
"""
    return body


def test_no_project_with_the_metadata_servers_tokens_is_no_configuration_error() -> None:
    cfg = config.loads(toml("http://127.0.0.1:9"), env={"GCE_METADATA_HOST": "127.0.0.1:8"})
    provider = cfg.providers["v"]
    assert provider.project == "" and provider.google == MetadataServer("127.0.0.1:8")
    # GOOGLE_CLOUD_PROJECT still names it, and the metadata server is then never asked
    cfg = config.loads(toml("http://127.0.0.1:9"), env={"GCE_METADATA_HOST": "127.0.0.1:8",
                                                        "GOOGLE_CLOUD_PROJECT": "named-1"})
    assert cfg.providers["v"].project == "named-1"


async def test_the_daemon_takes_the_metadata_servers_project_once(
        fake_vertex: Callable[..., Awaitable[FakeVertex]],
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], fake_openai: Any,
        start_daemon: Any) -> None:
    vertex = await fake_vertex()
    metadata = await fake_metadata(vertex=vertex)
    backup: FakeOpenAI = await fake_openai()
    d = await start_daemon(toml(vertex.url, backup.url),
                           env={"GCE_METADATA_HOST": metadata.host})
    for model, publisher in (("v/sonnet", "anthropic"), ("v/flash", "google")):
        raw = await d.openai.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["x-failoverd-model"] == model
        assert vertex.calls(publisher)[-1].path.startswith(
            f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/{publisher}/")
    stream = await d.openai.chat.completions.create(
        model="v/flash", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream
                    if c.choices]) == "Hello from Gemini on Vertex"
    # asked once for both publishers and all calls; the token from the same server
    assert metadata.project_calls == 1 and metadata.metadata_calls == 1
    assert backup.requests == []


def provider(url: str, host: str, client: HttpClient,
             clock: ManualClock) -> tuple[VertexProvider, Any]:
    cfg = config.loads(toml(url), env={"GCE_METADATA_HOST": host})
    return VertexProvider(cfg.providers["v"], client, clock=clock), cfg.models["v/flash"]


PING = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}


async def test_a_metadata_server_that_names_no_project(
        fake_vertex: Callable[..., Awaitable[FakeVertex]],
        fake_metadata: Callable[..., Awaitable[FakeMetadata]],
        http_client: HttpClient) -> None:
    vertex = await fake_vertex()
    metadata = await fake_metadata(vertex=vertex, project_status=503)
    clock = ManualClock()
    adapter, model = provider(vertex.url, metadata.host, http_client, clock)
    # the server's trouble: a connection failure (the breakers count it), asked again only
    # after RETRY_WITHOUT seconds
    for _ in range(2):
        with pytest.raises(UpstreamError) as caught:
            await adapter.complete(PING, model, probe_limits(5, 5))
        assert caught.value.reason is FailureReason.CONNECTION
        assert "GOOGLE_CLOUD_PROJECT" in str(caught.value)
    assert metadata.project_calls == 1 and vertex.requests == []
    # a refusal (no project for this instance): auth, saying what to set
    metadata.project_status = 404
    clock.advance(RETRY_WITHOUT)
    with pytest.raises(UpstreamError) as caught:
        await adapter.complete(PING, model, probe_limits(5, 5))
    assert caught.value.reason is FailureReason.AUTH
    assert "give the provider's project, or set GOOGLE_CLOUD_PROJECT" in str(caught.value)
    # an answer that is no project id is none
    metadata.project_status, metadata.project = 200, "Not A/Project"
    clock.advance(RETRY_WITHOUT)
    with pytest.raises(UpstreamError) as caught:
        await adapter.complete(PING, model, probe_limits(5, 5))
    assert caught.value.reason is FailureReason.AUTH and "no project id" in str(caught.value)
    # once it answers, the calls go to its project
    metadata.project = PROJECT
    clock.advance(RETRY_WITHOUT)
    await adapter.complete(PING, model, probe_limits(5, 5))
    assert vertex.calls("google")[-1].path.startswith(f"/v1/projects/{PROJECT}/")
    assert metadata.project_calls == 4
    # a reload's provider shares the lookup: not asked again
    again, _ = provider(vertex.url, metadata.host, http_client, clock)
    await again.complete(PING, model, probe_limits(5, 5))
    assert metadata.project_calls == 4


async def test_not_on_google_cloud(http_client: HttpClient) -> None:
    """No metadata server (its name does not resolve): auth, naming what to set."""
    clock = ManualClock()
    adapter, model = provider("http://127.0.0.1:9", "metadata.invalid", http_client, clock)
    with pytest.raises(UpstreamError) as caught:
        await adapter.complete(PING, model, probe_limits(5, 5))
    assert caught.value.reason is FailureReason.AUTH
    assert "set GOOGLE_CLOUD_PROJECT" in str(caught.value)
    lookup = open_project(MetadataServer("metadata.invalid"), client=http_client, clock=clock)
    assert lookup is adapter._auth.project


async def test_a_slow_metadata_server_is_waited_for_within_the_calls_time_only(
        fake_vertex: Callable[..., Awaitable[FakeVertex]],
        fake_metadata: Callable[..., Awaitable[FakeMetadata]],
        http_client: HttpClient) -> None:
    """The project's lookup counts in the attempt's time (a stream's first-token time): a
    server that does not answer fails each call as a timeout when its time is up, and the
    lookup goes on for the next calls (asked once), which take its answer when it comes."""
    vertex = await fake_vertex()
    metadata = await fake_metadata(vertex=vertex, hold=asyncio.Event())
    adapter, model = provider(vertex.url, metadata.host, http_client, ManualClock())
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamError) as caught:
        await adapter.complete(PING, model, probe_limits(0.2, 0.2))
    assert caught.value.reason is FailureReason.TIMEOUT
    with pytest.raises(UpstreamError) as caught:
        chunks = adapter.stream(PING, model, replace(probe_limits(5, 5), first_token=0.2))
        await anext(chunks)
    assert caught.value.reason is FailureReason.TIMEOUT
    assert "no project from the metadata server within 0.2 s" in str(caught.value)
    assert loop.time() - started < 2  # not the metadata server's 3 s, nor the call's 5
    assert metadata.project_calls == 1 and vertex.requests == []
    assert metadata.hold is not None
    metadata.hold.set()
    await adapter.complete(PING, model, probe_limits(5, 5))
    assert vertex.calls("google")[-1].path.startswith(f"/v1/projects/{PROJECT}/")
    assert metadata.project_calls == 1
