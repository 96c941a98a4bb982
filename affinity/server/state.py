"""What an app server's request path and life cycle read and change, one per process.

:class:`ServerState` hangs on ``app.ctx.affinity``. The guard (every request)
counts requests in flight and served, and response bytes, notes active clients
and reads the drain state;
the life cycle starts and ends the drain and puts shared settings in force.
Neither touches the :class:`~affinity.server.base.AppServer` a developer
subclasses.
"""

from __future__ import annotations

import asyncio
import time

from affinity.config import Config
from affinity.models import Server
from affinity.plugin.manager import PluginManager
from affinity.plugin.settings import SettingsInForce
from affinity.server.activity import DecayingClients, Rates
from affinity.server.tokens import TokenCheck
from affinity.web.metrics import ServerMetrics

CLOCK = time.perf_counter
"""The clock of the request path: the guard reads it once per request, for the time the answer
took and for the active clients' count."""


class ServerState:
    """This server, its parts, and its drain and load state."""

    def __init__(self, config: Config, server: Server, manager: PluginManager) -> None:
        settings = config.server
        self.config = config
        self.server = server
        """This server as the registry sees it."""
        self.manager = manager
        self.tokens = TokenCheck(config)
        self.filtered = manager.has_request_filters()
        """Whether any plugin filters requests (else the guard skips asking)."""
        self.require_token = config.server.require_token
        self.draining = False
        self.drain_started: float | None = None
        self.inflight = 0
        self.idle = asyncio.Event()
        """Set when no request is in flight, kept up to date while draining only."""
        self.idle.set()
        self.active = DecayingClients(
            settings.load_half_life, settings.active_window, settings.active_max, CLOCK
        )
        """The clients with a valid token, each weighing less with the time since it was seen."""
        self.requests = 0
        """Requests let in (by the guard) since the start."""
        self.sent_bytes = 0
        """Bytes of the bodies answered to them, where the length is known (not streams)."""
        self.rates = Rates()
        self.shared_settings = SettingsInForce(
            manager, refused=lambda name: self.metrics.settings_refused(name)
        )
        """The shared settings documents in force in this process."""
        self.metrics = ServerMetrics(self.gauges)
        self.metrics.observe_plugins(manager.report_counters, self.shared_settings.versions)

    def reassigning(self) -> bool:
        """True once draining has lasted past the drain grace: clients are sent elsewhere."""
        started = self.drain_started
        return started is not None and time.monotonic() - started >= self.config.server.drain_grace

    def start_drain(self) -> bool:
        """Mark the server draining from now; False if it already was."""
        if self.draining:
            return False
        self.draining = True
        self.drain_started = time.monotonic()
        return True

    def end_drain(self) -> None:
        self.draining = False
        self.drain_started = None

    def gauges(self) -> dict[str, float]:
        """The load figures of the metrics endpoint (plugins' extra figures stay in health)."""
        rps, bytes_per_s = self.rates.read(self.requests, self.sent_bytes)
        return {
            "active_clients": self.active.weight(),
            "client_ids": len(self.active),
            "rps": rps,
            "bytes_per_s": bytes_per_s,
            "inflight": self.inflight,
            "capacity": self.config.server.capacity,
            "capacity_inflight": self.config.server.capacity_inflight,
            "capacity_bytes_per_s": self.config.server.capacity_bytes_per_s,
            "draining": 1 if self.draining else 0,
        }
