"""Adversarial review of the AWS credential chain (awscreds.py, awsmetadata.py): secrets kept
out of logs, errors and /v1/status; bounded reads of the endpoints' answers and the token file;
the refresh's pauses against the old credentials' expiry and a wall clock that steps back;
credentials outliving a reload; the credentials file's BOM and an atomically swapped symlink;
a stop with a fetch in flight. Every endpoint is a real aiohttp fake on 127.0.0.1, never the
instance metadata service's real address."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from failoverd.awscreds import (
    AwsConfigError,
    AwsCredentialsError,
    ContainerEndpoint,
    InstanceMetadata,
    SharedFile,
    SharedFileCredentials,
    choose_source,
    open_source,
    read_profile,
)
from failoverd.clock import ManualClock
from failoverd.http1 import HttpClient
from tests.fakes.awsmeta import FakeMetadata, fake_metadata, iso
from tests.fakes.base import serve_app
from tests.fakes.bedrock import FakeBedrock, fake_bedrock
from tests.test_awscreds import write_profiles
from tests.test_bedrock_e2e import daemon_config
from tests.test_provider_bedrock import HELLO

__all__ = ["fake_bedrock", "fake_metadata"]  # the fixtures

NO_IMDS = {"AWS_EC2_METADATA_DISABLED": "true"}
PASSWORD = "hunter2-userinfo-password"  # noqa: S105 - a URL's userinfo in the tests


def container(url: str, clock: Any, client: HttpClient, token: str = "") -> Any:
    return open_source(ContainerEndpoint(url, token), client=client, clock=clock)


# ------------------------------------------------------------------ the refresh's pauses


async def test_a_failed_refresh_does_not_pause_asking_past_the_old_ones_expiry(
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], http_client: HttpClient) -> None:
    """A refresh fails 10 s before the current credentials expire: they serve on, and the
    next try is due in a minute. Once they expired the endpoint must be asked again (the
    README: at most every 5 s), not refused for the rest of that minute."""
    clock = ManualClock(wall=float(int(time.time())))
    t0 = clock.time()
    fake = await fake_metadata()
    fake.rotate(1, t0 + 3600)
    source = container(f"{fake.url}/creds", clock, http_client, fake.auth_token)
    await source.get()
    fake.fail = 500
    clock.advance(3600 - 10)
    assert (await source.get()).access_key_id == "ASIAFAKEMETADATA0001"  # the old ones
    assert len(fake.calls) == 2
    fake.fail, _ = 0, fake.rotate(2, t0 + 7200)
    clock.advance(15)  # expired 5 s ago; the endpoint answers again
    assert (await source.get()).access_key_id == "ASIAFAKEMETADATA0002"
    assert len(fake.calls) == 3


class SteppingClock:
    """A clock whose wall time can step back (an NTP correction), its monotonic time not."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = float(int(time.time()))

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


async def test_a_wall_clock_stepping_back_does_not_stretch_the_fail_fast_pause(
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], http_client: HttpClient) -> None:
    """The pause after a failed fetch is 5 s of elapsed time: a wall clock set back an hour
    meanwhile must not make every call fail for an hour without asking the endpoint."""
    clock = SteppingClock()
    fake = await fake_metadata(fail=500)
    source = container(f"{fake.url}/creds", clock, http_client, fake.auth_token)
    with pytest.raises(AwsCredentialsError, match="HTTP 500"):
        await source.get()
    clock.wall -= 3600
    clock.advance(6)
    fake.fail, _ = 0, fake.rotate(2, clock.wall + 3600)
    assert (await source.get()).access_key_id == "ASIAFAKEMETADATA0002"


# ------------------------------------------------------------------ secrets


