"""``GET /v1/status``: the fleet as one document, for ``affinity status`` and the dashboard.

Servers as ``GET /v1/servers`` describes them, except that ``assignments``
counts every worker of this referral (from the metrics), and the totals of
assignments by outcome and of re-referrals by reason, also over all workers.
Rates are left to the reader: it polls and divides the difference.
"""

from __future__ import annotations

import os
import time
from typing import Any

from sanic import Blueprint, HTTPResponse, Request

from affinity.referral.context import ReferralContext
from affinity.version import __version__
from affinity.web.auth import admin_only
from affinity.web.http import NO_STORE, json_response
from affinity.web.metrics import REREFERRAL_REASONS

OUTCOMES = ("sticky", "referred", "no_server")


def fleet_status(ctx: ReferralContext) -> dict[str, Any]:
    """The status document (see the module docstring)."""
    by_server: dict[str, float] = {}
    outcomes = dict.fromkeys(OUTCOMES, 0.0)
    for labels, value in ctx.metrics.totals("affinity_assignments_total").items():
        label = dict(labels)
        outcomes[label["outcome"]] = outcomes.get(label["outcome"], 0.0) + value
        if label["server"]:
            by_server[label["server"]] = by_server.get(label["server"], 0.0) + value
    reasons = dict.fromkeys(REREFERRAL_REASONS, 0.0)
    for labels, value in ctx.metrics.totals("affinity_rereferrals_total").items():
        reason = dict(labels)["reason"]
        reasons[reason] = reasons.get(reason, 0.0) + value
    servers = []
    for server in sorted(ctx.table.servers(), key=lambda s: (s.service, s.id)):
        described = ctx.table.describe(server)
        described["assignments"] = int(by_server.get(server.id, 0))
        servers.append(described)
    summary = ctx.service_summary()
    for service, figures in summary.items():
        figures["policy"] = ctx.policy_for(service).name
    return {
        "version": __version__,
        "time": time.time(),
        "worker": os.getpid(),
        "registry": {
            "name": ctx.registry.name,
            "index": ctx.table.view_index,
            "stale": ctx.table.stale,
            "stale_reason": ctx.table.stale_reason,
        },
        "services": summary,
        "servers": servers,
        "totals": {
            "assignments": {k: int(v) for k, v in outcomes.items()},
            "rereferrals": {k: int(v) for k, v in reasons.items()},
        },
    }


status = Blueprint("affinity_status", url_prefix="/v1")


@status.get("/status")
@admin_only
async def get_status(request: Request) -> HTTPResponse:
    """``GET /v1/status`` (admin token)."""
    ctx: ReferralContext = request.app.ctx.affinity
    return json_response(fleet_status(ctx), headers=NO_STORE)
