"""A TOML table reader that records every problem with its key path.

Used by config.py: each `Section` reads one table, converting and checking values, and
`finish()` reports keys nobody asked for (unknown keys are errors).
"""

from __future__ import annotations

import math
from typing import Any, TypeVar, cast, get_args

import orjson

T = TypeVar("T")

# The largest number a key accepts (about 31 years in seconds). Durations end up in timers,
# datetime and timedelta arithmetic, where inf, nan or 1e300 would fail at run time (or on a
# reload) instead of here.
MAX_NUMBER = 1e9
# The largest integer a key accepts unless it names a tighter bound (counts, token limits):
# past it a value is a typo, and a 20-digit count only fails later, deep inside (a deque's
# maxlen, a float conversion), if it fails at all.
MAX_INTEGER = 1_000_000_000


def _quote(key: str) -> str:
    # a quoted key as TOML writes it: quotes, backslashes and control characters escaped, so
    # a problem stays on one line and names the key as the file spells it
    if key.replace("_", "").replace("-", "").isalnum():
        return key
    return orjson.dumps(key).decode()


class Section:
    """Reads one TOML table, recording every problem with its key path."""

    def __init__(self, data: Any, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        self.seen: set[str] = set()
        if not isinstance(data, dict):
            self.problem("", f"must be a table, got {type_name(data)}")
            data = {}
        self.data: dict[str, Any] = data

    def key_path(self, key: str) -> str:
        return f"{self.path}.{_quote(key)}" if self.path else _quote(key)

    def problem(self, key: str, message: str) -> None:
        """Lists a problem at `key` (the section itself for ""), once: two checks that find
        the same (a broken AWS file fails the credentials and the endpoint) say it once."""
        where = self.key_path(key) if key else (self.path or "<top level>")
        line = f"{where}: {message}"
        if line not in self.problems:
            self.problems.append(line)

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, kind: type[T] | tuple[type, ...], default: T) -> T:
        self.seen.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a TOML true is never a number here
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            self.problem(key, f"must be {names}, got {type_name(value)}")
            return default
        if float in kinds and isinstance(value, int):
            try:
                value = float(value)
            except OverflowError:
                self.problem(key, "is too large")
                return default
        return cast(T, value)

    def number(self, key: str, default: float, *, minimum: float = 0.0,
               positive: bool = False) -> float:
        value = self.get(key, (int, float), default)
        if not math.isfinite(value):
            self.problem(key, f"must be a finite number, got {value}")
            return default
        if value > MAX_NUMBER:
            self.problem(key, f"must be at most {MAX_NUMBER:g}, got {value:g}")
            return default
        if positive and value <= 0:
            self.problem(key, f"must be greater than 0, got {value}")
            return default
        if value < minimum:
            self.problem(key, f"must be at least {minimum:g}, got {value}")
            return default
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int = 0,
                maximum: int = MAX_INTEGER) -> int:
        value = self.get(key, int, default)
        if value < minimum:
            self.problem(key, f"must be at least {minimum}, got {int_text(value)}")
            return default
        if value > maximum:
            self.problem(key, f"must be at most {maximum}, got {int_text(value)}")
            return default
        return value

    def choice(self, key: str, options: Any, default: T) -> T:
        allowed = get_args(options)
        value = self.get(key, str, cast(str, default))
        if value not in allowed:
            self.problem(key, f"must be one of {', '.join(allowed)}; got {value!r}")
            return default
        return cast(T, value)

    def strings(self, key: str, default: tuple[str, ...] | None) -> tuple[str, ...] | None:
        value = self.get(key, list, None)
        if value is None:
            return default
        bad = [v for v in value if not isinstance(v, str)]
        if bad:
            self.problem(key, f"must be a list of strings, found {type_name(bad[0])}")
            return default
        return tuple(value)

    def plain_name(self, name: str, what: str) -> None:
        """Checks a key of this table that names something (a provider, a model, a chain, a
        pool): a name that travels in headers, log lines, metrics labels and MQTT topics, so
        not empty and without control characters (a line break split log lines and broke
        headers)."""
        if not name or any(c < " " or c == "\x7f" for c in name):
            self.problem(name, f"{what} must be non-empty and hold no control characters")

    def table(self, key: str) -> Section:
        self.seen.add(key)
        return Section(self.data.get(key, {}), self.key_path(key), self.problems)

    def finish(self) -> None:
        for key in self.data:
            if key not in self.seen:
                self.problem(key, "unknown key")


_KIND_NAMES: dict[type, str] = {
    int: "an integer", float: "a number", str: "a string", bool: "a boolean",
    list: "a list", dict: "a table",
}


def int_text(value: int) -> str:
    """An integer for a message: in full unless it is a wall of digits."""
    text = str(value)
    digits = len(text.lstrip("-"))
    return text if digits <= 24 else f"{text[:13]}... ({digits} digits)"


def type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)
