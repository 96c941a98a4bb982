"""The referral's side: watch Consul's health of every service and the KV prefix, serve one view.

Several blocking-query loops run in the background — one per service
(``/v1/health/service/<name>``, every instance with all its checks), one for
discovery (``/v1/catalog/services``: services carrying the affinity tag), one
for the KV prefix (drain flags, shared settings). Each feeds a board that
rebuilds the :class:`RegistryView` only when something an assignment depends
on changed, and numbers views itself: the index the referral sees is this
process's own counter, so it never goes backwards even when Consul's do.

While any loop fails the view is the last one, marked ``stale`` with the
reason (and after the agent came back without a service's servers, those
stay for a grace period, see :class:`Board`); the referral keeps assigning from it and shows it in
``GET /v1/servers``. A loop that gets an answer again clears its failure at
once, so the view is fresh within the back-off cap (at most ``wait``) of the
agent answering.

Load figures are not read from Consul: the referral's ``active`` health
source polls each server's health endpoint on top of this view (see
``docs/consul.md`` for why load is not written to KV).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from affinity.builtin.consul.blocking import BlockingLoop, Pacing
from affinity.builtin.consul.catalog import (
    discovered,
    drain_key,
    encode_settings,
    modify_index,
    new_epoch,
    read_kv,
    servers_from_entries,
    settings_document,
    settings_key,
)
from affinity.builtin.consul.client import ConsulClient
from affinity.builtin.consul.options import ConsulOptions
from affinity.errors import RegistrationFailed
from affinity.models import Server, SharedSettings
from affinity.plugin.registry import Registry, RegistryView
from affinity.web.names import STRICT, OriginRules

log = logging.getLogger("affinity.plugin.registry")

CAS_ATTEMPTS = 8


class Board:
    """What every loop last read, and the view made of it (rebuilt only on change).

    A service whose servers the agent forgot (it came back empty after a
    restart or an index reset) is *held*: its last assignable servers stay in
    the view, marked stale, until every one of them is passing again or the
    grace ends, whichever comes first; then the view follows the agent. Without
    it, every client would get 503 while the servers register again.
    """

    def __init__(self, grace: float = 0.0) -> None:
        self.grace = grace
        self.services: dict[str, tuple[Server, ...]] = {}
        self.draining: frozenset[str] = frozenset()
        self.settings: dict[str, SharedSettings] = {}
        self.failing: dict[str, str] = {}
        self.held: dict[str, tuple[tuple[Server, ...], asyncio.TimerHandle]] = {}
        self.latest: dict[str, tuple[Server, ...]] = {}
        self.view = RegistryView(index=1)
        self._changed = asyncio.Event()

    def failed(self, what: str, reason: str | None) -> None:
        if reason is None:
            if self.failing.pop(what, None) is not None:
                self.publish()
        elif what not in self.failing:
            self.failing[what] = reason
            self.publish()

    def hold(self, service: str) -> None:
        """The agent may have lost ``service``'s servers: keep those assignable now, for a while."""
        keep = tuple(s for s in self.services.get(service, ()) if s.assignable)
        if not keep or service in self.held or self.grace <= 0:
            return
        timer = asyncio.get_running_loop().call_later(self.grace, self._expire, service)
        self.held[service] = (keep, timer)

    def set_service(self, service: str, servers: tuple[Server, ...]) -> None:
        """The agent's answer for ``service``; a held one keeps its servers until all are back."""
        self.latest[service] = servers
        if service in self.held:
            kept, timer = self.held[service]
            back = {s.id for s in servers if s.assignable}
            if not {s.id for s in kept} <= back:
                self.publish()
                return
            timer.cancel()
            del self.held[service]
            log.info("every server of %s is back in Consul; following it again", service)
        self.services[service] = servers
        self.publish()

    def drop_service(self, service: str) -> None:
        self.services.pop(service, None)
        self.latest.pop(service, None)
        if (held := self.held.pop(service, None)) is not None:
            held[1].cancel()

    def _expire(self, service: str) -> None:
        kept, _ = self.held.pop(service)
        back = {s.id for s in self.latest.get(service, ()) if s.assignable}
        missing = sorted(s.id for s in kept if s.id not in back)
        log.warning(
            "%s: %s not back in Consul after %.1fs; following the agent",
            service,
            missing,
            self.grace,
        )
        self.services[service] = self.latest.get(service, ())
        self.publish()

    def close(self) -> None:
        for _, timer in self.held.values():
            timer.cancel()

    def publish(self) -> None:
        """Make a new view if servers, settings or staleness changed, and wake the watchers."""
        servers = tuple(
            sorted(
                (
                    replace(s, draining=True) if s.id in self.draining else s
                    for pool in self.services.values()
                    for s in pool
                ),
                key=lambda s: s.id,
            )
        )
        reasons = dict(self.failing)
        for service, (kept, _) in self.held.items():
            reasons[f"service {service}"] = (
                f"the Consul agent lost its servers (restarted or reset); keeping the last "
                f"{len(kept)} for up to {self.grace:.1f}s while they register again"
            )
        stale = bool(reasons)
        current = self.view
        if (servers, dict(self.settings), stale) == (
            current.servers,
            current.settings,
            current.stale,
        ):
            return
        reason = "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
        self.view = RegistryView(
            index=current.index + 1,
            servers=servers,
            settings=dict(self.settings),
            stale=stale,
            stale_reason=reason,
        )
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait_change(self, index: int, wait: float) -> RegistryView:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self.view.index == index:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self.view


