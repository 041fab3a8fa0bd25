"""Google credentials for Vertex AI (a vertex provider): OAuth 2 access tokens from the sources
of Google's Application Default Credentials, cached and refreshed.

Where the credentials come from, in google-auth's order:

1. the provider's ``google_credentials_file``, else the file ``GOOGLE_APPLICATION_CREDENTIALS``
   names: a service account's key file (``"type": "service_account"``) or a user's
   (``"type": "authorized_user"``, as ``gcloud auth application-default login`` writes it);
2. gcloud's application default credentials file,
   ``$CLOUDSDK_CONFIG/application_default_credentials.json``, else
   ``$HOME/.config/gcloud/application_default_credentials.json`` (no ``HOME``, as under
   systemd: none);
3. the GCE metadata server (Compute Engine, GKE, Cloud Run: the attached service account),
   ``metadata.google.internal``, or the host ``GCE_METADATA_HOST`` names. Whether there is one
   is known only by asking: on a host where its name does not resolve each call fails
   fast (``auth``); a name that resolves and a port that does not answer (GKE's metadata
   server in a pod's first seconds), or not answering after it has answered, is a moment's
   trouble (`transient`).

A provider that names no project, where neither the environment nor a credentials file names
one and the tokens come from the metadata server, takes the metadata server's
(``project/project-id``, as google-auth's ``default()`` asks it): `ProjectSource`
(`open_project`), asked at the first call, once, and kept, across reloads too.

``GOOGLE_CLOUD_QUOTA_PROJECT`` names the project billed for the calls (``x-goog-user-project``)
in place of the file's ``quota_project_id``, whatever the source, as google-auth reads it.

Which source serves is decided when the configuration is read (`choose_source`); a file is
read and checked then (its private key parsed), so a broken one is a configuration error and a
reload reads it again. Workload identity federation (``external_account``) and impersonation
files are refused there: they need more than this module does.

At run time a `TokenSource` (`open_source`) hands out the access token for each request:
fetched on first use and again `REFRESH_AHEAD` seconds before it expires (on the clock's wall
time), by one call that concurrent requests share, kept across reloads; when a refresh fails
the old token serves until it expires. The HTTP side (the JWT grant of a service account, the
refresh-token grant of a user, the metadata server) is googletoken.py. Failing to get a token
raises `GoogleCredentialsError`, which the adapter turns into an ``auth`` failure of the call,
or a ``connection`` one when it is `transient` (a token endpoint that did not answer or
failed): it never travels further in.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import stat
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from failoverd.clock import Clock, SystemClock
from failoverd.http1 import HttpClient
from failoverd.http1.client import Target
from failoverd.refresher import REFRESH_AHEAD as REFRESH_AHEAD
from failoverd.refresher import RETRY_KEEPING as RETRY_KEEPING
from failoverd.refresher import RETRY_WITHOUT as RETRY_WITHOUT
from failoverd.refresher import Refresher
from failoverd.rsasign import RsaKey, RsaKeyError, load_pem

__all__ = ["AccessToken", "AuthorizedUser", "GoogleConfigError", "GoogleCredentialsError",
           "GoogleSource", "MetadataServer", "ProjectSource", "ServiceAccount", "TokenSource",
           "choose_source", "open_project", "open_source", "read_file"]

logger = logging.getLogger(__name__)

TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 - a URL, not a secret
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
METADATA_HOST = "metadata.google.internal"
ADC_FILE = "application_default_credentials.json"
MAX_FILE = 64 * 1024  # a key file is about 2.3 KiB


class GoogleCredentialsError(Exception):
    """No access token now; the message says why (never with a secret). `transient`: a token
    endpoint that did not answer or failed (a timeout, a refused connection, a 5xx or 429,
    an unreadable answer), which says nothing of the credentials, unlike a refusal.
    `no_host`: the endpoint's host name does not resolve (no such host, not a resolver's
    moment of trouble)."""

    def __init__(self, message: str, *, transient: bool = False, no_host: bool = False
                 ) -> None:
        super().__init__(message)
        self.transient = transient
        self.no_host = no_host


class GoogleConfigError(ValueError):
    """The configuration's choice of credentials cannot work; the message says what to do."""


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """A service account's key file, as read: whose it is and the key that signs its JWTs."""

    path: str
    client_email: str
    private_key: str = field(repr=False)  # PEM, checked when read
    private_key_id: str = ""
    token_uri: str = TOKEN_URI
    project_id: str = ""
    quota_project_id: str = ""

    @property
    def key(self) -> RsaKey:
        """The parsed private key."""
        return _parsed(self.private_key)


