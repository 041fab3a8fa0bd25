"""The AWS shared config and credentials files, read as botocore reads them, and the source a
profile names (awscreds.py's `choose_source` asks here).

The files:

- the credentials file (``AWS_SHARED_CREDENTIALS_FILE``, else ``~/.aws/credentials``):
  ``[name]`` sections;
- the config file (``AWS_CONFIG_FILE``, else ``~/.aws/config``): ``[profile name]`` sections
  (the name may be quoted), ``[default]`` (a ``[profile default]`` that comes later wins, as
  in botocore), ``[sso-session name]`` sections, ``[services name]`` sections (the
  endpoints a profile's ``services`` key names: awsendpoints.py).

A profile is both files' sections of its name merged, the credentials file's keys over the
config file's (botocore's ``Session.full_config``).

What a profile gives, in botocore's order (its ``create_credential_resolver`` with a profile):
``role_arn`` without ``web_identity_token_file`` (an assumed role, whatever else the profile
holds); ``web_identity_token_file`` with ``role_arn`` (AssumeRoleWithWebIdentity); ``sso_*``
keys (IAM Identity Center); keys in the credentials file; ``credential_process``; keys in the
config file. Unless the configuration names the profile (``aws_profile``, botocore's session
profile), ``AWS_WEB_IDENTITY_TOKEN_FILE``, ``AWS_ROLE_ARN`` and ``AWS_ROLE_SESSION_NAME`` are
read over the profile's ``web_identity_token_file``, ``role_arn`` and ``role_session_name``
for that web identity, one by one as botocore's AssumeRoleWithWebIdentityProvider reads them,
even when there is no profile at all; a source profile's never.
A ``source_profile`` with keys gives what the profile gives without its ``role_arn`` (a web
identity, SSO, the credentials file's keys, ``credential_process``, the config file's keys:
botocore's order), even when it has a ``role_arn`` too (which is how a profile may name
itself as its source); one without keys gives what its own profile gives, an assumed role or
a web identity included (chained roles). A source profile seen before in the chain is a
loop, refused, but for a profile naming itself with keys of its own.

Every problem is an `AwsConfigError` naming the profile, the key and the file.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field

from failoverd.awscreds import (
    AssumeRole,
    AwsConfigError,
    AwsCredentialsError,
    AwsSource,
    CredentialProcess,
    SharedFile,
    SsoRole,
    WebIdentityRole,
    aws_file,
    control,
    credentials_file,
    from_env,
    parse_file,
    profile_keys,
)
from failoverd.awsendpoints import Endpoints, domain
from failoverd.awsmetadata import container, instance

__all__ = ["config_file", "endpoints", "profile_source", "sso_cache_key"]

SSO_KEYS = ("sso_start_url", "sso_region", "sso_account_id", "sso_role_name")
CREDENTIAL_SOURCES = ("Environment", "Ec2InstanceMetadata", "EcsContainer")
DEFAULT_REGION = "us-east-1"  # where STS is asked when nothing names a region
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
_SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}")  # STS's RoleSessionName


def config_file(env: Mapping[str, str]) -> str:
    """The config file's path ("" when there is none: no ``HOME``)."""
    return aws_file(env, "AWS_CONFIG_FILE", "config")


def sso_cache_key(session: str, start_url: str) -> str:
    """The name of the token cache file ``aws sso login`` writes: the SHA-1 of the
    ``sso-session``'s name, or of the start URL for a legacy profile."""
    return hashlib.sha1((session or start_url).encode(), usedforsecurity=False).hexdigest()


@dataclass
class _Profile:
    """A profile: its keys (both files merged) and where each came from."""

    name: str
    values: dict[str, str] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    section: str = ""  # its section in the config file ("" if none)

    def get(self, key: str) -> str:
        return self.values.get(key, "").strip()


@dataclass
class _Files:
    credentials: str
    config: str
    parsers: dict[str, configparser.ConfigParser] = field(default_factory=dict)
    profiles: dict[str, _Profile] = field(default_factory=dict)
    sessions: dict[str, dict[str, str]] = field(default_factory=dict)
    services: dict[str, dict[str, str]] = field(default_factory=dict)


