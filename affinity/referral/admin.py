"""The admin API: list, register, deregister, drain and resume servers; shared settings.

Every call needs ``Authorization: Bearer <admin token>``, compared in
constant time (:mod:`affinity.web.auth`). Without an admin token configured
the API is closed. A server's registration token also opens the calls on
that server's own id, and reading the shared settings; listing all servers
and writing settings stay with the admin token. Errors are raised;
:mod:`affinity.web.http` answers them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from sanic import Blueprint, HTTPResponse, Request

from affinity.errors import InvalidRequest, NotFound
from affinity.models import Server, SharedSettings
from affinity.protocol import ErrorCode
from affinity.referral.context import ReferralContext
from affinity.web.auth import admin_only, admin_or_server
from affinity.web.http import json_response
from affinity.web.names import OriginRules, check_server, is_valid_id

admin = Blueprint("affinity_admin", url_prefix="/v1")


def _ctx(request: Request) -> ReferralContext:
    ctx: ReferralContext = request.app.ctx.affinity
    return ctx


def _unknown(server_id: str) -> NotFound:
    return NotFound(f"no server with id {server_id!r}", code=ErrorCode.UNKNOWN_SERVER)


@admin.get("/servers")
@admin_only
async def list_servers(request: Request) -> HTTPResponse:
    ctx = _ctx(request)
    servers = [ctx.table.describe(s) for s in sorted(ctx.table.servers(), key=lambda s: s.id)]
    return json_response(
        {
            "servers": servers,
            "services": ctx.service_summary(),
            "index": ctx.table.view_index,
            "stale": ctx.table.stale,
            "stale_reason": ctx.table.stale_reason,
        }
    )


@admin.get("/servers/<server_id>")
@admin_or_server
async def get_server(request: Request, server_id: str) -> HTTPResponse:
    ctx = _ctx(request)
    server = ctx.table.get(server_id)
    if server is None:
        raise _unknown(server_id)
    return json_response(ctx.table.describe(server))


@admin.put("/servers/<server_id>")
@admin_or_server
async def put_server(request: Request, server_id: str) -> HTTPResponse:
    ctx = _ctx(request)
    try:
        server = _parse_server(
            server_id, request.body, ctx.config.referral.default_service, ctx.origin_rules
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc), code=ErrorCode.INVALID_SERVER) from exc
    await ctx.registry.register(server)
    await ctx.refresh_view()
    current = ctx.table.get(server_id)
    return json_response(ctx.table.describe(current) if current else {"id": server_id})


@admin.delete("/servers/<server_id>")
@admin_or_server
async def delete_server(request: Request, server_id: str) -> HTTPResponse:
    ctx = _ctx(request)
    if not await ctx.registry.deregister(server_id):
        raise _unknown(server_id)
    await ctx.refresh_view()
    return json_response({"id": server_id, "deregistered": True})


async def _set_draining(request: Request, server_id: str, draining: bool) -> HTTPResponse:
    ctx = _ctx(request)
    if not await ctx.registry.set_draining(server_id, draining):
        raise _unknown(server_id)
    await ctx.refresh_view()
    return json_response({"id": server_id, "draining": draining})


@admin.post("/servers/<server_id>/drain")
@admin_or_server
async def drain(request: Request, server_id: str) -> HTTPResponse:
    return await _set_draining(request, server_id, True)


@admin.post("/servers/<server_id>/resume")
@admin_or_server
async def resume(request: Request, server_id: str) -> HTTPResponse:
    return await _set_draining(request, server_id, False)


@admin.get("/settings")
@admin_or_server
async def list_settings(request: Request) -> HTTPResponse:
    """All shared settings; with ``index``, a blocking query that answers once they change."""
    ctx = _ctx(request)
    try:
        index = int(request.args.get("index", "0"))
        wait = min(float(request.args.get("wait", "30")), 60.0)
    except ValueError as exc:
        raise InvalidRequest(
            "index is an integer, wait a number of seconds", code=ErrorCode.INVALID_QUERY
        ) from exc
    if index == ctx.settings_index and wait > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.settings_event.wait(), wait)
    documents = {
        name: {"epoch": s.epoch, "version": s.version, "value": s.value}
        for name, s in ctx.settings.documents.items()
    }
    return json_response({"index": ctx.settings_index, "settings": documents})


@admin.get("/settings/<name>")
@admin_only
async def get_settings(request: Request, name: str) -> HTTPResponse:
    ctx = _ctx(request)
    current = ctx.settings.documents.get(name)
    if current is None:
        raise NotFound(f"no shared settings named {name!r}", code=ErrorCode.UNKNOWN_SETTINGS)
    return json_response(
        {"name": name, "epoch": current.epoch, "version": current.version, "value": current.value}
    )


@admin.put("/settings/<name>")
@admin_only
async def put_settings(request: Request, name: str) -> HTTPResponse:
    ctx = _ctx(request)
    if not is_valid_id(name):
        raise InvalidRequest(
            f"settings name {name!r} is not valid", code=ErrorCode.INVALID_SETTINGS
        )
    value = _parse_object(request.body)
    if value is None:
        raise InvalidRequest("the body must be a JSON object", code=ErrorCode.INVALID_JSON)
    current = ctx.settings.documents.get(name)
    proposed = SharedSettings(
        name=name, version=(current.version if current else 0) + 1, value=value
    )
    problem = ctx.settings.check(proposed)
    if problem is not None:
        ctx.metrics.settings_refused(name)
        raise InvalidRequest(
            f"rejected whole, previous kept: {problem}", code=ErrorCode.INVALID_SETTINGS
        )
    stored = await ctx.registry.put_settings(name, value)
    await ctx.refresh_view()
    return json_response({"name": name, "epoch": stored.epoch, "version": stored.version})


def _parse_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(body or b"null")
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _parse_server(server_id: str, body: bytes, default_service: str, rules: OriginRules) -> Server:
    data = _parse_object(body)
    if data is None:
        raise ValueError("the body must be a JSON object with at least 'url'")
    unknown = set(data) - {"url", "service", "weight", "meta"}
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}; expected url, service, weight, meta")
    return check_server(
        server_id=server_id,
        service=data.get("service", default_service),
        url=data.get("url"),
        weight=data.get("weight", 1),
        meta=data.get("meta"),
        rules=rules,
    )
