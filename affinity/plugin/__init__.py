"""What a plugin author reads: the hook specifications, the plugin manager, the base
classes a plugin implements (policy, health source, registry and registrar), the
declaration of its options (:mod:`.options`) and the settings-plugin base
(:mod:`.shared_settings`).

The markers live here, below everything else in the package, so that built-in plugins
can import them without importing the package root (which re-exports ``hookimpl``).
"""

from __future__ import annotations

import pluggy

__all__ = ["hookimpl", "hookspec"]

hookimpl = pluggy.HookimplMarker("affinity")
"""Decorator for plugin hook implementations: ``@affinity.hookimpl``."""

hookspec = pluggy.HookspecMarker("affinity")
"""Decorator for hook specifications (used by :mod:`affinity.plugin.spec` only)."""
