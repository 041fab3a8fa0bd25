"""The HTTP side of googlecreds.py: getting an OAuth 2 access token, with failoverd's own client
and a short time limit per call.

Formats, as Google documents them and google-auth speaks them:

- a service account: ``POST token_uri`` (``application/x-www-form-urlencoded``) with
  ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` and ``assertion``, a JWT signed
  RS256 by the account's key (header ``{"alg": "RS256", "typ": "JWT", "kid"}``, claims
  ``iss`` (the account's email), ``scope`` (cloud-platform), ``aud`` (the token_uri), ``iat``,
  ``exp`` an hour later);
- a user: ``POST token_uri`` with ``grant_type=refresh_token``, ``client_id``,
  ``client_secret`` and ``refresh_token``;
- the metadata server: ``GET /computeMetadata/v1/instance/service-accounts/default/token``
  with ``Metadata-Flavor: Google``; and the project it runs in, for a provider that names
  none, ``GET /computeMetadata/v1/project/project-id`` (text, as google-auth's
  ``_metadata.get_project_id`` reads it).

All answer ``{"access_token", "expires_in", "token_type": "Bearer"}``; the token endpoint's
errors are ``{"error": "invalid_grant", "error_description": ...}``. A refusal (a 4xx) is the
credentials' trouble; a 5xx, a 429, no answer or an unreadable one is the endpoint's
(`transient`), as is a JWT refused for its times (the host's clock, not the key).
"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import urlencode

import orjson

from failoverd import boundedcall
from failoverd.googlecreds import (
    SCOPE,
    AuthorizedUser,
    GoogleCredentialsError,
    MetadataServer,
    ServiceAccount,
)
from failoverd.http1 import Headers, Requester
from failoverd.rsasign import RsaKeyError, sign_rs256

__all__ = ["assertion", "from_metadata", "from_refresh_token", "from_service_account",
           "project_from_metadata"]

TOKEN_TIMEOUT = 10.0  # seconds per call to the token endpoint (on the internet)
METADATA_TIMEOUT = 3.0  # per call to the metadata server (google-auth's)
JWT_LIFETIME = 3600  # the most Google takes for an assertion
MAX_ANSWER = 64 * 1024
MAX_TOKEN = 8 * 1024  # Google's access tokens are a few hundred bytes
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"  # noqa: S105
PROJECT_PATH = "/computeMetadata/v1/project/project-id"
# a project id (or a domain-scoped one, "example.com:my-project"), as the metadata server
# answers it: anything else is no answer to put in a URL
_PROJECT_ID = re.compile(r"([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
FORM = "application/x-www-form-urlencoded"
# invalid_grant texts about the assertion's times: "Invalid JWT: Token must be a short-lived
# token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT
# claim." — the host's clock (a host booting with a wrong one), asked again soon
_CLOCK_MARKERS = ("reasonable timeframe", "iat and exp")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def assertion(account: ServiceAccount, now: float) -> str:
    """The signed JWT a service account trades for an access token."""
    header: dict[str, str] = {"alg": "RS256", "typ": "JWT"}
    if account.private_key_id:
        header["kid"] = account.private_key_id
    issued = int(now)
    claims = {"iss": account.client_email, "scope": SCOPE, "aud": account.token_uri,
              "iat": issued, "exp": issued + JWT_LIFETIME}
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    signature = sign_rs256(account.key, signing_input.encode("ascii"))
    return f"{signing_input}.{_b64(signature)}"


async def _call(client: Requester, method: str, url: str, headers: dict[str, str],
                seconds: float, data: bytes | None = None) -> tuple[int, Headers, bytes]:
    """(status, headers, body) of one call, within `seconds`; trouble is transient."""
    try:
        return await boundedcall.call(client, method, url, headers, seconds, data,
                                      limit=MAX_ANSWER, where=url.split("?", 1)[0])
    except boundedcall.CallFailed as exc:
        raise GoogleCredentialsError(str(exc), transient=True, no_host=exc.no_host) from None


def _refusal(status: int, body: bytes, secrets: tuple[str, ...]) -> tuple[str, bool]:
    """(what an error answer says, whether it is transient)."""
    text = body[:300].decode("utf-8", "replace").strip()
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict):  # Google's API shape
            text = str(error.get("message") or error.get("status") or text)
        elif error is not None:  # OAuth's
            described = parsed.get("error_description")
            text = f"{error}: {described}" if described else str(error)
    text = boundedcall.masked(text, *(s for s in secrets if len(s) >= 8))
    transient = boundedcall.transient_status(status) or any(m in text.lower()
                                                            for m in _CLOCK_MARKERS)
    return f"HTTP {status}" + (f": {text[:300]}" if text else ""), transient


def parse_token(body: bytes, where: str) -> tuple[str, float]:
    """(access token, seconds it lives) of a token answer."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise GoogleCredentialsError(f"{where} answered no JSON", transient=True) from None
    token = data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise GoogleCredentialsError(f"{where} answered without an access_token",
                                     transient=True)
    if len(token) > MAX_TOKEN or any(c < " " or c == "\x7f" for c in token):
        raise GoogleCredentialsError(f"{where} answered an unusable access_token")
    lifetime: Any = data.get("expires_in", 3600)
    if isinstance(lifetime, str) and lifetime.isdigit():
        lifetime = int(lifetime)
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
        raise GoogleCredentialsError(f"{where} answered an expires_in that is no positive "
                                     "number", transient=True)
    return token, float(lifetime)