@dataclass(frozen=True, slots=True)
class AuthorizedUser:
    """A user's credentials (gcloud's application default login): an OAuth client and the
    user's refresh token."""

    path: str
    client_id: str
    client_secret: str = field(repr=False)
    refresh_token: str = field(repr=False)
    token_uri: str = TOKEN_URI
    quota_project_id: str = ""


@dataclass(frozen=True, slots=True)
class MetadataServer:
    """The GCE metadata server and its default service account's tokens."""

    host: str = METADATA_HOST
    quota_project_id: str = ""  # GOOGLE_CLOUD_QUOTA_PROJECT's

    @property
    def url(self) -> str:
        return f"http://{self.host}"


GoogleSource = ServiceAccount | AuthorizedUser | MetadataServer
"""Where a vertex provider's access tokens come from."""


def project_of(source: GoogleSource) -> str:
    """The project a credentials file names ("" for none): a service account's
    ``project_id``, else the file's ``quota_project_id``."""
    if isinstance(source, ServiceAccount):
        return source.project_id or source.quota_project_id
    if isinstance(source, AuthorizedUser):
        return source.quota_project_id
    return ""


def describe(source: GoogleSource) -> str:
    """The source as logs and errors name it (no secret)."""
    if isinstance(source, ServiceAccount):
        return f"service account {source.client_email} ({source.path})"
    if isinstance(source, AuthorizedUser):
        return f"user credentials {source.path}"
    return f"the metadata server at {source.host}"


# ------------------------------------------------------------------ configuration


@functools.lru_cache(maxsize=16)
def _parsed(pem: str) -> RsaKey:
    return load_pem(pem)


def _control(value: str) -> bool:
    return any(c < " " or c == "\x7f" for c in value)


def _token_uri(value: Any, path: str) -> str:
    uri = value if isinstance(value, str) and value else TOKEN_URI
    try:
        tgt = Target(uri)
    except ValueError:
        raise GoogleConfigError(f"{path}: token_uri is not a usable URL") from None
    if not tgt.tls and tgt.host not in ("127.0.0.1", "::1", "localhost"):
        raise GoogleConfigError(f"{path}: token_uri must be https (a signed grant or a "
                                "refresh token goes there)")
    return uri


def _text(data: dict[str, Any], key: str, path: str, *, required: bool = True) -> str:
    value = data.get(key, "")
    if not isinstance(value, str) or (required and not value.strip()):
        if required:
            raise GoogleConfigError(f"{path} has no {key}")
        raise GoogleConfigError(f"{path}: {key} must be a string")
    if _control(value) and key != "private_key":
        raise GoogleConfigError(f"{path}: {key} holds a line break or another control "
                                "character")
    return value.strip() if key != "private_key" else value


def read_file(path: str) -> ServiceAccount | AuthorizedUser:
    """A credentials file, read and checked: a service account's key or a user's refresh
    token. Raises GoogleConfigError (naming the file, never a secret) when it cannot serve."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the event loop
            raise GoogleConfigError(f"{path} is not a regular file")
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE + 1)
    except FileNotFoundError:
        raise GoogleConfigError(f"{path} does not exist") from None
    except OSError as exc:
        raise GoogleConfigError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE:
        raise GoogleConfigError(f"{path} is larger than {MAX_FILE // 1024} KiB: no "
                                "credentials file")
    try:
        data = orjson.loads(raw.removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError:
        raise GoogleConfigError(f"{path} is not JSON") from None
    if not isinstance(data, dict):
        raise GoogleConfigError(f"{path} is not a JSON object")
    kind = data.get("type")
    quota = _text(data, "quota_project_id", path, required=False)
    if kind == "service_account":
        pem = _text(data, "private_key", path)
        try:
            _parsed(pem)
        except RsaKeyError as exc:
            raise GoogleConfigError(f"{path}: private_key: {exc}") from None
        return ServiceAccount(path, _text(data, "client_email", path), pem,
                              _text(data, "private_key_id", path, required=False),
                              _token_uri(data.get("token_uri"), path),
                              _text(data, "project_id", path, required=False), quota)
    if kind == "authorized_user":
        return AuthorizedUser(path, _text(data, "client_id", path),
                              _text(data, "client_secret", path),
                              _text(data, "refresh_token", path),
                              _token_uri(data.get("token_uri"), path), quota)
    if kind in ("external_account", "impersonated_service_account",
                "external_account_authorized_user", "gdch_service_account"):
        raise GoogleConfigError(f"{path} holds {kind} credentials, which failoverd does not "
                                "read: use a service account's key file, gcloud's application "
                                "default login, or the metadata server")
    raise GoogleConfigError(f"{path} is no Google credentials file (its \"type\" is "
                            f"{str(kind)[:40]!r}; service_account or authorized_user are read)")


def adc_file(env: Mapping[str, str]) -> str:
    """gcloud's application default credentials file ("" when there is no place for one)."""
    folder = env.get("CLOUDSDK_CONFIG", "").strip()
    if not folder:
        home = env.get("HOME", "").strip()
        if not home:
            return ""
        folder = os.path.join(home, ".config", "gcloud")
    return os.path.join(folder, ADC_FILE)


