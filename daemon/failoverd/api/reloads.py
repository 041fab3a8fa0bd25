"""The outcome of the last configuration reload, for `GET /v1/status` and `/metrics`.

A reload that fails validation keeps the old configuration serving, which is right, but then
nothing but a log line and an event said that the file on disk is not what runs: `systemctl
reload` succeeds either way, and the next restart (a reboot, a package upgrade) fails on the
file. The bus's `config:reloaded` / `config:rejected` events are recorded here, whoever asked
for the reload (SIGHUP, `POST /v1/reload`), and shown as Prometheus shows its own
(`prometheus_config_last_reload_successful`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from failoverd.events import Event, EventBus, utf8_safe


class ReloadRecord:
    """Listens on the bus; `last` is None until the first reload of this daemon's life."""

    def __init__(self, bus: EventBus, now: Callable[[], float]) -> None:
        self._now = now
        self.last: dict[str, Any] | None = None
        # the configuration serving now was loaded at start (it was valid, or there would be
        # no daemon), then at each accepted reload
        self.success_at = now()
        self.detach = bus.listen(self)

    def __call__(self, event: Event) -> None:
        if event.type not in ("config:reloaded", "config:rejected"):
            return
        at = round(self._now(), 3)
        ok = event.type == "config:reloaded"
        problems = [] if ok else [str(p) for p in event.fields.get("problems") or ()]
        self.last = {"ok": ok, "at": at, "source": utf8_safe(str(event.fields.get("source"))),
                     "problems": problems}
        if ok:
            self.success_at = at

    def status(self) -> dict[str, Any] | None:
        """`last_reload` of `GET /v1/status`."""
        return self.last

    def gauges(self) -> list[str]:
        ok = self.last is None or self.last["ok"]
        return [
            "# HELP failoverd_config_last_reload_successful Whether the last reload was "
            "accepted (1; also before any reload) or rejected (0: the previous configuration "
            "still serves, the file has problems).",
            "# TYPE failoverd_config_last_reload_successful gauge",
            f"failoverd_config_last_reload_successful {int(ok)}",
            "# HELP failoverd_config_last_reload_success_timestamp_seconds When the "
            "configuration serving now was loaded (start or accepted reload), epoch seconds.",
            "# TYPE failoverd_config_last_reload_success_timestamp_seconds gauge",
            f"failoverd_config_last_reload_success_timestamp_seconds {self.success_at:.3f}",
        ]
