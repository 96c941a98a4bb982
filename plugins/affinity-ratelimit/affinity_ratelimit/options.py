"""The ``[plugins.ratelimit]`` table (or a shared settings value) and its compiled :class:`Policy`.

One limit applies to a request: the one whose ``prefix`` is the longest that
the path falls under (segment-wise) among those whose ``roles`` include the
request's role; on a tie the first declared wins; the top-level ``rate`` is
the limit named ``"default"`` with prefix ``/``, declared last. Each limit has
its own buckets, so a request counts against one limit only.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from affinity.errors import ConfigError
from affinity.models import RequestInfo
from affinity.web.paths import ancestors, normalise_path, normalise_prefix, path_variants
from affinity_ratelimit.gcra import Cell
from affinity_ratelimit.headers import MODES, quota_window

ROLES = frozenset({"referral", "server"})
KEY_MODES = ("client_or_ip", "ip")
DEFAULT_MAX_KEYS = 100_000
DEFAULT_EXEMPT = ("/.well-known/affinity/health", "/healthz")
MAX_RATE = 1e9  # one request per nanosecond: the clock's resolution

OPTIONS = frozenset(
    {
        "rate", "burst", "key", "roles", "ipv4_prefix", "ipv6_prefix",
        "max_keys", "headers", "exempt_paths", "limits",
    }
)  # fmt: skip
LIMIT_OPTIONS = frozenset({"name", "prefix", "roles", "rate", "burst", "key"})
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

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


@dataclass(frozen=True, slots=True)
class _Where:
    key_prefix: str
    source: str | None

    def error(self, message: str, key: str) -> ConfigError:
        return ConfigError(message, key=f"{self.key_prefix}.{key}", source=self.source)


def compile_policy(options: Mapping[str, Any], *, key_prefix: str, source: str | None) -> Policy:
    """Validate options and compile them; raises ConfigError naming the first bad key."""
    where = _Where(key_prefix, source)
    if not isinstance(options, Mapping):
        raise ConfigError("expected a table", key=key_prefix, source=source)
    _no_unknown(options, OPTIONS, "", where)
    key = _choice(options.get("key", "client_or_ip"), KEY_MODES, "key", where)
    limits = _limits(options.get("limits", []), key, where)
    if "rate" in options:
        limits.append(_limit(options, "default", "/", ROLES, key, "", where))
    elif "burst" in options:
        raise where.error("'burst' needs a 'rate' next to it", "burst")
    names = [limit.name for limit in limits]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise where.error(f"duplicate limit name {name!r}", f"limits[{i}].name")
    by_prefix: dict[str, list[Limit]] = {}
    for limit in limits:
        by_prefix.setdefault(limit.prefix, []).append(limit)
    return Policy(
        roles=_roles(options.get("roles", sorted(ROLES)), "roles", where),
        limits=MappingProxyType({p: tuple(group) for p, group in by_prefix.items()}),
        exempt=_exempt(options.get("exempt_paths", list(DEFAULT_EXEMPT)), where),
        ipv4_prefix=_int(options.get("ipv4_prefix", 32), 1, 32, "ipv4_prefix", where),
        ipv6_prefix=_int(options.get("ipv6_prefix", 64), 1, 128, "ipv6_prefix", where),
        max_keys=_int(options.get("max_keys", DEFAULT_MAX_KEYS), 1, 10**9, "max_keys", where),
        headers=_choice(options.get("headers", "draft-08"), MODES, "headers", where),
    )


def _limits(value: object, default_key: str, where: _Where) -> list[Limit]:
    limits = []
    for i, table in enumerate(_sequence(value, "limits", where)):
        key = f"limits[{i}]"
        if not isinstance(table, Mapping):
            raise where.error(f"expected a table with 'rate', got {table!r}", key)
        _no_unknown(table, LIMIT_OPTIONS, key + ".", where)
        name = table.get("name", f"limit-{i}")
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name == "default":
            msg = f"expected a name of letters, digits, '_', '.', '-' (not 'default'), got {name!r}"
            raise where.error(msg, key + ".name")
        prefix = table.get("prefix", "/")
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise where.error(f"expected a path starting with '/', got {prefix!r}", key + ".prefix")
        roles = _roles(table.get("roles", sorted(ROLES)), key + ".roles", where)
        limit_key = _choice(table.get("key", default_key), KEY_MODES, key + ".key", where)
        if "rate" not in table:
            raise where.error("a limit needs a 'rate'", key + ".rate")
        limits.append(
            _limit(table, name, normalise_prefix(prefix), roles, limit_key, key + ".", where)
        )
    return limits


def _limit(
    table: Mapping[str, Any],
    name: str,
    prefix: str,
    roles: frozenset[str],
    key: str,
    key_path: str,
    where: _Where,
) -> Limit:
    rate = table["rate"]
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise where.error(
            f"expected requests per second as a number, got {rate!r}", key_path + "rate"
        )
    if not (math.isfinite(rate) and 0 < rate <= MAX_RATE):
        raise where.error(
            f"expected a rate in (0, 1e9] per second, got {rate!r}", key_path + "rate"
        )
    rate = float(rate)
    burst = _int(table.get("burst", max(1, math.ceil(rate))), 1, 10**9, key_path + "burst", where)
    quota, window = quota_window(rate, burst)
    return Limit(
        name=name, prefix=prefix, roles=roles, rate=rate, burst=burst, key=key,
        cell=Cell.of(rate, burst), quota=quota, window=window,
    )  # fmt: skip


def _no_unknown(table: Mapping[str, Any], known: frozenset[str], key: str, where: _Where) -> None:
    for name in table:
        if name not in known:
            expected = ", ".join(sorted(known))
            raise where.error(f"unknown option {name!r}; expected one of {expected}", key + name)


def _sequence(value: object, key: str, where: _Where) -> Sequence[object]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise where.error(f"expected a list, got {value!r}", key)
    return value


def _roles(value: object, key: str, where: _Where) -> frozenset[str]:
    roles = _sequence(value, key, where)
    for i, role in enumerate(roles):
        if role not in ROLES:
            raise where.error(
                f"unknown role {role!r}; expected 'referral' or 'server'", f"{key}[{i}]"
            )
    return frozenset(str(role) for role in roles)


def _exempt(value: object, where: _Where) -> frozenset[str]:
    prefixes = []
    for i, prefix in enumerate(_sequence(value, "exempt_paths", where)):
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            msg = f"expected a path starting with '/', got {prefix!r}"
            raise where.error(msg, f"exempt_paths[{i}]")
        prefixes.append(normalise_prefix(prefix))
    return frozenset(prefixes)


def _int(value: object, low: int, high: int, key: str, where: _Where) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise where.error(f"expected a whole number from {low} to {high}, got {value!r}", key)
    return value


def _choice(value: object, choices: Sequence[str], key: str, where: _Where) -> str:
    if value not in choices:
        expected = ", ".join(repr(c) for c in choices)
        raise where.error(f"expected one of {expected}, got {value!r}", key)
    return str(value)
