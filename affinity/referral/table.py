"""The referral's view of the servers: registry entries merged with health observations.

One table lives per worker process. The registry watch loop feeds it whole
views; health sources feed it observations; the request path reads pools.
Pools are rebuilt lazily: at once when a server's assignability changes, and
at most once per ``load_refresh`` seconds when only load figures changed, so a
large pool is not rebuilt on every health answer.

Slow start: a server that becomes assignable after the first view (added,
recovered or resumed) has its weight ramped linearly from 1 % to 100 % over
``slow_start`` seconds, so a cold server is not handed a flood of clients. A
pool holding a ramping server is rebuilt every ``load_refresh`` seconds (or
every twentieth of ``slow_start`` when that is longer, so that a long ramp of
a large pool is not an O(n) rebuild twice a second) until
the ramp ends; the first view does not ramp, so restarting a referral does not
slow-start a fleet that is already serving.

First check: where a health source runs, a server the table has not seen
before (newly registered, or registered again with another URL) is critical
until a source first reports on it, so a registration alone never brings it
clients; servers of the first view wait for their first check too, without
slow start. With no health source, a registration is trusted as it is.

Panic threshold: when fewer than ``panic_threshold`` of a service's servers can
take new clients, the table logs a warning once per crossing (and once when the
service is back above it). It keeps assigning to the few that can: unlike
Envoy it never sends clients to servers it believes unhealthy, because an
affinity client fails over by itself, through the referral, when a server
does not answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from affinity.models import HealthStatus, Load, Pool, Server, worst
from affinity.plugin.registry import RegistryView

log = logging.getLogger("affinity.referral")

MIN_RAMP = 0.01
"""Share of its weight a server gets at the start of slow start (never 0: it must be drawable)."""

RAMP_STEPS = 20
"""Pool rebuilds a slow-start ramp needs at least (more when ``load_refresh`` is shorter)."""


@dataclass(slots=True)
class Observation:
    """What the health sources last said of one server.

    ``failure`` and ``failed_at`` keep the last failed check, which a later good
    check does not erase; ``ramp_from`` is the monotonic time a slow-start ramp
    began, None when the server is at full weight. ``awaiting`` is True until
    a health source first reports on the server (it is critical meanwhile);
    ``seed`` marks a server of the first view, which does not slow-start.
    """

    status: HealthStatus = HealthStatus.PASSING
    load: Load | None = None
    draining: bool = False
    reason: str = ""
    checked_at: float = 0.0
    latency: float | None = None
    since: float = 0.0
    load_version: int = 0
    failure: str = ""
    failed_at: float = 0.0
    ramp_from: float | None = None
    awaiting: bool = False
    seed: bool = False


@dataclass(slots=True)
class _PoolState:
    pool: Pool
    dirty: bool = False
    built_at: float = 0.0
    ramp_due: float = float("inf")


class ServerTable:
    """Registry entries and health observations for all services, as pools."""

    def __init__(
        self,
        *,
        load_refresh: float = 0.5,
        slow_start: float = 0.0,
        panic_threshold: float = 0.0,
        await_first_check: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._await_first_check = await_first_check
        self._clock = clock
        self._wall = wall
        self._load_refresh = load_refresh
        self._slow_start = slow_start
        self._panic_threshold = panic_threshold
        self._registered: dict[str, Server] = {}
        self._observed: dict[str, Observation] = {}
        self._servers: dict[str, Server] = {}
        self._by_service: dict[str, tuple[str, ...]] = {}
        self._services: frozenset[str] = frozenset()
        self._pools: dict[str, _PoolState] = {}
        self._below: set[str] = set()
        self._seeded = False
        self._version = 0
        self.assignments: dict[str, int] = {}
        self.on_health_change: Callable[[Server, Server], None] | None = None
        """Called with the server before and after a health observation changed its health."""
        self.on_check: Callable[[Server, float], None] | None = None
        """Called with the server and the check's duration for each timed observation."""
        self.view_index = 0
        self.stale = False
        self.stale_reason = ""

    # -- feeding ---------------------------------------------------------------

    def apply_view(self, view: RegistryView) -> None:
        """Replace the registered servers with a registry view."""
        self.view_index = view.index
        self.stale = view.stale
        before = self._servers
        previous = self._registered
        self._registered = {s.id: s for s in view.servers}
        for sid in list(self._observed):
            old = previous.get(sid)
            if sid not in self._registered or (old and old.url != self._registered[sid].url):
                del self._observed[sid]  # gone, or moved: a new server to check
        now = self._wall()
        for sid in self._registered:
            if sid not in self._observed:
                self._observed[sid] = self._new_observation(now)
        self._servers = {sid: self._merge(sid) for sid in self._registered}
        if self._seeded:
            for sid, server in self._servers.items():
                self._note_transition(before.get(sid), server)
        self._seeded = True
        members: dict[str, list[str]] = {}
        for sid, server in self._servers.items():
            members.setdefault(server.service, []).append(sid)
        self._by_service = {service: tuple(ids) for service, ids in members.items()}
        self._services = frozenset(self._by_service)
        self._pools.clear()
        for service in self._by_service.keys() | self._below:
            self._check_threshold(service)

    def _new_observation(self, now: float) -> Observation:
        """A server not seen before: critical until its first check when a health source runs."""
        if not self._await_first_check:
            return Observation(since=now, seed=not self._seeded)
        return Observation(
            status=HealthStatus.CRITICAL,
            reason="waiting for its first health check",
            since=now,
            awaiting=True,
            seed=not self._seeded,
        )

    def servers(self) -> Iterable[Server]:
        """The merged servers of all services."""
        return self._servers.values()

    def set_health(
        self,
        server_id: str,
        status: HealthStatus,
        *,
        load: Load | None = None,
        draining: bool | None = None,
        reason: str = "",
        latency: float | None = None,
        failed: bool = False,
    ) -> None:
        """Record a health observation for a server (ignored for unknown servers)."""
        obs = self._observed.get(server_id)
        if obs is None:
            return
        before = self._servers[server_id]
        first = obs.awaiting
        obs.awaiting = False
        self._observe(obs, status, reason, latency, failed)
        if draining is not None:
            obs.draining = draining
        if load is not None:
            obs.load = load
            obs.load_version += 1
        after = self._merge(server_id)
        self._servers[server_id] = after
        if not (first and obs.seed):  # a fleet already serving does not slow-start on restart
            self._note_transition(before, after)
        self._notify(before, after, latency)
        if (
            first
            or before.assignable != after.assignable
            or before.at_capacity != after.at_capacity
        ):
            self._pools.pop(after.service, None)
            self._check_threshold(after.service)
        elif after.service in self._pools:
            self._pools[after.service].dirty = True

    def _notify(self, before: Server, after: Server, latency: float | None) -> None:
        if latency is not None and self.on_check is not None:
            self.on_check(after, latency)
        if before.health is not after.health and self.on_health_change is not None:
            self.on_health_change(before, after)

    def _observe(
        self,
        obs: Observation,
        status: HealthStatus,
        reason: str,
        latency: float | None,
        failed: bool,
    ) -> None:
        now = self._wall()
        if status is not obs.status:
            obs.since = now
        obs.status = status
        obs.reason = reason
        obs.checked_at = now
        obs.latency = latency
        if failed:
            obs.failure = reason
            obs.failed_at = now

    def _merge(self, server_id: str) -> Server:
        reg = self._registered[server_id]
        obs = self._observed[server_id]
        return replace(
            reg,
            health=worst(reg.health, obs.status),
            draining=reg.draining or obs.draining,
            load=obs.load if obs.load is not None else reg.load,
            since=obs.since,
            load_version=obs.load_version,
        )

    def _note_transition(self, before: Server | None, after: Server) -> None:
        """Start a slow-start ramp when a server becomes assignable (added, recovered, resumed)."""
        if self._slow_start > 0 and after.assignable and (before is None or not before.assignable):
            self._observed[after.id].ramp_from = self._clock()

    def _ramp(self, server_id: str, now: float) -> float:
        """The share of its weight a server has now: below 1.0 during slow start."""
        obs = self._observed.get(server_id)
        if obs is None or obs.ramp_from is None:
            return 1.0
        elapsed = now - obs.ramp_from
        if elapsed >= self._slow_start:
            obs.ramp_from = None
            return 1.0
        return max(MIN_RAMP, elapsed / self._slow_start)

    # -- panic threshold -------------------------------------------------------------

    def _counts(self, service: str) -> tuple[int, int]:
        """Servers of a service, and how many of them can take new clients."""
        ids = [
            sid for sid in self._by_service.get(service, ()) if not self._observed[sid].awaiting
        ]  # a server not yet checked says nothing about the service's health
        ready = sum(1 for sid in ids if _takes_clients(self._servers[sid]))
        return len(ids), ready

    def _is_below(self, total: int, ready: int) -> bool:
        return total > 0 and ready < self._panic_threshold * total

    def _check_threshold(self, service: str) -> None:
        """Log once when a service crosses the panic threshold, either way."""
        total, ready = self._counts(service)
        below = self._is_below(total, ready)
        if below == (service in self._below):
            return
        share = f"{self._panic_threshold:.0%}"
        if below:
            self._below.add(service)
            log.warning(
                "service %r: only %d of %d servers can take new clients, below the panic "
                "threshold of %s; new clients go to those only (the others are critical, "
                "draining or full)",
                service,
                ready,
                total,
                share,
            )
        else:
            self._below.discard(service)
            log.warning(
                "service %r: %d of %d servers can take new clients, back above %s",
                service,
                ready,
                total,
                share,
            )

    # -- reading -----------------------------------------------------------------

    def get(self, server_id: str) -> Server | None:
        return self._servers.get(server_id)

    def observation(self, server_id: str) -> Observation | None:
        return self._observed.get(server_id)

    def services(self) -> frozenset[str]:
        """Services with at least one registered server."""
        return self._services

    def pool(self, service: str) -> Pool:
        """The pool of a service, rebuilt if it changed (load-only and ramp changes batched)."""
        state = self._pools.get(service)
        now = self._clock()
        if state is not None and not self._due(state, now):
            return state.pool
        self._version += 1
        members: dict[str, Server] = {}
        ramping = False
        for sid in self._by_service.get(service, ()):
            server = self._servers[sid]
            ramp = self._ramp(sid, now)
            if ramp < 1.0:
                server, ramping = replace(server, ramp=ramp), True
            members[sid] = server
        pool = Pool.build(service, members, version=self._version)
        step = max(self._load_refresh, self._slow_start / RAMP_STEPS)
        due = now + step if ramping else float("inf")
        self._pools[service] = _PoolState(pool=pool, built_at=now, ramp_due=due)
        return pool

    def _due(self, state: _PoolState, now: float) -> bool:
        """True when a built pool must be rebuilt: batched load changes, or a ramp step."""
        return now >= state.ramp_due or (state.dirty and now - state.built_at >= self._load_refresh)

    def summary(self, service: str) -> dict[str, Any]:
        """Servers of a service, how many can take new clients, and whether that is too few."""
        pool = self.pool(service)
        total, ready = len(pool.servers), len(pool.assignable)
        return {
            "total": total,
            "assignable": ready,
            "below_threshold": self._is_below(total, ready),
        }

    def note_assigned(self, server_id: str) -> None:
        self.assignments[server_id] = self.assignments.get(server_id, 0) + 1

    def describe(self, server: Server) -> dict[str, Any]:
        """A server as ``GET /v1/servers`` shows it."""
        obs = self._observed.get(server.id) or Observation()
        ramp = self._ramp(server.id, self._clock())
        return {
            "id": server.id,
            "service": server.service,
            "url": server.url,
            "weight": server.weight,
            "effective_weight": round(server.weight * ramp, 3),
            "slow_start": ramp < 1.0,
            "meta": dict(server.meta),
            "health": server.health.value,
            "draining": server.draining,
            "at_capacity": server.at_capacity,
            "assignable": _takes_clients(server),
            "load": server.load.figures(),
            "last_check": {
                "at": obs.checked_at or None,
                "latency": obs.latency,
                "reason": obs.reason,
            },
            "last_failure": {"at": obs.failed_at or None, "reason": obs.failure},
            "awaiting_check": obs.awaiting,
            "since": server.since,
            "assignments": self.assignments.get(server.id, 0),
        }


def _takes_clients(server: Server) -> bool:
    """True when new clients may be sent to a server (the test ``Pool.build`` applies)."""
    return server.assignable and not server.at_capacity