def _metadata(env: Mapping[str, str]) -> MetadataServer:
    host = env.get("GCE_METADATA_HOST", "").strip() or env.get("GCE_METADATA_ROOT", "").strip()
    if not host:
        return MetadataServer()
    host = host.removeprefix("http://").rstrip("/")
    try:
        Target(f"http://{host}")
    except ValueError:
        raise GoogleConfigError("environment variable GCE_METADATA_HOST is not a host[:port]: "
                                f"{host[:80]!r}") from None
    return MetadataServer(host)


def choose_source(env: Mapping[str, str], path: str = "") -> GoogleSource:
    """The first source that is there (see the module's docstring), with the quota project
    GOOGLE_CLOUD_QUOTA_PROJECT names, if any, in place of the file's (as google-auth's
    default() does). `path`: the provider's ``google_credentials_file`` ("" for none).
    Raises GoogleConfigError when the one found is broken."""
    source = _first_source(env, path)
    quota = env.get("GOOGLE_CLOUD_QUOTA_PROJECT", "").strip()
    if not quota:
        return source
    if _control(quota) or len(quota) > 100:
        raise GoogleConfigError("environment variable GOOGLE_CLOUD_QUOTA_PROJECT is no "
                                f"project id: {quota[:40]!r}")
    return dataclasses.replace(source, quota_project_id=quota)


def _first_source(env: Mapping[str, str], path: str) -> GoogleSource:
    if path:
        home = env.get("HOME", "").strip()
        return read_file(os.path.join(home, path[2:]) if path.startswith("~/") and home
                         else path)
    named = env.get("GOOGLE_APPLICATION_CREDENTIALS", "").strip()
    if named:
        try:
            return read_file(named)
        except GoogleConfigError as exc:
            raise GoogleConfigError(f"GOOGLE_APPLICATION_CREDENTIALS: {exc}") from None
    adc = adc_file(env)
    if adc and os.path.exists(adc):
        return read_file(adc)
    return _metadata(env)


# ------------------------------------------------------------------ at run time


T = TypeVar("T")


class _GoogleRefresher(Refresher[T, GoogleCredentialsError]):
    """A Refresher whose failures are GoogleCredentialsErrors (the token and the project)."""

    error_type = GoogleCredentialsError

    def _error(self, message: str, transient: bool) -> GoogleCredentialsError:
        return GoogleCredentialsError(message, transient=transient)

    def _copy(self, exc: GoogleCredentialsError) -> GoogleCredentialsError:
        return GoogleCredentialsError(str(exc), transient=exc.transient, no_host=exc.no_host)

    def _transient(self, exc: GoogleCredentialsError) -> bool:
        return exc.transient


@dataclass(frozen=True, slots=True, eq=False)
class AccessToken:
    """An OAuth 2 access token and when it expires (seconds since the epoch). `after_refusal`:
    fetched because the one before was refused, at `fetched` (monotonic time), so a refusal
    of this one soon after is the credentials' trouble, not a stale token's."""

    token: str = field(repr=False)
    expires: float
    after_refusal: bool = False
    fetched: float = 0.0


class TokenSource(_GoogleRefresher[AccessToken]):
    """Access tokens from a source, fetched again `REFRESH_AHEAD` seconds before they expire,
    one fetch at a time that a cancelled caller leaves running (refresher.py)."""

    noun = "Google credentials"
    keeps = "the current token serves until it expires"

    def __init__(self, fetch: Callable[[], Awaitable[tuple[str, float]]], clock: Clock,
                 what: str) -> None:
        super().__init__(clock, what, logger)
        self._fetch = fetch  # (token, seconds it lives)
        self._refused = False  # the last token was refused: the next one is fetched for that

    def refused(self, token: AccessToken) -> bool:
        """Vertex refused `token` (401 UNAUTHENTICATED): whether the next request may have
        another, so that the refusal need not block the provider. A token fetched for a
        refusal and refused too within `RETRY_KEEPING` seconds is the credentials' trouble
        (a key or account Vertex does not take): False."""
        if token is self._value:
            logger.warning("Google credentials: the access token from %s was refused: "
                           "fetching a new one", self.what)
            self._forget()
            self._refused = True
        return not (token.after_refusal
                    and self._clock.monotonic() - token.fetched < RETRY_KEEPING)

    async def _fetch_value(self, now: float, mono: float) -> AccessToken:
        value, lifetime = await self._fetch()
        return AccessToken(value, now + lifetime, after_refusal=self._refused, fetched=mono)

    def _expires(self, value: AccessToken) -> float:
        return value.expires

    def _got(self, fresh: AccessToken, old: AccessToken | None) -> None:
        if old is None and not self._refused:
            logger.info("Google credentials: access token from %s", self.what)
        self._refused = False


