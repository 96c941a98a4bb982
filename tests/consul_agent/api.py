"""The ``/v1/`` endpoints affinity's Consul backend calls, answered as a Consul agent answers them.

Errors are plain text. A query parameter the backend does not send is refused
with a 400 naming it, never silently ignored. Reads are blocking reads.
See https://developer.hashicorp.com/consul/api-docs/api-structure and
https://developer.hashicorp.com/consul/api-docs/features/blocking.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from tests.consul_agent.decode import (
    SERVICE_FIELDS,
    ApiError,
    decode,
    http_check,
    parse_go_duration,
    service,
)
from tests.consul_agent.state import SERF, AgentState, Check, KVEntry, Service

T = TypeVar("T")

DEFAULT_WAIT, MAX_WAIT = 300.0, 600.0
KV_MAX_VALUE = 512 * 1024
_GO_BOOL = dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True) | dict.fromkeys(
    ("0", "f", "F", "FALSE", "false", "False"), False
)


def _only(request: web.Request, *known: str) -> None:
    for name in request.query:
        if name not in known:
            raise ApiError(400, f"the Consul stand-in does not model ?{name} on {request.path}")


def _json(data: object, index: int | None = None, status: int = 200) -> web.Response:
    body = json.dumps(data, separators=(",", ":")).encode() if status == 200 else None
    response = web.Response(status=status, body=body, content_type="application/json")
    if index is not None:
        response.headers["X-Consul-Index"] = str(max(index, 1))
        response.headers["X-Consul-KnownLeader"] = "true"
        response.headers["X-Consul-LastContact"] = "0"
    return response


class AgentApi:
    def __init__(self, state: AgentState) -> None:
        self.state = state
        self.config = state.config

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Answer errors in plain text; while frozen, hold requests and answers alike."""
        await self.state.unfrozen.wait()
        try:
            response = await handler(request)
        except ApiError as exc:
            response = web.Response(status=exc.status, text=exc.message)
        await self.state.unfrozen.wait()
        return response

    def routes(self) -> list[web.RouteDef]:
        return [
            web.put("/v1/agent/service/register", self.register),
            web.put("/v1/agent/service/deregister/{id}", self.deregister),
            web.put("/v1/agent/service/maintenance/{id}", self.maintenance),
            web.get("/v1/agent/service/{id}", self.agent_service),
            web.get("/v1/agent/services", self.agent_services),
            web.get("/v1/health/service/{name}", self.health_service),
            web.get("/v1/catalog/services", self.catalog_services),
            web.get("/v1/kv/{key:.*}", self.kv_get),
            web.put("/v1/kv/{key:.*}", self.kv_put),
            web.delete("/v1/kv/{key:.*}", self.kv_delete),
        ]

    # -- ACLs: a token in X-Consul-Token, or none (the anonymous token, allowed nothing)

    def allowed(self, request: web.Request) -> bool:
        token = request.headers.get("X-Consul-Token", "")
        if token and self.config.acl_tokens and token not in self.config.acl_tokens:
            raise ApiError(403, "ACL not found")
        return bool(token) or not self.config.acl_tokens

    def require(self, request: web.Request, permission: str, resource: str) -> None:
        if not self.allowed(request):
            raise ApiError(
                403,
                f"Permission denied: anonymous token lacks permission '{permission}' "
                f'on "{resource}". The anonymous token is used implicitly when a request '
                "does not specify a token.",
            )

    async def blocking(
        self, request: web.Request, query: Callable[[], T], *flags: str
    ) -> tuple[int, T]:
        """At once without ``?index``; with it, once the index passes it or after ``wait``
        (5 min by default, at most 10) plus up to wait/16 of jitter."""
        _only(request, "index", "wait", "stale", "dc", *flags)
        try:
            index = int(request.query.get("index") or 0)
        except ValueError:
            raise ApiError(400, "Invalid index") from None
        try:
            wait = parse_go_duration(request.query.get("wait") or "0")
        except ValueError:
            raise ApiError(400, "Invalid wait time") from None
        if request.query.get("dc", self.config.datacenter) != self.config.datacenter:
            raise ApiError(500, "No path to datacenter")

        def probe() -> tuple[bool, tuple[int, T]]:
            return self.state.index > index, (self.state.index, query())

        if index <= 0:
            return probe()[1]
        wait = min(wait or DEFAULT_WAIT, MAX_WAIT)
        return await self.state.wait_until(probe, wait + random.uniform(0, wait / 16))

    # -- the local agent

    async def register(self, request: web.Request) -> web.StreamResponse:
        _only(request)
        try:
            fields = decode(json.loads(await request.read()), SERVICE_FIELDS)
        except ValueError as exc:
            raise ApiError(400, f"Request decode failed: {exc}") from None
        new = service(fields)
        check = http_check(new, fields["Check"]) if "Check" in fields else None
        self.require(request, "service:write", new.name)
        self.state.register(new, check)
        return web.Response()

    def known(self, request: web.Request) -> Service:
        found = self.state.services.get(service_id := request.match_info["id"])
        if found is None:
            raise ApiError(
                404,
                f'Unknown service ID "{service_id}". '
                "Ensure that the service ID is passed, not the service name.",
            )
        self.require(request, "service:write", found.name)
        return found

    async def deregister(self, request: web.Request) -> web.StreamResponse:
        _only(request)
        self.state.deregister(self.known(request).id)
        return web.Response()

    async def maintenance(self, request: web.Request) -> web.StreamResponse:
        _only(request, "enable", "reason")
        if "enable" not in request.query:
            raise ApiError(400, "Missing value for enable")
        if (enable := _GO_BOOL.get(request.query["enable"])) is None:
            raise ApiError(400, f'Invalid value for enable: "{request.query["enable"]}"')
        self.state.set_maintenance(self.known(request), enable, request.query.get("reason", ""))
        return web.Response()

    async def agent_service(self, request: web.Request) -> web.StreamResponse:
        _only(request)
        if not self.config.agent_service_endpoint:
            raise ApiError(404, "404 page not found")
        found = self.state.services.get(service_id := request.match_info["id"])
        if found is None:
            raise ApiError(404, f"unknown service ID: {service_id}")
        self.require(request, "service:read", found.name)
        return _json(self.record(found))

    async def agent_services(self, request: web.Request) -> web.StreamResponse:
        """Every service of the agent by id; without a token (ACLs on), none."""
        _only(request)
        visible = self.allowed(request)
        return _json({s.id: self.record(s) for s in self.sorted() if visible})

    # -- discovery

    async def health_service(self, request: web.Request) -> web.StreamResponse:
        name, visible = request.match_info["name"], self.allowed(request)
        index, entries = await self.blocking(
            request, lambda: [self.entry(s) for s in self.sorted() if visible and s.name == name]
        )
        return _json(entries, index)

    async def catalog_services(self, request: web.Request) -> web.StreamResponse:
        visible = self.allowed(request)

        def query() -> dict[str, list[str]]:
            union: dict[str, list[str]] = {"consul": []}
            for found in self.sorted():
                tags = union.setdefault(found.name, [])
                tags.extend(t for t in found.tags if t not in tags)
            return union if visible else {}

        index, services = await self.blocking(request, query)
        return _json(services, index)

    # -- KV

    async def kv_get(self, request: web.Request) -> web.StreamResponse:
        key, recurse = request.match_info["key"], "recurse" in request.query
        if not recurse:  # a single key is denied to the anonymous token, a listing filtered
            self.require(request, "key:read", key)

        read = self.blocking(request, lambda: self.state.kv_read(key, recurse), "recurse")
        index, entries = await read
        if entries and self.allowed(request):
            return _json([_kv_entry(e) for e in entries], index)
        return _json(None, index, status=404)

    async def kv_put(self, request: web.Request) -> web.StreamResponse:
        _only(request, "cas", "flags", "dc")
        if not (key := request.match_info["key"]):
            raise ApiError(400, "Missing key name")
        cas, flags = request.query.get("cas"), request.query.get("flags", "0")
        if not (flags.isdigit() and (cas is None or cas.isdigit())):
            raise ApiError(400, "Invalid cas or flags value")
        if len(value := await request.read()) > KV_MAX_VALUE:
            raise ApiError(413, f"Request body({len(value)} bytes) too large")
        self.require(request, "key:write", key)
        stored = self.state.kv_put(key, value, int(flags), None if cas is None else int(cas))
        return _json(stored)

    async def kv_delete(self, request: web.Request) -> web.StreamResponse:
        _only(request, "recurse", "dc")
        self.require(request, "key:write", request.match_info["key"])
        self.state.kv_delete(request.match_info["key"], "recurse" in request.query)
        return _json(True)

    # -- renderings, in Consul's CamelCase

    def sorted(self) -> list[Service]:
        return sorted(self.state.services.values(), key=lambda s: s.id)

    def record(self, found: Service) -> dict[str, Any]:
        return {
            "ID": found.id,
            "Service": found.name,
            "Tags": found.tags,
            "Meta": found.meta,
            "Port": found.port,
            "Address": found.address,
            "Datacenter": self.config.datacenter,
        }

    def entry(self, found: Service) -> dict[str, Any]:
        """A ``/v1/health/service`` element: the node, the instance, and all their checks."""
        node = {"Node": self.config.node_name, "Datacenter": self.config.datacenter}
        return {
            "Node": {**node, "Address": self.config.host},
            "Service": {**self.record(found), "Meta": found.meta or None},
            "Checks": [self.check(c, found) for c in (SERF, *self.state.checks_of(found.id))],
        }

    def check(self, check: Check, found: Service) -> dict[str, Any]:
        own = check.service_id == found.id
        return {
            "Node": self.config.node_name,
            "CheckID": check.check_id,
            "Name": check.name,
            "Status": check.status,
            "Notes": check.notes,
            "Output": check.output,
            "ServiceID": check.service_id,
            "ServiceName": found.name if own else "",
            "ServiceTags": found.tags if own else [],
            "Type": "http" if check.http else "",
        }


def _kv_entry(entry: KVEntry) -> dict[str, Any]:
    return {
        "LockIndex": 0,
        "Key": entry.key,
        "Flags": entry.flags,
        "Value": base64.b64encode(entry.value).decode() if entry.value else None,
        "CreateIndex": entry.create_index,
        "ModifyIndex": entry.modify_index,
    }
