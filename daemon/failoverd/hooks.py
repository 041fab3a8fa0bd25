"""Hooks: ``[[hooks]]`` argv entries run with an event's JSON on stdin.

A hook subscribes to event types: exact (``model:failover``), a category (``breaker:*``) or
everything (``*``). For ``model:failover`` the router awaits :meth:`HookRunner.run` before the
fallback attempt; a hook may print one JSON object on stdout::

    {"abort": true, "messages": ["..."], "context": "skip" | "truncate" | "fail"}

Every key is optional and empty stdout means "no opinion". Outcomes are merged in config
order: abort if any hook aborts, messages concatenated, the last ``context`` wins. A hook that
cannot start, exits non-zero, outlives its timeout (its whole process group is killed) or
prints anything else is logged and emitted as ``hook:failed``; it contributes nothing and the
request goes on. Processes a hook leaves running in its group when it exits are killed when
its timeout is up.

Other events run hooks in the background (:meth:`HookRunner.fire_and_forget`): at most
:data:`MAX_CONCURRENT` hook processes at a time and :data:`MAX_PENDING` runs running or
waiting, beyond which runs are dropped and counted, so a slow hook can never pile up processes
or memory. Hooks inherit the daemon's environment plus ``FAILOVERD_EVENT`` and
``FAILOVERD_EVENT_ID``, minus any variable whose value is one of ``secrets`` (API keys, proxy
URLs, the TCP token, the MQTT password) and minus ``CREDENTIALS_DIRECTORY``: a notification
script has no business holding them. At most :data:`MAX_INLINE` ``model:failover`` runs go
at once; beyond that the hooks are skipped for that failover (each emitted as
``hook:failed``; the first skip and every 100th are logged).

A run is one hook program for one event. Every run is counted once: ``runs`` (started: a
process was spawned or failed to spawn), of which ``failures`` (could not start, exited
non-zero, timed out, printed junk); or ``dropped`` (never started: no room for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import cast, get_args

import orjson

from failoverd.config import ContextPolicy, HookConfig
from failoverd.events import Event, EventBus

logger = logging.getLogger(__name__)

MAX_STDOUT = 64 * 1024
MAX_STDERR_LOGGED = 2000
MAX_CONCURRENT = 8  # background hook processes at once
MAX_PENDING = 256  # background hook runs running or waiting for a slot
MAX_INLINE = 64  # model:failover hook runs at once (each may start several processes)
INLINE_TYPES = frozenset({"model:failover"})  # awaited by the router, not run in background
_REAP_TIMEOUT = 2.0
_LEFTOVER_POLL = 0.25  # how often a finished hook's process group is checked until its deadline


@dataclass(frozen=True, slots=True)
class HookOutcome:
    """The merged opinion of the hooks that ran for one event."""

    abort: bool = False
    messages: tuple[str, ...] = ()
    context: ContextPolicy | None = None
    errors: tuple[str, ...] = ()  # one line per hook that failed (already logged and emitted)


class HookFailed(Exception):
    """Internal: one hook run failed; the message is what ``hook:failed`` carries."""


def matches(patterns: Sequence[str], event_type: str) -> bool:
    """True when ``event_type`` is named exactly, by ``category:*``, or by ``*``."""
    category = event_type.partition(":")[0]
    return any(p == "*" or p == event_type or p == f"{category}:*" for p in patterns)


def parse_output(stdout: bytes) -> HookOutcome:
    """A hook's stdout as an outcome; raises HookFailed on anything but the documented object."""
    if not stdout.strip():
        return HookOutcome()
    try:
        data = orjson.loads(stdout)
    except orjson.JSONDecodeError:
        raise HookFailed(f"stdout is not JSON: {_preview(stdout)}") from None
    if not isinstance(data, dict):
        raise HookFailed(f"stdout is not a JSON object: {_preview(stdout)}")
    abort = data.get("abort", False)
    if not isinstance(abort, bool):
        raise HookFailed("'abort' must be a boolean")
    messages = data.get("messages", [])
    if not isinstance(messages, list) or not all(isinstance(m, str) for m in messages):
        raise HookFailed("'messages' must be a list of strings")
    context = data.get("context")
    if context is not None and context not in get_args(ContextPolicy):
        raise HookFailed(f"'context' must be one of {', '.join(get_args(ContextPolicy))}")
    return HookOutcome(abort=abort, messages=tuple(messages),
                       context=cast(ContextPolicy | None, context))


