"""The metrics plumbing: counting folded into prometheus-client, plugin counters, worker
directories, both formats."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.parser import text_string_to_metric_families as prometheus_text_families

from affinity.referral.metrics import fold_periodically
from affinity.web import exposition
from affinity.web.counting import Counts, Observations
from affinity.web.metrics import REQUEST_BUCKETS, Metrics, PluginEvents, ServerMetrics
from tests.promtext import parse


def test_a_labelled_child_is_looked_up_once() -> None:
    metrics = Metrics()
    family = metrics.counter("things", "Things", ["kind"])
    family.inc("a")
    metrics.fold()
    first = family.child(("a",))
    family.inc("a")
    assert family.child(("a",)) is first
    assert metrics.totals("things_total") == {(("kind", "a"),): 2.0}


# Observed values on, between and beyond the bucket bounds, and a negative one.
VALUES = [0.0, 0.0005, 0.0007, 0.001, 0.3, 2.5, 9.99, 10.0, 11.0, 1e9, -1.0, 0.0005]


def test_folded_counts_and_observations_read_as_prometheus_clients_own() -> None:
    """The library's inc and observe, side by side with the counts folded into it."""
    library, ours = CollectorRegistry(), CollectorRegistry()
    ref_counter = Counter("hits", "Hits", ["route", "status"], registry=library)
    ref_histogram = Histogram("took", "Took", ["route"], buckets=REQUEST_BUCKETS, registry=library)
    counts = Counts(Counter("hits", "Hits", ["route", "status"], registry=ours))
    observations = Observations(
        Histogram("took", "Took", ["route"], buckets=REQUEST_BUCKETS, registry=ours),
        REQUEST_BUCKETS,
    )
    for n, value in enumerate(VALUES):
        route = "/a" if n % 3 else "/b"
        ref_counter.labels(route, "200").inc()
        ref_histogram.labels(route).observe(value)
        counts.count((route, 200))
        observations.observe(value, (route,))
        if n == 5:  # two folds: the second adds to the first
            counts.fold()
            observations.fold()
    counts.fold()
    observations.fold()
    assert generate_latest(ours) == generate_latest(library)
    # On a bound counts in that bucket; -1 too.
    assert b'took_bucket{le="0.0005",route="/a"} 3.0' in generate_latest(ours)


def test_a_scrape_shows_every_answer_counted_before_it() -> None:
    metrics = ServerMetrics(dict)
    for status in (200, 200, 404):
        metrics.answered("/items/<id>", "GET", status, 0.002)
    metrics.answered("/", "BREW", 200, None)
    families = parse(metrics.exposition()[0].decode())
    requests = families["affinity_app_requests_total"]
    assert requests.value(route="/items/<id>", method="GET", status="200") == 2
    assert requests.value(route="/items/<id>", method="GET", status="404") == 1
    assert requests.value(route="/", method="OTHER", status="200") == 1
    seconds = families["affinity_app_request_duration_seconds"]
    count = "affinity_app_request_duration_seconds_count"
    assert seconds.value(count, route="/items/<id>", method="GET") == 3


