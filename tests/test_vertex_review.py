"""Review of the vertex provider kind: defects found against the real Vertex AI, google-auth and
the Anthropic SDK's Vertex client, each shown by a test against fake servers on 127.0.0.1 (or
openssl's keys), and fixed."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from failoverd import config
from failoverd.clock import ManualClock
from failoverd.config import ModelConfig
from failoverd.errors import ConfigError, UpstreamError
from failoverd.failures import FailureReason
from failoverd.googlecreds import (
    GoogleConfigError,
    GoogleCredentialsError,
    choose_source,
    open_source,
    read_file,
)
from failoverd.http1 import HttpClient
from failoverd.providers import make_provider
from failoverd.providers.base import AttemptLimits
from failoverd.rsasign import RsaKeyError, load_pem
from tests.fakes.base import serve_app
from tests.fakes.vertex import (
    PROJECT,
    FakeGoogleAuth,
    FakeVertex,
    ServiceKey,
    fake_google_auth,
    fake_vertex,
    rsa_key,
)
from tests.test_vertex_e2e import daemon_config, started

__all__ = ["fake_google_auth", "fake_vertex", "rsa_key"]  # the fixtures

CLAUDE = ModelConfig(id="vertex/sonnet", provider="v", name="claude-sonnet-4-5@20250929",
                     max_output_tokens=1000)
GEMINI = ModelConfig(id="vertex/flash", provider="v", name="gemini-2.5-flash")
EMBED = ModelConfig(id="vertex/embed", provider="v", name="text-embedding-005",
                    capabilities=frozenset({"embeddings"}))
LIMITS = AttemptLimits(total=5, connect=2, first_token=5, idle=5)
HELLO: dict[str, Any] = {"messages": [{"role": "user", "content": "Hello"}]}
MODEL = '\n[models."v/flash"]\nprovider = "v"\nname = "gemini-2.5-flash"\n'


async def signed_provider(vertex: FakeVertex,
                          fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]],
                          rsa_key: ServiceKey, tmp_path: Path, http_client: HttpClient,
                          region: str = "us-east5") -> Any:
    """A vertex provider `v` on `vertex`, signing with a service account key whose tokens
    come from a fake Google token endpoint."""
    auth = await fake_google_auth(modulus=rsa_key.modulus, vertex=vertex)
    path = tmp_path / "sa.json"
    path.write_bytes(orjson.dumps(rsa_key.account(f"{auth.url}/token")))
    cfg = config.loads(f'[providers.v]\nkind = "vertex"\nregion = "{region}"\nbase_url = '
                       f'"{vertex.url}"\ngoogle_credentials_file = "{path}"\n' + MODEL, env={})
    return make_provider(cfg.providers["v"], http_client)


def _der_int(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return b"\x02" + _der_len(len(raw)) + raw


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def pkcs1_pem(n: int, e: int, d: int, p: int, q: int, dp: int, dq: int, qinv: int) -> str:
    """A PKCS#1 RSA PRIVATE KEY PEM of these numbers (any numbers: a malformed key)."""
    body = b"".join(_der_int(v) for v in (0, n, e, d, p, q, dp, dq, qinv))
    der = b"\x30" + _der_len(len(body)) + body
    text = base64.encodebytes(der).decode()
    return f"-----BEGIN RSA PRIVATE KEY-----\n{text}-----END RSA PRIVATE KEY-----\n"


# ------------------------------------------------------------------ the signer


