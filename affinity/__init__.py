"""affinity: referral load balancing.

A stateless referral service tells each client which app server to use and
hands it a signed affinity token; the client then talks to that server
directly, and comes back only when the server fails or drains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("affinity")
"""Decorator for plugin hook implementations: ``@affinity.hookimpl``."""

if TYPE_CHECKING:
    from affinity.client import AsyncClient, Client
    from affinity.config import Config, load
    from affinity.errors import AffinityError, ConfigError, InvalidToken
    from affinity.models import HealthStatus, Load, Server
    from affinity.policy import Policy
    from affinity.referral.app import ReferralServer
    from affinity.server.base import AppServer, route

# Public names and where they live; imported on first use so that
# ``import affinity`` (done by every plugin) stays cheap.
_EXPORTS = {
    "AffinityError": "affinity.errors",
    "AppServer": "affinity.server.base",
    "AsyncClient": "affinity.client",
    "Client": "affinity.client",
    "Config": "affinity.config",
    "ConfigError": "affinity.errors",
    "HealthStatus": "affinity.models",
    "InvalidToken": "affinity.errors",
    "Load": "affinity.models",
    "Policy": "affinity.policy",
    "ReferralServer": "affinity.referral.app",
    "Server": "affinity.models",
    "load": "affinity.config",
    "route": "affinity.server.base",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'affinity' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = sorted(["__version__", "hookimpl", *_EXPORTS])
