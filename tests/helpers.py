"""What many test modules share: bounded polling, and talking to a running daemon."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def until(predicate: Callable[[], bool], timeout: float = 5.0, *,
                interval: float = 0.01) -> None:
    """Polls `predicate()` until it holds; TimeoutError after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(interval)


async def until_async(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0, *,
                      interval: float = 0.01) -> float:
    """Polls an async predicate until it holds (for things driven by real time, such as
    APScheduler's jobs); returns the seconds it took, TimeoutError after `timeout`."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(interval)
    return time.monotonic() - started
