"""affinity-ratelimit: per-client GCRA rate limits on the referral and app servers.

The plugin is :data:`STATE`, the one :class:`RateLimiter` of the process
(entry point ``ratelimit = "affinity_ratelimit:STATE"`` in the group
``affinity``): a :class:`~affinity.plugin.shared_settings.SettingsPlugin`
whose methods are the hook implementations. The plugin manager loads an entry
point once per process (each Sanic worker is a process, with its own
buckets), ``affinity_configure`` rebuilds the state from scratch, and the
policy the request path reads is one immutable object. Tests and embedders
that want their own instance (or a fake clock) create a :class:`RateLimiter`
and register it.
"""

from __future__ import annotations

from affinity.web.paths import normalise_path, path_variants
from affinity_ratelimit.gcra import Cell, Decision, GcraTable
from affinity_ratelimit.limiter import RateLimiter
from affinity_ratelimit.options import NAME, LimitOptions, RateLimitOptions
from affinity_ratelimit.policy import Limit, Policy

__all__ = [
    "NAME",
    "STATE",
    "Cell",
    "Decision",
    "GcraTable",
    "Limit",
    "LimitOptions",
    "Policy",
    "RateLimitOptions",
    "RateLimiter",
    "normalise_path",
    "path_variants",
]

STATE = RateLimiter()
"""The limiter of this process; read ``STATE.counters()`` and ``STATE.version`` for metrics."""
