"""The model catalog as configured: providers (where and how to call) and the models they serve.

config.py reads the whole file; the `[providers.*]` and `[models.*]` tables are read here, each
problem reported with its key path.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from failoverd.awscreds import AwsConfigError, AwsSource, bare, choose_source
from failoverd.awscreds import AwsCredentials as AwsCredentials  # where tests and callers import it
from failoverd.awsendpoints import problem as aws_endpoint_problem
from failoverd.awsprofiles import endpoints as aws_endpoints
from failoverd.credentials import read_secret
from failoverd.failures import FailureReason
from failoverd.googlecreds import (
    GoogleConfigError,
    GoogleSource,
    MetadataServer,
    describe,
    project_of,
)
from failoverd.googlecreds import choose_source as choose_google_source
from failoverd.http1 import Proxy
from failoverd.http1.client import Target
from failoverd.tomlreader import Section

ProviderKind = Literal["openai", "anthropic", "gemini", "ollama", "bedrock", "vertex",
                       "simulated"]
Capability = Literal["tools", "vision", "reasoning", "json", "long_context", "embeddings",
                     "transcription", "speech"]
# what a model serves: chat (the default), or, marked by the capability of the same name,
# POST /v1/embeddings or POST /v1/audio/transcriptions and /translations only
ModelKind = Literal["chat", "embeddings", "transcription", "speech"]
EMBEDDINGS: Capability = "embeddings"
TRANSCRIPTION: Capability = "transcription"
SPEECH: Capability = "speech"
# per special kind: what to call such a model, its API, and the provider kinds that have one
_SPECIAL: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "embeddings": ("an embedding model", "embeddings API",
                   ("openai", "gemini", "ollama", "vertex", "simulated")),
    "transcription": ("a transcription model", "audio transcription API",
                      ("openai", "simulated")),
    "speech": ("a speech model", "text-to-speech API", ("openai", "simulated")),
}
EMBEDDING_KINDS = _SPECIAL["embeddings"][2]
Tier = Literal["small", "medium", "large"]

MAX_IN_FLIGHT = 1_000_000  # max_inflight, max_concurrency, half_open_calls: calls at once
MAX_TOKENS_PER_MINUTE = 10**12  # max_tpm
MAX_RETRIES = 100  # same-model retries: the backoff doubles per retry
# hedge_after (hedge.py): the longest deadline a request may ask for (x-failoverd-deadline)
MAX_HEDGE_AFTER = 86400.0


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    kind: ProviderKind
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    # the header the key goes in, as its whole value; "": the kind's own (see key_headers)
    api_key_header: str = ""
    connect_timeout: float = 5.0
    timeout: float = 120.0
    headers: tuple[tuple[str, str], ...] = ()
    # http://[user:password@]host:port, or "" for a direct connection (may hold a password)
    proxy: str = field(default="", repr=False)
    # simulated providers only: answer after this delay, or always fail with this reason
    simulate_latency: float = 0.0
    simulate_failure: FailureReason | None = None
    # openai kind: ask every stream for its usage (stream_options.include_usage), so
    # failoverd_tokens_total counts streams whose clients did not ask; the usage chunk is
    # left out for those clients
    stream_usage: bool = False
    # openai and anthropic kinds: read the upstream's rate-limit headers on every answer and
    # skip a model whose budget they say is gone until their reset (upstreamlimits.py);
    # false for a proxy that forwards another tenant's headers
    rate_limit_headers: bool = True
    # bedrock: the AWS region (its endpoint and the SigV4 scope) and, without an API key,
    # where the credentials that sign each request come from (awscreds.py)
    region: str = ""
    aws: AwsSource | None = field(default=None, repr=False)
    # vertex: the Google Cloud project (the region above is its location, or "global") and
    # where the access tokens come from (googlecreds.py)
    project: str = ""
    google: GoogleSource | None = field(default=None, repr=False)
    # USD its models may spend together per UTC day / month (0: no cap); past it they are
    # skipped as unavailable until the period ends (budget.py)
    max_cost_per_day: float = 0.0
    max_cost_per_month: float = 0.0


@dataclass(frozen=True, slots=True)
class Cost:
    """USD per 1M tokens; cached prompt tokens at the input price unless priced apart."""

    input: float = 0.0
    output: float = 0.0
    cache_read: float | None = None
    cache_write: float | None = None


_NO_COST = Cost()


@dataclass(frozen=True, slots=True)
class ModelConfig:
    id: str
    provider: str
    name: str
    context_window: int | None = None
    max_output_tokens: int | None = None
    capabilities: frozenset[Capability] = frozenset()
    # False when the key was omitted: capabilities unknown, so requests are not screened
    capabilities_declared: bool = True
    tier: Tier | None = None
    cost: Cost = Cost()
    max_retries: int = 1
    first_token_timeout: float = 30.0
    stream_idle_timeout: float = 60.0
    max_concurrency: int = 0
    # calls admitted per rolling minute (a free tier's RPM): past it the model is skipped as
    # unavailable ("max_rpm") until a slot frees, with no 429 spent and no breaker count
    max_rpm: int = 0
    # tokens (prompt + completion, as upstreams report them) per rolling minute: past it the
    # model is skipped as unavailable ("max_tpm") until enough of the minute's usage ages out
    max_tpm: int = 0
    # USD the model may spend per UTC day / month at its `cost` prices (0: no cap); past it
    # it is skipped as unavailable ("max_cost_per_day") until the period ends (budget.py)
    max_cost_per_day: float = 0.0
    max_cost_per_month: float = 0.0
    # speech models: the client's voice -> this model's ("*": for any other voice)
    voices: tuple[tuple[str, str], ...] = ()
    # seconds without a first byte before an attempt on this model is hedged (hedge.py);
    # None: routing.hedge_after's; 0: never
    hedge_after: float | None = None
    # the largest share of its hedgeable attempts that may be hedged (hedgebudget.py);
    # None: routing.hedge_budget's; 1: no budget
    hedge_budget: float | None = None

    @property
    def priced(self) -> bool:
        """Whether the model has a `cost` (its answers are counted in USD)."""
        return self.cost != _NO_COST

    @property
    def kind(self) -> ModelKind:
        """What the model serves: chat, or only embeddings, audio transcription or speech."""
        for special in (EMBEDDINGS, TRANSCRIPTION, SPEECH):
            if special in self.capabilities:
                return special  # type: ignore[return-value]
        return "chat"

    @property
    def embedding(self) -> bool:
        """An embedding model: it serves POST /v1/embeddings and never a chat request."""
        return EMBEDDINGS in self.capabilities

    @property
    def chat(self) -> bool:
        """A chat model (neither an embedding nor a transcription model)."""
        return self.kind == "chat"


_DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "ollama": "http://localhost:11434",
    "bedrock": "https://bedrock-runtime.{region}.amazonaws.com",
    "vertex": "https://{region}-aiplatform.googleapis.com",
    "simulated": "",
}
# an AWS region name: us-east-1, eu-central-2, us-gov-west-1, ap-southeast-7
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
# a Google Cloud location: us-east5, europe-west1, northamerica-northeast1, me-central2
_LOCATION = re.compile(r"[a-z]+-[a-z]+\d{1,2}")
VERTEX_GLOBAL_URL = "https://aiplatform.googleapis.com"  # the "global" location's endpoint
# the multi-region locations' endpoints are representative ones (REP), the location an infix
VERTEX_MULTI_REGIONS = ("us", "eu")
VERTEX_MULTI_REGION_URL = "https://aiplatform.{region}.rep.googleapis.com"
# a project id (6 to 30 lowercase letters, digits and hyphens), optionally domain-scoped
# ("example.com:my-project"), or a project number
_PROJECT = re.compile(r"([a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]|\d{1,20}")


_SIMULATED_FAILURES = tuple(str(r) for r in FailureReason if r not in (
    FailureReason.CANCELLED, FailureReason.UNAVAILABLE, FailureReason.INCAPABLE))

# header names that carry a key by convention: the kinds' own and Azure OpenAI's
_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key",
                                 "x-goog-api-key", "x-amz-security-token"})

_PROVIDER_KEYS = ("kind", "base_url", "api_key_env", "api_key_file", "api_key_credential",
                  "api_key_header", "connect_timeout", "timeout", "headers", "proxy",
                  "simulate_failure", "simulate_latency", "stream_usage",
                  "rate_limit_headers", "region",
                  "aws_profile", "project", "google_credentials_file",
                  "max_cost_per_day", "max_cost_per_month")


def read_provider(name: str, sec: Section, env: Mapping[str, str]) -> ProviderConfig | None:
    kind = sec.get("kind", str, "")
    if kind not in get_args(ProviderKind):
        kinds = ", ".join(get_args(ProviderKind))
        if not sec.has("kind"):
            sec.problem("kind", f"is required: one of {kinds}")
        elif isinstance(sec.data["kind"], str):  # a wrong type is reported by get()
            sec.problem("kind", f"must be one of {kinds}; got {kind!r}")
        # the other keys depend on the kind: report only the ones no provider has
        sec.seen.update(_PROVIDER_KEYS)
        sec.finish()
        return None
    region = _region(sec, kind)
    default_url = _DEFAULT_BASE_URLS[kind].format(region=region or "REGION")
    if kind == "vertex" and region == "global":
        default_url = VERTEX_GLOBAL_URL
    elif kind == "vertex" and region in VERTEX_MULTI_REGIONS:
        default_url = VERTEX_MULTI_REGION_URL.format(region=region)
    base_url = sec.get("base_url", str, default_url).rstrip("/")
    if kind != "simulated" and not base_url.startswith(("http://", "https://")):
        # bare(): a URL's userinfo or query may hold a secret, and errors reach logs
        sec.problem("base_url", f"must start with http:// or https://, got {bare(base_url)!r}")
    elif kind != "simulated":
        try:
            Target(base_url).key  # noqa: B018 - parses host and port
        except ValueError:
            sec.problem("base_url", "is not a usable URL (an http:// or https:// URL with a "
                        f"host, and a port from 1 to 65535 if any): {bare(base_url)!r}")
        else:
            # Bedrock's paths are appended to it, as to a configured AWS endpoint
            why = aws_endpoint_problem(base_url) if kind == "bedrock" else ""
            if why:
                sec.problem("base_url", f"is not a usable URL ({why}): {bare(base_url)!r}")
    proxy_url = sec.get("proxy", str, "")
    if proxy_url and kind == "simulated":
        sec.problem("proxy", "only valid for HTTP provider kinds")
    elif proxy_url:
        try:
            Proxy(proxy_url)
        except ValueError as exc:
            sec.problem("proxy", str(exc))
    headers_sec = sec.table("headers")
    headers: list[tuple[str, str]] = []
    for hk in list(headers_sec.data):
        value = headers_sec.get(hk, str, "")
        if not hk or any(c in hk for c in ":\r\n \t") or any(c in value for c in "\r\n"):
            headers_sec.problem(hk, "a header name without ':' or spaces, and a value on one "
                                "line, are needed")
        elif hk.lower() in _CREDENTIAL_HEADERS:
            headers_sec.problem(hk, "carries a credential, which never goes in the file: use "
                                "api_key_env, api_key_file or api_key_credential (with "
                                f"api_key_header = \"{hk}\" when it is not the kind's own)")
        headers.append((hk, value))
    key_header = sec.get("api_key_header", str, "")
    if key_header and (kind == "simulated" or any(c in key_header for c in ":\r\n \t")):
        sec.problem("api_key_header", "only valid for HTTP provider kinds" if kind == "simulated"
                    else f"must be a header name without ':' or spaces, got {key_header!r}")
    elif key_header and not any(sec.has(f"api_key_{s}") for s in ("env", "file", "credential")):
        sec.problem("api_key_header", "names where the key goes, but none of api_key_env, "
                    "api_key_file or api_key_credential gives one")
    stream_usage = sec.get("stream_usage", bool, False)
    if stream_usage and kind != "openai":
        sec.problem("stream_usage", "only valid for kind = \"openai\" (the other kinds' streams "
                    "always carry their usage)")
    rate_limit_headers = sec.get("rate_limit_headers", bool, True)
    if sec.has("rate_limit_headers") and kind not in ("openai", "anthropic"):
        sec.problem("rate_limit_headers", "only valid for kind = \"openai\" or \"anthropic\" "
                    "(the other kinds' upstreams send no rate-limit headers)")
    failure: FailureReason | None = None
    sim_fail = sec.get("simulate_failure", str, "")
    sim_latency = sec.number("simulate_latency", 0.0)
    if kind != "simulated":
        for key in ("simulate_failure", "simulate_latency"):
            if sec.has(key):
                sec.problem(key, "only valid for kind = \"simulated\"")
    elif sim_fail:
        if sim_fail in _SIMULATED_FAILURES:
            failure = FailureReason(sim_fail)
        else:
            # cancelled, unavailable, incapable are no upstream's answer: "cancelled" made
            # every request a 502 failover_aborted
            sec.problem("simulate_failure", f"must be one of {', '.join(_SIMULATED_FAILURES)}; "
                        f"got {sim_fail!r}")
    api_key = read_secret(sec, "api_key", env)
    if kind == "vertex":
        for source in ("env", "file", "credential"):
            if sec.has(f"api_key_{source}"):
                sec.problem(f"api_key_{source}", "kind = \"vertex\" takes Google credentials "
                            "(google_credentials_file, GOOGLE_APPLICATION_CREDENTIALS, gcloud's "
                            "application default login or the metadata server), not an API "
                            "key")
        api_key = ""
    aws = _aws_credentials(sec, kind, env, region)
    if kind == "bedrock" and region and not sec.has("base_url"):
        base_url = _bedrock_endpoint(sec, env, base_url)
    google, project = _google_credentials(sec, kind, env)
    cfg = ProviderConfig(
        name=name,
        kind=cast(ProviderKind, kind),
        base_url=base_url,
        api_key=api_key,
        api_key_header=key_header,
        connect_timeout=sec.number("connect_timeout", 5.0, positive=True),
        timeout=sec.number("timeout", 120.0, positive=True),
        headers=tuple(headers),
        proxy=proxy_url,
        simulate_latency=sim_latency,
        simulate_failure=failure,
        stream_usage=stream_usage,
        rate_limit_headers=rate_limit_headers,
        region=region,
        aws=aws,
        project=project,
        google=google,
        max_cost_per_day=_cap(sec, "max_cost_per_day"),
        max_cost_per_month=_cap(sec, "max_cost_per_month"),
    )
    sec.finish()
    return cfg


def _region(sec: Section, kind: str) -> str:
    """bedrock's and vertex's `region` (required there, refused elsewhere)."""
    region = sec.get("region", str, "")
    if kind == "vertex":
        return _location(sec, region)
    if kind != "bedrock":
        if sec.has("region"):
            sec.problem("region", "only valid for kind = \"bedrock\" or \"vertex\"")
        return ""
    if not sec.has("region"):
        sec.problem("region", "is required for kind = \"bedrock\": the AWS region of the "
                    "models, e.g. \"us-east-1\"")
    elif not _REGION.fullmatch(region):
        sec.problem("region", f"must be an AWS region name such as \"us-east-1\", got "
                    f"{region!r}")
        return ""
    return region


def _location(sec: Section, region: str) -> str:
    """A vertex provider's `region`: the Vertex AI location of its models."""
    if not sec.has("region"):
        sec.problem("region", "is required for kind = \"vertex\": the Vertex AI location of "
                    "the models, e.g. \"us-east5\", \"europe-west1\", \"global\" or \"us\"")
    elif region not in ("global", *VERTEX_MULTI_REGIONS) and not _LOCATION.fullmatch(region):
        sec.problem("region", "must be a Vertex AI location such as \"us-east5\", "
                    "\"europe-west1\", \"global\" or the multi-regions \"us\" and \"eu\", "
                    f"got {region!r}")
        return ""
    return region


