"""What many test modules share: bounded polling, and talking to a running daemon."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path


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


FAILOVERCTL = str(Path(sys.executable).parent / "failoverctl")


async def failoverctl(socket: str, *args: str, timeout: float = 15) -> tuple[int, str, str]:
    """Runs the real failoverctl against `socket`: (exit code, stdout, stderr). Through
    asyncio's subprocess API, since a blocking run would stop an in-process daemon answering."""
    proc = await asyncio.create_subprocess_exec(
        FAILOVERCTL, "--socket", socket, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
