"""The plugin manager: loads built-in and third-party plugins; the only caller of ``pm.hook``.

Loading order, lowest priority first: ``DEFAULT_PLUGINS`` (whose deciding
hooks are ``trylast``), entry points of the group ``affinity`` (unless
``AFFINITY_DISABLE_PLUGIN_AUTOLOAD`` is set), modules named in
``AFFINITY_PLUGINS`` (comma-separated), then objects passed in by the caller.
pluggy calls the most recently registered implementation first, so each layer
can override the one before. ``AFFINITY_DISABLE_PLUGINS`` (comma-separated
names, as ``affinity plugins`` shows them) blocks plugins, like pytest's
``-p no:NAME``. ``AFFINITY_TRACE_PLUGINS=1`` logs every hook call.

After loading, an implementation of a hook that does not exist (a misspelled
name) is an error, not a function that is silently never called.
``affinity_configure`` is historic: a plugin registered after it was called
is configured as it registers.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import inspect
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from affinity.convert import env_name, option_fields
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

HOOKS: tuple[str, ...] = tuple(sorted(n for n in dir(hookspecs) if n.startswith("affinity_")))
"""The names of every hook."""


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One registered plugin, as ``affinity plugins`` shows it."""

    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...]
    options: str = ""
    """The table the plugin declares (``plugins.ratelimit``), empty when none."""


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
        self._tracing = bool(env.get("AFFINITY_TRACE_PLUGINS"))
        self._dists: dict[str, tuple[str, str]] = {}
        self._seen: set[str] = set()  # names of the plugins found, loaded or blocked
        self._pm = pluggy.PluginManager("affinity")
        self._pm.add_hookspecs(hookspecs)
        if self._tracing:
            self._pm.trace.root.setwriter(log.info)
            self._pm.enable_tracing()
        self.blocked = frozenset(_names(env.get("AFFINITY_DISABLE_PLUGINS", "")))
        for name in self.blocked:
            self._pm.set_blocked(name)
        for name in DEFAULT_PLUGINS:
            self._load_module(name)
        if autoload is None:
            autoload = not env.get("AFFINITY_DISABLE_PLUGIN_AUTOLOAD")
        self.autoload = autoload
        if autoload:
            self._load_entry_points()
        for name in _names(env.get("AFFINITY_PLUGINS", "")):
            self._load_module(name)
        for plugin in plugins:
            self._register(plugin, None)
        self._check_pending()
        for name in sorted(self.blocked - self._seen):
            log.warning("AFFINITY_DISABLE_PLUGINS names %r, which is no plugin here", name)

    def _load_module(self, name: str) -> None:
        self._seen.add(name)
        if not self._pm.is_blocked(name) and self._pm.get_plugin(name) is None:
            self._register(_import(name), name)

    def _register(self, plugin: object, name: str | None) -> None:
        if name is not None and self._pm.get_plugin(name) is not None:
            return
        try:
            self._pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            msg = f"plugin {name or plugin!r} is invalid: {exc}"
            raise PluginError(msg) from exc
        except ConfigError:  # from its affinity_configure, replayed as it registers
            self._pm.unregister(plugin)
            raise
        except ValueError as exc:
            raise PluginError(f"plugin {name or plugin!r} is invalid: {exc}") from exc

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            self._seen.add(ep.name)
            if self._pm.get_plugin(ep.name) is not None or self._pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                msg = f"plugin {ep.name!r} ({ep.value}) failed to import: {exc}"
                raise PluginError(msg) from exc
            if ep.dist is not None:
                self._dists[ep.name] = (ep.dist.name, ep.dist.version)
            self._register(plugin, ep.name)

    def _check_pending(self) -> None:
        """Refuse an implementation of a hook that does not exist (a misspelled name)."""
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self._pm.get_name(exc.plugin) or repr(exc.plugin)
            unknown = sorted(
                c.name for c in self._pm.get_hookcallers(exc.plugin) or () if not c.has_spec()
            )
            hook = unknown[0] if unknown else "?"
            close = difflib.get_close_matches(hook, HOOKS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; see docs/hooks.md"
            self._pm.unregister(exc.plugin)
            raise PluginError(f"plugin {name!r} implements an unknown hook {hook!r}{hint}") from exc

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register one more plugin object or module; configured at once if the rest are."""
        self._register(plugin, name)
        self._check_pending()
        self.__dict__.pop("reject_request", None)  # bound again on its next call

    def names(self) -> list[str]:
        """Names of the registered plugins, in registration order."""
        return [name for name, plugin in self._pm.list_name_plugin() if plugin is not None]

    def describe(self) -> list[PluginInfo]:
        """Each registered plugin: name, distribution, version, hooks and options table."""
        tables = {id(plugin): result for plugin, result in self._declarations()}
        found: list[PluginInfo] = []
        for name, plugin in self._pm.list_name_plugin():
            if plugin is None:  # blocked
                continue
            dist, version = self._dists.get(name) or _distribution_of(plugin)
            hooks = sorted(c.name for c in self._pm.get_hookcallers(plugin) or ())
            table = tables.get(id(plugin))
            options = f"plugins.{table[0]}" if table else ""
            found.append(PluginInfo(name, dist, version, tuple(hooks), options))
        return found

    # -- configuration -------------------------------------------------------

    def declared_options(self) -> dict[str, type[Any]]:
        """The ``[plugins.<name>]`` tables the loaded plugins declare, with their dataclasses."""
        return {table: cls for _, (table, cls) in self._declarations()}

    def _declarations(self) -> list[tuple[object, tuple[str, type[Any]]]]:
        """(plugin, (table, dataclass)) for each plugin that declares options; checked."""
        found: list[tuple[object, tuple[str, type[Any]]]] = []
        owners: dict[str, object] = {}
        for impl in reversed(self._pm.hook.affinity_declare_options.get_hookimpls()):
            result = impl.function()
            if result is None:
                continue
            name = self._pm.get_name(impl.plugin)
            if not (
                isinstance(result, tuple)
                and len(result) == 2
                and isinstance(result[0], str)
                and dataclasses.is_dataclass(result[1])
                and isinstance(result[1], type)
            ):
                msg = f"plugin {name!r}: affinity_declare_options must return (name, dataclass)"
                raise PluginError(msg)
            table = result[0]
            if table in owners:
                other = self._pm.get_name(owners[table])
                raise PluginError(f"plugins {other!r} and {name!r} both declare [plugins.{table}]")
            owners[table] = impl.plugin
            found.append((impl.plugin, (table, result[1])))
        return found

    def configure(self, config: Config) -> None:
        """Check every ``[plugins.<name>]`` table and variable, then configure every plugin.

        :raises ConfigError: for a table no loaded plugin declares (naming the
            tables that are known), an ``AFFINITY_PLUGINS_*`` variable that sets
            no declared option, or a bad option (naming the key and the file or
            variable).
        """
        declared = self.declared_options()
        self._check_tables(config, declared)
        for name, cls in declared.items():
            config.plugin_options(name, cls)
        self._pm.hook.affinity_configure.call_historic(kwargs={"config": config})

    def _check_tables(self, config: Config, declared: Mapping[str, type[Any]]) -> None:
        known = ", ".join(repr(n) for n in sorted(declared)) or "none"
        hint = "" if self.autoload else " (AFFINITY_DISABLE_PLUGIN_AUTOLOAD is set)"
        for name in config.plugins:
            if name in declared or name in self.blocked:
                continue
            close = difflib.get_close_matches(name, list(declared), n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            msg = f"no loaded plugin has this table; {guess}known plugin tables: {known}{hint}"
            raise ConfigError(msg, key=f"plugins.{name}", source=config.source)
        variables = {
            env_name(f"plugins.{name}.{field}")
            for name, cls in declared.items()
            for field in (f.name for f in option_fields(cls))
        }
        skipped = tuple(env_name(f"plugins.{name}") + "_" for name in self.blocked)
        for variable in config.env:
            if not variable.startswith("AFFINITY_PLUGINS_") or variable in variables:
                continue
            if skipped and variable.startswith(skipped):
                continue
            msg = f"sets no option of a loaded plugin; known plugin tables: {known}{hint}"
            raise ConfigError(msg, source=f"environment variable {variable}")

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
            option = key
            if exc.key:  # declared options name "policy_options.<key>"; a plain key is one too
                relative = exc.key.removeprefix("policy_options.")
                option = f"services.{service}.policy_options.{relative}"
            where = config.source_of(f"services.{service}.policy_options")
            raise ConfigError(exc.message, key=option, source=where) from exc
        if policy is None:
            msg = (
                f"unknown policy {settings.policy!r}; built-in: "
                "'round_robin', 'random', 'load_weighted', 'consistent' (or install a plugin)"
            )
            raise ConfigError(msg, key=key, source=config.source_of(key))
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
        """Ask the request filters (``affinity_reject_request``): the first objection, or None.

        Called for every request, so the first call binds this name, on the
        instance, to the cheapest call that does what pluggy's first-result
        call would (:func:`first_result`): the one implementation itself when
        there is one, a loop over them in pluggy's order when there are
        several, and pluggy's own call when one is a wrapper or hook calls are
        traced. A registration drops that binding. ``tests/test_manager.py``
        holds it against pluggy.
        """
        bound = first_result(self._pm.hook.affinity_reject_request, self._tracing)
        self.__dict__["reject_request"] = bound
        rejection: Rejection | None = bound(request)
        return rejection

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


def first_result(caller: Any, tracing: bool = False) -> Callable[[Any], Any]:
    """A call of the first-result hook ``caller`` (one argument, ``request``) as pluggy makes it.

    pluggy's call goes through its hook caller and ``_multicall`` (a loop with
    wrapper and exception handling) on every call, several times the cost of
    the implementations themselves. Without wrappers, its call is: each
    implementation in turn, last registered first (``tryfirst`` / ``trylast``
    as sorted), given the arguments it names, until one returns something
    other than None. That is what this returns; with a wrapper, or with
    hook calls traced, pluggy's own call.
    """
    impls = caller.get_hookimpls()
    if tracing or any(impl.hookwrapper or impl.wrapper for impl in impls):
        return lambda request: caller(request=request)
    functions = [_bind(impl) for impl in reversed(impls)]
    if not functions:
        return _no_result
    if len(functions) == 1:
        return functions[0]

    def first(request: Any) -> Any:
        for function in functions:
            result = function(request)
            if result is not None:
                return result
        return None

    return first


def _bind(impl: Any) -> Callable[[Any], Any]:
    """The implementation as a call of one argument, passed as pluggy passes it (by position,
    when the implementation names it)."""
    function = impl.function
    if impl.argnames:
        return function  # type: ignore[no-any-return]
    return lambda request: function()


def _no_result(request: Any) -> None:
    return None


def _names(text: str) -> list[str]:
    return [name for name in (s.strip() for s in text.split(",")) if name]


def _distribution_of(plugin: object) -> tuple[str, str]:
    """The distribution that installed a plugin's top-level package, and its version."""
    module = plugin.__name__ if inspect.ismodule(plugin) else type(plugin).__module__
    dists = importlib.metadata.packages_distributions().get(module.partition(".")[0], [])
    if not dists:
        return ("", "")
    try:
        return (dists[0], importlib.metadata.version(dists[0]))
    except importlib.metadata.PackageNotFoundError:
        return (dists[0], "")


def _import(name: str) -> object:
    try:
        return importlib.import_module(name)
    except Exception as exc:
        msg = f"plugin {name!r} failed to import: {exc}"
        raise PluginError(msg) from exc


def _unknown_backend(config: Config) -> ConfigError:
    msg = f"unknown registry backend {config.registry.backend!r}; built-in: 'embedded', 'consul'"
    return ConfigError(msg, key="registry.backend", source=config.source)