def _google_credentials(sec: Section, kind: str, env: Mapping[str, str]
                        ) -> tuple[GoogleSource | None, str]:
    """A vertex provider's credentials source (googlecreds.py) and its project: `project`,
    else GOOGLE_CLOUD_PROJECT (GCLOUD_PROJECT), else the one its credentials file names, else
    "" with the metadata server's tokens (its project is asked at the first call)."""
    path = sec.get("google_credentials_file", str, "")
    project = sec.get("project", str, "").strip()
    if kind != "vertex":
        for key in ("project", "google_credentials_file"):
            if sec.has(key):
                sec.problem(key, "only valid for kind = \"vertex\"")
        return None, ""
    if sec.has("google_credentials_file") and not path.strip():
        sec.problem("google_credentials_file", "must name a file (omit it for "
                    "GOOGLE_APPLICATION_CREDENTIALS, gcloud's application default "
                    "credentials or the metadata server)")
        return None, project
    bad_project = sec.has("project") and not _PROJECT.fullmatch(project)
    if bad_project:
        sec.problem("project", "must be a Google Cloud project id such as \"my-project-123\" "
                    f"(or its number), got {project!r}")
    try:
        source: GoogleSource | None = choose_google_source(env, path.strip())
    except GoogleConfigError as exc:
        sec.problem("google_credentials_file" if path.strip() else "", str(exc))
        source = None
    if bad_project:  # the credentials are still read: every problem in one load
        return source, ""
    if not project and source is not None:
        # google-auth's default(): the environment's project before the credentials' own
        for var in ("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT"):
            named = env.get(var, "").strip()
            if named and not _PROJECT.fullmatch(named):
                sec.problem("project", f"environment variable {var} is no Google Cloud project "
                            f"id: {named[:80]!r} (or give project)")
                return source, ""
            if named:
                return source, named
        project = project_of(source)
        # on Google Cloud the metadata server names its project: asked at the first call
        # (vertex.py), as google-auth's default() asks it
        if not project and not isinstance(source, MetadataServer):
            sec.problem("project", "is required: the Google Cloud project whose Vertex AI is "
                        f"called ({describe(source)} names none: no project_id or "
                        "quota_project_id)")
    return source, project


