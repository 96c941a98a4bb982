"""The referral service: a Sanic app built by :class:`ReferralServer`.

A deployment uses ``ReferralServer`` as it is (``affinity referral``) or
subclasses it to add routes, defaults or behaviour: override :meth:`setup` to
add routes to the Sanic app, or any ``make_*`` method to change a part.
Everything the request path needs hangs on ``app.ctx.affinity`` (a
:class:`ReferralContext`), made per worker process; nothing is module-level.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import importlib
import itertools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sanic import HTTPResponse, Request, Sanic

from affinity.config import Config
from affinity.models import SharedSettings
from affinity.plugin.health import HealthSource
from affinity.plugin.manager import PluginManager
from affinity.plugin.policy import Policy
from affinity.plugin.registry import Registry, RegistryView
from affinity.referral import admin as admin_routes
from affinity.referral import assign as assign_routes
from affinity.referral.openapi import SPEC
from affinity.referral.table import ServerTable
from affinity.referral.watch import watch_registry
from affinity.tokens.jws import KeyRing, TokenIssuer, TokenVerifier
from affinity.tokens.keyring import load_keyring
from affinity.web.http import (
    json_response,
    new_app,
    rejection_response,
    request_info,
)
from affinity.web.metrics import CONTENT_TYPE, ReferralMetrics

log = logging.getLogger("affinity.referral")
_names = itertools.count(1)


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
    admin_token: str | None
    metrics: ReferralMetrics
    health_sources: list[HealthSource] = field(default_factory=list)
    settings: dict[str, SharedSettings] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    """Per document, the version last refused, so that a bad one is reported once."""
    filtered: bool = False
    observed: bool = False
    settings_index: int = 1
    settings_event: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.metrics.observe_plugins(self.manager.report_counters, self.settings_versions)

    def settings_versions(self) -> dict[str, int]:
        """The version in force of each shared settings document."""
        return {name: settings.version for name, settings in self.settings.items()}

    def apply_view(self, view: RegistryView) -> None:
        """Take a registry view: servers into the table, changed settings to the plugins."""
        self.table.apply_view(view)
        if view.stale:
            self.table.stale_reason = view.stale_reason or self.table.stale_reason
        else:
            self.table.stale_reason = ""
        for name, settings in view.settings.items():
            current = self.settings.get(name)
            if current is None or settings.version > current.version:
                if self.refused.get(name) == settings.version:
                    continue  # refused and reported once already
                refusal = self.manager.apply_settings(settings)
                if refusal is not None:
                    self.refused[name] = settings.version
                    self.metrics.settings_refused(name)
                    log.warning(
                        "refused shared settings %r version %d whole, version %d stays: %s",
                        name,
                        settings.version,
                        current.version if current else 0,
                        refusal,
                    )
                    continue
                self.settings[name] = settings
                self._settings_moved()
        for service in self.table.services():
            self.policy_for(service)
        # A large view is long-lived: keep the cyclic collector from rescanning it
        # on every full collection (a per-request cost that grows with the pool).
        gc.freeze()

    def _settings_moved(self) -> None:
        """Wake the app servers long-polling ``GET /v1/settings``."""
        self.settings_index += 1
        event, self.settings_event = self.settings_event, asyncio.Event()
        event.set()

    def mark_stale(self, reason: str) -> None:
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


class ReferralServer:
    """Builds and runs the referral service; subclass to add routes or change parts."""

    role = "referral"

    def __init__(
        self,
        config: Config,
        *,
        plugins: Iterable[object] = (),
        manager: PluginManager | None = None,
    ) -> None:
        self.config = config
        self.manager = manager or PluginManager(plugins=plugins)
        self.manager.configure(config)
        # Fail at start-up, not on the first request, on bad policies or keys.
        for service in config.services:
            self.manager.make_policy(service, config)
        self.keyring = load_keyring(config)

    # -- parts a subclass may replace ------------------------------------------------

    def make_context(self) -> ReferralContext:
        config = self.config
        table = ServerTable(
            slow_start=config.health.slow_start, panic_threshold=config.health.panic_threshold
        )
        policies = {s: self.manager.make_policy(s, config) for s in config.services}
        tokens = config.tokens
        return ReferralContext(
            config=config,
            manager=self.manager,
            registry=self.manager.make_registry(config),
            table=table,
            policies=policies,
            services=frozenset(config.services) | {config.referral.default_service},
            keyring=self.keyring,
            issuer=TokenIssuer(
                self.keyring, issuer=tokens.issuer, ttl=tokens.ttl, jitter=tokens.jitter
            ),
            verifier=TokenVerifier(
                self.keyring,
                issuer=tokens.issuer,
                leeway=tokens.leeway,
                cache_size=tokens.cache_size,
            ),
            admin_token=config.read_secret(
                config.referral.admin_token_file,
                "AFFINITY_ADMIN_TOKEN",
                "referral.admin_token_file",
            ),
            metrics=ReferralMetrics(table.servers),
            health_sources=self.manager.make_health_sources(config),
        )

    def setup(self, app: Sanic[Any, Any]) -> None:
        """Add routes of your own here (called after the built-in routes are added)."""

    # -- building ----------------------------------------------------------------------------

    def create_app(self, name: str | None = None) -> Sanic[Any, Any]:
        """Make the Sanic app (one per process)."""
        app = new_app(name or f"affinity-referral-{next(_names)}", self.config, "referral")
        referral = self.config.referral
        app.ctx.affinity = self.make_context()
        app.add_route(assign_routes.assign, "/v1/assign", methods=["GET"], name="assign")
        prefix = referral.redirect_prefix.rstrip("/")
        app.add_route(
            assign_routes.redirect, f"{prefix}/<path:path>", methods=["GET"], name="redirect"
        )
        app.add_route(assign_routes.redirect, prefix or "/", methods=["GET"], name="redirect_root")
        app.add_route(_jwks, "/.well-known/jwks.json", methods=["GET"], name="jwks")
        app.add_route(_healthz, "/healthz", methods=["GET"], name="healthz")
        app.add_route(_metrics, "/metrics", methods=["GET"], name="metrics")
        app.add_route(_openapi, "/openapi.json", methods=["GET"], name="openapi")
        app.blueprint(admin_routes.admin)
        if self.manager.has_request_filters():
            # Sanic pays for every middleware on every request; add it only when used.
            app.register_middleware(_filter_request, "request")
        app.register_listener(self._start, "before_server_start")
        app.register_listener(self._stop, "after_server_stop")
        self.manager.register_routes(app, self.role)
        self.setup(app)
        return app

    async def _start(self, app: Sanic[Any, Any]) -> None:
        ctx: ReferralContext = app.ctx.affinity
        ctx.filtered = self.manager.has_request_filters()
        ctx.observed = self.manager.observes_assignments()
        await ctx.registry.start()
        ctx.apply_view(await ctx.registry.watch(-1, 0))
        app.add_task(
            watch_registry(ctx.registry, ctx.apply_view, ctx.mark_stale), name="affinity.watch"
        )
        for source in ctx.health_sources:
            app.add_task(source.run(ctx.table), name=f"affinity.plugin.health.{source.name}")
        await self.manager.startup(app, self.role)

    async def _stop(self, app: Sanic[Any, Any]) -> None:
        ctx: ReferralContext = app.ctx.affinity
        await self.manager.shutdown(app, self.role)
        for source in ctx.health_sources:
            await source.aclose()
        await ctx.registry.aclose()

    def run(self) -> None:
        """Serve until stopped (SIGINT / SIGTERM)."""
        from affinity.web.serving import serve

        factory: Callable[[], Sanic[Any, Any]] = self.create_app
        if self.config.referral.workers > 1:
            factory = functools.partial(
                build_worker_app,
                type(self).__module__,
                type(self).__qualname__,
                self.config.source,
            )
        serve(
            factory,
            self.config.referral,
            section="referral",
            source=self.config.source,
            workers=self.config.referral.workers,
        )


def build_worker_app(module: str, qualname: str, source: str) -> Sanic[Any, Any]:
    """Build a referral app in a fresh worker process (picklable: names, not objects)."""
    from affinity.config import load

    cls = getattr(importlib.import_module(module), qualname)
    server: ReferralServer = cls(load(source))
    return server.create_app()


def _filter_request(request: Request) -> HTTPResponse | None:
    """Synchronous on purpose: Sanic awaits nothing for a plain function, a cost per request."""
    ctx: ReferralContext = request.app.ctx.affinity
    rejection = ctx.manager.reject_request(request_info(request, "referral"))
    if rejection is None:
        return None
    ctx.metrics.rejected(rejection.status, rejection.error)
    return rejection_response(rejection)


async def _jwks(request: Request) -> HTTPResponse:
    ctx: ReferralContext = request.app.ctx.affinity
    return json_response(ctx.keyring.jwks(), headers={"Cache-Control": "max-age=60"})


async def _healthz(request: Request) -> HTTPResponse:
    ctx: ReferralContext = request.app.ctx.affinity
    return json_response({"status": "ok", "stale": ctx.table.stale, "worker": os.getpid()})


async def _metrics(request: Request) -> HTTPResponse:
    ctx: ReferralContext = request.app.ctx.affinity
    return HTTPResponse(ctx.metrics.exposition(), content_type=CONTENT_TYPE)


async def _openapi(request: Request) -> HTTPResponse:
    return json_response(SPEC)


__all__ = ["ReferralContext", "ReferralServer"]
