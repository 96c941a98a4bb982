"""The referral's view of the servers: registry entries merged with health observations.

One table lives per worker process. The registry watch loop feeds it whole
views; health sources feed it observations; the request path reads pools.
Pools are rebuilt lazily: at once when a server's assignability changes, and
at most once per ``load_refresh`` seconds when only load figures changed, so a
large pool is not rebuilt on every health answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from affinity.models import HealthStatus, Load, Pool, Server, worst
from affinity.registry import RegistryView


@dataclass(slots=True)
class Observation:
    """What the health sources last said of one server."""

    status: HealthStatus = HealthStatus.PASSING
    load: Load | None = None
    draining: bool = False
    reason: str = ""
    checked_at: float = 0.0
    latency: float | None = None
    since: float = 0.0
    load_version: int = 0


@dataclass(slots=True)
class _PoolState:
    pool: Pool
    dirty: bool = False
    built_at: float = 0.0


class ServerTable:
    """Registry entries and health observations for all services, as pools."""

    def __init__(
        self,
        *,
        load_refresh: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._load_refresh = load_refresh
        self._registered: dict[str, Server] = {}
        self._observed: dict[str, Observation] = {}
        self._servers: dict[str, Server] = {}
        self._pools: dict[str, _PoolState] = {}
        self._services: frozenset[str] = frozenset()
        self._version = 0
        self.assignments: dict[str, int] = {}
        self.view_index = 0
        self.stale = False
        self.stale_reason = ""

    # -- feeding ---------------------------------------------------------------

    def apply_view(self, view: RegistryView) -> None:
        """Replace the registered servers with a registry view."""
        self.view_index = view.index
        self.stale = view.stale
        self._registered = {s.id: s for s in view.servers}
        for sid in list(self._observed):
            if sid not in self._registered:
                del self._observed[sid]
        now = self._wall()
        for sid in self._registered:
            self._observed.setdefault(sid, Observation(since=now))
        self._servers = {sid: self._merge(sid) for sid in self._registered}
        self._services = frozenset(s.service for s in self._servers.values())
        self._pools.clear()

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
    ) -> None:
        """Record a health observation for a server (ignored for unknown servers)."""
        obs = self._observed.get(server_id)
        if obs is None:
            return
        before = self._servers[server_id]
        if status is not obs.status:
            obs.since = self._wall()
        obs.status = status
        obs.reason = reason
        obs.checked_at = self._wall()
        obs.latency = latency
        if draining is not None:
            obs.draining = draining
        if load is not None:
            obs.load = load
            obs.load_version += 1
        after = self._merge(server_id)
        self._servers[server_id] = after
        state = self._pools.get(after.service)
        if state is None:
            return
        if before.assignable != after.assignable or before.at_capacity != after.at_capacity:
            del self._pools[after.service]
        else:
            state.dirty = True

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

    # -- reading -----------------------------------------------------------------

    def get(self, server_id: str) -> Server | None:
        return self._servers.get(server_id)

    def observation(self, server_id: str) -> Observation | None:
        return self._observed.get(server_id)

    def services(self) -> frozenset[str]:
        """Services with at least one registered server."""
        return self._services

    def pool(self, service: str) -> Pool:
        """The pool of a service, rebuilt if it changed (load-only changes are batched)."""
        state = self._pools.get(service)
        now = self._clock()
        if state is not None and not (state.dirty and now - state.built_at >= self._load_refresh):
            return state.pool
        self._version += 1
        members = {sid: s for sid, s in self._servers.items() if s.service == service}
        pool = Pool.build(service, members, version=self._version)
        self._pools[service] = _PoolState(pool=pool, built_at=now)
        return pool

    def note_assigned(self, server_id: str) -> None:
        self.assignments[server_id] = self.assignments.get(server_id, 0) + 1

    def describe(self, server: Server) -> dict[str, Any]:
        """A server as ``GET /v1/servers`` shows it."""
        obs = self._observed.get(server.id) or Observation()
        return {
            "id": server.id,
            "service": server.service,
            "url": server.url,
            "weight": server.weight,
            "meta": dict(server.meta),
            "health": server.health.value,
            "draining": server.draining,
            "assignable": server.assignable and not server.at_capacity,
            "load": {
                "active_clients": server.load.active_clients,
                "inflight": server.load.inflight,
                "capacity": server.load.capacity,
            },
            "last_check": {
                "at": obs.checked_at or None,
                "latency": obs.latency,
                "reason": obs.reason,
            },
            "since": server.since,
            "assignments": self.assignments.get(server.id, 0),
        }
