"""Persisted state is reused only under the settings it was earned under.

A restart applies the reload rule: a model's breaker and a provider's credential trouble
survive only when the model and its provider are configured as before (API key included).
Daemons run in-process on real Unix sockets against fake upstreams.
"""

from __future__ import annotations

import random

import orjson

from failoverd import config as config_mod
from failoverd.clock import ManualClock
from failoverd.fingerprint import fingerprint, new_salt
from failoverd.health import HealthRegistry
from tests.fakes.openai import FakeOpenAI
from tests.helpers import ask, pair_config, status


def two_providers(a: FakeOpenAI, b: FakeOpenAI, *, a_window: int | None = None) -> str:
    """pair_config with provider a's key read from $A_KEY."""
    return pair_config(a, b, a_window=a_window).replace(
        f'base_url = "{a.url}"', f'base_url = "{a.url}"\napi_key_env = "A_KEY"')


async def test_a_new_api_key_after_a_restart_unblocks_the_provider(fake_openai,
                                                                   start_daemon) -> None:
    a = await fake_openai(reply="from a", default="auth")
    b = await fake_openai(reply="from b")
    clock = ManualClock()
    body = two_providers(a, b)
    d = await start_daemon(body, env={"A_KEY": "sk-wrong-key-1"}, clock=clock)
    assert (await ask(d))[0] == "b/gpt-b"
    assert (await status(d))["providers"]["a"]["credentials"] == "auth"
    await d.stop()
    saved = d.sup.service.state_file.path.read_bytes()
    assert b"sk-wrong-key-1" not in saved  # a keyed hash, never the key
    assert orjson.loads(saved)["providers"]["a"]["state"] == "auth"

    # the same key after a restart: still blocked, provider a is not called
    a.default = "ok"
    d = await start_daemon(body, env={"A_KEY": "sk-wrong-key-1"}, clock=clock)
    assert (await status(d))["providers"]["a"]["credentials"] == "auth"
    assert (await ask(d))[0] == "b/gpt-b"
    assert len(a.chat_requests()) == 1
    await d.stop()

    # the operator fixed the key and restarted: provider a gets its chance at once
    d = await start_daemon(body, env={"A_KEY": "sk-right-key-2"}, clock=clock)
    assert (await status(d))["providers"]["a"]["credentials"] == "ok"
    assert (await ask(d))[0] == "a/gpt-a"
    assert len(a.chat_requests()) == 2
    # and the file now holds the new settings: no trouble for provider a
    await d.stop()
    assert "a" not in orjson.loads(d.sup.service.state_file.path.read_bytes())["providers"]


async def test_a_changed_model_starts_closed_after_a_restart_others_keep_their_state(
        fake_openai, start_daemon) -> None:
    a = await fake_openai(reply="from a")
    b = await fake_openai(reply="from b")
    clock = ManualClock()
    env = {"A_KEY": "sk-a"}
    d = await start_daemon(two_providers(a, b), env=env, clock=clock)
    for model in ("a/gpt-a", "b/gpt-b"):
        resp = await d.http.post(f"/v1/models/{model}/open", json={"seconds": 600})
        assert resp.json()["state"] == "forced_open"
    await d.stop()

    # a/gpt-a gets a larger context window; b/gpt-b and its provider are as they were
    changed = two_providers(a, b, a_window=100000)
    d = await start_daemon(changed, env=env, clock=clock)
    models = (await status(d))["models"]
    assert models["a/gpt-a"]["state"] == "closed"
    assert models["b/gpt-b"]["state"] == "forced_open"
    assert (await ask(d))[0] == "a/gpt-a"
    await d.stop()

    # provider b's settings change (its key): its model's forced open is not carried over
    d = await start_daemon(changed.replace('base_url = "' + b.url + '"',
                                           'base_url = "' + b.url + '"\napi_key_env = "B_KEY"'),
                           env={**env, "B_KEY": "sk-b"}, clock=clock)
    assert (await status(d))["models"]["b/gpt-b"]["state"] == "closed"


def _registry(text: str) -> HealthRegistry:
    cfg = config_mod.loads(text, env={"A_KEY": "sk-a"})
    return HealthRegistry(cfg, ManualClock(), random.Random(1))


_BODY = """
[providers.a]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "A_KEY"
[models."a/gpt-a"]
provider = "a"
[routing]
primary = "a/gpt-a"
"""


def test_a_state_file_from_before_fingerprints_is_restored_as_it_is() -> None:
    registry = _registry(_BODY)
    registry.force_open("a/gpt-a", 600)
    snap = registry.snapshot()
    assert isinstance(snap["salt"], str) and snap["breakers"]["a/gpt-a"]["settings"]
    # what an earlier version wrote: no salt, no settings
    old = {**snap, "breakers": {"a/gpt-a": {k: v for k, v in snap["breakers"]["a/gpt-a"].items()
                                         if k != "settings"}}}
    del old["salt"]
    fresh = _registry(_BODY)
    fresh.restore(old)
    assert fresh.status()["models"]["a/gpt-a"]["state"] == "forced_open"


def test_entries_without_matching_settings_are_not_restored() -> None:
    registry = _registry(_BODY)
    registry.force_open("a/gpt-a", 600)
    snap = registry.snapshot()
    for tampered in ({**snap, "salt": "not hex"},
                     {**snap, "salt": new_salt()},
                     {**snap, "breakers": {"a/gpt-a": {**snap["breakers"]["a/gpt-a"],
                                                     "settings": "0" * 32}}}):
        fresh = _registry(_BODY)
        fresh.restore(tampered)
        assert fresh.status()["models"]["a/gpt-a"]["state"] == "closed", tampered
    fresh = _registry(_BODY)
    fresh.restore(snap)
    assert fresh.status()["models"]["a/gpt-a"]["state"] == "forced_open"


def test_fingerprints_cover_every_field_and_depend_on_the_salt() -> None:
    one = config_mod.loads(_BODY, env={"A_KEY": "sk-a"})
    two = config_mod.loads(_BODY, env={"A_KEY": "sk-b"})
    salt = new_salt()
    assert fingerprint(salt, one.providers["a"]) == fingerprint(salt, one.providers["a"])
    # the key is hidden from repr, not from the fingerprint
    assert fingerprint(salt, one.providers["a"]) != fingerprint(salt, two.providers["a"])
    assert fingerprint(salt, one.providers["a"]) != fingerprint(new_salt(), one.providers["a"])
    # capabilities are a frozenset: its order must not matter
    caps = _BODY.replace('provider = "a"\n[routing]',
                         'provider = "a"\ncapabilities = ["tools", "vision", "json"]\n[routing]')
    caps2 = caps.replace('["tools", "vision", "json"]', '["json", "tools", "vision"]')
    m1 = config_mod.loads(caps, env={"A_KEY": "sk-a"}).models["a/gpt-a"]
    m2 = config_mod.loads(caps2, env={"A_KEY": "sk-a"}).models["a/gpt-a"]
    assert fingerprint(salt, m1) == fingerprint(salt, m2)
