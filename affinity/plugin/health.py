"""Health-source base class and the sink it reports into."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import ClassVar, Protocol

from affinity.models import HealthStatus, Load, Server


class HealthSink(Protocol):
    """What a health source reports into: the referral's server table."""

    def servers(self) -> Iterable[Server]:
        """The servers currently known, all services."""
        ...

    def set_health(
        self,
        server_id: str,
        status: HealthStatus,
        *,
        load: Load | None = None,
        draining: bool | None = None,
        reason: str = "",
        latency: float | None = None,
        failed: bool = False,
    ) -> None:
        """Record a health observation for a server.

        ``reason`` says why the status is what it is; ``failed`` marks a check
        that did not get a proper answer (kept as the server's last failure
        even while ``fall`` has not been reached and the status stays passing).
        """
        ...


class HealthSource(ABC):
    """A background producer of health and load observations for the referral.

    ``run`` is a long-running coroutine started at referral start-up and
    cancelled at shutdown. ``recheck`` is a passive signal (a client reported
    the server as failing): synchronous, no I/O; it may schedule an early check
    but must never eject a server on its own.
    """

    name: ClassVar[str]

    @abstractmethod
    async def run(self, sink: HealthSink) -> None:
        """Observe servers until cancelled."""

    def recheck(self, server_id: str) -> None:
        """Schedule an early check of a server a client reported as failing."""

    async def aclose(self) -> None:
        """Release connections."""
