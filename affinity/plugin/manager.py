"""The plugin manager: loads built-in and third-party plugins; the only caller of ``pm.hook``.

Loading order, lowest priority first: ``DEFAULT_PLUGINS`` (whose deciding
hooks are ``trylast``), entry points of the group ``affinity`` (unless
``AFFINITY_DISABLE_PLUGIN_AUTOLOAD`` is set), modules named in
``AFFINITY_PLUGINS`` (comma-separated), then objects passed in by the caller.
pluggy calls the most recently registered implementation first, so each layer
can override the one before. ``AFFINITY_TRACE_PLUGINS=1`` logs every hook call.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

from affinity.errors import ConfigError, PluginError
from affinity.plugin import spec as hookspecs

if TYPE_CHECKING:
    from sanic import Sanic

    from affinity.config import Config
    from affinity.models import Assignment, Rejection, RequestInfo, SharedSettings
    from affinity.plugin.health import HealthSource
    from affinity.plugin.policy import Policy
    from affinity.plugin.registry import Registrar, Registry

log = logging.getLogger("affinity.plugins")

ENTRY_POINT_GROUP = "affinity"

DEFAULT_PLUGINS: tuple[str, ...] = (
    "affinity.builtin.policies",
    "affinity.builtin.embedded.registry",
    "affinity.builtin.embedded.registrar",
    "affinity.builtin.consul.plugin",
    "affinity.builtin.health_active",
)
"""Built-in behaviour, written as plugins through the same hooks as any other."""


class PluginManager:
    """Owns the pluggy manager and offers one typed method per hook."""

    def __init__(
        self,
        *,
        plugins: Iterable[object] = (),
        autoload: bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self._filters: list[Callable[..., Any]] | None = None
        self._pm = pluggy.PluginManager("affinity")
        self._pm.add_hookspecs(hookspecs)
        if env.get("AFFINITY_TRACE_PLUGINS"):
            self._pm.trace.root.setwriter(log.info)
            self._pm.enable_tracing()
        for name in DEFAULT_PLUGINS:
            self._register(_import(name), name)
        if autoload is None:
            autoload = not env.get("AFFINITY_DISABLE_PLUGIN_AUTOLOAD")
        if autoload:
            self._load_entry_points()
        for name in filter(None, (s.strip() for s in env.get("AFFINITY_PLUGINS", "").split(","))):
            self._register(_import(name), name)
        for plugin in plugins:
            self._register(plugin, None)

    def _register(self, plugin: object, name: str | None) -> None:
        if name is not None and self._pm.get_plugin(name) is not None:
            return
        try:
            self._pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            msg = f"plugin {name or plugin!r} is invalid: {exc}"
            raise PluginError(msg) from exc

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if self._pm.get_plugin(ep.name) is not None or self._pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                msg = f"plugin {ep.name!r} ({ep.value}) failed to import: {exc}"
                raise PluginError(msg) from exc
            self._register(plugin, ep.name)

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register one more plugin object or module."""
        self._register(plugin, name)
        self._filters = None

    def names(self) -> list[str]:
        """Names of the registered plugins, in registration order."""
        return [name for name, _ in self._pm.list_name_plugin()]

    # -- configuration -------------------------------------------------------

    def configure(self, config: Config) -> None:
        self._pm.hook.affinity_configure(config=config)

    # -- factories -------------------------------------------------------------

    def make_policy(self, service: str, config: Config) -> Policy:
        """The policy a service's ``policy`` key names; a ConfigError when no plugin knows it."""
        settings = config.service(service)
        key = f"services.{service}.policy"
        try:
            policy: Policy | None = self._pm.hook.affinity_make_policy(
                name=settings.policy, options=settings.policy_options
            )
        except ConfigError as exc:
            option = f"services.{service}.policy_options.{exc.key}" if exc.key else key
            raise ConfigError(exc.message, key=option, source=config.source) from exc
        if policy is None:
            msg = (
                f"unknown policy {settings.policy!r}; built-in: "
                "'round_robin', 'random', 'load_weighted', 'consistent' (or install a plugin)"
            )
            raise ConfigError(msg, key=key, source=config.source)
        return policy

    def make_registry(self, config: Config) -> Registry:
        registry: Registry | None = self._pm.hook.affinity_make_registry(config=config)
        if registry is None:
            raise _unknown_backend(config)
        return registry

    def make_registrar(self, config: Config) -> Registrar:
        registrar: Registrar | None = self._pm.hook.affinity_make_registrar(config=config)
        if registrar is None:
            raise _unknown_backend(config)
        return registrar

    def make_health_sources(self, config: Config) -> list[HealthSource]:
        sources = []
        for i, name in enumerate(config.health.sources):
            source = self._pm.hook.affinity_make_health_source(name=name, config=config)
            if source is None:
                msg = f"unknown health source {name!r}; built-in: 'active'"
                raise ConfigError(msg, key=f"health.sources[{i}]", source=config.source)
            sources.append(source)
        return sources

    # -- lifecycle ---------------------------------------------------------------

    async def startup(self, app: Sanic[Any, Any], role: str) -> None:
        for result in self._pm.hook.affinity_startup(app=app, role=role):
            if inspect.isawaitable(result):
                await result

    async def shutdown(self, app: Sanic[Any, Any], role: str) -> None:
        for result in self._pm.hook.affinity_shutdown(app=app, role=role):
            if inspect.isawaitable(result):
                await result

    def register_routes(self, app: Sanic[Any, Any], role: str) -> None:
        self._pm.hook.affinity_register_routes(app=app, role=role)

    # -- request path --------------------------------------------------------------

    def reject_request(self, request: RequestInfo) -> Rejection | None:
        """Ask the request filters, first objection wins.

        Called for every request, so the implementations are looked up once
        (until the next registration) and called directly, as pluggy's own
        first-result loop would, unless one is a wrapper.
        """
        filters = self._filters
        if filters is None:
            filters = self._filters = _plain_impls(self._pm.hook.affinity_reject_request)
        if not filters:
            rejection: Rejection | None = self._pm.hook.affinity_reject_request(request=request)
            return rejection
        for function in filters:
            result: Rejection | None = function(request=request)
            if result is not None:
                return result
        return None

    def has_request_filters(self) -> bool:
        """False when no plugin implements ``affinity_reject_request`` (no RequestInfo needed)."""
        return bool(self._pm.hook.affinity_reject_request.get_hookimpls())

    def observes_assignments(self) -> bool:
        """False when no plugin implements ``affinity_assigned`` (no Assignment needed)."""
        return bool(self._pm.hook.affinity_assigned.get_hookimpls())

    def assigned(self, assignment: Assignment) -> None:
        self._pm.hook.affinity_assigned(assignment=assignment)

    def server_avoided(self, service: str, server_id: str, client_ip: str) -> None:
        self._pm.hook.affinity_server_avoided(
            service=service, server_id=server_id, client_ip=client_ip
        )

    def report_load(self, server_id: str) -> dict[str, float]:
        figures: dict[str, float] = {}
        for result in reversed(self._pm.hook.affinity_report_load(server_id=server_id)):
            figures.update(result)
        return figures

    def report_counters(self) -> dict[str, int]:
        """Every plugin's counters, merged (keys carry the plugin's name, so none collide)."""
        counters: dict[str, int] = {}
        for result in reversed(self._pm.hook.affinity_report_counters()):
            counters.update(result)
        return counters

    # -- shared settings -------------------------------------------------------------

    def check_settings(self, settings: SharedSettings) -> None:
        self._pm.hook.affinity_check_settings(settings=settings)

    def settings_changed(self, settings: SharedSettings) -> None:
        self._pm.hook.affinity_settings_changed(settings=settings)

    def apply_settings(self, settings: SharedSettings) -> ConfigError | None:
        """Check a document, then put it in force if every plugin accepts it.

        Whatever the registry delivers is checked again before it is applied:
        a document may reach the registry without the admin API's check
        (written straight into Consul KV), and a plugin may judge it against
        this process's own file options. Returns the refusal (the previous
        version stays in force), or None once the document is in force.
        """
        try:
            self.check_settings(settings)
        except ConfigError as exc:
            return exc
        self.settings_changed(settings)
        return None


def _plain_impls(caller: Any) -> list[Callable[..., Any]]:
    """The functions of a hook in call order, or [] if any is a wrapper (use pluggy then)."""
    impls = caller.get_hookimpls()
    if any(impl.hookwrapper or impl.wrapper for impl in impls):
        return []
    return [_bind(impl) for impl in reversed(impls)]


def _bind(impl: Any) -> Callable[..., Any]:
    """A call taking ``request=``, whatever subset of the arguments the implementation takes."""
    if "request" in impl.argnames:
        return impl.function  # type: ignore[no-any-return]
    function = impl.function
    return lambda request: function()


def _import(name: str) -> object:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        msg = f"plugin {name!r} failed to import: {exc}"
        raise PluginError(msg) from exc


def _unknown_backend(config: Config) -> ConfigError:
    msg = f"unknown registry backend {config.registry.backend!r}; built-in: 'embedded', 'consul'"
    return ConfigError(msg, key="registry.backend", source=config.source)
