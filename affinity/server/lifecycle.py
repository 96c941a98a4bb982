"""An app server's life: register on start, heartbeat, drain on SIGTERM, deregister, exit 0.

Drain sequence: health turns draining at once (the referral stops sending new
clients) and the registry is told (maintenance); after ``drain_grace`` seconds
other requests are answered ``503`` with ``Affinity-Reassign: 1`` and a
jittered ``Retry-After`` so clients move spread out in time; requests in
flight finish (at most ``drain_timeout``); the server deregisters and stops.
A second SIGINT or SIGTERM stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import random
import signal
import time
from typing import TYPE_CHECKING, Any

from sanic import HTTPResponse, Request, Sanic

from affinity.errors import AffinityError
from affinity.models import SharedSettings
from affinity.plugin.registry import Registrar
from affinity.web.http import error_response, json_response

if TYPE_CHECKING:
    from affinity.server.base import AppServer

log = logging.getLogger("affinity.server")


class Lifecycle:
    """Registration, heartbeat and the drain sequence of one app server."""

    def __init__(self, server: AppServer) -> None:
        self.server = server
        self.registrar: Registrar | None = None
        self.stopping = False
        self.settings: dict[str, int] = {}
        """Version in force of each shared settings document."""
        self._refused: dict[str, int] = {}
        self._app: Sanic[Any, Any] | None = None

    def install(self, app: Sanic[Any, Any]) -> None:
        app.register_listener(self._before_start, "before_server_start")
        app.register_listener(self._after_start, "after_server_start")
        app.register_listener(self._after_stop, "after_server_stop")

    async def _before_start(self, app: Sanic[Any, Any]) -> None:
        self._app = app
        await self.server.tokens.start()
        self.registrar = self.server.manager.make_registrar(self.server.config)
        await self.server.manager.startup(app, self.server.role)

    async def _after_start(self, app: Sanic[Any, Any]) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal)
        await self._register()
        app.add_task(self._heartbeat(), name="affinity.heartbeat")
        app.add_task(self._watch_settings(), name="affinity.settings")

    async def _after_stop(self, app: Sanic[Any, Any]) -> None:
        await self.server.manager.shutdown(app, self.server.role)
        await self.server.tokens.aclose()
        if self.registrar is not None:
            await self.registrar.aclose()

    async def _register(self) -> None:
        assert self.registrar is not None
        try:
            await self.registrar.register(self.server.server)
            log.info("registered %s as %s", self.server.server_id, self.server.url)
        except AffinityError as exc:
            log.warning("could not register yet (%s); the heartbeat will retry", exc)

    async def _heartbeat(self) -> None:
        assert self.registrar is not None
        interval = self.server.config.server.heartbeat_interval
        while not self.stopping:
            await asyncio.sleep(interval)
            if self.stopping:
                break
            try:
                await self.registrar.heartbeat(self.server.server)
            except AffinityError as exc:
                log.warning("heartbeat failed: %s", exc)

    async def _watch_settings(self) -> None:
        """Apply shared settings (firewall rules and the like) as the registry changes them."""
        assert self.registrar is not None
        index, failures = 0, 0
        while not self.stopping:
            try:
                index, documents = await self.registrar.watch_settings(index, 30.0)
            except AffinityError as exc:
                failures += 1
                delay = random.uniform(0, min(10.0, 0.2 * 2**failures))
                log.warning("shared settings unavailable (%s); retry in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            for settings in documents.values():
                self._apply(settings)

    def _apply(self, settings: SharedSettings) -> None:
        """Put a newer document in force unless a plugin refuses it (reported once per version)."""
        name, version = settings.name, settings.version
        if version <= self.settings.get(name, 0) or self._refused.get(name) == version:
            return
        refusal = self.server.manager.apply_settings(settings)
        if refusal is None:
            self.settings[name] = version
            return
        self._refused[name] = version
        self.server.server_metrics.settings_refused(name)
        log.warning(
            "refused shared settings %r version %d whole, version %d stays: %s",
            name,
            version,
            self.settings.get(name, 0),
            refusal,
        )

    # -- drain ----------------------------------------------------------------------

    def on_signal(self) -> None:
        if self.stopping:
            log.warning("second signal: stopping at once")
            self._stop_now()
            return
        self.stopping = True
        assert self._app is not None
        self._app.add_task(self.shutdown(), name="affinity.shutdown")

    def _stop_now(self) -> None:
        if self._app is not None:
            self._app.stop(terminate=False)

    async def start_drain(self) -> None:
        """Stop taking new clients now; reassign this server's clients after the grace."""
        server = self.server
        if server.draining:
            return
        server.draining = True
        server.drain_started = time.monotonic()
        log.info("draining %s (grace %.1fs)", server.server_id, server.config.server.drain_grace)
        if self.registrar is not None:
            try:
                await self.registrar.set_maintenance(server.server, True, "draining")
            except AffinityError as exc:
                log.warning("could not tell the registry about the drain: %s", exc)

    async def resume(self) -> None:
        server = self.server
        server.draining = False
        server.drain_started = None
        if self.registrar is not None:
            try:
                await self.registrar.set_maintenance(server.server, False)
            except AffinityError as exc:
                log.warning("could not tell the registry about the resume: %s", exc)

    async def shutdown(self) -> None:
        """The whole drain sequence, then stop the app."""
        server = self.server
        settings = server.config.server
        await self.start_drain()
        await asyncio.sleep(settings.drain_grace)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.idle.wait(), settings.drain_timeout)
        if server.inflight:
            log.warning(
                "%d requests still in flight after %.1fs; stopping anyway",
                server.inflight,
                settings.drain_timeout,
            )
        if self.registrar is not None:
            try:
                await self.registrar.deregister(server.server)
            except AffinityError as exc:
                log.warning("could not deregister: %s", exc)
        log.info("drained %s; stopping", server.server_id)
        self._stop_now()


def _authorized(request: Request) -> bool:
    server: AppServer = request.app.ctx.affinity
    config = server.config
    expected = config.read_secret(
        config.server.admin_token_file, "AFFINITY_ADMIN_TOKEN", "server.admin_token_file"
    )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return (
        expected is not None
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.strip().encode(), expected.encode())
    )


def _unauthorized() -> HTTPResponse:
    return error_response(
        401, "unauthorized", "a valid 'Authorization: Bearer <admin token>' header is required"
    )


async def admin_drain(request: Request) -> HTTPResponse:
    """``POST /.well-known/affinity/drain``: start draining without stopping the process."""
    if not _authorized(request):
        return _unauthorized()
    server: AppServer = request.app.ctx.affinity
    await server.lifecycle.start_drain()
    return json_response({"id": server.server_id, "draining": True})


async def admin_resume(request: Request) -> HTTPResponse:
    """``POST /.well-known/affinity/resume``: take new clients again."""
    if not _authorized(request):
        return _unauthorized()
    server: AppServer = request.app.ctx.affinity
    await server.lifecycle.resume()
    return json_response({"id": server.server_id, "draining": False})
