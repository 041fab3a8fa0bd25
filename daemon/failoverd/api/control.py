"""Status and control endpoints: models, health, status, breaker control, chains, select,
sessions, reload, metrics."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
from aiohttp import web

from failoverd import __version__, complexity, requirements, selection, upstreamlimits
from failoverd.api.access import client_of
from failoverd.api.body import read_json
from failoverd.api.fronts import OPENAI
from failoverd.api.proxy import pinned
from failoverd.api.reloads import ReloadRecord
from failoverd.api.replies import json_response, openai_error, request_error
from failoverd.api.service import SERVICE
from failoverd.errors import RequestError
from failoverd.events import utf8_safe
from failoverd.metrics import TOKEN_KINDS
from failoverd.service import Route, Service
from failoverd.sessions import normalize_key
from failoverd.tomlreader import MAX_NUMBER

RELOADS = web.AppKey("reloads", ReloadRecord)

_UP = ("closed", "half_open")


def _model_entries(svc: Service) -> list[dict[str, Any]]:
    """Every model, chain and pool as an OpenAI model object, with failoverd's fields."""
    cfg = svc.runtime.config
    created = int(svc.started)
    data: list[dict[str, Any]] = [{
        "id": m.id, "object": "model", "created": created, "owned_by": m.provider,
        "capabilities": sorted(m.capabilities), "context_window": m.context_window,
        "max_output_tokens": m.max_output_tokens, "tier": m.tier,
        "cost": {k: v for k, v in (("input", m.cost.input), ("output", m.cost.output),
                                   ("cache_read", m.cost.cache_read),
                                   ("cache_write", m.cost.cache_write)) if v is not None},
        "state": svc.model_state(m.id),
    } for m in cfg.models.values()]
    data.extend({"id": c.name, "object": "model", "created": created, "owned_by": "failoverd",
                 "chain": list(c.models)} for c in cfg.chains.values())
    data.extend({"id": p.name, "object": "model", "created": created, "owned_by": "failoverd",
                 "pool": list(p.models), "strategy": p.strategy} for p in cfg.pools.values())
    return data


def _visible(request: web.Request) -> tuple[list[dict[str, Any]], str | None]:
    """`_model_entries` as the caller may see them, and the caller's [clients.<name>]: one
    with `models` sees those it may use (LiteLLM's /v1/models with a key lists the key's
    models)."""
    svc = request.app[SERVICE]
    data = _model_entries(svc)
    client = client_of(request, svc)
    if client is None:
        return data, None
    return [e for e in data if client.may_use(e["id"])], client.name


def _anthropic(request: web.Request) -> bool:
    """Whether the caller is an Anthropic client (its SDKs always send anthropic-version),
    which reads Anthropic's model objects."""
    return "anthropic-version" in request.headers


