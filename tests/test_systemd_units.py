"""systemd units: they verify, sandbox exposure <= 2.0, and they match the daemon's defaults."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from failoverd.config import DaemonConfig

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
SERVICE = SYSTEMD_DIR / "failoverd.service"
SOCKET = SYSTEMD_DIR / "failoverd.socket"
DROP_IN = SYSTEMD_DIR / "failoverd.service.d" / "notify-reload.conf"
MAX_EXPOSURE = 2.0


def _entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order; systemd allows repeated keys."""
    out = []
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not an assignment: {raw!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def _values(path: Path, section: str, key: str) -> list[str]:
    return [v for s, k, v in _entries(path) if s == section and k == key]


def _one(path: Path, section: str, key: str) -> str:
    values = _values(path, section, key)
    assert len(values) == 1, f"{path.name}: [{section}] {key}= set {len(values)} times"
    return values[0]


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert m, f"unsupported time span {value!r}"
    return float(m.group(1)) * (60 if m.group(2) in ("min", "m") else 1)


# --- static checks: the contract, readable without systemd ------------------------------------


def test_service_lifecycle_settings() -> None:
    assert _one(SERVICE, "Service", "Type") == "notify"
    assert _one(SERVICE, "Service", "NotifyAccess") == "main"
    assert _one(SERVICE, "Service", "ExecStart").split()[1:] == [
        "--config", "/etc/failoverd/failoverd.toml"]
    assert _one(SERVICE, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert _seconds(_one(SERVICE, "Service", "WatchdogSec")) == 30
    assert _one(SERVICE, "Service", "Restart") == "on-failure"
    # failoverd exits 2 on an invalid config: no restart loop on it
    assert _one(SERVICE, "Service", "RestartPreventExitStatus") == "2"
    # systemd must not SIGKILL a drain the daemon is allowed to run.
    stop = _seconds(_one(SERVICE, "Service", "TimeoutStopSec"))
    assert stop > DaemonConfig().shutdown_timeout + 5


def test_service_identity_and_directories() -> None:
    assert _one(SERVICE, "Service", "DynamicUser") == "yes"
    assert _one(SERVICE, "Service", "StateDirectory") == "failoverd"
    assert DaemonConfig().state_dir == "/var/lib/failoverd"
    assert _one(SERVICE, "Service", "ConfigurationDirectory") == "failoverd"
    # The socket unit owns /run/failoverd; a RuntimeDirectory= would delete it on service stop.
    assert _values(SERVICE, "Service", "RuntimeDirectory") == []
    assert "LoadCredential=" in SERVICE.read_text()  # documented for API keys


def test_service_pulls_in_the_socket_softly() -> None:
    assert "failoverd.socket" in _one(SERVICE, "Unit", "Wants").split()
    assert "failoverd.socket" in _one(SERVICE, "Unit", "After").split()
    assert _values(SERVICE, "Unit", "Requires") == []
    assert _one(SERVICE, "Install", "Also") == "failoverd.socket"


def test_socket_matches_the_daemon_defaults() -> None:
    defaults = DaemonConfig()
    assert _one(SOCKET, "Socket", "ListenStream") == defaults.socket
    assert int(_one(SOCKET, "Socket", "SocketMode"), 8) == defaults.socket_mode == 0o660
    assert _one(SOCKET, "Socket", "SocketGroup")
    assert _one(SOCKET, "Socket", "DirectoryMode") == "0755"
    assert _one(SOCKET, "Install", "WantedBy") == "sockets.target"


def test_notify_reload_drop_in() -> None:
    assert _one(DROP_IN, "Service", "Type") == "notify-reload"
    assert _one(DROP_IN, "Service", "ReloadSignal") == "SIGHUP"
    # Cleared, or systemd would run kill -HUP on top of its own signal: two reloads.
    assert _one(DROP_IN, "Service", "ExecReload") == ""


# --- systemd-analyze --------------------------------------------------------------------------


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    return tool


def _systemd_version(tool: str) -> int:
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, check=True).stdout
    m = re.match(r"systemd (\d+)", out)
    assert m, out
    return int(m.group(1))


@pytest.fixture
def unit_dir(tmp_path: Path) -> Iterator[Path]:
    """The units copied with ExecStart on an executable that exists here (verify checks it).

    The drop-in directory is left out: tests that want it copy it explicitly.
    """
    text = SERVICE.read_text()
    text, n = re.subn(r"(?m)^ExecStart=/usr/bin/failoverd ", f"ExecStart={sys.executable} ", text)
    assert n == 1
    (tmp_path / "failoverd.service").write_text(text)
    shutil.copy(SOCKET, tmp_path / "failoverd.socket")
    yield tmp_path


def _verify(tool: str, *units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "verify", "--man=no", *map(str, units)],
        capture_output=True, text=True, timeout=30,
    )


@pytest.mark.systemd
def test_units_verify(unit_dir: Path) -> None:
    tool = _analyze()
    result = _verify(tool, unit_dir / "failoverd.service", unit_dir / "failoverd.socket")
    assert result.returncode == 0, result.stderr
    # Warnings about our units (unknown keys, bad values) do not fail verify: catch them too.
    assert "failoverd" not in result.stderr, result.stderr


@pytest.mark.systemd
def test_units_verify_with_notify_reload_drop_in(unit_dir: Path) -> None:
    tool = _analyze()
    if (version := _systemd_version(tool)) < 253:
        pytest.skip(f"Type=notify-reload needs systemd >= 253, this is {version}")
    shutil.copytree(DROP_IN.parent, unit_dir / "failoverd.service.d")
    result = _verify(tool, unit_dir / "failoverd.service", unit_dir / "failoverd.socket")
    assert result.returncode == 0, result.stderr
    assert "failoverd" not in result.stderr, result.stderr


@pytest.mark.systemd
def test_verify_catches_a_broken_unit(unit_dir: Path) -> None:
    # Guards the two tests above: a typo in a key must show up in verify's output.
    tool = _analyze()
    broken = unit_dir / "failoverd.service"
    broken.write_text(broken.read_text().replace("ProtectHome=yes", "ProtectHom=yes"))
    result = _verify(tool, broken, unit_dir / "failoverd.socket")
    assert "ProtectHom" in result.stderr


@pytest.mark.systemd
def test_security_exposure_is_at_most_2(unit_dir: Path) -> None:
    tool = _analyze()
    result = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(unit_dir / "failoverd.service")],
        capture_output=True, text=True, timeout=30,
    )
    m = re.search(r"Overall exposure level for failoverd\.service:\s*([\d.]+)", result.stdout)
    assert m, result.stdout + result.stderr
    exposure = float(m.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout
