"""IAM Identity Center (SSO) role credentials (awscreds.py's `SsoRole` source), as botocore
gets them:

1. the access token ``aws sso login`` cached in ``~/.aws/sso/cache/<sha1>.json`` (the SHA-1
   of the ``sso-session``'s name, or of the start URL for a legacy profile): ``accessToken``,
   ``expiresAt`` and, for an ``sso-session``, ``clientId``, ``clientSecret``,
   ``registrationExpiresAt`` and ``refreshToken``. Read at every fetch, so a login after the
   daemon started is seen. The AWS CLI writes it in place (truncate, then write): a file
   that is no JSON and was modified within `WRITING` seconds is taken as being written
   (transient), one that stays so as the operator's to fix (log in again);
2. ``GET <portal>/federation/credentials?role_name=..&account_id=..`` with the token in
   ``x-amz-sso_bearer_token`` (the portal is ``https://portal.sso.<sso_region>.amazonaws.com``
   or ``AWS_ENDPOINT_URL_SSO``), answering ``{"roleCredentials": {"accessKeyId",
   "secretAccessKey", "sessionToken", "expiration"}}`` (milliseconds since the epoch).

A token of an ``sso-session`` that expires within `REFRESH_WINDOW` is refreshed as botocore's
SSOTokenProvider does: the OIDC CreateToken call (``POST <oidc>/token``, JSON ``{"clientId",
"clientSecret", "grantType": "refresh_token", "refreshToken"}``, answering ``{"accessToken",
"expiresIn", "refreshToken"}``), written back to the cache file (atomically, mode 0600). A
failed refresh leaves a token still valid in use; and first, the cache file is read again: the
AWS CLI may have refreshed the token meanwhile (spending the refresh token, which OIDC then
refuses), or someone logged in, and its new token serves. A legacy profile's token, or one that
expired with no refresh to be had, is the operator's to renew: the error says to run ``aws sso
login --profile <name>``, and is a refusal (auth) until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import tempfile
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson

from failoverd.awscreds import AwsCredentials, AwsCredentialsError, SsoRole, control
from failoverd.awsmetadata import call, refusal
from failoverd.boundedcall import masked, transient_status
from failoverd.clock import Clock
from failoverd.http1 import HttpClient

__all__ = ["REFRESH_WINDOW", "SSO_TIMEOUT", "fetch", "parse_role_credentials"]

logger = logging.getLogger(__name__)

SSO_TIMEOUT = 10.0  # seconds for one call to the portal or to OIDC
REFRESH_WINDOW = 15 * 60.0  # a token this close to its expiry is refreshed (botocore's)
MAX_CACHE = 64 * 1024
# a cache file this recent (seconds) that is no JSON is being written: transient
WRITING = 5.0
# one refresh per token file at a time: two roles of one sso-session share its token, and a
# refresh token may serve once
_refreshing: dict[str, asyncio.Lock] = {}


def _login(source: SsoRole) -> str:
    return f"run `aws sso login --profile {source.profile}`"


def _time(value: object) -> float | None:
    """Seconds since the epoch of a cache file's time ("2026-12-07T21:00:00Z", the older
    "...UTC"), or None."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().upper()
    if text.endswith("UTC"):
        text = text[:-3] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _read_cache(source: SsoRole, now: float) -> dict[str, Any]:
    path = source.cache
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise AwsCredentialsError(f"the SSO token cache {path} is not a regular file")
        with open(path, "rb") as f:
            raw = f.read(MAX_CACHE + 1)
    except FileNotFoundError:
        raise AwsCredentialsError(f"profile [{source.profile}]: no SSO token cached (no "
                                  f"{path}): {_login(source)}") from None
    except OSError as exc:
        raise AwsCredentialsError(f"the SSO token cache {path} cannot be read: "
                                  f"{exc.strerror or exc}") from None
    try:
        data: Any = orjson.loads(raw) if len(raw) <= MAX_CACHE else None
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        if abs(now - st.st_mtime) < WRITING:
            # the AWS CLI writes the file in place (truncates, then writes): caught between
            # the two, it is no sign of the login; read again at the next fetch
            raise AwsCredentialsError(f"the SSO token cache {path} is being written (no JSON "
                                      "object yet)", transient=True)
        raise AwsCredentialsError(f"the SSO token cache {path} is no JSON object: "
                                  f"{_login(source)}")
    return data