# tokens by client, source, proxy and clock: a reload builds its providers anew with the
# daemon's one client, and they go on with the token (and any fetch under way) of the ones
# they replace; providers sharing a source share its fetches. An entry lasts as long as a
# provider holds it: a source a reload dropped is forgotten with its providers
_sources: weakref.WeakKeyDictionary[
    HttpClient, weakref.WeakValueDictionary[tuple[GoogleSource, str, Clock | None],
                                            TokenSource]
] = weakref.WeakKeyDictionary()


def open_source(source: GoogleSource, *, client: HttpClient, proxy: str = "",
                clock: Clock | None = None) -> TokenSource:
    """The run-time side of a configured source. `client` calls the token endpoint (through
    `proxy`, the provider's: it is on the internet) or the metadata server (directly: it is
    local to the host)."""
    known = _sources.setdefault(client, weakref.WeakValueDictionary())
    shared = known.get((source, proxy, clock))
    if shared is None:
        shared = known[source, proxy, clock] = _token_source(source, client, proxy,
                                                             clock or SystemClock())
    return shared


def _token_source(source: GoogleSource, client: HttpClient, proxy: str,
                  clock: Clock) -> TokenSource:
    from failoverd import googletoken  # the HTTP side, which needs this module's types

    client_ref = weakref.ref(client)  # `_sources` holds this by the client
    answered = False  # the metadata server has handed out a token: it is there

    async def fetch() -> tuple[str, float]:
        nonlocal answered
        current = client_ref()
        if current is None:  # pragma: no cover - the daemon's client outlives its providers
            raise GoogleCredentialsError("the HTTP client is closed")
        if isinstance(source, MetadataServer):
            token = await googletoken.from_metadata(current, source, answered=answered)
            answered = True
            return token
        requester = current.via(proxy)
        if isinstance(source, ServiceAccount):
            return await googletoken.from_service_account(requester, source, clock.time())
        return await googletoken.from_refresh_token(requester, source)

    return TokenSource(fetch, clock, describe(source))


class ProjectSource(_GoogleRefresher[str]):
    """The metadata server's project, asked once (refresher.py's single fetch, which a
    cancelled caller leaves running) and kept: a project id never expires. A failure is
    asked again `RETRY_WITHOUT` seconds later at the earliest."""

    noun = "Google credentials"

    def __init__(self, fetch: Callable[[], Awaitable[str]], clock: Clock, what: str) -> None:
        super().__init__(clock, what, logger)
        self._fetch = fetch

    async def _fetch_value(self, now: float, mono: float) -> str:
        return await self._fetch()

    def _expires(self, value: str) -> float:
        return math.inf

    def _got(self, fresh: str, old: str | None) -> None:
        logger.info("Google Cloud project %s, from %s", fresh, self.what)


# as `_sources`: one lookup per client, metadata server and clock, kept across reloads
_projects: weakref.WeakKeyDictionary[
    HttpClient, weakref.WeakValueDictionary[tuple[MetadataServer, Clock | None], ProjectSource]
] = weakref.WeakKeyDictionary()


def open_project(source: MetadataServer, *, client: HttpClient,
                 clock: Clock | None = None) -> ProjectSource:
    """The project of the metadata server `source` (for a provider that names none), asked
    directly (the server is local to the host)."""
    from failoverd import googletoken  # the HTTP side, which needs this module's types

    known = _projects.setdefault(client, weakref.WeakValueDictionary())
    shared = known.get((source, clock))
    if shared is None:
        client_ref = weakref.ref(client)

        async def fetch() -> str:
            current = client_ref()
            if current is None:  # pragma: no cover - the daemon's client outlives providers
                raise GoogleCredentialsError("the HTTP client is closed")
            return await googletoken.project_from_metadata(current, source)

        shared = known[source, clock] = ProjectSource(fetch, clock or SystemClock(),
                                                      describe(source))
    return shared
