"""[clients.<name>] configuration: who a client is, what it may use, and the problems of a
table that names no one, a uid or token in two clients, or a model that does not exist."""

from __future__ import annotations

from pathlib import Path

from failoverd import config as config_mod
from failoverd.service import hook_secrets
from tests.helpers import problems

BASE = """
[providers.local]
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
[providers.cloud]
kind = "openai"
base_url = "http://127.0.0.1:2/v1"
[models."local/llama"]
provider = "local"
[models."local/qwen"]
provider = "local"
[models."cloud/big"]
provider = "cloud"
cost = { input = 1.0, output = 2.0 }
[chains.cheap]
models = ["local/qwen", "local/llama"]
"""


def test_a_client_by_uid_and_by_token(tmp_path: Path) -> None:
    token = tmp_path / "batch.token"
    token.write_text("batch-secret\n")
    cfg = config_mod.loads(BASE + f"""
[clients.batch]
uids = [1001]
tcp_token_file = "{token}"
models = ["local/*", "cheap"]
max_rpm = 60
max_concurrency = 4
max_cost_per_day = 2.0
[clients.ide]
uids = [1000, 1002]
""")
    batch, ide = cfg.clients["batch"], cfg.clients["ide"]
    assert batch.uids == (1001,) and batch.tcp_token == "batch-secret"
    assert batch.models == ("local/*", "cheap")
    assert (batch.max_rpm, batch.max_concurrency, batch.max_cost_per_day) == (60, 4, 2.0)
    assert batch.max_cost_per_month == 0
    assert "batch-secret" not in repr(batch)
    assert ide.models is None and ide.uids == (1000, 1002) and ide.max_rpm == 0


def test_problems_name_their_keys() -> None:
    found = problems(BASE + """
[clients.a]
uids = [1001]
models = ["nope", "remote/*", "default"]
max_rpm = -1
colour = "red"
[clients.b]
uids = [1001, true]
[clients.c]
max_rpm = 5
""", env={})
    text = "\n".join(found)
    assert "clients.a.models[0]: no model, chain or pool 'nope'" in text
    assert "clients.a.models[1]: 'remote/*' matches no model, chain or pool" in text
    assert "clients.a.max_rpm" in text
    assert "clients.a.colour" in text
    assert "clients.b.uids: must be a list of user ids" in text
    assert "clients.c: names no one" in text


def test_a_uid_or_token_in_two_clients_is_an_error() -> None:
    env = {"T1": "same", "T2": "same"}
    found = problems(BASE + """
[clients.a]
uids = [1001]
tcp_token_env = "T1"
[clients.b]
uids = [1001]
tcp_token_env = "T2"
""", env=env)
    text = "\n".join(found)
    assert "clients.b.uids: uid 1001 is already client 'a''s" in text
    assert "clients.b.tcp_token: is also client 'a''s token" in text


def test_a_uid_outside_allowed_uids_and_a_cap_without_prices() -> None:
    found = problems("""
[daemon]
allowed_uids = [1000]
[providers.local]
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
[models."local/llama"]
provider = "local"
[clients.batch]
uids = [1001]
max_cost_per_day = 2
""")
    text = "\n".join(found)
    assert "clients.batch.uids: uid 1001 is not in daemon.allowed_uids" in text
    assert "clients.batch.max_cost_per_day: needs models with prices" in text


def test_the_shipped_example_validates_with_its_clients(tmp_path: Path) -> None:
    example = (Path(__file__).resolve().parent.parent / "etc" / "failoverd"
               / "failoverd.toml").read_text()
    start = example.index("# [clients.nightly-batch]")
    block = example[start:example.index("\n\n", start)]
    uncommented = "\n".join(line[2:] for line in block.splitlines()
                            if not line.startswith("# # "))
    for name in ("anthropic", "openai", "gemini"):
        (tmp_path / name).write_text("key")
    path = tmp_path / "failoverd.toml"
    path.write_text(example.replace(block, uncommented))
    cfg = config_mod.load(path, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    batch = cfg.clients["nightly-batch"]
    assert (batch.uids, batch.max_rpm, batch.max_concurrency, batch.max_cost_per_day) == (
        (1001,), 60, 4, 2.0)
    assert cfg.clients["ide"].models is None


def test_a_client_token_is_kept_from_hooks() -> None:
    cfg = config_mod.loads(BASE + """
[clients.batch]
tcp_token_env = "BATCH_TOKEN"
""", env={"BATCH_TOKEN": "batch-secret"})
    assert "batch-secret" in hook_secrets(cfg)


def test_an_empty_model_list_is_an_error() -> None:
    # LiteLLM reads `models: []` as every model; here it would be none: neither is guessed
    found = problems(BASE + """
[clients.a]
uids = [1001]
models = []
""", env={})
    assert any(p.startswith("clients.a.models: is empty") for p in found)