async def test_a_url_userinfo_never_shows_in_errors_or_logs(
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], http_client: HttpClient,
        caplog: pytest.LogCaptureFixture) -> None:
    """A full URI or an IMDS endpoint with ``user:password@``: the client never sends it, and
    no error, log line or configuration problem may show it."""
    fake = await fake_metadata()
    host = fake.url.removeprefix("http://")
    clock = ManualClock(wall=float(int(time.time())))
    texts: list[str] = []
    with caplog.at_level(logging.INFO, logger="failoverd"):
        source = container(f"http://user:{PASSWORD}@{host}/creds", clock, http_client,
                           fake.auth_token)
        await source.get()  # the first fetch is logged with the endpoint
        fake.fail = 500
        source = container(f"http://user:{PASSWORD}@{host}/creds?again", clock, http_client,
                           fake.auth_token)
        with pytest.raises(AwsCredentialsError) as err:
            await source.get()
        texts.append(str(err.value))
        imds = open_source(InstanceMetadata(f"http://user:{PASSWORD}@127.0.0.1:1"),
                           client=http_client, clock=clock)
        with pytest.raises(AwsCredentialsError) as err:
            await imds.get()
        texts.append(str(err.value))
    for env in ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": f"ftp://user:{PASSWORD}@127.0.0.1/x"},
                {"AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://user:{PASSWORD}@10.0.0.1/x"},
                {"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"ftp://user:{PASSWORD}@127.0.0.1"}):
        with pytest.raises(AwsConfigError) as config_err:
            choose_source(env)
        texts.append(str(config_err.value))
    texts.append(caplog.text)
    assert len(texts) == 6
    for text in texts:
        assert PASSWORD not in text, text


async def test_no_secret_in_logs_or_status_through_a_failing_refresh(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], fake_openai: Any,
        start_daemon: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The daemon signs with a container's credentials, then the endpoint refuses: the secret
    key, the session token and the endpoint's authorization token are never in a log line or
    in /v1/status."""
    meta = await fake_metadata()
    fake = await fake_bedrock(access_key=meta.access_key, secret_key=meta.secret_key,
                              session_token=meta.session_token)
    backup = await fake_openai()
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{meta.url}/creds",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN": meta.auth_token}
    with caplog.at_level(logging.DEBUG):
        d = await start_daemon(daemon_config(fake, backup.url), env=env)
        raw = await d.openai.chat.completions.with_raw_response.create(
            model="default", messages=HELLO["messages"])
        assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
        # credentials Bedrock no longer takes, and an endpoint that refuses new ones
        secret, token = meta.secret_key, meta.session_token
        meta.auth_token = "rotated-by-the-agent"
        fake.secret_key = "another/secret"
        raw = await d.openai.chat.completions.with_raw_response.create(
            model="default", messages=HELLO["messages"])
        assert raw.headers["x-failoverd-model"] == "backup/gpt"
        status = (await d.http.get("/v1/status")).text
    events = repr([(e.type, e.fields) for e in d.sup.service.bus.recent()])
    assert "provider:credentials" in events or "bedrock" in events
    runtime = d.sup.service.runtime
    reprs = repr((runtime.config, runtime.providers,
                  vars(runtime.providers["bedrock"]).get("_credentials")))
    for text in (caplog.text, status, events, reprs):
        for secret_text in (secret, token, env["AWS_CONTAINER_AUTHORIZATION_TOKEN"]):
            assert secret_text not in text


# ------------------------------------------------------------------ bounded reads


async def _serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> tuple[
        web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/creds", handler)
    runner, port = await serve_app(app)
    return runner, f"http://127.0.0.1:{port}/creds"


async def test_an_endpoints_answer_is_read_up_to_a_bound(http_client: HttpClient) -> None:
    """Credentials are about a kilobyte: an endpoint answering megabytes (a wrong URL, a
    broken agent) is refused, not buffered and parsed whole."""
    creds = {"AccessKeyId": "ASIAHUGE", "SecretAccessKey": "s", "Token": "t",
             "Expiration": iso(time.time() + 3600)}
    body = orjson.dumps(creds)[:-1] + b" " * (4 << 20) + b"}"

    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    runner, url = await _serve(huge)
    try:
        source = container(url, ManualClock(wall=time.time()), http_client)
        with pytest.raises(AwsCredentialsError, match="too long"):
            await source.get()
    finally:
        await runner.cleanup()


async def test_the_token_file_is_read_up_to_a_bound(
        tmp_path: Path, fake_metadata: Callable[..., Awaitable[FakeMetadata]],
        http_client: HttpClient) -> None:
    """AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE naming a wrong, large file: refused before any
    call, never read whole into a header."""
    fake = await fake_metadata()
    path = tmp_path / "token"
    path.write_bytes(b"x" * (1 << 20))
    source = open_source(ContainerEndpoint(f"{fake.url}/creds", "", str(path)),
                         client=http_client, clock=ManualClock(wall=time.time()))
    with pytest.raises(AwsCredentialsError, match="too long"):
        await source.get()
    assert fake.calls == []


# ------------------------------------------------------------------ the credentials file


def test_a_credentials_file_with_a_byte_order_mark(tmp_path: Path) -> None:
    """Windows editors write a BOM: the file's first line is still its first section."""
    path = tmp_path / "credentials"
    path.write_bytes(b"\xef\xbb\xbf[default]\naws_access_key_id = AKIABOM\n"
                     b"aws_secret_access_key = s\n")
    assert choose_source({"AWS_SHARED_CREDENTIALS_FILE": str(path), **NO_IMDS}) == \
        SharedFile(str(path), "default")
    assert read_profile(str(path), "default").access_key_id == "AKIABOM"


async def test_a_symlinked_file_swapped_atomically_is_read_again(tmp_path: Path) -> None:
    """Kubernetes' secret volumes: ``credentials -> ..data/credentials`` and ``..data``
    swapped to a new directory by rename: the new file is read at the next look."""
    for n in (1, 2):
        (tmp_path / f"v{n}").mkdir()
        write_profiles(tmp_path / f"v{n}" / "credentials", default=(f"AKIAV{n}", "s", ""))
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "credentials").symlink_to("..data/credentials")
    clock = ManualClock()
    source = SharedFileCredentials(SharedFile(str(tmp_path / "credentials"), "default"), clock)
    assert (await source.get()).access_key_id == "AKIAV1"
    (tmp_path / "..data_tmp").symlink_to("v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    clock.advance(5)
    assert (await source.get()).access_key_id == "AKIAV2"


# ------------------------------------------------------------------ reload and stop


def _instance_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str) -> None:
    """The process's environment as a reload reads it: the instance role only."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", url)


async def test_a_reload_keeps_the_temporary_credentials_it_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], fake_openai: Any,
        start_daemon: Any) -> None:
    """The instance role's credentials are good for hours; the metadata service then has a
    bad moment, and a reload (any configuration change) comes in. The rebuilt provider must
    sign with the credentials still valid, as a failed refresh would, not fail every call as
    ``auth`` until the service is back."""
    meta = await fake_metadata()
    fake = await fake_bedrock(access_key=meta.access_key, secret_key=meta.secret_key,
                              session_token=meta.session_token)
    backup = await fake_openai()
    _instance_env(monkeypatch, tmp_path, meta.url)
    d = await start_daemon(daemon_config(fake, backup.url), env=dict(os.environ))
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
    calls = len(meta.calls)
    meta.fail = 503
    assert d.sup.reload()
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-model"] == "bedrock/sonnet"
    assert len(meta.calls) == calls  # nothing to fetch: they are valid for hours


async def test_the_daemon_stops_with_a_fetch_in_flight(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], fake_openai: Any,
        start_daemon: Any) -> None:
    """A container endpoint that never answers while the daemon is told to stop: the stop
    ends in bounded time and no task is left behind."""
    meta = await fake_metadata(hang=True)
    fake = await fake_bedrock()
    backup = await fake_openai()
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{meta.url}/creds",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN": meta.auth_token}
    d = await start_daemon(daemon_config(fake, backup.url), env=env)
    before = asyncio.all_tasks()
    request = asyncio.create_task(d.openai.chat.completions.create(
        model="default", messages=HELLO["messages"]))
    for _ in range(200):
        if meta.calls:
            break
        await asyncio.sleep(0.01)
    assert meta.calls == [("GET", "/creds")]
    started = time.monotonic()
    await d.stop()
    assert time.monotonic() - started < 3
    await asyncio.wait({request}, timeout=3)
    assert request.done()
    request.exception() if not request.cancelled() else None  # retrieved, whatever it was
    left = {t for t in asyncio.all_tasks() - before if not t.done()
            and t is not asyncio.current_task()}
    assert not any("failoverd" in repr(t.get_coro()) for t in left), left


# ------------------------------------------------------------------ more of the same review


@pytest.mark.parametrize(("url", "allowed"), [
    ("http://127.0.0.2:8080/creds", True),
    ("http://[::1]/creds", True),
    ("http://[0:0:0:0:0:0:0:1]/creds", True),
    ("http://localhost/creds", True),  # as botocore: the hosts file's, never DNS's
    ("http://[FD00:EC2::23]/creds", True),  # the host is compared lower-cased
    ("https://creds.example.com/get", True),  # TLS: any host, as the Java and JS SDKs
    # what a parser differential would smuggle past a check: the check and the client use
    # the same Target, so the host checked is the host called
    ("http://127.0.0.1:80@evil.example/creds", False),
    ("http://127.0.0.1\\@evil.example/creds", False),
    ("http://evil.example#@127.0.0.1/creds", False),
    ("http://127.0.0.1.nip.io/creds", False),
    ("http://2130706433/creds", False),  # 127.0.0.1 as a number: refused, not resolved
    ("http://127.1/creds", False),
    ("http://0.0.0.0/creds", False),
    ("http://169.254.169.254/latest/meta-data/", False),
    ("http://[::ffff:169.254.170.2]/creds", False),
    ("http://localhost./creds", False),
])
def test_the_full_uri_allow_list(url: str, allowed: bool) -> None:
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": url, **NO_IMDS}
    if allowed:
        assert choose_source(env) == ContainerEndpoint(url)
    else:
        with pytest.raises(AwsConfigError, match="over plain http"):
            choose_source(env)


def test_a_relative_uri_stays_on_the_ecs_agent() -> None:
    """botocore glues the relative URI to ``http://169.254.170.2``: ``@evil.example/x`` would
    make evil.example the host; a missing leading slash is added here instead."""
    for relative in ("@evil.example/x", "//evil.example/x", ":80@evil.example/x"):
        source = choose_source({"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": relative})
        assert isinstance(source, ContainerEndpoint)
        assert source.url.startswith("http://169.254.170.2/"), source.url


async def test_a_redirect_is_not_followed_with_the_token(
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], http_client: HttpClient) -> None:
    elsewhere = await fake_metadata()

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{elsewhere.url}/creds")

    runner, url = await _serve(redirect)
    try:
        source = container(url, ManualClock(wall=time.time()), http_client, "the-token")
        with pytest.raises(AwsCredentialsError, match="refused: HTTP 302"):
            await source.get()
    finally:
        await runner.cleanup()
    assert elsewhere.calls == []


async def test_an_error_answer_echoing_the_token_does_not_carry_it_on(
        tmp_path: Path, http_client: HttpClient, caplog: pytest.LogCaptureFixture) -> None:
    """Servers and proxies echo a bad request's headers in their error text; the
    authorization token (from the variable or the file) must not reach the error, the log
    or /v1/status through it."""
    token = "eks-pod-identity-token-0123456789"  # noqa: S105 - the fake's

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"message": "invalid token: "
                                  + request.headers.get("Authorization", "")}, status=400)

    runner, url = await _serve(echo)
    path = tmp_path / "token"
    path.write_text(token + "\n")
    try:
        with caplog.at_level(logging.INFO, logger="failoverd"):
            for source in (container(url, ManualClock(wall=time.time()), http_client, token),
                           open_source(ContainerEndpoint(url, "", str(path)),
                                       client=http_client, clock=ManualClock())):
                with pytest.raises(AwsCredentialsError, match="invalid token") as err:
                    await source.get()
                assert token not in str(err.value)
    finally:
        await runner.cleanup()
    assert token not in caplog.text


@pytest.mark.parametrize("expiration", [
    "2099-12-07T20:00:00Z", "2099-12-07T20:00:00+00:00", "2099-12-07T20:00:00.123Z",
    "2099-12-07T20:00:00.123456789Z", "2099-12-07T21:00:00+01:00", "2099-12-07T20:00:00",
    "2099-12-07t20:00:00z",  # RFC 3339 allows lower case, botocore's dateutil reads it
])
def test_expiration_formats(expiration: str) -> None:
    from failoverd.awsmetadata import parse_credentials

    body = orjson.dumps({"AccessKeyId": "A", "SecretAccessKey": "S", "Token": "T",
                         "Expiration": expiration})
    assert parse_credentials(body, "the test").expires == 4100356800.0 + (
        0.123 if ".123Z" in expiration else 0.123456 if ".123456789" in expiration else 0)


async def test_many_calls_without_credentials_wait_a_bounded_time_on_one_fetch(
        http_client: HttpClient) -> None:
    """An instance metadata service that never answers and 30 calls at once: one token call,
    all of them failed within the 1 s limit (not one after another)."""
    calls: list[str] = []

    async def hang(request: web.Request) -> web.Response:
        calls.append(request.path)
        await asyncio.sleep(3600)
        raise AssertionError  # pragma: no cover

    app = web.Application()
    app.router.add_put("/latest/api/token", hang)
    runner, port = await serve_app(app)
    try:
        source = open_source(InstanceMetadata(f"http://127.0.0.1:{port}"), client=http_client,
                             clock=ManualClock(wall=time.time()))
        started = time.monotonic()
        results = await asyncio.gather(*(source.get() for _ in range(30)),
                                       return_exceptions=True)
        assert time.monotonic() - started < 2
    finally:
        await runner.cleanup()
    assert all(isinstance(r, AwsCredentialsError) for r in results)
    assert calls == ["/latest/api/token"]


async def test_a_rebuilt_provider_shares_the_fetch_under_way(
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], http_client: HttpClient) -> None:
    """A reload mid-refresh: the new provider's source is the old one's, so its calls wait
    for the fetch under way instead of starting another."""
    meta = await fake_metadata()
    clock = ManualClock(wall=float(int(time.time())))
    source = ContainerEndpoint(f"{meta.url}/creds", meta.auth_token)
    old = open_source(source, client=http_client, clock=clock)
    new = open_source(ContainerEndpoint(f"{meta.url}/creds", meta.auth_token),
                      client=http_client, clock=clock)
    assert new is old
    got = await asyncio.gather(old.get(), new.get(), new.get())
    assert len({id(c) for c in got}) == 1 and meta.calls == [("GET", "/creds")]


def test_credentials_file_syntax_as_botocore_reads_it(tmp_path: Path) -> None:
    """Key names in any case, no spaces around '=', full-line comments, a profile named
    ``profile x`` only as such (the credentials file has no ``profile`` prefix); quotes and
    inline comments are part of the value, as in botocore's RawConfigParser."""
    path = tmp_path / "credentials"
    path.write_text("# a comment\n; another\n[default]\nAWS_ACCESS_KEY_ID=AKIAUPPER\n"
                    "Aws_Secret_Access_Key =  s1  \n\n[profile x]\naws_access_key_id = \"AKIAQ\"\n"
                    "aws_secret_access_key = s2 ; inline\n")
    creds = read_profile(str(path), "default")
    assert (creds.access_key_id, creds.secret_access_key) == ("AKIAUPPER", "s1")
    creds = read_profile(str(path), "profile x")
    assert (creds.access_key_id, creds.secret_access_key) == ('"AKIAQ"', "s2 ; inline")
    with pytest.raises(AwsCredentialsError, match=r"has no profile \[x\]"):
        read_profile(str(path), "x")


