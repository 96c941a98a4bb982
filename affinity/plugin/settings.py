"""Shared settings documents put in force through the plugins, the same on both roles.

The registry delivers versioned documents (firewall rules and the like) to
every referral and app server process. Each process offers every document it
sees to :class:`SettingsInForce`: a newer one (by ``(epoch, version)``) is
checked by the plugins and put in force, or refused whole while the previous
one stays; a refused or older document is logged and counted once, not on
every registry read. A process never silently keeps an older document than
the registry delivers.
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
        self._refused_identities: dict[str, tuple[int, int]] = {}
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

        Documents are ordered by ``(epoch, version)``. The one in force again
        is passed over quietly; an older one (a store that lost its data and
        counted again without a new epoch) is refused, logged and counted, as is
        a version the plugins refuse, each once, not on every registry read.
        """
        name, identity = settings.name, settings.identity
        current = self.documents.get(name)
        in_force = current.identity if current is not None else (0, 0)
        if identity == in_force or self._refused_identities.get(name) == identity:
            return False
        if identity < in_force:
            self._refuse(settings, in_force, "older than the one in force")
            return False
        problem: Exception | None
        try:
            problem = self._manager.apply_settings(settings)
        except Exception as exc:
            problem = exc
        if problem is not None:
            self._refuse(settings, in_force, problem)
            return False
        self.documents[name] = settings
        return True

    def _refuse(
        self, settings: SharedSettings, in_force: tuple[int, int], why: Exception | str
    ) -> None:
        self._refused_identities[settings.name] = settings.identity
        self._refused(settings.name)
        log.warning(
            "refused shared settings %r %s whole, %s stays: %s",
            settings.name,
            _describe(settings.identity),
            _describe(in_force),
            _reason(why),
            exc_info=why
            if isinstance(why, Exception) and not isinstance(why, ConfigError)
            else None,
        )


def _describe(identity: tuple[int, int]) -> str:
    epoch, version = identity
    return f"version {version}" + (f" (epoch {epoch})" if epoch else "")


def _reason(why: Exception | str) -> str:
    """A refusal as a sentence: a plugin's ConfigError as it is, anything else as a failure."""
    if isinstance(why, str | ConfigError):
        return str(why)
    return f"a plugin failed on it ({type(why).__name__}: {why})"
