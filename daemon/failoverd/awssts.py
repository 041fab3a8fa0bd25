"""STS AssumeRole for a profile's ``role_arn`` (awscreds.py's `AssumeRole` source), as
botocore calls it: the Query protocol, ``POST /`` of a form
(``Action=AssumeRole&Version=2011-06-15&RoleArn=..&RoleSessionName=..`` with
``DurationSeconds`` and ``ExternalId`` when given), signed with SigV4 (service ``sts``, the
source's region, us-east-1 at the global endpoint) by the credentials of the role's source, at
the STS endpoint awsendpoints.py chose (``https://sts.<region>.amazonaws.com``, the global
``https://sts.amazonaws.com`` with ``sts_regional_endpoints = legacy``, or a configured one:
``AWS_ENDPOINT_URL_STS``, a profile's ``[services]`` section, ...).

The answer is XML: ``AssumeRoleResponse/AssumeRoleResult/Credentials`` with
``AccessKeyId``, ``SecretAccessKey``, ``SessionToken``, ``Expiration``; an error is
``ErrorResponse/Error`` with ``Type``, ``Code``, ``Message``. How an error counts:

- throttling (``Throttling``, 429) and STS's own trouble (5xx, ``ServiceUnavailable``,
  ``InternalFailure``): transient, a connection failure of the call;
- ``ExpiredToken``: the source's temporary credentials expired early; the source drops them
  (`CredentialSource.refused`) and the call is transient, as for Bedrock's own refusal;
- any other (``AccessDenied``: the source may not assume the role; ``InvalidClientTokenId``,
  ``SignatureDoesNotMatch``: its keys are wrong; ``ValidationError``: a ``duration_seconds``
  over the role's maximum): a refusal, the provider's credentials refused (auth).
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET  # noqa: S405 - see _xml: no DTD is parsed
from urllib.parse import urlencode

from failoverd.awscreds import AssumeRole, AwsCredentials, AwsCredentialsError, temporary
from failoverd.awsendpoints import sts_url
from failoverd.awsmetadata import call
from failoverd.awsruntime import CredentialSource
from failoverd.boundedcall import masked, transient_status
from failoverd.clock import Clock
from failoverd.http1 import HttpClient
from failoverd.http1.client import Target
from failoverd.providers.sigv4 import Signer

__all__ = ["STS_TIMEOUT", "TRANSIENT", "assume_role", "error", "parse_answer"]

logger = logging.getLogger(__name__)

STS_TIMEOUT = 10.0  # seconds for one AssumeRole call
TRANSIENT = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded",
                        "ServiceUnavailable", "InternalFailure", "InternalError",
                        "RequestTimeout", "IDPCommunicationError"})
_DTD = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)


def _xml(body: bytes) -> ET.Element | None:
    """The answer's XML root, or None. A DTD is refused before parsing: STS sends none, and
    entities are the one way XML may blow up."""
    if _DTD.search(body):
        return None
    try:
        return ET.fromstring(body)  # noqa: S314 - bounded, without a DTD (above)
    except ET.ParseError:
        return None


def _text(root: ET.Element, path: str) -> str:
    found = root.find(path)
    return (found.text or "").strip() if found is not None else ""


def parse_answer(body: bytes, where: str, result: str = "AssumeRoleResult") -> AwsCredentials:
    """The credentials of an AssumeRole answer (`result`: its result element, another for
    AssumeRoleWithWebIdentity)."""
    root = _xml(body)
    if root is None:
        raise AwsCredentialsError(f"{where} answered no XML", transient=True)
    creds = root.find(f"{{*}}{result}/{{*}}Credentials")
    if creds is None:
        raise AwsCredentialsError(f"{where} answered without {result}/Credentials",
                                  transient=True)
    names = ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")
    key_id, secret, token, expiration = (_text(creds, "{*}" + n) for n in names)
    missing = [n for n, v in zip(names, (key_id, secret, token, expiration), strict=True)
               if not v]
    if missing:
        raise AwsCredentialsError(f"{where} answered without {', '.join(missing)}")
    return temporary(key_id, secret, token, expiration, where)


def error(body: bytes) -> tuple[str, str]:
    """(code, message) of an STS error answer (``ErrorResponse/Error``)."""
    root = _xml(body)
    if root is None:
        return "", body[:200].decode("utf-8", "replace").strip()
    return _text(root, "{*}Error/{*}Code"), _text(root, "{*}Error/{*}Message")[:400]


async def assume_role(client: HttpClient, source: AssumeRole, inner: CredentialSource,
                      clock: Clock) -> AwsCredentials:
    """The role's credentials: one AssumeRole call signed with `inner`'s credentials."""
    where = f"STS AssumeRole of {source.role_arn} (profile [{source.profile}])"
    try:
        signing = await inner.get()
    except AwsCredentialsError as exc:
        raise AwsCredentialsError(f"{where}: no credentials to sign it with: {exc}",
                                  transient=exc.transient) from None
    form = {"Action": "AssumeRole", "Version": "2011-06-15", "RoleArn": source.role_arn,
            "RoleSessionName": source.session_name or f"failoverd-{int(clock.time())}"}
    if source.duration:
        form["DurationSeconds"] = str(source.duration)
    if source.external_id:
        form["ExternalId"] = source.external_id
    data = urlencode(form).encode()
    url = sts_url(source.endpoint)
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    signer = Signer(signing.access_key_id, signing.secret_access_key, source.region, "sts",
                    signing.session_token, now=clock.time)
    headers.update(signer.sign("POST", url, headers, data, host=Target(url).host_header))
    status, body = await call(client, "POST", url, headers, STS_TIMEOUT, data)
    if status == 200:
        fresh = parse_answer(body, where)
        logger.info("AWS credentials: assumed %s as %s", source.role_arn, fresh.access_key_id)
        return fresh
    # an endpoint's error page may echo the request: its secrets go no further than here
    body = masked(body, signing.session_token, signing.secret_access_key)
    code, message = error(body)
    text = f"{where} refused: HTTP {status}" + (f" {code}" if code else "") + \
        (f": {message}" if message else "")
    if code == "ExpiredToken" and inner.refused(signing):
        # the source's temporary credentials were revoked or expired early: it has dropped
        # them, and the next call signs with new ones
        raise AwsCredentialsError(text, transient=True)
    raise AwsCredentialsError(text, transient=transient_status(status) or code in TRANSIENT)
