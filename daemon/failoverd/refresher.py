"""Credentials that expire, fetched again before they do: the one mechanism behind the AWS
temporary credentials (awsruntime.RefreshingCredentials), Google's access tokens
(googlecreds.TokenSource) and the metadata server's project (googlecreds.ProjectSource, a
value that never expires: fetched once).

One fetch at a time, a task of its own: calls that find one under way while the current value
still serves use it without waiting; others wait for it and share its outcome. A caller
cancelled (its attempt's time limit, its client gone) leaves the fetch running: a source
slower than one attempt (a credential_process asking a vault, an SSO token refresh whose new
refresh token must reach the cache file, a metadata server starting) would otherwise be
cancelled, and started again, by every request. A value is fetched again `REFRESH_AHEAD`
seconds before it expires (on the clock's wall time). A failed refresh keeps the current
value until it expires (with a warning) and is tried again after `RETRY_KEEPING` seconds, or
when it expired if that is sooner; with none to serve, calls fail with the last error for
`RETRY_WITHOUT` seconds before the source is asked again. Those pauses are on the clock's
monotonic time: a wall clock set back must not stretch them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Generic, TypeVar

from failoverd.clock import Clock

REFRESH_AHEAD = 300.0  # a value is fetched again this long before it expires
RETRY_KEEPING = 60.0  # after a failed refresh, while the old value still serves
RETRY_WITHOUT = 5.0  # after a failed fetch with none to serve: calls meanwhile fail at once

T = TypeVar("T")
E = TypeVar("E", bound=Exception)


class Refresher(Generic[T, E]):
    """See the module's docstring. A subclass says how a value is fetched (`_fetch_value`),
    when it expires (`_expires`), what its errors are (`error_type`, `_error`, `_copy`) and
    what is logged (`noun`, `keeps`, `_got`)."""

    error_type: type[E]
    noun = "credentials"  # the logs' "<noun>: ..."
    keeps = "the current ones serve until they expire"  # after a failed refresh

    def __init__(self, clock: Clock, what: str, logger: logging.Logger) -> None:
        self._clock = clock
        self.what = what
        self._logger = logger
        self._flight: asyncio.Task[T] | None = None
        self._value: T | None = None
        self._next_try = 0.0  # monotonic time before which the source is not asked again
        # the last fetch's error while it counts: its text and whether it is transient (not
        # the exception, whose traceback holds the fetch's frames)
        self._failed: tuple[str, bool] | None = None

    # ------------------------------------------------------------------ the subclass's

    async def _fetch_value(self, now: float, mono: float) -> T:
        raise NotImplementedError

    def _expires(self, value: T) -> float:
        """When `value` expires (wall time; math.inf for never)."""
        raise NotImplementedError

    def _error(self, message: str, transient: bool) -> E:
        raise NotImplementedError

    def _copy(self, exc: E) -> E:
        """`exc` again, for one caller: one raised in many tasks gathers their tracebacks."""
        raise NotImplementedError

    def _transient(self, exc: E) -> bool:
        raise NotImplementedError

    def _got(self, fresh: T, old: T | None) -> None:
        """A fetched value, before it serves (a log line)."""

    # ------------------------------------------------------------------ the mechanism

    def _forget(self) -> None:
        """The current value was refused: the next call fetches another at once."""
        self._value, self._next_try, self._failed = None, 0.0, None

    def _serving(self, now: float, mono: float) -> T | None:
        """The current value when it needs no fetch now (`now` wall time, `mono`
        monotonic)."""
        value = self._value
        if value is None:
            return None
        expires = self._expires(value)
        if now >= expires:
            return None
        if now < expires - REFRESH_AHEAD or mono < self._next_try:
            return value
        return None

    async def get(self) -> T:
        now = self._clock.time()
        value = self._serving(now, self._clock.monotonic())
        if value is not None:
            return value
        current = self._value
        if self._flight is not None and current is not None and now < self._expires(current):
            return current  # a refresh is under way; this still serves
        if self._flight is None:
            self._flight = asyncio.create_task(self._refresh(), name=f"fetch {self.what}")
            self._flight.add_done_callback(self._landed)
        try:
            return await asyncio.shield(self._flight)
        except self.error_type as exc:
            raise self._copy(exc) from None

    def _landed(self, flight: asyncio.Task[T]) -> None:
        if self._flight is flight:
            self._flight = None
        if not flight.cancelled():
            flight.exception()  # retrieved: its callers may all be gone

    async def _refresh(self) -> T:
        now, mono = self._clock.time(), self._clock.monotonic()
        value = self._serving(now, mono)
        if value is not None:
            return value  # fetched while this call waited
        if mono < self._next_try and self._failed is not None:
            # failed moments ago: not asked again yet
            raise self._error(*self._failed)
        old = self._value
        expires = math.inf if old is None else self._expires(old)
        try:
            fresh = await self._fetch_value(now, mono)
        except self.error_type as exc:
            self._failed = (str(exc), self._transient(exc))
            if old is not None and now < expires:
                # once it expired, the source is asked again at once
                self._next_try = mono + min(RETRY_KEEPING, expires - now)
                self._logger.warning("%s: refreshing from %s failed: %s; %s in %.0f s",
                                     self.noun, self.what, exc, self.keeps, expires - now)
                return old
            self._next_try = mono + RETRY_WITHOUT
            self._logger.warning("%s: %s", self.noun, exc)
            raise
        self._got(fresh, old)
        self._value, self._failed = fresh, None
        # a value that comes close to its expiry (the metadata server hands out its cached
        # token) is not fetched again at every call
        self._next_try = mono + RETRY_KEEPING
        return fresh
