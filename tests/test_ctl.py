"""failoverctl as a real subprocess against the in-process daemon's socket.

The daemon runs in this test's event loop, so the CLI runs with asyncio's subprocess API
(a blocking subprocess.run would stop the daemon from answering).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.fakes.openai import FakeOpenAI
from tests.helpers import GPT, QWEN, failoverctl, gpt_qwen_config, gpt_qwen_daemon


def ctl_toml(a: FakeOpenAI, o: FakeOpenAI) -> str:
    return gpt_qwen_config(a, o, gpt='capabilities = ["tools"]\ntier = "large"',
                           qwen='capabilities = []\ntier = "small"')


@pytest.fixture
async def rig(fake_openai, start_daemon) -> Any:
    return await gpt_qwen_daemon(fake_openai, start_daemon, ctl_toml)


def rows(text: str) -> dict[str, list[str]]:
    """A table's rows by their first cell."""
    return {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}


async def test_status_table_and_json(rig) -> None:
    a, o, d = rig
    await d.http.post(f"/v1/models/{QWEN}/open", json={"seconds": 90})
    code, out, err = await failoverctl(d.socket, "status")
    assert code == 0, err
    assert out.splitlines()[0].startswith("failoverd ")
    assert ": degraded, 0 in flight" in out.splitlines()[0]
    table = rows(out)
    assert table["MODEL"][:4] == ["MODEL", "STATE", "REASON", "RETRY"]
    assert table[GPT][1:3] == ["closed", "-"]
    assert table[QWEN][1:4] == ["forced_open", "operator", "in"]
    assert 85 <= int(table[QWEN][4].rstrip("s")) <= 90
    assert table["local"][1] == QWEN  # chain head
    assert "ollama/qwen2.5:7b > a/gpt-a" in out

    code, out, err = await failoverctl(d.socket, "status", "--json")  # --json after the command too
    assert code == 0, err
    data = orjson.loads(out)
    assert data["models"][QWEN]["state"] == "forced_open"
    assert data["chains"]["default"]["head"] == GPT


async def test_models_table_and_json(rig) -> None:
    a, o, d = rig
    code, out, err = await failoverctl(d.socket, "models")
    assert code == 0, err
    table = rows(out)
    assert table[GPT] == [GPT, "closed", "large", "8000", "tools"]
    assert table[QWEN] == [QWEN, "closed", "small", "32000", "-"]
    assert "local" not in table
    code, out, err = await failoverctl(d.socket, "--json", "models")
    assert code == 0, err
    assert {m["id"] for m in orjson.loads(out)["data"]} == {GPT, QWEN, "local"}


async def test_open_for_reset_and_probe(rig) -> None:
    a, o, d = rig
    code, out, err = await failoverctl(d.socket, "open", QWEN, "--for", "60")
    assert code == 0, err
    assert out.startswith(f"{QWEN}: forced_open until ")
    assert d.sup.service.model_state(QWEN) == "forced_open"
    retry_at = d.sup.service.health.retry_at(QWEN)
    assert retry_at == pytest.approx(d.sup.service.clock.time() + 60, abs=1)

    code, out, err = await failoverctl(d.socket, "open", GPT)
    assert (code, out.strip()) == (0, f"{GPT}: forced_open until reset")

    code, out, err = await failoverctl(d.socket, "reset", QWEN)
    assert (code, out.strip()) == (0, f"{QWEN}: closed")
    assert d.sup.service.model_state(QWEN) == "closed"

    code, out, err = await failoverctl(d.socket, "probe", QWEN)
    assert code == 0, err
    assert out.startswith(f"{QWEN}: probe ok in ") and out.strip().endswith("closed")
    assert [r.path for r in o.requests] == ["/v1/models"]

    o.default = "server_error"
    code, out, err = await failoverctl(d.socket, "--json", "probe", QWEN)
    assert code == 1
    data = orjson.loads(out)
    assert data["ok"] is False and data["last_probe"]["reason"] == "server_error"


async def test_next_moves_the_head(rig) -> None:
    a, o, d = rig
    code, out, err = await failoverctl(d.socket, "next", "default")
    assert (code, out.strip()) == (0, f"default: head is now {QWEN}")
    resp = await d.http.post("/v1/chat/completions",
                             json={"model": "default",
                                   "messages": [{"role": "user", "content": "hi"}]})
    assert resp.headers["x-failoverd-model"] == QWEN
    code, out, err = await failoverctl(d.socket, "chain-reset", "default")
    assert (code, out.strip()) == (0, f"default: head is now {GPT}")
    code, out, err = await failoverctl(d.socket, "next", "nope")
    assert code == 1
    assert "no chain 'nope'" in err


async def test_select_with_needs_and_tokens(rig) -> None:
    a, o, d = rig
    code, out, err = await failoverctl(d.socket, "select", "--needs", "tools", "--tokens", "100")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "model default: needs tools, 100 prompt tokens"
    table = rows("\n".join(lines[1:]))
    assert table["*"][1:4] == [GPT, "yes", "closed"]
    assert table[QWEN][1:3] == ["no", "closed"]
    assert "lacks capability: tools" in out

    code, out, err = await failoverctl(d.socket, "--json", "select", "--tokens", "20000")
    assert code == 0, err
    cands = orjson.loads(out)["candidates"]
    assert [(c["model"], c["eligible"]) for c in cands] == [(GPT, False), (QWEN, True)]
    code, out, err = await failoverctl(d.socket, "select", "--needs", "telepathy")
    assert code == 1 and "unknown capability" in err
    assert a.requests == [] and o.requests == []


async def test_health_exit_codes(rig) -> None:
    a, o, d = rig
    assert (await failoverctl(d.socket, "health"))[:2] == (0, "ok\n")
    await d.http.post(f"/v1/models/{GPT}/open")
    assert (await failoverctl(d.socket, "health"))[:2] == (0, "degraded\n")
    await d.http.post(f"/v1/models/{QWEN}/open")
    code, out, err = await failoverctl(d.socket, "health")
    assert (code, out) == (1, "down\n")
    code, out, err = await failoverctl(d.socket, "--json", "health")
    assert code == 1 and orjson.loads(out)["status"] == "down"


async def test_unknown_model_exits_1(rig) -> None:
    a, o, d = rig
    for command in ("reset", "probe", "open"):
        code, out, err = await failoverctl(d.socket, command, "ollama/nope:1b")
        assert code == 1, command
        assert out == ""
        assert "daemon said 404: no model 'ollama/nope:1b'" in err
    code, out, err = await failoverctl(d.socket, "--json", "reset", "nope")
    assert code == 1
    assert orjson.loads(out)["error"]["code"] == "model_not_found"


async def test_unreachable_socket_exits_2(short_dir: Path) -> None:
    for command in (["status"], ["health"], ["reset", GPT], ["--json", "models"]):
        code, out, err = await failoverctl(str(short_dir / "none.sock"), *command)
        assert code == 2, command
        assert out == ""
        assert "cannot reach failoverd" in err


async def test_bad_usage_exits_2_without_calling(short_dir: Path) -> None:
    code, out, err = await failoverctl(str(short_dir / "none.sock"), "open", GPT, "--for", "soon")
    assert code == 2
    assert "invalid float value" in err
