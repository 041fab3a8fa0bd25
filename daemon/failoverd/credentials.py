"""Where a configured secret comes from: `<name>_env` (an environment variable), `<name>_file`
(a file) or `<name>_credential` (`$CREDENTIALS_DIRECTORY/<name>`, systemd's LoadCredential=).

At most one source per secret; every problem is reported on the config section by key path,
never with the secret itself; nor with the name of a source when it could be the key pasted
there by mistake (:func:`_shown`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from failoverd.tomlreader import Section

__all__ = ["read_secret"]

# what a variable's name looks like by convention; a key never does
_VARIABLE = re.compile(r"[A-Z_][A-Z0-9_]*")
# a credential's name longer than this could be a key (Mistral's have 32 characters)
_LONGEST_CREDENTIAL_NAME = 31


def _shown(kind: str, name: str) -> str:
    """`name` (a variable's, a file's, a credential's) as a problem quotes it: as it is when it
    cannot be a key pasted where the name goes (an upper-case variable name, a path starting
    with `/` or `.`, a short credential name); else a stand-in, so a key does not reach the
    journal, the reload's answer and the config:rejected event."""
    if kind == "env" and _VARIABLE.fullmatch(name):
        return name
    if kind == "file" and name.startswith(("/", "./", "../")):
        return name
    if kind == "credential" and len(name) <= _LONGEST_CREDENTIAL_NAME:
        return name
    what = "variable" if kind == "env" else kind
    return f"<the {what} named there: not shown, it could be a key>"


def read_secret(sec: Section, prefix: str, env: Mapping[str, str], *,
                 sources: tuple[str, ...] = ("env", "file", "credential"),
                 one_line: bool = True) -> str:
    """Reads `<prefix>_env`, `<prefix>_file` or `<prefix>_credential` (those of `sources`); at
    most one may be set.

    A value that goes into an HTTP header (`one_line`) must be one line (see
    :func:`_header_secret`)."""
    via_env = sec.get(f"{prefix}_env", str, "") if "env" in sources else ""
    via_file = sec.get(f"{prefix}_file", str, "") if "file" in sources else ""
    via_cred = sec.get(f"{prefix}_credential", str, "") if "credential" in sources else ""
    given = [k for k, v in (("env", via_env), ("file", via_file), ("credential", via_cred)) if v]
    if len(given) > 1:
        names = ", ".join(f"{prefix}_{k}" for k in sources)
        sec.problem(f"{prefix}_{given[1]}", f"set only one of {names}")
        return ""
    check = _header_secret if one_line else _any_text
    if via_env:
        value = env.get(via_env, "").strip()
        shown = _shown("env", via_env)
        if not value:
            sec.problem(f"{prefix}_env", f"environment variable {shown} is not set or empty")
        return check(sec, f"{prefix}_env", value, f"environment variable {shown}")
    if via_file:
        path = Path(via_file)
        shown = _shown("file", via_file)
        return check(sec, f"{prefix}_file",
                     _read_secret_file(sec, f"{prefix}_file", path, shown), shown)
    if via_cred:
        creds = env.get("CREDENTIALS_DIRECTORY", "")
        if not creds:
            sec.problem(f"{prefix}_credential",
                        "CREDENTIALS_DIRECTORY is not set (systemd LoadCredential= provides it)")
            return ""
        if "/" in via_cred:
            sec.problem(f"{prefix}_credential", "a credential name cannot contain '/'")
            return ""
        path = Path(creds) / via_cred
        shown = str(Path(creds) / _shown("credential", via_cred))
        return check(sec, f"{prefix}_credential",
                     _read_secret_file(sec, f"{prefix}_credential", path, shown), shown)
    return ""


def _any_text(sec: Section, key: str, value: str, where: str) -> str:
    """A secret that never goes into an HTTP header (the MQTT password) may hold any text."""
    return value


def _header_secret(sec: Section, key: str, value: str, where: str) -> str:
    """``value`` if it can go into an HTTP header; a line break (two keys in one file, a
    comment line) or another control character failed every request at run time."""
    if any(c < " " or c == "\x7f" for c in value):
        sec.problem(key, f"{where} holds a line break or another control character; a key or "
                    "token is a single line")
        return ""
    return value


def _read_secret_file(sec: Section, key: str, path: Path, shown: str) -> str:
    """The file's text, stripped; `shown` is how a problem names it."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        sec.problem(key, f"cannot read {shown}: {exc.strerror or exc}")
        return ""
    except UnicodeDecodeError:
        sec.problem(key, f"{shown} is not UTF-8 text")
        return ""
    if not value:
        sec.problem(key, f"{shown} is empty")
    return value
