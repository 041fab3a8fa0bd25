"""AWS credentials for Signature Version 4 (a bedrock provider without an API key): the
sources of the AWS SDKs' default chain, and their refresh.

The chain, in the SDKs' order:

1. the environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``;
2. the shared credentials file (``AWS_SHARED_CREDENTIALS_FILE``, else ``$HOME/.aws/credentials``;
   no ``HOME``, as under systemd: no default file), the profile the provider's ``aws_profile``
   names, else ``AWS_PROFILE``, else ``default``. A profile given in the configuration means
   the file: the environment's keys are then not used (as botocore does for a session's
   explicit profile).

Which source serves is decided when the configuration is read (`choose_source`), from the
environment and the file as they are then: a broken or missing choice is a configuration
error. At run time a `CredentialSource` (`open_source`) hands out credentials for each
request; the file is looked at again (its modification time, at most every
`FILE_CHECK_EVERY` seconds) and re-read when it changed, so credentials a helper rotates in it
apply without a restart.

Failing to get credentials at run time raises `AwsCredentialsError`, which the adapter turns
into an ``auth`` failure of the call: it never travels further in.
"""

from __future__ import annotations

import configparser
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from failoverd.clock import Clock, SystemClock
from failoverd.http1 import HttpClient

__all__ = ["AwsConfigError", "AwsCredentials", "AwsCredentialsError", "AwsSource",
           "CredentialSource", "SharedFile", "choose_source", "open_source", "read_profile"]

logger = logging.getLogger(__name__)

ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
FILE_CHECK_EVERY = 5.0  # seconds between two looks at the credentials file's mtime


class AwsCredentialsError(Exception):
    """No usable credentials now; the message says why (never with a secret)."""


class AwsConfigError(ValueError):
    """The configuration's choice of credentials cannot work; the message says what to do."""


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    """A set of AWS credentials. `expires` (seconds since the epoch) only for temporary ones
    that a source refreshes."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(default="", repr=False)
    expires: float | None = None


@dataclass(frozen=True, slots=True)
class SharedFile:
    """The shared credentials file and the profile to read in it."""

    path: str
    profile: str


AwsSource = AwsCredentials | SharedFile
"""Where a provider's credentials come from: fixed ones (the environment's), or a source."""


# ------------------------------------------------------------------ configuration


def _control(value: str) -> bool:
    return any(c < " " or c == "\x7f" for c in value)


def _from_env(env: Mapping[str, str]) -> AwsCredentials | None:
    """The environment's credentials; None when neither key is set."""
    key_id, secret, token = (env.get(name, "").strip() for name in ENV_KEYS)
    if not key_id and not secret:
        return None
    if not (key_id and secret):
        missing, given = (ENV_KEYS[1], ENV_KEYS[0]) if key_id else (ENV_KEYS[0], ENV_KEYS[1])
        raise AwsConfigError(f"environment variable {missing} is not set or empty ({given} "
                             "is): both are needed to sign requests")
    for name, value in ((ENV_KEYS[0], key_id), (ENV_KEYS[2], token)):
        if _control(value):
            raise AwsConfigError(f"environment variable {name} holds a line break or another "
                                 "control character")
    return AwsCredentials(key_id, secret, token)


def credentials_file(env: Mapping[str, str]) -> str:
    """The shared credentials file's path ("" when there is none: no ``HOME``)."""
    path = env.get("AWS_SHARED_CREDENTIALS_FILE", "").strip()
    home = env.get("HOME", "").strip()
    if path:
        return os.path.join(home, path[2:]) if path.startswith("~/") and home else path
    return os.path.join(home, ".aws", "credentials") if home else ""


def _parse(path: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    except FileNotFoundError:
        raise AwsCredentialsError(f"{path} does not exist") from None
    except OSError as exc:
        raise AwsCredentialsError(f"{path} cannot be read: {exc.strerror or exc}") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AwsCredentialsError(f"{path} is not a valid credentials file: {first}") from None
    return parser


def _profile(parser: configparser.ConfigParser, path: str,
             profile: str) -> AwsCredentials | None:
    """The profile's credentials; None when it is not there or names no key at all."""
    if not parser.has_section(profile):
        return None
    section = parser[profile]
    key_id = section.get("aws_access_key_id", "").strip()
    secret = section.get("aws_secret_access_key", "").strip()
    token = section.get("aws_session_token", "").strip()
    if not key_id and not secret:
        return None
    if not (key_id and secret):
        missing = "aws_access_key_id" if not key_id else "aws_secret_access_key"
        raise AwsCredentialsError(f"profile [{profile}] of {path} has no {missing}")
    if _control(key_id) or _control(token):
        raise AwsCredentialsError(f"profile [{profile}] of {path} holds a control character")
    return AwsCredentials(key_id, secret, token)


def read_profile(path: str, profile: str) -> AwsCredentials:
    """The credentials of `profile` in the shared credentials file at `path` (INI:
    ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``)."""
    credentials = _profile(_parse(path), path, profile)
    if credentials is None:
        raise AwsCredentialsError(f"{path} has no profile [{profile}] with aws_access_key_id "
                                  "and aws_secret_access_key (SSO, assume-role and process "
                                  "profiles are not read)")
    return credentials


def choose_source(env: Mapping[str, str], profile: str = "") -> AwsSource:
    """The first source of the chain that is there (see the module's docstring). `profile`:
    the provider's ``aws_profile`` ("" for none). Raises AwsConfigError when none is, or the
    one found is broken."""
    if not profile:
        fixed = _from_env(env)
        if fixed is not None:
            return fixed
    path = credentials_file(env)
    named = profile or env.get("AWS_PROFILE", "").strip()
    name = named or "default"
    if path and (named or os.path.exists(path)):
        try:
            if named:  # asked for: it must be there
                read_profile(path, name)
                return SharedFile(path, name)
            # a broken file is reported; a file without a default profile is passed over,
            # as the SDKs do
            if _profile(_parse(path), path, name) is not None:
                return SharedFile(path, name)
        except AwsCredentialsError as exc:
            raise AwsConfigError(str(exc)) from None
    elif named:
        raise AwsConfigError(f"profile {name!r} is named, but there is no shared credentials "
                             "file: HOME is not set (as under systemd); set "
                             "AWS_SHARED_CREDENTIALS_FILE")
    raise AwsConfigError(
        "has no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with "
        "AWS_SESSION_TOKEN for temporary credentials) in the daemon's environment, write "
        "them in the shared credentials file (AWS_SHARED_CREDENTIALS_FILE or "
        "~/.aws/credentials, profile aws_profile / AWS_PROFILE / default), or give a Bedrock "
        "API key with api_key_env, api_key_file or api_key_credential")


# ------------------------------------------------------------------ at run time


class CredentialSource(Protocol):
    """Credentials for the next request: cached, looked at again or refreshed as needed."""

    async def get(self) -> AwsCredentials: ...


class StaticCredentials:
    """Fixed credentials (the environment's: they change with a restart only)."""

    def __init__(self, credentials: AwsCredentials) -> None:
        self._credentials = credentials

    async def get(self) -> AwsCredentials:
        return self._credentials


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
                credentials = read_profile(path, profile)
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


def open_source(source: AwsSource, *, client: HttpClient,
                clock: Clock | None = None) -> CredentialSource:
    """The run-time side of a configured source; `client` calls the credential endpoints
    (directly: they are local to the host)."""
    clock = clock or SystemClock()
    if isinstance(source, AwsCredentials):
        return StaticCredentials(source)
    return SharedFileCredentials(source, clock)
