"""Sessions and embedding models: a session's model serves its chat requests, so an
embedding model never becomes one (asked for, or made one by a reload)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHAT = """
[providers.sim]
kind = "simulated"
[models."sim/chat"]
provider = "sim"
[models."sim/other"]
provider = "sim"
[models."sim/embed"]
provider = "sim"
capabilities = ["embeddings"]
[chains.vectors]
models = ["sim/embed"]
[routing]
primary = "sim/chat"
"""

ASK = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_session_cannot_be_pinned_to_an_embedding_model(start_daemon: Any) -> None:
    d = await start_daemon(CHAT)
    for target in ({"model": "sim/embed"}, {"chain": "vectors"}):
        resp = await d.http.post("/v1/sessions/s1", json=target)
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["code"] == "model_not_chat" and "embedding" in error["message"]
    resp = await d.http.post("/v1/sessions/s1", json={"model": "sim/other"})
    assert resp.status_code == 200 and resp.json()["preference"] == "sim/other"


async def test_a_reload_that_makes_a_sessions_model_an_embedding_model(
        start_daemon: Any, short_dir: Path) -> None:
    d = await start_daemon(CHAT)
    assert (await d.http.post("/v1/sessions/s1", json={"model": "sim/other"})).status_code == 200
    resp = await d.http.post("/v1/chat/completions", json=ASK,
                             headers={"x-failoverd-session": "s1"})
    assert resp.headers["x-failoverd-model"] == "sim/other"
    # the operator turns sim/other into an embedding model
    path = short_dir / "d.toml"
    path.write_text(path.read_text().replace(
        '[models."sim/other"]\nprovider = "sim"\n',
        '[models."sim/other"]\nprovider = "sim"\ncapabilities = ["embeddings"]\n'))
    reloaded = await d.http.post("/v1/reload")
    assert reloaded.json()["ok"] is True, reloaded.text
    resp = await d.http.post("/v1/chat/completions", json=ASK,
                             headers={"x-failoverd-session": "s1"})
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "sim/chat"
    resp = await d.http.post("/v1/embeddings", json={"model": "sim/other", "input": "x"})
    assert resp.status_code == 200 and resp.headers["x-failoverd-model"] == "sim/other"


async def test_embedding_models_alone_do_not_turn_on_token_estimates(start_daemon: Any) -> None:
    """Chat requests are screened (their tokens estimated on the request path) only when a
    chat model declares what it can do: an embedding model's declaration is not one."""
    d = await start_daemon(CHAT)
    assert d.sup.service.runtime.screening is False
    d2 = await start_daemon(CHAT.replace('[models."sim/chat"]\nprovider = "sim"\n',
                                         '[models."sim/chat"]\nprovider = "sim"\n'
                                         'context_window = 8000\n'), name="d2")
    assert d2.sup.service.runtime.screening is True
