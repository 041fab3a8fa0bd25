"""Configuration: TOML parsed once, at the edge, into frozen dataclasses.

Every problem is reported with its key path (``models."openai/gpt-5".tier: ...``); unknown keys
are errors. Secrets are read (credentials.py) from the environment, a file, or a systemd
credential and are kept out of every repr. The `[providers.*]` and `[models.*]` tables are
read by catalog.py; their types are re-exported here.
"""

from __future__ import annotations

import ipaddress
import os
import socket as _socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from failoverd import dropins
from failoverd.catalog import MAX_IN_FLIGHT as MAX_IN_FLIGHT
from failoverd.catalog import MAX_RETRIES as MAX_RETRIES
from failoverd.catalog import Capability as Capability
from failoverd.catalog import Cost as Cost
from failoverd.catalog import ModelConfig as ModelConfig
from failoverd.catalog import ModelKind as ModelKind
from failoverd.catalog import ProviderConfig as ProviderConfig
from failoverd.catalog import ProviderKind as ProviderKind
from failoverd.catalog import Tier as Tier
from failoverd.catalog import read_hedge_after, read_hedge_budget, read_model, read_provider
from failoverd.clientconfig import ClientConfig, read_clients
from failoverd.credentials import read_secret
from failoverd.errors import ConfigError
from failoverd.events import EVENT_TYPES
from failoverd.pools import PoolConfig, read_pools
from failoverd.tomlreader import Section

LogFormat = Literal["text", "json"]
WhenAllUnavailable = Literal["queue", "fail"]
ContextPolicy = Literal["skip", "truncate", "fail"]
ProbeKind = Literal["models", "chat", "none"]

_KIND_NOUN = {"embeddings": "an embedding model", "transcription": "a transcription model",
              "speech": "a speech model"}
_KIND_ADJ = {"embeddings": "embedding", "transcription": "transcription", "speech": "speech"}
_KIND_PATH = {"embeddings": "/v1/embeddings", "transcription": "/v1/audio/transcriptions",
              "speech": "/v1/audio/speech"}

DEFAULT_PATH = "/etc/failoverd/failoverd.toml"
RESERVED_MODEL_NAMES = ("default", "auto")

# Upper bounds of integer keys tighter than tomlreader.MAX_INTEGER (README, Configuration)
MAX_BODY_BYTES = 1024 ** 3  # a request body is read into memory whole
MAX_QUEUE_SIZE = 1_000_000  # MQTT events held in memory while the broker is away
MAX_PROBE_TOKENS = 4096  # chat probes run every interval for every model
MAX_UID = 2 ** 32 - 2  # uid_t; 2**32 - 1 is (uid_t) -1, "no user"


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    socket: str = "/run/failoverd/failoverd.sock"
    socket_mode: int = 0o660
    allowed_uids: tuple[int, ...] = ()
    tcp: str = ""
    tcp_token: str = field(default="", repr=False)
    state_dir: str = "/var/lib/failoverd"
    node: str = ""
    max_inflight: int = 1024
    max_body_bytes: int = 32 * 1024 * 1024
    shutdown_timeout: float = 30.0
    log_format: LogFormat = "text"
    # one log line per proxied request (logger failoverd.access); off: nothing formatted
    access_log: bool = False


@dataclass(frozen=True, slots=True)
class MqttConfig:
    enabled: bool = False
    host: str = "localhost"
    port: int = 1883
    socket: str = ""
    topic_prefix: str = "failoverd"
    username: str = ""
    password: str = field(default="", repr=False)
    queue_size: int = 1000
    # Home Assistant MQTT discovery: a binary sensor per model (and one for the daemon)
    discovery: bool = False
    discovery_prefix: str = "homeassistant"


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    primary: str = ""
    fallbacks: tuple[str, ...] | None = None  # None: the key was omitted
    fallbacks_from_models: bool = False
    deadline: float = 120.0
    retry_after_max: float = 2.0
    when_all_unavailable: WhenAllUnavailable = "queue"
    queue_timeout: float = 10.0
    context_policy: ContextPolicy = "skip"
    sticky_seconds: float = 300.0
    # seconds without a first byte before the next candidate starts alongside (0: off)
    hedge_after: float = 0.0
    # the largest share of a model's hedgeable attempts hedged over a minute (hedgebudget.py;
    # None: no budget), and the hedges a minute each model may start whatever the share
    hedge_budget: float | None = None
    hedge_budget_min: int = 3


