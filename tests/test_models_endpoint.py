"""GET /v1/models and GET /v1/models/{id} as the official SDKs call them: OpenAI's model
objects for OpenAI clients, Anthropic's (type, display_name, created_at, paging fields) for
Anthropic clients, which always send anthropic-version."""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

import anthropic
import openai
import orjson
import pytest

from tests.test_sdk_clients import anthropic_client, openai_client

CONFIG = """
[providers.sim]
kind = "simulated"
[models."sim/chat"]
provider = "sim"
context_window = 32768
capabilities = ["tools"]
tier = "small"
[models."sim/qwen2.5:7b"]
provider = "sim"
[models."sim/embed"]
provider = "sim"
capabilities = ["embeddings"]
[chains.fast]
models = ["sim/qwen2.5:7b", "sim/chat"]
"""


async def test_the_openai_sdk_lists_and_retrieves_models_and_chains(start_daemon: Any) -> None:
    d = await start_daemon(CONFIG)
    client = openai_client(d.socket)
    try:
        listed = [m async for m in client.models.list()]
        assert [m.id for m in listed] == ["sim/chat", "sim/qwen2.5:7b", "sim/embed", "fast"]
        one = await client.models.retrieve("sim/chat")
        assert one.id == "sim/chat" and one.owned_by == "sim" and one.object == "model"
        extra = one.model_dump()
        assert extra["capabilities"] == ["tools"] and extra["context_window"] == 32768
        assert extra["tier"] == "small" and extra["state"] == "closed"
        # ids with ':' and '/' and a chain, as the SDK puts them in the path
        assert (await client.models.retrieve("sim/qwen2.5:7b")).id == "sim/qwen2.5:7b"
        assert (await client.models.retrieve("sim/embed")).model_dump()["capabilities"] == [
            "embeddings"]
        chain = await client.models.retrieve("fast")
        assert chain.model_dump()["chain"] == ["sim/qwen2.5:7b", "sim/chat"]
        with pytest.raises(openai.NotFoundError) as info:
            await client.models.retrieve("sim/nope")
        assert info.value.code == "model_not_found"
        assert "'sim/nope'" in info.value.message
    finally:
        await client.close()


async def test_the_anthropic_sdk_gets_anthropic_model_objects(start_daemon: Any) -> None:
    d = await start_daemon(CONFIG)
    client = anthropic_client(d.socket)
    try:
        page = await client.models.list()
        ids = [m.id for m in page.data]
        assert ids == ["sim/chat", "sim/qwen2.5:7b", "fast"]  # no embedding model
        assert page.has_more is False and page.first_id == "sim/chat" and page.last_id == "fast"
        first = page.data[0]
        assert first.type == "model" and first.display_name == "sim/chat"
        assert first.created_at.tzinfo is not None and first.lifecycle == "active"
        assert first.max_input_tokens == 32768 and first.capabilities is None
        own = first.model_dump()["failoverd"]
        assert own["capabilities"] == ["tools"] and own["tier"] == "small"
        assert own["owned_by"] == "sim" and own["state"] == "closed"
        assert page.data[-1].model_dump()["failoverd"]["chain"] == ["sim/qwen2.5:7b",
                                                                    "sim/chat"]
        one = await client.models.retrieve("sim/qwen2.5:7b")
        assert one.id == "sim/qwen2.5:7b" and one.type == "model"
        with pytest.raises(anthropic.NotFoundError) as info:
            await client.models.retrieve("sim/nope")
        assert info.value.body == {"type": "error", "error": {
            "type": "not_found_error",
            "message": "no model, chain or pool 'sim/nope' is configured"}}
    finally:
        await client.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_curl_gets_one_model_and_a_json_404(start_daemon: Any) -> None:
    d = await start_daemon(CONFIG)

    async def get(path: str) -> tuple[int, Any]:
        proc = await asyncio.create_subprocess_exec(
            "curl", "-s", "-w", "\n%{http_code}", "--unix-socket", d.socket,
            f"http://failoverd{path}", stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        body, _, code = out.rpartition(b"\n")
        return int(code), orjson.loads(body)

    code, body = await get("/v1/models/sim/chat")
    assert code == 200 and body["id"] == "sim/chat" and body["object"] == "model"
    code, body = await get("/v1/models/sim%2Fqwen2.5%3A7b")  # percent-encoded, as some SDKs do
    assert code == 200 and body["id"] == "sim/qwen2.5:7b"
    code, body = await get("/v1/models/unknown")
    assert code == 404 and body["error"]["code"] == "model_not_found"
    # the control actions stay POST-only and say so
    code, body = await get("/v1/models/sim/chat/reset")
    assert code == 404 and body["error"]["code"] == "model_not_found"
