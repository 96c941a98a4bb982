"""The compiled :class:`Policy`: what the request path reads of the options.

One limit applies to a request: the one whose ``prefix`` is the longest that
the path falls under (segment-wise) among those whose ``roles`` include the
request's role; on a tie the first declared wins; the top-level ``rate`` is
the limit named ``"default"`` with prefix ``/``, declared last. Each limit has
its own buckets, so a request counts against one limit only.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from affinity.models import RequestInfo
from affinity.plugin.options import Origin
from affinity.web.paths import ancestors, normalise_path, normalise_prefix, path_variants
from affinity_ratelimit.gcra import Cell
from affinity_ratelimit.headers import quota_window
from affinity_ratelimit.options import (
    DEFAULT_EXEMPT,
    DEFAULT_MAX_KEYS,
    LimitOptions,
    RateLimitOptions,
)

ROLES = frozenset({"referral", "server"})

ClientKey = tuple[str, str, str | int]
"""(limit name, kind of key, value): each limit keeps its own buckets."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Limit:
    """One compiled limit: where it applies, how fast, and how it names itself in headers."""

    name: str
    prefix: str
    roles: frozenset[str]
    rate: float
    burst: int
    key: str
    cell: Cell
    quota: int
    window: int

    @property
    def rule_id(self) -> str:
        """The id counted in :meth:`RateLimiter.counters` and set on the Rejection."""
        return f"ratelimit.{self.name}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    """Everything the request path reads; immutable, replaced whole."""

    roles: frozenset[str] = ROLES
    limits: Mapping[str, tuple[Limit, ...]] = field(default_factory=lambda: MappingProxyType({}))
    exempt: frozenset[str] = frozenset(DEFAULT_EXEMPT)
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64
    max_keys: int = DEFAULT_MAX_KEYS
    headers: str = "draft-08"

    def select(self, role: str, path: str) -> Limit | None:
        """The limit for a request, or None when none applies or the path is exempt."""
        if not self.limits or role not in self.roles or self._exempt(path):
            return None
        prefixes = ancestors(normalise_path(path)) if self.by_path else ["/"]
        for prefix in prefixes:
            for limit in self.limits.get(prefix, ()):
                if role in limit.roles:
                    return limit
        return None

    @property
    def by_path(self) -> bool:
        """True when some limit has a prefix other than ``/`` (else the path need not be read)."""
        return len(self.limits) > 1 or "/" not in self.limits

    def _exempt(self, path: str) -> bool:
        # Exempt only when every reading of the path is exempt, so that an odd
        # spelling of a limited path never passes for a health check. The
        # literal reading comes first: most paths fail there, at one normalisation.
        if not self.exempt or not self._under_exempt(normalise_path(path, decode=0)):
            return False
        return all(self._under_exempt(form) for form in path_variants(path))

    def _under_exempt(self, form: str) -> bool:
        return any(prefix in self.exempt for prefix in ancestors(form))

    def client_key(self, request: RequestInfo, limit: Limit) -> ClientKey:
        """Who a request counts against: the token's client id, else the (masked) address."""
        if limit.key == "client_or_ip" and request.client_id:
            return (limit.name, "client", request.client_id)
        return (limit.name, *self.address_key(request.client_ip))

    def address_key(self, client_ip: str) -> tuple[str, str | int]:
        """The address part of a key: the masked address by family, or the text if it is none."""
        try:  # the common case, a dotted quad, six times faster than ipaddress's own parser
            packed = socket.inet_pton(socket.AF_INET, client_ip)
            return ("ipv4", int.from_bytes(packed) >> (32 - self.ipv4_prefix))
        except (OSError, ValueError):  # inet_pton is as strict: no leading zeros, exactly 4 parts
            pass
        try:
            addr = ipaddress.ip_address(client_ip)
        except ValueError:
            return ("raw", client_ip[:64])
        if isinstance(addr, ipaddress.IPv6Address):
            mapped = addr.ipv4_mapped
            if mapped is None:
                return ("ipv6", int(addr) >> (128 - self.ipv6_prefix))
            addr = mapped
        return ("ipv4", int(addr) >> (32 - self.ipv4_prefix))


def compile_policy(options: RateLimitOptions, origin: Origin) -> Policy:
    """Compile checked options; what the types cannot say raises ConfigError naming the key."""
    limits = [_limit(table, i, options.key, origin) for i, table in enumerate(options.limits)]
    if options.rate is not None:
        burst = _burst(options.rate, options.burst)
        limits.append(_compiled("default", "/", ROLES, options.rate, burst, options.key))
    elif options.burst is not None:
        raise origin.error("'burst' needs a 'rate' next to it", "burst")
    names = [limit.name for limit in limits]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise origin.error(f"duplicate limit name {name!r}", f"limits[{i}].name")
    by_prefix: dict[str, list[Limit]] = {}
    for limit in limits:
        by_prefix.setdefault(limit.prefix, []).append(limit)
    return Policy(
        roles=frozenset(options.roles),
        limits=MappingProxyType({p: tuple(group) for p, group in by_prefix.items()}),
        exempt=frozenset(normalise_prefix(prefix) for prefix in options.exempt_paths),
        ipv4_prefix=options.ipv4_prefix,
        ipv6_prefix=options.ipv6_prefix,
        max_keys=options.max_keys,
        headers=options.headers,
    )


def _limit(table: LimitOptions, i: int, default_key: str, origin: Origin) -> Limit:
    name = f"limit-{i}" if table.name is None else table.name
    if name == "default":
        msg = "expected a name of letters, digits, '_', '.', '-' (not 'default'), got 'default'"
        raise origin.error(msg, f"limits[{i}].name")
    burst = _burst(table.rate, table.burst)
    key = table.key or default_key
    return _compiled(
        name, normalise_prefix(table.prefix), frozenset(table.roles), table.rate, burst, key
    )


def _burst(rate: float, burst: int | None) -> int:
    return max(1, math.ceil(rate)) if burst is None else burst


def _compiled(
    name: str, prefix: str, roles: frozenset[str], rate: float, burst: int, key: str
) -> Limit:
    quota, window = quota_window(rate, burst)
    return Limit(
        name=name, prefix=prefix, roles=roles, rate=rate, burst=burst, key=key,
        cell=Cell.of(rate, burst), quota=quota, window=window,
    )  # fmt: skip
