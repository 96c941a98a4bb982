"""A plugin the assign tests load into a referral: it records what the referral tells plugins
about each ``/v1/assign`` call and serves the record at ``GET /test/observed``
(:class:`tests.record.Record`).

- ``affinity_assigned``: every assignment made (service, client id, avoid, previous server,
  client address, chosen server, token, lifetime, sticky);
- ``affinity_server_avoided``: every server a client reported (service, server, address);
- a health source named ``recording``: every re-check asked of it. It marks the servers
  known at start passing once and never checks anything itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sanic import Sanic

from affinity import hookimpl
from affinity.config import Config
from affinity.models import Assignment, HealthStatus
from affinity.plugin.health import HealthSink, HealthSource
from tests.record import Record

SEEN = Record("/test/observed")


class RecordingSource(HealthSource):
    """Passing for every server known at start; notes each re-check asked of it."""

    name = "recording"

    async def run(self, sink: HealthSink) -> None:
        for server in list(sink.servers()):
            sink.set_health(server.id, HealthStatus.PASSING)
        await asyncio.Event().wait()  # until cancelled at shutdown

    def recheck(self, server_id: str) -> None:
        SEEN.append({"event": "recheck", "server": server_id})


@hookimpl
def affinity_make_health_source(name: str, config: Config) -> HealthSource | None:
    return RecordingSource() if name == RecordingSource.name else None


@hookimpl
def affinity_assigned(assignment: Assignment) -> None:
    request = assignment.request
    SEEN.append(
        {
            "event": "assigned",
            "service": request.service,
            "client_id": request.client_id,
            "avoid": sorted(request.avoid),
            "previous": request.previous,
            "client_ip": request.client_ip,
            "server": assignment.server.id,
            "token": assignment.token,
            "expires_in": assignment.expires_in,
            "sticky": assignment.sticky,
        }
    )


@hookimpl
def affinity_server_avoided(service: str, server_id: str, client_ip: str) -> None:
    SEEN.append({"event": "avoided", "service": service, "server": server_id, "ip": client_ip})


@hookimpl
def affinity_register_routes(app: Sanic[Any, Any], role: str) -> None:
    SEEN.serve(app)