@pytest.mark.parametrize(("fail", "state"), [(503, "ok"), (403, "auth")])
async def test_an_endpoint_failing_for_a_moment_does_not_block_the_provider_for_an_hour(
        fake_bedrock: Callable[..., Awaitable[FakeBedrock]],
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], fake_openai: Any,
        start_daemon: Any, fail: int, state: str) -> None:
    """A container's agent that is not ready yet (or restarts) answers 503 or nothing: that
    says nothing of the credentials, so it must not block every model of the provider for
    auth_open_seconds (an hour) as a refused key does; the models' breakers count it. A
    refusal (403: the token is wrong) is auth."""
    meta = await fake_metadata(fail=503 if fail == 503 else 0)
    fake = await fake_bedrock(access_key=meta.access_key, secret_key=meta.secret_key,
                              session_token=meta.session_token)
    backup = await fake_openai()
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{meta.url}/creds",
           "AWS_CONTAINER_AUTHORIZATION_TOKEN": meta.auth_token if fail == 503 else "wrong"}
    d = await start_daemon(daemon_config(fake, backup.url), env=env)
    raw = await d.openai.chat.completions.with_raw_response.create(
        model="default", messages=HELLO["messages"])
    assert raw.headers["x-failoverd-model"] == "backup/gpt"
    reason = "connection" if fail == 503 else "auth"
    assert raw.headers["x-failoverd-failover"] == f"bedrock/sonnet>backup/gpt:{reason}"
    status = (await d.http.get("/v1/status")).json()
    assert status["providers"]["bedrock"]["credentials"] == state


