"""Logging setup: text for people, JSON lines for log shippers (daemon.log_format).

Under systemd, stderr is a stream to the journal (``JOURNAL_STREAM`` names it), which files
every line at the unit's default priority (info) unless the line starts with a ``<N>`` syslog
priority (``SyslogLevelPrefix=yes``, the default). Each line then carries its level's prefix,
so ``journalctl -u failoverd -p warning`` finds warnings and errors; journald strips it, so
what ``journalctl -o cat`` shows is unchanged.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

import orjson
from aiohttp.http_exceptions import BadHttpMessage

from failoverd.events import utf8_safe

# logging level -> syslog priority (sd-daemon(3): <7> debug ... <2> crit)
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
               (logging.INFO, 6))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry["request"] = access  # an access log line's fields, for log shippers
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry).decode()
        except TypeError:
            # a lone surrogate (a file name or environment value that is not UTF-8, decoded
            # with surrogateescape): orjson refuses it, and logging would drop the whole line
            return orjson.dumps({k: _safe(v) for k, v in entry.items()}).decode()


def _safe(value: Any) -> Any:
    """A log entry's value with its strings (an access line's too) made UTF-8 safe."""
    if isinstance(value, str):
        return utf8_safe(value)
    if isinstance(value, dict):
        return {k: _safe(v) for k, v in value.items()}
    return value


class JournalPrefix(logging.Formatter):
    """Wraps a formatter: every line of a record starts with the record's ``<N>`` priority
    (a traceback's lines too, or journald would file them as info)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in _PRIORITIES if record.levelno >= level), 7)
        prefix = f"<{priority}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def is_journal(stream: TextIO) -> bool:
    """Whether `stream` is the journal's stream (``JOURNAL_STREAM=<device>:<inode>`` of it).

    Only the very file: a daemon started by hand from a systemd user session inherits the
    variable with its stderr on a terminal or a pipe, which must get no prefixes."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (int(device), int(inode)) == (st.st_dev, st.st_ino)
    except (ValueError, OSError):  # unset or malformed, or a stream without a descriptor
        return False


class MalformedRequests(logging.Filter):
    """aiohttp's server logs every malformed client request (a bad header line, HTTP/1.1
    without Host, a bad chunk size...) at ERROR with a traceback: a client's mistake, which
    it was answered a 400 for, not the daemon's, and one that could fill the log. This makes
    each one line at INFO naming the problem; errors of the daemon itself stay as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage) and record.levelno > logging.INFO:
            # one line: aiohttp's message may span several and quote the client's bytes
            problem = " ".join(str(exc.message).split())[:300]
            record.msg = f"{record.getMessage()}: malformed request answered 400: {problem!r}"
            record.args = None
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def setup(log_format: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter()
    else:
        # under systemd the journal adds timestamps; the level name is enough
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JournalPrefix(formatter) if is_journal(sys.stderr) else formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequests) for f in server.filters):
        server.addFilter(MalformedRequests())
    # APScheduler logs every job added or run at INFO: one line per probe is noise
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
