"""A review of the spending caps (budget.py and its wiring), each test a defect found: real
daemons on simulated time against fake upstreams (whose answers report 9 prompt and 6
completion tokens) and a real mosquitto."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from failoverd import config as config_mod
from failoverd import supervisor as supervisor_mod
from failoverd.budget import Budget, Budgets
from failoverd.discovery import object_id
from failoverd.errors import ConfigError
from tests.fakes.openai import FakeOpenAI
from tests.helpers import HELLO, failoverctl, status, until, until_async
from tests.helpers import chat as ask
from tests.mosquitto import Mosquitto, recording, requires_mosquitto, retained
from tests.mosquitto import mosquitto as mosquitto  # the fixture
from tests.test_budget_e2e import LATE, PRICED, clock_at
from tests.test_budget_e2e import config as pair


async def test_a_cap_that_n_answers_reach_holds_after_the_nth_despite_float_sums(
        fake_openai: Any, start_daemon: Any) -> None:
    """Seven answers of $0.0015 add up to 0.010499999999999999 in floats: a cap of $0.0105
    was reached (and /v1/status shows spent 0.0105 of 0.0105), yet it held nothing."""
    a, b = await fake_openai(), await fake_openai()
    d = await start_daemon(pair(a, b, a_model="max_cost_per_day = 0.0105"),
                           clock=clock_at(LATE))
    for _ in range(7):
        assert (await ask(d)).headers["x-failoverd-model"] == "a/gpt-a"
    cap = (await status(d))["budgets"][0]
    assert (cap["spent_usd"], cap["limit_usd"]) == (0.0105, 0.0105)
    assert cap["reached"] is True
    assert (await ask(d)).headers["x-failoverd-model"] == "b/gpt-b"
    assert len(a.chat_requests()) == 7
    assert [e.type for e in d.sup.service.bus.recent()].count("budget:reached") == 1


def test_sums_are_compared_at_any_scale() -> None:
    """Float sums fall short at any scale: compared to the cap relatively, never by rounding
    to a fixed number of decimals (which would make a sub-nano-dollar cap unreachable)."""
    for price, n, cap in ((0.0015, 7, 0.0105), (0.1, 8, 0.8), (3e-11, 7, 2.1e-10)):
        budgets = Budgets()
        budgets.configure([Budget("model", "m", "day", cap)])
        for _ in range(n - 1):
            assert budgets.spend("m", "p", price, LATE) == []
            assert budgets.blocked("m", "p", LATE) is None
        assert [r.budget.limit for r in budgets.spend("m", "p", price, LATE)] == [cap]
        assert budgets.blocked("m", "p", LATE) == "max_cost_per_day"


def sim(port: int, cap: float) -> str:
    return f"""node = "attic"
[mqtt]
enabled = true
host = "127.0.0.1"
port = {port}
[providers.sim]
kind = "simulated"
[models."sim/m"]
provider = "sim"
cost = {{ input = 1000.0, output = 1000.0 }}
max_cost_per_day = {cap}
[probes]
kind = "none"
"""


@requires_mosquitto
async def test_a_cap_the_saved_spending_reached_is_told_on_mqtt_at_start(
        mosquitto: Mosquitto, start_daemon: Any) -> None:
    """budget:reached "at start for a cap the saved spending already reached" goes to MQTT
    too: it was emitted while the state was restored, before the publisher listened."""
    clock = clock_at(LATE)
    d = await start_daemon(sim(mosquitto.port, 1000.0), clock=clock)
    assert (await ask(d, "sim/m")).status_code == 200
    await d.stop()
    topic = "failoverd/attic/events/budget/reached"
    async with recording(mosquitto.port, topic) as rec:
        d2 = await start_daemon(sim(mosquitto.port, 0.000001), clock=clock)
        assert (await status(d2))["models"]["sim/m"]["budget"] == "max_cost_per_day"
        assert [e.type for e in d2.sup.service.bus.recent()].count("budget:reached") == 1
        messages = await rec.wait_for(lambda m: bool(m), timeout=3)
    told = orjson.loads(messages[0].payload)  # type: ignore[arg-type]
    assert (told["name"], told["cap"]) == ("sim/m", "max_cost_per_day")


@requires_mosquitto
async def test_a_cap_removed_by_a_reload_loses_its_sensor_before_its_state_topic(
        mosquitto: Mosquitto, start_daemon: Any) -> None:
    """As for a model that left: Home Assistant gets the sensor's config cleared first, or
    it renders the sensor's template on the emptied state topic (an error in its log)."""
    text = sim(mosquitto.port, 5.0).replace("[mqtt]\n", "[mqtt]\ndiscovery = true\n")
    d = await start_daemon(text, clock=clock_at(LATE))
    pub = d.sup.service.mqtt
    await asyncio.wait_for(pub.wait_connected(), 5)
    await until(lambda: pub.stats().states_pending == 0)
    state = "failoverd/attic/budgets/model/sim%2Fm/day"
    config = (f"homeassistant/sensor/failoverd_{object_id('attic')}/"
              f"{object_id('budget model sim/m day')}/config")
    assert {state, config} <= set(await retained(mosquitto.port, "#"))
    async with recording(mosquitto.port, "#") as rec:
        Path(d.sup.config_path).write_text(
            Path(d.sup.config_path).read_text().replace("max_cost_per_day = 5.0\n", ""))
        assert (await d.http.post("/v1/reload")).status_code == 200
        messages = await rec.wait_for(
            lambda ms: {state, config} <= {m.topic.value for m in ms if not m.payload})
    cleared = [m.topic.value for m in messages if not m.payload]
    assert cleared.index(config) < cleared.index(state), cleared
    assert not {state, config} & set(await retained(mosquitto.port, "#"))


async def test_a_saved_period_that_is_no_date_is_skipped_not_kept_for_ever(
        fake_openai: Any, start_daemon: Any) -> None:
    """An entry of the state file's "budgets" that is not understood is skipped: a period
    key that is no date ("garbage" sorts after every "2026-12-07") held the day's spending
    as if of a later day, never to reset."""
    a, b = await fake_openai(), await fake_openai()
    clock = clock_at(LATE)
    d = await start_daemon(pair(a, b), clock=clock)
    assert (await ask(d)).headers["x-failoverd-model"] == "a/gpt-a"
    await d.stop()
    path = Path(d.sup.service.state_file.path)
    saved = orjson.loads(path.read_bytes())
    saved["budgets"]["model:a/gpt-a"]["day"] = ["garbage", 1.0]
    path.write_bytes(orjson.dumps(saved))

    d2 = await start_daemon(pair(a, b, a_model="max_cost_per_day = 0.5"), clock=clock)
    entry = (await status(d2))["models"]["a/gpt-a"]
    assert entry.get("budget") is None and entry["spent_usd"] == {"day": 0.0, "month": 0.0015}
    assert (await ask(d2)).headers["x-failoverd-model"] == "a/gpt-a"


def test_a_cap_on_a_model_whose_answers_cost_nothing_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("""
[providers.sim]
kind = "simulated"
[models."sim/whisper"]
provider = "sim"
capabilities = ["transcription"]
cost = { input = 6.0 }
max_cost_per_day = 0.5
[models."sim/chat"]
provider = "sim"
[routing]
primary = "sim/chat"
""")
    with pytest.raises(ConfigError) as err:
        config_mod.load(path, env={})
    assert [p for p in err.value.problems if "max_cost_per_day" in p]


@dataclass
class LateDone(FakeOpenAI):
    """OpenAI's stream with a pause between the usage chunk and `data: [DONE]`."""

    pause: float = 0.2

    async def _usage(self, resp: web.StreamResponse, body: dict[str, Any],  # type: ignore[override]
                     base: dict[str, Any]) -> None:
        await FakeOpenAI._usage(resp, body, base)
        await asyncio.sleep(self.pause)