def _aws_credentials(sec: Section, kind: str, env: Mapping[str, str],
                     region: str = "") -> AwsSource | None:
    """A bedrock provider's AWS credentials source (awscreds.py), when it has no API key."""
    profile = sec.get("aws_profile", str, "")
    keyed = any(sec.has(f"api_key_{s}") for s in ("env", "file", "credential"))
    if kind != "bedrock":
        if sec.has("aws_profile"):
            sec.problem("aws_profile", "only valid for kind = \"bedrock\"")
        return None
    if keyed:
        if sec.has("aws_profile"):
            sec.problem("aws_profile", "names AWS credentials, but the provider has a Bedrock "
                        "API key: remove one")
        return None
    if sec.has("aws_profile") and not profile.strip():
        sec.problem("aws_profile", "must name a profile (omit it for AWS_PROFILE or default)")
        return None
    try:
        return choose_source(env, profile.strip(), region=region)
    except AwsConfigError as exc:
        sec.problem("aws_profile" if profile.strip() else "", str(exc))
        return None


def _bedrock_endpoint(sec: Section, env: Mapping[str, str], default: str) -> str:
    """A bedrock provider's endpoint when it has no base_url: the one the environment or the
    AWS profile in use configures (awsendpoints.py: AWS_ENDPOINT_URL_BEDROCK_RUNTIME, ...),
    else the region's `default`."""
    profile = sec.get("aws_profile", str, "").strip()
    try:
        return aws_endpoints(env, profile).url("BEDROCK_RUNTIME", default)
    except AwsConfigError as exc:
        # said once (Section.problem): a broken file fails the credentials too
        sec.problem("aws_profile" if profile else "", str(exc))
        return default


