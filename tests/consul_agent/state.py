"""What a one-node Consul cluster holds: services, their checks, KV, and one index.

Every change takes the next index (Consul's Raft index), and every read reports
the latest. Consul reports finer indexes (per service, per KV prefix), so here
a blocking read wakes more often than on a real agent; its documentation allows
exactly that: a read that returns is no promise of change.
See https://developer.hashicorp.com/consul/api-docs/features/blocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp

from tests.consul_agent.probe import http_probe

log = logging.getLogger("consul_standin")

T = TypeVar("T")

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
MAINTENANCE = "_service_maintenance:"
DEFAULT_REASON = (
    "Maintenance mode is enabled for this service, "
    "but no reason was provided. This is a default message."
)


@dataclass(frozen=True, slots=True)
class StandInConfig:
    """Knobs of the stand-in; the timing ones exist so tests need not wait real minutes."""

    host: str = "127.0.0.1"
    node_name: str = "standin-node"
    datacenter: str = "dc1"
    # With tokens, ACLs are on: a request without one is the anonymous token (deny all).
    acl_tokens: frozenset[str] = frozenset()
    # Consul raises shorter check intervals to 1 s ...
    min_check_interval: float = 1.0
    # ... and DeregisterCriticalServiceAfter to 1 min; its reaper looks every 30 s.
    deregister_min: float = 60.0
    reap_interval: float = 30.0
    # What HTTP checks trust besides the system store (a real agent uses the system store).
    check_ca_file: str | None = None
    # False: GET /v1/agent/service/<id> is missing (a 404 page), as on agents without it.
    agent_service_endpoint: bool = True


@dataclass(slots=True)
class Service:
    id: str
    name: str
    tags: list[str] = field(default_factory=list)
    address: str = ""
    port: int = 0
    meta: dict[str, str] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class Check:
    """An HTTP check, or a maintenance check (no ``http``, always critical)."""

    check_id: str
    name: str
    service_id: str
    status: str = CRITICAL
    output: str = ""
    notes: str = ""
    http: str = ""
    interval: float = 0.0
    timeout: float = 0.0
    tls_skip_verify: bool = False
    tls_server_name: str = ""
    deregister_after: float = 0.0
    critical_since: float | None = None
    runner: asyncio.Task[None] | None = None


# The node's own check, in every health entry; the stand-in's node is always alive.
SERF = Check("serfHealth", "Serf Health Status", "", PASSING, "Agent alive and reachable")


@dataclass(slots=True)
class KVEntry:
    key: str
    value: bytes
    flags: int
    create_index: int
    modify_index: int


class AgentState:
    """Agent, catalog and KV in one."""

    def __init__(self, config: StandInConfig) -> None:
        self.config = config
        self.blocking_queries = 0
        self._changed = asyncio.Event()
        self._parked = asyncio.Event()
        self.unfrozen = asyncio.Event()
        self.unfrozen.set()
        self._reaper: asyncio.Task[None] | None = None
        self._wipe()

    def _wipe(self) -> None:
        self.index = 1
        self.services: dict[str, Service] = {}
        self.checks: dict[str, Check] = {}
        self.kv: dict[str, KVEntry] = {}

    # -- lifecycle and test hooks

    def start(self) -> None:
        """Start the reaper; call on the loop that serves requests."""
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def close(self) -> None:
        tasks = [t for t in (self._reaper, *(c.runner for c in self.checks.values())) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def reset(self) -> None:
        """Forget everything, index back to 1: an agent restarted without a data directory."""
        for check in self.checks.values():
            if check.runner is not None:
                check.runner.cancel()
        self._wipe()
        self._publish()

    def force_index(self, index: int) -> None:
        """The index back to at most ``index``, as after a snapshot restore."""
        self.index = max(index, 1)
        for entry in self.kv.values():
            entry.create_index = min(entry.create_index, self.index)
            entry.modify_index = min(entry.modify_index, self.index)
        self._publish()

    # -- index and blocking

    def _commit(self) -> int:
        """Take the next index and wake every blocking read."""
        self.index += 1
        self._publish()
        return self.index

    def _publish(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, probe: Callable[[], tuple[bool, T]], timeout: float) -> T:
        """Run ``probe`` after every write until it says done or ``timeout`` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.blocking_queries += 1
        self._parked.set()
        self._parked = asyncio.Event()
        try:
            while True:
                changed = self._changed
                done, value = probe()
                remaining = deadline - loop.time()
                if done or remaining <= 0:
                    return value
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            self.blocking_queries -= 1

    async def until_parked(self, count: int) -> None:
        """Return once ``count`` blocking reads are waiting."""
        while self.blocking_queries < count:
            await self._parked.wait()

    # -- services and checks

    def checks_of(self, service_id: str) -> list[Check]:
        return sorted(
            (c for c in self.checks.values() if c.service_id == service_id),
            key=lambda c: c.check_id,
        )

    def register(self, service: Service, check: Check | None) -> None:
        """Add or replace a service; a check that keeps its ID keeps its status and output."""
        self.services[service.id] = service
        if check is not None:
            self._install(check)
        self._commit()

    def _install(self, check: Check) -> None:
        old = self.checks.get(check.check_id)
        check.critical_since = time.monotonic()
        if old is not None:
            if old.runner is not None:
                old.runner.cancel()
            check.status, check.output = old.status, old.output
            check.critical_since = old.critical_since
        self.checks[check.check_id] = check
        if check.http:
            check.runner = asyncio.get_running_loop().create_task(self._run(check))
            check.runner.add_done_callback(_report_crash)

    def deregister(self, service_id: str) -> None:
        """Remove the service and every check of it."""
        del self.services[service_id]
        for check in self.checks_of(service_id):
            if check.runner is not None:
                check.runner.cancel()
            del self.checks[check.check_id]
        self._commit()

    def set_status(self, check: Check, status: str, output: str) -> None:
        """A check's new result. Only a status change reaches the catalog at once (Consul
        defers output-only changes by ``check_update_interval``, 5 min), so only it moves
        the index."""
        if self.checks.get(check.check_id) is not check or check.status == status:
            return
        check.status, check.output = status, output
        check.critical_since = time.monotonic() if status == CRITICAL else None
        self._commit()

    def set_maintenance(self, service: Service, enable: bool, reason: str) -> None:
        """Add or remove the critical ``_service_maintenance:<id>`` check; idempotent."""
        check_id = MAINTENANCE + service.id
        if enable == (check_id in self.checks):
            return
        if enable:
            notes = reason or DEFAULT_REASON
            self.checks[check_id] = Check(
                check_id, "Service Maintenance Mode", service.id, notes=notes
            )
        else:
            del self.checks[check_id]
        self._commit()

    async def _run(self, check: Check) -> None:
        """Probe every interval after a random first pause, as Consul's check runners do."""
        interval = max(check.interval, self.config.min_check_interval)
        tls: ssl.SSLContext | bool = False
        if not check.tls_skip_verify:
            tls = ssl.create_default_context(cafile=self.config.check_ca_file)
        await asyncio.sleep(random.uniform(0, interval))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            while True:
                status, output = await http_probe(
                    http, check.http, check.timeout or 10.0, tls, check.tls_server_name
                )
                self.set_status(check, status, output)
                await asyncio.sleep(interval)

    async def _reap_forever(self) -> None:
        """Deregister services with a check critical for longer than its
        DeregisterCriticalServiceAfter (raised to ``deregister_min``)."""
        while True:
            await asyncio.sleep(self.config.reap_interval)
            now = time.monotonic()
            for check in list(self.checks.values()):
                limit = max(check.deregister_after, self.config.deregister_min)
                since = check.critical_since
                expired = since is not None and now - since > limit
                if check.deregister_after and expired and check.service_id in self.services:
                    log.info("reaping %s: %s critical", check.service_id, check.check_id)
                    self.deregister(check.service_id)

    # -- KV

    def kv_read(self, key: str, recurse: bool) -> list[KVEntry]:
        """The entry at ``key``, or with ``recurse`` every entry under it, by key."""
        return [
            e for k, e in sorted(self.kv.items()) if k == key or (recurse and k.startswith(key))
        ]

    def kv_put(self, key: str, value: bytes, flags: int, cas: int | None) -> bool:
        """Write; with ``cas``, only if the key's ModifyIndex is ``cas`` (0: only if absent)."""
        entry = self.kv.get(key)
        if cas is not None and (entry.modify_index if entry else 0) != cas:
            return False
        index = self._commit()
        if entry is None:
            self.kv[key] = KVEntry(key, value, flags, index, index)
        else:
            entry.value, entry.flags, entry.modify_index = value, flags, index
        return True

    def kv_delete(self, key: str, recurse: bool) -> None:
        for gone in [k for k in self.kv if k == key or (recurse and k.startswith(key))]:
            del self.kv[gone]
        self._commit()


def _report_crash(task: asyncio.Task[None]) -> None:
    """A check runner that died would freeze its check's status without a word; say so."""
    if not task.cancelled() and task.exception() is not None:
        log.error("check runner crashed", exc_info=task.exception())
