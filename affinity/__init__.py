"""affinity: referral load balancing.

A stateless referral service tells each client which app server to use and
hands it a signed affinity token; the client then talks to that server
directly, and comes back only when the server fails or drains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from affinity.plugin import hookimpl as hookimpl
from affinity.version import __version__ as __version__

if TYPE_CHECKING:
    # ``X as X`` marks a re-export, so ``from affinity import Client`` type-checks under
    # mypy --strict (no implicit re-export) in users' code too.
    from affinity.client import AsyncClient as AsyncClient
    from affinity.client import Client as Client
    from affinity.config import Config as Config
    from affinity.config import load as load
    from affinity.errors import AffinityError as AffinityError
    from affinity.errors import ConfigError as ConfigError
    from affinity.errors import InvalidToken as InvalidToken
    from affinity.models import HealthStatus as HealthStatus
    from affinity.models import Load as Load
    from affinity.models import Server as Server
    from affinity.plugin.policy import Policy as Policy
    from affinity.referral.app import ReferralServer as ReferralServer
    from affinity.server.base import AppServer as AppServer
    from affinity.server.base import route as route

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
    "Policy": "affinity.plugin.policy",
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
