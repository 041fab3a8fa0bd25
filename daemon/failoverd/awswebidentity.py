"""STS AssumeRoleWithWebIdentity (awscreds.py's `WebIdentityRole` source: EKS IAM roles for
service accounts, a profile's ``web_identity_token_file``), as botocore calls it: the Query
protocol, ``POST /`` of a form (``Action=AssumeRoleWithWebIdentity&Version=2011-06-15&
RoleArn=..&RoleSessionName=..&WebIdentityToken=..``, with ``DurationSeconds`` when the
profile gives it), unsigned (the token is the proof), at the STS endpoint AssumeRole uses
(awsendpoints.py: ``https://sts.<region>.amazonaws.com``, the global one with
``sts_regional_endpoints = legacy``, or a configured one such as ``AWS_ENDPOINT_URL_STS``).

The token file is read at every fetch: the kubelet rotates it (it writes the new one well
before the old one expires, swapping a symlink). It must be a regular file (or a symlink to
one), is read up to `MAX_TOKEN` bytes (STS takes at most 20,000 characters), and its path
is only checked when the credentials are first wanted, as botocore does: a token file that
is missing or unreadable is a failure of the call (``auth``), not of the configuration, so a
reload never fails on a volume being remounted.

The answer is XML: ``AssumeRoleWithWebIdentityResponse/AssumeRoleWithWebIdentityResult/
Credentials``; an error is ``ErrorResponse/Error`` (``Code``, ``Message``), counted as for
AssumeRole (awssts.py): throttling, STS's own trouble and ``IDPCommunicationError`` (the
identity provider's keys could not be fetched) are transient; ``AccessDenied`` (the role does
not trust this token's issuer or subject), ``InvalidIdentityToken``, ``IDPRejectedClaim`` and
``ExpiredTokenException`` (the web token ran out) are a refusal (``auth``). But a token
refused as expired or invalid that was read from a file changed in the last `ROTATING`
seconds, or changed since it was read, is taken as a rotation under way (a writer caught half
way, a new key the issuer has not published yet), transient, read again at the next fetch:
the Go SDK likewise retries ``InvalidIdentityToken``, a "temporary error" there. The token
never appears in logs or errors: an error page that echoes the request has it masked.
"""

from __future__ import annotations

import logging
import os
import stat
from urllib.parse import quote_plus, urlencode

from failoverd.awscreds import AwsCredentials, AwsCredentialsError, WebIdentityRole, control
from failoverd.awsendpoints import sts_url
from failoverd.awsmetadata import call
from failoverd.awssts import STS_TIMEOUT, TRANSIENT, error, parse_answer
from failoverd.boundedcall import masked, transient_status
from failoverd.clock import Clock
from failoverd.http1 import HttpClient

__all__ = ["MAX_TOKEN", "ROTATING", "fetch", "read_token", "token_name"]

logger = logging.getLogger(__name__)

MAX_TOKEN = 20_000  # STS's limit on WebIdentityToken; an EKS token is about a kilobyte
ROTATING = 10.0  # seconds after the token file changed during which a refusal may be a race
_REFUSED_TOKEN = frozenset({"ExpiredTokenException", "ExpiredToken", "InvalidIdentityToken"})


def token_name(source: WebIdentityRole) -> str:
    """Where the token file is named, as errors say it."""
    if not source.profile:
        return "AWS_WEB_IDENTITY_TOKEN_FILE"
    return f"web_identity_token_file of profile [{source.profile}]"


def read_token(source: WebIdentityRole, now: float) -> tuple[str, float]:
    """(the token, the file's modification time). A file changed within `ROTATING` seconds of
    `now` (wall time) whose content is no token is being written: a transient failure."""
    path = source.token_file
    what = f"{token_name(source)} {path}"
    try:
        # a FIFO or a device would block the event loop, or never end
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise AwsCredentialsError(f"{what} is not a regular file")
        with open(path, "rb") as f:
            mtime = os.fstat(f.fileno()).st_mtime  # of the file read, not of a newer one
            raw = f.read(MAX_TOKEN + 1)
    except FileNotFoundError:
        raise AwsCredentialsError(f"{what} does not exist") from None
    except OSError as exc:
        raise AwsCredentialsError(f"{what} cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_TOKEN:
        raise AwsCredentialsError(f"{what} is too long for a token (over {MAX_TOKEN} bytes)")
    fresh = abs(now - mtime) < ROTATING
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise AwsCredentialsError(f"{what} holds no text", transient=fresh) from None
    if not token:
        raise AwsCredentialsError(f"{what} is empty", transient=fresh)
    if control(token) or any(c.isspace() for c in token):
        raise AwsCredentialsError(f"{what} holds more than one token (a line break, a space "
                                  "or a control character)", transient=fresh)
    return token, mtime


async def fetch(client: HttpClient, source: WebIdentityRole, clock: Clock) -> AwsCredentials:
    """The role's credentials: one unsigned AssumeRoleWithWebIdentity call with the token the
    file holds now."""
    origin = f"profile [{source.profile}]" if source.profile else "AWS_WEB_IDENTITY_TOKEN_FILE"
    where = f"STS AssumeRoleWithWebIdentity of {source.role_arn} ({origin})"
    try:
        token, mtime = read_token(source, clock.time())
    except AwsCredentialsError as exc:
        raise AwsCredentialsError(f"{where}: {exc}", transient=exc.transient) from None
    form = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15",
            "RoleArn": source.role_arn,
            "RoleSessionName": source.session_name or f"failoverd-{int(clock.time())}",
            "WebIdentityToken": token}
    if source.duration:
        form["DurationSeconds"] = str(source.duration)
    url = sts_url(source.endpoint)
    # no Authorization: the call is unsigned, as botocore makes it (UNSIGNED)
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    status, body = await call(client, "POST", url, headers, STS_TIMEOUT,
                              urlencode(form).encode())
    if status == 200:
        fresh = parse_answer(body, where, "AssumeRoleWithWebIdentityResult")
        logger.info("AWS credentials: assumed %s with a web identity token as %s",
                    source.role_arn, fresh.access_key_id)
        return fresh
    # an error page may echo the request: the token goes no further than here
    body = masked(body, token, quote_plus(token))
    code, message = error(body)
    text = f"{where} refused: HTTP {status}" + (f" {code}" if code else "") + \
        (f": {message}" if message else "")
    if code in _REFUSED_TOKEN:
        age = clock.time() - mtime
        if abs(age) < ROTATING:
            raise AwsCredentialsError(f"{text} (the token file changed {max(age, 0):.0f} s "
                                      "ago: read again at the next call)", transient=True)
        if _rewritten(source.token_file, mtime):
            raise AwsCredentialsError(f"{text} (the token file changed since it was read: "
                                      "read again at the next call)", transient=True)
    raise AwsCredentialsError(text, transient=transient_status(status) or code in TRANSIENT)


def _rewritten(path: str, mtime: float) -> bool:
    """Whether the token file changed since it was read at `mtime` (the next read has
    another token)."""
    try:
        return os.stat(path).st_mtime != mtime
    except OSError:
        return False