@dataclass(frozen=True, slots=True)
class ChainConfig:
    name: str
    models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 3
    failure_rate: float = 0.5
    window: float = 60.0
    minimum_calls: int = 10
    slow_call_seconds: float = 0.0
    open_seconds: float = 30.0
    max_open_seconds: float = 600.0
    half_open_calls: int = 1
    auth_open_seconds: float = 3600.0
    billing_open_seconds: float = 18000.0


@dataclass(frozen=True, slots=True)
class ProbesConfig:
    interval: float = 30.0
    jitter: float = 3.0
    timeout: float = 10.0
    kind: ProbeKind = "models"
    recovery_kind: ProbeKind = "chat"
    chat_max_tokens: int = 16


@dataclass(frozen=True, slots=True)
class HookConfig:
    events: tuple[str, ...]
    exec: tuple[str, ...]
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class Config:
    daemon: DaemonConfig
    mqtt: MqttConfig
    providers: Mapping[str, ProviderConfig]
    models: Mapping[str, ModelConfig]  # file order
    routing: RoutingConfig
    chains: Mapping[str, ChainConfig]
    breaker: BreakerConfig
    probes: ProbesConfig
    hooks: tuple[HookConfig, ...]
    default_chain: tuple[str, ...]  # primary first, then the resolved fallbacks
    source: str = ""
    pools: Mapping[str, PoolConfig] = field(default_factory=dict)
    dropins: tuple[str, ...] = ()  # the drop-ins read after `source`, in order
    clients: Mapping[str, ClientConfig] = field(default_factory=dict)  # clients.py

    @property
    def node(self) -> str:
        return self.daemon.node or _socket.gethostname()

    def kind_of(self, name: str) -> ModelKind | None:
        """The kind of model `name` names (a model id, or a chain or pool by its first model;
        each is of one kind), None when it names none."""
        if name in self.chains:
            name = self.chains[name].models[0]
        elif name in self.pools:
            name = self.pools[name].models[0]
        model = self.models.get(name)
        return model.kind if model is not None else None

    def fallbacks_for(self, model_id: str) -> tuple[str, ...]:
        """A requested model first, then the default chain without it."""
        return (model_id, *(m for m in self.default_chain if m != model_id))


# --------------------------------------------------------------------------- parsing

def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _daemon(sec: Section, env: Mapping[str, str]) -> DaemonConfig:
    d = DaemonConfig()
    mode_text = sec.get("socket_mode", str, "0660")
    try:
        mode = int(mode_text, 8)
        if not 0 <= mode <= 0o777:
            raise ValueError
    except ValueError:
        sec.problem("socket_mode", f"must be an octal permission string like \"0660\", "
                    f"got {mode_text!r}")
        mode = d.socket_mode
    uids = sec.get("allowed_uids", list, [])
    if any(isinstance(u, bool) or not isinstance(u, int) or not 0 <= u <= MAX_UID
           for u in uids):
        sec.problem("allowed_uids", f"must be a list of user ids (integers from 0 to {MAX_UID})")
        uids = []
    tcp = sec.get("tcp", str, "")
    if tcp:
        host, _, port = tcp.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            sec.problem("tcp", f"must be host:port, got {tcp!r}")
            tcp = ""
        elif not _is_loopback(host.strip("[]")):
            sec.problem("tcp", "must be a loopback address (127.0.0.1, [::1] or localhost): "
                        f"the listener is for local clients only; got {tcp!r}")
            tcp = ""
    # tcp_token_file, or tcp_token_credential: under systemd the DynamicUser= account cannot
    # read a root-only file, so the token comes as a LoadCredential= like the API keys
    given = any(sec.data.get(k) for k in ("tcp_token_file", "tcp_token_credential"))
    token = read_secret(sec, "tcp_token", env, sources=("file", "credential"))
    if tcp and not given:
        # any local user can reach a loopback port: the TCP listener is never unauthenticated
        sec.problem("tcp_token_file", "is required when tcp is set")
    cfg = DaemonConfig(
        socket=sec.get("socket", str, d.socket),
        socket_mode=mode,
        allowed_uids=tuple(uids),
        tcp=tcp,
        tcp_token=token,
        state_dir=sec.get("state_dir", str, d.state_dir),
        node=sec.get("node", str, d.node),
        max_inflight=sec.integer("max_inflight", d.max_inflight, minimum=1,
                                 maximum=MAX_IN_FLIGHT),
        max_body_bytes=sec.integer("max_body_bytes", d.max_body_bytes, minimum=1024,
                                   maximum=MAX_BODY_BYTES),
        shutdown_timeout=sec.number("shutdown_timeout", d.shutdown_timeout),
        log_format=sec.choice("log_format", LogFormat, d.log_format),
        access_log=sec.get("access_log", bool, d.access_log),
    )
    if not cfg.socket:
        sec.problem("socket", "must not be empty")
    _socket_path(sec, "socket", cfg.socket)
    if "/" in cfg.node or "+" in cfg.node or "#" in cfg.node:
        sec.problem("node", "must not contain '/', '+' or '#' (it is an MQTT topic level)")
    sec.finish()
    return cfg


