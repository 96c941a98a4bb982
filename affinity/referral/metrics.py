"""The referral's metrics wired to its parts: the server table, the registry, the workers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sanic import Sanic

from affinity.logs import Repeated
from affinity.models import Server
from affinity.plugin.registry import Registry
from affinity.referral.table import ServerTable
from affinity.web.exposition import multiprocess_dir, worker_started, worker_stopped
from affinity.web.metrics import PluginEvents, ReferralMetrics

log = logging.getLogger("affinity.referral")

PLUGIN_SYNC_INTERVAL = 1.0
"""Seconds between copies of a worker's plugin counters into the shared counters."""


def referral_metrics(table: ServerTable, registry: Registry, workers: int) -> ReferralMetrics:
    """The metrics of one referral process, fed by ``table``'s health observations."""
    metrics = ReferralMetrics(
        lambda: [table.describe(s) for s in table.servers()],
        lambda: {"name": registry.name, "stale": table.stale, "index": table.view_index},
        multiprocess_dir() if workers > 1 else None,
    )

    def changed(before: Server, after: Server) -> None:
        metrics.health_changed(after.service, after.id, before.health.value, after.health.value)

    def checked(server: Server, seconds: float) -> None:
        metrics.checked(server.service, seconds)

    table.on_health_change = changed
    table.on_check = checked
    return metrics


def start_worker_metrics(
    app: Sanic[Any, Any], metrics: ReferralMetrics, events: PluginEvents
) -> None:
    """With several workers: note this one, and copy its plugin counters on a timer."""
    if metrics.directory is None:
        return
    worker_started(metrics.directory)
    app.add_task(_sync_plugin_events(events), name="affinity.metrics.plugins")


def stop_worker_metrics(metrics: ReferralMetrics) -> None:
    if metrics.directory is not None:
        worker_stopped(metrics.directory)


async def _sync_plugin_events(events: PluginEvents) -> None:
    failures = Repeated(log, "reading the plugins' counters failed", level=logging.ERROR)
    while True:
        await asyncio.sleep(PLUGIN_SYNC_INTERVAL)
        try:
            events.sync()
        except Exception as exc:  # a plugin's counters failed: log it, keep the loop
            failures.failed(f"{type(exc).__name__}: {exc}", exc_info=exc)
        else:
            failures.recovered("reading the plugins' counters works again")
