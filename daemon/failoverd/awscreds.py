"""AWS credentials for Signature Version 4 (a bedrock provider without an API key): the
sources of the AWS SDKs' default chain, and their refresh.

The chain, in the SDKs' order:

1. the environment: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``;
2. a profile (awsprofiles.py): the provider's ``aws_profile``, else ``AWS_PROFILE`` (or
   ``AWS_DEFAULT_PROFILE``), else ``default``, of the shared credentials file
   (``AWS_SHARED_CREDENTIALS_FILE``, else ``$HOME/.aws/credentials``) and the config file
   (``AWS_CONFIG_FILE``, else ``$HOME/.aws/config``) merged as botocore merges them; no
   ``HOME``, as under systemd: no default files. A profile gives static keys (`SharedFile`), a
   ``credential_process`` (`CredentialProcess`, awsprocess.py), an assumed role (`AssumeRole`,
   awssts.py) or an IAM Identity Center role (`SsoRole`, awssso.py). A profile given in the
   configuration means the files: the environment's keys are then not used (as botocore does
   for a session's explicit profile). A profile's ``web_identity_token_file`` with
   ``role_arn``, and without a profile given ``AWS_WEB_IDENTITY_TOKEN_FILE`` with
   ``AWS_ROLE_ARN`` (EKS IAM roles for service accounts), is AssumeRoleWithWebIdentity
   (`WebIdentityRole`, awswebidentity.py), taken after a profile's assumed role and before its
   other sources, as botocore does;
3. a container's credential endpoint (ECS task roles, EKS Pod Identity):
   ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`` (on ``http://169.254.170.2``), else
   ``AWS_CONTAINER_CREDENTIALS_FULL_URI`` (https, or http to a loopback address or one of the
   ECS and EKS agents' addresses), with ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`` (read at
   every fetch: EKS rotates it) or ``AWS_CONTAINER_AUTHORIZATION_TOKEN`` as its
   ``Authorization`` header;
4. the EC2 instance metadata service (IMDSv2, IMDSv1 when its token cannot be had and
   ``AWS_EC2_METADATA_V1_DISABLED`` is not true; ``http://169.254.169.254``, else
   ``AWS_EC2_METADATA_SERVICE_ENDPOINT``), unless ``AWS_EC2_METADATA_DISABLED=true``: the
   instance role's credentials. Whether the host has one is known only by asking: it is the
   last resort, and a host without it fails each call fast (``auth``), never the
   configuration.

How the endpoints are called: awsmetadata.py.

Which source serves is decided when the configuration is read (`choose_source`), from the
environment and the files as they are then: a broken or missing choice is a configuration
error. This module is that side: what a source is (the frozen dataclasses of `AwsSource`, which
the configuration holds) and how one is chosen. How a source hands out credentials at run time
is awsruntime.py (`open_source`), whose names are importable from here too.
"""

from __future__ import annotations

import configparser
import math
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from failoverd.refresher import REFRESH_AHEAD as REFRESH_AHEAD
from failoverd.refresher import RETRY_KEEPING as RETRY_KEEPING
from failoverd.refresher import RETRY_WITHOUT as RETRY_WITHOUT

__all__ = ["AssumeRole", "AwsConfigError", "AwsCredentials", "AwsCredentialsError", "AwsSource",
           "ContainerEndpoint", "CredentialProcess", "InstanceMetadata", "SharedFile", "SsoRole",
           "WebIdentityRole", "bare", "choose_source", "read_profile", "temporary"]

ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
MAX_FILE = 1 << 20  # a credentials file is a few hundred bytes a profile
IMDS_ENDPOINT = "http://169.254.169.254"


class AwsCredentialsError(Exception):
    """No usable credentials now; the message says why (never with a secret). `transient`:
    an endpoint that did not answer or failed (a timeout, a refused connection, a 5xx, an
    unreadable answer), which says nothing of the credentials, unlike a refusal."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


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
    """The shared credentials file (or the config file) and the profile to read in it.
    `section`: the profile's section when it is not named as the profile (the config file's
    ``[profile name]``)."""

    path: str
    profile: str
    section: str = ""


@dataclass(frozen=True, slots=True)
class ContainerEndpoint:
    """A container's credential endpoint, and the ``Authorization`` it wants: the token, or
    the file that holds it (read at every fetch)."""

    url: str
    token: str = field(default="", repr=False)
    token_file: str = ""


@dataclass(frozen=True, slots=True)
class InstanceMetadata:
    """The EC2 instance metadata service (IMDSv2) and its role's credentials. `v1`: IMDSv1
    may be used when the session token call fails (AWS_EC2_METADATA_V1_DISABLED unset)."""

    endpoint: str = IMDS_ENDPOINT
    v1: bool = True


@dataclass(frozen=True, slots=True)
class CredentialProcess:
    """A profile's ``credential_process``: the command, split as botocore splits it (no
    shell), that prints the credentials (awsprocess.py)."""

    profile: str
    # the arguments may carry a secret: only the program shows
    command: tuple[str, ...] = field(repr=False)
    timeout: float = 30.0  # seconds the command may take

    @property
    def program(self) -> str:
        """The program, as errors and logs name it."""
        return self.command[0] if self.command else ""


@dataclass(frozen=True, slots=True)
class AssumeRole:
    """A profile's ``role_arn``: STS AssumeRole signed with the credentials of `source` (a
    ``source_profile``'s, or the ``credential_source``'s) for `region`, at the STS `endpoint`
    (awssts.py; awsendpoints.py chose both: us-east-1 at the legacy global endpoint)."""

    profile: str
    role_arn: str
    source: AwsSource
    region: str
    endpoint: str
    external_id: str = field(default="", repr=False)
    session_name: str = ""  # "": failoverd-<epoch seconds>, as botocore's botocore-session-<...>
    duration: int = 0  # DurationSeconds; 0: STS's own default (an hour)


@dataclass(frozen=True, slots=True)
class SsoRole:
    """A profile's IAM Identity Center role: the access token ``aws sso login`` cached in
    `cache`, traded at the portal `endpoint` for the role's credentials (awssso.py).
    `session`: the ``sso-session`` section's name ("" for a legacy profile)."""

    profile: str
    account_id: str
    role_name: str
    start_url: str
    sso_region: str
    session: str
    cache: str
    endpoint: str
    oidc_endpoint: str = ""


