"""The state file: breaker and credential state persisted in ``state_dir`` across restarts.

Writes are atomic (a temporary file in the same directory, fsync, ``os.replace``, fsync of the
directory), so a crash leaves either the old or the new state, never half of one. The file is
mode 0600: it names models and providers, which is nobody else's business. A corrupt file is
moved aside to ``state.json.corrupt`` for the operator and the daemon starts fresh; so is one
holding a number failoverd never writes (beyond ``MAX_NUMBER``), which the breakers and the
prober would take as it is.

The I/O is blocking and small; callers on the event loop may use ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

logger = logging.getLogger(__name__)

FILE_NAME = "state.json"
_TMP_PREFIX = f".{FILE_NAME}."
_TMP_SUFFIX = ".tmp"

MAX_NUMBER = 1e11
"""No number in the state file is larger in magnitude: times are Unix seconds (1e11 is the year
5138) and counts stay small. An open period until the year 33658 stopped the daemon at every start
(the prober's date arithmetic overflowed), an open count beyond 64 bits at the first save."""


class StateFile:
    """``<directory>/state.json``, saved atomically."""

    def __init__(self, directory: str | os.PathLike[str], name: str = FILE_NAME) -> None:
        self.directory = Path(directory)
        self.path = self.directory / name
        self.corrupt_path = self.directory / f"{name}.corrupt"

    def save(self, data: Mapping[str, Any]) -> None:
        """Replaces the state file with `data` atomically; raises OSError on failure."""
        payload = orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkstemp creates the file 0600 and in the target directory, so os.replace is atomic
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fsync_directory()

    def load(self) -> dict[str, Any] | None:
        """The saved state; None when there is none, it is unreadable, or corrupt."""
        self._remove_leftovers()
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("cannot read state file %s: %s; starting fresh", self.path,
                           exc.strerror or exc)
            return None
        try:
            data = orjson.loads(raw)
            if not isinstance(data, dict):
                raise ValueError(f"top level is {type(data).__name__}, not an object")
            _check_numbers(data)
        except (orjson.JSONDecodeError, ValueError) as exc:
            logger.warning("state file %s is corrupt (%s); moved to %s, starting fresh",
                           self.path, exc, self.corrupt_path)
            with contextlib.suppress(OSError):
                os.replace(self.path, self.corrupt_path)
            return None
        return data

    def _fsync_directory(self) -> None:
        # the rename is durable only once the directory entry is on disk
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _remove_leftovers(self) -> None:
        # temp files of a save interrupted by a crash; only one daemon owns state_dir
        try:
            leftovers = list(self.directory.glob(f"{_TMP_PREFIX}*{_TMP_SUFFIX}"))
        except OSError:
            return
        for path in leftovers:
            with contextlib.suppress(OSError):
                path.unlink()


def _check_numbers(data: dict[str, Any]) -> None:
    """Raises ValueError naming the first number beyond ``MAX_NUMBER`` (iterative: orjson
    accepts nesting deeper than Python's recursion limit)."""
    todo: list[tuple[str, Any]] = [("", data)]
    while todo:
        where, value = todo.pop()
        if isinstance(value, dict):
            todo.extend((f"{where}.{key}" if where else str(key), v) for key, v in value.items())
        elif isinstance(value, list):
            todo.extend((f"{where}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if not abs(value) <= MAX_NUMBER:  # also NaN, though orjson does not produce it
                raise ValueError(f"{where} = {value!r} is out of range")