async def _grant(client: Requester, uri: str, form: dict[str, str], where: str,
                 secrets: tuple[str, ...]) -> tuple[str, float]:
    status, _, body = await _call(client, "POST", uri, {"Content-Type": FORM,
                                                        "Accept": "application/json"},
                                  TOKEN_TIMEOUT, urlencode(form).encode("ascii"))
    if status != 200:
        text, transient = _refusal(status, body, secrets)
        raise GoogleCredentialsError(f"{where} refused: {text}", transient=transient)
    return parse_token(body, where)


async def from_service_account(client: Requester, account: ServiceAccount,
                               now: float) -> tuple[str, float]:
    """An access token for a service account (the JWT bearer grant)."""
    try:
        jwt = assertion(account, now)
    except RsaKeyError as exc:  # checked when the file was read: never in practice
        raise GoogleCredentialsError(f"{account.path}: private_key: {exc}") from None
    where = f"the token endpoint {account.token_uri.split('?', 1)[0]} (service account " \
            f"{account.client_email})"
    return await _grant(client, account.token_uri, {"grant_type": JWT_GRANT,
                                                    "assertion": jwt}, where, (jwt,))


async def from_refresh_token(client: Requester, user: AuthorizedUser) -> tuple[str, float]:
    """An access token for a user (the refresh-token grant)."""
    where = f"the token endpoint {user.token_uri.split('?', 1)[0]} (user credentials " \
            f"{user.path})"
    return await _grant(client, user.token_uri, {
        "grant_type": "refresh_token", "client_id": user.client_id,
        "client_secret": user.client_secret, "refresh_token": user.refresh_token},
        where, (user.client_secret, user.refresh_token))


async def from_metadata(client: Requester, server: MetadataServer, *,
                        answered: bool = False) -> tuple[str, float]:
    """The default service account's access token from the metadata server. `answered`:
    whether it has answered this daemon before."""
    where = f"the metadata server at {server.host}"
    try:
        status, headers, body = await _call(
            client, "GET", f"{server.url}{TOKEN_PATH}", {"Metadata-Flavor": "Google"},
            METADATA_TIMEOUT)
    except GoogleCredentialsError as exc:
        if answered:  # it is there: a moment's trouble (google-auth tries five times)
            raise GoogleCredentialsError(f"{where} did not answer: {exc}",
                                         transient=True) from None
        # the last resort, taken when no credentials file was found: say so. A name that
        # does not resolve is a host without one (auth); one that resolves and does not
        # answer is one not ready yet (GKE's, in a pod's first seconds): transient
        raise GoogleCredentialsError(
            f"{exc} (the metadata server, the last source of the credential chain: no "
            "google_credentials_file, GOOGLE_APPLICATION_CREDENTIALS or gcloud application "
            "default credentials were found when the configuration was read)",
            transient=not exc.no_host, no_host=exc.no_host) from None
    if status == 200 and headers.get("Metadata-Flavor") != "Google":
        raise GoogleCredentialsError(f"{where} answered without Metadata-Flavor: Google (not "
                                     "a metadata server)")
    if status == 404:
        raise GoogleCredentialsError(f"{where}: the instance has no service account")
    if status != 200:
        text, transient = _refusal(status, body, ())
        raise GoogleCredentialsError(f"{where} gave no token: {text}", transient=transient)
    return parse_token(body, where)


async def project_from_metadata(client: Requester, server: MetadataServer) -> str:
    """The project the metadata server's instance (or pod, or Cloud Run service) runs in, for
    a provider that names none. Raises GoogleCredentialsError saying what to set instead."""
    where = f"the metadata server at {server.host}"
    advice = ("give the provider's project, or set GOOGLE_CLOUD_PROJECT")
    try:
        status, headers, body = await _call(
            client, "GET", f"{server.url}{PROJECT_PATH}", {"Metadata-Flavor": "Google"},
            METADATA_TIMEOUT)
    except GoogleCredentialsError as exc:
        # not on Google Cloud (the name does not resolve): the project must be given; a
        # server that does not answer (GKE's in a pod's first seconds) is asked again later
        raise GoogleCredentialsError(
            f"no Google Cloud project: {exc} (the provider names no project and no "
            f"credentials file was found, so it is asked of the metadata server): {advice}",
            transient=not exc.no_host, no_host=exc.no_host) from None
    if status == 200 and headers.get("Metadata-Flavor") != "Google":
        raise GoogleCredentialsError(f"no Google Cloud project: {where} answered without "
                                     f"Metadata-Flavor: Google (not a metadata server): "
                                     f"{advice}")
    if status != 200:
        text, transient = _refusal(status, body, ())
        raise GoogleCredentialsError(f"no Google Cloud project: {where} answered {text}: "
                                     f"{advice}", transient=transient)
    project = body.decode("utf-8", "replace").strip()
    if not _PROJECT_ID.fullmatch(project):
        raise GoogleCredentialsError(f"no Google Cloud project: {where} answered "
                                     f"{project[:60]!r}, no project id: {advice}")
    return project
