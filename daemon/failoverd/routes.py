"""Which models a request goes to, in which order: the Service's routing (a mixin, so the
request path calls it directly). router.py resolves a request's "model" into candidates over
the configuration; this applies what lives outside it: an operator's chain rotations, the
pools' turns (balance.py), a session's pin and sticky fallback, auto routing's decision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from failoverd import clients, complexity, requirements, router, selection, upstreamlimits
from failoverd.config import Config
from failoverd.dispatch import Outcome
from failoverd.errors import Attempt
from failoverd.failures import FailureReason
from failoverd.health import HealthRegistry
from failoverd.requirements import Requirements
from failoverd.runtime import Runtime
from failoverd.sessions import SessionStore


@dataclass(slots=True)
class Route:
    """Where one request goes: its candidates and what the router knows about it."""

    candidates: tuple[str, ...]
    needs: Requirements | None  # None: no model declares anything to check against
    header: str | None = None  # x-failoverd-route for model "auto"
    skipped: tuple[tuple[str, str], ...] = ()


class Routing:
    """The Service's routing methods; the state they read is the Service's."""

    runtime: Runtime
    health: HealthRegistry
    sessions: SessionStore
    _chain_offsets: dict[str, int]  # operator rotations (/v1/chains/X/next)

    def route(self, rt: Runtime, body: dict[str, Any], pin: bool, session: str | None, *,
              preview: bool = False) -> Route:
        """A chat request's candidates in the order they are tried. `preview` (/v1/select):
        what the request would get, taking no pool's turn."""
        cfg = rt.config
        requested = body.get("model") or ""
        # estimating tokens costs time on every request: only when some model could refuse
        needs = (requirements.infer(body) if rt.screening or requested == "auto" else None)
        # the request the upstreams' token budgets are measured against from now on in this
        # task (estimated only if a candidate's budget is known to be short)
        upstreamlimits.ask(body, needs.prompt_tokens if needs is not None else None)
        header = None
        skipped: tuple[tuple[str, str], ...] = ()
        back = 0  # models an operator's rotation moved to the back of the chain
        if requested == "auto":
            if not cfg.default_chain:
                raise router.no_chat_model()
            decision = complexity.classify(body)
            assert needs is not None
            chain, skip = selection.auto_chain(
                cfg, decision, lambda m: self.health.available(m)[0], needs)
            candidates = tuple(chain)
            header = complexity.route_header(decision)
            skipped = tuple(skip)
        else:
            candidates = rt.resolve(requested)
            if self._chain_offsets:
                name = "default" if requested in ("", "default") else requested
                if name in self._chain_offsets:
                    candidates = self.chains()[name]
                    back = self._chain_offsets[name] % max(1, len(candidates))
        if rt.balancer.active:
            # the models an operator's rotation moved to the back stay there, pool or not:
            # it was a manual failover away from them
            cut = len(candidates) - back
            candidates = rt.balancer.order(
                candidates[:cut], keep_first=_names_a_model(rt, requested),
                session=session or None, advance=not preview) + candidates[cut:]
        if session and not pin:
            candidates = self._session_order(rt, session, candidates)
        client = clients.CURRENT.get()
        if client is not None:  # [clients.<name>].models: the others skipped, as such
            candidates, narrowed = client.narrow(
                requested, candidates, names_model=_names_a_model(rt, requested),
                preview=preview)
            skipped += narrowed
        if pin:
            candidates = candidates[:1]
        if skipped:  # a model auto skipped but a session put first (or a chain holds) is tried
            skipped = tuple((m, why) for m, why in skipped if m not in candidates)
        return Route(candidates, needs, header, skipped)

    def embedding_route(self, rt: Runtime, requested: str, pin: bool, *,
                        preview: bool = False) -> tuple[str, ...]:
        """The candidates of an embeddings request (router.resolve_embeddings), an
        operator's rotation of its chain and the pools applied; no sessions, no auto routing."""
        return self._rotated(rt, rt.resolve_embeddings(requested), requested, pin,
                             preview=preview)

    def audio_route(self, rt: Runtime, requested: str, pin: bool, *,
                    preview: bool = False) -> tuple[str, ...]:
        """The candidates of an audio transcription or translation
        (router.resolve_transcription), an operator's rotation of its chain applied."""
        # "default" is every transcription model: the chat default chain's rotation is not its
        return self._rotated(rt, rt.resolve_transcription(requested), requested, pin,
                             default_is_chat=False, preview=preview)

    def speech_route(self, rt: Runtime, requested: str, pin: bool, *,
                     preview: bool = False) -> tuple[str, ...]:
        """The candidates of a text-to-speech request (router.resolve_speech)."""
        return self._rotated(rt, rt.resolve_speech(requested), requested, pin,
                             default_is_chat=False, preview=preview)

    def text_route(self, rt: Runtime, requested: str, pin: bool) -> tuple[str, ...]:
        """The candidates of a legacy text completion: a chat request's (router.resolve),
        an operator's rotation applied; no sessions, no auto routing (both read messages)."""
        return self._rotated(rt, rt.resolve(requested), requested, pin)

    def _rotated(self, rt: Runtime, candidates: tuple[str, ...], requested: str, pin: bool, *,
                 default_is_chat: bool = True, preview: bool = False) -> tuple[str, ...]:
        upstreamlimits.ask(None)  # no prompt to measure against a token budget
        name = "default" if requested in ("", "default") else requested
        if name == "default" and not default_is_chat:
            name = ""
        back = 0
        if name in self._chain_offsets:
            candidates = self.chains()[name]
            back = self._chain_offsets[name] % max(1, len(candidates))
        if rt.balancer.active:
            cut = len(candidates) - back  # the operator's rotation: as in route()
            candidates = rt.balancer.order(candidates[:cut],
                                           keep_first=_names_a_model(rt, requested),
                                           advance=not preview) + candidates[cut:]
        client = clients.CURRENT.get()
        if client is not None:
            candidates, _ = client.narrow(requested, candidates,
                                          names_model=_names_a_model(rt, requested),
                                          preview=preview)
        return candidates[:1] if pin else candidates

    def _session_order(self, rt: Runtime, key: str,
                       candidates: tuple[str, ...]) -> tuple[str, ...]:
        """A session's pinned preference first (a chain's or pool's places filled for the
        session, as for a request naming it); then its sticky fallback, but only for requests
        that start where the session failed over from (others are not redirected)."""
        cfg = rt.config
        state = self.sessions.get(key)
        if state is None:
            return candidates
        if state.preference is not None:
            candidates = _put_first(cfg, state.preference, candidates)
            group = cfg.chains.get(state.preference) or cfg.pools.get(state.preference)
            if rt.balancer.active and group is not None:
                pinned = len(group.models)
                # hashed by the session: no turn is taken
                candidates = (rt.balancer.order(candidates[:pinned], session=key)
                              + candidates[pinned:])
        sticky = state.sticky
        if sticky is not None and candidates and candidates[0] == sticky.from_model:
            candidates = _put_first(cfg, sticky.model, candidates)
        return candidates

    def chains(self) -> dict[str, tuple[str, ...]]:
        """Every chain (and "default") in its current order, operator rotations applied."""
        out = configured_chains(self.runtime.config)
        for name, offset in self._chain_offsets.items():
            models = out.get(name)
            if models:
                k = offset % len(models)
                out[name] = models[k:] + models[:k]
        return out

    def advance_chain(self, name: str) -> None:
        """Moves a chain's head to its next model (operator's manual failover)."""
        self._chain_offsets[name] = self._chain_offsets.get(name, 0) + 1

    def reset_chain(self, name: str) -> None:
        self._chain_offsets.pop(name, None)

    def note_skipped(self, outcome: Outcome, route: Route) -> None:
        """Models the router skipped (auto routing) count among the request's attempts."""
        if route.skipped:
            outcome.attempts.extend(
                Attempt(m, FailureReason.UNAVAILABLE if why == "unavailable"
                        else FailureReason.INCAPABLE, None, why)
                for m, why in route.skipped)


def configured_chains(cfg: Config) -> dict[str, tuple[str, ...]]:
    """Every chain (and "default") in its configured order."""
    out = {"default": cfg.default_chain}
    out.update((name, c.models) for name, c in cfg.chains.items())
    return out


def _names_a_model(rt: Runtime, requested: str) -> bool:
    """Whether a request's "model" named one model (by id or upstream name), which is tried
    first whatever pool it is in; not "default", "auto", a chain or a pool (by its name or
    an upstream name its models share)."""
    return (requested not in ("", "default", "auto") and requested not in rt.config.chains
            and requested not in rt.balancer.names)


def _put_first(cfg: Config, target: str, candidates: tuple[str, ...]) -> tuple[str, ...]:
    """`target` (a model, or a chain's or pool's models) first, the rest in their order."""
    if target in cfg.chains:
        first = cfg.chains[target].models
    elif target in cfg.pools:
        first = cfg.pools[target].models
    elif target in cfg.models:
        first = (target,)
    else:
        return candidates  # removed by a reload
    if not cfg.models[first[0]].chat:
        return candidates  # a reload made it a model of another kind: it answers no chat
    return (*first, *(c for c in candidates if c not in first))