async def test_which_failures_are_transient(
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], http_client: HttpClient) -> None:
    """A 5xx of the instance's role credentials is the service's trouble (transient); no
    instance metadata service at all (the chain's last resort: nothing listens) and a role
    the instance lacks are not, and fail as auth."""
    meta = await fake_metadata(fail=500)
    clock = ManualClock(wall=time.time())
    for endpoint, transient in ((meta.url, True), ("http://127.0.0.1:1", False)):
        source = open_source(InstanceMetadata(endpoint), client=http_client, clock=clock)
        with pytest.raises(AwsCredentialsError) as err:
            await source.get()
        assert err.value.transient is transient, str(err.value)
        with pytest.raises(AwsCredentialsError) as err:
            await source.get()  # the same, told again during the pause
        assert err.value.transient is transient


async def test_a_clock_ahead_at_boot_is_no_refusal(
        fake_metadata: Callable[..., Awaitable[FakeMetadata]], http_client: HttpClient) -> None:
    """A host that boots with its clock 7 hours ahead finds the role's credentials (6 hours
    left) expired: that is the clock's trouble, asked again once the pause is over and NTP
    set the clock, not a refusal that blocks the provider for an hour."""
    clock = SteppingClock()
    meta = await fake_metadata()
    meta.rotate(1, clock.wall + 6 * 3600)
    clock.wall += 7 * 3600
    source = open_source(InstanceMetadata(meta.url), client=http_client, clock=clock)
    with pytest.raises(AwsCredentialsError, match="expired already") as err:
        await source.get()
    assert err.value.transient
    clock.wall -= 7 * 3600  # synchronised
    clock.advance(5)
    assert (await source.get()).access_key_id == "ASIAFAKEMETADATA0001"