def merge(outcomes: Sequence[HookOutcome]) -> HookOutcome:
    """Abort if any aborts; messages in order; the last context given wins."""
    context: ContextPolicy | None = None
    for o in outcomes:
        if o.context is not None:
            context = o.context
    return HookOutcome(
        abort=any(o.abort for o in outcomes),
        messages=tuple(m for o in outcomes for m in o.messages),
        context=context,
        errors=tuple(e for o in outcomes for e in o.errors),
    )


def _preview(data: bytes, limit: int = 80) -> str:
    text = data[:limit].decode("utf-8", "replace")
    return repr(text + ("..." if len(data) > limit else ""))


async def _read_bounded(stream: asyncio.StreamReader | None, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes and whether there was more (the rest is read and discarded, so
    the child never blocks on a full pipe)."""
    if stream is None:
        return b"", False
    chunks: list[bytes] = []
    size = 0
    overflow = False
    while chunk := await stream.read(65536):
        if size < limit:
            chunks.append(chunk[: limit - size])
        size += len(chunk)
        overflow = overflow or size > limit
    return b"".join(chunks), overflow


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # start_new_session made the hook a process-group leader: take its children too. Even
    # once the leader has exited, a child still holding its pipes keeps the group (and so
    # its id, which the kernel does not reuse meanwhile) alive; an empty group is ESRCH.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        if proc.returncode is None:
            proc.kill()


def _group_alive(pgid: int) -> bool:
    """Whether any process is left in the process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it is there, under another user
    return True


# Where systemd's LoadCredential= files are: a hook must not be able to read the keys.
_PRIVATE_ENV = frozenset({"CREDENTIALS_DIRECTORY"})


class HookRunner:
    """Runs the configured hooks for events; see the module docstring."""

    def __init__(self, hooks: tuple[HookConfig, ...], bus: EventBus | None,
                 *, max_concurrent: int | None = None, max_pending: int | None = None,
                 max_inline: int | None = None, secrets: frozenset[str] = frozenset()) -> None:
        self.hooks = hooks
        self.secrets = secrets
        self._bus = bus
        # the module's limits are read here, not bound as defaults: tests lower them
        self._slots = asyncio.Semaphore(MAX_CONCURRENT if max_concurrent is None
                                        else max_concurrent)
        self._max_inline = MAX_INLINE if max_inline is None else max_inline
        self._inline = asyncio.Semaphore(self._max_inline)
        self._max_pending = MAX_PENDING if max_pending is None else max_pending
        self._tasks: set[asyncio.Task[None]] = set()  # one per background run
        # one per finished run that left processes in its group, killed at its deadline
        self._leftovers: set[asyncio.Task[None]] = set()
        self.runs = 0  # runs started (spawned, or failed to spawn)
        self.failures = 0  # started runs that failed
        self.dropped = 0  # runs never started: no room for them

    def subscribed(self, event_type: str) -> tuple[HookConfig, ...]:
        """The hooks that want this event type, in config order."""
        return tuple(h for h in self.hooks if matches(h.events, event_type))

    async def run(self, event: Event, limit: float | None = None) -> HookOutcome:
        """Runs every subscribed hook concurrently and merges their outcomes in config order.

        `limit` (seconds) is what is left of the request's deadline: no hook outlives it, even
        if its own ``timeout`` is longer (the request waits for its hooks).
        """
        hooks = self.subscribed(event.type)
        if not hooks:
            return HookOutcome()
        error = None
        if limit is not None and limit <= 0:
            error = "skipped: the request's deadline has passed"
        elif self._inline.locked():
            # an outage with many requests in flight must not fork a process per request
            error = (f"skipped: {self._max_inline} failover hook runs already in progress "
                     "(the request goes on)")
        if error is not None:
            before, self.dropped = self.dropped, self.dropped + len(hooks)
            # one skip per failover at storm rate: each is emitted as hook:failed (and so in
            # the audit log), but only the first and then every 100th is a warning
            if before == 0 or self.dropped // 100 > before // 100:
                logger.warning("hooks: %s for %s %s (%d hook runs dropped so far)", error,
                               event.type, event.id, self.dropped)
            return merge([self._report(h, event, error, log=False) for h in hooks])
        payload = event.to_json()
        async with self._inline:
            outcomes = await asyncio.gather(*(self._run_one(h, event, payload, limit)
                                              for h in hooks))
        return merge(outcomes)

    async def _run_in_slot(self, hook: HookConfig, event: Event, payload: bytes) -> None:
        # Not through run(): its bound is for the router's inline runs, and a busy outage must
        # not starve breaker or probe hooks (they have their own bounds here).
        async with self._slots:
            await self._run_one(hook, event, payload)

    def fire_and_forget(self, event: Event) -> None:
        """Runs each subscribed hook in a background task; returns at once."""
        hooks = self.subscribed(event.type)
        if not hooks:
            return
        payload = event.to_json()
        loop = asyncio.get_running_loop()
        for hook in hooks:
            if len(self._tasks) >= self._max_pending:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 100 == 0:  # a flood, logged in steps
                    logger.warning("hooks: %d runs pending; dropped %s for %s %s (%d dropped "
                                   "so far)", len(self._tasks), hook.exec[0], event.type,
                                   event.id, self.dropped)
                continue
            task = loop.create_task(self._run_in_slot(hook, event, payload),
                                    name=f"hook {event.type}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def listener(self, event: Event) -> None:
        """A bus listener: background hooks for every event except INLINE_TYPES, which the
        router runs itself with :meth:`run` before acting on them."""
        if event.type not in INLINE_TYPES:
            self.fire_and_forget(event)

    def attach(self, bus: EventBus) -> Callable[[], None]:
        """Registers :meth:`listener` on ``bus``; returns the detach function."""
        return bus.listen(self.listener)

    @property
    def pending(self) -> int:
        """Background runs not finished yet."""
        return len(self._tasks)

    async def aclose(self, grace: float = 5.0) -> None:
        """Waits up to ``grace`` seconds for background hooks, then cancels (and kills) the
        rest, and kills what finished hooks left running."""
        try:
            await self._close_runs(grace)
        finally:
            for task in self._leftovers:
                task.cancel()
            await asyncio.gather(*self._leftovers, return_exceptions=True)

    async def _close_runs(self, grace: float) -> None:
        tasks = set(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            logger.warning("hooks: cancelled %d hook runs at shutdown", len(pending))
            await asyncio.gather(*pending, return_exceptions=True)

    async def __aenter__(self) -> HookRunner:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def _run_one(self, hook: HookConfig, event: Event, payload: bytes,
                       limit: float | None = None) -> HookOutcome:
        self.runs += 1
        started = time.monotonic()
        try:
            outcome = await self._exec(hook, event, payload, limit)
        except HookFailed as exc:
            return self._failed(hook, event, str(exc))
        logger.debug("hook %s for %s done in %.3fs", hook.exec[0], event.type,
                     time.monotonic() - started)
        return outcome

    def _failed(self, hook: HookConfig, event: Event, error: str) -> HookOutcome:
        self.failures += 1
        return self._report(hook, event, error)

    def _report(self, hook: HookConfig, event: Event, error: str, *,
                log: bool = True) -> HookOutcome:
        """Logs (unless told not to) and emits a run that failed or was skipped."""
        if log:
            logger.warning("hook %s failed for %s %s: %s", hook.exec[0], event.type, event.id,
                           error)
        # A hook failing on hook:failed must not feed itself another one, forever.
        if self._bus is not None and event.type != "hook:failed":
            self._bus.emit("hook:failed", hook=hook.exec[0], event=event.type,
                           event_id=event.id, error=error)
        return HookOutcome(errors=(f"{hook.exec[0]}: {error}",))

    async def _exec(self, hook: HookConfig, event: Event, payload: bytes,
                    limit: float | None = None) -> HookOutcome:
        budget = hook.timeout if limit is None else min(hook.timeout, limit)
        deadline = asyncio.get_running_loop().time() + budget
        env = {k: v for k, v in os.environ.items()
               if k not in _PRIVATE_ENV and v.strip() not in self.secrets}
        env.update(FAILOVERD_EVENT=event.type, FAILOVERD_EVENT_ID=event.id)
        try:
            proc = await asyncio.create_subprocess_exec(
                *hook.exec, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, env=env)
        except (OSError, ValueError) as exc:  # ValueError: a NUL in argv or the environment
            raise HookFailed(f"cannot start: {getattr(exc, 'strerror', None) or exc}") from None
        finished = False
        try:
            async with asyncio.timeout(budget):
                (stdout, too_big), (stderr, _), _ = await asyncio.gather(
                    _read_bounded(proc.stdout, MAX_STDOUT),
                    _read_bounded(proc.stderr, MAX_STDERR_LOGGED),
                    self._feed(proc, payload),
                )
                code = await proc.wait()
                finished = True
        except TimeoutError:
            if budget < hook.timeout:
                raise HookFailed(f"cut after {budget:.3g}s by the request's deadline (its "
                                 f"timeout is {hook.timeout:g}s); killed") from None
            raise HookFailed(f"timed out after {hook.timeout:g}s; killed") from None
        finally:
            if not finished:  # timed out or cancelled: the hook may have exited, its children not
                _kill_group(proc)
                if proc.returncode is None:
                    await self._reap(proc, hook)
        self._watch_leftovers(proc, hook, deadline)
        if stderr.strip():
            logger.info("hook %s stderr: %s", hook.exec[0], _preview(stderr, MAX_STDERR_LOGGED))
        if code != 0:
            how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise HookFailed(how)
        if too_big:
            raise HookFailed(f"stdout exceeded {MAX_STDOUT} bytes")
        return parse_output(stdout)

    def _watch_leftovers(self, proc: asyncio.subprocess.Process, hook: HookConfig,
                         deadline: float) -> None:
        """A hook that exited may have left processes running in its group (``cmd &`` with
        its output redirected): they get what is left of its timeout, then the group is
        killed, so a hook run per failover cannot pile up processes without end."""
        if not _group_alive(proc.pid):
            return
        task = asyncio.get_running_loop().create_task(
            self._kill_leftovers(proc.pid, hook, deadline), name="hook leftovers")
        self._leftovers.add(task)
        task.add_done_callback(self._leftovers.discard)

    @staticmethod
    async def _kill_leftovers(pgid: int, hook: HookConfig, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            # polled, not slept through: once the group is empty its id may be reused
            while _group_alive(pgid):
                left = deadline - loop.time()
                if left <= 0:
                    logger.warning("hook %s: killed what it left running in its process group "
                                   "at its timeout (%gs)", hook.exec[0], hook.timeout)
                    break
                await asyncio.sleep(min(left, _LEFTOVER_POLL))
            else:
                return
        finally:
            if _group_alive(pgid):  # the deadline, or shutdown (cancelled)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)

    @staticmethod
    async def _feed(proc: asyncio.subprocess.Process, payload: bytes) -> None:
        stdin = proc.stdin
        if stdin is None:
            return
        try:
            # A hook need not read its input, and may be gone already: asyncio's loop drops a
            # write to a closed pipe, uvloop's raises RuntimeError, so do not write at all.
            if not stdin.is_closing():
                stdin.write(payload)
                await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it went away while we wrote
        finally:
            stdin.close()

    @staticmethod
    async def _reap(proc: asyncio.subprocess.Process, hook: HookConfig) -> None:
        try:
            async with asyncio.timeout(_REAP_TIMEOUT):
                await proc.wait()
        except TimeoutError:
            logger.error("hook %s (pid %d) did not exit after SIGKILL", hook.exec[0], proc.pid)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - best effort while unwinding
            logger.debug("hook %s: reaping failed: %s", hook.exec[0], exc)
