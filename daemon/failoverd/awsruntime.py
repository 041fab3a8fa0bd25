"""AWS credentials at run time: the side of a configured source (awscreds.py's `AwsSource`,
chosen when the configuration is read) that hands out credentials for each request.

`open_source` gives a source's `CredentialSource`:

- the environment's keys: `StaticCredentials`, the same until a restart;
- a profile's keys in a file: `SharedFileCredentials`, the file looked at again (its
  modification time, size and inode, at most every `FILE_CHECK_EVERY` seconds) and re-read
  when it changed, so credentials a helper rotates in it apply without a restart;
- temporary credentials (a container's, the instance's, a process's, an assumed role's, a web
  identity role's, an SSO role's): `RefreshingCredentials` (refresher.py), fetched on first
  use and again `REFRESH_AHEAD` seconds before they expire, by one call that concurrent
  requests share, one per client, source and clock, kept across reloads; when a refresh
  fails the old ones serve until they expire. How each is fetched: awsfetch.py.

Failing to get credentials raises `AwsCredentialsError`, which the adapter turns into an
``auth`` failure of the call (a ``connection`` one when it is `transient`: an endpoint that did
not answer or failed): it never travels further in.
"""

from __future__ import annotations

import logging
import math
import os
import weakref
from collections.abc import Awaitable, Callable
from typing import Protocol

from failoverd.awscreds import (
    AwsCredentials,
    AwsCredentialsError,
    AwsSource,
    Refreshing,
    SharedFile,
    read_profile,
)
from failoverd.clock import Clock, SystemClock
from failoverd.http1 import HttpClient
from failoverd.refresher import REFRESH_AHEAD as REFRESH_AHEAD
from failoverd.refresher import Refresher

__all__ = ["FILE_CHECK_EVERY", "CredentialSource", "RefreshingCredentials",
           "SharedFileCredentials", "StaticCredentials", "open_source"]

logger = logging.getLogger("failoverd.awscreds")  # the logs' name, as before the split

FILE_CHECK_EVERY = 5.0  # seconds between two looks at the credentials file's mtime


class CredentialSource(Protocol):
    """Credentials for the next request: cached, looked at again or refreshed as needed."""

    async def get(self) -> AwsCredentials: ...

    def refused(self, credentials: AwsCredentials) -> bool:
        """AWS refused `credentials` as expired (ExpiredTokenException): whether the next
        request may have others (the source drops them and looks again), so that the refusal
        is no reason to block the provider."""
        ...


class StaticCredentials:
    """Fixed credentials (the environment's: they change with a restart only)."""

    def __init__(self, credentials: AwsCredentials) -> None:
        self._credentials = credentials

    async def get(self) -> AwsCredentials:
        return self._credentials

    def refused(self, credentials: AwsCredentials) -> bool:
        return False  # the environment's: the same ones until a restart


class SharedFileCredentials:
    """A profile of the shared credentials file, read again when the file changes: its
    mtime, size or inode, looked at no more than every `check_every` seconds. A change that
    leaves no usable profile (a half-written file) keeps the credentials read before, with a
    warning."""

    def __init__(self, source: SharedFile, clock: Clock, *,
                 check_every: float = FILE_CHECK_EVERY) -> None:
        self._source = source
        self._clock = clock
        self._check_every = check_every
        self._credentials: AwsCredentials | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = 0.0

    async def get(self) -> AwsCredentials:
        now = self._clock.monotonic()
        if self._credentials is not None and now - self._checked_at < self._check_every:
            return self._credentials
        self._checked_at = now
        path, profile = self._source.path, self._source.profile
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError as exc:
            stamp = None
            problem = AwsCredentialsError(
                f"{path} does not exist" if isinstance(exc, FileNotFoundError)
                else f"{path} cannot be read: {exc.strerror or exc}")
        else:
            if stamp == self._stamp and self._credentials is not None:
                return self._credentials
            try:
                credentials = read_profile(path, profile, self._source.section)
            except AwsCredentialsError as exc:
                problem = exc
            else:
                if self._credentials is not None:
                    logger.info("AWS credentials: %s changed, profile [%s] read again "
                                "(access key %s)", path, profile, credentials.access_key_id)
                self._credentials, self._stamp = credentials, stamp
                return credentials
        if self._credentials is None:
            raise problem
        if stamp != self._stamp:  # once per change, not at every look
            logger.warning("AWS credentials: %s; the ones read before are used", problem)
            self._stamp = stamp
        return self._credentials

    def refused(self, credentials: AwsCredentials) -> bool:
        if credentials is not self._credentials:
            return True  # read again since: the next request has the new ones
        self._checked_at = -math.inf  # the file is looked at again at the next request
        try:
            st = os.stat(self._source.path)
        except OSError:
            return False
        # rewritten since these were read (a credential helper's new token): the next
        # request reads it; unchanged, the expired token is there until someone replaces it
        return (st.st_mtime_ns, st.st_size, st.st_ino) != self._stamp