def _choose(env: dict[str, str]) -> object:
    return choose_source(env)


async def test_a_fifo_or_a_huge_file_as_the_credentials_file(tmp_path: Path) -> None:
    """AWS_SHARED_CREDENTIALS_FILE naming a FIFO (or a device): reading it at a load or
    reload would block the event loop until a writer comes, so it is refused at once; a file
    of megabytes is no credentials file either. (Run in a thread only to keep the test
    bounded; the daemon reads it on its loop.)"""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    task = asyncio.create_task(asyncio.to_thread(
        _choose, {"AWS_SHARED_CREDENTIALS_FILE": str(fifo), **NO_IMDS}))
    done, _ = await asyncio.wait({task}, timeout=1)
    if not done:
        with open(fifo, "w"):  # lets the blocked reader go
            pass
        await asyncio.wait({task})
        pytest.fail("reading the credentials file blocked on a FIFO")
    with pytest.raises(AwsConfigError, match="is not a regular file"):
        task.result()
    huge = tmp_path / "huge"
    huge.write_text("[default]\naws_access_key_id = A\naws_secret_access_key = S\n"
                    + "# padding\n" * 200_000)
    with pytest.raises(AwsConfigError, match="larger than 1 MiB"):
        choose_source({"AWS_SHARED_CREDENTIALS_FILE": str(huge), **NO_IMDS})
