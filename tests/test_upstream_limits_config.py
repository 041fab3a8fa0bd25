"""providers.<name>.rate_limit_headers: read the upstream's rate-limit headers (default true),
validated as the other provider keys."""

from __future__ import annotations

from failoverd import config as config_mod
from tests.helpers import problems, providers

MODELS = """
[models."a/m"]
provider = "a"
"""


def test_rate_limit_headers_default_on_and_switch_off() -> None:
    cfg = config_mod.loads(providers(a="http://127.0.0.1:9/v1") + MODELS, env={})
    assert cfg.providers["a"].rate_limit_headers is True
    text = (providers(a=("anthropic", "http://127.0.0.1:9")) + "\nrate_limit_headers = false\n"
            + MODELS)
    assert config_mod.loads(text, env={}).providers["a"].rate_limit_headers is False


def test_rate_limit_headers_is_refused_where_no_upstream_sends_them() -> None:
    for kind in ("gemini", "ollama", "simulated"):
        text = (providers(a=(kind, "http://127.0.0.1:9")) + "\nrate_limit_headers = true\n"
                + MODELS)
        assert ('providers.a.rate_limit_headers: only valid for kind = "openai" or '
                '"anthropic" (the other kinds\' upstreams send no rate-limit headers)'
                in problems(text)), kind


def test_rate_limit_headers_must_be_a_boolean() -> None:
    text = providers(a="http://127.0.0.1:9/v1") + '\nrate_limit_headers = "no"\n' + MODELS
    assert "providers.a.rate_limit_headers: must be a boolean, got a string" in problems(text)
