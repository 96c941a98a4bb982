"""The embedded registry: servers from the config file plus those registered through the admin API.

It needs no other service. Registrations made at run time are kept in memory
and, when ``referral.state_file`` is set, persisted so that a referral restart
keeps them and so that all worker processes of one referral see the same view
(each worker watches the file). Without a state file it holds state in memory
only, which is right for a single worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from affinity.builtin.embedded.statefile import State, StateFile, empty_state
from affinity.config import Config
from affinity.errors import ConfigError
from affinity.models import Server, SharedSettings
from affinity.plugin import hookimpl
from affinity.plugin.registry import Registry, RegistryView
from affinity.web.names import OriginRules, check_server

log = logging.getLogger("affinity.plugin.registry")

POLL_INTERVAL = 0.2


class EmbeddedRegistry(Registry):
    """Config servers plus admin-API registrations, optionally persisted to a state file."""

    name = "embedded"

    def __init__(self, config: Config) -> None:
        self._config = config
        self._rules = OriginRules.from_config(config)
        self._static = _static_servers(config, self._rules)
        self._refused: dict[str, str] = {}
        path = config.referral.state_file
        self._file = StateFile(path) if path is not None else None
        self._state: State = empty_state()
        self._identity: tuple[int, int, int] | None = None
        self._changed = asyncio.Event()
        self._view = RegistryView(index=0)

    async def start(self) -> None:
        self._reload()

    def _reload(self) -> None:
        if self._file is not None:
            self._identity = self._file.identity()
            self._state = self._file.read()
        self._view = self._build_view()

    def _build_view(self) -> RegistryView:
        removed = set(self._state["removed"])
        servers = {s.id: s for s in self._static if s.id not in removed}
        for sid, entry in self._state["servers"].items():
            server = self._checked(sid, entry)
            if server is not None:
                servers[sid] = server
        draining = set(self._state["draining"])
        view = tuple(
            _with_draining(s, s.id in draining) for s in sorted(servers.values(), key=_by_id)
        )
        settings = {
            name: SharedSettings(name=name, version=int(doc["version"]), value=doc["value"])
            for name, doc in self._state["settings"].items()
        }
        return RegistryView(index=int(self._state["index"]), servers=view, settings=settings)

    def _checked(self, sid: str, entry: Mapping[str, Any]) -> Server | None:
        """A state-file entry that passes the checks of the admin API, or None (logged once)."""
        try:
            server = check_server(
                server_id=sid,
                service=entry["service"],
                url=entry["url"],
                weight=entry.get("weight", 1),
                meta=entry.get("meta"),
                rules=self._rules,
            )
        except ValueError as exc:
            if self._refused.get(sid) != str(exc):
                self._refused[sid] = str(exc)
                log.warning("state file %s: refused server entry %r: %s", self._file, sid, exc)
            return None
        self._refused.pop(sid, None)
        return server

    async def watch(self, index: int, wait: float) -> RegistryView:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while self._view.index == index:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._changed.clear()
            timeout = min(remaining, POLL_INTERVAL) if self._file else remaining
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
            if self._file is not None and self._file.identity() != self._identity:
                self._reload()
        return self._view

    def _apply(self, change: Any) -> None:
        if self._file is not None:
            self._state = self._file.update(change)
            self._identity = self._file.identity()
        else:
            change(self._state)
            self._state["index"] += 1
        self._view = self._build_view()
        self._changed.set()

    async def register(self, server: Server) -> None:
        entry = {
            "service": server.service,
            "url": server.url,
            "weight": server.weight,
            "meta": dict(server.meta),
        }

        def change(state: State) -> None:
            state["servers"][server.id] = entry
            state["removed"] = [r for r in state["removed"] if r != server.id]

        await self._run(change)

    async def deregister(self, server_id: str) -> bool:
        known = any(s.id == server_id for s in self._view.servers)

        def change(state: State) -> None:
            state["servers"].pop(server_id, None)
            state["draining"] = [d for d in state["draining"] if d != server_id]
            if server_id not in state["removed"] and self._is_static(server_id):
                state["removed"].append(server_id)

        if known:
            await self._run(change)
        return known

    async def set_draining(self, server_id: str, draining: bool) -> bool:
        if not any(s.id == server_id for s in self._view.servers):
            return False

        def change(state: State) -> None:
            rest = [d for d in state["draining"] if d != server_id]
            state["draining"] = [*rest, server_id] if draining else rest

        await self._run(change)
        return True

    async def put_settings(self, name: str, value: Mapping[str, Any]) -> SharedSettings:
        current = self._view.settings.get(name)
        version = (current.version if current else 0) + 1

        def change(state: State) -> None:
            previous = state["settings"].get(name, {}).get("version", 0)
            state["settings"][name] = {"version": max(version, previous + 1), "value": dict(value)}

        await self._run(change)
        return self._view.settings[name]

    async def _run(self, change: Any) -> None:
        if self._file is not None:
            await asyncio.to_thread(self._apply, change)
        else:
            self._apply(change)

    def _is_static(self, server_id: str) -> bool:
        return any(static.id == server_id for static in self._static)


def _static_servers(config: Config, rules: OriginRules) -> tuple[Server, ...]:
    """The servers of the config file, checked as any registration is; ConfigError if not."""
    servers = []
    for service, service_settings in config.services.items():
        for i, static in enumerate(service_settings.servers):
            try:
                servers.append(
                    check_server(
                        server_id=static.id,
                        service=service,
                        url=static.url,
                        weight=static.weight,
                        meta=dict(static.meta),
                        rules=rules,
                    )
                )
            except ValueError as exc:
                key = f"services.{service}.servers[{i}]"
                raise ConfigError(str(exc), key=key, source=config.source) from exc
    return tuple(servers)


def _by_id(server: Server) -> str:
    return server.id


def _with_draining(server: Server, draining: bool) -> Server:
    return replace(server, draining=True) if draining else server


@hookimpl(trylast=True)
def affinity_make_registry(config: Config) -> Registry | None:
    """Provide the embedded registry for ``registry.backend = "embedded"``."""
    if config.registry.backend != "embedded":
        return None
    for key in config.registry.options:
        msg = "the embedded registry takes no options (they are for another backend)"
        raise ConfigError(msg, key=f"registry.options.{key}", source=config.source)
    if config.referral.workers > 1 and config.referral.state_file is None:
        msg = "more than one worker needs referral.state_file so workers share registrations"
        raise ConfigError(msg, key="referral.state_file", source=config.source)
    return EmbeddedRegistry(config)
