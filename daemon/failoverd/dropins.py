"""Drop-in configuration files: `<config>.d/*.toml` read after the main file and merged.

systemd's drop-in directories, for a TOML file: `/etc/failoverd/failoverd.toml.d/` holds a
host's or a team's additions to the package's file, read in byte order of their names after
the main file. Tables merge key by key and a later file's value for a key replaces the earlier
one; an array of tables (`[[hooks]]`) is appended to, and an empty array (`hooks = []`) empties
it, as an empty assignment resets a list setting in a systemd drop-in. Nothing else can be
removed.

Every problem names its file: a file that cannot be read or is not TOML says so with its path
(and tomllib's line and column, never the text there), and once drop-ins were read, a
validation problem starts with the file(s) that set its key. What the problem itself quotes
is config.py's business (unknown keys and wrong types are named by key path alone).
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from failoverd.errors import ConfigError
from failoverd.events import utf8_safe

KeyPath = tuple[str | int, ...]

SUFFIX = ".toml"


def directory(path: str | os.PathLike[str]) -> Path:
    """The drop-in directory of the main file at `path`: `<path>.d`."""
    return Path(f"{os.fspath(path)}.d")


# C0 and C1 control characters and DEL: a line break in a file's name split a problem, and its
# journal line, in two
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def shown(path: str | os.PathLike[str]) -> str:
    """A file's path as problems and `/v1/status` show it: one line of UTF-8 text. A byte of
    the name that is not UTF-8 (decoded with surrogateescape) is shown as `\\udcff`, a control
    character as `\\x0a`. Raw, such a name failed every JSON answer holding it (a 500 to
    POST /v1/reload, and to GET /v1/status until the next good reload), --check-config's print
    to a UTF-8 terminal, and split a problem's journal line in two."""
    text = utf8_safe(os.fspath(path))
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


@dataclass(slots=True)
class Merged:
    """The main file and its drop-ins as one document, with where each key came from."""

    main: str
    data: dict[str, Any] = field(default_factory=dict)
    dropins: list[str] = field(default_factory=list)  # read, in order, as shown()
    # a value (a plain array included): the file that set it last
    _values: dict[KeyPath, str] = field(default_factory=dict)
    # a table, an array of tables and each of its tables: the files that wrote into it
    _tables: dict[KeyPath, list[str]] = field(default_factory=dict)
    # the arrays of tables the merge made (appended to by later files)
    _arrays: set[KeyPath] = field(default_factory=set)

    def add(self, data: dict[str, Any], file: str) -> None:
        """Merges the document `data` read from `file` over what was read before."""
        self._merge(self.data, data, file, ())

    def _merge(self, into: dict[str, Any], data: dict[str, Any], file: str,
               path: KeyPath) -> None:
        if path:
            self._wrote(path, file)
        for key, value in data.items():
            here = (*path, key)
            if isinstance(value, dict):
                old = into.get(key)
                if not isinstance(old, dict):
                    self._forget(here)
                    old = into[key] = {}
                self._merge(old, value, file, here)
            elif _is_table_array(value):
                if here not in self._arrays:
                    self._forget(here)
                    into[key] = []
                    self._arrays.add(here)
                self._wrote(here, file)
                items: list[dict[str, Any]] = into[key]
                for item in value:
                    items.append({})
                    self._merge(items[-1], item, file, (*here, len(items) - 1))
            else:
                self._forget(here)
                self._values[here] = file
                into[key] = value

    def _wrote(self, path: KeyPath, file: str) -> None:
        # one file is merged whole before the next: it is the last one listed, or not listed
        files = self._tables.setdefault(path, [])
        if not files or files[-1] != file:
            files.append(file)

    def _forget(self, path: KeyPath) -> None:
        # what is at `path` is replaced whole: what was said of it, and of the keys below it,
        # no longer holds. Only a table or an array of tables has keys below it (and is in
        # _tables): a value replaced by a value costs no scan, so a thousand drop-ins that
        # each set `fallbacks` merge in linear time.
        self._values.pop(path, None)
        if self._tables.pop(path, None) is None:
            return
        self._arrays.discard(path)
        size = len(path)
        for origin in (self._values, self._tables):
            for key in [k for k in origin if k[:size] == path]:
                del origin[key]
        for key in [k for k in self._arrays if k[:size] == path]:
            self._arrays.discard(key)

    def files_of(self, path: KeyPath) -> list[str]:
        """The files that set the value at `path`, or wrote the table holding it; [] when
        nobody did (a required key that is missing everywhere)."""
        for size in range(len(path), 0, -1):
            prefix = path[:size]
            if prefix in self._values:
                return [self._values[prefix]]
            if prefix in self._tables:
                return self._tables[prefix]
        return []

    def name_files(self, problems: Iterable[str]) -> list[str]:
        """Validation problems, each starting with the file(s) its key came from once there
        are drop-ins; unchanged for a lone main file (its path is the one given)."""
        if not self.dropins:
            return list(problems)
        named = []
        for problem in problems:
            path = key_path(problem)
            files = self.files_of(path) if path else []
            named.append(f"{', '.join(map(shown, files))}: {problem}" if files else problem)
        return named


