"""The rule document (``[plugins.ipfilter]`` or a shared settings value) and its compiled form.

Precedence, as in HAProxy's ``deny`` before ``allow`` and unlike nginx's
first-match order: every rule that applies must admit the request, so a deny
anywhere wins over an allow anywhere, and a path rule can only narrow what the
top-level lists admit. Checks run in this order and the first failure names
the rule: top-level ``deny``, path ``deny``, path ``allow``, top-level ``allow``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from affinity.plugin.options import Origin
from affinity.plugin.shared_settings import CACHE_KEY_LENGTH, CACHE_SIZE
from affinity.web.paths import ancestors, normalise_prefix
from affinity_ipfilter.networks import Address, Network, NetworkSet, parse_networks
from affinity_ipfilter.options import NAME, IPFilterOptions

ROLES = frozenset({"referral", "server"})


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


def compile_rules(options: IPFilterOptions, origin: Origin) -> RuleSet:
    """Compile checked options; a path rule with no list raises ConfigError naming it.

    Rule ids start with ``ipfilter.`` for the file, ``ipfilter.settings.`` for
    a shared document.
    """
    id_prefix = f"{NAME}.settings." if origin.shared else f"{NAME}."
    by_prefix: dict[str, list[PathRule]] = {}
    for i, table in enumerate(options.paths):
        key = f"paths[{i}]"
        if not (table.allow or table.deny):
            raise origin.error("a path rule needs a non-empty 'allow' or 'deny'", key)
        rule = PathRule(
            index=i,
            prefix=normalise_prefix(table.prefix),
            allow=_networks(table.allow, f"{id_prefix}{key}.allow"),
            deny=_networks(table.deny, f"{id_prefix}{key}.deny"),
            allow_id=f"{id_prefix}{key}.allow",
        )
        by_prefix.setdefault(rule.prefix, []).append(rule)
    return RuleSet(
        roles=frozenset(options.roles),
        allow=_networks(options.allow, f"{id_prefix}allow"),
        deny=_networks(options.deny, f"{id_prefix}deny"),
        paths=MappingProxyType({prefix: tuple(rules) for prefix, rules in by_prefix.items()}),
        allow_id=f"{id_prefix}allow",
    )


def _networks(entries: tuple[str, ...], rule_id: str) -> NetworkSet:
    """Each entry's networks, tagged ``<rule_id>[i]`` (entries are checked already)."""
    nets: list[tuple[Network, str]] = []
    for i, entry in enumerate(entries):
        nets.extend((net, f"{rule_id}[{i}]") for net in parse_networks(entry))
    return NetworkSet(nets)
