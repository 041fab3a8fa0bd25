"""clients.Clients on a ManualClock: the rolling minute's edges, concurrency, the spending
periods, the state file's snapshot, reloads keeping the counts, and model lists."""

from __future__ import annotations

import calendar
import socket
from typing import Any

import pytest

from failoverd.clientconfig import ClientConfig
from failoverd.clients import Client, Clients, Forbidden, Limited, OverBudget
from failoverd.clock import ManualClock

LATE = float(calendar.timegm((2026, 12, 31, 23, 59, 0, 0, 0, 0)))  # a minute to the new year
class Model:
    def __init__(self, priced: bool = False) -> None:
        self.priced = priced


MODELS = {"local/a": Model(), "local/b": Model(), "cloud/x": Model(priced=True)}
GROUPS = {"default": ("cloud/x", "local/a"), "cheap": ("local/b",)}


def make(clock: ManualClock, **limits: Any) -> tuple[Clients, Client, list[tuple[str, float]]]:
    told: list[tuple[str, float]] = []
    clients = Clients(clock)
    clients.on_limited = lambda limited, at: told.append((limited.limit, at))
    clients.configure({"c": ClientConfig("c", uids=(4242,), **limits)}, MODELS, GROUPS)
    return clients, next(iter(clients)), told


def test_the_rolling_minute() -> None:
    clock = ManualClock(wall=LATE - 3600)
    clients, c, told = make(clock, max_rpm=3)
    for _ in range(3):
        assert clients.admit(c) is None
        clients.release(c, 200, 0.0)
        clock.advance(10)
    limited = clients.admit(c)
    assert isinstance(limited, Limited)
    assert (limited.limit, limited.retry_after) == ("max_rpm", 30)  # the first leaves at 60
    assert clients.admit(c) is not None
    assert told == [("max_rpm", clock.time() + 30)]  # once per episode
    clock.advance(29.5)
    assert clients.admit(c) is not None
    assert clients.admit(c).retry_after == 1  # type: ignore[union-attr]  # never 0
    clock.advance(0.5)  # exactly a minute after the first: it has left
    assert clients.admit(c) is None
    # a reload lowering the limit applies at once, to the minute counted so far
    clients.configure({"c": ClientConfig("c", uids=(4242,), max_rpm=1)}, MODELS, GROUPS)
    limited = clients.admit(c)
    assert limited is not None and limited.retry_after == 60  # the latest leaves last
    assert c.outcomes == {"served": 3, "max_rpm": 5}


def test_concurrency_counts_what_is_in_flight() -> None:
    clients, c, told = make(ManualClock(), max_concurrency=2)
    assert clients.admit(c) is None and clients.admit(c) is None
    assert clients.admit(c).limit == "max_concurrency"  # type: ignore[union-attr]
    clients.release(c, 503, 0.0)
    assert clients.admit(c) is None
    assert c.inflight == 2 and c.outcomes["failed"] == 1
    assert len(told) == 1


def test_spending_periods_snapshot_and_restore() -> None:
    clock = ManualClock(wall=LATE)
    clients, c, told = make(clock, max_cost_per_day=1.0, max_cost_per_month=1.5)
    assert clients.admit(c) is None
    clients.release(c, 200, 0.7)
    assert clients.admit(c) is None
    clients.release(c, 200, 0.3)  # 0.7 + 0.3 reach the day's cap exactly
    assert clients.admit(c) is None  # the rates let it in: the router skips priced models
    with pytest.raises(OverBudget) as info:
        c.narrow("cloud/x", ("cloud/x",), names_model=True)
    limited = info.value.limited
    assert limited.limit == "max_cost_per_day" and info.value.status == 429
    assert limited.retry_after == 60 and limited.period == "2026-12-31"
    # a model without prices costs nothing: it still serves, the priced ones are skipped
    assert c.narrow("default", ("cloud/x", "local/a"), names_model=False) == (
        ("local/a",), (("cloud/x", "clients.c.max_cost_per_day reached"),))
    assert told == [("max_cost_per_day", clock.time() + 60)]
    clients.release(c, 429, 0.0, counted=True)
    assert c.outcomes == {"served": 2, "max_cost_per_day": 1}
    saved = clients.snapshot()
    assert saved == {"c": {"day": ["2026-12-31", 1.0], "month": ["2026-12", 1.0],
                           "told": ["max_cost_per_day"]}}
    # a restart takes it back, and does not tell the cap again
    again, c2, told2 = make(clock, max_cost_per_day=1.0, max_cost_per_month=1.5)
    again.restore(saved)
    with pytest.raises(OverBudget):
        c2.narrow("cloud/x", ("cloud/x",), names_model=True)
    assert told2 == []
    # a new day and a new month: nothing spent, the saved periods dropped
    clock.advance(60)
    assert c2.narrow("cloud/x", ("cloud/x",), names_model=True) == (("cloud/x",), ())
    assert again.status()["c"]["spent_usd"] == {"day": 0.0, "month": 0.0}
    later, c3, _ = make(clock, max_cost_per_day=1.0)
    later.restore(saved)
    assert later.snapshot() == {} and c3.day == ("", 0.0)
    # junk is skipped
    later.restore({"c": {"day": ["garbage", 5], "month": "x"}, "other": 1, 3: []})
    later.restore([1, 2])
    assert later.snapshot() == {}


def test_a_client_a_reload_removes_and_brings_back_keeps_its_spending() -> None:
    clock = ManualClock(wall=LATE - 86400 * 3)
    clients, c, _ = make(clock, max_cost_per_day=1.0)
    clients.admit(c)
    clients.release(c, 200, 0.25)
    clients.configure({}, MODELS, GROUPS)
    assert not clients.active and clients.status() == {}
    assert "c" in clients.snapshot()  # still saved
    clients.configure({"c": ClientConfig("c", uids=(4242,))}, MODELS, GROUPS)
    assert next(iter(clients)).day[1] == 0.25


