"""Hedged requests' configuration: `[routing] hedge_after` and `models.<id>.hedge_after`,
read and validated with every problem named by its key path."""

from __future__ import annotations

from failoverd import config as config_mod
from tests.helpers import A_THEN_B, problems, providers

BASE = providers(a="http://127.0.0.1:1/v1", b="http://127.0.0.1:2/v1")


def test_hedging_is_off_unless_configured() -> None:
    cfg = config_mod.loads(f"{BASE}\n{A_THEN_B}\n")
    assert cfg.routing.hedge_after == 0.0
    assert cfg.models["a/m"].hedge_after is None


def test_routing_and_model_values_are_read() -> None:
    cfg = config_mod.loads(f"""{BASE}
[models."a/m"]
provider = "a"
hedge_after = 0
[models."b/m"]
provider = "b"
hedge_after = 2.5
[routing]
primary = "a/m"
fallbacks = ["b/m"]
hedge_after = 1
""")
    assert cfg.routing.hedge_after == 1.0
    assert cfg.models["a/m"].hedge_after == 0.0  # 0 on a model: never hedged, whatever routing says
    assert cfg.models["b/m"].hedge_after == 2.5


def test_bad_values_are_named_by_key() -> None:
    found = problems(f"""{BASE}
[models."a/m"]
provider = "a"
hedge_after = "fast"
[models."b/m"]
provider = "b"
hedge_after = -0.5
[routing]
primary = "a/m"
fallbacks = ["b/m"]
hedge_after = 100000
""")
    assert 'models."a/m".hedge_after: must be an integer or a number, got a string' in found
    assert 'models."b/m".hedge_after: must be at least 0, got -0.5' in found
    assert ("routing.hedge_after: must be at most 86400 seconds (0 = off), got 100000"
            in found)


def test_non_finite_and_boolean_values_are_refused() -> None:
    found = problems(f"{BASE}\n{A_THEN_B}\nhedge_after = nan\n")
    assert found == ["routing.hedge_after: must be a finite number, got nan"]
    found = problems(f"{BASE}\n{A_THEN_B}\nhedge_after = true\n")
    assert found == ["routing.hedge_after: must be an integer or a number, got a boolean"]


def test_audio_models_refuse_hedge_after() -> None:
    found = problems(f"""{BASE}
[models."a/m"]
provider = "a"
[models."a/tts"]
provider = "a"
capabilities = ["speech"]
hedge_after = 1
[models."a/whisper"]
provider = "a"
capabilities = ["transcription"]
hedge_after = 1
[models."a/embed"]
provider = "a"
capabilities = ["embeddings"]
hedge_after = 1
""")
    assert found == [
        'models."a/tts".hedge_after: audio calls are never hedged (a second copy would be '
        'made, and billed, in full)',
        'models."a/whisper".hedge_after: audio calls are never hedged (a second copy would '
        'be made, and billed, in full)']
