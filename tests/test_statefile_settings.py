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
from tests.helpers import ask, status


def two_providers(a: FakeOpenAI, b: FakeOpenAI, extra_model: str = "") -> str:
    return f"""
[providers.a]
kind = "openai"
base_url = "{a.url}"
api_key_env = "A_KEY"
[providers.b]
kind = "openai"
base_url = "{b.url}"
[models."a/one"]
provider = "a"
[models."b/two"]
provider = "b"
{extra_model}
[routing]
primary = "a/one"
fallbacks = ["b/two"]
deadline = 5
when_all_unavailable = "fail"
[probes]
interval = 3600
jitter = 0
kind = "none"
recovery_kind = "none"
"""


async def test_a_new_api_key_after_a_restart_unblocks_the_provider(fake_openai,
                                                                   start_daemon) -> None:
    a = await fake_openai(reply="from a", default="auth")
    b = await fake_openai(reply="from b")
    clock = ManualClock()
    body = two_providers(a, b)
    d = await start_daemon(body, env={"A_KEY": "sk-wrong-key-1"}, clock=clock)
    assert (await ask(d))[0] == "b/two"
    assert (await status(d))["providers"]["a"]["credentials"] == "auth"
    await d.stop()
    saved = d.sup.service.state_file.path.read_bytes()
    assert b"sk-wrong-key-1" not in saved  # a keyed hash, never the key
    assert orjson.loads(saved)["providers"]["a"]["state"] == "auth"

    # the same key after a restart: still blocked, provider a is not called
    a.default = "ok"
    d = await start_daemon(body, env={"A_KEY": "sk-wrong-key-1"}, clock=clock)
    assert (await status(d))["providers"]["a"]["credentials"] == "auth"
    assert (await ask(d))[0] == "b/two"
    assert len(a.chat_requests()) == 1
    await d.stop()

    # the operator fixed the key and restarted: provider a gets its chance at once
    d = await start_daemon(body, env={"A_KEY": "sk-right-key-2"}, clock=clock)
    assert (await status(d))["providers"]["a"]["credentials"] == "ok"
    assert (await ask(d))[0] == "a/one"
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
    for model in ("a/one", "b/two"):
        resp = await d.http.post(f"/v1/models/{model}/open", json={"seconds": 600})
        assert resp.json()["state"] == "forced_open"
    await d.stop()

    # a/one gets a larger context window; b/two and its provider are as they were
    changed = two_providers(a, b).replace('[models."a/one"]\nprovider = "a"',
                                          '[models."a/one"]\nprovider = "a"\n'
                                          "context_window = 100000")
    assert changed != two_providers(a, b)
    d = await start_daemon(changed, env=env, clock=clock)
    models = (await status(d))["models"]
    assert models["a/one"]["state"] == "closed"
    assert models["b/two"]["state"] == "forced_open"
    assert (await ask(d))[0] == "a/one"
    await d.stop()

    # provider b's settings change (its key): its model's forced open is not carried over
    d = await start_daemon(changed.replace('base_url = "' + b.url + '"',
                                           'base_url = "' + b.url + '"\napi_key_env = "B_KEY"'),
                           env={**env, "B_KEY": "sk-b"}, clock=clock)
    assert (await status(d))["models"]["b/two"]["state"] == "closed"


def _registry(text: str) -> HealthRegistry:
    cfg = config_mod.loads(text, env={"A_KEY": "sk-a"})
    return HealthRegistry(cfg, ManualClock(), random.Random(1))


_BODY = """
[providers.a]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "A_KEY"
[models."a/one"]
provider = "a"
[routing]
primary = "a/one"
"""


def test_a_state_file_from_before_fingerprints_is_restored_as_it_is() -> None:
    registry = _registry(_BODY)
    registry.force_open("a/one", 600)
    snap = registry.snapshot()
    assert isinstance(snap["salt"], str) and snap["breakers"]["a/one"]["settings"]
    # what an earlier version wrote: no salt, no settings
    old = {**snap, "breakers": {"a/one": {k: v for k, v in snap["breakers"]["a/one"].items()
                                         if k != "settings"}}}
    del old["salt"]
    fresh = _registry(_BODY)
    fresh.restore(old)
    assert fresh.status()["models"]["a/one"]["state"] == "forced_open"


def test_entries_without_matching_settings_are_not_restored() -> None:
    registry = _registry(_BODY)
    registry.force_open("a/one", 600)
    snap = registry.snapshot()
    for tampered in ({**snap, "salt": "not hex"},
                     {**snap, "salt": new_salt()},
                     {**snap, "breakers": {"a/one": {**snap["breakers"]["a/one"],
                                                     "settings": "0" * 32}}}):
        fresh = _registry(_BODY)
        fresh.restore(tampered)
        assert fresh.status()["models"]["a/one"]["state"] == "closed", tampered
    fresh = _registry(_BODY)
    fresh.restore(snap)
    assert fresh.status()["models"]["a/one"]["state"] == "forced_open"


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
    m1 = config_mod.loads(caps, env={"A_KEY": "sk-a"}).models["a/one"]
    m2 = config_mod.loads(caps2, env={"A_KEY": "sk-a"}).models["a/one"]
    assert fingerprint(salt, m1) == fingerprint(salt, m2)