def test_a_key_whose_crt_numbers_do_not_fit_is_a_configuration_error(
        rsa_key: ServiceKey, tmp_path: Path) -> None:
    """A key file damaged where the CRT parameters are (dp, dq, qinv: what signing uses) was
    taken when read and failed only at the first token grant, as an `auth` failure of every
    call; openssl's RSA_check_key refuses it, and the load must too."""
    k = load_pem(rsa_key.pem)
    damaged = {
        "dp": pkcs1_pem(k.n, k.e, k.d, k.p, k.q, k.dp ^ 2, k.dq, k.qinv),
        "dq": pkcs1_pem(k.n, k.e, k.d, k.p, k.q, k.dp, k.dq + 2, k.qinv),
        "qinv": pkcs1_pem(k.n, k.e, k.d, k.p, k.q, k.dp, k.dq, k.qinv - 1),
        # n = p * q holds, but p and q are no primes of an RSA key
        "factors": pkcs1_pem(k.n, k.e, k.d, k.p * k.q, 1, k.dp, k.dq, 0),
        # numbers that sign right but outside their ranges (RFC 8017 3.2): a 64 KiB file's
        # exponent of a hundred thousand bits makes every signature slow
        "e": pkcs1_pem(k.n, k.e + (k.p - 1) * (k.q - 1) * (1 << 100000), k.d, k.p, k.q, k.dp,
                       k.dq, k.qinv),
        "dp range": pkcs1_pem(k.n, k.e, k.d, k.p, k.q, k.dp + (k.p - 1) * (1 << 100000), k.dq,
                              k.qinv),
    }
    for what, pem in damaged.items():
        with pytest.raises(RsaKeyError, match="do not fit together"):
            load_pem(pem)
        path = tmp_path / f"{what}.json"
        path.write_bytes(orjson.dumps(rsa_key.account("https://oauth2.googleapis.com/token",
                                                      private_key=pem)))
        with pytest.raises(GoogleConfigError, match="private_key: the RSA key's parameters"):
            read_file(str(path))
        with pytest.raises(ConfigError) as caught:
            config.loads(f'[providers.v]\nkind = "vertex"\nregion = "us-east5"\n'
                         f'google_credentials_file = "{path}"\n' + MODEL, env={})
        assert any(p.startswith("providers.v.google_credentials_file: ") and "private_key"
                   in p for p in caught.value.problems), caught.value.problems
    # the sound key, in the same PKCS#1 form, still loads
    assert load_pem(pkcs1_pem(k.n, k.e, k.d, k.p, k.q, k.dp, k.dq, k.qinv)).n == k.n


# ------------------------------------------------------------------ locations


@pytest.mark.parametrize(("region", "host"), [
    ("us", "https://aiplatform.us.rep.googleapis.com"),
    ("eu", "https://aiplatform.eu.rep.googleapis.com"),
    ("global", "https://aiplatform.googleapis.com"),
    ("europe-west1", "https://europe-west1-aiplatform.googleapis.com"),
])
def test_multi_region_locations_have_their_endpoints(region: str, host: str) -> None:
    """Vertex AI's multi-region locations "us" and "eu" (Claude's newest models are served
    only there and on "global") were refused as no location; their endpoint is the
    representative one, aiplatform.<location>.rep.googleapis.com, as the Anthropic SDK's
    AnthropicVertex(region="us") calls."""
    cfg = config.loads(f'[providers.v]\nkind = "vertex"\nregion = "{region}"\n'
                       'project = "p-123456"\n' + MODEL, env={"GCE_METADATA_HOST": "127.0.0.1:9"})
    assert cfg.providers["v"].region == region
    assert cfg.providers["v"].base_url == host


async def test_claude_on_the_us_multi_region(
        fake_vertex: Callable[..., Awaitable[FakeVertex]],
        fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]], http_client: HttpClient,
        rsa_key: ServiceKey, tmp_path: Path) -> None:
    vertex = await fake_vertex(location="us")
    provider = await signed_provider(vertex, fake_google_auth, rsa_key, tmp_path,
                                     http_client, region="us")
    result = await provider.complete(HELLO, CLAUDE, LIMITS)
    assert result.body["choices"][0]["message"]["content"] == "Hello from Claude on Vertex"
    assert vertex.requests[-1].path == (f"/v1/projects/{PROJECT}/locations/us/publishers/"
                                        "anthropic/models/claude-sonnet-4-5@20250929:rawPredict")


