"""Configuration review: values that passed validation and then failed at run time, and
problems reported for keys that were fine."""

from __future__ import annotations

from pathlib import Path

import pytest

from failoverd import config
from tests.helpers import check_config, problems
from tests.test_config_leftovers import BASE as PROVIDER
from tests.test_config_leftovers import MODEL

BASE = PROVIDER + MODEL


@pytest.mark.parametrize(("table", "key", "value", "expected"), [
    ("probes", "interval", "inf", "probes.interval: must be a finite number, got inf"),
    ("routing", "deadline", "nan", "routing.deadline: must be a finite number, got nan"),
    ("breaker", "auth_open_seconds", "inf", "breaker.auth_open_seconds: must be a finite"),
    ("probes", "interval", "1e14", "probes.interval: must be at most 1e+09, got 1e+14"),
    ("routing", "queue_timeout", "1" + "0" * 400, "routing.queue_timeout: is too large"),
])
def test_non_finite_and_huge_numbers_are_rejected(table: str, key: str, value: str,
                                                  expected: str) -> None:
    # TOML has inf and nan, and integers of any size; before, these passed --check-config and
    # then crashed the daemon at start (or on a reload) with an OverflowError from the prober
    found = problems(BASE + f"[{table}]\n{key} = {value}\n")
    assert len(found) == 1
    assert found[0].startswith(expected), found


async def test_check_config_with_a_huge_integer_exits_2_without_a_traceback(
        tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_text(BASE + "[providers.p.headers]\n[probes]\ninterval = 1" + "0" * 400 + "\n")
    code, out = await check_config(path)
    assert code == 2, out
    assert "Traceback" not in out
    assert "probes.interval: is too large" in out


def test_unknown_provider_kind_does_not_report_its_valid_keys() -> None:
    # a typo in kind used to also list base_url, api_key_env, ... as "unknown key" and the
    # models of that provider as naming no provider: four wrong problems around one real one
    found = problems(BASE + """
[providers.q]
kind = "openia"
base_url = "https://api.example.com/v1"
api_key_env = "Q_KEY"
timeout = 10
bse_url = "typo"
[models."q/m"]
provider = "q"
""")
    assert found == [
        "providers.q.kind: must be one of openai, anthropic, gemini, ollama, bedrock, "
        "vertex, simulated; "
        "got 'openia'",
        "providers.q.bse_url: unknown key",
    ]


@pytest.mark.parametrize("tcp", ["0.0.0.0:8787", "[::]:8787", "192.168.1.5:8787",
                                 "example.com:8787"])
def test_tcp_listener_must_be_on_loopback(tmp_path: Path, tcp: str) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    found = problems(f'[daemon]\ntcp = "{tcp}"\ntcp_token_file = "{token}"\n' + BASE)
    assert len(found) == 1
    assert found[0].startswith("daemon.tcp: must be a loopback address"), found


@pytest.mark.parametrize("tcp", ["127.0.0.1:8787", "127.0.0.2:8787", "[::1]:8787",
                                 "localhost:8787"])
def test_loopback_tcp_listeners_are_accepted(tmp_path: Path, tcp: str) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    cfg = config.loads(f'[daemon]\ntcp = "{tcp}"\ntcp_token_file = "{token}"\n' + BASE, env={})
    assert cfg.daemon.tcp == tcp
