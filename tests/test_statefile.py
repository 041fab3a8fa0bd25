"""The state file: atomic saves, permissions, missing and corrupt files."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import orjson
import pytest

from failoverd.statefile import StateFile

STATE = {"version": 1, "breakers": {"a/m:1": {"state": "open", "open_until": 1.5}},
         "providers": {}}


def test_missing_file_loads_as_none(tmp_path: Path) -> None:
    assert StateFile(tmp_path).load() is None
    assert StateFile(tmp_path / "not-yet").load() is None


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    sf = StateFile(tmp_path)
    sf.save(STATE)
    assert sf.load() == STATE
    assert orjson.loads((tmp_path / "state.json").read_bytes()) == STATE


def test_save_is_private_and_leaves_no_temp_file(tmp_path: Path) -> None:
    sf = StateFile(tmp_path)
    for i in range(3):
        sf.save({**STATE, "n": i})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert stat.S_IMODE(sf.path.stat().st_mode) == 0o600
    assert sf.load() == {**STATE, "n": 2}


def test_save_creates_a_private_state_dir(tmp_path: Path) -> None:
    sf = StateFile(tmp_path / "lib" / "failoverd")
    sf.save(STATE)
    assert stat.S_IMODE((tmp_path / "lib" / "failoverd").stat().st_mode) & 0o077 == 0
    assert sf.load() == STATE


def test_save_replaces_atomically(tmp_path: Path) -> None:
    sf = StateFile(tmp_path)
    sf.save(STATE)
    before = os.stat(sf.path).st_ino
    sf.save({"version": 1, "other": True})
    # a new inode renamed over the old one: readers see the old file or the new, never half
    assert os.stat(sf.path).st_ino != before
    assert sf.load() == {"version": 1, "other": True}


def test_failed_save_keeps_the_old_state_and_cleans_up(tmp_path: Path) -> None:
    sf = StateFile(tmp_path)
    sf.save(STATE)
    with pytest.raises(TypeError):
        sf.save({"unserialisable": object()})
    sf.path.unlink()
    sf.path.mkdir()  # os.replace onto a directory fails after the temp file is written
    with pytest.raises(OSError):
        sf.save(STATE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b"\xff\xfe"])
def test_corrupt_file_is_moved_aside(tmp_path: Path, content: bytes,
                                     caplog: pytest.LogCaptureFixture) -> None:
    sf = StateFile(tmp_path)
    sf.path.write_bytes(content)
    with caplog.at_level(logging.WARNING, "failoverd.statefile"):
        assert sf.load() is None
    assert not sf.path.exists()
    assert (tmp_path / "state.json.corrupt").read_bytes() == content
    assert "corrupt" in caplog.text
    sf.save(STATE)  # the daemon carries on and writes a good one
    assert sf.load() == STATE


def test_load_removes_temp_files_of_an_interrupted_save(tmp_path: Path) -> None:
    sf = StateFile(tmp_path)
    sf.save(STATE)
    (tmp_path / ".state.json.abc123.tmp").write_bytes(b'{"half": ')
    (tmp_path / "unrelated.tmp").write_bytes(b"keep me")
    assert sf.load() == STATE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "unrelated.tmp"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_left_alone(tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    sf = StateFile(tmp_path)
    sf.save(STATE)
    sf.path.chmod(0)
    try:
        with caplog.at_level(logging.WARNING, "failoverd.statefile"):
            assert sf.load() is None
        assert sf.path.exists()
        assert not (tmp_path / "state.json.corrupt").exists()
        assert "cannot read state file" in caplog.text
    finally:
        sf.path.chmod(0o600)