# ------------------------------------------------------------------ embeddings


async def test_embedding_calls_stay_under_the_20000_tokens_a_call_takes(
        fake_vertex: Callable[..., Awaitable[FakeVertex]],
        fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]], http_client: HttpClient,
        rsa_key: ServiceKey, tmp_path: Path) -> None:
    """Vertex's text embeddings take 250 texts a call and 20,000 input tokens a call (a 400
    beyond): 250 texts of 100 words each were sent in one call and refused, so an ordinary
    batch of a RAG indexer failed; the texts are now spread over calls by an estimate of
    their tokens too."""
    vertex = await fake_vertex()
    provider = await signed_provider(vertex, fake_google_auth, rsa_key, tmp_path,
                                     http_client)
    texts = [f"passage {i} " + "lorem ipsum dolor sit amet " * 20 for i in range(250)]
    result = await provider.embed({"input": texts, "model": "text-embedding-005"}, EMBED,
                                  LIMITS)
    assert [d["index"] for d in result.body["data"]] == list(range(250))
    calls = vertex.calls("google")
    assert len(calls) >= 2
    assert [c.body["instances"][0]["content"] for c in calls[:1]] == [texts[0]]
    sent = [i["content"] for c in calls for i in c.body["instances"]]
    assert sorted(sent) == sorted(texts)
    assert all(sum(len(i["content"].split()) for i in c.body["instances"]) <= 20000
               for c in calls)
    assert result.body["usage"]["prompt_tokens"] == sum(len(t.split()) for t in texts)


# ------------------------------------------------------------------ the metadata server


async def test_a_metadata_server_that_served_and_then_does_not_answer_is_transient(
        fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]],
        http_client: HttpClient) -> None:
    """A metadata server not answering was taken for a host without one (`auth`: every model
    of the provider closed for auth_open_seconds) even after it had handed out tokens: on
    Compute Engine or GKE it is a moment's trouble (google-auth tries five times), so once
    it has answered, not answering is `transient` (a connection failure the models' breakers
    count); a host where it never answered still fails as auth, fast."""
    auth = await fake_google_auth()
    clock = ManualClock()
    tokens = open_source(choose_source({"GCE_METADATA_HOST": auth.host}), client=http_client,
                         clock=clock)
    assert (await tokens.get()).token == auth.issued[0]
    await auth.close()  # the metadata server goes away (a restart, a moment's overload)
    clock.advance(3600)
    with pytest.raises(GoogleCredentialsError) as caught:
        await tokens.get()
    assert caught.value.transient, str(caught.value)
    assert "metadata server" in str(caught.value)
    # never answered, and its name does not resolve: the chain's last resort on a host
    # without one, not transient (see the test below)
    if not _resolves("metadata.invalid"):
        nowhere = open_source(choose_source({"GCE_METADATA_HOST": "metadata.invalid"}),
                              client=http_client, clock=ManualClock())
        with pytest.raises(GoogleCredentialsError) as caught:
            await nowhere.get()
        assert not caught.value.transient


def _resolves(name: str) -> bool:
    """Whether `name` resolves, or the resolver fails for a moment (EAI_AGAIN): either way
    no proof that there is no such host here."""
    try:
        socket.getaddrinfo(name, 80)
    except socket.gaierror as exc:
        return exc.errno == socket.EAI_AGAIN
    return True


