"""What a referral process holds: the parts its routes, its watch and its admin API share.

One :class:`ReferralContext` is made per process by
:meth:`ReferralServer.make_context` and hangs on ``app.ctx.affinity``;
nothing is module-level.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from affinity.config import Config
from affinity.plugin.health import HealthSource
from affinity.plugin.manager import PluginManager
from affinity.plugin.policy import Policy
from affinity.plugin.registry import Registry, RegistryView
from affinity.plugin.settings import SettingsInForce
from affinity.referral.table import ServerTable
from affinity.tokens.jws import TokenIssuer, TokenVerifier
from affinity.tokens.keyring import KeyRing
from affinity.web.metrics import ReferralMetrics
from affinity.web.names import OriginRules


@dataclass(kw_only=True)
class ReferralContext:
    """Per-process state of a referral worker."""

    config: Config
    manager: PluginManager
    registry: Registry
    table: ServerTable
    policies: Mapping[str, Policy]
    services: frozenset[str]
    keyring: KeyRing
    issuer: TokenIssuer
    verifier: TokenVerifier
    metrics: ReferralMetrics
    health_sources: list[HealthSource] = field(default_factory=list)
    settings: SettingsInForce = field(init=False)
    """The shared settings documents in force (what ``GET /v1/settings`` lists)."""
    origin_rules: OriginRules = field(init=False)
    """What server origins registrations may have (``[registry]`` allow_http, allow_hosts)."""
    filtered: bool = False
    observed: bool = False
    settings_index: int = 1
    settings_event: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.origin_rules = OriginRules.from_config(self.config)
        self.settings = SettingsInForce(self.manager, refused=self.metrics.settings_refused)
        self.metrics.observe_plugins(self.manager.report_counters, self.settings.versions)

    def apply_view(self, view: RegistryView) -> None:
        """Take a registry view: servers into the table, changed settings to the plugins."""
        self.table.apply_view(view)
        if view.stale:
            self.table.stale_reason = view.stale_reason or self.table.stale_reason
        else:
            self.table.stale_reason = ""
        moved = False
        for settings in view.settings.values():
            moved = self.settings.offer(settings) or moved
        if moved:
            self._settings_moved()
        for service in self.table.services():
            self.policy_for(service)

    def _settings_moved(self) -> None:
        """Wake the app servers long-polling ``GET /v1/settings``."""
        self.settings_index += 1
        event, self.settings_event = self.settings_event, asyncio.Event()
        event.set()

    def mark_stale(self, reason: str) -> None:
        self.metrics.watch_failed(self.registry.name)
        self.table.stale = True
        self.table.stale_reason = reason

    async def refresh_view(self) -> None:
        """Read the registry now (after an admin write) instead of waiting for the watch."""
        self.apply_view(await self.registry.watch(-1, 0))

    def policy_for(self, service: str) -> Policy:
        """The policy of a service; services learnt from the registry get theirs on first sight."""
        policy = self.policies.get(service)
        if policy is None:
            policy = self.manager.make_policy(service, self.config)
            assert isinstance(self.policies, dict)
            self.policies[service] = policy
        return policy

    def service_summary(self) -> dict[str, Any]:
        """Per service: servers, assignable ones, and whether fewer than the panic share are."""
        services = sorted(self.table.services() | self.services)
        return {service: self.table.summary(service) for service in services}
