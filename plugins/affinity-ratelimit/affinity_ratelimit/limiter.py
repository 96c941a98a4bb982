"""The limiter's state in one process: the policy in force, the GCRA table, the counters.

The policy comes from the file's ``[plugins.ratelimit]`` table, with the
shared settings document ``"ratelimit"`` laid over it key by key: a key the
document sets replaces the file's (``limits`` is replaced as a whole list), a
key set to ``null`` removes the file's, and a key it leaves out keeps the
file's value. ``max_keys`` sizes this process's memory and stays with the
file. Buckets survive a policy change: a TAT is a point in time, meaningful
under the new rate too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from affinity.errors import ConfigError
from affinity.models import Rejection, RequestInfo, SharedSettings
from affinity_ratelimit.gcra import NS, GcraTable
from affinity_ratelimit.headers import render
from affinity_ratelimit.options import ClientKey, Limit, Policy, compile_policy

NAME = "ratelimit"
"""The plugin's name: its entry point, its config table and its shared settings document."""

log = logging.getLogger("affinity_ratelimit")


class PluginConfig(Protocol):
    """What the limiter needs of :class:`affinity.config.Config`."""

    @property
    def source(self) -> str: ...

    def plugin_options(self, name: str) -> Mapping[str, Any]: ...


CACHE_SIZE = 4096
"""Most limit choices and address keys remembered per policy (the lot is dropped when full)."""
CACHE_KEY_LENGTH = 256
"""Longer paths or addresses are worked out each time, so the caches stay small."""


@dataclass(frozen=True, slots=True)
class _InForce:
    """The policy in force and what was worked out from it, swapped as one reference.

    Choosing the limit for a path and parsing an address are most of a
    decision's cost, and the same paths and clients come back request after
    request, so both are remembered here, next to the policy they depend on:
    a new policy starts with empty caches.
    """

    version: int = 0
    policy: Policy = field(default_factory=Policy)
    limits: dict[tuple[str, str], Limit | None] = field(default_factory=dict)
    addresses: dict[str, tuple[str, str | int]] = field(default_factory=dict)


def _remember(cache: dict[Any, Any], key: Any, value: Any, text: str) -> None:
    """Keep ``value`` in a bounded cache: dropped whole when full, so memory stays bounded and
    a client rotating addresses or paths costs what it would without the cache. ``text`` is
    the request's part of the key (path or address): a long one is not kept."""
    if len(text) > CACHE_KEY_LENGTH:
        return
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[key] = value


def _ceil_seconds(ns: int) -> int:
    return max(1, -(-ns // NS))


class RateLimiter:
    """Per-client GCRA limits for one process.

    :param clock: Seconds from a monotonic clock, injectable so tests need no sleep;
        by default ``time.monotonic_ns`` is read, whole nanoseconds with no float rounding.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._now_ns: Callable[[], int] = (
            time.monotonic_ns if clock is None else lambda: round(clock() * NS)
        )
        self._file_options: Mapping[str, Any] = MappingProxyType({})
        self._in_force = _InForce()
        self._table = GcraTable(self._in_force.policy.max_keys)
        self._counts: dict[str, int] = {}

    # -- configuration --------------------------------------------------------

    def configure(self, config: PluginConfig) -> None:
        """Compile the file's options; forgets every bucket, shared document and counter."""
        options = config.plugin_options(NAME)
        policy = compile_policy(options, key_prefix=f"plugins.{NAME}", source=config.source)
        self._file_options = MappingProxyType(dict(options))
        self._in_force = _InForce(policy=policy)
        self._table = GcraTable(policy.max_keys)
        self._counts = {}

    def compile_settings(self, settings: SharedSettings) -> Policy:
        """Validate a shared document over the file's options; raises ConfigError to refuse it."""
        source = f"shared settings {NAME!r} version {settings.version}"
        value = settings.value
        if not isinstance(value, Mapping):
            raise ConfigError("expected a table", key=NAME, source=source)
        if "max_keys" in value:
            msg = "is per process; set it in the config file's [plugins.ratelimit] table"
            raise ConfigError(msg, key=f"{NAME}.max_keys", source=source)
        merged = {**self._file_options, **value}
        options = {k: v for k, v in merged.items() if v is not None}
        return compile_policy(options, key_prefix=NAME, source=source)

    def apply_settings(self, settings: SharedSettings) -> bool:
        """Put a newer shared document in force; True if applied.

        Versions not newer than the one in force are ignored. A document that
        does not compile keeps the previous policy and is logged (a notification
        hook must not raise, or the plugins after this one would miss the change).
        """
        current = self._in_force
        if settings.version <= current.version:
            return False
        try:
            policy = self.compile_settings(settings)
        except ValueError as exc:
            log.warning("ignoring shared settings %r version %d: %s", NAME, settings.version, exc)
            return False
        self._in_force = _InForce(version=settings.version, policy=policy)
        return True

    # -- request path -----------------------------------------------------------

    def reject(self, request: RequestInfo) -> Rejection | None:
        """Refuse with ``429 rate_limited`` when the client is over its limit; None admits."""
        in_force = self._in_force
        policy = in_force.policy
        where = (request.role, request.path)
        try:
            limit = in_force.limits[where]
        except KeyError:
            limit = policy.select(*where)
            _remember(in_force.limits, where, limit, request.path)
        if limit is None:
            return None
        if limit.key == "client_or_ip" and request.client_id:
            key: ClientKey = (limit.name, "client", request.client_id)
        else:  # Policy.client_key, with the address part remembered
            ip = request.client_ip
            try:
                kind, value = in_force.addresses[ip]
            except KeyError:
                kind, value = policy.address_key(ip)
                _remember(in_force.addresses, ip, (kind, value), ip)
            key = (limit.name, kind, value)
        decision = self._table.take(key, limit.cell, self._now_ns())
        if decision is None:
            return None
        self._counts[limit.rule_id] = self._counts.get(limit.rule_id, 0) + 1
        retry_after = _ceil_seconds(decision.wait_ns)
        headers = render(
            policy.headers,
            name=limit.name,
            quota=limit.quota,
            window=limit.window,
            remaining=0,
            reset=_ceil_seconds(decision.reset_ns),
        )
        return Rejection(
            status=429,
            error="rate_limited",
            detail=f"too many requests under limit {limit.name!r}; retry in {retry_after} s",
            retry_after=retry_after,
            headers=headers,
            rule=limit.rule_id,
        )

    # -- observation --------------------------------------------------------------

    @property
    def version(self) -> int:
        """Version of the shared document in force; 0 when only the file's options apply."""
        return self._in_force.version

    @property
    def policy(self) -> Policy:
        """The compiled policy in force."""
        return self._in_force.policy

    @property
    def table_size(self) -> int:
        """Keys held now (at most ``max_keys``)."""
        return len(self._table)

    @property
    def evicted_active(self) -> int:
        """Entries evicted while still limiting someone; non-zero: ``max_keys`` is too small."""
        return self._table.evicted_active

    def counters(self) -> Mapping[str, int]:
        """Refusals so far by rule id (``ratelimit.default``, ``ratelimit.<name>``)."""
        return MappingProxyType(dict(self._counts))