async def test_a_streamed_answer_whose_client_left_after_its_usage_still_costs(
        fake_openai: Any, start_daemon: Any) -> None:
    a, b = LateDone(), await fake_openai()
    await a.start()
    try:
        d = await start_daemon(pair(a, b), clock=clock_at(LATE))
        body = {"model": "default", "messages": HELLO, "stream": True,
                "stream_options": {"include_usage": True}}
        async with d.http.stream("POST", "/v1/chat/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if '"usage":{' in line:
                    break  # the whole answer and its usage came: the client hangs up

        async def done() -> bool:
            return bool((await status(d))["inflight"] == 0)
        await until_async(done)
        assert (await status(d))["models"]["a/gpt-a"]["spent_usd"]["day"] == 0.0015
    finally:
        await a.close()


async def test_failoverctl_tells_a_month_caps_reset_in_days(fake_openai: Any,
                                                             start_daemon: Any) -> None:
    """A monthly cap resets up to 31 days ahead: "in 24.0d", not "in 576.2h"."""
    a, b = await fake_openai(), await fake_openai()
    d = await start_daemon(pair(a, b, a_model="max_cost_per_month = 0.001"),
                           clock=clock_at(LATE))
    assert (await ask(d)).headers["x-failoverd-model"] == "a/gpt-a"  # $0.0015: reached
    code, out, _ = await failoverctl(d.socket, "status")
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("model a/gpt-a "))
    assert row.split()[2:] == ["month", "$0.0015", "$0.001", "REACHED", "in", "24.0d"]
    model = next(line for line in out.splitlines() if line.startswith("a/gpt-a "))
    assert model.split()[2:5] == ["max_cost_per_month", "in", "24.0d"]


@requires_mosquitto
async def test_a_days_end_is_published_without_systemd(
        mosquitto: Mosquitto, start_daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_mod, "STATUS_INTERVAL", 0.05)
    clock = clock_at(LATE)
    d = await start_daemon(sim(mosquitto.port, 0.000001), clock=clock)
    assert not d.sup.notifier.enabled
    assert (await ask(d, "sim/m")).status_code == 200  # past the cap at once
    pub = d.sup.service.mqtt
    await until(lambda: pub.stats().states_pending == 0)
    topic = "failoverd/attic/budgets/model/sim%2Fm/day"

    async def cap() -> dict[str, Any]:
        found = await retained(mosquitto.port, topic)
        return orjson.loads(found[topic].payload)  # type: ignore[arg-type, no-any-return]
    assert (await cap())["reached"] is True
    clock.advance(600)  # 00:00 UTC: a new day

    async def reset() -> bool:
        return bool((await cap())["period_key"] == "2026-12-08")
    await until_async(reset, timeout=1)
    assert (await cap())["reached"] is False and (await cap())["spent_usd"] == 0.0


async def test_an_answer_in_flight_across_a_reload_removing_its_model_costs(
        fake_openai: Any, start_daemon: Any) -> None:
    a, b = await fake_openai(default="slow:0.3"), await fake_openai()
    more = '[models."a/gpt-c"]\nprovider = "a"\nname = "gpt-c"\n' + PRICED
    d = await start_daemon(pair(a, b, tail=more), clock=clock_at(LATE))
    asking = asyncio.create_task(ask(d))
    await until(lambda: len(a.chat_requests()) == 1)
    path = Path(d.sup.config_path)
    path.write_text(path.read_text().replace('primary = "a/gpt-a"', 'primary = "a/gpt-c"')
                    .replace(f'[models."a/gpt-a"]\nprovider = "a"\n{PRICED}', ""))
    assert (await d.http.post("/v1/reload")).status_code == 200
    assert "a/gpt-a" not in (await status(d))["models"]
    assert (await asking).headers["x-failoverd-model"] == "a/gpt-a"
    assert (await status(d))["providers"]["a"]["spent_usd"]["day"] == 0.0015
