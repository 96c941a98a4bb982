"""The demo app server that ``affinity dev`` runs: says who answered, counts requests per client.

It ships in the package so that ``affinity dev`` works from any directory after
``pip install affinity-lb``, and it is the smallest useful example of an
:class:`affinity.AppServer` subclass: run one yourself with
``affinity serve affinity.demo:Hello --config affinity.toml``.
"""

from __future__ import annotations

from collections import Counter

from sanic import HTTPResponse, Request
from sanic.response import json

from affinity.server.base import AppServer, route


class Hello(AppServer):
    """Answers ``GET /`` with the server id and a per-client counter."""

    name = "hello"

    def setup(self, app: object) -> None:
        # Per-client state lives on this server because the referral keeps each
        # client here while the server is healthy; a real app would keep what it
        # must not lose in a database and use this only as a warm cache.
        self.visits: Counter[str] = Counter()

    @route("/")
    async def index(self, request: Request) -> HTTPResponse:
        client = request.ctx.client_id or "anonymous"
        self.visits[client] += 1
        return json({"server": self.server_id, "client": client, "visits": self.visits[client]})

    @route("/echo", methods=["POST"])
    async def echo(self, request: Request) -> HTTPResponse:
        return json({"server": self.server_id, "bytes": len(request.body)})
