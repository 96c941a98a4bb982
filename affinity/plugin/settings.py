"""Shared settings documents put in force through the plugins, the same on both roles.

The registry delivers versioned documents (firewall rules and the like) to
every referral and app server process. Each process offers every document it
sees to :class:`SettingsInForce`: a newer version is checked by the plugins
and put in force, or refused whole while the previous version stays; a
refused version is logged and counted once, not on every registry read.
Whatever a plugin raises on a document refuses it: a document that makes a
plugin fail (a list where a name was expected, say) is a bad document, not a
reason for the registry watch to stop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from affinity.errors import ConfigError
from affinity.models import SharedSettings
from affinity.plugin.manager import PluginManager

log = logging.getLogger("affinity.plugins")


def _ignore(name: str) -> None:
    return None


class SettingsInForce:
    """The shared settings documents in force in this process, by name.

    ``refused`` is called with the document's name when a version is refused
    (a metrics counter, say).
    """

    def __init__(self, manager: PluginManager, *, refused: Callable[[str], None] = _ignore) -> None:
        self._manager = manager
        self._refused = refused
        self._refused_versions: dict[str, int] = {}
        self.documents: dict[str, SharedSettings] = {}
        """The document in force of each name."""

    def versions(self) -> dict[str, int]:
        """The version in force of each document."""
        return {name: settings.version for name, settings in self.documents.items()}

    def check(self, settings: SharedSettings) -> str | None:
        """Why the plugins refuse ``settings``, or None if they accept it (nothing applied)."""
        try:
            self._manager.check_settings(settings)
        except Exception as exc:
            return _reason(exc)
        return None

    def offer(self, settings: SharedSettings) -> bool:
        """Put ``settings`` in force if it is newer and the plugins accept it; True if so.

        A version not newer than the one in force, or refused before, is
        passed over without asking the plugins again.
        """
        name, version = settings.name, settings.version
        current = self.documents.get(name)
        in_force = current.version if current is not None else 0
        if version <= in_force or self._refused_versions.get(name) == version:
            return False
        problem: Exception | None
        try:
            problem = self._manager.apply_settings(settings)
        except Exception as exc:
            problem = exc
        if problem is not None:
            self._refused_versions[name] = version
            self._refused(name)
            log.warning(
                "refused shared settings %r version %d whole, version %d stays: %s",
                name,
                version,
                in_force,
                _reason(problem),
                exc_info=None if isinstance(problem, ConfigError) else problem,
            )
            return False
        self.documents[name] = settings
        return True


def _reason(exc: Exception) -> str:
    """A refusal as a sentence: a plugin's ConfigError as it is, anything else as a failure."""
    if isinstance(exc, ConfigError):
        return str(exc)
    return f"a plugin failed on it ({type(exc).__name__}: {exc})"