@dataclass(frozen=True, slots=True)
class WebIdentityRole:
    """STS AssumeRoleWithWebIdentity of `role_arn` with the token in `token_file` (read at
    every fetch), unsigned, at the STS `endpoint` (awswebidentity.py). `profile`: the one
    that names the token file ("" for ``AWS_WEB_IDENTITY_TOKEN_FILE``)."""

    profile: str
    role_arn: str
    token_file: str
    endpoint: str
    session_name: str = ""  # "": failoverd-<epoch seconds>
    duration: int = 0  # DurationSeconds; 0: STS's own default (an hour)


AwsSource = (AwsCredentials | SharedFile | ContainerEndpoint | InstanceMetadata
             | CredentialProcess | AssumeRole | SsoRole | WebIdentityRole)
"""Where a provider's credentials come from: fixed ones (the environment's), or a source."""

Refreshing = (ContainerEndpoint | InstanceMetadata | CredentialProcess | AssumeRole | SsoRole
              | WebIdentityRole)
"""The sources whose temporary credentials a `RefreshingCredentials` fetches."""


# ------------------------------------------------------------------ configuration


def control(value: str) -> bool:
    """Whether `value` holds a control character (no header may carry one)."""
    return any(c < " " or c == "\x7f" for c in value)


def temporary(key_id: str, secret: str, token: str, expiration: str | None, where: str,
              said: str = "answered") -> AwsCredentials:
    """Credentials a source `said` (its verb in errors), checked: `expiration` an ISO 8601
    time (none: they do not expire), no control character in the key id or the token."""
    expires = math.inf
    if expiration:
        try:
            when = datetime.fromisoformat(expiration.upper())  # RFC 3339 allows "t" and "z"
        except ValueError:
            raise AwsCredentialsError(f"{where} {said} an Expiration that is no ISO 8601 "
                                      f"time: {expiration[:40]!r}") from None
        expires = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if control(key_id) or control(token):
        raise AwsCredentialsError(f"{where} {said} credentials with a control character")
    return AwsCredentials(key_id, secret, token, expires=expires)


def bare(url: str) -> str:
    """The URL as errors and logs show it: without its userinfo and its query, either of
    which may carry a secret. By position (all between "//" and the last "@"), so a malformed
    URL shows neither."""
    start, at = url.find("//"), url.rfind("@")
    if at >= 0:
        url = url[:start + 2] + url[at + 1:] if 0 <= start < at else url[at + 1:]
    return url.split("?", 1)[0].split("#", 1)[0]


def from_env(env: Mapping[str, str]) -> AwsCredentials | None:
    """The environment's credentials; None when neither key is set."""
    key_id, secret, token = (env.get(name, "").strip() for name in ENV_KEYS)
    if not key_id and not secret:
        return None
    if not (key_id and secret):
        missing, given = (ENV_KEYS[1], ENV_KEYS[0]) if key_id else (ENV_KEYS[0], ENV_KEYS[1])
        raise AwsConfigError(f"environment variable {missing} is not set or empty ({given} "
                             "is): both are needed to sign requests")
    for name, value in ((ENV_KEYS[0], key_id), (ENV_KEYS[2], token)):
        if control(value):
            raise AwsConfigError(f"environment variable {name} holds a line break or another "
                                 "control character")
    return AwsCredentials(key_id, secret, token)


def aws_file(env: Mapping[str, str], variable: str, name: str) -> str:
    """The path of one of the SDKs' files: `variable`'s (a leading ``~/`` is ``HOME``), else
    ``$HOME/.aws/<name>`` ("" when there is none: no ``HOME``)."""
    path = env.get(variable, "").strip()
    home = env.get("HOME", "").strip()
    if path:
        return os.path.join(home, path[2:]) if path.startswith("~/") and home else path
    return os.path.join(home, ".aws", name) if home else ""