def _load(credentials: str, config: str) -> _Files:
    files = _Files(credentials, config)
    for path, what in ((config, "config file"), (credentials, "credentials file")):
        if not path or not os.path.exists(path):
            continue
        try:
            parser = parse_file(path, what)
        except AwsCredentialsError as exc:
            raise AwsConfigError(str(exc)) from None
        files.parsers[path] = parser
        for section in parser.sections():
            values = dict(parser[section])
            if path == config:
                name, kind = _config_section(section)
                if kind == "sso-session":
                    files.sessions[name] = values
                    continue
                if kind == "services":
                    files.services[name] = values
                    continue
                if kind != "profile":
                    continue
                # a later [default] / [profile default] replaces the earlier, as in botocore
                profile = files.profiles[name] = _Profile(name, section=section)
            else:
                profile = files.profiles.setdefault(section, _Profile(section))
            profile.values.update(values)
            profile.where.update(dict.fromkeys(values, path))
    return files


def _config_section(section: str) -> tuple[str, str]:
    """(name, kind) of a config file's section: ``profile``, ``sso-session``, ``services``
    or ""."""
    if section == "default":
        return "default", "profile"
    try:
        parts = shlex.split(section)
    except ValueError:
        return "", ""
    if len(parts) == 2 and parts[0] in ("profile", "sso-session", "services"):
        return parts[1], parts[0]
    return "", ""


def env_profile(env: Mapping[str, str]) -> tuple[str, str]:
    """The profile the environment names: (the variable, its value), ``AWS_PROFILE``, else
    ``AWS_DEFAULT_PROFILE`` (the AWS CLI's order; stock botocore reads them the other way
    round, boto/botocore#1725, which matters only when both are set); ("", "") for none."""
    for variable in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        value = env.get(variable, "").strip()
        if value:
            return variable, value
    return "", ""


def profile_source(env: Mapping[str, str], profile: str, region: str) -> AwsSource | None:
    """The source the profile gives: `profile` (the provider's ``aws_profile``), else
    the environment's (`env_profile`), else ``default``. None when no profile is named and
    the default one is not there or gives nothing (the chain goes on); AwsConfigError when a
    named one is not there or any is broken."""
    variable, from_env = env_profile(env)
    named = profile or from_env
    name = named or "default"
    by = "aws_profile" if profile else variable
    credentials, config = credentials_file(env), config_file(env)
    if not credentials and not config and named:
        raise AwsConfigError(f"profile {name!r} is named, but there is no shared "
                             "credentials file: HOME is not set (as under systemd); set "
                             "AWS_SHARED_CREDENTIALS_FILE or AWS_CONFIG_FILE")
    files = _load(credentials, config) if credentials or config else _Files("", "")
    # botocore reads the environment's web identity over the profile's, unless the session
    # names its profile, and when there is no profile at all
    with_env = not profile
    if name not in files.profiles:
        if named:
            raise AwsConfigError(_missing(files, name) + f" (profile {name!r} of {by})")
        if not env.get("AWS_WEB_IDENTITY_TOKEN_FILE", "").strip():
            return None
        files.profiles[name] = _Profile(name)  # none: the environment's web identity
    resolver = _Resolver(files, env, region or _region(files.profiles[name], env), with_env,
                         _endpoints(files, env, name))
    source = resolver.source(name)
    if source is None and named:
        raise AwsConfigError(f"profile [{name}] ({resolver.where(name)}) gives no "
                             "credentials: it has no aws_access_key_id and "
                             "aws_secret_access_key, credential_process, role_arn, "
                             "web_identity_token_file or sso_* keys")
    return source


def endpoints(env: Mapping[str, str], profile: str = "") -> Endpoints:
    """The endpoint settings (awsendpoints.py) of the profile in use: `profile` (the
    provider's ``aws_profile``), else the environment's (`env_profile`), else ``default``,
    which need not exist.
    Raises AwsConfigError when a file cannot be parsed, as botocore fails every client
    then."""
    name = profile or env_profile(env)[1] or "default"
    credentials, config = credentials_file(env), config_file(env)
    files = _load(credentials, config) if credentials or config else _Files("", "")
    return _endpoints(files, env, name)


def _endpoints(files: _Files, env: Mapping[str, str], name: str) -> Endpoints:
    found = files.profiles.get(name)
    if found is None:
        return Endpoints(env, services=files.services)
    where = ", ".join(sorted(set(found.where.values()))) or "no file"
    return Endpoints(env, found.values, files.services, f"profile [{name}] ({where})")


