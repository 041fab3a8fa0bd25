"""The supervisor owns the daemon's lifecycle.

Start: one shared aiohttp ClientSession (keep-alive pool), the runtime for the loaded
config, the HTTP app on the Unix socket (and optional loopback TCP), then READY.
Signals only set events (SIGTERM/SIGINT: stop, SIGHUP: reload). Stop runs in a fixed order:
stop accepting, drain in-flight requests up to shutdown_timeout, cancel the rest, close.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
from aiohttp import web

from failoverd import config as config_mod
from failoverd.api.app import make_app
from failoverd.api.service import Service
from failoverd.clock import Clock, SystemClock
from failoverd.config import Config
from failoverd.errors import ConfigError, FailoverdError
from failoverd.runtime import build_runtime

logger = logging.getLogger(__name__)


class Supervisor:
    """Runs one daemon instance until asked to stop."""

    def __init__(self, config: Config, *, config_path: str | None = None,
                 clock: Clock | None = None, rng: random.Random | None = None,
                 handle_signals: bool = True) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.handle_signals = handle_signals
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.service: Service | None = None
        self.session: aiohttp.ClientSession | None = None

    # ------------------------------------------------------------------ control

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        async with AsyncExitStack() as stack:
            if self.handle_signals:
                for sig, action in ((signal.SIGTERM, self.request_stop),
                                    (signal.SIGINT, self.request_stop),
                                    (signal.SIGHUP, self.request_reload)):
                    loop.add_signal_handler(sig, action)
                    stack.callback(loop.remove_signal_handler, sig)
            self.session = await stack.enter_async_context(aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300,
                                               keepalive_timeout=60),
                skip_auto_headers=("User-Agent",), headers={"User-Agent": "failoverd"},
                auto_decompress=True,
            ))
            runtime = build_runtime(self.config, self.session, self.clock, None, self.rng)
            self.service = Service(runtime, self.clock)
            app = make_app(self.service)
            runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                   shutdown_timeout=self.config.daemon.shutdown_timeout)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            sock = bind_unix(self.config.daemon.socket, self.config.daemon.socket_mode)
            stack.callback(_unlink, self.config.daemon.socket)
            await web.SockSite(runner, sock).start()
            if self.config.daemon.tcp:
                host, _, port = self.config.daemon.tcp.rpartition(":")
                await web.TCPSite(runner, host, int(port)).start()
            logger.info("failoverd listening on %s (%d models, %d providers)",
                        self.config.daemon.socket, len(self.config.models),
                        len(self.config.providers))
            self.ready.set()
            await self._serve()
            logger.info("failoverd stopping: draining %d in-flight request(s)",
                        self.service.inflight)

    async def _serve(self) -> None:
        while not self._stop.is_set():
            stop = asyncio.ensure_future(self._stop.wait())
            reload = asyncio.ensure_future(self._reload.wait())
            try:
                await asyncio.wait((stop, reload), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                reload.cancel()
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                self.reload()

    def reload(self) -> bool:
        """Re-reads the config file; an invalid one is rejected and the old one stays."""
        if not self.config_path or self.service is None or self.session is None:
            logger.warning("reload requested but there is no config file to re-read")
            return False
        try:
            new = config_mod.load(self.config_path)
        except ConfigError as exc:
            for problem in exc.problems:
                logger.error("config rejected: %s", problem)
            return False
        self.config = new
        self.service.install(build_runtime(new, self.session, self.clock, None, self.rng))
        logger.info("config reloaded from %s", self.config_path)
        return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def bind_unix(path: str, mode: int) -> socket.socket:
    """Binds the Unix socket, replacing a stale socket file but never a live one."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, mode=0o755, exist_ok=True)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
        except OSError as exc:
            raise FailoverdError(f"{path} exists and is not a usable socket: {exc}") from exc
        else:
            raise FailoverdError(f"{path} is in use: another failoverd seems to be running")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, mode)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def run_blocking(config: Config, config_path: str | None, **kwargs: Any) -> None:
    asyncio.run(Supervisor(config, config_path=config_path, **kwargs).run())
