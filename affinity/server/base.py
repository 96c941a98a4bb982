"""The app-server base class developers subclass to write their app.

Write routes as methods decorated with :func:`route` (they receive ``self``
and the Sanic request), or add blueprints and anything else in
:meth:`AppServer.setup`; the Sanic app stays reachable as ``self.app``.
affinity wraps every request with the request filters, the token check and
drain handling, answers ``/.well-known/affinity/health`` with status and load,
registers the server and drains it gracefully on shutdown::

    class Hello(AppServer):
        @route("/")
        async def index(self, request):
            return text(f"hello from {self.server_id}, client {request.ctx.client_id}")
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

from sanic import HTTPResponse, Request, Sanic

from affinity.config import Config
from affinity.errors import ConfigError
from affinity.models import LOAD_FORMAT, HealthStatus, Load, Server, worst
from affinity.plugin.manager import PluginManager
from affinity.protocol import BYE_PATH, HEALTH_PATH, METRICS_PATH
from affinity.server import guard
from affinity.server.lifecycle import Lifecycle
from affinity.server.state import ServerState
from affinity.web.http import health_code, json_response, new_app
from affinity.web.names import (
    OriginRules,
    check_id,
    check_meta,
    check_server,
    check_server_origin,
)

F = TypeVar("F", bound=Callable[..., Awaitable[HTTPResponse]])
_names = itertools.count(1)


def route(uri: str, methods: Iterable[str] = ("GET",), **options: Any) -> Callable[[F], F]:
    """Mark an ``async def handler(self, request, ...)`` method as a Sanic route."""

    def mark(handler: F) -> F:
        routes = getattr(handler, "__affinity_routes__", [])
        routes.append((uri, tuple(methods), options))
        handler.__affinity_routes__ = routes  # type: ignore[attr-defined]
        return handler

    return mark


class AppServer:
    """Base class of an affinity app server; one instance per process."""

    name: ClassVar[str] = "app"
    role: ClassVar[str] = "server"

    def __init__(
        self,
        config: Config,
        *,
        plugins: Iterable[object] = (),
        manager: PluginManager | None = None,
    ) -> None:
        self.config = config
        server = _own_entry(config)
        self.server_id = server.id
        self.service = server.service
        self.url = server.url
        self.manager = manager or PluginManager(plugins=plugins)
        self.manager.configure(config)
        self.status = HealthStatus.PASSING
        """A status set on the object; health reports the worst of it and :meth:`health`."""
        self.status_reason = ""
        self.state = ServerState(config, server, self.manager)
        """What the request path and the life cycle change: drain, requests in flight, clients."""
        self.lifecycle = Lifecycle(self.state, self.role)
        self.app = self.create_app()

    # -- what developers override ---------------------------------------------

    def setup(self, app: Sanic[Any, Any]) -> None:
        """Add blueprints, listeners or routes that are not methods; called once."""

    def health(self) -> HealthStatus | None:
        """Report the app's own status (for example WARNING when a dependency is down)."""
        return None

    def load_figures(self) -> Mapping[str, float]:
        """Extra load figures for the health answer (merged with plugins' figures)."""
        return {}

    # -- the model of this server ------------------------------------------------

    @property
    def server(self) -> Server:
        """This server as the registry sees it."""
        return self.state.server

    @property
    def draining(self) -> bool:
        """True from the start of a drain until a resume."""
        return self.state.draining

    def current_status(self) -> HealthStatus:
        """The worst of the status set on the object and the one ``health()`` reports."""
        return worst(self.status, self.health() or HealthStatus.PASSING)

    def load(self) -> Load:
        """This server's load now: the figures of the health answer."""
        state, settings = self.state, self.config.server
        extra = {**self.manager.report_load(self.server_id), **self.load_figures()}
        rps, bytes_per_s = state.rates.read(state.requests, state.sent_bytes)
        return Load(
            clients=state.active.weight(),
            inflight=state.inflight,
            rps=rps,
            bytes_per_s=bytes_per_s,
            capacity=settings.capacity,
            capacity_inflight=settings.capacity_inflight,
            capacity_bytes_per_s=settings.capacity_bytes_per_s,
            extra=extra,
        )

    # -- building ---------------------------------------------------------------------

    def create_app(self) -> Sanic[Any, Any]:
        app = new_app(
            f"affinity-{self.name}-{next(_names)}",
            self.config,
            "server",
            on_error=guard.error_answer,
        )
        app.ctx.affinity = self.state
        app.register_listener(self._guard_routes, "before_server_start")
        app.add_route(self._health_route, HEALTH_PATH, methods=["GET"], name="affinity_health")
        app.add_route(self._metrics_route, METRICS_PATH, methods=["GET"], name="affinity_metrics")
        app.add_route(self._bye_route, BYE_PATH, methods=["POST"], name="affinity_bye")
        self._add_method_routes(app)
        self.lifecycle.install(app)
        self.manager.register_routes(app, self.role)
        self.setup(app)
        return app

    async def _health_route(self, request: Request) -> HTTPResponse:
        """``GET /.well-known/affinity/health``: status, draining and load, with Consul's codes."""
        status, load, draining = self.current_status(), self.load(), self.state.draining
        body = {
            "status": status.value,
            "draining": draining,
            "server": self.server_id,
            "load_format": LOAD_FORMAT,
            "load": load.figures(),
        }
        if self.status_reason:
            body["reason"] = self.status_reason
        return json_response(
            body, health_code(status, draining), headers={"Cache-Control": "no-store"}
        )

    async def _metrics_route(self, request: Request) -> HTTPResponse:
        """``GET /.well-known/affinity/metrics``: Prometheus text of this server process.

        Filter refusals by rule (from the plugins), the shared settings versions in
        force, settings refused, and the load figures. Like health it needs no token;
        the request filters still apply to it.
        """
        body, content_type = self.state.metrics.exposition(request.headers.get("accept"))
        return HTTPResponse(body, content_type=content_type)

    async def _bye_route(self, request: Request) -> HTTPResponse:
        """``POST /.well-known/affinity/bye``: a client ended its session (see the guard)."""
        if self.state.tokens.jwks is not None:
            await guard.learn_keys(request)
        return guard.end_session(self.state, request)

    @staticmethod
    async def _guard_routes(app: Sanic[Any, Any]) -> None:
        """Every route, whoever added it (methods, plugins, setup, blueprints), behind the guard."""
        guard.guard_routes(app)

    def _add_method_routes(self, app: Sanic[Any, Any]) -> None:
        for attr in dir(type(self)):
            func = getattr(type(self), attr, None)
            for uri, methods, options in getattr(func, "__affinity_routes__", ()):
                handler = getattr(self, attr)
                name = options.pop("name", f"{attr}_{'_'.join(methods).lower()}")
                app.add_route(handler, uri, methods=list(methods), name=name, **options)

    def run(self) -> None:
        """Serve until SIGTERM (graceful drain) or a second SIGINT (at once)."""
        from affinity.web.serving import serve

        config = self.config
        serve(
            lambda: self.app,
            config.server,
            section="server",
            source=config.source,
            title=f"app server {self.server_id}",
            listen_source=config.source_of("server.listen"),
        )


def _default_url(config: Config) -> str:
    listen = config.server.listen
    scheme = "http" if config.server.insecure_http and config.server.tls_cert is None else "https"
    return f"{scheme}://{listen}"


def _own_entry(config: Config) -> Server:
    """This server as it will register, checked as the referral will check it: a ConfigError
    now, naming the key, rather than a refused registration later."""
    settings = config.server
    rules = OriginRules.from_config(config)
    url = settings.url or _default_url(config)
    checks: tuple[tuple[str, Callable[[], object]], ...] = (
        ("server.id", lambda: check_id(settings.id)),
        ("server.service", lambda: check_id(settings.service, "service")),
        ("server.url", lambda: check_server_origin(url, rules)),
        ("server.meta", lambda: check_meta(dict(settings.meta))),
        (
            "server.weight",
            lambda: check_server(
                server_id="x", service="x", url=url, weight=settings.weight, rules=rules
            ),
        ),
    )
    for key, check in checks:
        try:
            check()
        except ValueError as exc:
            raise ConfigError(str(exc), key=key, source=config.source_of(key)) from exc
    return check_server(
        server_id=settings.id,
        service=settings.service,
        url=url,
        weight=settings.weight,
        meta=dict(settings.meta),
        rules=rules,
    )
