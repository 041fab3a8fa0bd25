"""A profile's ``credential_process`` (awscreds.py's `CredentialProcess` source), run as the
AWS CLI and botocore run it: the command split as a POSIX shell splits words (shlex, at load)
and started without a shell, with the daemon's environment, no stdin; its standard output is
the credentials, as JSON::

    {"Version": 1, "AccessKeyId": "...", "SecretAccessKey": "...",
     "SessionToken": "...", "Expiration": "2026-12-07T21:00:00Z"}

``SessionToken`` and ``Expiration`` are optional: without an ``Expiration`` the credentials
do not expire and the command is not run again (but after AWS refused them as expired).

Bounded, unlike botocore: the command has `CredentialProcess.timeout` seconds (then it is
killed, with the processes it started: it runs in a session, and so a process group, of its
own), its output `MAX_OUTPUT` bytes. A command that fails (exit status not 0) is a refusal
whose error quotes the end of its standard error (`MAX_STDERR` bytes, with anything that
looks like a secret masked); its standard output, which holds secrets, is never quoted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from typing import Any

import orjson

from failoverd.awscreds import (
    AwsCredentials,
    AwsCredentialsError,
    CredentialProcess,
    temporary,
)
from failoverd.clock import Clock

__all__ = ["MAX_OUTPUT", "MAX_STDERR", "mask", "parse_output", "run"]

logger = logging.getLogger(__name__)

MAX_OUTPUT = 64 * 1024  # credentials are a few hundred bytes of JSON
MAX_STDERR = 1024  # quoted in the error: its last bytes, where a failure is said
# after the kill, how long the pipes may stay open (a process that left the group holds them)
KILL_WAIT = 2.0
_SECRETISH = re.compile(
    r"(?i)((?:secret|token|password|passwd|credential|session)[\w-]*\"?\s*[=:]\s*\"?)[^\s\",}]+"
    r"|[A-Za-z0-9/+=]{32,}")


def mask(text: str) -> str:
    """`text` with what may be a secret masked: values of secret-, token- or password-named
    keys, and long base64 runs (a secret access key is 40 characters)."""
    return _SECRETISH.sub(lambda m: (m.group(1) or "") + "***", text)


def parse_output(out: bytes, where: str) -> AwsCredentials:
    """The credentials a command printed (Version 1)."""
    try:
        data: Any = orjson.loads(out)
    except orjson.JSONDecodeError:
        # never quoted: it may hold the secret, half-printed
        raise AwsCredentialsError(f"{where} printed no JSON ({len(out)} bytes)",
                                  transient=True) from None
    if not isinstance(data, dict):
        raise AwsCredentialsError(f"{where} printed no JSON object", transient=True)
    version = data.get("Version")
    if version != 1 or isinstance(version, bool):
        raise AwsCredentialsError(f"{where} printed Version {str(version)[:20]!r}: only "
                                  "Version 1 is known")
    key_id, secret = data.get("AccessKeyId"), data.get("SecretAccessKey")
    token, expiration = data.get("SessionToken") or "", data.get("Expiration")
    if not isinstance(key_id, str) or not key_id or not isinstance(secret, str) or not secret:
        missing = [name for name in ("AccessKeyId", "SecretAccessKey")
                   if not isinstance(data.get(name), str) or not data.get(name)]
        raise AwsCredentialsError(f"{where} printed no {', '.join(missing)}")
    if not isinstance(token, str) or not (expiration is None or isinstance(expiration, str)):
        raise AwsCredentialsError(f"{where} printed a SessionToken or Expiration that is no "
                                  "string")
    return temporary(key_id, secret, token, expiration, where, "printed")


async def _read(stream: asyncio.StreamReader | None, limit: int, keep_tail: bool) -> bytes:
    """What `stream` gives up to `limit` bytes (the first ones; the last ones with
    `keep_tail`, reading on to the end)."""
    if stream is None:
        return b""
    kept, cut = b"", False
    while chunk := await stream.read(65536):
        kept += chunk
        if len(kept) > limit:
            if not keep_tail:
                return kept[:limit + 1]
            kept, cut = kept[-limit:], True
    if cut:
        # the end kept may begin inside a secret, a piece too short to look like one, its
        # key's name cut off: it starts at the next line (else the next word)
        at = kept.find(b"\n")
        if at < 0:
            space = re.search(rb"\s", kept)
            at = space.start() if space else len(kept)
        kept = b"..." + kept[at:]
    return kept


def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kills the command's process group: the command and any process it started that is
    still in it (a wrapper script's helper holds the pipes; killing the wrapper alone leaves it
    running, and the pipes open). The group outlives its leader while a member lives."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


async def run(source: CredentialProcess, clock: Clock) -> AwsCredentials:
    """Runs the command once and reads its credentials (`clock` is unused: the command's
    time limit is real time)."""
    del clock
    where = f"credential_process {source.program} of profile [{source.profile}]"
    try:
        # a session of its own: its process group is the command and its children, killed
        # together; and no terminal's signals reach it
        proc = await asyncio.create_subprocess_exec(
            *source.command, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True)
    except OSError as exc:
        raise AwsCredentialsError(f"{where} cannot be run: {exc.strerror or exc}") from None
    err_task = asyncio.create_task(_read(proc.stderr, MAX_STDERR, True))
    done = False
    try:
        async with asyncio.timeout(source.timeout):
            out = await _read(proc.stdout, MAX_OUTPUT, False)
            if len(out) > MAX_OUTPUT:
                raise AwsCredentialsError(f"{where} printed over {MAX_OUTPUT // 1024} KiB: "
                                          "no credentials", transient=True)
            status = await proc.wait()
            err = await err_task
            done = True
    except TimeoutError:
        raise AwsCredentialsError(f"{where} did not finish within {source.timeout:g} s",
                                  transient=True) from None
    finally:
        if not done:
            # timed out, too much output, or the call cancelled: the command's whole group,
            # even when the command itself has exited and only its children hold the pipes
            _kill(proc)
            try:
                # wait() also waits for the pipes to close: bounded, a process that left the
                # group (a new session of its own) may hold them
                async with asyncio.timeout(KILL_WAIT):
                    await proc.wait()
            except TimeoutError:
                logger.warning("%s: a process it started holds its output open after the "
                               "kill", where)
        err_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await err_task
    if status != 0:
        said = mask(err.decode("utf-8", "replace").strip())
        if len(said) > MAX_STDERR // 2:
            said = "..." + said[-(MAX_STDERR // 2):]
        what = f"was killed by signal {-status}" if status < 0 else f"exited with {status}"
        raise AwsCredentialsError(f"{where} {what}" + (f": {said}" if said else ""),
                                  transient=status < 0)
    return parse_output(out, where)
