"""A request filter the guard tests load into an app server (``AFFINITY_PLUGINS``).

It records what it is shown of each request the test marks with the header ``X-Test-Note``
(role, method, path, client id, server id: not the referral's health checks), refuses
every request that carries the header ``X-Test-Refuse``, and fails (raises) on every request
that carries ``X-Test-Fail``. ``GET /test/filtered`` returns the
record and clears it (:class:`tests.record.Record`).
"""

from __future__ import annotations

from typing import Any

from sanic import Sanic

from affinity import hookimpl
from affinity.models import Rejection, RequestInfo
from tests.record import Record

SEEN = Record("/test/filtered")


@hookimpl
def affinity_reject_request(request: RequestInfo) -> Rejection | None:
    if request.path == SEEN.path:
        return None
    if "x-test-note" in request.headers:
        SEEN.append(
            {
                "role": request.role,
                "method": request.method,
                "path": request.path,
                "client_id": request.client_id,
                "server_id": request.server_id,
            }
        )
    if "x-test-fail" in request.headers:
        raise RuntimeError("the test filter failed")
    if "x-test-refuse" in request.headers:
        return Rejection(status=403, error="refused_by_test", detail="the test filter says no")
    return None


@hookimpl
def affinity_register_routes(app: Sanic[Any, Any], role: str) -> None:
    SEEN.serve(app)
