"""The referral service: a Sanic app built by :class:`ReferralServer`.

A deployment uses ``ReferralServer`` as it is (``affinity referral``) or
subclasses it to add routes, defaults or behaviour: override :meth:`setup` to
add routes to the Sanic app, or any ``make_*`` method to change a part.
Everything the request path needs hangs on ``app.ctx.affinity`` (a
:class:`ReferralContext`), made per worker process; nothing is module-level.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import itertools
import logging
import os
import pickle
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sanic import HTTPResponse, Request, Sanic

from affinity.config import Config
from affinity.errors import ConfigError
from affinity.plugin.manager import PluginManager
from affinity.protocol import ASSIGN_PATH, JWKS_PATH
from affinity.referral import admin as admin_routes
from affinity.referral import assign as assign_routes
from affinity.referral.context import ReferralContext
from affinity.referral.dashboard import dashboard
from affinity.referral.metrics import referral_metrics, start_worker_metrics, stop_worker_metrics
from affinity.referral.openapi import openapi_spec
from affinity.referral.session import Sessions
from affinity.referral.status import status as status_routes
from affinity.referral.table import ServerTable
from affinity.referral.watch import watch_registry
from affinity.tokens.jws import TokenIssuer, TokenVerifier
from affinity.tokens.keyring import load_keyring
from affinity.web.auth import BearerAuth, RegistrationAuth
from affinity.web.exposition import shared_metrics_dir
from affinity.web.http import (
    json_response,
    new_app,
    rejection_response,
    request_info,
)
from affinity.web.reload import on_reload

log = logging.getLogger("affinity.referral")
_names = itertools.count(1)


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
        self.plugins = tuple(plugins)
        """The plugin objects passed in; each worker process gets its own copy of them."""
        self._own_manager = manager is None
        self.manager = manager or PluginManager(plugins=self.plugins)
        self.manager.configure(config)
        # Fail at start-up, not on the first request, on bad policies or keys.
        for service in config.services:
            self.manager.make_policy(service, config)
        self.keyring = load_keyring(config)

    # -- parts a subclass may replace ------------------------------------------------

    def make_context(self) -> ReferralContext:
        config = self.config
        health_sources = self.manager.make_health_sources(config)
        table = ServerTable(
            slow_start=config.health.slow_start,
            panic_threshold=config.health.panic_threshold,
            await_first_check=bool(health_sources),
        )
        policies = {s: self.manager.make_policy(s, config) for s in config.services}
        tokens = config.tokens
        registry = self.manager.make_registry(config)
        metrics = referral_metrics(table, registry, config.referral.workers)
        return ReferralContext(
            config=config,
            manager=self.manager,
            registry=registry,
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
                max_lifetime=tokens.max_lifetime,
            ),
            metrics=metrics,
            health_sources=health_sources,
        )

    def setup(self, app: Sanic[Any, Any]) -> None:
        """Add routes of your own here (called after the built-in routes are added)."""

    # -- building ----------------------------------------------------------------------------

    def create_app(self, name: str | None = None) -> Sanic[Any, Any]:
        """Make the Sanic app (one per process)."""
        app = new_app(name or f"affinity-referral-{next(_names)}", self.config, "referral")
        app.ctx.registration_auth = RegistrationAuth.from_config(self.config)
        referral = self.config.referral
        app.ctx.affinity = self.make_context()
        app.add_route(assign_routes.assign, ASSIGN_PATH, methods=["GET"], name="assign")
        prefix = referral.redirect_prefix.rstrip("/")
        app.add_route(
            assign_routes.redirect, f"{prefix}/<path:path>", methods=["GET"], name="redirect"
        )
        app.add_route(assign_routes.redirect, prefix or "/", methods=["GET"], name="redirect_root")
        app.add_route(_jwks, JWKS_PATH, methods=["GET"], name="jwks")
        app.add_route(_healthz, "/healthz", methods=["GET"], name="healthz")
        app.add_route(_metrics, "/metrics", methods=["GET"], name="metrics")
        app.add_route(_openapi, "/openapi.json", methods=["GET"], name="openapi")
        app.ctx.openapi = openapi_spec(referral.redirect_prefix)
        app.blueprint(admin_routes.admin)
        app.blueprint(status_routes)
        app.ctx.dashboard_sessions = Sessions(app.ctx.admin_auth)
        app.blueprint(dashboard)
        if self.manager.has_request_filters():
            # Sanic pays for every middleware on every request; add it only when used.
            app.register_middleware(_filter_request, "request")
        app.register_listener(self._start, "before_server_start")
        app.register_listener(self._stop, "after_server_stop")
        on_reload(app, "key ring", functools.partial(self._reload_keyring, app))
        on_reload(app, "admin token", functools.partial(self._reload_secrets, app))
        on_reload(app, "shared settings", app.ctx.affinity.refresh_view)
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
        start_worker_metrics(app, ctx.metrics)
        for source in ctx.health_sources:
            app.add_task(source.run(ctx.table), name=f"affinity.plugin.health.{source.name}")
        await self.manager.startup(app, self.role)

    async def _stop(self, app: Sanic[Any, Any]) -> None:
        ctx: ReferralContext = app.ctx.affinity
        stop_worker_metrics(ctx.metrics)
        await self.manager.shutdown(app, self.role)
        for source in ctx.health_sources:
            await source.aclose()
        await ctx.registry.aclose()

    async def _reload_keyring(self, app: Sanic[Any, Any]) -> None:
        """SIGHUP: sign with the key file's active key, verify with all of its keys."""
        ctx: ReferralContext = app.ctx.affinity
        ring = load_keyring(self.config)
        ctx.issuer.replace_ring(ring)  # first: refuses a ring with no key that may sign
        ctx.verifier.replace_ring(ring)
        ctx.keyring = self.keyring = ring

    async def _reload_secrets(self, app: Sanic[Any, Any]) -> None:
        """SIGHUP: the admin token (dashboard sessions signed under the old one end) and the
        registration secret."""
        admin = BearerAuth.from_config(self.config, "referral")
        registration = RegistrationAuth.from_config(self.config)
        app.ctx.admin_auth.take(admin)
        app.ctx.registration_auth.take(registration)

    def run(self) -> None:
        """Serve until stopped (SIGINT / SIGTERM); SIGHUP re-reads the key ring, the admin
        token, the registration secret and the shared settings (:mod:`affinity.web.reload`).

        With ``referral.workers`` above 1, each worker is a fresh process that
        builds its own server as ``type(self)(config, plugins=self.plugins)``:
        the class must be importable, and each plugin object a module (sent by
        name) or picklable (each worker gets its own copy). A ``manager=``
        cannot be sent and is refused. One worker serves in this process with
        this very object.
        """
        from affinity.web.serving import serve

        workers = self.config.referral.workers
        factory = self.create_app if workers == 1 else self.worker_factory()
        with contextlib.ExitStack() as stack:
            if workers > 1:
                stack.enter_context(shared_metrics_dir())
            serve(
                factory,
                self.config.referral,
                section="referral",
                source=self.config.source,
                workers=workers,
                listen_source=self.config.source_of("referral.listen"),
            )

    def worker_factory(self) -> Callable[[], Sanic[Any, Any]]:
        """A picklable function that builds this referral's app in a worker process."""
        key, source = "referral.workers", self.config.source
        if not self._own_manager:
            msg = (
                f"{self.config.referral.workers} workers each build their own plugin manager "
                "in a fresh process, so a manager= passed in cannot reach them: pass the "
                "plugins as plugins= (modules or picklable objects) instead"
            )
            raise ConfigError(msg, key=key, source=source)
        plugins = tuple(_portable(plugin, key, source) for plugin in self.plugins)
        return functools.partial(build_worker_app, type(self), self.config, plugins)