def read_model(model_id: str, sec: Section, providers: Mapping[str, Any]) -> ModelConfig:
    provider = sec.get("provider", str, "")
    if not provider:
        sec.problem("provider", "is required")
    elif provider not in providers:
        # a provider that is declared but invalid has its own problems listed already
        sec.problem("provider", f"no provider named {provider!r} in [providers]")
    default_name = model_id.split("/", 1)[1] if "/" in model_id else model_id
    declared = sec.has("capabilities")
    caps = sec.strings("capabilities", ()) or ()
    allowed_caps = get_args(Capability)
    for cap in caps:
        if cap not in allowed_caps:
            sec.problem("capabilities", f"unknown capability {cap!r}; known: "
                        f"{', '.join(allowed_caps)}")
    tier: Tier | None = None
    if sec.has("tier"):  # "" is no tier either: omit the key for none
        tier = sec.choice("tier", Tier, "medium")
    for special in _SPECIAL:
        if special in caps:
            _special_model(sec, special, caps, providers.get(provider))
            if special != EMBEDDINGS and sec.has("max_tpm"):
                # audio answers report no tokens: the limit would never apply
                sec.problem("max_tpm", f"{_SPECIAL[special][0]} reports no tokens; limit "
                            "it with max_rpm")
            for key in ("max_cost_per_day", "max_cost_per_month"):
                if special != EMBEDDINGS and sec.has(key):
                    sec.problem(key, f"{_SPECIAL[special][0]} reports no tokens, so it "
                                "spends nothing here: the cap would never apply")
            break
    cost_sec = sec.table("cost")
    cost = Cost(cost_sec.number("input", 0.0), cost_sec.number("output", 0.0),
                cost_sec.number("cache_read", 0.0) if cost_sec.has("cache_read") else None,
                cost_sec.number("cache_write", 0.0) if cost_sec.has("cache_write") else None)
    cost_sec.finish()
    spend_caps = {key: _cap(sec, key) for key in ("max_cost_per_day", "max_cost_per_month")}
    for key, usd in spend_caps.items():
        if usd and not (cost.input or cost.output or cost.cache_read or cost.cache_write):
            sec.problem(key, "needs the model's prices (cost.input, cost.output): without "
                        "them it spends nothing and the cap would never apply")
    window = sec.integer("context_window", 0, minimum=1) if sec.has("context_window") else None
    max_out = (sec.integer("max_output_tokens", 0, minimum=1)
               if sec.has("max_output_tokens") else None)
    voices: list[tuple[str, str]] = []
    if sec.has("voices"):
        vsec = sec.table("voices")
        for name in list(vsec.data):
            voice = vsec.get(name, str, "")
            if isinstance(vsec.data[name], str) and not (voice and name):
                vsec.problem(name, "a voice name, mapped to a non-empty voice of this model")
            voices.append((name, voice))
        vsec.finish()
        if "speech" not in caps:
            sec.problem("voices", "only for a speech model (capabilities = [\"speech\"])")
    cfg = ModelConfig(
        id=model_id,
        provider=provider,
        name=sec.get("name", str, default_name) or default_name,
        context_window=window,
        max_output_tokens=max_out,
        capabilities=frozenset(cast(Capability, c) for c in caps if c in allowed_caps),
        capabilities_declared=declared,
        tier=tier,
        cost=cost,
        max_retries=sec.integer("max_retries", 1, maximum=MAX_RETRIES),
        first_token_timeout=sec.number("first_token_timeout", 30.0, positive=True),
        stream_idle_timeout=sec.number("stream_idle_timeout", 60.0, positive=True),
        max_concurrency=sec.integer("max_concurrency", 0, maximum=MAX_IN_FLIGHT),
        max_rpm=sec.integer("max_rpm", 0, maximum=MAX_IN_FLIGHT),
        max_tpm=sec.integer("max_tpm", 0, maximum=MAX_TOKENS_PER_MINUTE),
        max_cost_per_day=spend_caps["max_cost_per_day"],
        max_cost_per_month=spend_caps["max_cost_per_month"],
        voices=tuple(voices),
        hedge_after=read_hedge_after(sec) if sec.has("hedge_after") else None,
        hedge_budget=read_hedge_budget(sec),
    )
    for key in ("hedge_after", "hedge_budget"):
        if sec.has(key) and cfg.kind in ("transcription", "speech"):
            sec.problem(key, "audio calls are never hedged (a second copy would be made, "
                        "and billed, in full)")
    sec.finish()
    return cfg


