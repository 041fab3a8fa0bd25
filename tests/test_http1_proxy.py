"""Upstream calls through an HTTP proxy: CONNECT tunnels for https, absolute-form for http.

A real proxy (tests/fakes/proxy.py) on loopback, real aiohttp origins (one on TLS), the
client as adapters use it, and the daemon end to end with a provider's `proxy` key.
"""

from __future__ import annotations

import base64
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from failoverd import config as config_mod
from failoverd.errors import ConfigError
from failoverd.http1 import ConnectError, HttpClient, Proxy
from failoverd.http1.client import redact
from tests.fakes.base import AppServer
from tests.fakes.proxy import FakeProxy

CT = 5.0


class Origin(AppServer):
    """An aiohttp origin that echoes what reached it: method, path, headers, body."""

    async def start(self, context: ssl.SSLContext | None = None) -> Origin:
        async def echo(request: web.Request) -> web.Response:
            return web.json_response({"method": request.method, "path": request.path_qs,
                                      "headers": dict(request.headers),
                                      "body": (await request.read()).decode()})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", echo)
        await self._serve(app, "", scheme="https" if context else "http", ssl_context=context)
        return self


@pytest.fixture
async def proxy() -> AsyncIterator[FakeProxy]:
    p = await FakeProxy().start()
    yield p
    await p.close()


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    o = await Origin().start()
    yield o
    await o.close()


@pytest.fixture
async def tls_origin(certificate: tuple[Path, Path]) -> AsyncIterator[Origin]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    o = await Origin().start(context)
    yield o
    await o.close()


@pytest.fixture
async def trusting(certificate: tuple[Path, Path]) -> AsyncIterator[HttpClient]:
    async with HttpClient(ssl_context=ssl.create_default_context(
            cafile=str(certificate[0]))) as c:
        yield c


async def call(via: Any, url: str, body: bytes = b'{"q": 1}') -> dict[str, Any]:
    resp = await via.request("POST", url, headers={"Content-Type": "application/json",
                                                   "Authorization": "Bearer sk-upstream"},
                             data=body, connect_timeout=CT)
    assert resp.status == 200
    answer: dict[str, Any] = orjson.loads(await resp.read())
    return answer


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---------------------------------------------------------------------- https: CONNECT


async def test_https_goes_through_a_connect_tunnel_and_reuses_it(
        proxy: FakeProxy, tls_origin: Origin, trusting: HttpClient) -> None:
    via = trusting.via(proxy.url)
    first = await call(via, f"{tls_origin.url}/v1/chat/completions")
    second = await call(via, f"{tls_origin.url}/v1/chat/completions?x=1")
    authority = tls_origin.url.removeprefix("https://")
    # one tunnel, TLS to the origin inside it: the proxy saw only CONNECT
    assert proxy.lines == [f"CONNECT {authority} HTTP/1.1"]
    assert trusting.connects == 1
    assert first["path"] == "/v1/chat/completions" and second["path"] == "/v1/chat/completions?x=1"
    assert first["headers"]["Authorization"] == "Bearer sk-upstream"
    assert first["headers"]["Host"] == authority
    assert "Proxy-Authorization" not in first["headers"]
    assert first["body"] == '{"q": 1}'
    # the same origin without the proxy is a different pool
    await call(trusting, f"{tls_origin.url}/direct")
    assert trusting.connects == 2 and len(proxy.lines) == 1


async def test_connect_sends_proxy_credentials(tls_origin: Origin, trusting: HttpClient) -> None:
    proxy = await FakeProxy(require=basic("alice", "p@ss:word")).start()
    try:
        url = proxy.url.replace("http://", "http://alice:p%40ss%3Aword@")
        await call(trusting.via(url), f"{tls_origin.url}/x")
        assert proxy.auth == [basic("alice", "p@ss:word")]
    finally:
        await proxy.close()


async def test_a_407_is_a_connect_error_that_names_the_proxy(
        tls_origin: Origin, trusting: HttpClient) -> None:
    proxy = await FakeProxy(require=basic("alice", "right")).start()
    try:
        via = trusting.via(proxy.url.replace("http://", "http://alice:wrong@"))
        with pytest.raises(ConnectError) as info:
            await call(via, f"{tls_origin.url}/x")
        message = str(info.value)
        assert "407 Proxy Authentication Required" in message
        assert f"proxy 127.0.0.1:{proxy.port}" in message
        assert "wrong" not in message  # no password in errors
        assert trusting.connects == 0
    finally:
        await proxy.close()


