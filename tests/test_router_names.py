"""What a request's `model` names when a chain or pool is named like an upstream model name."""

from __future__ import annotations

import pytest

from failoverd import config as config_mod
from failoverd.errors import RequestError
from failoverd.router import resolve

CONFIG = """
[providers.o]
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
[providers.o2]
kind = "openai"
base_url = "http://127.0.0.1:10/v1"
[models."o/gpt-4o"]
provider = "o"
[models."o/gpt-5"]
provider = "o"
[models."o2/gpt-5"]
provider = "o2"
[models."o/mini"]
provider = "o"
name = "gpt-4o-mini"
[routing]
primary = "o/gpt-5"
fallbacks = ["o/mini"]
[chains."gpt-4o"]
models = ["o/mini", "o/gpt-4o"]
"""


def test_a_chain_named_like_an_upstream_name_takes_the_requests_for_it() -> None:
    cfg = config_mod.loads(CONFIG, env={})
    # a client hard-coded to "gpt-4o" gets the chain, not the one model of that name
    assert resolve(cfg, "gpt-4o") == ("o/mini", "o/gpt-4o")
    # the model id still names the model, and another upstream name its one model
    assert resolve(cfg, "o/gpt-4o")[0] == "o/gpt-4o"
    assert resolve(cfg, "gpt-4o-mini")[0] == "o/mini"
    # an upstream name two models share (and no pool holds) names neither
    with pytest.raises(RequestError, match="'gpt-5' is ambiguous"):
        resolve(cfg, "gpt-5")


def test_a_pool_named_like_an_upstream_name_takes_the_requests_for_it() -> None:
    without_chain = CONFIG.split('[chains."gpt-4o"]')[0]
    cfg = config_mod.loads(without_chain + '[pools."gpt-4o"]\nmodels = ["o/gpt-5", "o2/gpt-5"]\n',
                           env={})
    assert set(resolve(cfg, "gpt-4o")[:2]) == {"o/gpt-5", "o2/gpt-5"}
    assert resolve(cfg, "o/gpt-4o")[0] == "o/gpt-4o"
