"""The Prometheus exposition of one affinity process, or of all workers of a referral.

One worker: counters and histograms live in memory, and ``process_*`` /
``python_*`` describe this process. Several workers (``referral.workers >
1``): every worker is a separate process, so a scrape answered by one of
them must still count the requests the others served. prometheus-client's
multiprocess mode does that: each worker writes its counters to memory-mapped
files in a directory the main process makes and names in
``PROMETHEUS_MULTIPROC_DIR`` before the workers start, and the worker that
answers a scrape sums every worker's files. Process figures cannot be
summed, so in that mode ``process_*`` and ``python_gc_*`` carry a ``pid``
label, one series per live worker.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client import (
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_WORKER_PREFIX = "worker-"
_DIR_PREFIX = "affinity-metrics-"


def multiprocess_dir() -> Path | None:
    """The shared directory of a multi-worker process tree, or None (one process)."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


@contextlib.contextmanager
def shared_metrics_dir() -> Iterator[Path]:
    """For the main process of a multi-worker server: a directory for the workers' counters.

    A directory named in ``PROMETHEUS_MULTIPROC_DIR`` already (by the
    operator) is used and kept; otherwise a fresh temporary one is made, named
    in the environment the workers inherit, and removed at the end.
    """
    given = multiprocess_dir()
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    _sweep(Path(tempfile.gettempdir()))
    made = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-"))
    os.environ[MULTIPROC_ENV] = str(made)
    try:
        yield made
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(made, ignore_errors=True)


def _sweep(parent: Path) -> None:
    """Remove the directories of main processes that are gone (killed, so never cleaned up)."""
    for old in parent.glob(f"{_DIR_PREFIX}*-*"):
        pid = old.name.removeprefix(_DIR_PREFIX).partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def worker_started(directory: Path) -> None:
    """Note this worker in the shared directory, so scrapes report its process figures."""
    (directory / f"{_WORKER_PREFIX}{os.getpid()}").touch()


def worker_stopped(directory: Path) -> None:
    """Forget this worker (its counters stay counted: a counter never goes back)."""
    with contextlib.suppress(FileNotFoundError):
        (directory / f"{_WORKER_PREFIX}{os.getpid()}").unlink()


def live_workers(directory: Path) -> list[int]:
    """The pids of the workers that noted themselves and still run (a SIGKILL leaves a note)."""
    pids = []
    for note in directory.glob(f"{_WORKER_PREFIX}*"):
        pid = note.name.removeprefix(_WORKER_PREFIX)
        if pid.isdigit() and _alive(int(pid)):
            pids.append(int(pid))
    return sorted(pids)


class _WorkerProcesses(Collector):
    """``process_*`` of every live worker, each series labelled with its ``pid``.

    Read from ``/proc`` at scrape time, so the worker that answers reports
    its siblings too; ``python_gc_*`` can only be read in-process and so
    describes the answering worker.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for pid in live_workers(self._directory):
            collector = ProcessCollector(pid=functools.partial(int, pid), registry=None)
            for family in collector.collect():
                into = merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                into.samples.extend(_with_pid(family.samples, pid))
        yield from merged.values()
        own = os.getpid()
        for family in _gc().collect():
            relabelled = Metric(family.name, family.documentation, family.type)
            relabelled.samples.extend(_with_pid(family.samples, own))
            yield relabelled


def _gc() -> Collector:
    # GCCollector registers itself and takes no None: give it a registry of its own.
    return GCCollector(registry=CollectorRegistry())


def _with_pid(samples: Iterable[Sample], pid: int) -> Iterator[Sample]:
    for sample in samples:
        yield sample._replace(labels={**sample.labels, "pid": str(pid)})


class BuildInfo(Collector):
    """``affinity_build_info{version}``: 1, to join on and to see a fleet's versions."""

    def __init__(self, version: str) -> None:
        self._version = version

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "affinity_build_info",
            "The affinity version this process runs (always 1)",
            labels=["version"],
        )
        family.add_metric([self._version], 1)
        yield family


def process_collectors(directory: Path | None) -> list[Collector]:
    """``process_*`` and ``python_*``: of this process, or of every worker under ``directory``."""
    if directory is None:
        return [
            ProcessCollector(registry=None),
            PlatformCollector(registry=None),
            _gc(),
        ]
    return [_WorkerProcesses(directory), PlatformCollector(registry=None)]


class Union(Collector):
    """Several collectors read as one, in order, at scrape time."""

    def __init__(self, parts: Callable[[], Iterable[Collector]]) -> None:
        self._parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self._parts():
            yield from part.collect()


def render(collector: Collector, accept: str | None) -> tuple[bytes, str]:
    """The exposition in the format the scraper asked for (text 0.0.4 unless it said)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(collector), content_type