# What a Unix socket address holds (sun_path less its NUL), as listen.py checks at bind time.
SUN_PATH_MAX = 107


def _socket_path(sec: Section, key: str, path: str) -> None:
    """A Unix socket path too long to bind or connect to: --check-config passed it, and the
    start failed with exit 1, which systemd restarts every RestartSec= for ever."""
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        sec.problem(key, f"is {size} bytes long; a Unix socket path holds at most "
                    f"{SUN_PATH_MAX}")


def _mqtt(sec: Section, env: Mapping[str, str]) -> MqttConfig:
    d = MqttConfig()
    # password_file, or password_credential ($CREDENTIALS_DIRECTORY/<name>; see tcp_token)
    password = read_secret(sec, "password", env, sources=("file", "credential"),
                            one_line=False)
    port = sec.integer("port", d.port, minimum=1, maximum=65535)
    prefix = sec.get("topic_prefix", str, d.topic_prefix)
    _topic_prefix(sec, "topic_prefix", prefix)
    discovery_prefix = sec.get("discovery_prefix", str, d.discovery_prefix)
    _topic_prefix(sec, "discovery_prefix", discovery_prefix)
    _socket_path(sec, "socket", sec.get("socket", str, d.socket))
    cfg = MqttConfig(
        enabled=sec.get("enabled", bool, d.enabled),
        host=sec.get("host", str, d.host),
        port=port,
        socket=sec.get("socket", str, d.socket),
        topic_prefix=prefix,
        username=sec.get("username", str, d.username),
        password=password,
        queue_size=sec.integer("queue_size", d.queue_size, minimum=1, maximum=MAX_QUEUE_SIZE),
        discovery=sec.get("discovery", bool, d.discovery),
        discovery_prefix=discovery_prefix,
    )
    sec.finish()
    return cfg


def _topic_prefix(sec: Section, key: str, prefix: str) -> None:
    if not prefix or any(c in prefix for c in "+#"):
        sec.problem(key, "must be non-empty and contain no '+' or '#'")
    elif "" in prefix.split("/"):
        # "home/" published to home//<node>/status, which home/+/status never matches
        sec.problem(key, f"must not start or end with '/' nor hold '//' (an empty "
                    f"topic level), got {prefix!r}")


def _routing(sec: Section, models: Mapping[str, ModelConfig]) -> RoutingConfig:
    d = RoutingConfig()
    cfg = RoutingConfig(
        primary=sec.get("primary", str, ""),
        fallbacks=sec.strings("fallbacks", None),
        fallbacks_from_models=sec.get("fallbacks_from_models", bool, False),
        deadline=sec.number("deadline", d.deadline, positive=True),
        retry_after_max=sec.number("retry_after_max", d.retry_after_max),
        when_all_unavailable=sec.choice("when_all_unavailable", WhenAllUnavailable,
                                        d.when_all_unavailable),
        queue_timeout=sec.number("queue_timeout", d.queue_timeout),
        context_policy=sec.choice("context_policy", ContextPolicy, d.context_policy),
        sticky_seconds=sec.number("sticky_seconds", d.sticky_seconds),
        hedge_after=read_hedge_after(sec),
        hedge_budget=read_hedge_budget(sec),
        hedge_budget_min=sec.integer("hedge_budget_min", d.hedge_budget_min,
                                     maximum=MAX_IN_FLIGHT),
    )
    if cfg.primary and models and cfg.primary not in models:
        sec.problem("primary", f"no model {cfg.primary!r} in [models]")
    elif cfg.primary in models and not models[cfg.primary].chat:
        kind = models[cfg.primary].kind
        sec.problem("primary", f"{cfg.primary!r} is {_KIND_NOUN[kind]} (served on POST "
                    f"{_KIND_PATH[kind]} by its id or a chain): the default chain is for chat")
    for i, fb in enumerate(cfg.fallbacks or ()):
        if fb not in models:
            sec.problems.append(f"{sec.key_path('fallbacks')}[{i}]: no model {fb!r} in [models]")
        elif not models[fb].chat:
            sec.problems.append(f"{sec.key_path('fallbacks')}[{i}]: {fb!r} is "
                                f"{_KIND_NOUN[models[fb].kind]}: the default chain is for chat")
    sec.finish()
    return cfg


