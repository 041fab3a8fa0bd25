"""Status and control endpoints."""

from __future__ import annotations

from aiohttp import web

from failoverd.api.replies import json_response
from failoverd.api.service import SERVICE


async def models(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    cfg = svc.runtime.config
    created = int(svc.started)
    data = [{
        "id": m.id, "object": "model", "created": created, "owned_by": m.provider,
        "capabilities": sorted(m.capabilities), "context_window": m.context_window,
        "max_output_tokens": m.max_output_tokens, "tier": m.tier,
        "cost": {"input": m.cost.input, "output": m.cost.output},
        "state": svc.model_state(m.id),
    } for m in cfg.models.values()]
    data.extend({"id": c.name, "object": "model", "created": created, "owned_by": "failoverd",
                 "chain": list(c.models)} for c in cfg.chains.values())
    return json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    cfg = svc.runtime.config
    states = {m: svc.model_state(m) for m in cfg.models}
    up = [m for m, s in states.items() if s in ("closed", "half_open")]
    if not up:
        return json_response({"status": "down", "models": states}, 503)
    status = "ok" if len(up) == len(states) else "degraded"
    return json_response({"status": status, "models": states})


async def metrics(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    return web.Response(text=svc.metrics.render(),
                        content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})
