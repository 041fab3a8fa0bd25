"""Configuration leftovers: integer keys have an upper bound (each reported by key path, all
at once, by ``failoverd --check-config``), and an integer too long for Python is a config
error, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from failoverd import config
from failoverd.errors import ConfigError
from failoverd.tomlreader import MAX_INTEGER
from tests.helpers import check_config, problems

BASE = """
[providers.p]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
"""
MODEL = '[models."p/a"]\nprovider = "p"\n'

# (table, key, largest accepted value); a model's keys are under [models."p/a"]
BOUNDS = [
    ("daemon", "max_inflight", config.MAX_IN_FLIGHT),
    ("daemon", "max_body_bytes", 1024 ** 3),
    ("mqtt", "port", 65535),
    ("mqtt", "queue_size", config.MAX_QUEUE_SIZE),
    ("model", "context_window", MAX_INTEGER),
    ("model", "max_output_tokens", MAX_INTEGER),
    ("model", "max_retries", 100),
    ("model", "max_concurrency", config.MAX_IN_FLIGHT),
    ("breaker", "failure_threshold", MAX_INTEGER),
    ("breaker", "minimum_calls", MAX_INTEGER),
    ("breaker", "half_open_calls", config.MAX_IN_FLIGHT),
    ("probes", "chat_max_tokens", 4096),
]


def text(table: str, key: str, value: int | str) -> str:
    if table == "model":
        return BASE + MODEL + f"{key} = {value}\n"
    return BASE + MODEL + f"[{table}]\n{key} = {value}\n"


def key_path(table: str, key: str) -> str:
    return f'models."p/a".{key}' if table == "model" else f"{table}.{key}"


@pytest.mark.parametrize(("table", "key", "maximum"), BOUNDS,
                         ids=[f"{t}.{k}" for t, k, _ in BOUNDS])
def test_integer_keys_have_an_upper_bound(table: str, key: str, maximum: int) -> None:
    config.loads(text(table, key, maximum), env={})  # the bound itself is fine
    assert problems(text(table, key, maximum + 1)) == [
        f"{key_path(table, key)}: must be at most {maximum}, got {maximum + 1}"]
    # before: max_retries = 10**18 and queue_size = 10**30 passed --check-config
    [huge] = problems(text(table, key, 10 ** 30))
    assert huge == f"{key_path(table, key)}: must be at most {maximum}, got 1000000000000... " \
                   "(31 digits)"


def test_allowed_uids_are_user_ids() -> None:
    config.loads(BASE + MODEL + "[daemon]\nallowed_uids = [0, 1000, 4294967294]\n", env={})
    assert problems(BASE + MODEL + "[daemon]\nallowed_uids = [1000, 4294967295]\n") == [
        "daemon.allowed_uids: must be a list of user ids (integers from 0 to 4294967294)"]


def test_the_defaults_and_the_shipped_configs_are_within_the_bounds() -> None:
    root = Path(__file__).resolve().parents[1]
    env = {"CREDENTIALS_DIRECTORY": "/nonexistent"}
    for path in (root / "etc" / "failoverd").glob("*.toml"):
        try:
            config.load(path, env=env)
        except ConfigError as exc:  # secrets are not here: only they may be missing
            assert all(("api_key" in p or "token" in p or "password" in p)
                       for p in exc.problems), exc.problems
    config.loads(BASE + MODEL, env={})


async def test_check_config_lists_every_out_of_range_integer(tmp_path: Path) -> None:
    path = tmp_path / "bounds.toml"
    path.write_text(BASE + MODEL + "max_retries = 1000000000000000000\n"
                    "[mqtt]\nport = 70000\nqueue_size = " + "1" + "0" * 30 + "\n"
                    "[probes]\nchat_max_tokens = 100000\n")
    code, out = await check_config(path)
    assert code == 2, out
    lines = out.splitlines()
    assert [line.strip().split(":")[0] for line in lines[1:]] == [
        "mqtt.port", "mqtt.queue_size", 'models."p/a".max_retries', "probes.chat_max_tokens"]


async def test_an_integer_too_long_for_python_is_a_config_error(tmp_path: Path) -> None:
    # tomllib's int() refuses over 4300 digits with a plain ValueError: a traceback, exit 1
    path = tmp_path / "long.toml"
    path.write_text(BASE + MODEL + "[mqtt]\nqueue_size = " + "9" * 5000 + "\n")
    code, out = await check_config(path)
    assert code == 2, out
    assert "Traceback" not in out
    assert f"{path}: not valid TOML: an integer has too many digits" in out
    assert problems(BASE + MODEL + "x = " + "9" * 5000 + "\n") == [
        "not valid TOML: an integer has too many digits"]


# --------------------------------------------------------------------------- secrets, hooks

SECRET = "sk-first-0123456789"


@pytest.mark.parametrize("content", [f"{SECRET}\nsk-second\n", f"# my key\n{SECRET}\n",
                                     f"{SECRET}\tx"])
def test_an_api_key_of_more_than_one_line_is_a_config_error(tmp_path: Path,
                                                            content: str) -> None:
    # it passed, then every request failed inside the HTTP client with a traceback logged and
    # the model reported "incapable"
    key = tmp_path / "key"
    key.write_text(content)
    found = problems(BASE.replace('kind = "openai"', f'kind = "openai"\napi_key_file = "{key}"')
                     + MODEL)
    assert found == [f"providers.p.api_key_file: {key} holds a line break or another control "
                     "character; a key or token is a single line"]
    assert SECRET not in found[0]


def test_the_other_secret_sources_are_checked_too(tmp_path: Path) -> None:
    (tmp_path / "cred").write_text(f"{SECRET}\r\nmore")
    text = BASE.replace('kind = "openai"', 'kind = "openai"\napi_key_env = "K"') + MODEL + """
