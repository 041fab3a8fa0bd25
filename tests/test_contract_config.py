"""DESIGN.md's configuration section as a contract: its example file is valid, the values it
shows for optional keys are the defaults (so omitting a key means what the example says), and
a secret written into the file itself is an error."""

from __future__ import annotations

import dataclasses

import pytest

from failoverd import config
from failoverd.errors import ConfigError

# DESIGN.md's example, verbatim but for the [[hooks]] program (it must exist to be valid)
DESIGN_EXAMPLE = """
[daemon]
socket = "/run/failoverd/failoverd.sock"  # ignored under socket activation
socket_mode = "0660"
allowed_uids = []            # SO_PEERCRED allow-list; empty = file permissions decide
tcp = ""                     # optional loopback listener, e.g. "127.0.0.1:8787"; off by default
tcp_token_file = ""          # bearer token required on the TCP listener
state_dir = "/var/lib/failoverd"
node = ""                    # default: hostname
max_inflight = 1024          # beyond this: 503 {"error":{"type":"overloaded"}} from failoverd itself
max_body_bytes = 33554432
shutdown_timeout = 30
log_format = "text"          # text | json

[mqtt]
enabled = false
host = "localhost"
port = 1883
socket = ""                  # a broker's Unix socket instead of host/port
topic_prefix = "failoverd"
username = ""
password_file = ""
queue_size = 1000            # events buffered while the broker is away

[providers.anthropic]
kind = "anthropic"           # openai | anthropic | gemini | ollama | simulated
base_url = "https://api.anthropic.com"
api_key_env = "ANTHROPIC_API_KEY"
connect_timeout = 5
timeout = 120                # whole-request ceiling for non-streaming calls

[providers.openai]
kind = "openai"              # any OpenAI-compatible API: LM Studio, vLLM, Ollama /v1, DeepSeek, Kimi, GLM, MiniMax
base_url = "https://api.openai.com/v1"   # as the vendor's SDK spells it: openai includes /v1;
api_key_env = "OPENAI_API_KEY"           # anthropic "https://api.anthropic.com", gemini
                                         # "https://generativelanguage.googleapis.com", ollama "http://localhost:11434"

[models."anthropic/claude-sonnet-4-5"]
provider = "anthropic"
name = "claude-sonnet-4-5"   # upstream model name; default: the part after the first '/'
context_window = 200000
max_output_tokens = 64000
capabilities = ["tools", "vision", "reasoning"]   # tools | vision | reasoning | json | long_context
tier = "large"               # small | medium | large (smart routing)
cost = { input = 3.0, output = 15.0 }             # USD per 1M tokens
max_retries = 1              # same-model retries on transient faults
first_token_timeout = 30     # streaming: no first chunk by then = timeout (failover still possible)
stream_idle_timeout = 60     # streaming: a gap this long after the first chunk ends the stream with an error event
max_concurrency = 0          # 0 = unlimited

[models."openai/gpt-5"]
provider = "openai"

[models."ollama/qwen2.5:7b"]
provider = "openai"

[models."openai/gpt-5-mini"]
provider = "openai"

[routing]
primary = "anthropic/claude-sonnet-4-5"
fallbacks = ["openai/gpt-5", "ollama/qwen2.5:7b"]  # omitted: no fallbacks, unless fallbacks_from_models
fallbacks_from_models = false  # true + fallbacks omitted: every [models] entry in file order, primary excluded, de-duplicated
deadline = 120               # whole-request budget across all attempts (header x-failoverd-deadline overrides)
retry_after_max = 2          # wait for a 429's Retry-After on the same model only up to this
when_all_unavailable = "queue"   # queue | fail
queue_timeout = 10
context_policy = "skip"      # skip | truncate | fail — fallback candidate whose context_window is too small
sticky_seconds = 300         # a session that failed over stays on its fallback this long

[chains.fast]                # named chains; a request's "model" may name one
models = ["openai/gpt-5-mini", "ollama/qwen2.5:7b"]

[breaker]
failure_threshold = 3        # consecutive failures that open it
failure_rate = 0.5           # or this failure rate ...
window = 60                  # ... over this sliding window ...
minimum_calls = 10           # ... once it holds this many calls
slow_call_seconds = 0        # 0 = off; slower successes count as slow
open_seconds = 30            # first open period; x2 per re-open, jittered, capped:
max_open_seconds = 600
half_open_calls = 1
auth_open_seconds = 3600     # auth failures open every model of that provider
billing_open_seconds = 18000

[probes]
interval = 30
jitter = 3
timeout = 10
kind = "models"              # models (list models: reachability + auth) | chat (1-token completion) | none
recovery_kind = "chat"       # probe sent when an open breaker's period ends
chat_max_tokens = 16         # some models reject smaller limits; reasoning models get the lowest effort

[[hooks]]
events = ["model:failover"]
exec = ["/bin/true", "--flag"]
timeout = 2
"""  # noqa: E501 - verbatim: its comments are longer than our lines

ENV = {"ANTHROPIC_API_KEY": "sk-ant-test", "OPENAI_API_KEY": "sk-test"}

# The same models with every optional table and key left out
MINIMAL = """
[providers.anthropic]
kind = "anthropic"
api_key_env = "ANTHROPIC_API_KEY"
[providers.openai]
kind = "openai"
api_key_env = "OPENAI_API_KEY"
[models."anthropic/claude-sonnet-4-5"]
provider = "anthropic"
[models."openai/gpt-5"]
provider = "openai"
[models."ollama/qwen2.5:7b"]
provider = "openai"
[models."openai/gpt-5-mini"]
provider = "openai"
[[hooks]]
events = ["model:failover"]
exec = ["/bin/true", "--flag"]
"""


