"""affinity-ipfilter: admit or refuse requests by client address, on the referral and app servers.

This module is the plugin (entry point ``ipfilter`` in the group ``affinity``).
Its hook functions delegate to :data:`STATE`, the one :class:`IPFilter` of the
process. A module-level object is the exception the style guide allows for a
module plugin: the plugin manager loads an entry point once per process (each
Sanic worker is a process), ``affinity_configure`` rebuilds the state from
scratch, and everything the request path reads is one immutable object. Tests
and embedders that want their own instance use :class:`IPFilter` directly.
"""

from __future__ import annotations

from collections.abc import Mapping

from affinity import hookimpl
from affinity.models import Rejection, RequestInfo, SharedSettings
from affinity.web.paths import normalise_path, path_variants
from affinity_ipfilter.filter import NAME, IPFilter, PluginConfig

__all__ = [
    "NAME",
    "STATE",
    "IPFilter",
    "affinity_check_settings",
    "affinity_configure",
    "affinity_reject_request",
    "affinity_report_counters",
    "affinity_settings_changed",
    "normalise_path",
    "path_variants",
]

STATE = IPFilter()
"""The filter of this process; read ``STATE.counters()`` and ``STATE.version`` for metrics."""


@hookimpl
def affinity_configure(config: PluginConfig) -> None:
    """Compile ``[plugins.ipfilter]``; a bad entry raises ConfigError naming it."""
    STATE.configure(config)


@hookimpl(tryfirst=True)
def affinity_reject_request(request: RequestInfo) -> Rejection | None:
    """Refuse a request from an address the rules do not admit (``403 forbidden``).

    ``tryfirst``: a refused address is turned away before rate limiters spend
    a bucket slot on it.
    """
    return STATE.reject(request)


@hookimpl
def affinity_report_counters() -> Mapping[str, int]:
    """Refusals of this process by rule id; the core publishes them as metrics."""
    return STATE.counters()


@hookimpl
def affinity_check_settings(settings: SharedSettings) -> None:
    """Refuse a shared ``"ipfilter"`` document that does not compile; other names are not ours."""
    if settings.name == NAME:
        IPFilter.compile_settings(settings)


@hookimpl
def affinity_settings_changed(settings: SharedSettings) -> None:
    """Put a newer ``"ipfilter"`` document in force; other names and older versions are ignored."""
    if settings.name == NAME:
        STATE.apply_settings(settings)
