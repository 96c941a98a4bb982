"""Registry base classes.

``Registry`` is where the referral reads servers from; ``Registrar`` is how an
app server makes itself known.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from affinity.errors import RegistrationFailed
from affinity.models import Server, SharedSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryView:
    """Everything a registry knows at one index: servers of all services and shared settings.

    ``stale`` is True when the registry could not be reached and this is the
    last known view; ``stale_reason`` then says why (shown in ``GET /v1/servers``).
    """

    index: int
    servers: tuple[Server, ...] = ()
    settings: Mapping[str, SharedSettings] = field(default_factory=dict)
    stale: bool = False
    stale_reason: str = ""


class Registry(ABC):
    """The referral's source of servers. One instance per worker process.

    ``watch`` is a blocking query: it returns as soon as the view's index differs
    from ``index``, or after about ``wait`` seconds with the same view.
    Writable registries (the embedded one) also accept registrations from the
    admin API; read-only ones raise :class:`RegistrationFailed`.
    """

    name: ClassVar[str]

    async def start(self) -> None:
        """Open connections, load state. Called once before the first ``watch``."""

    @abstractmethod
    async def watch(self, index: int, wait: float) -> RegistryView:
        """Return the view once its index differs from ``index`` or ``wait`` passes."""

    async def register(self, server: Server) -> None:
        """Add or replace a server (admin API)."""
        msg = f"registry {self.name!r} is read-only; register servers with it directly"
        raise RegistrationFailed(msg)

    async def deregister(self, server_id: str) -> bool:
        """Remove a server; True if it was known."""
        msg = f"registry {self.name!r} is read-only"
        raise RegistrationFailed(msg)

    async def set_draining(self, server_id: str, draining: bool) -> bool:
        """Mark a server draining or not; True if it was known."""
        msg = f"registry {self.name!r} cannot drain servers"
        raise RegistrationFailed(msg)

    async def put_settings(self, name: str, value: Mapping[str, Any]) -> SharedSettings:
        """Store a shared settings document under a new version."""
        msg = f"registry {self.name!r} cannot store shared settings"
        raise RegistrationFailed(msg)

    async def aclose(self) -> None:
        """Release connections and tasks."""


class Registrar(ABC):
    """How an app server makes itself known. One instance per app-server process."""

    name: ClassVar[str]

    @abstractmethod
    async def register(self, server: Server) -> None:
        """Register (or re-register) this server."""

    @abstractmethod
    async def deregister(self, server: Server) -> None:
        """Remove this server; must not raise when it is already gone."""

    async def heartbeat(self, server: Server) -> None:
        """Called periodically: re-register when the registry has forgotten the server."""
        await self.register(server)

    async def set_maintenance(self, server: Server, enabled: bool, reason: str = "") -> None:
        """Tell the registry the server is draining (maintenance) or back."""

    async def watch_settings(
        self, index: int, wait: float
    ) -> tuple[int, Mapping[str, SharedSettings]]:
        """Shared settings documents, once their index differs from ``index`` or ``wait`` passes.

        A blocking query like :meth:`Registry.watch`. The default shares
        nothing: it waits and answers no documents.
        """
        await asyncio.sleep(wait)
        return index, {}

    async def aclose(self) -> None:
        """Release connections."""
