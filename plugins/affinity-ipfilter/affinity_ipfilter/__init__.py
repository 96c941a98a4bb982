"""affinity-ipfilter: admit or refuse requests by client address, on the referral and app servers.

The plugin is :data:`STATE`, the one :class:`IPFilter` of the process (entry
point ``ipfilter = "affinity_ipfilter:STATE"`` in the group ``affinity``): a
:class:`~affinity.plugin.shared_settings.SettingsPlugin` whose methods are the
hook implementations. The plugin manager loads an entry point once per
process (each Sanic worker is a process), ``affinity_configure`` rebuilds the
state from scratch, and everything the request path reads is one immutable
object. Tests and embedders that want their own instance create an
:class:`IPFilter` and register it.
"""

from __future__ import annotations

from affinity.web.paths import normalise_path, path_variants
from affinity_ipfilter.filter import IPFilter
from affinity_ipfilter.options import NAME, IPFilterOptions, PathRuleOptions

__all__ = [
    "NAME",
    "STATE",
    "IPFilter",
    "IPFilterOptions",
    "PathRuleOptions",
    "normalise_path",
    "path_variants",
]

STATE = IPFilter()
"""The filter of this process; read ``STATE.counters()`` and ``STATE.version`` for metrics."""
