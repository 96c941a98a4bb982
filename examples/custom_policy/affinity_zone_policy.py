"""An example assignment policy plugin: prefer servers in the client's zone.

Servers carry ``meta = {zone = "eu"}``; the policy's ``zone`` option names the
preferred zone. Within it, and as a fallback outside it, clients are spread
by rendezvous hashing on the client id, so every referral replica agrees.
Select it with ``policy = "zone"`` and ``policy_options = {zone = "eu"}``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from affinity import hookimpl
from affinity.errors import ConfigError
from affinity.models import AssignRequest, Pool, Server
from affinity.plugin.policy import Policy


def _score(client_id: str, server_id: str) -> bytes:
    return hashlib.blake2b(f"{client_id}/{server_id}".encode(), digest_size=8).digest()


class ZonePolicy(Policy):
    """Servers of the configured zone first; any assignable server otherwise."""

    name = "zone"
    guarantee = "the same answer in every worker and replica for the same view"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        zone = self.options.get("zone")
        if not isinstance(zone, str) or not zone:
            raise ConfigError("expected a zone name, for example 'eu'", key="zone")
        self.zone = zone

    def choose(self, pool: Pool, request: AssignRequest) -> Server | None:
        usable = [s for s in pool.assignable if s.id not in request.avoid]
        local = [s for s in usable if s.meta.get("zone") == self.zone]
        return _pick(local or usable, request.client_id)


def _pick(servers: Sequence[Server], client_id: str) -> Server | None:
    return max(servers, key=lambda s: _score(client_id, s.id), default=None)


@hookimpl
def affinity_make_policy(name: str, options: Mapping[str, Any]) -> Policy | None:
    """Answer for ``policy = "zone"``."""
    return ZonePolicy(options) if name == "zone" else None
