"""`failoverd`: run the daemon, check a config, or run the self-contained demo."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
from importlib import resources

from failoverd import __version__, logs
from failoverd import config as config_mod
from failoverd.config import Config
from failoverd.errors import ConfigError, FailoverdError

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _level(text: str) -> str:
    """A log level name in any case (``--log-level``, ``$FAILOVERD_LOG_LEVEL``); an unknown one
    is a usage error (exit 2), not a traceback after the config was read."""
    name = text.strip().upper()
    if name == "WARN":
        name = "WARNING"
    if name not in _LEVELS:
        raise argparse.ArgumentTypeError(f"unknown log level {text!r}; known: "
                                         f"{', '.join(_LEVELS)}")
    return name


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="failoverd", description="Local LLM failover daemon.")
    p.add_argument("--config", default=os.environ.get("FAILOVERD_CONFIG", config_mod.DEFAULT_PATH),
                   help="TOML config file (default: %(default)s)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the config and exit: 0 valid, 2 invalid")
    p.add_argument("--demo", action="store_true",
                   help="run on the embedded demo config (no API keys, no network) and show "
                        "a request served")
    p.add_argument("--once", action="store_true",
                   help="with --demo: exit after showing the demo requests")
    p.add_argument("--log-level", type=_level,
                   default=os.environ.get("FAILOVERD_LOG_LEVEL", "INFO"),
                   help="DEBUG, INFO, WARNING or ERROR (default: $FAILOVERD_LOG_LEVEL or INFO)")
    p.add_argument("--version", action="version", version=f"failoverd {__version__}")
    return p


def demo_config() -> Config:
    text = resources.files("failoverd").joinpath("demo.toml").read_text(encoding="utf-8")
    cfg = config_mod.loads(text, env={})
    # a private socket, so several users can run the demo, and a fresh state directory, so
    # every run starts with closed breakers and shows the same failover
    tmp = tempfile.gettempdir()
    uid = os.getuid()
    daemon = dataclasses.replace(cfg.daemon, socket=f"{tmp}/failoverd-demo-{uid}.sock",
                                 state_dir=tempfile.mkdtemp(prefix="failoverd-demo-"))
    return dataclasses.replace(cfg, daemon=daemon, source="<embedded demo>")


class _EarlyHangup:
    """Catches SIGHUP until the supervisor's handler takes over, and after it is gone.

    SIGHUP's default action ends the process, and systemd counts a SIGHUP death as a clean
    exit: ``Restart=on-failure`` would not start the daemon again. A reload asked for while
    the daemon starts (the config may have changed since it was read) is done once it runs.
    """

    def __init__(self) -> None:
        self.pending = False

    def __call__(self, signum: int, frame: object) -> None:
        self.pending = True

    def install(self) -> None:
        signal.signal(signal.SIGHUP, self)

    def take(self) -> bool:
        """Whether a SIGHUP arrived since the last call."""
        pending, self.pending = self.pending, False
        return pending


def main(argv: list[str] | None = None) -> int:
    hangup = _EarlyHangup()
    hangup.install()
    args = _parser().parse_args(argv)
    try:
        cfg = demo_config() if args.demo else config_mod.load(args.config)
    except ConfigError as exc:
        print(f"failoverd: {args.config}: invalid configuration", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"{cfg.source}: ok ({len(cfg.providers)} providers, {len(cfg.models)} models, "
              f"default chain: {' > '.join(cfg.default_chain)})")
        for dropin in cfg.dropins:
            print(f"  with drop-in {dropin}")
        return 0
    logs.setup(cfg.daemon.log_format, args.log_level)
    try:
        if args.demo:
            from failoverd.demo import run_demo
            try:
                return asyncio.run(run_demo(cfg, once=args.once))
            finally:
                shutil.rmtree(cfg.daemon.state_dir, ignore_errors=True)
        from failoverd.supervisor import run_blocking
        run_blocking(cfg, args.config, early_reload=hangup.take)
    except FailoverdError as exc:
        print(f"failoverd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
