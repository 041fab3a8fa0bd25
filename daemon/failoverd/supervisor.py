"""The supervisor owns the daemon's lifecycle.

Start, in this order: the listening socket (passed by systemd or bound by us, first so a
second instance fails before it touches anything), one shared upstream HTTP client (`http1`), the
Service (state restored from ``state_dir``), MQTT, hooks, the prober, the HTTP app, then
``READY=1`` and the watchdog. Signals only set events (SIGTERM/SIGINT: stop, SIGHUP: reload).

Stop runs in a fixed order with a time limit: ``STOPPING=1`` (with ``EXTEND_TIMEOUT_USEC``,
the time the stop may take, in case ``TimeoutStopSec=`` is shorter), stop accepting (the
listening sockets close, idle keep-alive connections close), drain in-flight requests and
streams up to ``daemon.shutdown_timeout``, cut what is left with a clear error, then close the
HTTP server, prober, hooks and MQTT (``offline``), persist state and remove our socket file.
Background hooks and the MQTT flush only get what is left of ``shutdown_timeout`` (at most 5 s
each; MQTT at least 1 s), so the whole stop stays within systemd's ``TimeoutStopSec=``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import signal
import socket
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
from aiohttp import web

from failoverd import config as config_mod
from failoverd import dropins, heap
from failoverd.api.app import make_app
from failoverd.api.drain import RequestTracker
from failoverd.api.fastpath import FastPath
from failoverd.clock import Clock, SystemClock
from failoverd.config import Config
from failoverd.errors import ConfigError, ListenError, StateError
from failoverd.http1 import HttpClient
from failoverd.listen import activated_sockets, bind_unix
from failoverd.mqtt import MqttPublisher
from failoverd.notify import Notifier
from failoverd.prober import Prober
from failoverd.service import IDLE_CONNECTION_SECONDS, Service

logger = logging.getLogger(__name__)

# After the drain deadline, cancelled handlers get this long to send their error and unwind.
CUT_GRACE_SECONDS = 2.0
# After the drain, background hooks and the MQTT flush get at most this long each, and only
# what is left of shutdown_timeout (hooks were running during the drain too): systemd's
# TimeoutStopSec= must cover the whole stop, and state is saved last.
HOOKS_GRACE_SECONDS = 5.0
MQTT_GRACE_SECONDS = 5.0
# ... but MQTT always gets this long to publish what is queued and `offline`.
MQTT_MIN_GRACE_SECONDS = 1.0
# What the stop may take after the drain: the cut, the HTTP server's cleanup, MQTT's last
# second, the state file (what EXTEND_TIMEOUT_USEC asks for beyond shutdown_timeout).
STOP_AFTER_DRAIN_SECONDS = 2 * CUT_GRACE_SECONDS + MQTT_MIN_GRACE_SECONDS + 5.0
# How often STATUS= is refreshed (only sent when the line changed).
STATUS_INTERVAL = 5.0

# Settings read once at start: a reload that changes them is applied except for these.
_RESTART_ONLY = ("socket", "socket_mode", "tcp", "state_dir", "node", "log_format")

class Supervisor:
    """Runs one daemon instance until asked to stop."""

    def __init__(self, config: Config, *, config_path: str | None = None,
                 clock: Clock | None = None, rng: random.Random | None = None,
                 handle_signals: bool = True, notifier: Notifier | None = None,
                 idle_timeout: float = IDLE_CONNECTION_SECONDS,
                 early_reload: Callable[[], bool] | None = None,
                 settle_heap: bool = False) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.handle_signals = handle_signals
        self.idle_timeout = idle_timeout
        # whether a SIGHUP came before our handler was installed (the CLI catches those)
        self._early_reload = early_reload
        # the daemon's own process only (heap.py): tests run many supervisors in one
        self.settle_heap = settle_heap
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._reload = asyncio.Event()
        self.service: Service | None = None
        self.prober: Prober | None = None
        self.notifier = notifier or Notifier()
        self.client: HttpClient | None = None
        self.tracker = RequestTracker()
        self.fast: FastPath | None = None
        self._listeners: list[asyncio.AbstractServer] = []
        self._background: list[asyncio.Task[None]] = []
        self._last_status = ""
        self._activated = False
        self._stop_deadline: float | None = None  # loop time by which the drain must end

    # ------------------------------------------------------------------ control

    def request_stop(self) -> None:
        """Begin a graceful stop; a second request cuts the drain short."""
        if self._stop.is_set():
            self._force.set()
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    # ------------------------------------------------------------------ run

    async def run(self) -> None:
        """Start, serve until stopped, then shut down in order. Raises ListenError early."""
        async with AsyncExitStack() as stack:
            if self.handle_signals:
                self._install_signals(stack)
            # LIFO: the watchdog keeps pinging until everything else has been shut down
            stack.push_async_callback(self._cancel_background)
            sockets = self._sockets(stack)
            self.client = await stack.enter_async_context(HttpClient(keepalive_timeout=60))
            # state is saved last, after MQTT said offline, after hooks finished, after the
            # HTTP server drained
            service = Service(self.config, self.client, self.clock, self.rng)
            service.client_idle_timeout = self.idle_timeout
            self.service = service
            service.restore_state()
            try:
                # a state_dir we cannot write would only show when the first breaker opens
                service.state_file.save(service.health.snapshot())
            except OSError as exc:
                raise StateError(f"cannot write the state file {service.state_file.path} "
                                 f"(daemon.state_dir): {exc.strerror or exc}") from exc
            stack.callback(service.save_state)
            if self.config.mqtt.enabled:
                service.mqtt = MqttPublisher(self.config.mqtt, self.config.node, service.bus,
                                             self.clock, self.rng)
                service.mqtt.start()
                stack.push_async_callback(self._stop_mqtt, service.mqtt)
                service.publish_all_states()
            stack.push_async_callback(self._close_hooks, service)
            service.reloader = self.reload_config
            self.prober = service.prober = Prober(service, self.clock, self.rng)
            self.prober.start()
            stack.push_async_callback(self.prober.stop)
            runner = await self._start_http(stack, service, sockets)
            where = ("sockets passed by systemd" if self._activated
                     else self.config.daemon.socket)
            logger.info("failoverd listening on %s (%d models, %d providers)", where,
                        len(self.config.models), len(self.config.providers))
            self.ready.set()
            self._last_status = self.status_line()
            self.notifier.ready(self._last_status)
            if self.settle_heap:
                heap.settle()
            self._start_background()
            await self._serve()
            await self._drain(runner)
            await runner.cleanup()
        logger.info("failoverd stopped")

    def _install_signals(self, stack: AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()

        def stop(sig: signal.Signals) -> None:
            if self._stop.is_set():
                logger.warning("%s again: cutting the drain short", sig.name)
            else:
                logger.info("%s received: stopping", sig.name)
            self.request_stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop, sig)
            stack.callback(loop.remove_signal_handler, sig)
        # the handler before ours (the CLI's) comes back afterwards: asyncio would leave
        # SIGHUP's default action, which ends the process while it is still shutting down
        previous = signal.getsignal(signal.SIGHUP)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        if previous is not None:
            stack.callback(signal.signal, signal.SIGHUP, previous)
        stack.callback(loop.remove_signal_handler, signal.SIGHUP)
        if self._early_reload is not None and self._early_reload():
            logger.info("SIGHUP received while starting: reloading once started")
            self.request_reload()

    async def _start_http(self, stack: AsyncExitStack, service: Service,
                          sockets: list[socket.socket]) -> web.AppRunner:
        app = make_app(service)
        self.tracker.install(app)
        # Our own drain runs first; the runner's timeout only bounds what is left after it.
        # handler_cancellation: a client that goes away cancels its request, so the upstream
        # call stops, its breaker permit and concurrency slot are released at once
        runner = web.AppRunner(app, handle_signals=False, access_log=None,
                               shutdown_timeout=CUT_GRACE_SECONDS, handler_cancellation=True,
                               keepalive_timeout=self.idle_timeout)
        await runner.setup()
        # also on a failed start; a second cleanup after the normal one is a no-op
        stack.push_async_callback(runner.cleanup)
        if not self.tracker.guards(runner.server):
            raise RuntimeError(f"aiohttp {aiohttp.__version__} does not build its server from "
                               "the application's entry point: failoverd's access guard would "
                               "be bypassed, so it does not start (see api/drain.py)")
        # every connection starts on the fast path, which hands what it does not serve to
        # aiohttp's protocol (api/fastpath.py)
        assert runner.server is not None  # set up above
        self.fast = FastPath(app, self.tracker, runner.server)
        stack.callback(self.fast.close)
        loop = asyncio.get_running_loop()
        for sock in sockets:
            self._listeners.append(await loop.create_server(self.fast, sock=sock, backlog=128))
        if self.config.daemon.tcp:
            host, _, port = self.config.daemon.tcp.rpartition(":")
            try:
                self._listeners.append(await loop.create_server(
                    self.fast, host.strip("[]"), int(port), backlog=128, reuse_address=True))
            except OSError as exc:
                raise ListenError(f"cannot listen on daemon.tcp {self.config.daemon.tcp}: "
                                  f"{exc.strerror or exc}") from exc
        stack.callback(self._close_listeners)
        return runner

    def _close_listeners(self) -> None:
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()

    def _start_background(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is not None:
            logger.info("systemd watchdog enabled: pinging every %.1f s", interval)
            self._background.append(asyncio.create_task(
                self.notifier.watchdog_loop(interval), name="watchdog"))
        if self.notifier.enabled or self.config.mqtt.enabled:
            # STATUS= under systemd; the spending caps' MQTT states after a UTC day or month
            # ends, with or without systemd
            self._background.append(asyncio.create_task(self._status_loop(), name="status"))

    async def _cancel_background(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            if self.notifier.enabled:
                self.refresh_status()
            if self.service is not None:  # a UTC day or month that ended resets the caps
                self.service.publish_budgets()

    def refresh_status(self) -> None:
        """Sends STATUS= if the summary changed since the last one."""
        line = self.status_line()
        if line != self._last_status:
            self._last_status = line
            self.notifier.status(line)

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

    # ------------------------------------------------------------------ stop

    def _left(self, most: float) -> float:
        """What is left of shutdown_timeout, at most `most`; nothing after a forced stop."""
        if self._force.is_set():
            return 0.0
        if self._stop_deadline is None:  # a failed start: no drain happened
            return most
        return max(0.0, min(most, self._stop_deadline - asyncio.get_running_loop().time()))

    async def _close_hooks(self, service: Service) -> None:
        await service.hooks.aclose(self._left(HOOKS_GRACE_SECONDS))

    async def _stop_mqtt(self, mqtt: MqttPublisher) -> None:
        await mqtt.stop(max(MQTT_MIN_GRACE_SECONDS, self._left(MQTT_GRACE_SECONDS)))

    async def _drain(self, runner: web.AppRunner) -> None:
        """Stop accepting, let in-flight requests finish up to shutdown_timeout, cut the rest."""
        timeout = self.config.daemon.shutdown_timeout
        self._stop_deadline = asyncio.get_running_loop().time() + timeout
        # a shutdown_timeout raised without TimeoutStopSec= got SIGKILL in the middle of the
        # drain: no error for the streams cut, no MQTT offline, no state saved
        self.notifier.stopping(needs=timeout + STOP_AFTER_DRAIN_SECONDS)
        self._close_listeners()  # new connections are refused
        # Idle keep-alive connections close now, busy ones right after their response.
        if self.fast is not None:
            self.fast.pre_shutdown()
        if runner.server is not None:
            runner.server.pre_shutdown()
        if self.service is not None:
            # event subscriptions never end by themselves
            for sub in list(self.service.streams):
                sub.close()
        pending = self.tracker.pending()
        if pending:
            logger.info("draining %d in-flight request(s), up to %.1f s", len(pending), timeout)
            # all of them, or a second SIGTERM, or the deadline: whichever comes first
            everything = asyncio.ensure_future(asyncio.wait(pending))
            force = asyncio.ensure_future(self._force.wait())
            try:
                await asyncio.wait((everything, force), timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                everything.cancel()
                force.cancel()
        pending = self.tracker.pending()
        if pending:
            logger.warning("cutting %d request(s) still running after the drain: "
                           "failoverd is shutting down", len(pending))
            self.tracker.cutting = True
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=CUT_GRACE_SECONDS)
        else:
            logger.info("all in-flight requests finished")

    def _sockets(self, stack: AsyncExitStack) -> list[socket.socket]:
        """Sockets passed by systemd, else the configured path bound by us."""
        socks = activated_sockets()
        self._activated = bool(socks)
        if socks:
            logger.info("using %d socket(s) passed by systemd; daemon.socket is ignored",
                        len(socks))
            return socks
        path = self.config.daemon.socket
        sock = bind_unix(path, self.config.daemon.socket_mode)
        stack.callback(_unlink_if_ours, path, os.stat(path).st_ino)
        stack.callback(sock.close)
        return [sock]

    # ------------------------------------------------------------------ status and reload

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
        """SIGHUP: re-read the config file; True when the new one is live."""
        return self.reload_config()[0]

    def _apply(self, config: Config) -> None:
        """Runs the service and the probes on `config` (validated)."""
        assert self.service is not None
        self.service.reload(config)
        if self.prober is not None:
            self.prober.reschedule()

    def reload_config(self) -> tuple[bool, list[str]]:
        """Re-reads the config file; an invalid one is rejected and the old one stays.

        Returns (applied, problems). Requests in flight keep the configuration they started
        with; breakers of unchanged models keep their state; probes are rescheduled.
        """
        if not self.config_path or self.service is None or self.client is None:
            logger.warning("reload requested but there is no config file to re-read")
            return False, ["no config file to re-read"]
        logger.info("reloading the configuration from %s", self.config_path)
        self.notifier.reloading()
        try:
            try:
                new = config_mod.load(self.config_path)
            except ConfigError as exc:
                logger.error("config rejected, keeping the current one: %s has %d "
                             "problem(s)", self.config_path, len(exc.problems))
                # a problem that names its file already (an unreadable file, a drop-in's key:
                # dropins.py) is not put under the main file's path as well
                named = (f"{self.config_path}: ", f"{self.config_path}, ",
                         f"{dropins.directory(self.config_path)}/")
                for problem in exc.problems:
                    if problem.startswith(named):
                        logger.error("config rejected: %s", problem)
                    else:
                        logger.error("config rejected: %s: %s", self.config_path, problem)
                self.service.bus.emit("config:rejected", source=self.config_path,
                                      problems=exc.problems)
                return False, exc.problems
            for key in _RESTART_ONLY:
                if getattr(new.daemon, key) != getattr(self.config.daemon, key):
                    logger.warning("daemon.%s changed: takes effect at the next restart", key)
            if new.mqtt != self.config.mqtt:
                logger.warning("[mqtt] changed: takes effect at the next restart")
            # keep what needs a restart as it is, so status and the drain see what is live
            new = _keep_restart_only(new, self.config)
            try:
                self._apply(new)
            except Exception as exc:  # a defect: serve on with the configuration that worked
                logger.exception("applying the new configuration failed; back to the old one")
                self._apply(self.config)  # if this fails too, the daemon cannot go on
                problem = f"failoverd could not apply it: {type(exc).__name__}: {exc}"
                self.service.bus.emit("config:rejected", source=self.config_path,
                                      problems=[problem])
                return False, [problem]
            self.config = new  # once the service runs on it
            logger.info("config reloaded: %d models, %d providers", len(new.models),
                        len(new.providers))
            return True, []
        finally:
            self._last_status = self.status_line()
            self.notifier.ready(self._last_status)


def _keep_restart_only(new: Config, live: Config) -> Config:
    kept = {key: getattr(live.daemon, key) for key in _RESTART_ONLY}
    if live.daemon.tcp and not new.daemon.tcp_token:
        # the TCP listener stays until the restart: it never goes without a token
        kept["tcp_token"] = live.daemon.tcp_token
    return dataclasses.replace(new, daemon=dataclasses.replace(new.daemon, **kept),
                               mqtt=live.mqtt)


def _unlink_if_ours(path: str, inode: int) -> None:
    """Removes our socket file on a clean stop, unless something else replaced it since."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed (`pip install failoverd[uvloop]`) and not turned off with
    FAILOVERD_UVLOOP=0; else asyncio's own."""
    if os.environ.get("FAILOVERD_UVLOOP", "1") == "0":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_blocking(config: Config, config_path: str | None, **kwargs: Any) -> None:
    """Runs the daemon until SIGTERM/SIGINT (the CLI's entry point)."""
    factory = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        if factory is not None:
            logger.info("event loop: uvloop")
        runner.run(Supervisor(config, config_path=config_path, settle_heap=True,
                              **kwargs).run())
