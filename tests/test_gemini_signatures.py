"""Gemini's thought signatures through failoverd, with the official openai SDK over the socket.

Gemini's thinking models sign their function calls (`thoughtSignature` on the part) and want
the signature back on those calls in the following requests of a tool loop; Gemini 3 refuses
a current-turn call without one, and the documented placeholder
("skip_thought_signature_validator") is accepted but throws the model's reasoning state away.
failoverd gives OpenAI clients the signature where Google's own OpenAI-compatible endpoint
does, `tool_calls[i].extra_content.google.thought_signature`, and sends it back to Gemini;
the placeholder only goes where there is none (a loop begun on another provider). Other
OpenAI-compatible upstreams never see `extra_content` (OpenAI refuses unknown fields).
"""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest

from failoverd.config import ModelConfig, ProviderConfig
from failoverd.http1 import HttpClient
from failoverd.providers.openai import OpenAIProvider
from failoverd.translate.gemini import DUMMY_THOUGHT_SIGNATURE
from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.gemini import FakeGemini
from tests.fakes.openai import FakeOpenAI
from tests.helpers import providers
from tests.test_sdk_clients import PIN, WEATHER

ASK = {"role": "user", "content": "Weather in Paris?"}
PRO = "g/gemini-3-pro-preview"
FLASH = "g2/gemini-3-flash-preview"


@pytest.fixture
async def rig(fake_gemini: Any, fake_openai: Any, fake_anthropic: Any, start_daemon: Any
              ) -> Any:
    gemini: FakeGemini = await fake_gemini()
    other: FakeGemini = await fake_gemini()  # another Gemini model: its own signatures
    oai: FakeOpenAI = await fake_openai()
    ant: FakeAnthropic = await fake_anthropic()
    d = await start_daemon(f"""
{providers(g=("gemini", gemini.url), g2=("gemini", other.url))}
{providers(oai=oai.url, ant=("anthropic", ant.url))}
[models."{PRO}"]
provider = "g"
capabilities = ["tools"]
[models."{FLASH}"]
provider = "g2"
capabilities = ["tools"]
[models."oai/gpt"]
provider = "oai"
capabilities = ["tools"]
[models."ant/claude"]
provider = "ant"
capabilities = ["tools"]
[chains.to_oai]
models = ["{PRO}", "oai/gpt"]
[chains.to_ant]
models = ["{PRO}", "ant/claude"]
[chains.geminis]
models = ["{PRO}", "{FLASH}"]
[routing]
primary = "{PRO}"
when_all_unavailable = "fail"
""")
    return gemini, other, oai, ant, d


async def turn(client: openai.AsyncOpenAI, model: str, messages: list[Any], *,
               stream: bool = False) -> dict[str, Any]:
    """The assistant message of one request, as a client sends it back next turn."""
    kwargs: dict[str, Any] = {"model": model, "messages": messages, "tools": [WEATHER]}
    if model.count("/"):
        kwargs["extra_headers"] = PIN
    if not stream:
        done = await client.chat.completions.create(**kwargs)
        return done.choices[0].message.model_dump(exclude_none=True)
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    async for chunk in await client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            for call in choice.delta.tool_calls or ():
                slot = calls.setdefault(call.index, {"id": "", "type": "function", "function": {
                    "name": "", "arguments": ""}})
                slot["id"] = call.id or slot["id"]
                if call.function is not None:
                    slot["function"]["name"] += call.function.name or ""
                    slot["function"]["arguments"] += call.function.arguments or ""
                extra = (call.model_extra or {}).get("extra_content")
                if extra is not None:
                    slot["extra_content"] = extra
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message


def results(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "tool", "tool_call_id": c["id"], "content": "18C"}
            for c in message["tool_calls"]]


