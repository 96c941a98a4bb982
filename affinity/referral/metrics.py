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
from affinity.web.metrics import Metrics, ReferralMetrics

log = logging.getLogger("affinity.referral")

FOLD_INTERVAL = 1.0
"""Seconds between folds of a worker's counts (its own and its plugins') into the shared ones."""


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


def start_worker_metrics(app: Sanic[Any, Any], metrics: ReferralMetrics) -> None:
    """With several workers: note this one, and fold its counts on a timer.

    A scrape is answered by one worker, which reads every worker's counters
    from the shared directory: another worker's requests show there once
    that worker has folded them, within :data:`FOLD_INTERVAL`.
    """
    if metrics.directory is None:
        return
    worker_started(metrics.directory)
    app.add_task(fold_periodically(metrics), name="affinity.metrics.fold")


def stop_worker_metrics(metrics: ReferralMetrics) -> None:
    if metrics.directory is not None:
        _fold(metrics)  # the last requests this worker served
        worker_stopped(metrics.directory)


async def fold_periodically(metrics: Metrics, interval: float = FOLD_INTERVAL) -> None:
    """Fold ``metrics`` every ``interval`` seconds until cancelled; failures are logged."""
    failures = Repeated(
        log, "folding this worker's counts into the shared metrics failed", level=logging.ERROR
    )
    while True:
        await asyncio.sleep(interval)
        try:
            metrics.fold()
        except Exception as exc:  # a plugin's counters or a metrics file: keep counting
            failures.failed(f"{type(exc).__name__}: {exc}", exc_info=exc)
        else:
            failures.recovered("folding this worker's counts works again")


def _fold(metrics: Metrics) -> None:
    try:
        metrics.fold()
    except Exception:  # a plugin's counters or a metrics file failed: log it, stop anyway
        log.exception("folding this worker's counts into the shared metrics failed")