def _write_cache(path: str, data: dict[str, Any]) -> None:
    """Replaces the cache file at once (the AWS CLI may read it meanwhile), mode 0600, with
    its owner: a daemon run as root with a user's HOME must not leave the user a token cache
    it cannot read (botocore, writing in place, keeps the owner)."""
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".failoverd-", suffix=".json")
    try:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(fd, st.st_uid, st.st_gid)  # root may; anyone else keeps their own
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


async def _token(client: HttpClient, source: SsoRole, clock: Clock) -> str:
    """A valid access token from the cache, refreshed first when it is near its expiry and
    can be."""
    lock = _refreshing.setdefault(source.cache, asyncio.Lock())
    async with lock:
        data = _read_cache(source, clock.time())
        token, expires = data.get("accessToken"), _time(data.get("expiresAt"))
        if not isinstance(token, str) or not token or control(token) or expires is None:
            raise AwsCredentialsError(f"the SSO token cache {source.cache} has no accessToken "
                                      f"and expiresAt: {_login(source)}")
        now = clock.time()
        if now < expires - REFRESH_WINDOW:
            return token
        if _can_refresh(source, data, now):
            try:
                return await _refresh(client, source, data, now)
            except AwsCredentialsError as exc:
                newer = _rewritten(source, token, clock.time())
                if newer is not None:
                    # the AWS CLI refreshed it meanwhile (spending the refresh token, which
                    # OIDC then refuses to us), or someone logged in: its token serves
                    logger.info("AWS credentials: the SSO token of profile [%s] was renewed "
                                "in %s meanwhile; it serves", source.profile, source.cache)
                    return newer
                if now < expires:
                    logger.warning("AWS credentials: refreshing the SSO token of profile [%s] "
                                   "failed: %s; the cached one serves until it expires in "
                                   "%.0f s", source.profile, exc, expires - now)
                    return token
                raise AwsCredentialsError(f"the SSO token of profile [{source.profile}] "
                                          f"expired and refreshing it failed ({exc}): "
                                          f"{_login(source)}", transient=exc.transient) from None
        if now < expires:
            return token
        raise AwsCredentialsError(f"the SSO token of profile [{source.profile}] expired "
                                  f"at {data.get('expiresAt')}: {_login(source)}")


def _rewritten(source: SsoRole, token: str, now: float) -> str | None:
    """The cache file's token when it is no longer `token` and is valid at `now`."""
    try:
        data = _read_cache(source, now)
    except AwsCredentialsError:
        return None
    newer, expires = data.get("accessToken"), _time(data.get("expiresAt"))
    if not isinstance(newer, str) or not newer or newer == token or control(newer) or \
            expires is None or now >= expires:
        return None
    return newer


def _can_refresh(source: SsoRole, data: dict[str, Any], now: float) -> bool:
    if not source.session or not source.oidc_endpoint:
        return False  # botocore refreshes only an sso-session's tokens
    fields = [data.get(k) for k in ("clientId", "clientSecret", "refreshToken")]
    registered = _time(data.get("registrationExpiresAt"))
    return all(isinstance(v, str) and v for v in fields) and \
        (registered is None or now < registered)