class ConsulRegistry(Registry):
    """Servers, drain flags and shared settings from Consul, for one referral worker."""

    name = "consul"

    def __init__(
        self, options: ConsulOptions, services: frozenset[str], rules: OriginRules = STRICT
    ) -> None:
        self.options = options
        self.configured = services
        self.rules = rules
        self.board = Board(options.grace)
        self._client: ConsulClient | None = None
        self._loops: dict[str, tuple[BlockingLoop[Any], asyncio.Task[None]]] = {}
        self._seen: dict[str, tuple[int, int]] = {}
        self._pacing = Pacing(
            wait=options.wait,
            rate=options.watch_rate,
            burst=options.watch_burst,
            backoff_cap=min(options.backoff_cap, options.wait),
            reset_probe=options.reset_probe,
        )

    @property
    def client(self) -> ConsulClient:
        if self._client is None:
            self._client = ConsulClient(self.options)
        return self._client

    async def start(self) -> None:
        """Start every loop and wait (at most ``timeout``) for their first answers."""
        prefix = self.options.kv_prefix
        self._spawn(f"kv {prefix}", self._read_kv, self._apply_kv)
        for service in sorted(self.configured):
            self._watch_service(service)
        if self.options.discover:
            self._spawn("catalog services", self.client.catalog_services, self._apply_catalog)
        await self._settle(self.options.timeout)

    async def _settle(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (pending := [b for b, _ in self._loops.values() if not b.first_done.is_set()]) and (
            remaining := deadline - loop.time()
        ) > 0:
            waits = [asyncio.ensure_future(b.first_done.wait()) for b in pending]
            await asyncio.wait(waits, timeout=remaining)
            for waiter in waits:
                waiter.cancel()
        if self.board.failing:
            log.warning("starting with a stale view: %s", self.board.view.stale_reason)

    def _spawn(
        self,
        what: str,
        fetch: Callable[[int, float], Awaitable[tuple[int, Any]]],
        apply: Callable[[Any], None],
    ) -> None:
        loop: BlockingLoop[Any] = BlockingLoop(
            what, fetch, apply, self.board.failed, self._pacing, reset=self._on_reset
        )
        task = asyncio.get_running_loop().create_task(loop.run(), name=f"affinity.consul.{what}")
        task.add_done_callback(_report_crash)
        self._loops[what] = (loop, task)

    def _watch_service(self, service: str) -> None:
        what = f"service {service}"
        if what in self._loops:
            return
        name = self.options.consul_name(service)

        async def fetch(index: int, wait: float) -> tuple[int, list[Any]]:
            return await self.client.health_service(name, index, wait)

        def apply(entries: list[Any]) -> None:
            servers = servers_from_entries(entries, self.options.service_prefix, self.rules)
            self.board.set_service(service, tuple(s for s in servers if s.service == service))

        self._spawn(what, fetch, apply)

    def _unwatch_service(self, service: str) -> None:
        what = f"service {service}"
        _, task = self._loops.pop(what)
        task.cancel()
        self.board.drop_service(service)
        self.board.failing.pop(what, None)
        self.board.publish()

    def _on_reset(self, what: str) -> None:
        """A watch found the index gone back, or answers after failing: the agent may be new."""
        if what.startswith("service "):
            self.board.hold(what.removeprefix("service "))

    def _apply_catalog(self, services: Mapping[str, Any]) -> None:
        o = self.options
        wanted = discovered(services, o.service_prefix, o.tag) | self.configured
        for service in sorted(wanted):
            self._watch_service(service)
        for what in [w for w in self._loops if w.startswith("service ")]:
            held = what.removeprefix("service ") in self.board.held
            if what.removeprefix("service ") not in wanted and not held:
                self._unwatch_service(what.removeprefix("service "))

    async def _read_kv(self, index: int, wait: float) -> tuple[int, list[Any]]:
        return await self.client.kv_list(self.options.kv_prefix, index, wait)

    def _apply_kv(self, entries: list[Any]) -> None:
        self.board.draining, self.board.settings = read_kv(entries, self.options.kv_prefix)
        for document in self.board.settings.values():
            self._remember(document)
        self.board.publish()

    def _remember(self, document: SharedSettings) -> None:
        """The largest identity seen of each document, kept when the KV is lost."""
        seen = self._seen.get(document.name, (0, 0))
        self._seen[document.name] = max(seen, document.identity)

    # -- the Registry contract --------------------------------------------------------------

    async def watch(self, index: int, wait: float) -> RegistryView:
        return await self.board.wait_change(index, wait)

    async def set_draining(self, server_id: str, draining: bool) -> bool:
        """Write (or remove) the KV drain flag every referral watches."""
        if not any(s.id == server_id for s in self.board.view.servers):
            return False
        try:
            key = drain_key(self.options.kv_prefix, server_id)
        except ValueError as exc:
            raise RegistrationFailed(str(exc)) from exc
        if draining:
            await self.client.kv_put(key, b'{"draining":true}')
            self.board.draining = self.board.draining | {server_id}
        else:
            await self.client.kv_delete(key)
            self.board.draining = self.board.draining - {server_id}
        self.board.publish()
        return True

    async def put_settings(self, name: str, value: Mapping[str, Any]) -> SharedSettings:
        """Store a new version with check-and-set, so two referrals never write the same version.

        The next version of the stored document keeps its epoch; a document
        created (first, or after the agent lost its KV) starts at version 1 in
        a new epoch above every one this process has seen.
        """
        try:
            key = settings_key(self.options.kv_prefix, name)
        except ValueError as exc:
            raise RegistrationFailed(str(exc)) from exc
        for _ in range(CAS_ATTEMPTS):
            entry = await self.client.kv_get(key)
            stored = settings_document(name, entry.get("Value")) if entry else None
            if stored is not None:
                epoch, version = stored.epoch, stored.version + 1
            else:  # created (again: the agent may have lost its KV): a new, larger epoch
                highest, _ = self._seen.get(name, (0, 0))
                epoch, version = new_epoch(highest, time.time()), 1
            document = SharedSettings(name=name, version=version, value=dict(value), epoch=epoch)
            cas = modify_index(entry) if entry else 0
            if await self.client.kv_put(key, encode_settings(document), cas=cas):
                self._remember(document)
                self.board.settings = {**self.board.settings, name: document}
                self.board.publish()
                return document
        msg = f"shared settings {name!r} changed under us {CAS_ATTEMPTS} times in a row; try again"
        raise RegistrationFailed(msg)

    async def aclose(self) -> None:
        tasks = [task for _, task in self._loops.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loops.clear()
        self.board.close()
        if self._client is not None:
            await self._client.aclose()


def _report_crash(task: asyncio.Task[None]) -> None:
    """A loop that died of a bug would freeze its part of the view without a word; say so."""
    if not task.cancelled() and task.exception() is not None:
        log.error("Consul watch %s stopped", task.get_name(), exc_info=task.exception())
