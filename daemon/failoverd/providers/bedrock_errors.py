"""How Amazon Bedrock's errors count (providers/bedrock.py's adapter reads them).

Bedrock names its errors in the ``x-amzn-ErrorType`` header (``ThrottlingException:http://...``;
in a stream, an exception message's ``:exception-type``) with ``{"message": ...}`` bodies: the
type decides where it can (`_TYPE_REASONS`), the message where one type covers several causes
(ValidationException: context too long, an unknown model, a feature the model lacks, an
account Bedrock refuses ("Operation not allowed"), or the client's mistake;
AccessDeniedException: the key, the account's payment, or one model not enabled for the
account, which only that model's breaker should pay for).

A refusal of the request's cachePoint blocks is told apart (`cache_refusal`, `CacheRefused`):
the adapter sends the request again without them.
"""

from __future__ import annotations

from typing import Any, Literal

from failoverd.errors import UpstreamError
from failoverd.failures import FailureReason
from failoverd.providers.http import classify, classify_in_band, json_or_none

__all__ = ["CacheRefused", "CacheScope", "cache_refusal", "classify_error", "error_message",
           "error_type"]

# error type -> reason, when the type alone decides
_TYPE_REASONS = {
    "ThrottlingException": FailureReason.RATE_LIMIT,
    "TooManyRequestsException": FailureReason.RATE_LIMIT,
    # a quota of the account (tokens per day, ...): no retry helps now, other models may serve
    "ServiceQuotaExceededException": FailureReason.RATE_LIMIT,
    "ServiceUnavailableException": FailureReason.OVERLOADED,
    "ModelNotReadyException": FailureReason.OVERLOADED,  # being loaded: retry later
    "UnrecognizedClientException": FailureReason.AUTH,
    "ExpiredTokenException": FailureReason.AUTH,
    "InvalidSignatureException": FailureReason.AUTH,
    "IncompleteSignatureException": FailureReason.AUTH,
    "MissingAuthenticationTokenException": FailureReason.AUTH,
    "InvalidClientTokenId": FailureReason.AUTH,
    "SignatureDoesNotMatch": FailureReason.AUTH,
    "ResourceNotFoundException": FailureReason.NOT_FOUND,
    "ModelTimeoutException": FailureReason.TIMEOUT,
    "ModelErrorException": FailureReason.SERVER_ERROR,
    "ModelStreamErrorException": FailureReason.SERVER_ERROR,
    "InternalServerException": FailureReason.SERVER_ERROR,
    "InternalFailure": FailureReason.SERVER_ERROR,
}
# ValidationException texts that are about the prompt's length (besides the shared markers):
# "Input is too long for requested model.", "Too many input tokens. Max input tokens: 8192,
# request input token count: 9000", Anthropic's "prompt is too long: 210000 tokens > 200000
# maximum" and "input length and `max_tokens` exceed context limit"
_CONTEXT_MARKERS = ("input is too long", "too many input tokens", "prompt is too long",
                    "input tokens exceed", "exceed context limit", "context window")
# ValidationExceptions and AccessDeniedExceptions about this model, not the request or the key:
# "The provided model identifier is invalid.", "Invocation of model ID ... with on-demand
# throughput isn't supported. Retry your request with the ID or ARN of an inference profile
# that contains this model.", "You don't have access to the model with the specified model ID.",
# and the Marketplace subscription of a third-party model (Anthropic's) that the role may not
# make: "Model access is denied due to IAM user or service role is not authorized to perform
# the required AWS Marketplace actions (...) to enable access to this model." (Amazon's own
# models need none)
_MODEL_MARKERS = ("model identifier is invalid", "on-demand throughput",
                  "have access to the model", "model is not available", "end of its life",
                  "legacy model", "access to this model",
                  # an IAM denial names the model's resource ("... is not authorized to
                  # perform: bedrock:InvokeModel on resource: arn:aws:bedrock:...:
                  # foundation-model/X"): the same words whether the policy leaves out this
                  # model or every model, so taken as this model's (one failed call per model
                  # if it is every one, where an account-wide auth block would close them all
                  # for auth_open_seconds over a policy scoped to some)
                  "on resource: arn:aws:bedrock:")
# a maxTokens over what this model writes: Bedrock's "The maximum tokens you requested exceeds
# the model limit of 4096." and Claude's "max_tokens: 100000 > 64000, which is the maximum
# allowed number of output tokens for ...": another model may take it (as for Anthropic's)
_OUTPUT_LIMIT_MARKERS = ("exceeds the model limit", "exceed the model limit",
                         "maximum allowed number of output tokens")
# a feature this model lacks ("This model doesn't support tool use in streaming mode.",
# "This model doesn't support the system field"): another model may have it
_INCAPABLE_MARKERS = ("doesn't support", "does not support", "not supported for this model",
                      "isn't supported")
# what a model without prompt caching, extended thinking or reasoning blocks answers a request
# that has them (failoverd sends them only where the model id says the model takes them, so
# these mean an id it read wrongly): "You invoked an unsupported model, or your request did
# not allow prompt caching. See the documentation for more information." (a 400, for some
# accounts and models a 403 AccessDeniedException, which would otherwise block the whole
# provider as `auth`), and a key its schema lacks ("Malformed input request: #/messages/6/
# content/0: extraneous key [cachePoint] is not permitted, ..."); another model may serve it,
# as a feature the Anthropic adapter cannot express makes its candidate incapable
_FEATURE_MARKERS = ("did not allow prompt caching", "extraneous key [cachepoint]",
                    "access to explicit prompt caching",
                    "extraneous key [thinking]", "extraneous key [reasoningcontent]")