async def test_a_metadata_server_not_answering_yet_is_no_auth_block(
        fake_vertex: Callable[..., Awaitable[FakeVertex]], fake_openai: Any,
        start_daemon: Any, http_client: HttpClient) -> None:
    """The metadata server's name resolving (metadata.google.internal on Compute Engine and
    GKE, or the host GCE_METADATA_HOST names) and its port not answering is a metadata
    server not ready yet (GKE's, for the first seconds of a pod: Google tells applications
    to retry), not a host without one: it was `auth`, which closed every model of the
    provider for auth_open_seconds (an hour by default) from the first call after a pod's
    start. Now a connection failure; only a name that does not resolve is auth."""
    tokens = open_source(choose_source({"GCE_METADATA_HOST": "127.0.0.1:1"}),
                         client=http_client, clock=ManualClock())
    with pytest.raises(GoogleCredentialsError) as caught:
        await tokens.get()
    assert caught.value.transient
    assert "last source of the credential chain" in str(caught.value)

    vertex = await fake_vertex()
    backup = await fake_openai()
    d = await start_daemon(daemon_config(vertex, backup, f'project = "{PROJECT}"'),
                           env={"GCE_METADATA_HOST": "127.0.0.1:1"})
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-failoverd-model"] == "backup/gpt"
    assert raw.headers["x-failoverd-failover"] == (
        "vertex/sonnet>vertex/flash:connection,vertex/flash>backup/gpt:connection")
    assert vertex.requests == []


# ------------------------------------------------------------------ model ids


async def test_resource_names_serve_as_model_ids(
        fake_vertex: Callable[..., Awaitable[FakeVertex]],
        fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]], http_client: HttpClient,
        rsa_key: ServiceKey, tmp_path: Path) -> None:
    """A Gemini model named by its resource path (publishers/google/models/...) was served,
    a Claude model so named was sent to publisher google (the name did not start with
    "claude"): a 404; and a gemini-embedding model so named got 250 texts a call, which it
    refuses (it takes one)."""
    vertex = await fake_vertex()
    provider = await signed_provider(vertex, fake_google_auth, rsa_key, tmp_path,
                                     http_client)
    claude = ModelConfig(id="v/sonnet", provider="v",
                         name="publishers/anthropic/models/claude-sonnet-4-5@20250929")
    result = await provider.complete(HELLO, claude, LIMITS)
    assert result.body["choices"][0]["message"]["content"] == "Hello from Claude on Vertex"
    assert vertex.requests[-1].path.endswith(
        "/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict")
    chunks = [c.data async for c in provider.stream({**HELLO, "stream": True}, claude,
                                                    LIMITS)]
    assert chunks and vertex.requests[-1].path.endswith(
        "/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict")
    embed = ModelConfig(id="v/embed", provider="v",
                        name="publishers/google/models/gemini-embedding-001",
                        capabilities=frozenset({"embeddings"}))
    result = await provider.embed({"input": ["one", "two", "three"]}, embed, LIMITS)
    assert len(result.body["data"]) == 3
    assert [len(c.body["instances"]) for c in vertex.calls("google")] == [1, 1, 1]
    assert vertex.requests[-1].path.endswith("/publishers/google/models/"
                                             "gemini-embedding-001:predict")


# ------------------------------------------------------------------ errors


async def test_a_failed_precondition_fails_over(
        fake_vertex: Callable[..., Awaitable[FakeVertex]],
        fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]], fake_openai: Any,
        start_daemon: Any, rsa_key: ServiceKey, tmp_path: Path) -> None:
    """Vertex's bare 400 FAILED_PRECONDITION "Precondition check failed." is about the
    project's state (a partner model not enabled, its terms not accepted, an organization
    policy: google.rpc's "do not retry until the system state has been fixed"), never the
    request: it was a bad_request, answered to the client as its own 400 with no failover,
    though the next model takes the same request."""
    vertex, _, backup, d = await started(fake_vertex, fake_google_auth, fake_openai,
                                         start_daemon, rsa_key, tmp_path)
    vertex.push("precondition")
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-failoverd-model"] == "vertex/flash"
    assert raw.headers["x-failoverd-failover"] == "vertex/sonnet>vertex/flash:not_found"
    assert raw.parse().choices[0].message.content == "Hello from Gemini on Vertex"
    assert backup.requests == []
    # the model is out for max_open_seconds; its provider's other models are not
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-failoverd-model"] == "vertex/flash"
    assert len(vertex.calls("anthropic")) == 1


