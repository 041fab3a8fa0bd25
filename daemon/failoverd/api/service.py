"""The application key under which handlers find the daemon's Service."""

from __future__ import annotations

from aiohttp import web

from failoverd.service import Service

SERVICE = web.AppKey("service", Service)

__all__ = ["SERVICE", "Service"]
