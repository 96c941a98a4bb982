"""python-consul2 on one pooled aiohttp session, with affinity's errors; the only ``import consul``.

Why not ``consul.aio.Consul`` as it comes (docs/consul.md, "The client underneath"): its
adapter opens a new connector and session per request (no keep-alive, a handshake per call),
leaves aiohttp's 300 s total timeout under blocking reads that may last
``wait + wait/16``, warns from ``__del__``, needs an event loop at
construction, and lets ``CONSUL_HTTP_*`` variables override the arguments it
is given. :class:`PooledHTTPClient` replaces its HTTP client: one session,
created on first use inside the running loop, and a per-request timeout of
``wait + wait/16 + timeout`` for blocking reads and ``timeout`` otherwise.
:class:`AffinityConsul` keeps python-consul2's endpoint groups and callbacks
but sets them up from the validated options only, never from the environment.

Every failure leaves this module as :class:`RegistryUnavailable` (network,
timeout, 5xx, an answer of the wrong shape) or :class:`RegistrationFailed`
(4xx: the agent refused). Messages name the call, never the token.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp
import consul
import consul.aio
import consul.base

from affinity.builtin.consul.options import ConsulOptions, go_duration, parse_go_duration
from affinity.errors import RegistrationFailed, RegistryError, RegistryUnavailable

Params = Sequence[tuple[str, Any]] | Mapping[str, Any] | None


class PooledHTTPClient(consul.base.HTTPClient):  # type: ignore[misc]
    """python-consul2's HTTP client contract on one reused aiohttp session."""

    def __init__(self, options: ConsulOptions) -> None:
        super().__init__(options.host, options.port, options.scheme, timeout=options.timeout)
        self.base_uri = options.base_url
        self._ca_file = options.ca_file
        self._session: aiohttp.ClientSession | None = None
        self.connections_opened = 0

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            tls: ssl.SSLContext | bool = True
            if self.scheme == "https":
                cafile = str(self._ca_file) if self._ca_file else None
                tls = ssl.create_default_context(cafile=cafile)
            trace = aiohttp.TraceConfig()
            trace.on_connection_create_end.append(self._count_connection)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls, limit=0, keepalive_timeout=60.0),
                timeout=aiohttp.ClientTimeout(total=None),
                trace_configs=[trace],
                auto_decompress=True,
            )
        return self._session

    async def _count_connection(self, *_: object) -> None:
        self.connections_opened += 1

    def _timeout(self, params: Params) -> float:
        """``timeout``, plus the wait and Consul's wait/16 jitter for a blocking read."""
        pairs = params.items() if isinstance(params, Mapping) else (params or ())
        for name, value in pairs:
            if name == "wait":
                wait = parse_go_duration(str(value)) or 0.0
                return float(self.timeout) + wait * 17 / 16
        return float(self.timeout)

    async def _request(
        self,
        callback: Callable[[Any], Any],
        method: str,
        path: str,
        params: Params,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        what = f"{method} {path}"
        timeout = aiohttp.ClientTimeout(total=self._timeout(params))
        try:
            async with self._open().request(
                method, self.uri(path, params), data=data, headers=headers, timeout=timeout
            ) as resp:
                content = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
            msg = f"Consul agent at {self.base_uri} is unreachable ({what}): {reason}"
            raise RegistryUnavailable(msg) from exc
        body = content.decode("utf-8", "replace")
        try:
            return callback(consul.base.Response(resp.status, resp.headers, body, content))
        except Exception as exc:
            raise translate(exc, what) from exc

    async def get(
        self, callback: Callable[[Any], Any], path: str, params: Params = None, headers: Any = None
    ) -> Any:
        return await self._request(callback, "GET", path, params, headers=headers)

    async def put(
        self,
        callback: Callable[[Any], Any],
        path: str,
        params: Params = None,
        data: Any = "",
        headers: Any = None,
    ) -> Any:
        return await self._request(callback, "PUT", path, params, data, headers)

    async def delete(
        self,
        callback: Callable[[Any], Any],
        path: str,
        params: Params = None,
        data: Any = "",
        headers: Any = None,
    ) -> Any:
        return await self._request(callback, "DELETE", path, params, data, headers)

    async def post(
        self,
        callback: Callable[[Any], Any],
        path: str,
        params: Params = None,
        data: Any = "",
        headers: Any = None,
    ) -> Any:
        return await self._request(callback, "POST", path, params, data, headers)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def translate(exc: Exception, what: str) -> RegistryError:
    """A python-consul2 (or decoding) failure as affinity's error: 4xx refused, else unavailable."""
    if isinstance(exc, RegistryError):
        return exc
    if isinstance(exc, consul.base.ACLPermissionDenied):
        return RegistrationFailed(f"Consul denied {what}: {exc}; check the ACL token's policy")
    if isinstance(exc, consul.base.BadRequest | consul.base.ClientError | consul.base.NotFound):
        return RegistrationFailed(f"Consul refused {what}: {exc}")
    if isinstance(exc, consul.base.ConsulException):
        return RegistryUnavailable(f"Consul failed {what}: {exc}")
    return RegistryUnavailable(f"Consul answered {what} with something unexpected: {exc!r}")


class AffinityConsul(consul.aio.Consul):  # type: ignore[misc]
    """python-consul2's endpoint groups, set up from the options alone.

    ``consul.base.Consul.__init__`` is deliberately not called: it reads
    ``CONSUL_HTTP_ADDR`` / ``_SSL`` / ``_SSL_VERIFY`` / ``_TOKEN`` and lets them
    override explicit arguments, raises on a malformed ``CONSUL_HTTP_ADDR``
    even when an address is given, warns about legacy APIs, and (in
    ``consul.aio``) asks for an event loop. Only the groups affinity uses exist.
    """

    def __init__(self, http: PooledHTTPClient, options: ConsulOptions) -> None:
        self.http = http
        self.token = options.token
        self.dc = options.datacenter or None
        self.consistency = "default"
        self.scheme = options.scheme
        self.agent = consul.base.Consul.Agent(self)
        self.catalog = consul.base.Consul.Catalog(self)
        self.health = consul.base.Consul.Health(self)
        self.kv = consul.base.Consul.KV(self)

    def http_connect(self, *args: Any, **kwargs: Any) -> PooledHTTPClient:
        return self.http


def _index(raw: object, what: str) -> int:
    try:
        return max(int(str(raw)), 1)
    except ValueError:
        msg = f"Consul answered {what} without a usable X-Consul-Index ({raw!r})"
        raise RegistryUnavailable(msg) from None


def _agent_service(response: Any) -> dict[str, Any] | None:
    if response.code == 404:
        return None
    consul.base.CB._status(response)
    data: dict[str, Any] = json.loads(response.body)
    return data


class ConsulClient:
    """The calls affinity makes, typed, over :class:`AffinityConsul`."""

    def __init__(self, options: ConsulOptions) -> None:
        self.options = options
        self.http = PooledHTTPClient(options)
        self.api = AffinityConsul(self.http, options)

    def _headers(self) -> dict[str, str]:
        token = self.options.token
        return {"X-Consul-Token": token} if token else {}

    def _read_params(self, index: int, wait: float) -> list[tuple[str, Any]]:
        params: list[tuple[str, Any]] = []
        if index > 0:
            params += [("index", index), ("wait", go_duration(wait))]
        if self.options.stale_reads:
            params.append(("stale", "1"))
        if self.options.datacenter:
            params.append(("dc", self.options.datacenter))
        return params

    # -- reads for the referral --------------------------------------------------------

    async def health_service(self, name: str, index: int, wait: float) -> tuple[int, list[Any]]:
        """``GET /v1/health/service/<name>`` (every instance, all check states), blocking."""
        path = f"/v1/health/service/{name}"
        raw_index, entries = await self.http.get(
            consul.base.CB.json(index=True),
            path,
            params=self._read_params(index, wait),
            headers=self._headers(),
        )
        return _index(raw_index, path), list(entries or [])

    async def catalog_services(self, index: int, wait: float) -> tuple[int, dict[str, Any]]:
        """``GET /v1/catalog/services``: names and the union of their tags, blocking."""
        raw_index, services = await self.api.catalog.services(
            index=index or None,
            wait=go_duration(wait),
            consistency="stale" if self.options.stale_reads else None,
        )
        return _index(raw_index, "GET /v1/catalog/services"), dict(services or {})

    async def kv_list(self, prefix: str, index: int, wait: float) -> tuple[int, list[Any]]:
        """Every entry under ``prefix`` (values decoded to bytes), blocking."""
        raw_index, entries = await self.api.kv.get(
            prefix,
            index=index or None,
            wait=go_duration(wait),
            recurse=True,
            consistency="stale" if self.options.stale_reads else None,
        )
        return _index(raw_index, f"GET /v1/kv/{prefix}"), list(entries or [])

    # -- KV writes ------------------------------------------------------------------------

    async def kv_get(self, key: str) -> dict[str, Any] | None:
        """One key, read from the leader (for check-and-set)."""
        _, entry = await self.api.kv.get(key)
        return dict(entry) if entry else None

    async def kv_put(self, key: str, value: bytes, cas: int | None = None) -> bool:
        """Write a key; with ``cas`` only if its ModifyIndex still is ``cas`` (0: absent)."""
        return bool(await self.api.kv.put(key, value, cas=cas))

    async def kv_delete(self, key: str) -> bool:
        return bool(await self.api.kv.delete(key))

    # -- the local agent, for app servers ---------------------------------------------------

    async def register(
        self,
        *,
        name: str,
        service_id: str,
        address: str,
        port: int,
        tags: list[str],
        meta: dict[str, str],
        check: dict[str, Any],
    ) -> None:
        ok = await self.api.agent.service.register(
            name,
            service_id=service_id,
            address=address,
            port=port,
            tags=tags,
            meta=meta,
            check=check,
        )
        if not ok:
            raise RegistrationFailed(f"the Consul agent did not accept service {service_id!r}")

    async def deregister(self, service_id: str) -> bool:
        """True if the agent knew the service (python-consul2 answers False on 404)."""
        return bool(await self.api.agent.service.deregister(service_id))

    async def maintenance(self, service_id: str, enable: bool, reason: str) -> bool:
        """False when the agent does not know the service (404)."""
        flag = "true" if enable else "false"
        return bool(await self.api.agent.service.maintenance(service_id, flag, reason or None))

    async def agent_service(self, service_id: str) -> dict[str, Any] | None:
        """``GET /v1/agent/service/<id>``: the agent's own record, None if it forgot it."""
        result: dict[str, Any] | None = await self.http.get(
            _agent_service, f"/v1/agent/service/{service_id}", headers=self._headers()
        )
        return result

    async def agent_services(self) -> dict[str, Any]:
        """``GET /v1/agent/services``: every service the agent holds, by id."""
        services = await self.api.agent.services()
        if not isinstance(services, dict):
            msg = f"Consul answered GET /v1/agent/services with {type(services).__name__}"
            raise RegistryUnavailable(msg)
        return services

    async def aclose(self) -> None:
        await self.http.aclose()
        # Let aiohttp finish closing the connector's transports before the loop moves on.
        await asyncio.sleep(0)
