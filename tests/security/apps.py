"""App servers that misbehave on purpose, for the hostile-input suite."""

from __future__ import annotations

from sanic import HTTPResponse, Request
from sanic.response import raw

from affinity import AppServer


class EndlessHealth(AppServer):
    """Health answers 200 with a JSON body that never ends."""

    name = "endless-health"

    async def _health_route(self, request: Request) -> HTTPResponse:
        response = await request.respond(content_type="application/json")
        await response.send(b'{"status": "passing", "padding": "')
        chunk = b"a" * 65536
        while True:
            await response.send(chunk)


class HugeHealth(AppServer):
    """Health answers 200 with a 4 MiB body whose Content-Length says so."""

    name = "huge-health"

    async def _health_route(self, request: Request) -> HTTPResponse:
        body = b'{"status": "passing", "padding": "' + b"a" * (4 << 20) + b'"}'
        return raw(body, content_type="application/json")