[providers.q]
kind = "anthropic"
api_key_credential = "cred"
"""
    found = problems(text, {"K": f"{SECRET}\nother", "CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert found == [
        "providers.p.api_key_env: environment variable K holds a line break or another "
        "control character; a key or token is a single line",
        f"providers.q.api_key_credential: {tmp_path / 'cred'} holds a line break or another "
        "control character; a key or token is a single line"]
    assert problems(BASE.replace('kind = "openai"', 'kind = "openai"\napi_key_env = "K"')
                        + MODEL, {"K": "   "}) == [
        "providers.p.api_key_env: environment variable K is not set or empty"]


def test_a_tcp_token_of_more_than_one_line_is_a_config_error(tmp_path: Path) -> None:
    # no client can send a line break in a header: every TCP request would get 401
    token = tmp_path / "token"
    token.write_text("tok-1\ntok-2\n")
    assert problems(BASE + MODEL + f'[daemon]\ntcp = "127.0.0.1:8787"\n'
                    f'tcp_token_file = "{token}"\n') == [
        f"daemon.tcp_token_file: {token} holds a line break or another control character; "
        "a key or token is a single line"]


async def test_a_secret_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    key = tmp_path / "key.bin"
    key.write_bytes(b"\xff\xfe\x00binary")
    path = tmp_path / "c.toml"
    path.write_text(BASE.replace('kind = "openai"', f'kind = "openai"\napi_key_file = "{key}"')
                    + MODEL)
    code, out = await check_config(path)
    assert code == 2, out  # it was a UnicodeDecodeError traceback
    assert f"providers.p.api_key_file: {key} is not UTF-8 text" in out


@pytest.mark.parametrize("reason", ["cancelled", "unavailable", "incapable", "slow"])
def test_simulate_failure_takes_upstream_failure_reasons_only(reason: str) -> None:
    # "cancelled" made every request a 502 failover_aborted; unavailable and incapable are the
    # router's own verdicts, never an upstream's
    sim = '[providers.s]\nkind = "simulated"\nsimulate_failure = "%s"\n'
    [found] = problems(BASE + MODEL + sim % reason)
    assert found.startswith("providers.s.simulate_failure: must be one of rate_limit, "
                            "overloaded, server_error, timeout, connection, invalid_response, "
                            "auth, billing, not_found, context_overflow, content_filter, "
                            f"bad_request; got '{reason}'")
    for ok in ("rate_limit", "timeout", "bad_request"):
        config.loads(BASE + MODEL + sim % ok, env={})


def test_an_empty_tier_is_not_a_tier() -> None:
    assert problems(BASE + MODEL + 'tier = ""\n') == [
        "models.\"p/a\".tier: must be one of small, medium, large; got ''"]


def test_hook_programs_that_could_never_start_are_config_errors() -> None:
    hooks = ('[[hooks]]\nevents = ["*"]\nexec = [""]\n'
             '[[hooks]]\nevents = ["*"]\nexec = ["/bin/echo", "a\\u0000b"]\n')
    assert problems(BASE + MODEL + hooks) == [
        "hooks[0].exec[0]: the program must not be empty",
        "hooks[1].exec[1]: must not contain a NUL"]


@pytest.mark.parametrize("source", ["env", "file", "credential"])
def test_a_key_pasted_where_a_source_is_named_is_not_quoted(tmp_path: Path,
                                                             source: str) -> None:
    # a key pasted into api_key_env/_file/_credential reached the journal, the reload's 422
    # and config:rejected in the problem that said the source was not there
    key = "sk-proj-Zq81" + "x" * 40
    found = problems(BASE.replace('kind = "openai"', f'kind = "openai"\napi_key_{source} = '
                                  f'"{key}"') + MODEL, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert len(found) == 1 and found[0].startswith(f"providers.p.api_key_{source}: "), found
    assert key not in found[0] and "not shown, it could be a key" in found[0], found


def test_a_source_that_cannot_be_a_key_is_quoted(tmp_path: Path) -> None:
    # the names that help an operator stay: an upper-case variable, a path, a credential's name
    assert problems(BASE.replace('kind = "openai"', 'kind = "openai"\napi_key_env = "MY_KEY"')
                    + MODEL, {}) == [
        "providers.p.api_key_env: environment variable MY_KEY is not set or empty"]
    assert problems(BASE.replace('kind = "openai"', 'kind = "openai"\napi_key_file = '
                                 f'"{tmp_path}/k"') + MODEL, {}) == [
        f"providers.p.api_key_file: cannot read {tmp_path}/k: No such file or directory"]
    assert problems(BASE.replace('kind = "openai"', 'kind = "openai"\napi_key_credential = '
                                 '"openai"') + MODEL, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == [
        f"providers.p.api_key_credential: cannot read {tmp_path}/openai: No such file or "
        "directory"]