def test_models_names_globs_and_narrowing() -> None:
    clients, c, _ = make(ManualClock(), models=("local/*", "cheap"))
    assert c.narrow("local/a", ("local/a", "cloud/x"), names_model=True) == (
        ("local/a",), (("cloud/x", "not in clients.c.models"),))
    assert c.narrow("cheap", ("local/b",), names_model=False) == (("local/b",), ())
    with pytest.raises(Forbidden) as info:
        c.narrow("default", ("cloud/x", "local/a"), names_model=False)
    assert info.value.status == 403 and "'default'" in info.value.message
    with pytest.raises(Forbidden):
        c.narrow("cloud/x", ("cloud/x", "local/a"), names_model=True)
    # an upstream name of an allowed model is allowed
    assert c.narrow("a", ("local/a", "cloud/x"), names_model=True)[0] == ("local/a",)
    # a chain or pool listed gives its models; "default" the default chain's
    _, d, _ = make(ManualClock(), models=("default",))
    assert d.narrow("", ("cloud/x", "local/a"), names_model=False)[0] == ("cloud/x", "local/a")
    # names the client tries are remembered, boundedly
    for i in range(2000):
        c.may_ask(f"x{i}")
    assert len(c._seen) == 1024
    _, anyone, _ = make(ManualClock())
    assert anyone.narrow("cloud/x", ("cloud/x",), names_model=True) == (("cloud/x",), ())


def test_identify_by_uid_on_unix_and_token_on_tcp() -> None:
    clients = Clients(ManualClock())
    clients.configure({"a": ClientConfig("a", uids=(1,)),
                       "t": ClientConfig("t", tcp_token="tok")}, MODELS, GROUPS)
    assert clients.by_token({"Authorization": "Bearer tok"}).name == "t"  # type: ignore[union-attr]
    assert clients.by_token({"x-api-key": "tok"}).name == "t"  # type: ignore[union-attr]
    assert clients.by_token({"Authorization": "Bearer nope", "x-api-key": "tok"}) is not None
    assert clients.by_token({"Authorization": "Basic tok"}) is None
    assert clients.by_token({}) is None
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        # a Unix peer is its uid (the test's own: no client); its token names no one
        assert clients.identify(a, {"Authorization": "Bearer tok"}) is None


def test_a_client_held_at_its_rate_is_told_once_per_episode() -> None:
    # a client hammering at its limit: each place a request frees is taken at once and the
    # next is refused; that is one episode, not one event per freed place
    clock = ManualClock(wall=LATE - 3600)
    clients, c, told = make(clock, max_rpm=60, max_concurrency=1)
    for _ in range(300):
        if clients.admit(c) is None:
            clients.admit(c)  # refused: one at once
            clients.release(c, 200, 0.0)
        clock.advance(1)
    assert told == [("max_concurrency", LATE - 3600 + 1)]
    assert c.outcomes["served"] == 300 and c.outcomes["max_concurrency"] == 300
    # a minute with no refusal ends the episode: the next one is told again
    clock.advance(60)
    assert clients.admit(c) is None and clients.admit(c) is not None
    assert [limit for limit, _ in told] == ["max_concurrency", "max_concurrency"]
    clients.release(c, 200, 0.0)
    # the rolling minute the same way
    clients, c, told = make(clock, max_rpm=2)
    for _ in range(600):
        if clients.admit(c) is None:
            clients.release(c, 200, 0.0)
        clock.advance(1)
    assert [limit for limit, _ in told] == ["max_rpm"]


def test_the_minute_is_counted_without_max_rpm_and_kept_when_a_reload_sets_it() -> None:
    clock = ManualClock(wall=LATE - 3600)
    clients, c, _ = make(clock)
    for _ in range(5):
        assert clients.admit(c) is None
        clients.release(c, 200, 0.0)
        clock.advance(20)
    assert clients.status()["c"]["requests_last_minute"] == 2  # at 60 and 80 s (now 100)
    clients.configure({"c": ClientConfig("c", uids=(4242,), max_rpm=2)}, MODELS, GROUPS)
    assert clients.admit(c) is not None  # the minute so far counts against the new limit


def test_a_cap_told_on_many_days_keeps_only_the_latest() -> None:
    clock = ManualClock(wall=LATE - 86400 * 30)
    clients, c, told = make(clock, max_cost_per_day=0.5)
    for _ in range(30):
        clients.admit(c)
        clients.release(c, 200, 1.0)
        with pytest.raises(OverBudget):
            c.narrow("cloud/x", ("cloud/x",), names_model=True)
        clock.advance(86400)
    assert len(told) == 30 and len(c._told) == 1


def test_identify_takes_a_token_on_tcp_only() -> None:
    clients = Clients(ManualClock())
    clients.configure({"t": ClientConfig("t", tcp_token="tok")}, MODELS, GROUPS)
    token = {"Authorization": "Bearer tok"}

    class Gone:  # a transport whose connection is gone: aiohttp's request.transport
        def get_extra_info(self, name: str) -> Any:
            return None

    assert clients.identify(None, token) is None
    assert clients.identify(Gone(), token) is None
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        b.close()  # the peer's uid cannot be read: no one's, not the token's
        assert clients.identify(b, token) is None
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()):
            peer, _ = server.accept()
            with peer:
                assert clients.identify(peer, token) is clients.by_token(token) is not None