def read_hedge_after(sec: Section) -> float:
    """A `hedge_after` key (routing's or a model's): seconds, 0 (off) to MAX_HEDGE_AFTER."""
    value = sec.number("hedge_after", 0.0)
    if value > MAX_HEDGE_AFTER:
        sec.problem("hedge_after", f"must be at most {MAX_HEDGE_AFTER:g} seconds (0 = off), "
                    f"got {value:g}")
        return 0.0
    return value


def read_hedge_budget(sec: Section) -> float | None:
    """A `hedge_budget` key (routing's or a model's): the largest share of hedgeable
    attempts that may be hedged, more than 0 and at most 1; None when not given."""
    if not sec.has("hedge_budget"):
        return None
    value = sec.number("hedge_budget", 1.0, positive=True)
    if value > 1:
        sec.problem("hedge_budget", f"must be at most 1 (a share of the attempts), got "
                    f"{value:g}")
        return None
    return value


def _cap(sec: Section, key: str) -> float:
    """A spending cap in USD (budget.py): more than 0 when given; 0 when not."""
    return sec.number(key, 0.0, positive=True) if sec.has(key) else 0.0


def _special_model(sec: Section, special: str, caps: Collection[str], provider: Any) -> None:
    """What an embedding (or transcription) model cannot have: chat capabilities, a tier
    (auto routing picks chat models), a provider kind without that API."""
    noun, api, kinds = _SPECIAL[special]
    others = sorted(c for c in caps if c != special)
    if others:
        sec.problem("capabilities", f"'{special}' marks {noun}, which has no chat "
                    f"capabilities; remove {', '.join(repr(c) for c in others)} (a model "
                    "that does both is two [models] entries with the same name)")
    if sec.has("tier"):
        sec.problem("tier", f"{noun} takes no part in auto routing: remove the tier")
    kind = provider.get("kind") if isinstance(provider, Mapping) else None
    if isinstance(kind, str) and kind in get_args(ProviderKind) and kind not in kinds:
        sec.problem("capabilities", f"provider kind {kind!r} has no {api} (kinds with "
                    f"one: {', '.join(kinds)})")
