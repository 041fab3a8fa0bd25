"""What the fake upstreams share: a real aiohttp server on 127.0.0.1, a script of behaviours,
the log of the requests they got, and a pytest fixture that makes started fakes.

A fake names its behaviours with strings: `fake.push("rate_limit", "ok")` scripts the next
requests, `fake.default` answers the rest. Each fake adds its routes, its `ERRORS` table (as
`errors`) and how one of those errors is rendered (`_error`).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Self, TypeVar

import pytest
from aiohttp import web

LoggedT = TypeVar("LoggedT")


@dataclass
class Logged:
    """A request as a fake got it (fakes that need more, such as the query, have their own)."""

    path: str
    headers: dict[str, str]
    body: Any
FakeT = TypeVar("FakeT", bound="AppServer")


class AppServer:
    """A fake served by aiohttp on 127.0.0.1: `_serve(app)` starts it and sets `url` (its port,
    then `path`); `close` stops it. Small fakes with routes of their own build on it."""

    url: str = ""
    _runner: web.AppRunner | None = None

    async def _serve(self, app: web.Application, path: str = "/v1", *,
                     scheme: str = "http", **kwargs: Any) -> None:
        self._runner, port = await serve_app(app, **kwargs)
        self.url = f"{scheme}://127.0.0.1:{port}{path}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@dataclass
class FakeServer(AppServer, Generic[LoggedT]):
    """Shared behaviours: any key of `errors`, "hang" (no answer), "slow:<seconds>" (answer
    after a delay, where the fake's handler allows it)."""

    default: str = "ok"
    script: deque[str] = field(default_factory=deque, kw_only=True)
    requests: list[LoggedT] = field(default_factory=list, kw_only=True)
    url: str = field(default="", kw_only=True)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    errors: ClassVar[Mapping[str, object]] = {}
    url_path: ClassVar[str] = ""  # appended to http://127.0.0.1:<port> to make `url`
    truncated: ClassVar[bytes] = b""  # an answer's first bytes: what "invalid_json" sends
    # True: a handler whose client (the daemon) went away is cancelled, and can tell
    handler_cancellation: ClassVar[bool] = False

    def push(self, *behaviours: str) -> None:
        self.script.extend(behaviours)

    def _next(self) -> str:
        return self.script.popleft() if self.script else self.default

    def _routes(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    def _error(self, name: str, model: str) -> web.Response:
        """The response for `errors[name]`; `model` is the model the request named, if any."""
        raise NotImplementedError

    async def start(self) -> Self:
        app = web.Application()
        self._routes(app.router)
        await self._serve(app, self.url_path, handler_cancellation=self.handler_cancellation)
        return self

    async def _preamble(self, behaviour: str, model: str = "", *,
                        slow: bool = True) -> web.Response | None:
        """A scripted error's response, or None once a "hang" or "slow:" delay has passed."""
        if behaviour in self.errors:
            return self._error(behaviour, model)
        if behaviour.startswith("late:"):  # "late:<seconds>:<error>": that error, that late
            _, pause, error = behaviour.split(":", 2)
            await asyncio.sleep(float(pause))
            return self._error(error, model)
        if behaviour == "hang":
            await asyncio.sleep(3600)
        if slow and behaviour.startswith("slow:"):
            await asyncio.sleep(float(behaviour[5:]))
        return None

    async def _answer_preamble(self, behaviour: str, model: str = "", *,
                               slow: bool = True) -> web.Response | None:
        """As `_preamble`, for the endpoint that answers prompts, where "invalid_json" also
        has its response: the answer cut off after its first bytes (`truncated`)."""
        early = await self._preamble(behaviour, model, slow=slow)
        if early is None and behaviour == "invalid_json":
            return web.Response(body=self.truncated, content_type="application/json")
        return early


async def serve_app(app: web.Application, *, ssl_context: ssl.SSLContext | None = None,
                    handler_cancellation: bool = False) -> tuple[web.AppRunner, int]:
    """Serves `app` on a free port of 127.0.0.1: (its runner, to clean up; the port)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1,
                           handler_cancellation=handler_cancellation)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port: int = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


async def processing_comments(resp: web.StreamResponse, seconds: float) -> None:
    """SSE comment lines for `seconds` while "processing", as OpenRouter sends them before any
    token."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await resp.write(b": PROCESSING\n\n")
        await asyncio.sleep(0.1)


async def event_stream(request: web.Request) -> web.StreamResponse:
    """A 200 text/event-stream response to `request`, its head sent: the events follow."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    return resp


def cut(request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
    """Kills the connection mid-stream, as a crashing upstream or a dropped network does."""
    assert request.transport is not None
    request.transport.close()
    return resp


def fake_fixture(cls: type[FakeT], name: str) -> Any:
    """A pytest fixture `name`: a factory of started `cls` fakes, all closed after the test."""

    async def factory() -> AsyncIterator[Callable[..., Awaitable[FakeT]]]:
        started: list[FakeT] = []

        async def make(**kwargs: Any) -> FakeT:
            fake = await cls(**kwargs).start()
            started.append(fake)
            return fake

        yield make
        for fake in started:
            await fake.close()

    factory.__doc__ = f"A factory of started {cls.__name__} servers, all closed after the test."
    return pytest.fixture(factory, name=name)
