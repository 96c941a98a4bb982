"""A plugin the trusted-proxy test loads into a referral: it records the client addresses
that the policy and the ``affinity_server_avoided`` hook are given, and serves the record at
``GET /test/seen``. One referral worker, so the module-level record is the whole record."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sanic import HTTPResponse, Request, Sanic
from sanic.response import json

from affinity import hookimpl
from affinity.models import AssignRequest, Pool, Server
from affinity.plugin.policy import Policy

SEEN: list[tuple[str, str]] = []


class Recording(Policy):
    """The first assignable server not avoided; notes the client address it was given."""

    name = "recording"

    def choose(self, pool: Pool, request: AssignRequest) -> Server | None:
        SEEN.append(("policy", request.client_ip))
        return next((s for s in pool.assignable if s.id not in request.avoid), None)


@hookimpl
def affinity_make_policy(name: str, options: Mapping[str, Any]) -> Policy | None:
    return Recording(options) if name == Recording.name else None


@hookimpl
def affinity_server_avoided(service: str, server_id: str, client_ip: str) -> None:
    SEEN.append(("avoided", client_ip))


async def _seen(request: Request) -> HTTPResponse:
    taken = list(SEEN)
    SEEN.clear()
    return json(taken)


@hookimpl
def affinity_register_routes(app: Sanic[Any, Any], role: str) -> None:
    app.add_route(_seen, "/test/seen", methods=["GET"], name="test_seen")