class RefreshingCredentials(Refresher[AwsCredentials, AwsCredentialsError]):
    """Temporary credentials from an endpoint, fetched again `REFRESH_AHEAD` seconds before
    they expire, one fetch at a time that a cancelled caller leaves running (refresher.py)."""

    error_type = AwsCredentialsError
    noun = "AWS credentials"

    def __init__(self, fetch: Callable[[], Awaitable[AwsCredentials]], clock: Clock,
                 what: str) -> None:
        super().__init__(clock, what, logger)
        self._fetch = fetch

    def refused(self, credentials: AwsCredentials) -> bool:
        if credentials is self._value:
            # revoked or expired early: fetched again at the next request
            logger.warning("AWS credentials from %s refused as expired: fetching new ones",
                           self.what)
            self._forget()
        return True

    async def _fetch_value(self, now: float, mono: float) -> AwsCredentials:
        fresh = await self._fetch()
        if fresh.expires is not None and fresh.expires <= now:
            # a clock not yet synchronised (a host booting with a wrong one): asked again
            # soon, not taken as a refusal
            raise AwsCredentialsError(f"{self.what} answered credentials that expired "
                                      "already (is the host's clock right?)", transient=True)
        return fresh

    def _expires(self, value: AwsCredentials) -> float:
        return math.inf if value.expires is None else value.expires

    def _error(self, message: str, transient: bool) -> AwsCredentialsError:
        return AwsCredentialsError(message, transient=transient)

    def _copy(self, exc: AwsCredentialsError) -> AwsCredentialsError:
        return AwsCredentialsError(str(exc), transient=exc.transient)

    def _transient(self, exc: AwsCredentialsError) -> bool:
        return exc.transient

    def _got(self, fresh: AwsCredentials, old: AwsCredentials | None) -> None:
        if old is None:
            logger.info("AWS credentials from %s (access key %s)", self.what,
                        fresh.access_key_id)


# temporary credentials by client, source and clock: a reload builds its providers anew with
# the daemon's one client, and they go on with the credentials (and any fetch under way) of
# the ones they replace; providers sharing a source share its fetches. An entry lasts as long
# as a provider holds it: a source a reload dropped is forgotten with its providers
_refreshing: weakref.WeakKeyDictionary[
    HttpClient, weakref.WeakValueDictionary[tuple[Refreshing, Clock | None],
                                            RefreshingCredentials]
] = weakref.WeakKeyDictionary()


def open_source(source: AwsSource, *, client: HttpClient,
                clock: Clock | None = None) -> CredentialSource:
    """The run-time side of a configured source; `client` calls the credential endpoints,
    STS and the SSO portal (directly, not through the provider's proxy). Temporary
    credentials are one `RefreshingCredentials` per client, source and clock."""
    if isinstance(source, AwsCredentials):
        return StaticCredentials(source)
    if isinstance(source, SharedFile):
        return SharedFileCredentials(source, clock or SystemClock())
    known = _refreshing.setdefault(client, weakref.WeakValueDictionary())
    shared = known.get((source, clock))
    if shared is None:
        from failoverd.awsfetch import refreshing  # the fetches, which need this module

        shared = known[source, clock] = refreshing(source, client, clock)
    return shared
