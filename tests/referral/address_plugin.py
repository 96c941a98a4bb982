"""A plugin the trusted-proxy test loads into a referral: it records the client addresses
that the policy and the ``affinity_server_avoided`` hook are given, and serves the record at
``GET /test/seen`` (:class:`tests.record.Record`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sanic import Sanic

from affinity import hookimpl
from affinity.models import AssignRequest, Pool, Server
from affinity.plugin.policy import Policy
from tests.record import Record

SEEN = Record("/test/seen")


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


@hookimpl
def affinity_register_routes(app: Sanic[Any, Any], role: str) -> None:
    SEEN.serve(app)