# A problem's key path as tomlreader.Section writes it: bare or JSON-quoted keys joined by
# dots, each maybe followed by [index]es, then ": ".
_BARE = re.compile(r"[\w-]+")
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_INDEX = re.compile(r"\[(\d+)\]")


def key_path(problem: str) -> KeyPath | None:
    """The key path a problem line starts with, None when it starts with none."""
    path: list[str | int] = []
    pos = 0
    while True:
        m = _QUOTED.match(problem, pos) or _BARE.match(problem, pos)
        if m is None:
            return None
        text = m.group()
        if text.startswith('"'):
            try:
                text = orjson.loads(text)
            except orjson.JSONDecodeError:
                return None
        path.append(text)
        pos = m.end()
        while (i := _INDEX.match(problem, pos)) is not None:
            path.append(int(i.group(1)))
            pos = i.end()
        if problem.startswith(": ", pos):
            return tuple(path)
        if not problem.startswith(".", pos):
            return None
        pos += 1


# --------------------------------------------------------------------------- reading

def read_document(path: Path) -> dict[str, Any]:
    """One TOML file, decoded; ConfigError naming the file when it cannot be read, is not
    UTF-8 or not TOML."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{shown(path)}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # where, as a line and column (an editor's terms), not as a byte offset
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError([f"{shown(path)}: not valid TOML: not UTF-8 text: byte "
                           f"0x{raw[exc.start]:02x} at line {line}, column {column} (TOML "
                           "files are UTF-8)"]) from exc
    return parse_toml(text, f"{shown(path)}: ")


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """TOML text; ConfigError starting with `where` when it is not TOML. tomllib's messages
    say where (line, column), never what is there."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{where}not valid TOML: {exc}"]) from exc
    except ValueError as exc:
        # int()'s limit on digits, which tomllib lets through (it was a traceback)
        raise ConfigError([f"{where}not valid TOML: an integer has too many digits"]) from exc


def find(path: str | os.PathLike[str]) -> list[Path]:
    """The drop-ins of the main file at `path`, in the order they are read: the `*.toml`
    entries of `<path>.d/` sorted by the bytes of their names (dot files, such as an
    editor's, are not read). A
    missing directory has none; one that cannot be listed is a ConfigError."""
    where = directory(path)
    try:
        names = os.listdir(where)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError([f"{shown(where)}: cannot read the drop-in directory: "
                           f"{exc.strerror or exc}"]) from exc
    # byte order, as systemd sorts a unit's drop-ins (a name that is not UTF-8 is one too)
    return [where / name for name in sorted(names, key=os.fsencode)
            if name.endswith(SUFFIX) and not name.startswith(".")]


def _not_regular(path: Path) -> str | None:
    """The problem of a drop-in that is a FIFO, a socket or a device (a symlink to one): read,
    it blocked the reload, and the daemon's event loop with it, or never ended. The main file
    may be one (`--check-config --config <(...)`)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # reading it says why
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):  # a directory: reading it says so
        return None
    return f"{shown(path)}: cannot read: not a regular file"


def read(path: str | os.PathLike[str]) -> Merged:
    """The main file at `path` and its drop-ins, merged; a ConfigError lists every file that
    cannot be read or parsed (validation comes after, on the whole)."""
    main = Path(path)
    merged = Merged(str(main))
    problems: list[str] = []
    files: list[Path] = [main]
    try:
        files += find(main)
    except ConfigError as exc:
        problems += exc.problems
    for file in files:
        if file is not main and (problem := _not_regular(file)) is not None:
            problems.append(problem)
            continue
        try:
            data = read_document(file)
        except ConfigError as exc:
            problems += exc.problems
            continue
        merged.add(data, str(file))
        if file is not main:
            merged.dropins.append(shown(file))
    if problems:
        raise ConfigError(problems)
    return merged
