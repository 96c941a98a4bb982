"""The rule document (``[plugins.ipfilter]`` or a shared settings value) and its compiled form.

Precedence, as in HAProxy's ``deny`` before ``allow`` and unlike nginx's
first-match order: every rule that applies must admit the request, so a deny
anywhere wins over an allow anywhere, and a path rule can only narrow what the
top-level lists admit. Checks run in this order and the first failure names
the rule: top-level ``deny``, path ``deny``, path ``allow``, top-level ``allow``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from affinity.errors import ConfigError
from affinity.web.paths import ancestors, normalise_prefix
from affinity_ipfilter.networks import Address, Network, NetworkSet, parse_networks

CACHE_SIZE = 4096
"""Most addresses, path readings and path-rule matches remembered (all dropped when full)."""
CACHE_KEY_LENGTH = 256
"""Longer addresses or paths are worked out each time, so the caches stay small."""
ROLES = frozenset({"referral", "server"})
OPTIONS = frozenset({"allow", "deny", "paths", "roles"})
PATH_OPTIONS = frozenset({"prefix", "allow", "deny"})


@dataclass(frozen=True, slots=True, kw_only=True)
class PathRule:
    """Extra lists for the requests whose path falls under ``prefix`` (segment-wise)."""

    index: int
    prefix: str
    allow: NetworkSet
    deny: NetworkSet
    allow_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleSet:
    """One compiled, immutable rule document; swapped whole, never edited."""

    roles: frozenset[str] = ROLES
    allow: NetworkSet = field(default_factory=NetworkSet)
    deny: NetworkSet = field(default_factory=NetworkSet)
    paths: Mapping[str, tuple[PathRule, ...]] = field(default_factory=lambda: MappingProxyType({}))
    allow_id: str = "ipfilter.allow"
    _applying: dict[frozenset[str], tuple[PathRule, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """The path rules each set of path readings falls under, remembered: the same paths come
    back request after request. Bounded like the filter's caches; dies with the rule set."""

    @property
    def active(self) -> bool:
        """False when the document has no rule at all (the request path then skips it)."""
        return bool(self.roles) and bool(self.allow or self.deny or self.paths)

    def check(
        self, role: str, addr: Address | None, forms: Callable[[], frozenset[str]]
    ) -> str | None:
        """The id of the rule that refuses the request, or None when every rule admits it.

        :param role: ``"referral"`` or ``"server"``.
        :param addr: The client address; None when it could not be parsed, which no
            list matches (so an ``allow`` list refuses it and a ``deny`` list does not).
        :param forms: Gives the path's comparison forms; called only if path rules exist.
        """
        if role not in self.roles:
            return None
        if addr is not None and (hit := self.deny.match(addr)) is not None:
            return hit
        path_rules = self._applicable(forms()) if self.paths else ()
        for rule in path_rules:
            if addr is not None and (hit := rule.deny.match(addr)) is not None:
                return hit
        for rule in path_rules:
            if rule.allow and (addr is None or rule.allow.match(addr) is None):
                return rule.allow_id
        if self.allow and (addr is None or self.allow.match(addr) is None):
            return self.allow_id
        return None

    def _applicable(self, forms: frozenset[str]) -> tuple[PathRule, ...]:
        try:
            return self._applying[forms]
        except KeyError:
            pass
        rules = tuple(self._path_rules(forms))
        if max(map(len, forms)) <= CACHE_KEY_LENGTH:
            if len(self._applying) >= CACHE_SIZE:
                self._applying.clear()
            self._applying[forms] = rules
        return rules

    def _path_rules(self, forms: frozenset[str]) -> list[PathRule]:
        found: dict[int, PathRule] = {}
        for form in forms:
            for prefix in ancestors(form):
                for rule in self.paths.get(prefix, ()):
                    found[rule.index] = rule
        return [found[i] for i in sorted(found)]


@dataclass(frozen=True, slots=True)
class _Where:
    """Where a document came from, to name keys in errors and rules in counters."""

    key_prefix: str  # "plugins.ipfilter" for the file, "ipfilter" for a shared document
    source: str | None
    id_prefix: str  # "ipfilter." for the file, "ipfilter.settings." for a shared document

    def error(self, message: str, key: str) -> ConfigError:
        return ConfigError(message, key=f"{self.key_prefix}.{key}", source=self.source)


def compile_rules(
    options: Mapping[str, Any], *, key_prefix: str, source: str | None, id_prefix: str
) -> RuleSet:
    """Validate a rule document and compile it; raises ConfigError naming the first bad key."""
    where = _Where(key_prefix, source, id_prefix)
    if not isinstance(options, Mapping):
        raise ConfigError("expected a table", key=key_prefix, source=source)
    _no_unknown(options, OPTIONS, "", where)
    return RuleSet(
        roles=_roles(options.get("roles", sorted(ROLES)), where),
        allow=_networks(options.get("allow", []), "allow", where),
        deny=_networks(options.get("deny", []), "deny", where),
        paths=_paths(options.get("paths", []), where),
        allow_id=f"{id_prefix}allow",
    )


def _no_unknown(table: Mapping[str, Any], known: frozenset[str], key: str, where: _Where) -> None:
    for name in table:
        if name not in known:
            expected = ", ".join(sorted(known))
            raise where.error(f"unknown option {name!r}; expected one of {expected}", key + name)


def _sequence(value: object, key: str, where: _Where) -> Sequence[object]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise where.error(f"expected a list, got {value!r}", key)
    return value


def _roles(value: object, where: _Where) -> frozenset[str]:
    roles = _sequence(value, "roles", where)
    for i, role in enumerate(roles):
        if role not in ROLES:
            raise where.error(
                f"unknown role {role!r}; expected 'referral' or 'server'", f"roles[{i}]"
            )
    return frozenset(str(role) for role in roles)


def _networks(value: object, key: str, where: _Where) -> NetworkSet:
    entries: list[tuple[Network, str]] = []
    for i, item in enumerate(_sequence(value, key, where)):
        try:
            nets = parse_networks(item)
        except ValueError as exc:
            raise where.error(str(exc), f"{key}[{i}]") from None
        entries.extend((net, f"{where.id_prefix}{key}[{i}]") for net in nets)
    return NetworkSet(entries)


def _paths(value: object, where: _Where) -> Mapping[str, tuple[PathRule, ...]]:
    by_prefix: dict[str, list[PathRule]] = {}
    for i, table in enumerate(_sequence(value, "paths", where)):
        key = f"paths[{i}]"
        if not isinstance(table, Mapping):
            raise where.error(f"expected a table with 'prefix', got {table!r}", key)
        _no_unknown(table, PATH_OPTIONS, key + ".", where)
        prefix = table.get("prefix")
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise where.error(f"expected a path starting with '/', got {prefix!r}", key + ".prefix")
        rule = PathRule(
            index=i,
            prefix=normalise_prefix(prefix),
            allow=_networks(table.get("allow", []), key + ".allow", where),
            deny=_networks(table.get("deny", []), key + ".deny", where),
            allow_id=f"{where.id_prefix}{key}.allow",
        )
        if not (rule.allow or rule.deny):
            raise where.error("a path rule needs a non-empty 'allow' or 'deny'", key)
        by_prefix.setdefault(rule.prefix, []).append(rule)
    return MappingProxyType({prefix: tuple(rules) for prefix, rules in by_prefix.items()})
