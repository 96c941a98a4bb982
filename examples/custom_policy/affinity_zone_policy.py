"""An example assignment policy plugin: prefer servers in the client's zone.

Servers carry ``meta = {zone = "eu"}``; the policy's ``zone`` option names the
preferred zone. Within it, and as a fallback outside it, clients are spread
by rendezvous hashing on the client id, so every referral replica agrees.
Select it with ``policy = "zone"`` and ``policy_options = {zone = "eu"}``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from affinity.models import AssignRequest, Pool, Server
from affinity.plugin import hookimpl
from affinity.plugin.options import option
from affinity.plugin.policy import Policy


@dataclass(frozen=True, kw_only=True)
class ZoneOptions:
    """``policy_options`` of ``policy = "zone"``: declared once, checked by the core."""

    zone: str = option(
        help="The zone whose servers are preferred (servers' `meta.zone`).",
        pattern=r"[a-z0-9-]{1,32}",
        expected="a zone name, for example 'eu'",
    )


def _score(client_id: str, server_id: str) -> bytes:
    return hashlib.blake2b(f"{client_id}/{server_id}".encode(), digest_size=8).digest()


class ZonePolicy(Policy):
    """Servers of the configured zone first; any assignable server otherwise."""

    name = "zone"
    guarantee = "the same answer in every worker and replica for the same view"
    options_class = ZoneOptions
    options: ZoneOptions

    def choose(self, pool: Pool, request: AssignRequest) -> Server | None:
        usable = [s for s in pool.assignable if s.id not in request.avoid]
        local = [s for s in usable if s.meta.get("zone") == self.options.zone]
        return _pick(local or usable, request.client_id)


def _pick(servers: Sequence[Server], client_id: str) -> Server | None:
    return max(servers, key=lambda s: _score(client_id, s.id), default=None)


@hookimpl
def affinity_make_policy(name: str, options: Mapping[str, Any]) -> Policy | None:
    """Answer for ``policy = "zone"``; a missing or bad ``zone`` is a ConfigError naming it."""
    return ZonePolicy(options) if name == "zone" else None