def default_chain(routing: RoutingConfig, models: Mapping[str, ModelConfig]) -> tuple[str, ...]:
    """primary + fallbacks exactly as DESIGN.md says.

    Explicit fallbacks win; ``fallbacks = []`` disables; omitted fallbacks with
    fallbacks_from_models take every model in file order; the primary is excluded from its
    own fallbacks and duplicates are removed (first occurrence kept). Embedding and
    transcription models are never part of it (the first chat model is the primary when none
    is named).
    """
    primary = routing.primary or next((m.id for m in models.values() if m.chat), "")
    if not primary:
        return ()
    if routing.fallbacks is not None:
        rest: tuple[str, ...] = routing.fallbacks
    elif routing.fallbacks_from_models:
        rest = tuple(m.id for m in models.values() if m.chat)
    else:
        rest = ()
    chain = [primary]
    for m in rest:
        if m not in chain:
            chain.append(m)
    return tuple(chain)


def _breaker(sec: Section) -> BreakerConfig:
    d = BreakerConfig()
    rate = sec.number("failure_rate", d.failure_rate)
    if not 0 < rate <= 1:
        sec.problem("failure_rate", f"must be in (0, 1], got {rate}")
        rate = d.failure_rate
    cfg = BreakerConfig(
        failure_threshold=sec.integer("failure_threshold", d.failure_threshold, minimum=1),
        failure_rate=rate,
        window=sec.number("window", d.window, positive=True),
        minimum_calls=sec.integer("minimum_calls", d.minimum_calls, minimum=1),
        slow_call_seconds=sec.number("slow_call_seconds", d.slow_call_seconds),
        open_seconds=sec.number("open_seconds", d.open_seconds, positive=True),
        max_open_seconds=sec.number("max_open_seconds", d.max_open_seconds, positive=True),
        half_open_calls=sec.integer("half_open_calls", d.half_open_calls, minimum=1,
                                    maximum=MAX_IN_FLIGHT),
        auth_open_seconds=sec.number("auth_open_seconds", d.auth_open_seconds),
        billing_open_seconds=sec.number("billing_open_seconds", d.billing_open_seconds),
    )
    if cfg.max_open_seconds < cfg.open_seconds:
        sec.problem("max_open_seconds", f"must be at least open_seconds ({cfg.open_seconds:g})")
    sec.finish()
    return cfg


def _probes(sec: Section) -> ProbesConfig:
    d = ProbesConfig()
    cfg = ProbesConfig(
        interval=sec.number("interval", d.interval, positive=True),
        jitter=sec.number("jitter", d.jitter),
        timeout=sec.number("timeout", d.timeout, positive=True),
        kind=sec.choice("kind", ProbeKind, d.kind),
        recovery_kind=sec.choice("recovery_kind", ProbeKind, d.recovery_kind),
        chat_max_tokens=sec.integer("chat_max_tokens", d.chat_max_tokens, minimum=1,
                                    maximum=MAX_PROBE_TOKENS),
    )
    sec.finish()
    return cfg


def _required(sec: Section, key: str, what: str) -> None:
    """A list key that is missing or empty; one of the wrong type was already reported (a
    second line saying it "is required" sent the operator looking for a key that is there)."""
    if not sec.has(key):
        sec.problem(key, f"is required: {what}")
    elif sec.data[key] == []:
        sec.problem(key, "must not be empty")