async def _refresh(client: HttpClient, source: SsoRole, data: dict[str, Any],
                   now: float) -> str:
    url = source.oidc_endpoint.rstrip("/") + "/token"
    body = orjson.dumps({"clientId": data["clientId"], "clientSecret": data["clientSecret"],
                         "grantType": "refresh_token", "refreshToken": data["refreshToken"]})
    status, raw = await call(client, "POST", url, {"Content-Type": "application/json",
                                                   "Accept": "application/json"},
                             SSO_TIMEOUT, body)
    where = f"the SSO OIDC CreateToken call for profile [{source.profile}]"
    if status != 200:
        # an endpoint's error page may echo the request: its secrets go no further than here
        raw = masked(raw, data["clientSecret"], data["refreshToken"])
        said = _oidc_error(raw) or refusal(status, raw)
        raise AwsCredentialsError(f"{where} refused: HTTP {status}: {said}",
                                  transient=transient_status(status))
    try:
        parsed: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    answer: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    token, lasts = answer.get("accessToken"), answer.get("expiresIn")
    if not isinstance(token, str) or not token or control(token) or \
            not isinstance(lasts, int) or isinstance(lasts, bool) or lasts <= 0:
        raise AwsCredentialsError(f"{where} answered no accessToken and expiresIn",
                                  transient=True)
    fresh = {**data, "accessToken": token, "expiresAt": datetime.fromtimestamp(
        now + lasts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if isinstance(answer.get("refreshToken"), str) and answer["refreshToken"]:
        fresh["refreshToken"] = answer["refreshToken"]
    try:
        _write_cache(source.cache, fresh)
    except OSError as exc:
        # the token serves this daemon anyway; the CLI logs in again when it needs to
        logger.warning("AWS credentials: the refreshed SSO token cannot be written to %s: %s",
                       source.cache, exc.strerror or exc)
    logger.info("AWS credentials: the SSO token of profile [%s] refreshed, valid for %d s",
                source.profile, lasts)
    return token


def _oidc_error(raw: bytes) -> str:
    """OIDC's error answer: ``{"error": "invalid_grant", "error_description": ...}``."""
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(data, dict):
        return ""
    parts = [str(data.get(k) or "") for k in ("error", "error_description", "message")]
    return ": ".join(p for p in parts if p)[:300]


def parse_role_credentials(body: bytes, where: str) -> AwsCredentials:
    """The credentials of a GetRoleCredentials answer."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AwsCredentialsError(f"{where} answered no JSON", transient=True) from None
    creds = data.get("roleCredentials") if isinstance(data, dict) else None
    if not isinstance(creds, dict):
        raise AwsCredentialsError(f"{where} answered no roleCredentials", transient=True)
    names = ("accessKeyId", "secretAccessKey", "sessionToken")
    values = [creds.get(n) for n in names]
    raw_expiration = creds.get("expiration")
    expiration = raw_expiration if isinstance(raw_expiration, int | float) and \
        not isinstance(raw_expiration, bool) else None
    missing = [n for n, v in zip(names, values, strict=True) if not isinstance(v, str) or not v]
    if expiration is None:
        missing.append("expiration")
    if missing or expiration is None:
        raise AwsCredentialsError(f"{where} answered without {', '.join(missing)}")
    key_id, secret, token = (str(v) for v in values)
    if control(key_id) or control(token):
        raise AwsCredentialsError(f"{where} answered credentials with a control character")
    return AwsCredentials(key_id, secret, token, expires=float(expiration) / 1000)


async def fetch(client: HttpClient, source: SsoRole, clock: Clock) -> AwsCredentials:
    """The role's credentials, for the cached (and maybe refreshed) token."""
    token = await _token(client, source, clock)
    query = urlencode({"role_name": source.role_name, "account_id": source.account_id})
    url = f"{source.endpoint.rstrip('/')}/federation/credentials?{query}"
    where = (f"the IAM Identity Center portal (role {source.role_name} of account "
             f"{source.account_id}, profile [{source.profile}])")
    status, body = await call(client, "GET", url, {"x-amz-sso_bearer_token": token,
                                                   "Accept": "application/json"}, SSO_TIMEOUT)
    if status == 200:
        return parse_role_credentials(body, where)
    said = masked(refusal(status, body), token)
    if status == 401:
        raise AwsCredentialsError(f"{where} refused the SSO token ({said}): {_login(source)}")
    raise AwsCredentialsError(f"{where} refused: {said}", transient=transient_status(status))
