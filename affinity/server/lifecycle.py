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
import functools
import logging
import signal
from typing import Any

from sanic import HTTPResponse, Request, Sanic

from affinity.backoff import Backoff
from affinity.errors import AffinityError
from affinity.logs import Repeated
from affinity.plugin.registry import Registrar
from affinity.protocol import DRAIN_PATH, RESUME_PATH
from affinity.server.state import ServerState
from affinity.web import systemd
from affinity.web.auth import BearerAuth, admin_only
from affinity.web.http import json_response
from affinity.web.reload import on_reload

log = logging.getLogger("affinity.server")
SETTINGS_BACKOFF = Backoff(base=0.2, cap=10.0)
"""The wait between reads of the shared settings while the registry fails."""


class Lifecycle:
    """Registration, heartbeat and the drain sequence of one app server."""

    def __init__(self, state: ServerState, role: str = "server") -> None:
        self.state = state
        self.role = role
        self.registrar: Registrar | None = None
        self.stopping = False
        self._app: Sanic[Any, Any] | None = None

    def install(self, app: Sanic[Any, Any]) -> None:
        """Add the listeners, and the admin routes that drain and resume without stopping."""
        app.register_listener(self._before_start, "before_server_start")
        app.register_listener(self._after_start, "after_server_start")
        app.register_listener(self._after_stop, "after_server_stop")
        on_reload(app, "key ring", self.state.tokens.reload)
        on_reload(app, "admin token", functools.partial(self._reload_admin_token, app))
        on_reload(app, "shared settings", self._reload_settings)
        app.add_route(admin_only(self._drain), DRAIN_PATH, methods=["POST"], name="affinity_drain")
        app.add_route(
            admin_only(self._resume), RESUME_PATH, methods=["POST"], name="affinity_resume"
        )

    async def _before_start(self, app: Sanic[Any, Any]) -> None:
        self._app = app
        state = self.state
        await state.tokens.start()
        self.registrar = state.manager.make_registrar(state.config)
        await state.manager.startup(app, self.role)

    async def _after_start(self, app: Sanic[Any, Any]) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.on_signal)
        await self._register()
        app.add_task(self._heartbeat(), name="affinity.heartbeat")
        app.add_task(self._watch_settings(), name="affinity.settings")

    async def _after_stop(self, app: Sanic[Any, Any]) -> None:
        await self.state.manager.shutdown(app, self.role)
        await self.state.tokens.aclose()
        if self.registrar is not None:
            await self.registrar.aclose()

    async def _register(self) -> None:
        assert self.registrar is not None
        server = self.state.server
        try:
            await self.registrar.register(server)
            log.info("registered %s as %s", server.id, server.url)
        except AffinityError as exc:
            log.warning("could not register yet (%s); the heartbeat will retry", exc)

    async def _heartbeat(self) -> None:
        assert self.registrar is not None
        interval = self.state.config.server.heartbeat_interval
        failures = Repeated(log, "heartbeat failed")
        while not self.stopping:
            await asyncio.sleep(interval)
            if self.stopping:
                break
            try:
                await self.registrar.heartbeat(self.state.server)
            except AffinityError as exc:
                failures.failed(exc)
            else:
                failures.recovered("heartbeat answered again")

    async def _reload_admin_token(self, app: Sanic[Any, Any]) -> None:
        """SIGHUP: the admin token of the drain and resume routes."""
        app.ctx.admin_auth.take(BearerAuth.from_config(self.state.config, "server"))

    async def _reload_settings(self) -> None:
        """SIGHUP: the shared settings read now, not at the watch's next answer."""
        if self.registrar is None:
            return
        _, documents = await self.registrar.watch_settings(0, 0.0)
        for settings in documents.values():
            self.state.shared_settings.offer(settings)

    async def _watch_settings(self) -> None:
        """Apply shared settings (firewall rules and the like) as the registry changes them."""
        assert self.registrar is not None
        index = 0
        failures = Repeated(log, "shared settings unavailable")
        while not self.stopping:
            try:
                index, documents = await self.registrar.watch_settings(index, 30.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a registrar's bug must not end the task either
                delay = SETTINGS_BACKOFF.delay(failures.failures + 1)
                failures.failed(
                    exc,
                    retry_in=delay,
                    exc_info=None if isinstance(exc, AffinityError) else exc,
                )
                await asyncio.sleep(delay)
                continue
            failures.recovered("shared settings available again")
            for settings in documents.values():
                self.state.shared_settings.offer(settings)  # refuses what a plugin fails on

    # -- drain ----------------------------------------------------------------------

    def on_signal(self) -> None:
        if self.stopping:
            log.warning("second signal: stopping at once")
            self._stop_now()
            return
        self.stopping = True
        systemd.stopping("draining, then stopping")
        assert self._app is not None
        self._app.add_task(self.shutdown(), name="affinity.shutdown")

    def _stop_now(self) -> None:
        if self._app is not None:
            self._app.stop(terminate=False)

    async def start_drain(self) -> None:
        """Stop taking new clients now; reassign this server's clients after the grace."""
        state = self.state
        if not state.start_drain():
            return
        log.info("draining %s (grace %.1fs)", state.server.id, state.config.server.drain_grace)
        if self.registrar is not None:
            try:
                await self.registrar.set_maintenance(state.server, True, "draining")
            except AffinityError as exc:
                log.warning("could not tell the registry about the drain: %s", exc)

    async def resume(self) -> None:
        self.state.end_drain()
        if self.registrar is not None:
            try:
                await self.registrar.set_maintenance(self.state.server, False)
            except AffinityError as exc:
                log.warning("could not tell the registry about the resume: %s", exc)

    async def shutdown(self) -> None:
        """The whole drain sequence, then stop the app."""
        state = self.state
        settings = state.config.server
        await self.start_drain()
        await asyncio.sleep(settings.drain_grace)
        # While draining, the last request out sets ``idle`` (guard.release).
        if state.inflight:
            state.idle.clear()
        else:
            state.idle.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.idle.wait(), settings.drain_timeout)
        if state.inflight:
            log.warning(
                "%d requests still in flight after %.1fs; stopping anyway",
                state.inflight,
                settings.drain_timeout,
            )
        if self.registrar is not None:
            try:
                await self.registrar.deregister(state.server)
            except AffinityError as exc:
                log.warning("could not deregister: %s", exc)
        log.info("drained %s; stopping", state.server.id)
        self._stop_now()

    # -- the admin routes ------------------------------------------------------------

    async def _drain(self, request: Request) -> HTTPResponse:
        """``POST /.well-known/affinity/drain``: start draining without stopping the process."""
        await self.start_drain()
        systemd.status("draining (POST /.well-known/affinity/drain)")
        return json_response({"id": self.state.server.id, "draining": True})

    async def _resume(self, request: Request) -> HTTPResponse:
        """``POST /.well-known/affinity/resume``: take new clients again."""
        await self.resume()
        systemd.status("serving (resumed)")
        return json_response({"id": self.state.server.id, "draining": False})