# ------------------------------------------------------------------ the project


def test_the_project_from_google_cloud_project(rsa_key: ServiceKey, tmp_path: Path) -> None:
    """google-auth's default() takes the project from GOOGLE_CLOUD_PROJECT (or the older
    GCLOUD_PROJECT) before the credentials' own: failoverd asked for `project` on a host
    whose metadata server serves the tokens and whose environment names the project, and
    billed the key file's project over the one the environment names."""
    env = {"GCE_METADATA_HOST": "127.0.0.1:9", "GOOGLE_CLOUD_PROJECT": "env-project-1"}
    body = '[providers.v]\nkind = "vertex"\nregion = "us-east5"\n'
    assert config.loads(body + MODEL, env=env).providers["v"].project == "env-project-1"
    legacy = {"GCE_METADATA_HOST": "127.0.0.1:9", "GCLOUD_PROJECT": "legacy-project-1"}
    assert config.loads(body + MODEL, env=legacy).providers["v"].project == \
        "legacy-project-1"
    sa = tmp_path / "sa.json"
    sa.write_bytes(orjson.dumps(rsa_key.account("https://oauth2.googleapis.com/token")))
    with_file = body + f'google_credentials_file = "{sa}"\n'
    assert config.loads(with_file + MODEL, env=env).providers["v"].project == "env-project-1"
    # the provider's own project wins over all
    assert config.loads(with_file + 'project = "mine-123"\n' + MODEL,
                        env=env).providers["v"].project == "mine-123"
    with pytest.raises(ConfigError) as caught:
        config.loads(body + MODEL, env={**env, "GOOGLE_CLOUD_PROJECT": "Not A Project"})
    assert any(p.startswith("providers.v.project: environment variable GOOGLE_CLOUD_PROJECT "
                            "is no Google Cloud project id") for p in caught.value.problems), \
        caught.value.problems



def test_a_bad_project_and_a_bad_credentials_file_are_both_reported() -> None:
    """A malformed `project` ended the provider's checks: a missing credentials file was
    reported only at the next load, after the project was fixed (every problem of a
    configuration is reported at once, by key path)."""
    with pytest.raises(ConfigError) as caught:
        config.loads('[providers.v]\nkind = "vertex"\nregion = "us-east5"\n'
                     'project = "Bad Project"\ngoogle_credentials_file = "/nope/sa.json"\n'
                     + MODEL, env={})
    problems = caught.value.problems
    assert any(p.startswith("providers.v.project: must be a Google Cloud project id")
               for p in problems), problems
    assert "providers.v.google_credentials_file: /nope/sa.json does not exist" in problems, \
        problems
    assert not any("is required" in p for p in problems), problems



async def test_a_cancelled_operation_is_the_backends_and_fails_over(
        fake_vertex: Callable[..., Awaitable[FakeVertex]],
        fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]], fake_openai: Any,
        start_daemon: Any, rsa_key: ServiceKey, tmp_path: Path) -> None:
    """Vertex answers 499 CANCELLED "The operation was cancelled." (reason backendError)
    when its backend gives up under load: not the client's cancelling (failoverd's own
    would never be read), and no fault of the request. As a 4xx it was a bad_request,
    answered to the client with no retry and no failover."""
    vertex, _, backup, d = await started(fake_vertex, fake_google_auth, fake_openai,
                                         start_daemon, rsa_key, tmp_path)
    vertex.push("cancelled", "cancelled")
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = [c async for c in raw.parse()]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Hello from Gemini on Vertex"
    assert raw.headers["x-failoverd-failover"] == "vertex/sonnet>vertex/flash:server_error"
    assert backup.requests == []



# ------------------------------------------------------------------ time limits


