"""Drop-ins: `<config>.d/*.toml` read in lexical order after the main file, merged, and every
problem naming the file it came from."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from pathlib import Path

import orjson
import pytest

from failoverd import config as config_mod
from failoverd import dropins
from failoverd.errors import ConfigError
from failoverd.events import EVENT_TYPES
from tests.helpers import check_config

MAIN = """
[providers.a]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
[models."a/m"]
provider = "a"
tier = "small"
capabilities = ["tools"]
[routing]
primary = "a/m"
deadline = 30
[[hooks]]
events = ["model:failover"]
exec = ["/bin/true"]
"""


def write(tmp_path: Path, main: str = MAIN, **pieces: str | bytes) -> Path:
    """The main file failoverd.toml and its drop-ins (_name=text; a name's other '_' are
    '-')."""
    path = tmp_path / "failoverd.toml"
    path.write_text(main)
    for name, text in pieces.items():
        drop = dropins.directory(path) / f"{name[1:].replace('_', '-')}.toml"
        drop.parent.mkdir(exist_ok=True)
        if isinstance(text, bytes):
            drop.write_bytes(text)
        else:
            drop.write_text(text)
    return path


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_mod.load(path, env=env or {})
    return info.value.problems


def test_no_directory_is_the_main_file_alone(tmp_path: Path) -> None:
    cfg = config_mod.load(write(tmp_path), env={})
    assert cfg.dropins == ()
    assert cfg.source == str(tmp_path / "failoverd.toml")
    assert dropins.directory(cfg.source) == tmp_path / "failoverd.toml.d"


def test_tables_merge_key_by_key_and_later_files_win(tmp_path: Path) -> None:
    path = write(tmp_path,
                 # read second, although written first: lexical order of the names
                 _20_late='[models."a/m"]\ntier = "large"\n[routing]\ndeadline = 90\n',
                 _10_team='[providers.b]\nkind = "openai"\nbase_url = "http://127.0.0.1:8/v1"\n'
                          '[models."b/m"]\nprovider = "b"\n[models."a/m"]\ntier = "medium"\n'
                          '[routing]\nfallbacks = ["b/m"]\ndeadline = 60\n')
    cfg = config_mod.load(path, env={})
    d = tmp_path / "failoverd.toml.d"
    assert cfg.dropins == (str(d / "10-team.toml"), str(d / "20-late.toml"))
    assert cfg.models["a/m"].tier == "large"  # 20 over 10 over the main file
    assert cfg.models["a/m"].capabilities == frozenset({"tools"})  # untouched keys stay
    assert cfg.routing.deadline == 90
    assert cfg.routing.fallbacks == ("b/m",)
    assert cfg.routing.primary == "a/m"
    # models a drop-in adds come after the main file's, in the order read
    assert list(cfg.models) == ["a/m", "b/m"]
    assert cfg.default_chain == ("a/m", "b/m")


def test_a_plain_array_is_replaced_whole(tmp_path: Path) -> None:
    path = write(tmp_path, _50='[models."a/m"]\ncapabilities = ["vision"]\n')
    assert config_mod.load(path, env={}).models["a/m"].capabilities == frozenset({"vision"})


def test_hooks_are_appended_and_an_empty_array_empties_them(tmp_path: Path) -> None:
    hook = '[[hooks]]\nevents = ["breaker:opened"]\nexec = ["/bin/{}"]\n'
    path = write(tmp_path, _10=hook.format("a"), _20=hook.format("b"))
    cfg = config_mod.load(path, env={})
    assert [h.exec for h in cfg.hooks] == [("/bin/true",), ("/bin/a",), ("/bin/b",)]
    # hooks = [] drops what was read before it (the package's); a later drop-in adds again
    path = write(tmp_path, _10=hook.format("a"), _15="hooks = []\n", _20=hook.format("b"))
    assert [h.exec for h in config_mod.load(path, env={}).hooks] == [("/bin/b",)]


def test_only_toml_files_are_read_and_not_dot_files(tmp_path: Path) -> None:
    path = write(tmp_path, _10='[routing]\ndeadline = 5\n')
    d = dropins.directory(path)
    for name in (".20-swap.toml", "30.toml~", "40.toml.rpmnew", "50.conf", "README"):
        (d / name).write_text("not toml at all = = =\n")
    cfg = config_mod.load(path, env={})
    assert cfg.dropins == (str(d / "10.toml"),)
    assert cfg.routing.deadline == 5


def test_a_broken_dropin_is_named_with_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, _10='[routing]\ndeadline = 5\n',
                 _20_broken='[routing]\nretry_after_max = sk-live-0123\n')
    broken = tmp_path / "failoverd.toml.d" / "20-broken.toml"
    [problem] = problems_of(path)
    assert problem.startswith(f"{broken}: not valid TOML: ")
    assert "line 2, column 19" in problem
    assert "sk-live" not in problem


def test_every_broken_file_is_listed_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, _10=b'[routing]\n# caf\xe9\n', _20="[routing\n")
    d = tmp_path / "failoverd.toml.d"
    found = problems_of(path)
    assert found == [
        f"{d / '10.toml'}: not valid TOML: not UTF-8 text: byte 0xe9 at line 2, column 6 "
        "(TOML files are UTF-8)",
        f"{d / '20.toml'}: not valid TOML: Expected ']' at the end of a table declaration "
        "(at line 1, column 9)",
    ]


def test_an_unreadable_dropin_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, _10='[routing]\ndeadline = 5\n')
    # a dangling symlink: what a root-only file is to an unprivileged reader, and to root too
    (dropins.directory(path) / "20-gone.toml").symlink_to(tmp_path / "nowhere.toml")
    [problem] = problems_of(path)
    assert problem == (f"{tmp_path / 'failoverd.toml.d' / '20-gone.toml'}: cannot read: "
                       "No such file or directory")


def test_a_directory_named_like_a_dropin_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path)
    (dropins.directory(path) / "10-team.toml").mkdir(parents=True)
    assert problems_of(path) == [
        f"{tmp_path / 'failoverd.toml.d' / '10-team.toml'}: cannot read: Is a directory"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 0000")
def test_a_file_without_read_permission_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, _10='[routing]\ndeadline = 5\n')
    (dropins.directory(path) / "10.toml").chmod(0)
    [problem] = problems_of(path)
    assert problem.endswith("10.toml: cannot read: Permission denied")


def test_a_directory_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path)
    dropins.directory(path).write_text("")
    [problem] = problems_of(path)
    assert problem == (f"{tmp_path / 'failoverd.toml.d'}: cannot read the drop-in directory: "
                       "Not a directory")


def test_validation_problems_name_the_file_that_set_the_key(tmp_path: Path) -> None:
    path = write(tmp_path,
                 _10_team='[models."a/m"]\ntier = "huge"\n[chains.fast]\nmodels = ["a/m", "x/y"]\n'
                          '[[hooks]]\nevents = ["nope"]\nexec = ["/bin/true"]\n',
                 _20_more='[routing]\ndeadline = -1\n[probes]\nkindd = "none"\n')
    d = tmp_path / "failoverd.toml.d"
    team, more = d / "10-team.toml", d / "20-more.toml"
    assert sorted(problems_of(path)) == sorted([
        f"{team}: models.\"a/m\".tier: must be one of small, medium, large; got 'huge'",
        f"{team}: chains.fast.models[1]: no model 'x/y' in [models]",
        f"{team}: hooks[1].events[0]: unknown event type 'nope'; known: "
        + problems_of_hook_types(),
        f"{more}: routing.deadline: must be greater than 0, got -1.0",
        f"{more}: probes.kindd: unknown key",
    ])


def problems_of_hook_types() -> str:
    return f"{', '.join(EVENT_TYPES)}, '*', '<category>:*'"


def test_a_key_the_main_file_set_names_the_main_file(tmp_path: Path) -> None:
    main = MAIN.replace('tier = "small"', 'tier = "tiny"')
    path = write(tmp_path, main, _10='[routing]\ndeadline = 5\n')
    assert problems_of(path) == [
        f"{path}: models.\"a/m\".tier: must be one of small, medium, large; got 'tiny'"]


def test_a_missing_key_names_every_file_that_wrote_its_table(tmp_path: Path) -> None:
    path = write(tmp_path, _10='[models."b/m"]\ntier = "small"\n',
                 _20='[models."b/m"]\ncontext_window = 1000\n')
    d = tmp_path / "failoverd.toml.d"
    assert problems_of(path) == [
        f"{d / '10.toml'}, {d / '20.toml'}: models.\"b/m\".provider: is required"]


def test_a_value_replaced_by_a_later_file_is_blamed_on_it(tmp_path: Path) -> None:
    path = write(tmp_path, _10='[routing]\ndeadline = -5\n', _20='[routing]\ndeadline = -6\n')
    assert problems_of(path) == [
        f"{tmp_path / 'failoverd.toml.d' / '20.toml'}: routing.deadline: must be greater than "
        "0, got -6.0"]


def test_a_problem_without_a_key_set_anywhere_has_no_file(tmp_path: Path) -> None:
    path = write(tmp_path, "", _10='[routing]\ndeadline = 5\n')
    assert 'models: at least one [models."<id>"] entry is required' in problems_of(path)


def test_a_secret_in_a_dropin_is_not_echoed(tmp_path: Path) -> None:
    secret = "sk-proj-Zq81secretvalue"
    path = write(tmp_path, _90_secrets=f'[providers.a]\napi_key = "{secret}"\n'
                 f'headers = {{ Authorization = "Bearer {secret}" }}\n')
    found = problems_of(path)
    drop = tmp_path / "failoverd.toml.d" / "90-secrets.toml"
    assert f"{drop}: providers.a.api_key: unknown key" in found
    assert any(p.startswith(f"{drop}: providers.a.headers") for p in found), found
    assert secret not in "\n".join(found)


def test_key_paths_are_read_back_as_tomlreader_writes_them() -> None:
    assert dropins.key_path('models."openai/gpt-5".tier: x') == ("models", "openai/gpt-5", "tier")
    assert dropins.key_path("hooks[2].events[0]: x") == ("hooks", 2, "events", 0)
    assert dropins.key_path('providers."a\\"b.c".kind: x') == ("providers", 'a"b.c', "kind")
    assert dropins.key_path("<top level>: must be a table") is None
    assert dropins.key_path("failoverd could not apply it") is None


async def test_check_config_reads_the_dropins(tmp_path: Path) -> None:
    path = write(tmp_path, _10='[routing]\ndeadline = 5\n')
    code, out = await check_config(path)
    assert code == 0, out
    assert out.startswith(f"{path}: ok")
    # the ok line is followed by the drop-ins read, in their order
    assert out.splitlines()[1:] == [f"  with drop-in {dropins.directory(path) / '10.toml'}"], out
    (dropins.directory(path) / "20-bad.toml").write_text('[routing]\nqueue_timeout = "x"\n')
    code, out = await check_config(path)
    assert code == 2
    bad = tmp_path / "failoverd.toml.d" / "20-bad.toml"
    assert f"  {bad}: routing.queue_timeout: must be an integer or a number, got a string" \
        in out.splitlines(), out


ETC = Path(__file__).resolve().parent.parent / "etc" / "failoverd"


def test_the_example_dropin_is_not_read_and_validates_once_copied(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    for name in ("anthropic", "openai", "gemini", "team-vllm"):
        (creds / name).write_text("key")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    shipped = config_mod.load(ETC / "failoverd.toml", env=env)
    assert shipped.dropins == ()  # 50-team.toml.example is not a *.toml
    example = (ETC / "failoverd.toml.d" / "50-team.toml.example").read_text()
    # uncommented: every "# " line that is a TOML line (a table, a key = value)
    body = "\n".join(line[2:] for line in example.splitlines()
                     if re.match(r"# (\[|[\w-]+ = )", line))
    path = write(tmp_path, (ETC / "failoverd.toml").read_text(), _50_team=body)
    cfg = config_mod.load(path, env=env)
    assert cfg.models["team-vllm/qwen2.5-72b"].tier == "large"
    assert cfg.chains["team"].models == ("team-vllm/qwen2.5-72b", "openai/gpt-5-mini")
    assert cfg.routing.deadline == 60 and cfg.routing.primary == shipped.routing.primary
    assert [h.exec for h in cfg.hooks] == [*(h.exec for h in shipped.hooks),
                                           ("/etc/failoverd/hooks/page-team",)]


# --------------------------------------------------------------------------- review

def test_without_dropins_problems_read_as_before(tmp_path: Path) -> None:
    main = MAIN.replace('tier = "small"', 'tier = "tiny"')
    want = ["models.\"a/m\".tier: must be one of small, medium, large; got 'tiny'"]
    path = write(tmp_path, main)
    assert problems_of(path) == want
    dropins.directory(path).mkdir()  # an empty directory is no drop-in either
    (dropins.directory(path) / "10.toml.example").write_text("[routing]\n")
    assert problems_of(path) == want


def test_a_key_that_is_a_value_in_one_file_and_a_table_in_another(tmp_path: Path) -> None:
    # the later file decides, and is the one named
    path = write(tmp_path, MAIN.replace('tier = "small"', 'tier = "small"\ncost = 5'),
                 _10='[models."a/m".cost]\ninput = 1.0\noutput = 2.0\n')
    cost = config_mod.load(path, env={}).models["a/m"].cost
    assert (cost.input, cost.output) == (1.0, 2.0)
    path = write(tmp_path, MAIN.replace("[routing]", '[models."a/m".cost]\ninput = 1.0\n'
                                        "[routing]"),
                 _10='[models."a/m"]\ncost = 5\n')
    assert problems_of(path) == [
        f"{tmp_path / 'failoverd.toml.d' / '10.toml'}: models.\"a/m\".cost: must be a table, "
        "got an integer"]


def test_a_table_that_replaced_a_value_is_on_the_file_that_made_it() -> None:
    merged = dropins.Merged("main")
    merged.add({"models": {"m": {"cost": 5, "tier": "small"}}}, "main")
    merged.add({"models": {"m": {"cost": {"input": 1.0}}}}, "10")
    # not the main file's, whose value 5 is gone (a problem at the table itself, such as a
    # missing key of it, is the drop-in's)
    assert merged.files_of(("models", "m", "cost")) == ["10"]
    assert merged.files_of(("models", "m", "cost", "output")) == ["10"]
    merged.add({"models": {"m": {"cost": 7}}}, "20")
    assert merged.files_of(("models", "m", "cost")) == ["20"]
    assert merged.files_of(("models", "m", "tier")) == ["main"]
    assert merged.files_of(("models", "m")) == ["main", "10", "20"]


def test_an_inline_array_of_tables_is_appended_like_hooks(tmp_path: Path) -> None:
    # hooks = [{...}] is [[hooks]] to TOML: the same rule
    path = write(tmp_path, _10='hooks = [{ events = ["*"], exec = ["/bin/a"] }]\n')
    assert [h.exec for h in config_mod.load(path, env={}).hooks] == [("/bin/true",),
                                                                       ("/bin/a",)]


def test_a_hook_after_hooks_emptied_is_blamed_on_its_own_file(tmp_path: Path) -> None:
    path = write(tmp_path, _10="hooks = []\n", _20='[[hooks]]\nevents = ["nope"]\nexec = ["/x"]\n')
    [problem] = problems_of(path)
    assert problem.startswith(f"{tmp_path / 'failoverd.toml.d' / '20.toml'}: hooks[0].events[0]: ")


def test_dropins_are_read_in_byte_order(tmp_path: Path) -> None:
    # U+E000 is ee 80 80 in UTF-8, before a name's byte ff (\udcff to Python, which sorts
    # after it by code point): systemd's order, the one the README promises
    path = write(tmp_path, **{"_20_\ue000": "[routing]\ndeadline = 7\n"})
    last = os.fsencode(dropins.directory(path)) + b"/20-\xff.toml"
    Path(os.fsdecode(last)).write_text("[routing]\ndeadline = 9\n")
    cfg = config_mod.load(path, env={})
    assert cfg.routing.deadline == 9
    assert cfg.dropins[1].endswith("/20-\\udcff.toml")


def test_a_dropin_name_that_is_not_utf8_or_breaks_a_line_is_shown_escaped(
        tmp_path: Path) -> None:
    path = write(tmp_path, **{"_10_\nx": "[routing]\ndeadline = -1\n"})
    d = dropins.directory(path)
    Path(os.fsdecode(os.fsencode(d) + b"/20-\xff.toml")).write_text("[routing\n")
    found = problems_of(path)
    assert found == [
        f"{d}/20-\\udcff.toml: not valid TOML: Expected ']' at the end of a table "
        "declaration (at line 1, column 9)"]
    (d / os.fsdecode(b"20-\xff.toml")).write_text("[routing]\nretry_after_max = -1\n")
    found = problems_of(path)
    assert sorted(found) == [
        f"{d}/10-\\x0ax.toml: routing.deadline: must be greater than 0, got -1.0",
        f"{d}/20-\\udcff.toml: routing.retry_after_max: must be at least 0, got -1.0"]
    orjson.dumps(found)  # what POST /v1/reload answers, and GET /v1/status keeps
    (d / os.fsdecode(b"20-\xff.toml")).write_text("")
    (d / "10-\nx.toml").write_text("")
    assert config_mod.load(path, env={}).dropins == (f"{d}/10-\\x0ax.toml",
                                                     f"{d}/20-\\udcff.toml")


def test_many_dropins_merge_in_linear_time() -> None:
    def merge(files: int) -> float:
        merged = dropins.Merged("main")
        started = time.perf_counter()
        for i in range(files):
            # a hook each, and a list each replaces
            merged.add({"hooks": [{"events": ["*"], "exec": ["/bin/true"]}],
                        "routing": {"fallbacks": ["a/m"]}}, f"{i:04}.toml")
        return time.perf_counter() - started

    small = min(merge(1000) for _ in range(3))
    large = min(merge(4000) for _ in range(3))
    # 4 times the files: about 4 times as long (it was 16: a reload of a big directory
    # blocked the event loop for seconds)
    assert large < 8 * small, (small, large)


def test_a_relative_path_in_a_dropin_is_relative_to_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # as in the main file: not to the drop-in's directory (README, Drop-ins)
    path = write(tmp_path, _10='[providers.a]\napi_key_file = "keys/a"\n')
    (dropins.directory(path) / "keys").mkdir()
    (dropins.directory(path) / "keys" / "a").write_text("not this one\n")
    cwd = tmp_path / "cwd"
    (cwd / "keys").mkdir(parents=True)
    (cwd / "keys" / "a").write_text("sk-from-cwd\n")
    monkeypatch.chdir(cwd)
    assert config_mod.load(path, env={}).providers["a"].api_key == "sk-from-cwd"


def test_a_key_pasted_into_api_key_env_is_not_echoed(tmp_path: Path) -> None:
    secret = "sk-proj-Zq81secretvalue"
    path = write(tmp_path, _90=f'[providers.a]\napi_key_env = "{secret}"\n')
    found = problems_of(path)
    assert found and secret not in "\n".join(found)


async def test_check_config_prints_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path)
    dropins.directory(path).mkdir()
    Path(os.fsdecode(os.fsencode(dropins.directory(path)) + b"/10-\xff.toml")).write_text("")
    # a terminal's strict UTF-8 stdout (it was a UnicodeEncodeError traceback)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "failoverd.cli.daemon", "--check-config", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out.decode()
    assert out.decode().splitlines()[1] == (
        f"  with drop-in {dropins.directory(path)}/10-\\udcff.toml")


def test_a_fifo_named_like_a_dropin_is_an_error_not_a_hang(tmp_path: Path) -> None:
    path = write(tmp_path, _10='[routing]\ndeadline = 5\n')
    fifo = dropins.directory(path) / "20-pipe.toml"
    os.mkfifo(fifo)  # reading it waited for a writer: the reload, and the daemon, hung
    assert problems_of(path) == [f"{fifo}: cannot read: not a regular file"]


def test_a_dropin_switches_a_secret_source_by_emptying_the_other(tmp_path: Path) -> None:
    # nothing is removed, but an empty source is no source (README, Drop-ins)
    (tmp_path / "key").write_text("sk-from-file\n")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "a").write_text("sk-from-credential\n")
    main = MAIN.replace('[models."a/m"]', f'api_key_file = "{tmp_path / "key"}"\n[models."a/m"]')
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}
    path = write(tmp_path, main, _10='[providers.a]\napi_key_credential = "a"\n')
    assert problems_of(path, env) == [
        f"{tmp_path / 'failoverd.toml.d' / '10.toml'}: providers.a.api_key_credential: set "
        "only one of api_key_env, api_key_file, api_key_credential"]
    path = write(tmp_path, main, _10='[providers.a]\napi_key_file = ""\napi_key_credential = "a"\n')
    assert config_mod.load(path, env=env).providers["a"].api_key == "sk-from-credential"


def test_a_symlinked_dropin_is_read_and_listed_by_its_own_name(tmp_path: Path) -> None:
    shared = tmp_path / "shared.toml"
    shared.write_text("[routing]\ndeadline = 11\n")
    path = write(tmp_path)
    dropins.directory(path).mkdir()
    (dropins.directory(path) / "30-shared.toml").symlink_to(shared)
    cfg = config_mod.load(path, env={})
    assert cfg.routing.deadline == 11
    assert cfg.dropins == (str(dropins.directory(path) / "30-shared.toml"),)
