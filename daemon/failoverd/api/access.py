"""Who may talk to the daemon: SO_PEERCRED uids on the Unix socket, a bearer token on TCP."""

from __future__ import annotations

import asyncio
import hmac
import socket
from collections.abc import Mapping
from typing import cast

from aiohttp import web

from failoverd import listen
from failoverd.api.fronts import ANTHROPIC, OPENAI
from failoverd.api.service import Service
from failoverd.clientconfig import offered_tokens
from failoverd.clients import Client
from failoverd.listen import peer_uid


def _raw(value: str) -> bytes:
    """A header value as the client sent it: bytes that are not UTF-8 arrive as surrogate
    escapes, which a plain encode() refuses (a 500 instead of the 401)."""
    return value.encode("utf-8", "surrogateescape")


def _has_token(headers: Mapping[str, str], expected: bytes) -> bool:
    """Whether the request carries the token (clients.offered_tokens: a bearer or x-api-key),
    compared in constant time."""
    return any(hmac.compare_digest(_raw(token), expected) for token in offered_tokens(headers))


# the control API's actions that change what every caller gets (a breaker opened, a chain
# turned, the config reloaded): not for a [clients.<name>] kept to some models
_OPERATOR_ONLY = ("/v1/reload", "/v1/models/", "/v1/chains/")
# the request's [clients.<name>] once worked out (client_of), _NO_CLIENT for none
_CLIENT = web.RequestKey("failoverd_client", object)
_NO_CLIENT = object()


def client_of(request: web.BaseRequest, service: Service) -> Client | None:
    """The [clients.<name>] a request comes from (clients.Clients.identify), worked out once
    per request (the access guard, the handler and the count share it: one SO_PEERCRED read,
    one token digest); None at once when no client is configured."""
    clients = service.clients
    if not clients.active:
        return None
    found = request.get(_CLIENT)
    if found is None:
        found = clients.identify(request.transport, request.headers) or _NO_CLIENT
        request[_CLIENT] = found
    return None if found is _NO_CLIENT else cast(Client, found)


def refusal(request: web.BaseRequest, service: Service) -> web.Response | None:
    """The answer to a peer that may not talk to the daemon, or None to let it through."""
    refused = refusal_of(request.transport, request.headers, service, request.path)
    if (refused is None and service.clients.active and request.method == "POST"
            and request.path.startswith(_OPERATOR_ONLY)):
        client = client_of(request, service)
        if client is not None and client.cfg.models is not None:
            return OPENAI.error(403, "permission_denied",
                                f"client {client.name!r} is kept to clients.{client.name}."
                                f"models: POST {request.path} is the operator's",
                                "permission_denied", client=client.name)
    return refused


def refusal_of(transport: asyncio.BaseTransport | None, headers: Mapping[str, str],
               service: Service, path: str) -> web.Response | None:
    """`refusal` for a request known by its connection, header fields and path (whose API
    shape the refusal takes: Anthropic's on /v1/messages, else OpenAI's)."""
    front = ANTHROPIC if path.startswith("/v1/messages") else OPENAI
    daemon = service.runtime.config.daemon
    family = listen.family(transport)
    if family == socket.AF_UNIX:
        if daemon.allowed_uids:
            uid = peer_uid(transport)
            if uid is None or uid not in daemon.allowed_uids:
                return front.error(403, "permission_denied",
                                   f"uid {uid} is not in daemon.allowed_uids",
                                   "permission_denied")
    elif family in (socket.AF_INET, socket.AF_INET6) and service.clients.by_token(headers) is None:
        # never unauthenticated, also on a TCP socket passed by systemd with no daemon.tcp
        # set (a [clients.<name>]'s own token is that client's way in)
        if not daemon.tcp_token:
            return front.error(401, "authentication_error",
                               "TCP clients need a token: set daemon.tcp_token_file",
                               "invalid_api_key")
        if not _has_token(headers, daemon.tcp_token.encode()):
            return front.error(401, "authentication_error",
                               "the TCP listener needs 'Authorization: Bearer <token>' (or "
                               "'x-api-key: <token>', as Anthropic clients send their key) "
                               "with the token of daemon.tcp_token_file", "invalid_api_key")
    return None
