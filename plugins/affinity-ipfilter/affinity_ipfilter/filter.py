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
from types import MappingProxyType
from typing import Any, Protocol

from affinity.models import Rejection, RequestInfo, SharedSettings
from affinity.web.paths import path_variants
from affinity_ipfilter.networks import Address, parse_address
from affinity_ipfilter.rules import CACHE_KEY_LENGTH, CACHE_SIZE, RuleSet, compile_rules

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
    active: tuple[RuleSet, ...] = ()
    """The rule sets that have a rule, in checking order (empty: admit without looking)."""
    decisions: dict[tuple[str, str, str], str | None] = field(default_factory=dict)
    """(role, address, path) -> the refusing rule or None, remembered for these rules only:
    app-server clients are sticky and come back with the same requests."""

    @classmethod
    def of(cls, version: int, file: RuleSet, shared: RuleSet) -> _InForce:
        active = tuple(rules for rules in (file, shared) if rules.active)
        return cls(version=version, file=file, shared=shared, active=active)


def _remember(cache: dict[Any, Any], key: Any, value: Any, text: str) -> None:
    """Keep ``value`` in a bounded cache: dropped whole when full, so memory stays bounded and
    a client rotating addresses or paths costs what it would without the cache. ``text`` is
    the request's part of the key (address, path): a long one is not kept."""
    if len(text) > CACHE_KEY_LENGTH:
        return
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[key] = value


class IPFilter:
    """Admits or refuses requests by client address; one instance per process.

    The request path reads ``self._in_force`` once and works on that immutable
    object, so a rule change is a single reference swap: a request sees the old
    rules or the new ones, never a mix.
    """

    def __init__(self) -> None:
        self._in_force = _InForce()
        self._counts: dict[str, int] = {}
        # Parsing an address and reading a path are most of a check's cost, and the
        # same clients and paths come back request after request: keep the results.
        self._addresses: dict[str, Address | None] = {}
        self._forms: dict[str, frozenset[str]] = {}

    # -- configuration --------------------------------------------------------

    def configure(self, config: PluginConfig) -> None:
        """Compile the file's rules; drops any shared document and resets counters."""
        rules = compile_rules(
            config.plugin_options(NAME),
            key_prefix=f"plugins.{NAME}",
            source=config.source,
            id_prefix=f"{NAME}.",
        )
        self._in_force = _InForce.of(0, rules, RuleSet())
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
        self._in_force = _InForce.of(settings.version, current.file, shared)
        return True

    # -- request path -----------------------------------------------------------

    def reject(self, request: RequestInfo) -> Rejection | None:
        """Refuse with ``403 forbidden`` when a rule says so; None admits."""
        in_force = self._in_force
        if not in_force.active:
            return None
        key = (request.role, request.client_ip, request.path)
        try:
            rule_id = in_force.decisions[key]
        except KeyError:
            rule_id = self._decide(in_force.active, request)
            _remember(in_force.decisions, key, rule_id, request.client_ip + request.path)
        if rule_id is None:
            return None
        self._counts[rule_id] = self._counts.get(rule_id, 0) + 1
        addr = self._address(request.client_ip)
        # Only the canonical form of a parsed address is echoed, never raw input.
        who = f"address {addr}" if addr is not None else "the client address"
        return Rejection(
            status=403, error="forbidden", detail=f"{who} is not allowed", rule=rule_id
        )

    def _decide(self, active: tuple[RuleSet, ...], request: RequestInfo) -> str | None:
        """The id of the first rule that refuses the request, or None."""
        addr = self._address(request.client_ip)
        path = request.path

        def forms() -> frozenset[str]:
            try:
                return self._forms[path]
            except KeyError:
                readings = path_variants(path)
                _remember(self._forms, path, readings, path)
                return readings

        for rules in active:
            rule_id = rules.check(request.role, addr, forms)
            if rule_id is not None:
                return rule_id
        return None

    def _address(self, text: str) -> Address | None:
        try:
            return self._addresses[text]
        except KeyError:
            addr = parse_address(text)
            _remember(self._addresses, text, addr, text)
            return addr

    # -- observation --------------------------------------------------------------

    @property
    def version(self) -> int:
        """Version of the shared document in force; 0 when only the file's rules apply."""
        return self._in_force.version

    def counters(self) -> Mapping[str, int]:
        """Refusals so far by rule id (``ipfilter.deny[2]``, ``ipfilter.settings.allow``...)."""
        return MappingProxyType(dict(self._counts))
