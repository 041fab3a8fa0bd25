"""The container credentials' authorization token file (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)
is read at every fetch on the event loop: a FIFO there is refused at once, not waited on."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from failoverd.awscreds import AwsCredentialsError
from failoverd.awsmetadata import _read_token


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    outcome: list[BaseException | str] = []

    def read() -> None:
        try:
            outcome.append(_read_token(str(fifo)))
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(2)
    if reader.is_alive():  # blocked in open(): unblock it so the thread can end
        with open(fifo, "wb"):
            pass
        reader.join(2)
        pytest.fail("reading the token file blocked on a FIFO")
    assert isinstance(outcome[0], AwsCredentialsError)
    assert "is not a regular file" in str(outcome[0])


def test_a_regular_file_through_a_symlink_is_read(tmp_path: Path) -> None:
    """As Kubernetes projects it: ..data/token behind a symlink."""
    (tmp_path / "real").write_text("token-value-1\n")
    (tmp_path / "token").symlink_to(tmp_path / "real")
    assert _read_token(str(tmp_path / "token")) == "token-value-1"
