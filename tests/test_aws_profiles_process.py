"""credential_process: a real command (a small Python script) run without a shell, its
Version 1 JSON read, run again before the Expiration on the injected clock, its failures told
with its standard error (bounded, secrets masked) and never its output."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from failoverd.awscreds import (
    AwsCredentials,
    AwsCredentialsError,
    CredentialProcess,
    choose_source,
    open_source,
)
from failoverd.awsprocess import mask
from failoverd.clock import ManualClock
from failoverd.http1 import HttpClient
from tests.test_aws_profiles import home

HELPER = '''
import json, sys, time, pathlib
state = pathlib.Path(sys.argv[1])
n = int(state.read_text()) + 1 if state.exists() else 1
state.write_text(str(n))
mode = sys.argv[2]
lasts = float(sys.argv[3]) if len(sys.argv) > 3 else 3600
out = {"Version": 1, "AccessKeyId": f"ASIAPROCESS{n:09d}",
       "SecretAccessKey": "process/Secret+Key" + "0" * 22, "SessionToken": f"process-token-{n}"}
if mode == "expiring":
    out["Expiration"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(sys.argv[4]) + lasts))
elif mode == "fail":
    print('{"AccessKeyId": "ASIASTDOUTNOTSHOWN", "SecretAccessKey": "stdout-secret"}')
    print("token expired for user bob: secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY "
          "please run sso-helper login", file=sys.stderr)
    sys.exit(3)
elif mode == "garbage":
    print("AccessKeyId=ASIAHALF SecretAccessKey=half-printed-secret")
    sys.exit(0)
elif mode == "v2":
    out["Version"] = 2
elif mode == "hang":
    time.sleep(30)
elif mode == "flood":
    sys.stdout.write("x" * 200_000)
    sys.exit(0)
print(json.dumps(out))
'''


@pytest.fixture
def helper(tmp_path: Path) -> Path:
    path = tmp_path / "cred helper.py"  # a space: the command line quotes it
    path.write_text(HELPER)
    return path


def command(helper: Path, state: Path, *args: str) -> tuple[str, ...]:
    return (sys.executable, str(helper), str(state), *args)


async def test_process_credentials_from_the_config_and_refreshed(
        tmp_path: Path, helper: Path, http_client: HttpClient) -> None:
    clock = ManualClock(wall=time.time())
    state = tmp_path / "runs"
    env = home(tmp_path, config=(
        f'[profile p]\ncredential_process = {sys.executable} "{helper}" {state} expiring 3600 '
        f"{clock.time():.0f}\n"))
    source = choose_source(env, "p")
    assert isinstance(source, CredentialProcess)
    assert source.command[1] == str(helper)  # quoted words stay one argument, as in a shell
    creds = open_source(source, client=http_client, clock=clock)
    first = await creds.get()
    assert (first.access_key_id, first.session_token) == ("ASIAPROCESS000000001",
                                                          "process-token-1")
    assert first.expires == pytest.approx(clock.time() + 3600, abs=1)
    # concurrent requests share the one run; later ones use it until 5 minutes before expiry
    got = await asyncio.gather(*(creds.get() for _ in range(5)))
    assert {c.access_key_id for c in got} == {"ASIAPROCESS000000001"}
    clock.advance(3600 - 301)
    assert (await creds.get()).access_key_id == "ASIAPROCESS000000001"
    clock.advance(2)
    assert (await creds.get()).access_key_id == "ASIAPROCESS000000002"
    assert state.read_text() == "2"


async def test_process_credentials_without_expiration_are_kept(
        tmp_path: Path, helper: Path, http_client: HttpClient) -> None:
    clock = ManualClock(wall=time.time())
    state = tmp_path / "runs"
    creds = open_source(CredentialProcess("p", command(helper, state, "static")),
                        client=http_client, clock=clock)
    first = await creds.get()
    clock.advance(30 * 86400)
    assert await creds.get() is first
    assert state.read_text() == "1"
    # but AWS refusing them as expired has the command run again
    assert creds.refused(first)
    assert (await creds.get()).access_key_id == "ASIAPROCESS000000002"


async def test_a_failing_command_tells_its_stderr_masked_never_its_output(
        tmp_path: Path, helper: Path, http_client: HttpClient) -> None:
    clock = ManualClock(wall=time.time())
    creds = open_source(CredentialProcess("p", command(helper, tmp_path / "s", "fail")),
                        client=http_client, clock=clock)
    with pytest.raises(AwsCredentialsError) as err:
        await creds.get()
    text = str(err.value)
    assert text.startswith(f"credential_process {sys.executable} of profile [p] exited with 3: "
                           "token expired for user bob: secret_access_key=***"), text
    assert "please run sso-helper login" in text
    for secret in ("wJalrXUtnFEMI", "ASIASTDOUTNOTSHOWN", "stdout-secret"):
        assert secret not in text
    assert not err.value.transient  # a refusal: the provider's credentials, as auth


@pytest.mark.parametrize(("mode", "message", "transient"), [
    ("garbage", "printed no JSON (", True),
    ("v2", "printed Version '2': only Version 1 is known", False),
    ("flood", "printed over 64 KiB: no credentials", True),
])
async def test_unusable_output(tmp_path: Path, helper: Path, http_client: HttpClient, mode: str,
                               message: str, transient: bool) -> None:
    creds = open_source(CredentialProcess("p", command(helper, tmp_path / "s", mode)),
                        client=http_client, clock=ManualClock(wall=time.time()))
    with pytest.raises(AwsCredentialsError) as err:
        await creds.get()
    assert message in str(err.value) and err.value.transient is transient
    assert "half-printed-secret" not in str(err.value)


async def test_a_command_past_its_time_is_killed(tmp_path: Path, helper: Path,
                                                 http_client: HttpClient) -> None:
    creds = open_source(CredentialProcess("p", command(helper, tmp_path / "s", "hang"), 0.5),
                        client=http_client, clock=ManualClock(wall=time.time()))
    started = time.monotonic()
    with pytest.raises(AwsCredentialsError, match="did not finish within 0.5 s") as err:
        await creds.get()
    assert err.value.transient and time.monotonic() - started < 5


async def test_a_command_that_cannot_start(tmp_path: Path, http_client: HttpClient) -> None:
    script = tmp_path / "helper"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    creds = open_source(CredentialProcess("p", (str(script),)), client=http_client,
                        clock=ManualClock())
    with pytest.raises(AwsCredentialsError, match=r"of profile \[p\] cannot be run: "):
        await creds.get()


def test_mask() -> None:
    assert mask('{"SessionToken": "abc", "x": 1}') == '{"SessionToken": "***", "x": 1}'
    assert mask("password=hunter2 ok") == "password=*** ok"
    assert mask("key wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY end") == "key *** end"
    assert mask("plain words stay") == "plain words stay"
    assert AwsCredentials("A", "S").expires is None