def credentials_file(env: Mapping[str, str]) -> str:
    """The shared credentials file's path ("" when there is none: no ``HOME``)."""
    return aws_file(env, "AWS_SHARED_CREDENTIALS_FILE", "credentials")


def parse_file(path: str, what: str = "credentials file") -> configparser.ConfigParser:
    """The INI file at `path` (a regular file of at most `MAX_FILE` bytes), or
    AwsCredentialsError saying why not."""
    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    try:
        # a FIFO or a device would block the event loop (a reload's too), or never end
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise AwsCredentialsError(f"{path} is not a regular file")
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE + 1)
        if len(raw) > MAX_FILE:
            raise AwsCredentialsError(f"{path} is larger than {MAX_FILE >> 20} MiB: no "
                                      f"{what}")
        # a BOM from a Windows editor is no text
        parser.read_string(raw.decode("utf-8-sig"), source=path)
    except FileNotFoundError:
        raise AwsCredentialsError(f"{path} does not exist") from None
    except OSError as exc:
        raise AwsCredentialsError(f"{path} cannot be read: {exc.strerror or exc}") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AwsCredentialsError(f"{path} is not a valid {what}: {first}") from None
    return parser


def profile_keys(parser: configparser.ConfigParser, path: str, profile: str,
             section: str = "") -> AwsCredentials | None:
    """The profile's credentials (in `section`, by default the profile's name); None when it
    is not there or names no key at all."""
    section = section or profile
    if not parser.has_section(section):
        return None
    keys = parser[section]
    key_id = keys.get("aws_access_key_id", "").strip()
    secret = keys.get("aws_secret_access_key", "").strip()
    token = keys.get("aws_session_token", "").strip()
    if not key_id and not secret:
        return None
    if not (key_id and secret):
        missing = "aws_access_key_id" if not key_id else "aws_secret_access_key"
        raise AwsCredentialsError(f"profile [{section}] of {path} has no {missing}")
    if control(key_id) or control(token):
        raise AwsCredentialsError(f"profile [{section}] of {path} holds a control character")
    return AwsCredentials(key_id, secret, token)


def read_profile(path: str, profile: str, section: str = "") -> AwsCredentials:
    """The credentials of `profile` in the shared credentials file at `path` (INI:
    ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``); `section` when
    it is not the profile's name (the config file's ``[profile name]``)."""
    credentials = profile_keys(parse_file(path), path, profile, section)
    if credentials is None:
        raise AwsCredentialsError(f"{path} has no profile [{section or profile}] with "
                                  "aws_access_key_id and aws_secret_access_key")
    return credentials


def choose_source(env: Mapping[str, str], profile: str = "", *, region: str = "") -> AwsSource:
    """The first source of the chain that is there (see the module's docstring). `profile`:
    the provider's ``aws_profile`` ("" for none); `region`: the provider's, where an assumed
    role's STS endpoint is (else ``AWS_REGION``, ``AWS_DEFAULT_REGION``, the profile's
    ``region``, us-east-1). Raises AwsConfigError when none is, or the one found
    is broken."""
    # the files' side and the endpoints', which need this module's types
    from failoverd import awsprofiles
    from failoverd.awsmetadata import container, instance

    if not profile:
        fixed = from_env(env)
        if fixed is not None:
            return fixed
    # an assumed role, a web identity role (the environment's too), the profile's keys...
    found = awsprofiles.profile_source(env, profile, region)
    if found is not None:
        return found
    if env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "").strip() or \
            env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI", "").strip():
        return container(env)
    if env.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() != "true":
        # whether there is one is known only by asking, at the first call
        return instance(env)
    raise AwsConfigError(
        "has no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with "
        "AWS_SESSION_TOKEN for temporary credentials) in the daemon's environment, write "
        "them in the shared credentials file (AWS_SHARED_CREDENTIALS_FILE or "
        "~/.aws/credentials) or name a profile of it or of the config file (AWS_CONFIG_FILE "
        "or ~/.aws/config: keys, credential_process, role_arn, sso_session) with aws_profile "
        "/ AWS_PROFILE / default, assume a role with a web identity token "
        "(AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN), run with a container's role "
        "(AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or _FULL_URI) or an EC2 "
        "instance role (the instance metadata service, which AWS_EC2_METADATA_DISABLED=true "
        "turns off), or give a Bedrock API key with api_key_env, api_key_file or "
        "api_key_credential")


# the run-time side's names, importable from here as before it had a module of its own
_RUN_TIME = frozenset({"CredentialSource", "FILE_CHECK_EVERY", "RefreshingCredentials",
                       "SharedFileCredentials", "StaticCredentials", "open_source",
                       "_refreshing"})


def __getattr__(name: str) -> Any:
    if name in _RUN_TIME:
        from failoverd import awsruntime  # which imports this module's types

        return getattr(awsruntime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
