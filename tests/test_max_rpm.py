"""models.<id>.max_rpm: a model's calls per rolling minute (a free tier's RPM). Past it the
model is skipped as unavailable ("max_rpm") without a 429 spent or a breaker count, the chain
goes on, the 503 says when a slot frees, and the minute survives a reload; on simulated time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from failoverd import config as config_mod
from failoverd.clock import ManualClock
from failoverd.errors import ConfigError
from tests.helpers import HELLO, status
from tests.helpers import chat as ask

CONFIG = """
[providers.free]
kind = "simulated"
[providers.paid]
kind = "simulated"
[models."free/flash"]
provider = "free"
max_rpm = 2
[models."paid/pro"]
provider = "paid"
[routing]
primary = "free/flash"
fallbacks = ["paid/pro"]
when_all_unavailable = "fail"
[probes]
kind = "none"
"""


async def test_past_its_rpm_a_model_is_skipped_until_a_slot_frees(start_daemon: Any) -> None:
    clock = ManualClock()
    d = await start_daemon(CONFIG, clock=clock)
    for _ in range(2):
        resp = await ask(d)
        assert resp.headers["x-failoverd-model"] == "free/flash"
        clock.advance(10)
    resp = await ask(d)  # the third call in the minute
    assert resp.headers["x-failoverd-model"] == "paid/pro"
    assert resp.headers["x-failoverd-failover"] == "free/flash>paid/pro:unavailable"
    assert resp.headers["x-failoverd-attempts"] == "1"  # no call to free/flash was spent
    entry = (await status(d))["models"]["free/flash"]
    assert entry["calls_last_minute"] == 2
    assert (entry["state"], entry["consecutive_failures"]) == ("closed", 0)
    # pinned: a 503 whose Retry-After is when the first call of the minute ages out
    resp = await ask(d, **{"x-failoverd-no-fallback": "1"})
    assert resp.status_code == 503
    (attempt,) = resp.json()["error"]["attempts"]
    assert (attempt["reason"], attempt["message"]) == ("unavailable", "max_rpm")
    assert resp.headers["Retry-After"] == "40"
    # no model:failover is announced for a hop past a model that was not called
    assert not [e for e in d.sup.service.bus.recent() if e.type == "model:failover"]
    clock.advance(40)  # the first call is a minute old: one slot
    assert (await ask(d)).headers["x-failoverd-model"] == "free/flash"
    assert (await ask(d)).headers["x-failoverd-model"] == "paid/pro"


async def test_a_reload_does_not_hand_out_a_fresh_minute(start_daemon: Any,
                                                         short_dir: Path) -> None:
    clock = ManualClock()
    d = await start_daemon(CONFIG, clock=clock)
    for _ in range(2):
        await ask(d)
    path = short_dir / "d.toml"
    path.write_text(path.read_text().replace("max_rpm = 2", "max_rpm = 3"))
    assert (await d.http.post("/v1/reload")).json()["ok"] is True
    assert (await ask(d)).headers["x-failoverd-model"] == "free/flash"  # the third of three
    assert (await ask(d)).headers["x-failoverd-model"] == "paid/pro"
    assert (await status(d))["models"]["free/flash"]["calls_last_minute"] == 3
    # without a limit, nothing is kept per call
    path.write_text(path.read_text().replace("max_rpm = 3\n", ""))
    assert (await d.http.post("/v1/reload")).json()["ok"] is True
    assert "calls_last_minute" not in (await status(d))["models"]["free/flash"]
    assert (await ask(d)).headers["x-failoverd-model"] == "free/flash"


def test_max_rpm_is_a_non_negative_integer() -> None:
    for bad in ("-1", "1.5", '"10"'):
        try:
            config_mod.loads("[daemon]\n" + CONFIG.replace("max_rpm = 2", f"max_rpm = {bad}"),
                             env={})
        except ConfigError as exc:
            assert any(p.startswith('models."free/flash".max_rpm:') for p in exc.problems)
        else:
            raise AssertionError(f"max_rpm = {bad} was accepted")


TPM = CONFIG.replace("max_rpm = 2", "max_tpm = 40")
START = 1000.0  # a whole second: the first answer's bucket starts at it


async def test_past_its_tpm_a_model_is_skipped_until_its_usage_ages_out(
        start_daemon: Any) -> None:
    """max_tpm counts the tokens answers reported (prompt + completion) over a rolling minute;
    it is known after each answer, so the call that crosses it is served and the next ones
    go on down the chain until enough of the minute's usage ages out."""
    clock = ManualClock(start=START)
    d = await start_daemon(TPM, clock=clock)
    used = 0
    while used < 40:  # served by the model until its answers' usage reaches 40
        resp = await ask(d)
        assert resp.headers["x-failoverd-model"] == "free/flash"
        used += resp.json()["usage"]["total_tokens"]
        clock.advance(5)
    assert (await ask(d)).headers["x-failoverd-model"] == "paid/pro"
    entry = (await status(d))["models"]["free/flash"]
    assert entry["tokens_last_minute"] == used >= 40
    resp = await ask(d, **{"x-failoverd-no-fallback": "1"})
    (attempt,) = resp.json()["error"]["attempts"]
    assert attempt["message"] == "max_tpm"
    # the first answer's tokens leave the window 60 s after it (bucketed by the second),
    # which takes the minute below the limit (each answer reports less than 40)
    assert int(resp.headers["Retry-After"]) == round(START + 60 - clock.monotonic())
    clock.advance(int(resp.headers["Retry-After"]))
    assert (await ask(d)).headers["x-failoverd-model"] == "free/flash"


async def test_streams_count_their_usage_against_tpm(start_daemon: Any) -> None:
    clock = ManualClock()
    d = await start_daemon(TPM, clock=clock)
    for _ in range(3):
        async with d.http.stream("POST", "/v1/chat/completions", json={
                "model": "default", "messages": HELLO, "stream": True,
                "stream_options": {"include_usage": True}}) as resp:
            await resp.aread()
    assert (await status(d))["models"]["free/flash"]["tokens_last_minute"] >= 40
    assert (await ask(d)).headers["x-failoverd-model"] == "paid/pro"