def _as_anthropic(entry: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's model object (type, id, display_name, created_at, lifecycle, the
    windows), failoverd's own fields under ``failoverd``: Anthropic's ``capabilities`` is an
    object of its own (batch, citations, thinking, ...) that failoverd does not know."""
    created = dt.datetime.fromtimestamp(entry["created"], dt.UTC)
    own = {k: v for k, v in entry.items() if k not in ("id", "object", "created")}
    return {"type": "model", "id": entry["id"], "display_name": entry["id"],
            "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"), "lifecycle": "active",
            "max_input_tokens": entry.get("context_window"),
            "max_tokens": entry.get("max_output_tokens"), "failoverd": own}


async def models(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    data, _ = _visible(request)
    if _anthropic(request):
        # Anthropic clients only chat: models of the other kinds (and their chains) are left
        # out
        cfg = svc.runtime.config
        listed = [_as_anthropic(e) for e in data if cfg.kind_of(e["id"]) == "chat"]
        return json_response({"data": listed, "has_more": False,
                              "first_id": listed[0]["id"] if listed else None,
                              "last_id": listed[-1]["id"] if listed else None})
    return json_response({"object": "list", "data": data})


async def model(request: web.Request) -> web.Response:
    """GET /v1/models/{id}: one model, chain or pool (the SDKs' models.retrieve)."""
    model_id = request.match_info["id"]
    visible, client = _visible(request)
    entry = next((e for e in visible if e["id"] == model_id), None)
    anthropic = _anthropic(request)
    if entry is None:
        message = f"no model, chain or pool {model_id!r} is configured"
        if client is not None:
            message += f" among client {client!r}'s (clients.{client}.models)"
        if anthropic:
            return json_response({"type": "error", "error": {
                "type": "not_found_error", "message": message}}, 404)
        return openai_error(404, message, "invalid_request_error", "model_not_found", "model")
    return json_response(_as_anthropic(entry) if anthropic else entry)


def _summary(states: list[str]) -> str:
    up = sum(1 for s in states if s in _UP)
    return "down" if up == 0 else "ok" if up == len(states) else "degraded"


def health_summary(svc: Service) -> tuple[str, dict[str, str]]:
    states = {m: svc.model_state(m) for m in svc.runtime.config.models}
    return _summary(list(states.values())), states


async def health(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    status, states = health_summary(svc)
    body: dict[str, Any] = {"status": status, "models": states}
    models = svc.runtime.config.models
    kinds: dict[str, list[str]] = {}
    for m, state in states.items():
        kinds.setdefault(models[m].kind, []).append(state)
    if len(kinds) > 1:
        # each kind apart, for a monitor that watches one of them: all chat models out with
        # an embedding model up is "degraded" overall, "down" for chat
        body.update((kind, _summary(kind_states)) for kind, kind_states in kinds.items())
    return json_response(body, 503 if status == "down" else 200)


async def status(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    cfg = svc.runtime.config
    overall, _ = health_summary(svc)
    detail = svc.health.status()
    metrics = svc.metrics
    for model_id, entry in detail["models"].items():
        # what the model's answers used and cost since the start (as /metrics counts them);
        # cost null for a model without one
        entry["tokens"] = {kind: metrics.tokens.get((model_id, kind), 0)
                           for kind in TOKEN_KINDS}
        entry["cost_usd"] = (round(metrics.cost.get(model_id, 0.0), 9)
                             if model_id in metrics.prices else None)
        hedging = svc.hedge_budgets.status(model_id)
        if hedging is not None:  # its hedge budget's use over the last minute
            entry["hedge_budget"] = hedging
    chains = {name: {"models": list(models), "head": models[0] if models else None}
              for name, models in svc.chains().items()}
    rt = svc.runtime
    # each pool's models with their weights and calls under way, and the one whose turn is
    # next (for a request without a session; the preview takes no turn)
    pools = {name: {"strategy": p.strategy,
                    "models": [{"model": m, "weight": w, "inflight": svc.health.inflight(m)}
                               for m, w in zip(p.models, p.weights, strict=True)],
                    "next": rt.balancer.order(p.models, advance=False)[0]}
             for name, p in cfg.pools.items()}
    body: dict[str, Any] = {
        "version": __version__, "node": cfg.node, "health": overall,
        "time": round(svc.clock.time(), 3),  # "now" for the epoch times below
        "uptime": round(svc.clock.time() - svc.started, 3), "inflight": svc.inflight,
        "config": utf8_safe(cfg.source),
        # the drop-ins (<config>.d/*.toml) read after it, in order, as of the last good load
        "config_dropins": [utf8_safe(f) for f in cfg.dropins],
        "last_reload": request.app[RELOADS].status(),
        "models": detail["models"],
        "providers": detail["providers"],
        "budgets": detail["budgets"],
        # [clients.<name>]: who each is, its limits and its use now (clients.py)
        "clients": svc.clients.status(),
        "chains": chains, "pools": pools, "events": svc.bus.stats(), "sessions": len(svc.sessions),
        "hooks": {"runs": svc.hooks.runs, "failures": svc.hooks.failures,
                  "dropped": svc.hooks.dropped},
        "failovers_last_minute": svc.recent_failovers(),
        "usage": svc.metrics.totals(),
        "mqtt": svc.mqtt.stats().as_dict() if svc.mqtt is not None else {"enabled": False},
    }
    return web.Response(body=orjson.dumps(body, default=str), content_type="application/json")


def _model_id(request: web.Request, svc: Service) -> str:
    model_id = request.match_info["id"]
    if model_id not in svc.runtime.config.models:
        raise RequestError(f"no model {model_id!r}", status=404, param="id",
                           code="model_not_found")
    return model_id


async def _optional_json(request: web.Request, svc: Service) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    return await read_json(request, svc.runtime.config.daemon.max_body_bytes)


async def model_action(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    try:
        action = request.match_info["action"]
        # the body first: the model is looked up after the last await before acting on it
        body = {} if action == "reset" else await _optional_json(request, svc)
        model_id = _model_id(request, svc)
        if action == "reset":
            svc.health.reset(model_id)
        elif action == "open":
            seconds = body.get("seconds")
            if seconds is not None and (isinstance(seconds, bool)
                                        or not isinstance(seconds, int | float)
                                        or not 0 < seconds <= MAX_NUMBER):
                raise RequestError(f"'seconds' must be a positive number up to {MAX_NUMBER:g} "
                                   "(omit it: open until reset)", param="seconds")
            svc.health.force_open(model_id, None if seconds is None else float(seconds))
        else:
            if svc.prober is None:
                raise RequestError("the prober is not running", status=503)
            kind = body.get("kind")
            if kind is not None and kind not in ("models", "chat"):
                raise RequestError("'kind' must be \"models\" or \"chat\"", param="kind")
            ok = await svc.prober.probe(model_id, kind, operator=True)
            entry = _model_status(svc, model_id)  # a reload may have removed it meanwhile
            return json_response({"model": model_id, "ok": ok, **entry},
                                 200 if ok else 502)
        entry = _model_status(svc, model_id)
    except RequestError as exc:
        return request_error(exc)
    return json_response({"model": model_id, **entry})


def _model_status(svc: Service, model_id: str) -> dict[str, Any]:
    entry: dict[str, Any] | None = svc.health.status()["models"].get(model_id)
    if entry is None:
        raise RequestError(f"no model {model_id!r} (a reload removed it)", status=404,
                           param="id", code="model_not_found")
    return entry


async def chain_action(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    name = request.match_info["name"]
    chains = svc.chains()
    if name not in chains:
        return openai_error(404, f"no chain {name!r}; known: {', '.join(chains)}",
                            "invalid_request_error", "chain_not_found", "name")
    if not chains[name]:
        return openai_error(409, f"chain {name!r} is empty (no chat model is configured): "
                            "nothing to rotate", "invalid_request_error", "chain_empty", "name")
    if request.match_info["action"] == "next":
        svc.advance_chain(name)
    else:
        svc.reset_chain(name)
    models = svc.chains()[name]
    return json_response({"chain": name, "head": models[0], "models": list(models)})


async def select(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    rt = svc.runtime
    try:
        body = await _optional_json(request, svc)
        if "messages" in body:
            needs = requirements.infer(body)
        else:
            raw_needs = body.get("needs", [])
            tokens = body.get("tokens", 0)
            if not isinstance(raw_needs, list) or not all(isinstance(n, str) for n in raw_needs):
                raise RequestError("'needs' must be a list of capability names", param="needs")
            if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
                raise RequestError("'tokens' must be a non-negative integer", param="tokens")
            try:
                needs = requirements.from_spec(raw_needs, tokens)
            except ValueError as exc:
                raise RequestError(str(exc), param="needs") from None
        model = body.get("model") or "default"  # as for a request without one
        if not isinstance(model, str):
            raise RequestError("'model' must be a string", param="model")
        session = body.get("session")
        if session is not None and not isinstance(session, str):
            raise RequestError("'session' must be a string", param="session")
        # the session and pin the same request would have (see api/proxy.py)
        session = session or request.headers.get("x-failoverd-session") or (
            OPENAI.session_key(body) if "messages" in body else None)
        pin = pinned(request)
        kind = rt.config.kind_of(model) or "chat"  # a name neither is resolved as chat's
        if kind != "chat":
            # an embedding, transcription or speech model or chain: its endpoint's route,
            # with no requirements to check (nor sessions, which are chat's)
            routes = {"embeddings": svc.embedding_route, "transcription": svc.audio_route,
                      "speech": svc.speech_route}
            route = Route(routes[kind](rt, model, pin, preview=True), None)
        else:
            route = svc.route(rt, {**body, "model": model,
                                   "messages": body.get("messages", [])},
                              pin, normalize_key(session) if session else None, preview=True)
            # the upstreams' token budgets measured against these requirements' prompt
            upstreamlimits.ask(body, needs.prompt_tokens)
    except RequestError as exc:
        return request_error(exc)
    truncating = rt.config.routing.context_policy == "truncate" and "messages" in body
    candidates: list[dict[str, Any]] = []
    for model_id, skipped in route.skipped:
        if model_id in route.candidates:
            continue  # auto fell back to the default chain, which lists it below
        candidates.append({"model": model_id, "eligible": False, "reason": skipped,
                           "state": svc.model_state(model_id)})
    for model_id in route.candidates:
        m = rt.config.models[model_id]
        why = selection.check(m, needs)
        if why is not None and truncating and why == selection.context_reason(m, needs):
            # as the request would be: served with its oldest turns dropped, if that fits
            if selection.truncate(body, m.context_window,
                                  selection.output_reservation(m, needs)) is not None:
                why = None
        available, blocked = svc.health.available(model_id)
        if why is None and not available:
            why = blocked or "unavailable"
        candidates.append({"model": model_id, "eligible": why is None, "reason": why,
                           "state": svc.model_state(model_id)})
    decision = complexity.classify(body) if model == "auto" else None
    return json_response({
        "model": model, "route": route.header, "requirements": needs.as_dict(),
        "decision": decision.as_dict() if decision is not None else None,
        "candidates": candidates,
    })


async def session_get(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    key = request.match_info["key"]
    data = svc.sessions.as_dict(key)
    if data is None:
        return openai_error(404, f"no session {key!r}", "invalid_request_error",
                            "session_not_found")
    return json_response(data)


async def session_set(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    key = request.match_info["key"]
    try:
        body = await read_json(request, svc.runtime.config.daemon.max_body_bytes)
        if "model" in body and "chain" in body:
            # one was silently dropped: {"model": null, "chain": "fast"} cleared the preference
            raise RequestError("give 'model' or 'chain', not both", param="model")
        target = body.get("model", body.get("chain"))
        cfg = svc.runtime.config
        if target is not None and (not isinstance(target, str) or (
                target not in cfg.models and target not in cfg.chains
                and target not in cfg.pools)):
            raise RequestError(f"'model' must name a configured model, chain or pool, got "
                               f"{target!r}", param="model")
        if target is not None and cfg.kind_of(target) != "chat":
            raise RequestError(f"{target!r} is no chat model, chain or pool (an embedding, "
                               "transcription or speech one): a session's model serves its "
                               "chat requests", param="model", code="model_not_chat")
    except RequestError as exc:
        return request_error(exc)
    svc.sessions.set_preference(key, target)
    return json_response(svc.sessions.as_dict(key))


async def session_delete(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    key = request.match_info["key"]
    if not svc.sessions.delete(key):
        return openai_error(404, f"no session {key!r}", "invalid_request_error",
                            "session_not_found")
    return json_response({"deleted": key})


async def reload(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    if svc.reloader is None:
        return openai_error(503, "reload is not available (no config file)", "unavailable")
    ok, problems = svc.reloader()
    if not ok:
        # the file that was re-read and refused; the one serving is still that path's
        # previous content
        return json_response({"ok": False, "config": utf8_safe(svc.runtime.config.source),
                              "problems": problems}, 422)
    cfg = svc.runtime.config
    return json_response({"ok": True, "config": utf8_safe(cfg.source),
                          "config_dropins": [utf8_safe(f) for f in cfg.dropins]})


async def metrics(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    return web.Response(text=svc.metrics.render(),
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})
