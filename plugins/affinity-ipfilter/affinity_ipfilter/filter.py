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

from dataclasses import dataclass, field

from affinity import hookimpl
from affinity.models import Rejection, RequestInfo
from affinity.plugin.options import Origin
from affinity.plugin.shared_settings import SettingsPlugin, remember
from affinity.web.paths import path_variants
from affinity_ipfilter.networks import Address, parse_address
from affinity_ipfilter.options import NAME, IPFilterOptions
from affinity_ipfilter.rules import RuleSet, compile_rules


@dataclass(frozen=True, slots=True)
class _InForce:
    """Everything the request path reads, swapped as one reference."""

    active: tuple[RuleSet, ...] = ()
    """The rule sets that have a rule, in checking order (empty: admit without looking)."""
    decisions: dict[tuple[str, str, str], str | None] = field(default_factory=dict)
    """(role, address, path) -> the refusing rule or None, remembered for these rules only:
    app-server clients are sticky and come back with the same requests."""

    @classmethod
    def of(cls, file: RuleSet, shared: RuleSet) -> _InForce:
        return cls(active=tuple(rules for rules in (file, shared) if rules.active))


class IPFilter(SettingsPlugin[IPFilterOptions, RuleSet]):
    """Admits or refuses requests by client address; one instance per process is the plugin.

    The request path reads ``self._in_force`` once and works on that immutable
    object, so a rule change is a single reference swap: a request sees the old
    rules or the new ones, never a mix.
    """

    name = NAME
    options_class = IPFilterOptions

    def __init__(self) -> None:
        self._in_force = _InForce()
        # Parsing an address and reading a path are most of a check's cost, and the
        # same clients and paths come back request after request: keep the results.
        self._addresses: dict[str, Address | None] = {}
        self._forms: dict[str, frozenset[str]] = {}
        super().__init__()

    # -- configuration (the rest is SettingsPlugin's) -------------------------

    def compile(self, options: IPFilterOptions, origin: Origin) -> RuleSet:
        return compile_rules(options, origin)

    def install(self, file: RuleSet, shared: RuleSet | None, version: int) -> None:
        self._in_force = _InForce.of(file, shared or RuleSet())

    # -- request path -----------------------------------------------------------

    @hookimpl(tryfirst=True)
    def affinity_reject_request(self, request: RequestInfo) -> Rejection | None:
        """Refuse a request from an address the rules do not admit (``403 forbidden``).

        ``tryfirst``: a refused address is turned away before rate limiters spend
        a bucket slot on it.
        """
        return self.reject(request)

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
            remember(in_force.decisions, key, rule_id, request.client_ip + request.path)
        if rule_id is None:
            return None
        self.count(rule_id)
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
                remember(self._forms, path, readings, path)
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
            remember(self._addresses, text, addr, text)
            return addr