def build_worker_app(
    cls: type[ReferralServer], config: Config, plugins: tuple[object, ...]
) -> Sanic[Any, Any]:
    """Build a referral app in a fresh worker process, as the parent process built its own."""
    loaded = [importlib.import_module(p.name) if isinstance(p, _ModuleName) else p for p in plugins]
    return cls(config, plugins=loaded).create_app()


@dataclass(frozen=True, slots=True)
class _ModuleName:
    """A plugin module, sent to a worker by name (modules do not pickle)."""

    name: str


def _portable(plugin: object, key: str, source: str) -> object:
    """``plugin`` in a form that reaches a worker process; a ConfigError naming it if none does."""
    if isinstance(plugin, types.ModuleType):
        name = plugin.__name__
        try:
            found = importlib.util.find_spec(name) is not None
        except ValueError:  # __main__, or a module made in memory
            found = False
        if not found:
            msg = f"plugin module {name!r} cannot be imported by name in a worker process"
            raise ConfigError(msg, key=key, source=source)
        return _ModuleName(name)
    try:
        pickle.dumps(plugin)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        msg = (
            f"plugin {plugin!r} cannot be sent to a worker process ({exc}); pass a module, "
            "a picklable object, or load it by entry point or AFFINITY_PLUGINS"
        )
        raise ConfigError(msg, key=key, source=source) from exc
    return plugin


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
    body, content_type = ctx.metrics.exposition(request.headers.get("accept"))
    return HTTPResponse(body, content_type=content_type)


async def _openapi(request: Request) -> HTTPResponse:
    return json_response(request.app.ctx.openapi)


__all__ = ["ReferralServer"]
