"""Configuration: validation by key path, secrets, and the default chain rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from failoverd import config
from failoverd.errors import ConfigError
from tests.helpers import check_config, problems

ETC = Path(__file__).resolve().parent.parent / "etc" / "failoverd"

BASE = """
[providers.p]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
[models."p/a"]
provider = "p"
[models."p/b"]
provider = "p"
[models."p/c"]
provider = "p"
"""


@pytest.mark.parametrize(("routing", "chain"), [
    ('primary = "p/b"', ("p/b",)),  # fallbacks omitted, no from_models: none
    ('primary = "p/b"\nfallbacks = ["p/c", "p/a"]', ("p/b", "p/c", "p/a")),
    ('primary = "p/b"\nfallbacks = []\nfallbacks_from_models = true', ("p/b",)),  # [] disables
    ('primary = "p/b"\nfallbacks_from_models = true', ("p/b", "p/a", "p/c")),  # file order
    ('primary = "p/b"\nfallbacks = ["p/c", "p/b", "p/c", "p/a"]', ("p/b", "p/c", "p/a")),
    ('fallbacks_from_models = true', ("p/a", "p/b", "p/c")),  # no primary: the first model
    ('primary = "p/c"\nfallbacks = ["p/a"]\nfallbacks_from_models = true', ("p/c", "p/a")),
])
def test_default_chain_rules(routing: str, chain: tuple[str, ...]) -> None:
    cfg = config.loads(BASE + "[routing]\n" + routing, env={})
    assert cfg.default_chain == chain


def test_every_problem_is_reported_by_key_path() -> None:
    found = problems(BASE.replace('provider = "p"\n[models."p/b"]',
                                  'provider = "p"\ntier = "huge"\ncolour = 1\n[models."p/b"]') + """
[daemon]
max_inflight = "many"
socket_mode = "rw"
[routing]
primary = "p/zzz"
fallbacks = ["p/a", "nope"]
when_all_unavailable = "panic"
[breaker]
failure_rate = 2
[chains.fast]
models = ["p/a", "ghost"]
[surprise]
x = 1
""")
    expected = [
        "daemon.max_inflight: must be an integer, got a string",
        'daemon.socket_mode: must be an octal permission string like "0660", got \'rw\'',
        'models."p/a".tier: must be one of small, medium, large; got \'huge\'',
        'models."p/a".colour: unknown key',
        "routing.primary: no model 'p/zzz' in [models]",
        "routing.fallbacks[1]: no model 'nope' in [models]",
        "routing.when_all_unavailable: must be one of queue, fail; got 'panic'",
        "breaker.failure_rate: must be in (0, 1], got 2.0",
        "chains.fast.models[1]: no model 'ghost' in [models]",
        "surprise: unknown key",
    ]
    for line in expected:
        assert line in found, (line, found)


def test_secrets_from_env_file_and_credential(tmp_path) -> None:
    key_file = tmp_path / "k"
    key_file.write_text("sk-file\n")
    (tmp_path / "cred").write_text("sk-cred")
    text = f"""
