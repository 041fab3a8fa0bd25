"""Token accounting on /metrics: failoverd_tokens_total counts the tokens of every answer as
the upstream reported them, by serving model and kind (prompt, completion, and of the prompt
cache_read and cache_write), streamed or not, whatever the client's API; answers that came
without a usage are counted in failoverd_usage_unreported_total, so the token counts are
known to be a lower bound, never silently short."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from failoverd.cli.ctl import _usd
from tests.helpers import failoverctl
from tests.test_prompt_caching import tool_loop
from tests.test_sdk_clients import anthropic_client, config, openai_client

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def rig(fake_openai: Any, fake_anthropic: Any, start_daemon: Any) -> Any:
    oai, ant = await fake_openai(), await fake_anthropic()
    d = await start_daemon(config(oai, ant))
    yield oai, ant, d


async def tokens(d: Any) -> dict[tuple[str, str], int]:
    text = (await d.http.get("/metrics")).text
    return {(m, k): int(v) for m, k, v in re.findall(
        r'^failoverd_tokens_total\{model="([^"]*)",kind="([^"]*)"\} (\d+)$', text, re.M)}


async def unreported(d: Any) -> dict[str, int]:
    text = (await d.http.get("/metrics")).text
    return {m: int(v) for m, v in re.findall(
        r'^failoverd_usage_unreported_total\{model="([^"]*)"\} (\d+)$', text, re.M)}


async def test_openai_answers_streamed_and_not_are_counted(rig: Any) -> None:
    _, _, d = rig
    client = openai_client(d.socket)
    try:
        await client.chat.completions.create(model="oai/gpt", messages=USER)
        stream = await client.chat.completions.create(
            model="oai/gpt", messages=USER, stream=True,
            stream_options={"include_usage": True})
        async for _ in stream:
            pass
    finally:
        await client.close()
    # the fake reports 9 prompt and 6 completion tokens for each answer
    assert await tokens(d) == {("oai/gpt", "prompt"): 18, ("oai/gpt", "completion"): 12}
    assert await unreported(d) == {}


async def test_a_stream_without_usage_is_counted_as_unreported(rig: Any) -> None:
    _, _, d = rig
    resp = await d.http.post("/v1/chat/completions", content=orjson.dumps(
        {"model": "oai/gpt", "messages": USER, "stream": True}),
        headers={"content-type": "application/json"})
    assert resp.status_code == 200 and "[DONE]" in resp.text
    assert await tokens(d) == {}
    assert await unreported(d) == {"oai/gpt": 1}


async def test_anthropic_cache_reads_and_writes_are_counted(rig: Any) -> None:
    _, ant, d = rig
    client = anthropic_client(d.socket)
    try:
        first = await client.messages.create(**tool_loop("ant/claude"))
        second = await client.messages.create(**{**tool_loop("ant/claude"), "stream": False})
        async with client.messages.stream(**tool_loop("ant/claude")) as stream:
            third = await stream.get_final_message()
    finally:
        await client.close()
    written = first.usage.cache_creation_input_tokens or 0
    assert written > 1000
    assert second.usage.cache_read_input_tokens == third.usage.cache_read_input_tokens == written
    counted = await tokens(d)
    assert counted[("ant/claude", "cache_write")] == written
    assert counted[("ant/claude", "cache_read")] == 2 * written
    # prompt holds the cached part and the rest (5 uncached tokens in the fake's answers)
    assert counted[("ant/claude", "prompt")] == 3 * written + 3 * 5
    assert counted[("ant/claude", "completion")] == 3 * 7
    assert await unreported(d) == {}


async def test_a_translated_stream_is_counted_though_the_client_did_not_ask(rig: Any) -> None:
    """An OpenAI client's stream served by Anthropic, without stream_options: the usage
    rides on the finish chunk (as Gemini's and Ollama's translations give it), so the tokens
    are counted; only an OpenAI-compatible upstream's stream, which tells none unless asked,
    is unreported."""
    _, _, d = rig
    client = openai_client(d.socket)
    try:
        stream = await client.chat.completions.create(model="ant/claude", messages=USER,
                                                      stream=True)
        chunks = [chunk async for chunk in stream]
    finally:
        await client.close()
    assert chunks[-1].usage is not None and chunks[-1].choices[0].finish_reason == "stop"
    counted = await tokens(d)
    assert counted[("ant/claude", "completion")] == 7
    assert await unreported(d) == {}


async def test_stream_usage_counts_an_openai_upstreams_stream_the_client_did_not_ask(
        fake_openai: Any, fake_anthropic: Any, start_daemon: Any) -> None:
    """providers.<name>.stream_usage = true: every stream to that OpenAI-compatible upstream
    asks for its usage, so the tokens are counted; a client that did not ask never sees the
    usage-only chunk (choices empty), one that asked gets it as before."""
    oai, ant = await fake_openai(), await fake_anthropic()
    d = await start_daemon(config(oai, ant).replace(
        'kind = "openai"\n', 'kind = "openai"\nstream_usage = true\n'))
    client = openai_client(d.socket)
    try:
        stream = await client.chat.completions.create(model="oai/gpt", messages=USER,
                                                      stream=True)
        plain = [chunk async for chunk in stream]
        stream = await client.chat.completions.create(
            model="oai/gpt", messages=USER, stream=True, stream_options={"include_usage": True})
        asked = [chunk async for chunk in stream]
    finally:
        await client.close()
    assert all(chunk.choices for chunk in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain) == oai.reply
    assert asked[-1].choices == [] and asked[-1].usage is not None
    assert all(r.body["stream_options"] == {"include_usage": True} for r in oai.chat_requests())
    assert await tokens(d) == {("oai/gpt", "prompt"): 18, ("oai/gpt", "completion"): 12}
    assert await unreported(d) == {}


def test_stream_usage_is_only_for_the_openai_kind() -> None:
    from failoverd import config as config_mod
    from failoverd.errors import ConfigError

    text = ('[providers.a]\nkind = "anthropic"\nbase_url = "http://127.0.0.1:9"\n'
            'stream_usage = true\n[models."a/m"]\nprovider = "a"\n[routing]\nprimary = "a/m"\n')
    with pytest.raises(ConfigError) as raised:
        config_mod.loads(text)
    assert any("stream_usage" in p and "only valid for kind" in p
               for p in raised.value.problems)


async def cost(d: Any) -> dict[str, float]:
    text = (await d.http.get("/metrics")).text
    return {m: float(v) for m, v in re.findall(
        r'^failoverd_cost_usd_total\{model="([^"]*)"\} (\S+)$', text, re.M)}


async def test_cost_is_the_reported_tokens_at_the_configured_prices(
        fake_openai: Any, fake_anthropic: Any, start_daemon: Any) -> None:
    """failoverd_cost_usd_total: uncached prompt tokens at `cost.input`, cache reads and
    writes at `cost.cache_read` / `cost.cache_write` (else at `input`), completion tokens at
    `cost.output`; a model without a cost has no series."""
    oai, ant = await fake_openai(), await fake_anthropic()
    priced = config(oai, ant).replace(
        '[models."ant/claude"]\nprovider = "ant"\n',
        '[models."ant/claude"]\nprovider = "ant"\n'
        'cost = { input = 3.0, output = 15.0, cache_read = 0.3, cache_write = 3.75 }\n').replace(
        '[models."oai/gpt"]\nprovider = "oai"\n',
        '[models."oai/gpt"]\nprovider = "oai"\ncost = { input = 1.25, output = 10.0 }\n')
    d = await start_daemon(priced)
    client = anthropic_client(d.socket)
    try:
        first = await client.messages.create(**tool_loop("ant/claude"))
        second = await client.messages.create(**tool_loop("ant/claude"))
    finally:
        await client.close()
    written = first.usage.cache_creation_input_tokens or 0
    assert written > 1000 and second.usage.cache_read_input_tokens == written
    fresh = first.usage.input_tokens + second.usage.input_tokens
    completion = first.usage.output_tokens + second.usage.output_tokens
    expected = (fresh * 3.0 + written * 3.75 + written * 0.3 + completion * 15.0) / 1e6
    resp = await d.http.post("/v1/chat/completions", content=orjson.dumps(
        {"model": "oai/gpt", "messages": USER}), headers={"content-type": "application/json"})
    usage = resp.json()["usage"]
    spent = await cost(d)
    assert spent["ant/claude"] == pytest.approx(expected, rel=1e-6)
    assert spent["oai/gpt"] == pytest.approx(
        (usage["prompt_tokens"] * 1.25 + usage["completion_tokens"] * 10.0) / 1e6, rel=1e-6)


async def test_a_model_without_a_cost_has_no_cost_series(rig: Any) -> None:
    _, _, d = rig
    resp = await d.http.post("/v1/chat/completions", content=orjson.dumps(
        {"model": "oai/gpt", "messages": USER}), headers={"content-type": "application/json"})
    assert resp.status_code == 200
    assert await cost(d) == {}
    assert "# TYPE failoverd_cost_usd_total counter" in (await d.http.get("/metrics")).text


async def test_status_and_failoverctl_show_what_each_model_used_and_cost(
        start_daemon: Any) -> None:
    """/v1/status has each model's tokens and cost since the start (what /metrics counts);
    `failoverctl status` shows a cost column and a line of totals once any has cost."""
    d = await start_daemon("""
