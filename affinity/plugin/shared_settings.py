"""The base of a settings plugin: options from the config file, a shared document laid on top.

A settings plugin (the IP filter and the rate limiter are two) declares an
options dataclass, compiles the file's ``[plugins.<name>]`` table into what
its request path reads, and accepts, at run time, newer versions of a shared
settings document named after it, delivered by the registry to every
process. :class:`SettingsPlugin` does everything but the compiling and the
request path: it declares the options, configures from the file, checks and
applies documents (ignoring other names and versions not newer than the one
in force), keeps the refusal counters and reports them.

An instance is the plugin: register the object, or name it in the entry point
(``ratelimit = "affinity_ratelimit:STATE"``). One lives per process; each
Sanic worker is a process.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Generic, TypeVar

from affinity.config import Config
from affinity.models import SharedSettings
from affinity.plugin import hookimpl
from affinity.plugin.options import Origin, read_options

__all__ = ["CACHE_KEY_LENGTH", "CACHE_SIZE", "SettingsPlugin", "remember"]

log = logging.getLogger("affinity.plugin")

CACHE_SIZE = 4096
"""Most entries a request-path memo keeps (all dropped when full)."""
CACHE_KEY_LENGTH = 256
"""Longer addresses or paths are worked out each time, so the memos stay small."""

OptionsT = TypeVar("OptionsT")
CompiledT = TypeVar("CompiledT")


def remember(cache: dict[Any, Any], key: Hashable, value: Any, text: str) -> None:
    """Keep ``value`` in a bounded memo: dropped whole when full, so memory stays bounded and
    a client rotating addresses or paths costs what it would without the memo. ``text`` is
    the request's part of the key (address, path): a long one is not kept."""
    if len(text) > CACHE_KEY_LENGTH:
        return
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[key] = value


class SettingsPlugin(ABC, Generic[OptionsT, CompiledT]):
    """Options from the file, a shared settings document over them, refusals counted.

    Subclasses set :attr:`name` and :attr:`options_class` and implement
    :meth:`compile` (options to what the request path reads) and
    :meth:`install` (swap it in as one reference), plus their request hook.
    """

    name: ClassVar[str]
    """The plugin's name: its ``[plugins.<name>]`` table and its shared settings document."""
    options_class: ClassVar[type[Any]]
    """The dataclass of its options; every field has a default (unconfigured is harmless)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._version = 0
        self._identity = (0, 0)
        self.configure(self.options_class())

    # -- what a subclass provides ---------------------------------------------------

    @abstractmethod
    def compile(self, options: OptionsT, origin: Origin) -> CompiledT:
        """Compile options (the file's, or a document's); raise ``origin.error(...)`` to refuse."""

    @abstractmethod
    def install(self, file: CompiledT, shared: CompiledT | None, version: int) -> None:
        """Put the file's compiled options and a shared document's (None: none) in force."""

    def read_document(self, value: Any, origin: Origin) -> OptionsT:
        """A shared document's value as options; by default a table of the same options."""
        if not isinstance(value, Mapping):
            raise origin.error(f"expected a table, got {value!r}")
        options: OptionsT = read_options(self.options_class, value, origin)
        return options

    # -- configuration --------------------------------------------------------------

    def configure(self, options: OptionsT, source: str | None = None) -> None:
        """Compile the file's options; drops any shared document and resets the counters."""
        file = self.compile(options, Origin(f"plugins.{self.name}", source))
        self.options = options
        self._version = 0
        self._identity = (0, 0)
        self._counts = {}
        self.install(file, None, 0)
        self._file = file

    def configure_table(self, table: Mapping[str, Any], source: str | None = None) -> None:
        """Configure from a table as ``[plugins.<name>]`` holds it (for tests and embedders)."""
        origin = Origin(f"plugins.{self.name}", source)
        self.configure(read_options(self.options_class, table, origin), source)

    def compile_settings(self, settings: SharedSettings) -> CompiledT:
        """Check a shared document; raises ConfigError (naming the key) to refuse it whole."""
        source = f"shared settings {self.name!r} version {settings.version}"
        origin = Origin(self.name, source, shared=True)
        return self.compile(self.read_document(settings.value, origin), origin)

    def apply_settings(self, settings: SharedSettings) -> bool:
        """Put a newer shared document in force; True if applied.

        Documents not newer (by ``(epoch, version)``) than the one in force are
        ignored (redelivery, or a
        watch that went back in time). A document that does not compile keeps
        the previous one in force and is logged: a notification hook must not
        raise, or the plugins after this one would miss the change.
        """
        if settings.identity <= self._identity:
            return False
        try:
            shared = self.compile_settings(settings)
        except ValueError as exc:
            log.warning(
                "ignoring shared settings %r version %d: %s", self.name, settings.version, exc
            )
            return False
        self.install(self._file, shared, settings.version)
        self._version, self._identity = settings.version, settings.identity
        return True

    # -- observation ------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Version of the shared document in force; 0 when only the file's options apply."""
        return self._version

    def count(self, rule_id: str) -> None:
        """Count one refusal by the rule ``rule_id``."""
        self._counts[rule_id] = self._counts.get(rule_id, 0) + 1

    def counters(self) -> Mapping[str, int]:
        """Refusals so far by rule id, each prefixed with the plugin's name."""
        return MappingProxyType(dict(self._counts))

    # -- the hooks ------------------------------------------------------------------------

    @hookimpl
    def affinity_declare_options(self) -> tuple[str, type[Any]]:
        """The ``[plugins.<name>]`` table and its dataclass."""
        return self.name, self.options_class

    @hookimpl
    def affinity_configure(self, config: Config) -> None:
        """Compile the file's table; a bad value raises ConfigError naming its key."""
        self.configure(config.plugin_options(self.name, self.options_class), config.source)

    @hookimpl
    def affinity_check_settings(self, settings: SharedSettings) -> None:
        """Refuse a shared document of this plugin's name that does not compile."""
        if settings.name == self.name:
            self.compile_settings(settings)

    @hookimpl
    def affinity_settings_changed(self, settings: SharedSettings) -> None:
        """Put a newer document of this plugin's name in force; others are not ours."""
        if settings.name == self.name:
            self.apply_settings(settings)

    @hookimpl
    def affinity_report_counters(self) -> Mapping[str, int]:
        """Refusals of this process by rule id; the core publishes them as metrics."""
        return self.counters()
