"""The Consul registry backend as a plugin: answers only for ``registry.backend = "consul"``.

App servers register with the Consul agent on their host; referrals watch
Consul's health of every service and a KV prefix for drain flags and shared
settings. The implementation lives in :mod:`affinity.builtin.consul` and is
imported only here, only when the backend is selected, so the embedded
default never needs python-consul2 (``pip install 'affinity-lb[consul]'``).
The options (:class:`~affinity.builtin.consul.options.ConsulOptions`) are
checked at configure time, before that import, so ``affinity check`` reports
a bad option, even where python-consul2 is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from affinity.config import Config
from affinity.errors import ConfigError
from affinity.plugin import hookimpl

if TYPE_CHECKING:
    from affinity.plugin.registry import Registrar, Registry

BACKEND = "consul"


def _need_python_consul(config: Config) -> None:
    try:
        import aiohttp  # noqa: F401
        import consul  # noqa: F401
    except ImportError as exc:
        msg = (
            f"the Consul backend needs python-consul2 and aiohttp ({exc.name} is missing): "
            "pip install 'affinity-lb[consul]'"
        )
        raise ConfigError(msg, key="registry.backend", source=config.source) from exc


@hookimpl
def affinity_configure(config: Config) -> None:
    """Check ``[registry.options]`` when the backend is Consul (nothing connects yet)."""
    if config.registry.backend == BACKEND:
        from affinity.builtin.consul.options import parse_options

        parse_options(config)


@hookimpl(trylast=True)
def affinity_make_registry(config: Config) -> Registry | None:
    """Provide the Consul watcher for ``registry.backend = "consul"``."""
    if config.registry.backend != BACKEND:
        return None
    from affinity.builtin.consul.options import parse_options

    options = parse_options(config)
    _need_python_consul(config)
    from affinity.builtin.consul.registry import ConsulRegistry
    from affinity.web.names import OriginRules

    services = frozenset(config.services) | {config.referral.default_service}
    return ConsulRegistry(options, services, OriginRules.from_config(config))


@hookimpl(trylast=True)
def affinity_make_registrar(config: Config) -> Registrar | None:
    """Provide the Consul agent registrar for ``registry.backend = "consul"``."""
    if config.registry.backend != BACKEND:
        return None
    from affinity.builtin.consul.options import parse_options

    options = parse_options(config)
    _need_python_consul(config)
    from affinity.builtin.consul.registrar import ConsulRegistrar, check_meta

    check_meta(config.server.meta, config.source)
    return ConsulRegistrar(options)