def _missing(files: _Files, name: str) -> str:
    parts = []
    if files.credentials:
        parts.append(f"{files.credentials} has no profile [{name}] with aws_access_key_id "
                     "and aws_secret_access_key" if files.credentials in files.parsers
                     else f"{files.credentials} does not exist")
    if files.config:
        section = "default" if name == "default" else f"profile {name}"
        parts.append(f"{files.config} has no [{section}]" if files.config in files.parsers
                     else f"{files.config} does not exist")
    return "; ".join(parts)


def _region(profile: _Profile, env: Mapping[str, str]) -> str:
    # the environment over the file, as in botocore
    for value in (env.get("AWS_REGION", ""), env.get("AWS_DEFAULT_REGION", ""),
                  profile.get("region")):
        words = value.split()
        if words and _REGION.fullmatch(words[0]):
            return words[0]
    return DEFAULT_REGION


class _Resolver:
    """Follows one profile to its source."""

    def __init__(self, files: _Files, env: Mapping[str, str], region: str,
                 with_env: bool = False, endpoints: Endpoints | None = None) -> None:
        self._files = files
        self._env = env
        self._region = region
        # the profile in use's, for every service a chain calls (botocore's session's)
        self._endpoints = endpoints or Endpoints(env)
        self._with_env = with_env  # the environment's web identity, for the first profile

    def where(self, name: str, key: str = "") -> str:
        """The file the profile's `key` comes from (any of its files without a key)."""
        profile = self._files.profiles[name]
        if key and key in profile.where:
            return profile.where[key]
        return ", ".join(sorted(set(profile.where.values()))) or "no file"

    def _problem(self, name: str, key: str, text: str) -> AwsConfigError:
        return AwsConfigError(f"profile [{name}] ({self.where(name, key)}): {key} {text}")

    def source(self, name: str) -> AwsSource | None:
        profile = self._files.profiles[name]
        if profile.get("role_arn") and not profile.get("web_identity_token_file"):
            return self._role(name, ())
        return self._direct(name, top=True)

    def _direct(self, name: str, *, top: bool = False) -> AwsSource | None:
        """What the profile gives besides an assumed role (`top`: the profile used, whose web
        identity the environment's may stand for)."""
        profile = self._files.profiles[name]
        web = self._web_identity(name, top)
        if web is not None:
            return web
        if any(profile.get(k) for k in (*SSO_KEYS, "sso_session")):
            return self._sso(name)
        keys = self._static(name, self._files.credentials)
        if keys is not None:
            return keys
        if profile.get("credential_process"):
            return self._process(name)
        return self._static(name, self._files.config)

    def _static(self, name: str, path: str) -> SharedFile | None:
        """The profile's keys in the file at `path`, when they are there."""
        profile = self._files.profiles[name]
        parser = self._files.parsers.get(path)
        if parser is None:
            return None
        section = profile.section if path == self._files.config else name
        if not section:
            return None
        try:
            found = profile_keys(parser, path, name, section)
        except AwsCredentialsError as exc:
            raise AwsConfigError(str(exc)) from None
        if found is None:
            return None
        return SharedFile(path, name, "" if section == name else section)

    def _keys(self, name: str) -> SharedFile | None:
        return self._static(name, self._files.credentials) or \
            self._static(name, self._files.config)

    # ------------------------------------------------------------------ assumed roles

    def _role(self, name: str, seen: tuple[str, ...]) -> AssumeRole:
        profile = self._files.profiles[name]
        role_arn = profile.get("role_arn")
        if profile.get("mfa_serial"):
            raise self._problem(name, "mfa_serial", "is set: a role that wants an MFA code "
                                "cannot be assumed by a daemon (no one types the code); use "
                                "a role without MFA, or write the session's credentials "
                                "(aws sts assume-role --serial-number ...) in the credentials "
                                "file")
        if not role_arn.startswith("arn:") or control(role_arn):
            raise self._problem(name, "role_arn", f"is not a role ARN: {role_arn[:100]!r}")
        source_profile = profile.get("source_profile")
        credential_source = profile.get("credential_source")
        if source_profile and credential_source:
            raise self._problem(name, "role_arn", "has both source_profile and "
                                "credential_source: keep one")
        if not source_profile and not credential_source:
            raise self._problem(name, "role_arn", "needs source_profile or credential_source "
                                "(the credentials that assume the role)")
        chain = (*seen, name)
        source: AwsSource
        if credential_source:
            source = self._credential_source(name, credential_source)
        else:
            source = self._source_profile(name, source_profile, chain)
        session_name = self._session_name(name, profile.get("role_session_name"),
                                          "role_session_name")
        external_id = profile.get("external_id")
        if external_id and (control(external_id) or not 2 <= len(external_id) <= 1224):
            raise self._problem(name, "external_id", "must be 2 to 1224 characters, without "
                                "control characters")
        duration = self._duration(name)
        endpoint, signing_region = self._endpoints.sts(self._region)
        return AssumeRole(name, role_arn, source, signing_region, endpoint, external_id,
                          session_name, duration)

    def _source_profile(self, name: str, source_name: str,
                        chain: tuple[str, ...]) -> AwsSource:
        if source_name not in self._files.profiles:
            raise self._problem(name, "source_profile", f"names profile [{source_name}], "
                                "which is in neither file")
        keys = self._keys(source_name)
        if source_name in chain and (source_name != name or keys is None):
            raise self._problem(name, "source_profile", "makes a loop: "
                                f"{' -> '.join((*chain, source_name))}")
        if keys is not None:
            # botocore resolves a source profile with keys by its whole profile chain (its
            # `_resolve_credentials_from_profile`): an SSO role or a credential_process may
            # come before the keys
            return self._direct(source_name) or keys
        source = self._files.profiles[source_name]
        if source.get("role_arn") and not source.get("web_identity_token_file"):
            return self._role(source_name, chain)  # a chained role
        found = self._direct(source_name)
        if found is None:
            raise self._problem(name, "source_profile", f"names profile [{source_name}], "
                                "which gives no credentials (no keys, credential_process, "
                                "role_arn, web_identity_token_file or sso_* keys)")
        return found

    def _session_name(self, name: str, value: str, key: str) -> str:
        """A RoleSessionName as STS takes it; `key`: the profile's key, or the variable."""
        if value and not _SESSION_NAME.fullmatch(value):
            text = f"must be 2 to 64 letters, digits or +=,.@_- : {value[:80]!r}"
            if key.startswith("AWS_"):
                raise AwsConfigError(f"environment variable {key} {text}")
            raise self._problem(name, key, text)
        return value

    def _duration(self, name: str) -> int:
        """The profile's ``duration_seconds`` (0 when not given: STS's default)."""
        value = self._files.profiles[name].get("duration_seconds")
        if not value:
            return 0
        try:
            duration = int(value)
        except ValueError:
            duration = -1
        if not 900 <= duration <= 43200:
            raise self._problem(name, "duration_seconds", "must be a whole number of seconds "
                                f"from 900 to 43200, got {value[:20]!r}")
        return duration

    def _web_identity(self, name: str, top: bool) -> WebIdentityRole | None:
        """AssumeRoleWithWebIdentity, when the profile (or, for the profile used, the
        environment) names a token file; each key the environment's over the profile's."""
        profile = self._files.profiles[name]
        env = self._env if top and self._with_env else {}

        def pick(variable: str, key: str) -> tuple[str, str]:
            value = env.get(variable, "").strip()
            return (value, variable) if value else (profile.get(key), key)

        token_file, token_by = pick("AWS_WEB_IDENTITY_TOKEN_FILE", "web_identity_token_file")
        if not token_file:
            return None
        role_arn, arn_by = pick("AWS_ROLE_ARN", "role_arn")
        if not role_arn:
            if token_by.startswith("AWS_"):
                raise AwsConfigError(
                    "environment variable AWS_WEB_IDENTITY_TOKEN_FILE is set (EKS IAM roles "
                    "for service accounts), but AWS_ROLE_ARN is not"
                    + (f" and profile [{name}] has no role_arn" if profile.where else "")
                    + ": the role to assume with its token (AssumeRoleWithWebIdentity)")
            raise self._problem(name, "role_arn", "is missing: web_identity_token_file needs "
                                "the role to assume with its token (AssumeRoleWithWebIdentity)")
        if not role_arn.startswith("arn:") or control(role_arn):
            text = f"is not a role ARN: {role_arn[:100]!r}"
            if arn_by.startswith("AWS_"):
                raise AwsConfigError(f"environment variable {arn_by} {text}")
            raise self._problem(name, arn_by, text)
        if control(token_file):
            if token_by.startswith("AWS_"):
                raise AwsConfigError(f"environment variable {token_by} holds a control "
                                     "character")
            raise self._problem(name, token_by, "holds a control character")
        session = self._session_name(name, *pick("AWS_ROLE_SESSION_NAME", "role_session_name"))
        return WebIdentityRole("" if token_by.startswith("AWS_") else name, role_arn, token_file,
                               self._endpoints.sts(self._region)[0], session,
                               self._duration(name))

    def _credential_source(self, name: str, value: str) -> AwsSource:
        env = self._env
        if value == "Environment":
            found: AwsSource | None = from_env(env)
            if found is None:
                raise self._problem(name, "credential_source", "is Environment, but "
                                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set")
            return found
        if value == "EcsContainer":
            if not (env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "").strip() or
                    env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI", "").strip()):
                raise self._problem(name, "credential_source", "is EcsContainer, but neither "
                                    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI nor "
                                    "AWS_CONTAINER_CREDENTIALS_FULL_URI is set")
            return container(env)
        if value == "Ec2InstanceMetadata":
            if env.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() == "true":
                raise self._problem(name, "credential_source", "is Ec2InstanceMetadata, but "
                                    "AWS_EC2_METADATA_DISABLED=true turns it off")
            return instance(env)
        raise self._problem(name, "credential_source", f"is {value[:40]!r}: it must be one of "
                            f"{', '.join(CREDENTIAL_SOURCES)}")

    # ------------------------------------------------------------------ the other sources

    def _process(self, name: str) -> CredentialProcess:
        line = self._files.profiles[name].get("credential_process")
        try:
            command = tuple(shlex.split(line))
        except ValueError as exc:
            raise self._problem(name, "credential_process", f"cannot be split into a "
                                f"command: {exc}") from None
        if not command:
            raise self._problem(name, "credential_process", "is empty")
        program = command[0]
        if os.sep in program:
            if not (os.path.isfile(program) and os.access(program, os.X_OK)):
                raise self._problem(name, "credential_process", f"runs {program}, which is "
                                    "not an executable file")
        elif shutil.which(program, path=self._env.get("PATH")) is None:
            raise self._problem(name, "credential_process", f"runs {program}, which is not "
                                "on PATH")
        return CredentialProcess(name, command)

    def _sso(self, name: str) -> SsoRole:
        profile = self._files.profiles[name]
        values = {k: profile.get(k) for k in SSO_KEYS if profile.get(k)}
        session = profile.get("sso_session")
        if session:
            found = self._files.sessions.get(session)
            if found is None:
                raise self._problem(name, "sso_session", f"names [sso-session {session}], "
                                    f"which {self._files.config or 'the config file'} does "
                                    "not have")
            for key in ("sso_start_url", "sso_region"):
                theirs = found.get(key, "").strip()
                if key in values and theirs and values[key] != theirs:
                    raise self._problem(name, key, f"differs from [sso-session {session}]'s")
                if theirs:
                    values[key] = theirs
        missing = [k for k in SSO_KEYS if not values.get(k)]
        if missing:
            raise self._problem(name, missing[0], "is missing: the profile uses IAM Identity "
                                f"Center (SSO), which needs {', '.join(missing)}"
                                + (f" (sso_start_url and sso_region may be in [sso-session "
                                   f"{session}])" if session else ""))
        region = values["sso_region"]
        if not _REGION.fullmatch(region):
            raise self._problem(name, "sso_region", f"is no AWS region: {region[:40]!r}")
        home = self._env.get("HOME", "").strip()
        if not home:
            raise self._problem(name, "sso_session" if session else "sso_start_url",
                                "needs the token cache of aws sso login in ~/.aws/sso/cache, "
                                "but HOME is not set")
        cache = os.path.join(home, ".aws", "sso", "cache",
                             sso_cache_key(session, values["sso_start_url"]) + ".json")
        where = domain(region)
        return SsoRole(name, values["sso_account_id"], values["sso_role_name"],
                       values["sso_start_url"], region, session, cache,
                       self._endpoints.url("SSO", f"https://portal.sso.{region}.{where}"),
                       self._endpoints.url("SSO_OIDC", f"https://oidc.{region}.{where}")
                       if session else "")

