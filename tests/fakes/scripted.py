"""A scripted streaming server: each request takes the next step of `script` (else
`default`), and a step may hold its later pieces behind `gate` until the test opens it.

The audio fakes (tests/test_speech_stream.py's Tts, tests/test_transcription_stream.py's Stt)
differ only in their route and in what they keep of each request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self, TypeVar

import pytest
from aiohttp import web

from tests.fakes.base import AppServer


class Scripted(AppServer):
    """See the module docstring. `sent` counts what the steps wrote (theirs to say in what
    unit), `finished` is set by a step that ended its body, `accepts` keeps each request's
    Accept header."""

    route = "/"

    def __init__(self, default: Callable[[web.Request, Any], Awaitable[web.StreamResponse]]
                 ) -> None:
        self.default = default
        self.script: list[Callable[[web.Request, Any], Awaitable[web.StreamResponse]]] = []
        self.accepts: list[str] = []
        self.gate = asyncio.Event()
        self.sent = 0
        self.finished = asyncio.Event()

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_post(self.route, self._handle)
        await self._serve(app)
        return self

    async def close(self) -> None:
        self.gate.set()
        await super().close()

    async def keep(self, request: web.Request) -> None:
        """What a subclass keeps of a request (its body or form)."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await self.keep(request)
        self.accepts.append(request.headers.get("Accept", ""))
        step = self.script.pop(0) if self.script else self.default
        return await step(request, self)


ScriptedT = TypeVar("ScriptedT", bound=Scripted)


def pair_fixture(cls: type[ScriptedT], config: Callable[[ScriptedT, ScriptedT], str],
                 name: str = "pair") -> Any:
    """A pytest fixture `name`: two started `cls` fakes, a and b, and the daemon on
    `config(a, b)`, as (a, b, daemon); the fakes are closed after the test."""

    async def fixture(start_daemon: Any) -> AsyncIterator[tuple[ScriptedT, ScriptedT, Any]]:
        a, b = await cls().start(), await cls().start()
        d = await start_daemon(config(a, b))
        yield a, b, d
        await a.close()
        await b.close()

    return pytest.fixture(fixture, name=name)
