"""The app server measured by bench_server.py: one JSON route, like the minimal Sanic app."""

from __future__ import annotations

import orjson
from sanic import HTTPResponse, Request

from affinity import AppServer, route


class Bench(AppServer):
    name = "bench"

    @route("/")
    async def index(self, request: Request) -> HTTPResponse:
        body = orjson.dumps({"server": {"id": "s1", "url": "https://s1.example"}, "sticky": False})
        return HTTPResponse(body, content_type="application/json")