def test_the_design_example_is_a_valid_config() -> None:
    cfg = config.loads(DESIGN_EXAMPLE, env=ENV)
    claude = cfg.models["anthropic/claude-sonnet-4-5"]
    assert (claude.name, claude.context_window, claude.max_output_tokens, claude.tier) == (
        "claude-sonnet-4-5", 200000, 64000, "large")
    assert claude.capabilities == {"tools", "vision", "reasoning"}
    assert (claude.cost.input, claude.cost.output) == (3.0, 15.0)
    assert cfg.default_chain == ("anthropic/claude-sonnet-4-5", "openai/gpt-5",
                                 "ollama/qwen2.5:7b")
    assert cfg.chains["fast"].models == ("openai/gpt-5-mini", "ollama/qwen2.5:7b")
    assert cfg.providers["anthropic"].api_key == "sk-ant-test"
    assert cfg.hooks[0].exec == ("/bin/true", "--flag")


def test_the_values_the_design_example_shows_are_the_defaults() -> None:
    shown = config.loads(DESIGN_EXAMPLE, env=ENV)
    omitted = config.loads(MINIMAL, env=ENV)
    assert omitted.daemon == shown.daemon
    assert omitted.mqtt == shown.mqtt
    assert omitted.breaker == shown.breaker
    assert omitted.probes == shown.probes
    assert omitted.hooks == shown.hooks
    # routing: all but the chain itself (the first model is the primary, no fallbacks)
    assert omitted.routing == dataclasses.replace(shown.routing, primary="", fallbacks=None)
    assert omitted.default_chain == ("anthropic/claude-sonnet-4-5",)
    # providers: the example spells out the default base URLs and timeouts
    assert omitted.providers == shown.providers
    # a model's optional keys: name after the first '/', and the per-model defaults shown
    m = omitted.models["anthropic/claude-sonnet-4-5"]
    assert m.name == "claude-sonnet-4-5"
    assert omitted.models["ollama/qwen2.5:7b"].name == "qwen2.5:7b"
    example = shown.models["anthropic/claude-sonnet-4-5"]
    for key in ("max_retries", "first_token_timeout", "stream_idle_timeout",
                "max_concurrency"):
        assert getattr(m, key) == getattr(example, key), key
    # and the values DESIGN.md names, so a change of a default is a change of the contract
    assert (m.max_retries, m.first_token_timeout, m.stream_idle_timeout,
            m.max_concurrency) == (1, 30.0, 60.0, 0)
    d = omitted.daemon
    assert (d.socket, d.socket_mode, d.allowed_uids, d.tcp, d.state_dir, d.node,
            d.max_inflight, d.max_body_bytes, d.shutdown_timeout, d.log_format) == (
        "/run/failoverd/failoverd.sock", 0o660, (), "", "/var/lib/failoverd", "", 1024,
        33554432, 30.0, "text")
    r = omitted.routing
    assert (r.deadline, r.retry_after_max, r.when_all_unavailable, r.queue_timeout,
            r.context_policy, r.sticky_seconds, r.fallbacks_from_models) == (
        120.0, 2.0, "queue", 10.0, "skip", 300.0, False)
    b = omitted.breaker
    assert (b.failure_threshold, b.failure_rate, b.window, b.minimum_calls,
            b.slow_call_seconds, b.open_seconds, b.max_open_seconds, b.half_open_calls,
            b.auth_open_seconds, b.billing_open_seconds) == (
        3, 0.5, 60.0, 10, 0.0, 30.0, 600.0, 1, 3600.0, 18000.0)
    p = omitted.probes
    assert (p.interval, p.jitter, p.timeout, p.kind, p.recovery_kind, p.chat_max_tokens) == (
        30.0, 3.0, 10.0, "models", "chat", 16)
    q = omitted.mqtt
    assert (q.enabled, q.host, q.port, q.socket, q.topic_prefix, q.username,
            q.queue_size) == (False, "localhost", 1883, "", "failoverd", "", 1000)
    assert omitted.hooks[0].timeout == 2.0


@pytest.mark.parametrize(("kind", "base_url"), [
    ("openai", "https://api.openai.com/v1"),
    ("anthropic", "https://api.anthropic.com"),
    ("gemini", "https://generativelanguage.googleapis.com"),
    ("ollama", "http://localhost:11434"),
])
def test_each_kind_defaults_to_its_vendors_base_url(kind: str, base_url: str) -> None:
    cfg = config.loads(f'[providers.p]\nkind = "{kind}"\n[models."p/m"]\nprovider = "p"\n',
                       env={})
    assert cfg.providers["p"].base_url == base_url


def test_a_secret_written_into_the_file_is_an_error_that_does_not_repeat_it() -> None:
    with pytest.raises(ConfigError) as info:
        config.loads("""
[mqtt]
password = "hunter2-mqtt"
[providers.a]
kind = "openai"
api_key = "sk-in-the-file"
[models."a/m"]
provider = "a"
""", env={})
    assert info.value.problems == ["mqtt.password: unknown key",
                                   "providers.a.api_key: unknown key"]
    assert "hunter2" not in str(info.value) and "sk-in-the-file" not in str(info.value)