[providers.e]
kind = "openai"
api_key_env = "MY_KEY"
[providers.f]
kind = "anthropic"
api_key_file = "{key_file}"
[providers.c]
kind = "gemini"
api_key_credential = "cred"
[models."e/m"]
provider = "e"
"""
    cfg = config.loads(text, env={"MY_KEY": "sk-env", "CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert [cfg.providers[p].api_key for p in "efc"] == ["sk-env", "sk-file", "sk-cred"]
    assert "sk-" not in repr(cfg)  # secrets never appear in reprs (and so never in logs)
    found = problems(text, env={})
    assert "providers.e.api_key_env: environment variable MY_KEY is not set or empty" in found
    assert any(p.startswith("providers.c.api_key_credential: CREDENTIALS_DIRECTORY") for p in found)


def test_two_secret_sources_is_an_error() -> None:
    found = problems('[providers.e]\nkind = "openai"\napi_key_env = "A"\napi_key_file = "/x"\n'
                     '[models."e/m"]\nprovider = "e"\n', env={"A": "x"})
    assert any("set only one of" in p for p in found)


def test_tcp_needs_token_file() -> None:
    found = problems(BASE + '[daemon]\ntcp = "127.0.0.1:8787"\n')
    assert "daemon.tcp_token_file: is required when tcp is set" in found


def test_reserved_and_colliding_names() -> None:
    found = problems(BASE + '[models.auto]\nprovider = "p"\n[chains."p/a"]\nmodels = ["p/b"]\n')
    assert any(p.startswith("models.auto:") for p in found)
    assert any(p.startswith('chains."p/a":') for p in found)


def test_not_toml_and_missing_file(tmp_path) -> None:
    assert problems("this is = = not toml")[0].startswith("not valid TOML")
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "missing.toml")
    assert "cannot read" in info.value.problems[0]


def test_shipped_example_configs_validate(tmp_path) -> None:
    for name in ("anthropic", "openai", "gemini"):
        (tmp_path / name).write_text("key")
    cfg = config.load(ETC / "failoverd.toml", env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert cfg.default_chain[0] == "anthropic/claude-sonnet-4-5"
    demo = config.load(ETC / "demo.toml", env={})
    assert all(p.kind == "simulated" for p in demo.providers.values())


async def test_check_config_cli_exit_codes(tmp_path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(BASE)
    bad = tmp_path / "bad.toml"
    bad.write_text(BASE + "[routing]\nprimary = 7\n")

    code, out = await check_config(good)
    assert code == 0 and "ok" in out
    code, out = await check_config(bad)
    assert code == 2
    assert "routing.primary: must be a string, got an integer" in out


def test_hook_event_types_are_checked() -> None:
    found = problems(BASE + '[[hooks]]\nevents = ["model:failovr", "breaker:*", "*"]\n'
                            'exec = ["/bin/true"]\n')
    assert len(found) == 1
    assert found[0].startswith("hooks[0].events[0]: unknown event type 'model:failovr'")


def test_base_urls_and_headers_are_checked_before_any_request() -> None:
    got = problems('''
[providers.a]
kind = "openai"
base_url = "http:///v1"
[providers.b]
kind = "openai"
base_url = "https://api.example.com:99999/v1"
[providers.c]
kind = "openai"
base_url = "https://api.example.com/v1"
headers = { "X-Ok" = "fine", "X-Bad" = "two\\nlines", "Bad Name" = "x" }
[models."a/m"]
provider = "a"
[routing]
primary = "a/m"
''')
    assert any(p.startswith("providers.a.base_url: is not a usable URL") for p in got), got
    assert any(p.startswith("providers.b.base_url: is not a usable URL") for p in got), got
    assert any(p.startswith("providers.c.headers.X-Bad: ") for p in got), got
    assert any(p.startswith('providers.c.headers."Bad Name": ') for p in got), got
    assert not any("X-Ok" in p for p in got)


def test_a_bad_base_url_is_quoted_without_its_password_or_query() -> None:
    got = problems('''
[providers.a]
kind = "openai"
base_url = "ftp://user:hunter2@api.example.com/v1?key=sk-secret"
[providers.b]
kind = "openai"
base_url = "https://user:hunter2@api.example.com:99999/v1?key=sk-secret"
[models."a/m"]
provider = "a"
[routing]
primary = "a/m"
''')
    assert "providers.a.base_url: must start with http:// or https://, got " \
        "'ftp://api.example.com/v1'" in got, got
    assert any(p.startswith("providers.b.base_url: is not a usable URL")
               and p.endswith("'https://api.example.com:99999/v1'") for p in got), got
    assert not any("hunter2" in p or "sk-secret" in p for p in got), got


def test_credentials_stay_out_of_the_headers_table_and_api_key_header_needs_a_key() -> None:
    got = problems('''
[providers.a]
kind = "openai"
base_url = "https://api.example.com/v1"
headers = { "Authorization" = "Bearer sk-in-the-file", "api-key" = "k", "X-Title" = "app" }
[providers.b]
kind = "openai"
base_url = "https://api.example.com/v1"
api_key_header = "api-key"
[providers.c]
kind = "simulated"
api_key_header = "api-key"
[providers.d]
kind = "anthropic"
api_key_env = "D_KEY"
api_key_header = "bad name"
[models."a/m"]
provider = "a"
[routing]
primary = "a/m"
''', env={"D_KEY": "sk-d"})
    assert any(p.startswith("providers.a.headers.Authorization: carries a credential, which "
                            "never goes in the file") for p in got), got
    assert any(p.startswith("providers.a.headers.api-key: carries a credential") and
               'api_key_header = "api-key"' in p for p in got), got
    assert not any("X-Title" in p or "sk-in-the-file" in p for p in got), got
    assert ("providers.b.api_key_header: names where the key goes, but none of api_key_env, "
            "api_key_file or api_key_credential gives one") in got
    assert "providers.c.api_key_header: only valid for HTTP provider kinds" in got
    assert any(p.startswith("providers.d.api_key_header: must be a header name") for p in got)
    ok = config.loads('''
[providers.azure]
kind = "openai"
base_url = "https://example.openai.azure.com/openai/v1"
api_key_env = "AZURE_KEY"
api_key_header = "api-key"
[models."azure/gpt"]
provider = "azure"
[routing]
primary = "azure/gpt"
''', env={"AZURE_KEY": "azure-secret"})
    assert ok.providers["azure"].api_key_header == "api-key"
    assert "azure-secret" not in repr(ok.providers["azure"])


def test_names_with_control_characters_are_refused() -> None:
    """A model id, provider or chain name ends up in headers, log lines, metrics labels and
    MQTT topics: a line break in one split log lines (the config took it)."""
    got = problems('''
[providers."p\\nq"]
kind = "simulated"
[providers.p]
kind = "simulated"
[models."p/line\\nbreak"]
provider = "p"
[models."p/ok"]
provider = "p"
[chains."fast\\t"]
models = ["p/ok"]
[routing]
primary = "p/ok"
''')
    assert 'providers."p\\nq": a provider name must be non-empty and hold no control ' \
        'characters' in got, got
    assert any(p.startswith('models."p/line\\nbreak": a model id must be non-empty') for p in got)
    assert any(p.startswith('chains."fast\\t": a chain name must be') for p in got), got
