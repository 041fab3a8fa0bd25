"""Review of the AWS profiles (credential_process, assumed roles, IAM Identity Center) and of
Bedrock's cache point resend: each test shows a defect found in review, against real
subprocesses and fake servers on 127.0.0.1 speaking AWS's wire formats."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from failoverd import awsprocess
from failoverd.awscreds import AwsCredentialsError, CredentialProcess
from failoverd.clock import ManualClock

# ------------------------------------------------------------------ credential_process

# a helper that starts a worker of its own (as a wrapper script starts the real helper), which
# holds the helper's standard output and error, and hangs: the worker writes its pid first
_WRAPPER = '''
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
open(sys.argv[1], "w").write(str(worker.pid))
time.sleep(30)
'''


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie left to an init that does not reap is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


async def test_a_timed_out_command_is_killed_with_its_children(tmp_path: Path) -> None:
    """The time limit kills the helper's own children too, and the call ends at it: before,
    only the helper was killed, and waiting for it lasted as long as a child held its pipes
    (every request of the provider waiting on the credentials meanwhile)."""
    script, pidfile = tmp_path / "wrapper.py", tmp_path / "worker.pid"
    script.write_text(_WRAPPER)
    source = CredentialProcess("p", (sys.executable, str(script), str(pidfile)), timeout=1.0)
    started = time.monotonic()
    with pytest.raises(AwsCredentialsError, match=r"did not finish within 1 s") as err:
        await awsprocess.run(source, ManualClock())
    assert err.value.transient
    assert time.monotonic() - started < 5
    worker = int(pidfile.read_text())
    for _ in range(50):  # the kernel's delivery of SIGKILL, not a timer of ours
        if not _alive(worker):
            break
        time.sleep(0.01)
    assert not _alive(worker)
