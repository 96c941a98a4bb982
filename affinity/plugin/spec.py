"""Hook specifications: the whole contract between affinity and its plugins.

Names are ``affinity_<verb>_<object>``; the verb says how results are used:
``make_`` is a factory (first non-None result wins), ``reject_`` is a veto
(first objection wins), ``report_`` collects contributions from every plugin,
``check_`` raises to refuse, ``declare_`` describes the plugin to the core,
past participles are notifications, and ``startup`` / ``shutdown`` are
lifecycle hooks.

Hooks called on the request path (``affinity_reject_request``,
``affinity_assigned``, ``affinity_server_avoided``, ``affinity_report_load``)
are synchronous and must not do I/O: pluggy has no async support, and an
``async def`` implementation of a first-result hook would return a coroutine
that "wins" even when it means None. I/O belongs in background tasks started
from ``affinity_startup`` and in the classes returned by the ``make_`` hooks.
Only ``affinity_startup`` and ``affinity_shutdown`` may return awaitables.

A hook grows only by new keyword arguments; implementations may accept fewer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any

from affinity.plugin import hookspec

if TYPE_CHECKING:
    from sanic import Sanic

    from affinity.config import Config
    from affinity.models import Assignment, Rejection, RequestInfo, SharedSettings
    from affinity.plugin.health import HealthSource
    from affinity.plugin.policy import Policy
    from affinity.plugin.registry import Registrar, Registry


# -- configuration -----------------------------------------------------------


@hookspec
def affinity_declare_options() -> tuple[str, type[Any]] | None:
    """Declare this plugin's ``[plugins.<name>]`` table: its name and its options dataclass.

    The fields of the dataclass give each option's name, type, default and help
    (see :mod:`affinity.plugin.options`). The core refuses a ``[plugins.<name>]``
    table that no loaded plugin declares, converts and checks every declared
    table before any plugin is configured, and lists the options in the docs and
    in ``affinity plugins --json``. Every result is collected.
    """


@hookspec(historic=True)
def affinity_configure(config: Config) -> None:
    """Keep what this plugin needs of the configuration, once per process.

    Called after the config file is loaded and every declared options table
    is checked, before anything starts; a plugin registered later is called
    when it registers. Read your options with
    ``config.plugin_options("<name>", YourOptions)``; raise
    :class:`affinity.errors.ConfigError` (naming the key) to refuse what the
    types alone cannot (two options that do not go together).

    :param config: The loaded, validated configuration.
    """


# -- components: factories chosen by a config name; first non-None wins ------


@hookspec(firstresult=True)
def affinity_make_policy(name: str, options: Mapping[str, Any]) -> Policy | None:
    """Return an assignment policy for the name a service's ``policy`` key gives, or None.

    Called once per service per worker at start-up. Stops at first non-None
    result; the built-in policies answer last, so a plugin may replace them.

    :param name: The configured policy name, for example ``"load_weighted"``.
    :param options: The service's ``policy_options`` table as the file holds it; a
        :class:`~affinity.plugin.policy.Policy` converts it to its ``options_class``.
    """


@hookspec(firstresult=True)
def affinity_make_registry(config: Config) -> Registry | None:
    """Return the referral-side registry named by ``registry.backend``, or None.

    Called once per referral worker at start-up. Stops at first non-None result.

    :param config: The loaded configuration.
    """


@hookspec(firstresult=True)
def affinity_make_registrar(config: Config) -> Registrar | None:
    """Return the app-server-side registrar named by ``registry.backend``, or None.

    Called once per app-server process at start-up. Stops at first non-None result.

    :param config: The loaded configuration.
    """


@hookspec(firstresult=True)
def affinity_make_health_source(name: str, config: Config) -> HealthSource | None:
    """Return the health source for a name listed in ``health.sources``, or None.

    Called once per referral worker per listed name. Stops at first non-None result.

    :param name: The configured health-source name, for example ``"active"``.
    :param config: The loaded configuration.
    """


# -- lifecycle: may return an awaitable -------------------------------------


@hookspec
def affinity_startup(app: Sanic[Any, Any], role: str) -> Awaitable[None] | None:
    """Start background work; called from the app's ``before_server_start`` listener.

    :param app: The Sanic app of the referral or app server that is starting.
    :param role: ``"referral"`` or ``"server"``.
    """


@hookspec
def affinity_shutdown(app: Sanic[Any, Any], role: str) -> Awaitable[None] | None:
    """Release what ``affinity_startup`` acquired; called from ``after_server_stop``.

    :param app: The Sanic app that is stopping.
    :param role: ``"referral"`` or ``"server"``.
    """


@hookspec
def affinity_register_routes(app: Sanic[Any, Any], role: str) -> None:
    """Add routes or blueprints of your own (status pages, metrics) while the app is built.

    :param app: The Sanic app being built.
    :param role: ``"referral"`` or ``"server"``.
    """


# -- request path: synchronous, no I/O --------------------------------------


@hookspec(firstresult=True)
def affinity_reject_request(request: RequestInfo) -> Rejection | None:
    """Refuse a request (firewall, rate limit) by returning a Rejection; None lets it pass.

    Called for every request on the referral and on every app server, before
    any route or app code runs. Stops at first non-None result. Synchronous, no I/O.

    :param request: What is known of the request: role, method, normalised
        path, client address, and the client id of a valid token.
    """


@hookspec
def affinity_assigned(assignment: Assignment) -> None:
    """Observe an assignment the referral just made (metrics, logs); must not raise.

    Synchronous, no I/O.

    :param assignment: The request, the chosen server and the token issued.
    """


@hookspec
def affinity_server_avoided(service: str, server_id: str, client_ip: str) -> None:
    """A client reported a server as failing (``avoid``); schedule a re-check, never eject.

    A client can lie, so this is a signal to look again, not a verdict.
    Synchronous, no I/O.

    :param service: The service of the server.
    :param server_id: The server the client avoided.
    :param client_ip: The client's address, for rate limiting the signal.
    """


@hookspec
def affinity_report_load(server_id: str) -> Mapping[str, float] | None:
    """Contribute load figures to an app server's health answer; every result is merged.

    Called on each health request of the app server. Synchronous, no I/O.
    The figures go to ``Load.extra``; one named like affinity's own (``clients``,
    ``inflight``, ``rps``... :data:`affinity.models.LOAD_KEYS`) is dropped.

    :param server_id: The id of the app server answering.
    """


@hookspec
def affinity_report_counters() -> Mapping[str, int] | None:
    """Contribute event counters (refusals by rule id and the like); every result is merged.

    Called when metrics are read (the referral's ``/metrics``, an app server's
    ``/.well-known/affinity/metrics``), never on the request path, so a plugin
    counts in a plain dict and pays nothing per request for being observable.
    Prefix every key with the plugin's name (``ratelimit.default``,
    ``ipfilter.deny[0]``) so that plugins never collide. Values are totals since
    the process started: Prometheus sums them across processes. Synchronous, no I/O.
    """


# -- shared settings (firewall rules and the like) ----------------------------


@hookspec
def affinity_check_settings(settings: SharedSettings) -> None:
    """Validate a shared settings document before it is stored or applied.

    Raise :class:`affinity.errors.ConfigError` to reject it whole; the previous
    version then stays in force. Ignore names that are not yours.

    :param settings: The proposed document (name, version, value).
    """


@hookspec
def affinity_settings_changed(settings: SharedSettings) -> None:
    """Apply a new version of a shared settings document; ignore names that are not yours.

    Called in every referral and app-server process when the registry reports
    a change. Synchronous, no I/O.

    :param settings: The document that is now in force.
    """