async def test_the_token_fetch_counts_in_the_attempts_time_limit(
        fake_vertex: Callable[..., Awaitable[FakeVertex]], http_client: HttpClient,
        rsa_key: ServiceKey, tmp_path: Path) -> None:
    """A chat or embeddings call waited for its access token outside the attempt's time
    limit (`total`, already cut to the request's deadline): a token endpoint that did not
    answer held every request 10 s (the token call's own limit) past its deadline, then
    failed it as a connection failure. The fetch now counts in the attempt: a timeout when
    the attempt's time is up."""
    stalled = asyncio.Event()

    async def token(request: web.Request) -> web.Response:
        await stalled.wait()  # never set: an endpoint that takes the call and never answers
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/token", token)
    runner, port = await serve_app(app)
    try:
        vertex = await fake_vertex()
        path = tmp_path / "sa.json"
        path.write_bytes(orjson.dumps(rsa_key.account(f"http://127.0.0.1:{port}/token")))
        cfg = config.loads(f'[providers.v]\nkind = "vertex"\nregion = "us-east5"\n'
                           f'base_url = "{vertex.url}"\ngoogle_credentials_file = "{path}"\n'
                           + MODEL, env={})
        provider = make_provider(cfg.providers["v"], http_client)
        short = AttemptLimits(total=0.3, connect=0.3, first_token=0.3, idle=0.3)
        loop = asyncio.get_running_loop()
        for call in (lambda: provider.complete(HELLO, GEMINI, short),
                     lambda: provider.embed({"input": ["a"]}, EMBED, short)):
            started = loop.time()
            with pytest.raises(UpstreamError) as caught:
                await call()
            assert caught.value.reason is FailureReason.TIMEOUT, caught.value
            assert loop.time() - started < 2.0
        assert vertex.requests == []
    finally:
        stalled.set()
        await runner.cleanup()



async def test_google_cloud_quota_project_names_the_project_billed(
        fake_vertex: Callable[..., Awaitable[FakeVertex]],
        fake_google_auth: Callable[..., Awaitable[FakeGoogleAuth]], http_client: HttpClient,
        rsa_key: ServiceKey, tmp_path: Path) -> None:
    """google-auth's default() takes GOOGLE_CLOUD_QUOTA_PROJECT as the quota project
    (x-goog-user-project) of any credentials, the file's quota_project_id or none: it was
    ignored, so gcloud users who set it (as Google's ADC guide says, instead of
    `gcloud auth application-default set-quota-project`) were billed elsewhere or refused."""
    vertex = await fake_vertex()
    auth = await fake_google_auth(modulus=rsa_key.modulus, vertex=vertex)
    sa = tmp_path / "sa.json"
    sa.write_bytes(orjson.dumps(rsa_key.account(f"{auth.url}/token",
                                                quota_project_id="file-quota-1")))
    base = (f'[providers.v]\nkind = "vertex"\nregion = "us-east5"\nbase_url = '
            f'"{vertex.url}"\nproject = "{PROJECT}"\n')
    for extra, env in ((f'google_credentials_file = "{sa}"\n', {}),
                       ("", {"GCE_METADATA_HOST": auth.host})):
        env = {**env, "GOOGLE_CLOUD_QUOTA_PROJECT": "env-quota-1"}
        cfg = config.loads(base + extra + MODEL, env=env)
        provider = make_provider(cfg.providers["v"], http_client)
        await provider.complete(HELLO, GEMINI, LIMITS)
        assert vertex.requests[-1].headers["x-goog-user-project"] == "env-quota-1"
    # without it, the file's own
    cfg = config.loads(base + f'google_credentials_file = "{sa}"\n' + MODEL, env={})
    await make_provider(cfg.providers["v"], http_client).complete(HELLO, GEMINI, LIMITS)
    assert vertex.requests[-1].headers["x-goog-user-project"] == "file-quota-1"
