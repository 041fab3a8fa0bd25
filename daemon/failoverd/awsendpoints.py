"""Where the AWS services are reached (Bedrock Runtime, STS, the IAM Identity Center portal and
OIDC), as botocore resolves a client's endpoint when none is given to the client.

A service's configured endpoint, the first found of (botocore's ConfiguredEndpointProvider):

1. ``AWS_ENDPOINT_URL_<SERVICE>`` (``AWS_ENDPOINT_URL_BEDROCK_RUNTIME``, ``_STS``, ``_SSO``,
   ``_SSO_OIDC``);
2. ``AWS_ENDPOINT_URL``;
3. the profile's ``services = NAME``: the ``[services NAME]`` section of the config file, whose
   key for the service (``bedrock_runtime``, ``sts``, ``sso``, ``sso_oidc``: the service id in
   lower case, ``-`` as ``_``) holds nested keys, ``endpoint_url`` among them::

       [services private]
       bedrock_runtime =
         endpoint_url = https://vpce-0abc.bedrock-runtime.us-east-1.vpce.amazonaws.com
       sts =
         endpoint_url = https://vpce-0def.sts.us-east-1.vpce.amazonaws.com

4. the profile's own ``endpoint_url`` (every service's).

An endpoint is ``http(s)://host[:port][/path]``: a user name or password (never sent, the
requests are signed, but shown wherever the URL is), a query or a fragment (the requests'
paths would go after them) and a host that botocore refuses are configuration errors.

``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS``, else the profile's
``ignore_configured_endpoint_urls``, set to ``true`` turns all four off. The profile is the one
in use (the provider's ``aws_profile``, else ``AWS_PROFILE`` or ``AWS_DEFAULT_PROFILE``,
else ``default``), its keys both files' merged as botocore merges them (awsprofiles.py),
whatever gives the credentials:
botocore reads the session's profile for every client it makes, the STS client that assumes
a role too.

STS without a configured endpoint: ``sts_regional_endpoints`` (``AWS_STS_REGIONAL_ENDPOINTS``
over the profile's key) is ``regional`` by default, botocore's since 1.40 (July 2025), the
region's own ``https://sts.<region>.amazonaws.com``; ``legacy`` sends the 16 regions that had
no STS of their own at first to the global ``https://sts.amazonaws.com``, signed for
us-east-1, as botocore did before (``aws-global`` goes there in either mode). The variable set
but empty wins over the key and means the default; a value other than those two fails every
service's endpoint, Bedrock's too, as it fails every botocore client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from failoverd.awscreds import AwsConfigError, bare
from failoverd.http1.client import Target

__all__ = ["GLOBAL_STS", "LEGACY_STS_REGIONS", "Endpoints", "domain", "problem", "sts_url"]

GLOBAL_STS = "https://sts.amazonaws.com"
GLOBAL_STS_REGION = "us-east-1"  # the global endpoint's signing region
# the regions botocore's `legacy` sends to the global endpoint (its LEGACY_GLOBAL_STS_REGIONS)
LEGACY_STS_REGIONS = frozenset({
    "ap-northeast-1", "ap-south-1", "ap-southeast-1", "ap-southeast-2", "aws-global",
    "ca-central-1", "eu-central-1", "eu-north-1", "eu-west-1", "eu-west-2", "eu-west-3",
    "sa-east-1", "us-east-1", "us-east-2", "us-west-1", "us-west-2"})
STS_MODES = ("legacy", "regional")
# a host name as botocore's is_valid_endpoint_url takes it (an IPv6 address aside): labels of
# letters, digits and "-", which neither starts nor ends one
_HOST = re.compile(r"((?!-)[A-Za-z0-9-]{1,63}(?<!-)\.)*(?!-)[A-Za-z0-9-]{1,63}(?<!-)\.?")


def domain(region: str) -> str:
    """The AWS partition's domain of `region`."""
    return "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"


def _nested(value: str, where: str) -> dict[str, str]:
    """A config file's nested keys (a value of lines ``key = value`` below its own),
    as botocore's configloader parses them."""
    if not value.startswith("\n"):
        raise AwsConfigError(f"{where} must hold nested keys on the lines below it "
                             "(an indented \"endpoint_url = https://...\"), got a value")
    parsed: dict[str, str] = {}
    for line in value.splitlines():
        line = line.strip()
        if not line:
            continue
        key, sep, text = line.partition("=")
        if not sep:
            raise AwsConfigError(f"{where}: {line[:60]!r} is no \"key = value\" line")
        parsed[key.strip()] = text.strip()
    return parsed


