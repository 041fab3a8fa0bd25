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
from failoverd.mqtt import MqttPublisher
from failoverd.prober import Prober
from failoverd.service import Service
from failoverd.clock import Clock, SystemClock
from failoverd.config import Config
from failoverd.errors import ConfigError
from failoverd.listen import activated_sockets, bind_unix
from failoverd.notify import Notifier

logger = logging.getLogger(__name__)


class Supervisor:
    """Runs one daemon instance until asked to stop."""

    def __init__(self, config: Config, *, config_path: str | None = None,
                 clock: Clock | None = None, rng: random.Random | None = None,
                 handle_signals: bool = True, notifier: Notifier | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.handle_signals = handle_signals
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.service: Service | None = None
        self.prober: Prober | None = None
        self.notifier = notifier or Notifier()
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
            # exit order is LIFO: state is saved last, after MQTT said offline, after hooks
            # finished, after the HTTP server drained
            service = Service(self.config, self.session, self.clock, self.rng)
            self.service = service
            service.restore_state()
            stack.callback(service.save_state)
            if self.config.mqtt.enabled:
                service.mqtt = MqttPublisher(self.config.mqtt, self.config.node, service.bus,
                                             self.clock, self.rng)
                await stack.enter_async_context(service.mqtt)
                service.publish_all_states()
            stack.push_async_callback(service.hooks.aclose, 5.0)
            service.reloader = self.reload_config
            self.prober = service.prober = Prober(service, self.clock, self.rng)
            self.prober.start()
            stack.push_async_callback(self.prober.stop)
            app = make_app(service)
            runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                   shutdown_timeout=self.config.daemon.shutdown_timeout)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            for sock in self._sockets(stack):
                await web.SockSite(runner, sock).start()
            if self.config.daemon.tcp:
                host, _, port = self.config.daemon.tcp.rpartition(":")
                await web.TCPSite(runner, host, int(port)).start()
            logger.info("failoverd listening on %s (%d models, %d providers)",
                        self.config.daemon.socket, len(self.config.models),
                        len(self.config.providers))
            self.ready.set()
            self.notifier.ready(self.status_line())
            interval = self.notifier.watchdog_interval()
            if interval is not None:
                watchdog = asyncio.create_task(self.notifier.watchdog_loop(interval),
                                               name="watchdog")
                stack.callback(watchdog.cancel)
            await self._serve()
            self.notifier.stopping()
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

    def _sockets(self, stack: AsyncExitStack) -> list[socket.socket]:
        """Sockets passed by systemd, else the configured path bound by us."""
        socks = activated_sockets()
        if socks:
            logger.info("using %d socket(s) passed by systemd", len(socks))
            return socks
        path = self.config.daemon.socket
        sock = bind_unix(path, self.config.daemon.socket_mode)
        stack.callback(_unlink_if_ours, path, os.stat(path).st_ino)
        return [sock]

    def status_line(self) -> str:
        """The one-line STATUS= summary for systemd."""
        cfg = self.config
        if self.service is None:
            return "starting"
        healthy = sum(1 for m in cfg.models if self.service.model_state(m) in
                      ("closed", "half_open"))
        return (f"{healthy}/{len(cfg.models)} models healthy, "
                f"{self.service.recent_failovers()} failovers in the last minute, "
                f"{self.service.inflight} in flight")

    def reload(self) -> bool:
        return self.reload_config()[0]

    def reload_config(self) -> tuple[bool, list[str]]:
        """Re-reads the config file; an invalid one is rejected and the old one stays."""
        if not self.config_path or self.service is None or self.session is None:
            logger.warning("reload requested but there is no config file to re-read")
            return False, ["no config file to re-read"]
        self.notifier.reloading()
        try:
            try:
                new = config_mod.load(self.config_path)
            except ConfigError as exc:
                for problem in exc.problems:
                    logger.error("config rejected: %s", problem)
                self.service.bus.emit("config:rejected", source=self.config_path,
                                      problems=exc.problems)
                return False, exc.problems
            self.config = new
            self.service.reload(new)
            if self.prober is not None:
                self.prober.reschedule()
            logger.info("config reloaded from %s", self.config_path)
            return True, []
        finally:
            self.notifier.ready(self.status_line())


def _unlink_if_ours(path: str, inode: int) -> None:
    """Removes our socket file on a clean stop, unless something else replaced it since."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


def run_blocking(config: Config, config_path: str | None, **kwargs: Any) -> None:
    asyncio.run(Supervisor(config, config_path=config_path, **kwargs).run())