def _hooks(value: Any, problems: list[str]) -> tuple[HookConfig, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append("hooks: must be an array of tables ([[hooks]])")
        return ()
    hooks = []
    for i, item in enumerate(value):
        sec = Section(item, f"hooks[{i}]", problems)
        events = sec.strings("events", None)
        argv = sec.strings("exec", None)
        if not events:
            _required(sec, "events", "a non-empty list of event types")
        else:
            categories = {t.split(":")[0] for t in EVENT_TYPES}
            for j, pattern in enumerate(events):
                kind, _, action = pattern.partition(":")
                if pattern != "*" and pattern not in EVENT_TYPES and not (
                        action == "*" and kind in categories):
                    problems.append(f"{sec.key_path('events')}[{j}]: unknown event type "
                                    f"{pattern!r}; known: {', '.join(EVENT_TYPES)}, '*', "
                                    "'<category>:*'")
        if not argv:
            _required(sec, "exec", "a non-empty argv list")
        else:
            # either failed every run at start, at every event, without a word at load
            if not argv[0].strip():
                problems.append(f"{sec.key_path('exec')}[0]: the program must not be empty")
            for j, arg in enumerate(argv):
                if "\0" in arg:
                    problems.append(f"{sec.key_path('exec')}[{j}]: must not contain a NUL")
        timeout = sec.number("timeout", 2.0, positive=True)
        sec.finish()
        if events and argv:
            hooks.append(HookConfig(events=events, exec=argv, timeout=timeout))
    return tuple(hooks)


_TOP_LEVEL = ("daemon", "mqtt", "providers", "models", "routing", "chains", "pools",
              "breaker", "probes", "hooks", "clients")


def parse(data: Mapping[str, Any], *, env: Mapping[str, str] | None = None,
          source: str = "") -> Config:
    """Validates a decoded TOML document; raises ConfigError listing every problem."""
    env = os.environ if env is None else env
    problems: list[str] = []
    top = Section(dict(data), "", problems)
    daemon = _daemon(top.table("daemon"), env)
    mqtt = _mqtt(top.table("mqtt"), env)

    providers: dict[str, ProviderConfig] = {}
    psec = top.table("providers")
    for name in psec.data:
        psec.seen.add(name)
        psec.plain_name(name, "a provider name")
        p = read_provider(name, psec.table(name), env)
        if p is not None:
            providers[name] = p

    models: dict[str, ModelConfig] = {}
    msec = top.table("models")
    for model_id in msec.data:
        msec.seen.add(model_id)
        if model_id in RESERVED_MODEL_NAMES:
            msec.problem(model_id, f"{model_id!r} is reserved and cannot name a model")
            continue
        msec.plain_name(model_id, "a model id")
        models[model_id] = read_model(model_id, msec.table(model_id), psec.data)
    if not models:
        problems.append("models: at least one [models.\"<id>\"] entry is required")
    priced = {m.provider for m in models.values() if m.priced}
    for name, p in providers.items():
        for key in ("max_cost_per_day", "max_cost_per_month"):
            if getattr(p, key) and name not in priced:
                psec.table(name).problem(key, "needs a model of this provider with prices "
                                         "(cost.input, cost.output): without them its models "
                                         "spend nothing and the cap would never apply")

    routing = _routing(top.table("routing"), models)

    chains: dict[str, ChainConfig] = {}
    csec = top.table("chains")
    for name in csec.data:
        csec.seen.add(name)
        csec.plain_name(name, "a chain name")
        sec = csec.table(name)
        members = sec.strings("models", None)
        if not members:
            _required(sec, "models", "a non-empty list of model ids")
        else:
            for i, m in enumerate(members):
                if m not in models:
                    problems.append(f"{sec.key_path('models')}[{i}]: no model {m!r} in [models]")
            chains[name] = ChainConfig(name, tuple(dict.fromkeys(members)))
            kinds: dict[str, list[str]] = {}
            for m in members:
                if m in models:
                    kinds.setdefault(models[m].kind, []).append(m)
            if len(kinds) > 1:
                # an embedding request must never fall over to a chat model, nor a chat
                # request to an embedding (or transcription) model
                special = [k for k in kinds if k != "chat"]
                if len(special) == 1:
                    sec.problem("models", f"mixes {_KIND_ADJ[special[0]]} models "
                                f"({', '.join(kinds[special[0]])}) with chat models: a chain "
                                "is one or the other")
                else:
                    sec.problem("models", f"mixes models of kinds {', '.join(kinds)}: a chain "
                                "is of one kind")
        if name in models or name in RESERVED_MODEL_NAMES:
            sec.problem("", "a chain cannot share its name with a model or 'default'/'auto'")
        sec.finish()

    pools = read_pools(top, models, chains)
    clients = read_clients(top, env, models, [*chains, *pools], daemon.allowed_uids,
                           daemon.tcp_token)
    breaker = _breaker(top.table("breaker"))
    probes = _probes(top.table("probes"))
    top.seen.add("hooks")
    hooks = _hooks(data.get("hooks"), problems)
    top.finish()
    if problems:
        raise ConfigError(problems)
    return Config(
        daemon=daemon, mqtt=mqtt, providers=providers, models=models, routing=routing,
        chains=chains, breaker=breaker, probes=probes, hooks=hooks,
        default_chain=default_chain(routing, models), source=source, pools=pools,
        clients=clients,
    )


def load(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Reads and validates a TOML file and its drop-ins (`<path>.d/*.toml`, dropins.py)."""
    merged = dropins.read(path)
    try:
        cfg = parse(merged.data, env=env, source=merged.main)
    except ConfigError as exc:
        raise ConfigError(merged.name_files(exc.problems)) from exc
    return replace(cfg, dropins=tuple(merged.dropins))


def loads(text: str, *, env: Mapping[str, str] | None = None) -> Config:
    """Validates TOML text (tests and embedded defaults)."""
    return parse(dropins.parse_toml(text, ""), env=env, source="<string>")