@dataclass(frozen=True, slots=True)
class Endpoints:
    """What the environment and the profile in use say of the services' endpoints.
    `profile`: that profile's keys (both files merged; empty when there is none), `services`:
    the config file's ``[services NAME]`` sections, `where`: how errors name the profile."""

    env: Mapping[str, str] = field(default_factory=dict)
    profile: Mapping[str, str] = field(default_factory=dict)
    services: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    where: str = "the profile"

    @property
    def ignored(self) -> bool:
        """Whether the configured endpoints are turned off (the variable over the key)."""
        if "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS" in self.env:
            value = self.env["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"]
        else:
            value = self.profile.get("ignore_configured_endpoint_urls", "")
        return value.strip().lower() == "true"

    def _section(self) -> Mapping[str, str]:
        if "services" not in self.profile:
            return {}
        # botocore's InvalidConfigError for a services key naming no section, or one
        # without keys: it is not taken for none
        name = self.profile["services"].strip()
        if not name:
            raise AwsConfigError(f"{self.where}: services is empty: name a [services NAME] "
                                 "section of the config file, or remove the key")
        found = self.services.get(name)
        if found is None:
            raise AwsConfigError(f"{self.where}: services names [services {name}], which the "
                                 "config file does not have")
        if not found:
            raise AwsConfigError(f"{self.where}: services names [services {name}], which has "
                                 "no keys")
        return found

    def url(self, service: str, default: str) -> str:
        """The endpoint of `service` (its variable's suffix: ``BEDROCK_RUNTIME``, ``STS``,
        ``SSO``, ``SSO_OIDC``), without a trailing ``/``: the configured one (see the
        module's docstring), else `default`. Raises AwsConfigError for a URL that cannot
        serve, naming where it was found, and for a bad ``sts_regional_endpoints``, which
        botocore checks for every client it makes, whatever its service and endpoint."""
        return self._configured(service).rstrip("/") or default

    def _configured(self, service: str) -> str:
        """The configured endpoint of `service` as it is given ("" when there is none)."""
        self._sts_mode()
        if self.ignored:
            return ""
        for name in (f"AWS_ENDPOINT_URL_{service}", "AWS_ENDPOINT_URL"):
            found = self.env.get(name, "").strip()
            if found:
                return _usable(found, f"environment variable {name}")
        key = service.lower()
        nested = self._section().get(key)
        if nested is not None:
            name = self.profile.get("services", "").strip()
            where = f"[services {name}] {key}"
            found = _nested(nested, where).get("endpoint_url", "")
            if found:
                return _usable(found, f"{where} endpoint_url")
        found = self.profile.get("endpoint_url", "").strip()
        if found:
            return _usable(found, f"{self.where}: endpoint_url")
        return ""

    def _sts_mode(self) -> str:
        """``sts_regional_endpoints``: the variable over the profile's key, set but empty
        (either) the default, ``regional``, as in botocore."""
        if "AWS_STS_REGIONAL_ENDPOINTS" in self.env:
            mode = self.env["AWS_STS_REGIONAL_ENDPOINTS"].strip()
            what = "environment variable AWS_STS_REGIONAL_ENDPOINTS"
        else:
            mode = self.profile.get("sts_regional_endpoints", "").strip()
            what = f"{self.where}: sts_regional_endpoints"
        if mode and mode not in STS_MODES:
            raise AwsConfigError(f"{what} must be legacy or regional, got {mode[:40]!r}")
        return mode or "regional"

    def sts(self, region: str) -> tuple[str, str]:
        """(endpoint, signing region) of STS for `region`: the configured endpoint, else
        the regional or, with ``sts_regional_endpoints = legacy`` and one of the legacy
        regions, the global one (``aws-global``'s whatever the mode, as botocore's rules)."""
        configured = self._configured("STS")
        if configured:
            # a trailing "/" after a path is the call's (sts_url): kept
            if not urlsplit(configured).path.strip("/"):
                configured = configured.rstrip("/")
            return configured, region
        if region == "aws-global" or (self._sts_mode() == "legacy"
                                      and region in LEGACY_STS_REGIONS):
            return GLOBAL_STS, GLOBAL_STS_REGION
        return f"https://sts.{region}.{domain(region)}", region


def sts_url(endpoint: str) -> str:
    """Where an STS call (``POST`` of the Query protocol's ``/``) goes at `endpoint`: its path
    as it is given, ``/`` when it has none, as botocore joins them."""
    return endpoint if urlsplit(endpoint).path else endpoint + "/"


def problem(url: str) -> str:
    """Why `url`, a valid ``http(s)://`` URL with a host, cannot be an AWS endpoint ("" when
    it can): the requests' paths are appended to it."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        # never sent (the requests are signed), but kept in the URL that errors and logs show
        return "no user name or password: the requests are signed"
    if parts.query or parts.fragment or "?" in url or "#" in url:
        # the requests' paths go after the URL's: "https://h/p?x=1/model/..." asks for /p
        return "no query or fragment: the requests' paths follow the URL's"
    host = parts.hostname or ""
    if ":" not in host and (len(host) > 255 or not _HOST.fullmatch(host)):
        return "a host name of letters, digits, '-' and '.', as botocore takes it"
    return ""


def _usable(url: str, what: str) -> str:
    """`url`, or a configuration error naming `what`."""
    try:
        Target(url)
    except ValueError:
        # not the ValueError's text: it quotes the whole URL, a password in it too
        raise AwsConfigError(f"{what} is not a usable URL (http:// or https://, a host, a "
                             f"port up to 65535): {bare(url)!r}") from None
    why = problem(url)
    if why:
        raise AwsConfigError(f"{what} is not a usable URL ({why}): {bare(url)!r}")
    return url