def replayed(fake: FakeGemini, index: int = -1) -> list[dict[str, Any]]:
    """The function-call parts of the model turn `fake`'s request `index` replayed."""
    contents = fake.chat_requests()[index].body["contents"]
    return [p for c in contents if c["role"] == "model" for p in c["parts"]
            if "functionCall" in p]


def signature_of(call: dict[str, Any]) -> Any:
    return (call.get("extra_content") or {}).get("google", {}).get("thought_signature")


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_a_gemini_tool_loop_sends_the_real_signature_back(rig, stream: bool) -> None:
    gemini, _, _, _, d = rig
    first = await turn(d.openai, PRO, [ASK], stream=stream)
    (call,) = first["tool_calls"]
    # where Google's OpenAI-compatible endpoint puts it, the one Gemini made
    assert call["extra_content"] == {"google": {"thought_signature": gemini.signed[-1]}}
    second = await turn(d.openai, PRO, [ASK, first, *results(first)], stream=stream)
    assert second["content"] == gemini.reply
    (part,) = replayed(gemini)
    assert part["thoughtSignature"] == gemini.signed[0] != DUMMY_THOUGHT_SIGNATURE


async def test_parallel_calls_only_the_first_is_signed_and_each_goes_back_as_it_came(
        rig) -> None:
    gemini, _, _, _, d = rig
    gemini.tool_calls = 2
    first = await turn(d.openai, PRO, [ASK])
    assert [signature_of(c) for c in first["tool_calls"]] == [gemini.signed[0], None]
    await turn(d.openai, PRO, [ASK, first, *results(first), ASK, first, *results(first)])
    parts = replayed(gemini)
    assert [p.get("thoughtSignature") for p in parts] == [gemini.signed[0], None] * 2


async def test_a_loop_begun_on_another_provider_gets_the_placeholder(rig) -> None:
    gemini, _, oai, _, d = rig
    first = await turn(d.openai, "oai/gpt", [ASK])
    assert "extra_content" not in first["tool_calls"][0]
    second = await turn(d.openai, PRO, [ASK, first, *results(first)])
    assert second["content"] == gemini.reply
    (part,) = replayed(gemini)
    assert part["thoughtSignature"] == DUMMY_THOUGHT_SIGNATURE


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_failover_from_gemini_to_openai_mid_loop_strips_the_signature(
        rig, stream: bool) -> None:
    gemini, _, oai, _, d = rig
    first = await turn(d.openai, "to_oai", [ASK], stream=stream)
    assert signature_of(first["tool_calls"][0]) == gemini.signed[0]
    gemini.default = "overloaded"
    second = await turn(d.openai, "to_oai", [ASK, first, *results(first)], stream=stream)
    # the fake OpenAI refuses extra_content as OpenAI does (a 400, no answer)
    assert second["content"] == oai.reply
    sent = oai.chat_requests()[-1].body["messages"][1]["tool_calls"][0]
    assert "extra_content" not in sent and sent["id"] == first["tool_calls"][0]["id"]


async def test_failover_from_gemini_to_anthropic_ignores_the_signature(rig) -> None:
    gemini, _, _, ant, d = rig
    first = await turn(d.openai, "to_ant", [ASK])
    gemini.default = "overloaded"
    await turn(d.openai, "to_ant", [ASK, first, *results(first)])  # answered by Claude
    (use,) = [b for b in ant.requests[-1].body["messages"][1]["content"]
              if b["type"] == "tool_use"]
    assert set(use) == {"type", "id", "name", "input"}


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_another_gemini_model_refusing_the_signature_gets_the_placeholder_at_once(
        rig, stream: bool) -> None:
    gemini, other, _, _, d = rig
    first = await turn(d.openai, "geminis", [ASK], stream=stream)
    gemini.default = "overloaded"
    second = await turn(d.openai, "geminis", [ASK, first, *results(first)], stream=stream)
    assert second["content"] == other.reply
    # "Corrupted thought signature." for the one it did not make, then the placeholder
    assert len(other.chat_requests()) == 2
    assert replayed(other, 0)[0]["thoughtSignature"] == gemini.signed[0]
    assert replayed(other, 1)[0]["thoughtSignature"] == DUMMY_THOUGHT_SIGNATURE
    status = (await d.http.get("/v1/status")).json()["models"][FLASH]
    assert status["state"] == "closed"  # the 400 was no failure of the model