[providers.sim]
kind = "simulated"
[models."sim/cheap"]
provider = "sim"
cost = { input = 1.0, output = 2.0 }
[models."sim/free"]
provider = "sim"
[probes]
kind = "none"
""")
    code, out, _ = await failoverctl(d.socket, "status")
    assert code == 0 and "COST" not in out and "tokens since start" not in out
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    for model in ("sim/cheap", "sim/cheap", "sim/free"):
        resp = await d.http.post("/v1/chat/completions", content=orjson.dumps(
            {"model": model, "messages": USER}), headers={"content-type": "application/json"})
        for kind in usage:
            usage[kind] += resp.json()["usage"][kind] if model == "sim/cheap" else 0
    models = (await d.http.get("/v1/status")).json()["models"]
    cheap = models["sim/cheap"]
    assert cheap["tokens"] == {"prompt": usage["prompt_tokens"],
                               "completion": usage["completion_tokens"],
                               "cache_read": 0, "cache_write": 0}
    spent = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
    assert cheap["cost_usd"] == pytest.approx(spent, rel=1e-6)
    # no price is no cost: null, and "-" in the table
    assert models["sim/free"]["cost_usd"] is None and models["sim/free"]["tokens"]["prompt"] > 0
    code, out, _ = await failoverctl(d.socket, "status")
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("MODEL"))
    assert header.split()[-1] == "COST"
    row = next(line for line in out.splitlines() if line.startswith("sim/cheap"))
    assert row.split()[-1] == _usd(spent)  # below a dollar: four significant digits
    free = next(line for line in out.splitlines() if line.startswith("sim/free"))
    assert free.split()[-1] == "-"
    assert "tokens since start:" in out and "cost " + _usd(spent) in out
