"""The app server's side: register with the local Consul agent, heartbeat, maintenance, settings.

The registration carries what the referral needs (``Meta``: the advertised
URL and the weight; ``Tags``: the discovery tag) and one HTTP check on the
server's own health endpoint, so Consul's passing / warning / critical follow
the server's 200 / 429 / 503. A new check starts critical, as Consul
intends: a server is not sent clients before the agent has seen it healthy.

The heartbeat asks the agent for the service (``/v1/agent/service/<id>``,
a 404 confirmed with ``/v1/agent/services``) and registers again only when it
is really absent — an agent restarted without its data directory (a
``-dev`` agent) forgets every service — restoring maintenance mode if the
server was draining. Drain is the agent's maintenance mode, which makes the
instance fail ``?passing`` everywhere at once.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from affinity.builtin.consul.blocking import TokenBucket, probed_read
from affinity.builtin.consul.catalog import (
    RESERVED_META_PREFIXES,
    SETTINGS,
    URL_META,
    WEIGHT_META,
    read_kv,
)
from affinity.builtin.consul.client import ConsulClient
from affinity.builtin.consul.options import ConsulOptions, go_duration
from affinity.errors import ConfigError
from affinity.models import Server, SharedSettings
from affinity.plugin.registry import Registrar
from affinity.protocol import HEALTH_PATH

log = logging.getLogger("affinity.server")

_META_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")


def check_meta(meta: Mapping[str, str], source: str) -> None:
    """Refuse server meta Consul would refuse, or that collides with affinity's own keys."""
    if len(meta) > 62:
        msg = f"Consul keeps at most 64 meta pairs and affinity uses 2; got {len(meta)}"
        raise ConfigError(msg, key="server.meta", source=source)
    for key, value in meta.items():
        where = f"server.meta.{key}"
        if not _META_KEY.fullmatch(key) or key.startswith(RESERVED_META_PREFIXES):
            msg = "Consul meta keys: 1-128 letters, digits, '_', '-'; not affinity_* or consul-*"
            raise ConfigError(msg, key=where, source=source)
        if len(value) > 512:
            raise ConfigError(
                "Consul meta values are at most 512 characters", key=where, source=source
            )


class ConsulRegistrar(Registrar):
    """Registers one app server with the Consul agent on its host."""

    name = "consul"

    def __init__(self, options: ConsulOptions) -> None:
        self.options = options
        self._client: ConsulClient | None = None
        self._maintenance: tuple[bool, str] = (False, "")
        self._list_only = False
        self._bucket = TokenBucket(options.watch_rate, options.watch_burst)

    @property
    def client(self) -> ConsulClient:
        """Made on first use, inside the running loop (aiohttp wants one)."""
        if self._client is None:
            self._client = ConsulClient(self.options)
        return self._client

    def definition(self, server: Server) -> dict[str, Any]:
        """The service definition sent to the agent (python-consul2's ``register`` arguments)."""
        parts = urllib.parse.urlsplit(server.url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        meta = {**server.meta, URL_META: server.url, WEIGHT_META: str(server.weight)}
        return {
            "name": self.options.consul_name(server.service),
            "service_id": server.id,
            "address": host,
            "port": port,
            "tags": [self.options.tag, *self.options.tags],
            "meta": meta,
            "check": self.check(parts.scheme, host, port),
        }

    def check(self, scheme: str, host: str, port: int) -> dict[str, Any]:
        """The HTTP check on the health endpoint, as the agent on this host reaches it."""
        o = self.options
        target = o.check_host or host
        netloc = f"[{target}]:{port}" if ":" in target else f"{target}:{port}"
        check: dict[str, Any] = {
            "http": f"{scheme}://{netloc}{HEALTH_PATH}",
            "interval": go_duration(o.check_interval),
            "timeout": go_duration(o.check_timeout),
        }
        if o.deregister_critical_service_after > 0:
            check["DeregisterCriticalServiceAfter"] = go_duration(
                o.deregister_critical_service_after
            )
        if scheme == "https":
            check["TLSSkipVerify"] = o.tls_skip_verify
            server_name = o.tls_server_name or (host if o.check_host else "")
            if server_name:
                check["TLSServerName"] = server_name
        return check

    async def register(self, server: Server) -> None:
        """Register, then set maintenance to this process's state.

        The agent keeps maintenance mode across re-registrations (and, with a
        data directory, across its restarts), so a server that crashed while
        draining would otherwise come back still in maintenance.
        """
        await self.client.register(**self.definition(server))
        enabled, reason = self._maintenance
        await self.client.maintenance(server.id, enabled, reason)

    async def heartbeat(self, server: Server) -> None:
        """Register again only when the agent really lacks the service.

        A 404 from ``/v1/agent/service/<id>`` is confirmed with
        ``/v1/agent/services``: if the service is listed there, the agent lacks
        the single-service endpoint (older or other implementations), and the
        list is asked from then on.
        """
        if await self._known(server.id):
            return
        log.warning("the Consul agent forgot %s (restarted?); registering again", server.id)
        await self.register(server)

    async def _known(self, service_id: str) -> bool:
        if not self._list_only and await self.client.agent_service(service_id) is not None:
            return True
        known = service_id in await self.client.agent_services()
        if known and not self._list_only:
            self._list_only = True
            log.info(
                "the Consul agent answers 404 on /v1/agent/service/%s yet lists it; "
                "asking /v1/agent/services from now on",
                service_id,
            )
        return known

    async def deregister(self, server: Server) -> None:
        if not await self.client.deregister(server.id):
            log.info("the Consul agent did not know %s any more", server.id)

    async def set_maintenance(self, server: Server, enabled: bool, reason: str = "") -> None:
        self._maintenance = (enabled, reason or "draining")
        if not await self.client.maintenance(server.id, enabled, reason or "draining"):
            log.warning("the Consul agent forgot %s; registering again", server.id)
            await self.register(server)

    async def watch_settings(
        self, index: int, wait: float
    ) -> tuple[int, Mapping[str, SharedSettings]]:
        """A blocking read of ``<prefix>settings/``; rate-limited and probed for an index
        reset like every watch, so a document written after the agent lost its KV arrives
        within ``reset_probe``, not after the pending read's ``wait``."""
        await self._bucket.take()
        prefix = self.options.kv_prefix

        async def fetch(at: int, wait: float) -> tuple[int, list[Any]]:
            return await self.client.kv_list(prefix + SETTINGS, at, wait)

        wait = min(wait, self.options.wait)
        probe = self.options.reset_probe
        returned, entries = await probed_read(fetch, max(index, 0), wait, probe, "settings")
        _, settings = read_kv(entries, prefix)
        return returned, settings

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
