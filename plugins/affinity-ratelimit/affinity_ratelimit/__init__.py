"""affinity-ratelimit: per-client GCRA rate limits on the referral and app servers.

This module is the plugin (entry point ``ratelimit`` in the group ``affinity``).
Its hook functions delegate to :data:`STATE`, the one :class:`RateLimiter` of
the process. A module-level object is the exception the style guide allows for
a module plugin: the plugin manager loads an entry point once per process (each
Sanic worker is a process, with its own buckets), ``affinity_configure``
rebuilds the state from scratch, and the policy the request path reads is one
immutable object. Tests and embedders that want their own instance (or a fake
clock) use :class:`RateLimiter` directly.
"""

from __future__ import annotations

from collections.abc import Mapping

from affinity import hookimpl
from affinity.models import Rejection, RequestInfo, SharedSettings
from affinity.web.paths import normalise_path, path_variants
from affinity_ratelimit.gcra import Cell, Decision, GcraTable
from affinity_ratelimit.limiter import NAME, PluginConfig, RateLimiter
from affinity_ratelimit.options import Limit, Policy

__all__ = [
    "NAME",
    "STATE",
    "Cell",
    "Decision",
    "GcraTable",
    "Limit",
    "Policy",
    "RateLimiter",
    "affinity_check_settings",
    "affinity_configure",
    "affinity_reject_request",
    "affinity_report_counters",
    "affinity_settings_changed",
    "normalise_path",
    "path_variants",
]

STATE = RateLimiter()
"""The limiter of this process; read ``STATE.counters()`` and ``STATE.version`` for metrics."""


@hookimpl
def affinity_configure(config: PluginConfig) -> None:
    """Compile ``[plugins.ratelimit]``; a bad value raises ConfigError naming its key."""
    STATE.configure(config)


@hookimpl
def affinity_reject_request(request: RequestInfo) -> Rejection | None:
    """Refuse a request over its client's limit (``429 rate_limited``, ``Retry-After``)."""
    return STATE.reject(request)


@hookimpl
def affinity_report_counters() -> Mapping[str, int]:
    """Refusals of this process by rule id; the core publishes them as metrics."""
    return STATE.counters()


@hookimpl
def affinity_check_settings(settings: SharedSettings) -> None:
    """Refuse a shared ``"ratelimit"`` document that does not compile; other names are not ours."""
    if settings.name == NAME:
        STATE.compile_settings(settings)


@hookimpl
def affinity_settings_changed(settings: SharedSettings) -> None:
    """Put a newer ``"ratelimit"`` document in force; other names and older versions are ignored."""
    if settings.name == NAME:
        STATE.apply_settings(settings)
