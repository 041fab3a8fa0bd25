"""The HTTP side of awscreds.py: a container's credential endpoint and the EC2 instance
metadata service (IMDSv2), called with failoverd's own client (directly: both are local to
the host), a short time limit per call.

Formats, as AWS documents them and botocore speaks them:

- container: ``GET <url>`` with ``Accept: application/json`` and, when given, the
  ``Authorization`` token; answers ``{"AccessKeyId", "SecretAccessKey", "Token",
  "Expiration"}``, errors ``{"code", "message"}``;
- IMDSv2: ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` gives a
  session token, sent as ``X-aws-ec2-metadata-token`` to ``GET
  /latest/meta-data/iam/security-credentials/`` (the role's name) and then to ``.../<role>``
  (``{"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId", ..., "Expiration"}``).

Where they are is read from the environment when the configuration is loaded (`container`,
`instance`; awscreds.py's `choose_source`), a URL that cannot serve being a configuration
error.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

from failoverd import boundedcall
from failoverd.awscreds import (
    AwsConfigError,
    AwsCredentials,
    AwsCredentialsError,
    ContainerEndpoint,
    InstanceMetadata,
    bare,
    control,
    temporary,
)
from failoverd.boundedcall import masked, transient_status
from failoverd.http1 import HttpClient
from failoverd.http1.client import Target

__all__ = ["bare", "call", "container", "fetch_container", "fetch_instance",
           "instance", "parse_credentials", "refusal", "target"]

CONTAINER_TIMEOUT = 2.0  # seconds per call to a container's endpoint (botocore's)
IMDS_TIMEOUT = 1.0  # per call to the instance metadata service: a host without one fails fast
IMDS_TOKEN_TTL = "21600"  # noqa: S105 - seconds a session token lives, the most IMDS grants
_ROLE_PATH = "/latest/meta-data/iam/security-credentials/"
# credentials are about a kilobyte, an EKS token file about as much: anything far longer is a
# wrong URL or file, not read whole
MAX_ANSWER = 64 * 1024
MAX_TOKEN = 16 * 1024
CONTAINER_HOST = "169.254.170.2"  # ECS's agent, for AWS_CONTAINER_CREDENTIALS_RELATIVE_URI
# the hosts AWS_CONTAINER_CREDENTIALS_FULL_URI may name over plain http, besides loopback
# addresses: ECS's agent, EKS Pod Identity's agent (IPv4 and IPv6)
IMDS_ENDPOINT_IPV6 = "http://[fd00:ec2::254]"
_CONTAINER_HOSTS = frozenset({CONTAINER_HOST, "169.254.170.23", "fd00:ec2::23", "localhost"})


def instance(env: Mapping[str, str]) -> InstanceMetadata:
    """The instance metadata service, where the environment puts it."""
    endpoint = env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "").strip().rstrip("/")
    v1 = env.get("AWS_EC2_METADATA_V1_DISABLED", "").strip().lower() != "true"
    if not endpoint:
        # as botocore: the mode picks the address when no endpoint is given
        mode = env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "").strip()
        if mode.lower() == "ipv6":
            return InstanceMetadata(IMDS_ENDPOINT_IPV6, v1=v1)
        if mode.lower() not in ("", "ipv4"):
            raise AwsConfigError("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE must be IPv4 or IPv6, "
                                 f"got {mode!r}")
        return InstanceMetadata(v1=v1)
    target("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint)
    return InstanceMetadata(endpoint, v1=v1)


def target(name: str, url: str) -> Target:
    """The URL an environment variable names, or a configuration error."""
    try:
        return Target(url)
    except ValueError:
        # not the ValueError's text: it quotes the whole URL, a password in it too
        raise AwsConfigError(f"environment variable {name} is not a usable URL (http:// or "
                             f"https://, a host, a port up to 65535): {bare(url)!r}") from None


def container(env: Mapping[str, str]) -> ContainerEndpoint:
    """The container's credential endpoint the environment names."""
    relative = env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "").strip()
    if relative:
        url = f"http://{CONTAINER_HOST}{'' if relative.startswith('/') else '/'}{relative}"
        name = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
    else:
        url = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI", "").strip()
        name = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
    tgt = target(name, url)
    if not tgt.tls and not _local(tgt.host):
        raise AwsConfigError(f"environment variable {name} names {tgt.host} over plain http: "
                             "only https, a loopback address or "
                             f"{', '.join(sorted(_CONTAINER_HOSTS))} may serve credentials")
    token = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN", "").strip()
    if control(token):
        raise AwsConfigError("environment variable AWS_CONTAINER_AUTHORIZATION_TOKEN holds a "
                             "line break or another control character")
    token_file = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "").strip()
    return ContainerEndpoint(url, "" if token_file else token, token_file)


def _local(host: str) -> bool:
    if host in _CONTAINER_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def call(client: HttpClient, method: str, url: str, headers: dict[str, str],
               seconds: float, data: bytes | None = None, *,
               limit: int = 0) -> tuple[int, bytes]:
    """(status, body) of one call to a credential endpoint (or STS, or the SSO portal),
    within `seconds`; a body over `limit` bytes (default `MAX_ANSWER`) is an error."""
    try:
        status, _, body = await boundedcall.call(client, method, url, headers, seconds, data,
                                                 limit=limit or MAX_ANSWER, where=bare(url))
    except boundedcall.CallFailed as exc:
        raise AwsCredentialsError(str(exc), transient=True) from None
    return status, body


def refusal(status: int, body: bytes) -> str:
    """What a credential endpoint's error answer says (its ``message`` when JSON)."""
    text = body[:300].decode("utf-8", "replace").strip()
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        text = str(parsed.get("message") or parsed.get("Message") or text)
    return f"HTTP {status}" + (f": {text[:300]}" if text else "")


