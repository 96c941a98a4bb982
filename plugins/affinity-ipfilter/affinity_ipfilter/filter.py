"""The filter's state in one process: rules from the file, rules from the registry, counters.

Two rule sets apply together. The file's ``[plugins.ipfilter]`` table is
fixed for the life of the process; the shared settings document
``"ipfilter"`` is layered on top and replaced whole by each newer version. A
request must pass both, so a document pushed through the registry can add
denials and narrow allow lists but can never open what the local file closes:
a registry that is wrong, or written by the wrong person, cannot unlock the
admin paths of every server.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import Any, Protocol

from affinity.models import Rejection, RequestInfo, SharedSettings
from affinity_ipfilter.networks import parse_address
from affinity_ipfilter.paths import path_variants
from affinity_ipfilter.rules import RuleSet, compile_rules

NAME = "ipfilter"
"""The plugin's name: its entry point, its config table and its shared settings document."""

log = logging.getLogger("affinity_ipfilter")


class PluginConfig(Protocol):
    """What the filter needs of :class:`affinity.config.Config`."""

    @property
    def source(self) -> str: ...

    def plugin_options(self, name: str) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class _InForce:
    """Everything the request path reads, swapped as one reference."""

    version: int = 0
    file: RuleSet = field(default_factory=RuleSet)
    shared: RuleSet = field(default_factory=RuleSet)


class IPFilter:
    """Admits or refuses requests by client address; one instance per process.

    The request path reads ``self._in_force`` once and works on that immutable
    object, so a rule change is a single reference swap: a request sees the old
    rules or the new ones, never a mix.
    """

    def __init__(self) -> None:
        self._in_force = _InForce()
        self._counts: dict[str, int] = {}

    # -- configuration --------------------------------------------------------

    def configure(self, config: PluginConfig) -> None:
        """Compile the file's rules; drops any shared document and resets counters."""
        rules = compile_rules(
            config.plugin_options(NAME),
            key_prefix=f"plugins.{NAME}",
            source=config.source,
            id_prefix=f"{NAME}.",
        )
        self._in_force = _InForce(file=rules)
        self._counts = {}

    @staticmethod
    def compile_settings(settings: SharedSettings) -> RuleSet:
        """Validate a shared document; raises ConfigError (naming the key) to refuse it whole."""
        return compile_rules(
            settings.value,
            key_prefix=NAME,
            source=f"shared settings {NAME!r} version {settings.version}",
            id_prefix=f"{NAME}.settings.",
        )

    def apply_settings(self, settings: SharedSettings) -> bool:
        """Put a newer shared document in force; True if applied.

        Versions not newer than the one in force are ignored (redelivery, or a
        watch that went back in time). A document that does not compile keeps
        the previous one in force and is logged: a notification hook must not
        raise, or the plugins after this one would miss the change.
        """
        current = self._in_force
        if settings.version <= current.version:
            return False
        try:
            shared = self.compile_settings(settings)
        except ValueError as exc:
            log.warning("ignoring shared settings %r version %d: %s", NAME, settings.version, exc)
            return False
        self._in_force = _InForce(version=settings.version, file=current.file, shared=shared)
        return True

    # -- request path -----------------------------------------------------------

    def reject(self, request: RequestInfo) -> Rejection | None:
        """Refuse with ``403 forbidden`` when a rule says so; None admits."""
        in_force = self._in_force
        if not (in_force.file.active or in_force.shared.active):
            return None
        addr = parse_address(request.client_ip)
        forms = cache(lambda: path_variants(request.path))
        for rules in (in_force.file, in_force.shared):
            rule_id = rules.check(request.role, addr, forms)
            if rule_id is not None:
                self._counts[rule_id] = self._counts.get(rule_id, 0) + 1
                # Only the canonical form of a parsed address is echoed, never raw input.
                who = f"address {addr}" if addr is not None else "the client address"
                return Rejection(
                    status=403, error="forbidden", detail=f"{who} is not allowed", rule=rule_id
                )
        return None

    # -- observation --------------------------------------------------------------

    @property
    def version(self) -> int:
        """Version of the shared document in force; 0 when only the file's rules apply."""
        return self._in_force.version

    def counters(self) -> Mapping[str, int]:
        """Refusals so far by rule id (``ipfilter.deny[2]``, ``ipfilter.settings.allow``...)."""
        return MappingProxyType(dict(self._counts))
