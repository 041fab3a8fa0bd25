"""max_rpm and max_tpm outlive a restart: the minute's calls and tokens go into the state file
(in wall-clock seconds) and come back into the next process's minute, on simulated time."""

from __future__ import annotations

from typing import Any

from failoverd.clock import ManualClock
from failoverd.quota import Quotas
from tests.helpers import chat as ask
from tests.helpers import status
from tests.test_max_rpm import CONFIG, TPM

WALL = 1_800_000_000.0


def restarted(seconds_later: float) -> ManualClock:
    """The next process's clock: the wall clock went on, the monotonic one started afresh."""
    return ManualClock(start=50.0, wall=WALL + seconds_later)


async def test_a_restart_does_not_hand_out_a_fresh_rpm_minute(start_daemon: Any) -> None:
    d = await start_daemon(CONFIG, clock=ManualClock(start=7000.0, wall=WALL))
    for _ in range(2):
        assert (await ask(d)).headers["x-failoverd-model"] == "free/flash"
    await d.stop()

    # back 10 s later: the two calls are 10 s old, the model still at its max_rpm of 2
    clock = restarted(10)
    d2 = await start_daemon(CONFIG, clock=clock)
    assert (await status(d2))["models"]["free/flash"]["calls_last_minute"] == 2
    resp = await ask(d2)
    assert resp.headers["x-failoverd-model"] == "paid/pro"
    resp = await ask(d2, **{"x-failoverd-no-fallback": "1"})
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "50"
    clock.advance(50)  # the calls are a minute old now
    assert (await ask(d2)).headers["x-failoverd-model"] == "free/flash"
    await d2.stop()

    # back after more than a minute: a fresh minute
    d3 = await start_daemon(CONFIG, clock=restarted(200))
    assert (await status(d3))["models"]["free/flash"]["calls_last_minute"] == 0


async def test_a_restart_keeps_the_minutes_tokens(start_daemon: Any) -> None:
    d = await start_daemon(TPM, clock=ManualClock(start=7000.0, wall=WALL))
    used = 0
    while used < 40:
        resp = await ask(d)
        assert resp.headers["x-failoverd-model"] == "free/flash"
        used += resp.json()["usage"]["total_tokens"]
    await d.stop()
    clock = restarted(5)
    d2 = await start_daemon(TPM, clock=clock)
    assert (await status(d2))["models"]["free/flash"]["tokens_last_minute"] == used
    assert (await ask(d2)).headers["x-failoverd-model"] == "paid/pro"
    clock.advance(60)
    assert (await ask(d2)).headers["x-failoverd-model"] == "free/flash"


def test_snapshot_and_restore() -> None:
    from failoverd.catalog import ModelConfig
    q = Quotas()
    q.configure(ModelConfig("m", "p", "m", max_rpm=3, max_tpm=100))
    for t, tokens in ((100.2, 10), (100.7, 20), (130.0, 30)):
        q.counted("m", t)
        q.spent("m", tokens, t)
    snap = q.snapshot(now=140.0, wall=WALL)
    assert snap["m"]["calls"] == [[WALL - 40, 2], [WALL - 10, 1]]  # per second
    assert [amount for _, amount in snap["m"]["tokens"]] == [30, 30]
    again = Quotas()
    again.configure(ModelConfig("m", "p", "m", max_rpm=3, max_tpm=100))
    again.configure(ModelConfig("other", "p", "other"))
    again.restore({**snap, "other": snap["m"], "junk": [1], "m2": {"calls": "x"}},
                  now=10.0, wall=WALL + 25)  # 25 s later: the first second is 65 s old
    assert again.status("m", 10.0) == {"calls_last_minute": 1, "tokens_last_minute": 30}
    assert again.status("other", 10.0) == {}  # no limits: nothing kept
    odd = Quotas()
    odd.configure(ModelConfig("m", "p", "m", max_rpm=2))
    odd.restore({"m": {"calls": [[WALL, 1e9], ["x", 1], [WALL, float("nan")], [WALL]]}},
                now=5.0, wall=WALL + 1)
    assert odd.status("m", 5.0) == {"calls_last_minute": 2}  # capped at max_rpm
