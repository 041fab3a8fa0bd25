"""The hedge budget's configuration: `[routing] hedge_budget`, `hedge_budget_min` and
`models.<id>.hedge_budget`, read and validated with every problem named by its key path."""

from __future__ import annotations

from failoverd import config as config_mod
from tests.helpers import A_THEN_B, problems, providers

BASE = providers(a="http://127.0.0.1:1/v1", b="http://127.0.0.1:2/v1")


def test_a_models_share_is_read_and_bad_ones_are_named() -> None:
    cfg = config_mod.loads(f"""{BASE}
[models."a/m"]
provider = "a"
hedge_budget = 0.1
[models."b/m"]
provider = "b"
""")
    assert cfg.models["a/m"].hedge_budget == 0.1
    assert cfg.models["b/m"].hedge_budget is None  # routing's
    found = problems(f"""{BASE}
[models."a/m"]
provider = "a"
hedge_budget = 0
[models."b/m"]
provider = "b"
hedge_budget = 1.5
[models."w/m"]
provider = "a"
capabilities = ["transcription"]
hedge_budget = 0.5
""")
    assert 'models."a/m".hedge_budget: must be greater than 0, got 0.0' in found
    assert 'models."b/m".hedge_budget: must be at most 1 (a share of the attempts), got 1.5' \
        in found
    assert ('models."w/m".hedge_budget: audio calls are never hedged (a second copy would be '
            'made, and billed, in full)') in found


def test_no_budget_unless_configured_and_routings_keys_are_read() -> None:
    cfg = config_mod.loads(f"{BASE}\n{A_THEN_B}\n")
    assert (cfg.routing.hedge_budget, cfg.routing.hedge_budget_min) == (None, 3)
    cfg = config_mod.loads(f"{BASE}\n{A_THEN_B}\nhedge_budget = 0.25\nhedge_budget_min = 0\n")
    assert (cfg.routing.hedge_budget, cfg.routing.hedge_budget_min) == (0.25, 0)
    found = problems(f"{BASE}\n{A_THEN_B}\nhedge_budget = true\nhedge_budget_min = -1\n")
    assert found == ["routing.hedge_budget: must be an integer or a number, got a boolean",
                     "routing.hedge_budget_min: must be at least 0, got -1"]