async def test_the_fold_timer_logs_a_failed_fold_and_keeps_folding(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0
    second = asyncio.Event()

    def counters() -> dict[str, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("the plugin's counters are gone")
        second.set()
        return {"rule": calls}

    metrics = Metrics()
    metrics.observe_plugins(counters, dict)
    family = metrics.counter("things", "Things", ["kind"])
    family.inc("a")
    task = asyncio.create_task(fold_periodically(metrics, 0.0))
    try:
        await asyncio.wait_for(second.wait(), 10)
    finally:
        task.cancel()
    assert not family.pending  # folded even though the plugin's counters failed
    assert "folding this worker's counts" in caplog.text
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)


def test_plugin_counters_are_copied_as_increments_and_survive_a_reset() -> None:
    counts = {"rule": 5}
    metrics = Metrics()
    events: PluginEvents = metrics.observe_plugins(lambda: counts, dict)
    events.sync()
    counts["rule"] = 7
    events.sync()
    assert metrics.totals("affinity_plugin_events_total") == {(("rule", "rule"),): 7.0}
    counts["rule"] = 2  # the plugin started counting again
    events.sync()
    assert metrics.totals("affinity_plugin_events_total") == {(("rule", "rule"),): 9.0}


def test_a_scrape_syncs_the_plugin_counters() -> None:
    metrics = Metrics()
    metrics.observe_plugins(lambda: {"r": 3}, lambda: {"fw": 4})
    families = parse(metrics.exposition()[0].decode())
    assert families["affinity_plugin_events_total"].value(rule="r") == 3
    assert families["affinity_settings_version"].value(name="fw") == 4


def test_text_and_openmetrics_are_strictly_valid() -> None:
    metrics = ServerMetrics(lambda: {"active_clients": 1, "inflight": 0, "capacity": 4})
    metrics.answered("/", "GET", 200, 0.01)
    text, content_type = metrics.exposition(None)
    assert content_type.startswith("text/plain; version=0.0.4")
    families = parse(text.decode())
    assert families["affinity_app_capacity"].value() == 4
    body, content_type = metrics.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "affinity_app_requests" in names and "affinity_build_info" in names


def test_no_created_series() -> None:
    metrics = Metrics()
    metrics.counter("things", "Things", ["kind"]).inc("a")
    assert b"_created" not in metrics.exposition()[0]


def test_live_workers_are_those_whose_process_runs(tmp_path: Path) -> None:
    exposition.worker_started(tmp_path)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    (tmp_path / f"worker-{gone.stdout.strip()}").touch()
    (tmp_path / "worker-junk").touch()
    assert exposition.live_workers(tmp_path) == [os.getpid()]
    exposition.worker_stopped(tmp_path)
    assert exposition.live_workers(tmp_path) == []


def test_the_main_process_makes_and_removes_the_shared_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(exposition.MULTIPROC_ENV, raising=False)
    monkeypatch.setattr(exposition.tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    leftover = tmp_path / f"affinity-metrics-{dead}-abc"
    leftover.mkdir()
    with exposition.shared_metrics_dir() as made:
        assert os.environ[exposition.MULTIPROC_ENV] == str(made)
        assert made.parent == tmp_path and made.is_dir()
        assert not leftover.exists()  # its main process was killed: swept
    assert not made.exists() and exposition.MULTIPROC_ENV not in os.environ


def test_a_directory_the_operator_named_is_used_and_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    named = tmp_path / "prom"
    monkeypatch.setenv(exposition.MULTIPROC_ENV, str(named))
    with exposition.shared_metrics_dir() as used:
        assert used == named and named.is_dir()
    assert named.is_dir() and os.environ[exposition.MULTIPROC_ENV] == str(named)


def test_a_routes_answering_counts_as_answered_does() -> None:
    """The guard's per-route call, side by side with answered (which the library checks)."""
    ours, reference = ServerMetrics(dict), ServerMetrics(dict)
    routes = {route: ours.answering(route) for route in ("/a", "/items/<id>")}
    for n, value in enumerate(VALUES):
        route = "/a" if n % 3 else "/items/<id>"
        method = ("GET", "POST", "BREW")[n % 3]
        status = (200, 404)[n % 2]
        routes[route](method, status, value)
        reference.answered(route, method, status, value)
        if n == 5:  # two folds: the second adds to the first, from the same kept cells
            ours.fold()
            reference.fold()
    ours.fold()
    reference.fold()
    ours_text, reference_text = generate_latest(ours.registry), generate_latest(reference.registry)
    assert _samples(ours_text) == _samples(reference_text)  # the order of the series aside
    assert b'method="OTHER"' in ours_text
    assert b'method="PUT"' not in ours_text  # no series for the cells never counted in


def _samples(text: bytes) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    return sorted(
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in prometheus_text_families(text.decode())
        for s in family.samples
    )
