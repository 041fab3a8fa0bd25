"""Drop-in configuration files: `<config>.d/*.toml` read after the main file and merged.

systemd's drop-in directories, for a TOML file: `/etc/failoverd/failoverd.toml.d/` holds a
host's or a team's additions to the package's file, read in lexical order of their names after
the main file. Tables merge key by key and a later file's value for a key replaces the earlier
one; an array of tables (`[[hooks]]`) is appended to, and an empty array (`hooks = []`) empties
it, as an empty assignment resets a list setting in a systemd drop-in. Nothing else can be
removed.

Every problem names its file: a file that cannot be read or is not TOML says so with its path,
and once drop-ins were read, a validation problem starts with the file(s) that set its key. No
value is ever echoed (a secret pasted into a drop-in by mistake stays out of the journal).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from failoverd.errors import ConfigError

KeyPath = tuple[str | int, ...]

SUFFIX = ".toml"


def directory(path: str | os.PathLike[str]) -> Path:
    """The drop-in directory of the main file at `path`: `<path>.d`."""
    return Path(f"{os.fspath(path)}.d")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


@dataclass(slots=True)
class Merged:
    """The main file and its drop-ins as one document, with where each key came from."""

    main: str
    data: dict[str, Any] = field(default_factory=dict)
    dropins: list[str] = field(default_factory=list)  # read, in order
    # a value (a plain array included): the file that set it last
    _values: dict[KeyPath, str] = field(default_factory=dict)
    # a table, an array of tables and each of its tables: the files that wrote into it
    _tables: dict[KeyPath, list[str]] = field(default_factory=dict)

    def add(self, data: dict[str, Any], file: str) -> None:
        """Merges the document `data` read from `file` over what was read before."""
        self._merge(self.data, data, file, ())

    def _merge(self, into: dict[str, Any], data: dict[str, Any], file: str,
               path: KeyPath) -> None:
        if path:
            self._wrote(path, file)
        for key, value in data.items():
            here = (*path, key)
            old: Any = into.get(key)
            if isinstance(value, dict):
                if not isinstance(old, dict):
                    self._forget(here, old)
                    old = into[key] = {}
                self._merge(old, value, file, here)
            elif _is_table_array(value):
                items: list[dict[str, Any]] = []
                if _is_table_array(old):
                    items = old
                else:
                    self._forget(here, old)
                    into[key] = items
                self._wrote(here, file)
                for i, item in enumerate(value, start=len(items)):
                    items.append({})
                    self._merge(items[i], item, file, (*here, i))
            else:
                self._forget(here, old)
                self._values[here] = file
                into[key] = value

    def _wrote(self, path: KeyPath, file: str) -> None:
        files = self._tables.setdefault(path, [])
        if file not in files:
            files.append(file)

    def _forget(self, path: KeyPath, old: Any) -> None:
        # a value replaced whole: what was said of the keys below it no longer holds
        if not isinstance(old, dict | list):
            return
        size = len(path)
        for origin in (self._values, self._tables):
            for key in [k for k in origin if k[:size] == path]:
                del origin[key]

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
            named.append(f"{', '.join(files)}: {problem}" if files else problem)
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
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # where, as a line and column (an editor's terms), not as a byte offset
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError([f"{path}: not valid TOML: not UTF-8 text: byte "
                           f"0x{raw[exc.start]:02x} at line {line}, column {column} (TOML "
                           "files are UTF-8)"]) from exc
    return parse_toml(text, f"{path}: ")


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
    entries of `<path>.d/` sorted by name (dot files, such as an editor's, are not read). A
    missing directory has none; one that cannot be listed is a ConfigError."""
    where = directory(path)
    try:
        names = os.listdir(where)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read the drop-in directory: "
                           f"{exc.strerror or exc}"]) from exc
    return [where / name for name in sorted(names)
            if name.endswith(SUFFIX) and not name.startswith(".")]


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
        try:
            data = read_document(file)
        except ConfigError as exc:
            problems += exc.problems
            continue
        merged.add(data, str(file))
        if file is not main:
            merged.dropins.append(str(file))
    if problems:
        raise ConfigError(problems)
    return merged
