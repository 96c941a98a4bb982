"""The limiter's state in one process: the policy in force, the GCRA table, the counters.

The policy comes from the file's ``[plugins.ratelimit]`` table, with the
shared settings document ``"ratelimit"`` laid over it key by key: a key the
document sets replaces the file's (``limits`` is replaced as a whole list), a
key set to ``null`` removes the file's, and a key it leaves out keeps the
file's value. ``max_keys`` sizes this process's memory and stays with the
file. Buckets survive a policy change: a TAT is a point in time, meaningful
under the new rate too. A document may only tighten the file's limits
(:mod:`affinity_ratelimit.tighten`) unless the file sets ``allow_loosening``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from affinity import hookimpl
from affinity.errors import ConfigError
from affinity.models import Rejection, RequestInfo, SharedSettings
from affinity.plugin.options import Origin, overlay
from affinity.plugin.shared_settings import SettingsPlugin, remember
from affinity_ratelimit.gcra import NS, GcraTable
from affinity_ratelimit.headers import render
from affinity_ratelimit.options import NAME, RateLimitOptions
from affinity_ratelimit.policy import ClientKey, Limit, Policy, compile_policy
from affinity_ratelimit.tighten import loosening


@dataclass(frozen=True, slots=True)
class _InForce:
    """The policy in force and what was worked out from it, swapped as one reference.

    Choosing the limit for a path and parsing an address are most of a
    decision's cost, and the same paths and clients come back request after
    request, so both are remembered here, next to the policy they depend on:
    a new policy starts with empty caches.
    """

    policy: Policy = field(default_factory=Policy)
    limits: dict[tuple[str, str], Limit | None] = field(default_factory=dict)
    addresses: dict[str, tuple[str, str | int]] = field(default_factory=dict)


def _ceil_seconds(ns: int) -> int:
    return max(1, -(-ns // NS))


class RateLimiter(SettingsPlugin[RateLimitOptions, Policy]):
    """Per-client GCRA limits for one process; the instance is the plugin.

    :param clock: Seconds from a monotonic clock, injectable so tests need no sleep;
        by default ``time.monotonic_ns`` is read, whole nanoseconds with no float rounding.
    """

    name = NAME
    options_class = RateLimitOptions

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._now_ns: Callable[[], int] = (
            time.monotonic_ns if clock is None else lambda: round(clock() * NS)
        )
        self._in_force = _InForce()
        super().__init__()

    # -- configuration (the rest is SettingsPlugin's) -------------------------

    def configure(self, options: RateLimitOptions, source: str | None = None) -> None:
        """Compile the file's options; forgets every bucket, shared document and counter."""
        super().configure(options, source)
        self._table = GcraTable(options.max_keys)
        self._file_policy = self._in_force.policy

    def compile_settings(self, settings: SharedSettings) -> Policy:
        """Check a shared document; also refuse one that would loosen the file's limits."""
        policy = super().compile_settings(settings)
        problem = None if self.options.allow_loosening else loosening(self._file_policy, policy)
        if problem:
            source = f"shared settings {NAME!r} version {settings.version}"
            msg = (
                f"would loosen the config file's limits: {problem} (a shared document may only "
                f"tighten them unless [plugins.{NAME}] sets allow_loosening = true)"
            )
            raise ConfigError(msg, key=NAME, source=source)
        return policy

    def compile(self, options: RateLimitOptions, origin: Origin) -> Policy:
        return compile_policy(options, origin)

    def read_document(self, value: Any, origin: Origin) -> RateLimitOptions:
        """The file's options with the document laid over them key by key (null: default)."""
        if isinstance(value, Mapping) and "max_keys" in value:
            msg = "is per process; set it in the config file's [plugins.ratelimit] table"
            raise origin.error(msg, "max_keys")
        if isinstance(value, Mapping) and "allow_loosening" in value:
            msg = "is the operator's; only the config file's [plugins.ratelimit] table sets it"
            raise origin.error(msg, "allow_loosening")
        return overlay(self.options, value, origin)

    def install(self, file: Policy, shared: Policy | None, version: int) -> None:
        """Swap the policy in; the buckets stay (a TAT is meaningful under the new rate too)."""
        self._in_force = _InForce(policy=file if shared is None else shared)

    # -- request path -----------------------------------------------------------

    @hookimpl
    def affinity_reject_request(self, request: RequestInfo) -> Rejection | None:
        """Refuse a request over its client's limit (``429 rate_limited``, ``Retry-After``)."""
        return self.reject(request)

    def reject(self, request: RequestInfo) -> Rejection | None:
        """Refuse with ``429 rate_limited`` when the client is over its limit; None admits."""
        in_force = self._in_force
        policy = in_force.policy
        where = (request.role, request.path)
        try:
            limit = in_force.limits[where]
        except KeyError:
            limit = policy.select(*where)
            remember(in_force.limits, where, limit, request.path)
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
                remember(in_force.addresses, ip, (kind, value), ip)
            key = (limit.name, kind, value)
        decision = self._table.take(key, limit.cell, self._now_ns())
        if decision is None:
            return None
        self.count(limit.rule_id)
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