def parse_credentials(body: bytes, where: str) -> AwsCredentials:
    """Temporary credentials as the container and instance endpoints answer them:
    ``{"AccessKeyId", "SecretAccessKey", "Token", "Expiration": "2026-12-07T20:00:00Z"}``."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AwsCredentialsError(f"{where} answered no JSON", transient=True) from None
    if not isinstance(data, dict):
        raise AwsCredentialsError(f"{where} answered no JSON object", transient=True)
    code = data.get("Code", "Success")
    if code != "Success":
        raise AwsCredentialsError(f"{where} answered {code}: {data.get('Message', '')}"[:400])
    fields = [data.get(k) for k in ("AccessKeyId", "SecretAccessKey", "Token", "Expiration")]
    missing = [k for k, v in zip(("AccessKeyId", "SecretAccessKey", "Token", "Expiration"),
                                 fields, strict=True) if not isinstance(v, str) or not v]
    if missing:
        raise AwsCredentialsError(f"{where} answered without {', '.join(missing)}")
    key_id, secret, token, expiration = (str(v) for v in fields)
    return temporary(key_id, secret, token, expiration, where)


async def fetch_container(client: HttpClient, source: ContainerEndpoint) -> AwsCredentials:
    """One GET of a container's credential endpoint."""
    headers = {"Accept": "application/json"}
    token = _read_token(source.token_file) if source.token_file else source.token
    if token:
        headers["Authorization"] = token
    status, body = await call(client, "GET", source.url, headers, CONTAINER_TIMEOUT)
    where = f"the container credentials endpoint {bare(source.url)}"
    if status != 200:
        # servers echo a bad request's headers: the token goes no further than this
        raise AwsCredentialsError(f"{where} refused: {masked(refusal(status, body), token)}",
                                  transient=transient_status(status))
    return parse_credentials(body, where)


def _read_token(path: str) -> str:
    """The container's authorization token from its file (a few hundred bytes)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the event loop
            raise AwsCredentialsError(f"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {path} is not a "
                                      "regular file")
        with open(path, "rb") as f:
            raw = f.read(MAX_TOKEN + 1)
        token = raw.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise AwsCredentialsError(
            f"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {path} cannot be read: "
            f"{getattr(exc, 'strerror', None) or exc}") from None
    if len(raw) > MAX_TOKEN:
        raise AwsCredentialsError(f"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {path} is too long "
                                  f"for a token (over {MAX_TOKEN // 1024} KiB)")
    if control(token):
        raise AwsCredentialsError(f"{path} holds a line break or another control character")
    return token


def _last_resort(exc: AwsCredentialsError) -> AwsCredentialsError:
    # the chain's last resort, taken when nothing else was found: say so. Not transient:
    # nothing answering here is a host without the service (or a container past the hop
    # limit), not a moment's trouble
    return AwsCredentialsError(
        f"{exc} (the instance metadata service, the last source of the credential chain: no "
        "AWS_ACCESS_KEY_ID, credentials file or container endpoint was found when the "
        "configuration was read)")


async def fetch_instance(client: HttpClient, source: InstanceMetadata) -> AwsCredentials:
    """The instance role's credentials: an IMDSv2 session token, the role's name, its
    credentials. As botocore, IMDSv1 (no token) when the token call is refused as unknown
    (403, 404, 405) or gets no answer (a container past the hop limit of the PUT's answer),
    unless `source.v1` is off."""
    base = source.endpoint.rstrip("/")
    where = f"the instance metadata service at {bare(base)}"
    unanswered: AwsCredentialsError | None = None
    headers: dict[str, str] = {}
    try:
        status, body = await call(client, "PUT", f"{base}/latest/api/token",
                                   {"X-aws-ec2-metadata-token-ttl-seconds": IMDS_TOKEN_TTL},
                                   IMDS_TIMEOUT, data=b"")
    except AwsCredentialsError as exc:
        if not source.v1:
            raise _last_resort(exc) from None
        unanswered, status, body = exc, 0, b""
    if status == 200:
        token = body.decode("ascii", "replace").strip()
        if not token or control(token):
            raise AwsCredentialsError(f"{where} gave an unusable IMDSv2 token")
        headers = {"X-aws-ec2-metadata-token": token}
    elif not (source.v1 and (unanswered is not None or status in (403, 404, 405))):
        raise AwsCredentialsError(f"{where} gave no IMDSv2 token: {refusal(status, body)}",
                                  transient=transient_status(status))
    try:
        status, body = await call(client, "GET", base + _ROLE_PATH, headers, IMDS_TIMEOUT)
    except AwsCredentialsError:
        if unanswered is None:
            raise
        raise _last_resort(unanswered) from None  # neither version answers: no service here
    if status == 401 and not headers:
        raise AwsCredentialsError(
            f"{where} requires IMDSv2, but its token call "
            f"{'got no answer' if unanswered else 'was refused'} (in a container on EC2, the "
            "instance's metadata hop limit must be 2 or more)")
    if status == 404:
        raise AwsCredentialsError(f"{where}: the instance has no IAM role (attach an instance "
                                  "profile)")
    if status != 200:
        raise AwsCredentialsError(f"{where} named no role: {refusal(status, body)}",
                                  transient=transient_status(status))
    lines = body.decode("utf-8", "replace").split()
    if not lines:
        raise AwsCredentialsError(f"{where} named no role")
    role = lines[0]
    status, body = await call(client, "GET", base + _ROLE_PATH + quote(role, safe=""),
                               headers, IMDS_TIMEOUT)
    if status != 200:
        raise AwsCredentialsError(f"{where} gave no credentials for role {role}: "
                                  f"{refusal(status, body)}", transient=transient_status(status))
    return parse_credentials(body, f"{where} (role {role})")