# Refusals of the request's cachePoint blocks (see `cache_refusal`). This model takes none:
# "You invoked an unsupported model[,] or your request did not allow prompt caching. See the
# documentation for more information." (a 400 ValidationException, for some accounts a 403
# AccessDeniedException; reported now and then for Claude 4.6, which caches), "You do not
# have access to explicit prompt caching" (an account without it, as in the preview), and
# "Malformed input request: #/system/1: extraneous key [cachePoint] is not permitted" (a
# model whose schema has no cache point)
_UNCACHED_MARKERS = ("did not allow prompt caching", "access to explicit prompt caching",
                     "extraneous key [cachepoint]")
# The model caches, but not this request's points (Claude's errors, passed on as a 400
# ValidationException "The model returned the following errors: ..."): "A maximum of 4 blocks
# with cache_control may be provided. Found 5.", "Cache point cannot be inserted after
# reasoning block. Please remove the invalid cache point and try again.", and "a ttl='1h'
# cache_control block must not come after a ttl='5m' cache_control block". A point before
# the model's minimum of tokens is no refusal: Bedrock answers, and caches nothing.
_CACHE_REQUEST_MARKERS = ("blocks with cache_control may be provided",
                          "cache point cannot be inserted",
                          "must not come after a ttl=")
CacheScope = Literal["model", "request"]
# the account may not use Bedrock (not yet verified, or blocked): "ValidationException:
# Operation not allowed", for every model and request
_ACCOUNT_MARKERS = ("operation not allowed",)
# AWS Marketplace subscriptions for third-party models: "Model access is denied due to
# INVALID_PAYMENT_INSTRUMENT:A valid payment instrument must be provided."
_BILLING_MARKERS = ("payment instrument", "invalid_payment", "billing")


def error_type(headers: Any, body: Any) -> str:
    """The error's type: ``x-amzn-ErrorType`` up to its ':', else the body's ``__type`` (after
    its '#') or ``code``."""
    value = headers.get("x-amzn-errortype") if headers is not None else None
    if not value and isinstance(body, dict):
        value = body.get("__type") or body.get("code") or body.get("Code")
    return str(value or "").split(":", 1)[0].rsplit("#", 1)[-1].strip()


def error_message(raw: bytes) -> tuple[str, Any]:
    """(message, parsed body) of an error body: ``{"message"}`` (``Message`` from some)."""
    body = json_or_none(raw)
    if isinstance(body, dict):
        message = body.get("message") or body.get("Message")
        if isinstance(message, str):
            return message, body
    return raw[:300].decode("utf-8", "replace").strip(), body


def cache_refusal(status: int | None, message: str, kind: str) -> CacheScope | None:
    """Whether a Bedrock error refuses the request's cache points: ``"model"`` (this model
    takes none), ``"request"`` (these ones: too many, misplaced) or None (anything else).

    Only a 400 ValidationException or a 403 AccessDeniedException (in a stream, before its
    status, their exception frames) with Bedrock's words for it: other ValidationExceptions
    are left to `classify_error`."""
    if status not in (None, 400, 403):
        return None
    kind = kind[:1].upper() + kind[1:]
    if kind not in ("ValidationException", "AccessDeniedException", ""):
        return None
    low = message.lower()
    if any(m in low for m in _UNCACHED_MARKERS):
        return "model"
    if kind != "AccessDeniedException" and any(m in low for m in _CACHE_REQUEST_MARKERS):
        return "request"
    return None


class CacheRefused(UpstreamError):
    """A refusal of the request's cache points (`scope` as `cache_refusal` returns it), which
    the adapter answers by sending the request again without them. Raised on only when that
    cannot help (the request had none): as the UpstreamError it is."""

    scope: CacheScope = "model"


def classify_error(status: int | None, message: str, kind: str) -> FailureReason:
    """A Bedrock failure's reason: an HTTP status (None inside a stream), its message and its
    error type (as ``ThrottlingException`` or the stream's ``throttlingException``)."""
    kind = kind[:1].upper() + kind[1:]
    low = message.lower().replace("\u2019", "'")  # Bedrock writes "isn’t" and "doesn't"
    if status in (None, 400, 403) and any(m in low for m in _FEATURE_MARKERS):
        return FailureReason.INCAPABLE
    if kind == "AccessDeniedException" or (status == 403 and not kind):
        if any(m in low for m in _BILLING_MARKERS):
            return FailureReason.BILLING
        if any(m in low for m in _MODEL_MARKERS):
            return FailureReason.NOT_FOUND
        return FailureReason.AUTH
    if kind == "ValidationException" or (status == 400 and not kind):
        if any(m in low for m in _ACCOUNT_MARKERS):
            return FailureReason.AUTH
        if any(m in low for m in _OUTPUT_LIMIT_MARKERS):
            return FailureReason.INCAPABLE
        if any(m in low for m in _CONTEXT_MARKERS):
            return FailureReason.CONTEXT_OVERFLOW
        if any(m in low for m in _MODEL_MARKERS):
            return FailureReason.NOT_FOUND
        if any(m in low for m in _INCAPABLE_MARKERS):
            return FailureReason.INCAPABLE
        return classify(400, message, kind)
    reason = _TYPE_REASONS.get(kind)
    if reason is not None:
        return reason
    if status == 413:
        # over the bytes a request may have (images, documents), not the context window:
        # any other model may take it, as for Anthropic's request_too_large
        return FailureReason.INCAPABLE
    if status is None or status < 400:
        return classify_in_band(message, kind)
    return classify(status, message, kind)
