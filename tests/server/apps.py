"""App servers used by the tests."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable
from typing import Any

from sanic import Blueprint, HTTPResponse, Request
from sanic.response import json

from affinity import AppServer, HealthStatus, route


async def upload(request: Request) -> HTTPResponse:
    """``/upload`` takes its body as a stream (``stream=True``): the bytes it read.

    A function, not a method: Sanic marks a streaming handler with an attribute."""
    received = 0
    while (chunk := await request.stream.read()) is not None:  # type: ignore[union-attr]
        received += len(chunk)
    return json({"received": received})


class Holding(AppServer):
    """``/hold`` stays in flight until SIGUSR1, ``/hold-too`` until SIGUSR2; ``/status/<s>`` sets
    the app's own health."""

    name = "holding"

    def setup(self, app: Any) -> None:
        self.released = asyncio.Event()
        self.released_too = asyncio.Event()
        self.own: HealthStatus | None = None
        self.posts = 0
        app.register_listener(self._listen_release, "before_server_start")
        extra = Blueprint("extra", url_prefix="/bp")
        extra.add_route(self.plain_whoami, "/whoami", name="bp_whoami")
        extra.add_route(self.plain_echo, "/echo/<word>", name="bp_echo")
        extra.add_route(self.plain_deferred, "/deferred", name="bp_deferred")
        app.blueprint(extra)
        app.add_route(self.stream, "/stream", name="stream")
        app.add_route(upload, "/upload", methods=["POST"], stream=True, name="upload")

    def plain_whoami(self, request: Request) -> HTTPResponse:
        """A plain function (not a coroutine) on a blueprint: guarded like any route."""
        return json({"server": self.server_id, "client": request.ctx.client_id})

    def plain_echo(self, request: Request, word: str) -> HTTPResponse:
        """A plain function with a path parameter."""
        return json({"server": self.server_id, "word": word})

    def plain_deferred(self, request: Request) -> Awaitable[HTTPResponse]:
        """A plain function that returns an awaitable (here ``whoami``'s coroutine)."""
        return self.whoami(request)

    async def _listen_release(self, app: Any) -> None:
        # A signal, not a route: while draining, routes answer 503 to new requests. Before
        # the server starts, so that no request can be held before the signal releases it.
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, self.released.set)
        loop.add_signal_handler(signal.SIGUSR2, self.released_too.set)

    def health(self) -> HealthStatus | None:
        return self.own

    def load_figures(self) -> dict[str, float]:
        return {"queue_depth": 7.0}

    @route("/hold")
    async def hold(self, request: Request) -> HTTPResponse:
        await self.released.wait()
        return json({"server": self.server_id, "held": True})

    @route("/hold-too")
    async def hold_too(self, request: Request) -> HTTPResponse:
        """Like ``/hold``, until SIGUSR2."""
        await self.released_too.wait()
        return json({"server": self.server_id, "held": True})

    @route("/status/<status>", methods=["POST"])
    async def set_status(self, request: Request, status: str) -> HTTPResponse:
        self.own = HealthStatus(status)
        return json({"status": status})

    @route("/whoami")
    async def whoami(self, request: Request) -> HTTPResponse:
        return json({"server": self.server_id, "client": request.ctx.client_id})

    @route("/claims")
    async def claims(self, request: Request) -> HTTPResponse:
        """The verified claims the guard hands the app, or ``null`` without a valid token."""
        claims = request.ctx.claims
        seen = None if claims is None else {"sid": claims.sid, "cid": claims.cid, "svc": claims.svc}
        return json({"claims": seen})

    @route("/count", methods=["POST"])
    async def count(self, request: Request) -> HTTPResponse:
        self.posts += 1
        return json({"server": self.server_id, "posts": self.posts})

    async def stream(self, request: Request) -> None:
        """``/stream``, streamed with ``request.respond``: the handler returns nothing."""
        response = await request.respond(status=202, content_type="text/plain")
        await response.send("streamed")
        await response.eof()

    @route("/Xtra/", strict_slashes=True)
    async def extra(self, request: Request) -> HTTPResponse:
        """A path that starts with ``X`` and ends with ``/`` (kept: strict slashes)."""
        return json({"server": self.server_id})

    @route("/boom")
    async def boom(self, request: Request) -> HTTPResponse:
        raise RuntimeError("the app failed")

    @route("/silent")
    async def silent(self, request: Request) -> None:
        """Returns nothing and does not answer either: Sanic answers 500 for it."""

    @route("/posts")
    async def posts_seen(self, request: Request) -> HTTPResponse:
        return json({"posts": self.posts})


class Chatty(AppServer):
    """``/echo`` is a WebSocket route that sends back each message it gets, with the client id."""

    name = "chatty"

    def setup(self, app: Any) -> None:
        app.add_websocket_route(self.echo, "/echo", name="echo")

    async def echo(self, request: Request, ws: Any) -> None:
        async for message in ws:
            await ws.send(f"{request.ctx.client_id}: {message}")


HOLDING = f"{__file__}:Holding"
"""What ``Deployment.start_server(app=...)`` takes to serve :class:`Holding`; likewise below."""
CHATTY = f"{__file__}:Chatty"