async def test_a_signature_gemini_refuses_goes_again_as_the_placeholder(rig) -> None:
    gemini, _, _, _, d = rig
    forged = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_0", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
         "extra_content": {"google": {"thought_signature": DUMMY_THOUGHT_SIGNATURE}}},
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'},
         "extra_content": {"google": {"thought_signature": "bm90IG1pbmU="}}}]}
    # refused ("Corrupted thought signature."), then sent as a loop begun elsewhere: the
    # placeholder on the step's first call, nothing on the second
    second = await turn(d.openai, PRO, [ASK, forged, *results(forged)])
    assert second["content"] == gemini.reply
    assert [p.get("thoughtSignature") for p in replayed(gemini)] == [
        DUMMY_THOUGHT_SIGNATURE, None]


@pytest.mark.parametrize(("base_url", "kept"), [
    ("https://generativelanguage.googleapis.com/v1beta/openai", True),
    ("https://api.openai.com/v1", False),
])
async def test_only_googles_openai_endpoint_gets_extra_content(
        http_client: HttpClient, base_url: str, kept: bool) -> None:
    # no request leaves: the payload the adapter would send (Google's host is not faked)
    provider = OpenAIProvider(ProviderConfig(name="a", kind="openai", base_url=base_url),
                              http_client)
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"},
            "extra_content": {"google": {"thought_signature": "c2ln"}}}
    body = {"messages": [ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": "c", "content": "18C"}]}
    payload = orjson.loads(provider._payload(body, ModelConfig(id="a/m", provider="a",
                                                                 name="m"), stream=False))
    assert ("extra_content" in payload["messages"][1]["tool_calls"][0]) is kept
    assert body["messages"][1]["tool_calls"][0] is call and "extra_content" in call


async def test_googles_openai_endpoint_gets_the_placeholder_for_a_loop_begun_elsewhere(
        http_client: HttpClient) -> None:
    """Gemini 3 refuses a replayed call without a thought signature: towards Google's own
    OpenAI-compatible endpoint a turn's first call without one gets the placeholder, as the
    Gemini adapter gives it; a real one stays, and other hosts get neither."""
    calls = [{"id": f"c{n}", "type": "function", "function": {"name": "f", "arguments": "{}"}}
             for n in (1, 2)]
    signed = {**calls[0], "extra_content": {"google": {"thought_signature": "c2ln"}}}
    body = {"messages": [ASK, {"role": "assistant", "content": None, "tool_calls": calls},
                         {"role": "assistant", "content": None, "tool_calls": [signed]}]}
    model = ModelConfig(id="a/m", provider="a", name="m")
    google = OpenAIProvider(ProviderConfig(
        name="a", kind="openai", base_url="https://generativelanguage.googleapis.com/v1beta/openai"),
        http_client)
    sent = orjson.loads(google._payload(body, model, stream=False))["messages"]
    assert sent[1]["tool_calls"][0]["extra_content"] == {
        "google": {"thought_signature": "skip_thought_signature_validator"}}
    assert "extra_content" not in sent[1]["tool_calls"][1]  # only a step's first call
    assert sent[2]["tool_calls"][0]["extra_content"]["google"]["thought_signature"] == "c2ln"
    assert "extra_content" not in body["messages"][1]["tool_calls"][0]  # the body untouched
    other = OpenAIProvider(ProviderConfig(name="a", kind="openai",
                                          base_url="https://api.openai.com/v1"), http_client)
    assert b"extra_content" not in other._payload(body, model, stream=False)