async def test_the_target_certificate_is_verified_through_the_tunnel(
        proxy: FakeProxy, tls_origin: Origin) -> None:
    async with HttpClient() as c:  # the default context does not trust the test certificate
        with pytest.raises(ConnectError, match="certificate verify failed"):
            await call(c.via(proxy.url), f"{tls_origin.url}/x")
    assert len(proxy.lines) == 1 and proxy.lines[0].startswith("CONNECT ")


async def test_an_unreachable_proxy_is_a_connect_error(tls_origin: Origin,
                                                       trusting: HttpClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: refused
        port = s.getsockname()[1]
        with pytest.raises(ConnectError, match=f"through proxy 127.0.0.1:{port}"):
            await call(trusting.via(f"http://127.0.0.1:{port}"), f"{tls_origin.url}/x")


# ---------------------------------------------------------------------- http: absolute form


async def test_plain_http_sends_the_absolute_url_to_the_proxy(proxy: FakeProxy, origin: Origin,
                                                              trusting: HttpClient) -> None:
    via = trusting.via(proxy.url.replace("http://", "http://bob:secret@"))
    got = await call(via, f"{origin.url}/v1/chat/completions?a=b")
    await call(via, f"{origin.url}/again")
    assert proxy.lines == [f"POST {origin.url}/v1/chat/completions?a=b HTTP/1.1",
                           f"POST {origin.url}/again HTTP/1.1"]
    assert proxy.auth == [basic("bob", "secret")] * 2
    assert got["path"] == "/v1/chat/completions?a=b" and got["body"] == '{"q": 1}'
    assert got["headers"]["Authorization"] == "Bearer sk-upstream"
    assert trusting.connects == 1  # keep-alive to the proxy


# ---------------------------------------------------------------------- URLs and config


@pytest.mark.parametrize(("url", "problem"), [
    ("https://proxy:3128", "http:// URL"),
    ("socks5://proxy:1080", "http:// URL"),
    ("proxy:3128", "http:// URL"),
    ("http://proxy:3128/path", "no path"),
])
def test_bad_proxy_urls_are_refused(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Proxy(url)


def test_proxy_parts_and_redaction() -> None:
    p = Proxy("http://u%40x:pw@proxy.example:3128")
    assert (p.host, p.port, p.authorization) == ("proxy.example", 3128, basic("u@x", "pw"))
    assert Proxy("http://proxy.example").port == 80
    assert redact("http://u:pw@proxy.example:3128") == "http://u:***@proxy.example:3128"
    assert redact("http://proxy.example:3128") == "http://proxy.example:3128"


def test_config_checks_the_proxy_key(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text("""
[providers.a]
kind = "openai"
base_url = "https://api.example.com/v1"
proxy = "https://user:hunter2@proxy:3128"
[providers.s]
kind = "simulated"
proxy = "http://proxy:3128"
[models."a/m"]
provider = "a"
[routing]
primary = "a/m"
""")
    with pytest.raises(ConfigError) as info:
        config_mod.load(path, env={})
    problems = "\n".join(info.value.problems)
    assert "providers.a.proxy: a proxy must be an http:// URL" in problems
    assert "hunter2" not in problems
    assert "providers.s.proxy: only valid for HTTP provider kinds" in problems


async def test_daemon_reaches_a_provider_through_its_proxy(
        fake_openai: Any, start_daemon: Any, proxy: FakeProxy) -> None:
    up = await fake_openai(reply="through the proxy")
    d = await start_daemon(f"""
[providers.a]
kind = "openai"
base_url = "{up.url}"
proxy = "{proxy.url}"
[models."a/m"]
provider = "a"
[routing]
primary = "a/m"
""")
    reply = await d.openai.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "through the proxy"
    assert proxy.lines == [f"POST {up.url}/chat/completions HTTP/1.1"]
    assert len(up.chat_requests()) == 1
    metrics = (await d.http.get("/metrics")).text
    origin = up.url.removesuffix("/v1")
    assert ("failoverd_upstream_connections_opened_total"
            f'{{upstream="{origin}",proxy="127.0.0.1:{proxy.port}"}} 1') in metrics
