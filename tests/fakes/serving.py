"""A loopback asyncio stream server whose handler tasks end with it (for raw test servers)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class StreamServer:
    """`_listen` starts it on 127.0.0.1 (`port`); handlers call `_track()` first and discard
    their task from `_tasks` last; `close` cancels what still runs and waits for it."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _listen(self, handler: Handler, **kwargs: Any) -> None:
        self._server = await asyncio.start_server(handler, "127.0.0.1", 0, **kwargs)
        self.port = self._server.sockets[0].getsockname()[1]

    def _track(self) -> asyncio.Task[Any]:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        return task

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
