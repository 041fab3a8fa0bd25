"""A fake Google Cloud Vertex AI and its credential endpoints: real aiohttp servers on 127.0.0.1.

`FakeVertex` serves ``/v1/projects/{project}/locations/{location}/publishers/{publisher}/
models/{model}:{method}`` for one project and location:

- publisher ``anthropic``: ``:rawPredict`` and ``:streamRawPredict``, the Anthropic Messages
  API's body without ``model`` and with ``"anthropic_version": "vertex-2023-10-16"`` (a body
  with ``model``, without that version, or ``:streamRawPredict`` without ``"stream": true`` is
  refused with a 400 as Vertex refuses it); the answers are FakeAnthropic's;
- publisher ``google``: ``:generateContent``, ``:streamGenerateContent?alt=sse`` (FakeGemini's
  answers) and ``:predict`` for text embedding models (``{"instances": [{"content"}],
  "parameters"}`` -> ``{"predictions": [{"embeddings": {"values", "statistics"}}]}``).

Every call needs ``Authorization: Bearer <token>`` with a token of `tokens` (those the fake
token endpoint issued, or set by a test): else 401 UNAUTHENTICATED, as Google's front answers.
A wrong project or location is a 403 PERMISSION_DENIED / 404. `fake.push(...)` scripts the
next calls with a key of `ERRORS` (Google's error bodies as Vertex sends them, or Claude's own
529) or any behaviour of the inner fakes ("stream_error", "cut_stream", ...).

`FakeGoogleAuth` is Google's OAuth token endpoint (``POST /token``: the JWT bearer grant, whose
RS256 signature it checks against the service account's public modulus, and the refresh-token
grant) and the GCE metadata server (``GET /computeMetadata/v1/instance/service-accounts/
default/token``, only with ``Metadata-Flavor: Google``).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
import pytest
from aiohttp import web

from tests.fakes.anthropic import COUNT_FIELDS, FakeAnthropic
from tests.fakes.anthropic import _err as anthropic_err
from tests.fakes.anthropic import _invalid as anthropic_invalid
from tests.fakes.base import AppServer, FakeServer, fake_fixture
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI, fake_embedding

PROJECT = "failoverd-test-123"
LOCATION = "us-east5"
CLIENT_EMAIL = "failoverd@failoverd-test-123.iam.gserviceaccount.com"
VERTEX_VERSION = "vertex-2023-10-16"


def _google(code: int, status: str, message: str, *details: dict[str, Any]) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return orjson.dumps({"error": error})


def _info(reason: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason,
            "domain": "googleapis.com", "metadata": {"service": "aiplatform.googleapis.com",
                                                     "consumer": f"projects/{PROJECT}"}}


UNAUTHENTICATED = (401, _google(
    401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 "
    "access token, login cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project.",
    _info("ACCESS_TOKEN_EXPIRED")))

# Error bodies as Vertex AI sends them (Google's shape, for both publishers; Claude's own for
# "overloaded"): name -> (status, body)
ERRORS: dict[str, tuple[int, bytes]] = {
    "rate_limit": (429, _google(
        429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com/"
        "online_prediction_requests_per_base_model with base model: anthropic-claude-sonnet-4-5"
        ". Please submit a quota increase request. https://cloud.google.com/vertex-ai/docs/"
        "generative-ai/quotas-genai.")),
    # as Vertex sometimes frames it: a one-element list
    "rate_limit_list": (429, b"[" + _google(
        429, "RESOURCE_EXHAUSTED", "Resource exhausted. Please try again later. Please refer "
        "to https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more "
        "details.") + b"]"),
    "unauthenticated": UNAUTHENTICATED,
    "permission": (403, _google(
        403, "PERMISSION_DENIED", "Permission 'aiplatform.endpoints.predict' denied on resource "
        f"'//aiplatform.googleapis.com/projects/{PROJECT}/locations/{LOCATION}/publishers/"
        "google/models/gemini-9' (or it may not exist).", _info("IAM_PERMISSION_DENIED"))),
    "service_disabled": (403, _google(
        403, "PERMISSION_DENIED", f"Vertex AI API has not been used in project {PROJECT} before "
        "or it is disabled. Enable it by visiting https://console.developers.google.com/apis/"
        f"api/aiplatform.googleapis.com/overview?project={PROJECT} then retry.",
        _info("SERVICE_DISABLED"))),
    "billing_disabled": (403, _google(
        403, "PERMISSION_DENIED", "This API method requires billing to be enabled. Please enable "
        f"billing on project #{PROJECT} by visiting https://console.developers.google.com/"
        f"billing/enable?project={PROJECT} then retry.", _info("BILLING_DISABLED"))),
    "not_enabled": (400, _google(
        400, "FAILED_PRECONDITION", f"Project `{PROJECT}` is not allowed to use Publisher Model "
        f"`projects/{PROJECT}/locations/{LOCATION}/publishers/anthropic/models/"
        "claude-sonnet-4-5@20250929`")),
    # the bare one, for a project's state (a partner model's terms not accepted, an org
    # policy), whatever the request
    "precondition": (400, _google(400, "FAILED_PRECONDITION", "Precondition check failed.")),
    "not_found": (404, _google(
        404, "NOT_FOUND", f"Publisher Model `projects/{PROJECT}/locations/{LOCATION}/publishers/"
        "google/models/gemini-9` not found.")),
    "context": (400, _google(
        400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number of "
        "tokens allowed (1048576).")),
    # the backend giving up under load (a one-element list, as the streaming calls frame it)
    "cancelled": (499, b"[" + _google(499, "CANCELLED", "The operation was cancelled.") + b"]"),
    "unavailable": (503, _google(503, "UNAVAILABLE", "The service is currently unavailable.")),
    "internal": (500, _google(500, "INTERNAL", "Internal error encountered.")),
    # Claude's own error, passed through by Vertex
    "overloaded": (529, anthropic_err("overloaded_error", "Overloaded")),
    "claude_bad_request": (400, anthropic_err("invalid_request_error",
                                              "messages: at least one message is required")),
}


@dataclass
class Logged:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeVertex(FakeServer[Logged]):
    """See the module's docstring."""

    project: str = PROJECT
    location: str = LOCATION
    tokens: set[str] = field(default_factory=set, kw_only=True)
    claude: FakeAnthropic = field(default_factory=lambda: FakeAnthropic(
        reply="Hello from Claude on Vertex"), kw_only=True)
    gemini: FakeGemini = field(default_factory=lambda: FakeGemini(
        reply="Hello from Gemini on Vertex", thinking=False), kw_only=True)
    refused: list[str] = field(default_factory=list, kw_only=True)  # tokens refused (401)
    # Model Garden's models as a service, by the OpenAI-compatible endpoint
    open: FakeOpenAI = field(default_factory=lambda: FakeOpenAI(
        reply="Hello from Llama on Vertex"), kw_only=True)

    errors = ERRORS

    def _routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/projects/{project}/locations/{location}/publishers/{publisher}/"
                        "models/{target}", self._call)
        router.add_post("/v1/projects/{project}/locations/{location}/endpoints/openapi/"
                        "chat/completions", self._openapi)

    def _error(self, name: str, model: str) -> web.Response:
        status, body = ERRORS[name]
        return web.Response(status=status, body=body, content_type="application/json")

    def calls(self, publisher: str) -> list[Logged]:
        return [r for r in self.requests if f"/publishers/{publisher}/" in r.path]

    async def _openapi(self, request: web.Request) -> web.StreamResponse:
        """The OpenAI-compatible endpoint: Vertex's checks and errors, then an OpenAI chat
        (the model named with its publisher, "meta/llama-...")."""
        refused = await self._admit(request)
        if refused is not None:
            return refused
        behaviour = self._next()
        if behaviour in ERRORS:
            return self._error(behaviour, "")
        return await self.open._chat(request)

    async def _call(self, request: web.Request) -> web.StreamResponse:
        refused = await self._admit(request)
        if refused is not None:
            return refused
        info = request.match_info
        body = self.requests[-1].body
        model, _, method = info["target"].partition(":")
        behaviour = self._next()
        if behaviour in ERRORS:
            return self._error(behaviour, model)
        if info["publisher"] == "anthropic":
            return await self._claude(request, body, model, method, behaviour)
        if info["publisher"] == "google":
            if method == "predict":
                return self._predict(body, model)
            self.gemini.push(behaviour)
            return await self.gemini._generate(request)
        return web.Response(status=404, body=_google(404, "NOT_FOUND", "Publisher not found."),
                            content_type="application/json")

    async def _admit(self, request: web.Request) -> web.Response | None:
        """Logs the call; Vertex's refusal of its token, project or location, if any."""
        raw = await request.read()
        body = orjson.loads(raw) if raw else None
        self.requests.append(Logged(request.path, dict(request.query), dict(request.headers),
                                    body))
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            self.refused.append(auth[7:])
            return self._error("unauthenticated", "")
        info = request.match_info
        if info["project"] != self.project:
            return web.Response(status=403, body=_google(
                403, "PERMISSION_DENIED", f"Permission denied on resource project "
                f"{info['project']}.", _info("CONSUMER_INVALID")),
                content_type="application/json")
        if info["location"] != self.location:
            return web.Response(status=404, body=_google(
                404, "NOT_FOUND", f"Publisher Model `projects/{info['project']}/locations/"
                f"{info['location']}/publishers/{info.get('publisher', 'x')}/models/x` not "
                "found."), content_type="application/json")
        return None

    async def _claude(self, request: web.Request, body: Any, model: str, method: str,
                      behaviour: str) -> web.StreamResponse:
        def invalid(message: str) -> web.Response:
            return web.Response(status=400, body=anthropic_err("invalid_request_error",
                                                               message),
                                content_type="application/json")

        if model == "count-tokens" and method == "rawPredict":
            return self._count(body)
        if method not in ("rawPredict", "streamRawPredict"):
            return web.Response(status=400, body=_google(
                400, "INVALID_ARGUMENT", f"Method {method} is not supported by publisher "
                "anthropic."), content_type="application/json")
        if not isinstance(body, dict):
            return invalid("body: a JSON object is required")
        if "model" in body:
            return invalid("model: Extra inputs are not permitted")
        if body.get("anthropic_version") != VERTEX_VERSION:
            return invalid(f"anthropic_version: Input should be '{VERTEX_VERSION}'")
        if bool(body.get("stream")) != (method == "streamRawPredict"):
            return invalid("stream: streamRawPredict takes \"stream\": true, rawPredict none")
        body = {k: v for k, v in body.items() if k != "anthropic_version"}
        body["model"] = model
        refusal = anthropic_invalid(body)
        if refusal is not None:
            return invalid(refusal)
        if body.get("stream"):
            return await self.claude._stream(request, body, behaviour)
        return web.json_response({**self.claude._message(body), "id": "msg_vrtx_01Fake"})

    def _count(self, body: Any) -> web.Response:
        """count-tokens:rawPredict: the Messages API's count, the model in the body with
        Vertex's version (as the Anthropic SDK's AnthropicVertex sends it); the count is the
        fake Anthropic API's (a token per 4 bytes of the counted JSON, plus 3)."""
        if not isinstance(body, dict) or body.get("anthropic_version") != VERTEX_VERSION:
            return web.Response(status=400, body=anthropic_err(
                "invalid_request_error", f"anthropic_version: Input should be "
                f"'{VERTEX_VERSION}'"), content_type="application/json")
        body = {k: v for k, v in body.items() if k != "anthropic_version"}
        extra = sorted(set(body) - COUNT_FIELDS)
        if extra or not isinstance(body.get("messages"), list) or not body.get("model"):
            return web.Response(status=400, body=anthropic_err(
                "invalid_request_error", f"{extra[0]}: Extra inputs are not permitted"
                if extra else "messages: Field required"), content_type="application/json")
        counted = orjson.dumps({k: body[k] for k in sorted(body) if k != "model"})
        return web.json_response({"input_tokens": len(counted) // 4 + 3})

    def _predict(self, body: Any, model: str) -> web.Response:
        instances = body.get("instances") if isinstance(body, dict) else None
        limit = 1 if model.startswith("gemini-embedding") else 250
        if not isinstance(instances, list) or not 1 <= len(instances) <= limit:
            return web.Response(status=400, body=_google(
                400, "INVALID_ARGUMENT", f"The model {model} takes 1 to {limit} instances."),
                content_type="application/json")
        # the documented cap on one call's input: 20,000 tokens (here: words)
        total = sum(len(str(item.get("content", "")).split()) for item in instances)
        if total > 20000:
            return web.Response(status=400, body=_google(
                400, "INVALID_ARGUMENT", "Unable to submit request because the input token "
                f"count is {total} but the model supports up to 20000. Reduce the input token "
                "count and try again."), content_type="application/json")
        size = (body.get("parameters") or {}).get("outputDimensionality") or 768
        return web.json_response({"predictions": [
            {"embeddings": {"values": fake_embedding(model, item["content"], size),
                            "statistics": {"truncated": False,
                                           "token_count": len(item["content"].split())}}}
            for item in instances], "metadata": {"billableCharacterCount": 10}})


fake_vertex = fake_fixture(FakeVertex, "fake_vertex")


# ------------------------------------------------------------------ credentials


@dataclass(frozen=True)
class ServiceKey:
    """An RSA key made by openssl, as a service-account file holds it."""

    pem: str
    modulus: int
    path: Path

    def account(self, token_uri: str, **extra: Any) -> dict[str, Any]:
        return {"type": "service_account", "project_id": PROJECT,
                "private_key_id": "0123456789abcdef0123456789abcdef01234567",
                "private_key": self.pem, "client_email": CLIENT_EMAIL,
                "client_id": "123456789012345678901", "token_uri": token_uri, **extra}


def make_key(where: Path, *, bits: int = 2048, pkcs1: bool = False) -> ServiceKey:
    """A key from `openssl genpkey` (PKCS#8), or its PKCS#1 form."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl CLI")
    path = where / f"key-{bits}{'-pkcs1' if pkcs1 else ''}.pem"
    subprocess.run([openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    f"rsa_keygen_bits:{bits}", "-out", str(path)], check=True,
                   capture_output=True, timeout=60)
    if pkcs1:
        subprocess.run([openssl, "rsa", "-in", str(path), "-traditional", "-out", str(path)],
                       check=True, capture_output=True, timeout=60)
    out = subprocess.run([openssl, "rsa", "-in", str(path), "-noout", "-modulus"], check=True,
                         capture_output=True, timeout=60, text=True).stdout
    return ServiceKey(path.read_text(), int(out.strip().split("=", 1)[1], 16), path)


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def rs256_valid(jwt: str, modulus: int, exponent: int = 65537) -> bool:
    """Whether `jwt`'s RS256 signature is right for the public key (checked here on its own,
    by RFC 8017's EMSA-PKCS1-v1_5 encoding)."""
    head, claims, signature = jwt.split(".")
    size = (modulus.bit_length() + 7) // 8
    got = pow(int.from_bytes(_b64decode(signature), "big"), exponent, modulus)
    digest = hashlib.sha256(f"{head}.{claims}".encode()).digest()
    info = bytes.fromhex("3031300d060960864801650304020105000420") + digest
    want = b"\x00\x01" + b"\xff" * (size - len(info) - 3) + b"\x00" + info
    return got.to_bytes(size, "big") == want


@dataclass
class FakeGoogleAuth(AppServer):
    """Google's token endpoint and the GCE metadata server (see the module's docstring).
    Issued tokens go into `vertex.tokens` when a FakeVertex is given. `fail` set to a status
    makes every token answer that status; `refuse` makes the token endpoint refuse grants
    (400 invalid_grant)."""

    modulus: int = 0
    vertex: FakeVertex | None = None
    client_id: str = "764086051850-fake.apps.googleusercontent.com"
    client_secret: str = "d-FL95Q19q7MQmFpd7hHD0Ty"  # noqa: S105 - a fake's
    refresh_token: str = "1//0fake-refresh-token-abcdefghijklmnop"  # noqa: S105
    lifetime: int = 3599
    fail: int = 0
    refuse: bool = False
    grants: list[dict[str, Any]] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)
    metadata_calls: int = 0
    url: str = ""
    _counter: Any = field(default_factory=itertools.count)

    async def start(self) -> FakeGoogleAuth:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_get("/computeMetadata/v1/instance/service-accounts/default/token",
                           self._metadata)
        await self._serve(app, "")
        return self

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def _issue(self) -> web.Response:
        token = f"ya29.fake-access-token-{next(self._counter)}-abcdefghijklmnopqrstuvwxyz"
        self.issued.append(token)
        if self.vertex is not None:
            self.vertex.tokens.add(token)
        return web.json_response({"access_token": token, "expires_in": self.lifetime,
                                  "token_type": "Bearer"})

    async def _token(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return web.json_response({"error": "invalid_request"}, status=400)
        form = {k: v[0] for k, v in parse_qs((await request.read()).decode()).items()}
        self.grants.append(form)
        if self.fail:
            return web.Response(status=self.fail, text="backend error")
        if self.refuse:
            return web.json_response({"error": "invalid_grant",
                                      "error_description": "Invalid JWT Signature."},
                                     status=400)
        grant = form.get("grant_type")
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            jwt = form.get("assertion", "")
            head, claims = (orjson.loads(_b64decode(p)) for p in jwt.split(".")[:2])
            if head.get("alg") != "RS256" or not rs256_valid(jwt, self.modulus):
                return web.json_response({"error": "invalid_grant",
                                          "error_description": "Invalid JWT Signature."},
                                         status=400)
            if claims.get("aud") != f"{self.url}/token" or claims.get("iss") != CLIENT_EMAIL \
                    or claims.get("scope") != "https://www.googleapis.com/auth/cloud-platform" \
                    or claims.get("exp", 0) - claims.get("iat", 0) > 3600:
                return web.json_response({"error": "invalid_grant",
                                          "error_description": "Invalid JWT claims."},
                                         status=400)
            return self._issue()
        if grant == "refresh_token":
            if (form.get("client_id"), form.get("client_secret"), form.get("refresh_token")) \
                    != (self.client_id, self.client_secret, self.refresh_token):
                return web.json_response({"error": "invalid_grant",
                                          "error_description": "Bad Request"}, status=400)
            return self._issue()
        return web.json_response({"error": "unsupported_grant_type"}, status=400)

    async def _metadata(self, request: web.Request) -> web.Response:
        self.metadata_calls += 1
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403, text="Missing Metadata-Flavor:Google header.")
        if self.fail:
            return web.Response(status=self.fail, text="metadata server trouble")
        resp = self._issue()
        resp.headers["Metadata-Flavor"] = "Google"
        return resp


fake_google_auth = fake_fixture(FakeGoogleAuth, "fake_google_auth")


@pytest.fixture(scope="session")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> ServiceKey:
    """A 2048-bit service-account key made by openssl (once per session)."""
    return make_key(tmp_path_factory.mktemp("vertex-key"))
