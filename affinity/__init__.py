"""affinity: referral load balancing.

A stateless referral service tells each client which app server to use and
hands it a signed affinity token; the client then talks to that server
directly, and comes back only when the server fails or drains.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("affinity")
"""Decorator for plugin hook implementations: ``@affinity.hookimpl``."""

__all__ = ["__version__", "hookimpl"]
