"""Prometheus metrics of the referral and of the app servers (docs/metrics.md lists them).

Counters and histograms are prometheus-client metrics, counted on the request
path in plain values of the process and folded into prometheus-client's before
every read (:mod:`affinity.web.counting`). Gauges are read at scrape time from
what the process keeps anyway (the server table, the load figures), so they
cost the request path nothing. With several referral workers the counters are
summed over all workers (:mod:`affinity.web.exposition`), while a gauge says
what the worker that answered sees: every worker holds the same view of the
registry, a watch round trip apart.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from affinity.version import __version__
from affinity.web.counting import Counts, Labels, Observations
from affinity.web.exposition import BuildInfo, Union, process_collectors, render
from affinity.web.gauges import gauge, load_gauges, registry_gauges, server_gauges

ASSIGN_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

REREFERRAL_REASONS = (
    "new_client",
    "expired",
    "invalid",
    "misdirected",
    "gone",
    "unhealthy",
    "drain",
    "avoid",
)
"""Why a client was not kept on its server (``affinity_rereferrals_total{reason}``)."""

TOKEN_REJECTIONS = ("required", "invalid", "expired", "misdirected")
"""Why an app server refused a token (``affinity_app_token_rejections_total{reason}``)."""

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class PluginEvents:
    """Plugins' own counters (``affinity_report_counters``) copied into a counter.

    The plugins count in plain dicts of their own, so the request path pays
    nothing for them; :meth:`sync` adds what changed since the last copy. A
    scrape syncs the answering process; with several workers each worker also
    syncs on a timer, so the others' events show within that period.
    """

    def __init__(self, counters: Callable[[], Mapping[str, int]], family: Counts) -> None:
        self._counters = counters
        self._family = family
        self._seen: dict[str, int] = {}

    def sync(self) -> None:
        for rule, value in self._counters().items():
            before = self._seen.get(rule, 0)
            # A counter that went back was reset by its plugin: all of it is new.
            delta = value - before if value >= before else value
            if delta:
                self._family.count((rule,), delta)
            self._seen[rule] = value


class _Gauges(Collector):
    """Gauge families made at scrape time by a function."""

    def __init__(self, make: Callable[[], Iterable[Metric]]) -> None:
        self._make = make

    def collect(self) -> Iterator[Metric]:
        yield from self._make()


class Metrics:
    """What both roles expose: counting metrics, scrape-time gauges, process and build info.

    ``directory`` is the shared directory of a multi-worker referral, None
    for one process.
    """

    def __init__(self, directory: Path | None = None) -> None:
        # The same families with one worker or several: multiprocess mode has no _created.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.directory = directory
        self.registry = CollectorRegistry()
        self._gauges: list[Collector] = []
        self._folding: list[Counts | Observations] = []
        self._before_scrape: list[Callable[[], None]] = []
        self._process = process_collectors(directory)
        self._build = BuildInfo(__version__)
        self._settings_refused = self.counter(
            "affinity_settings_refused",
            "Shared settings documents refused whole (the previous version stays in force)",
            ["name"],
        )
        self._plugin_events = self.counter(
            "affinity_plugin_events",
            "Events counted by plugins by rule id (a refusal counts against the rule that refused)",
            ["rule"],
        )

    # -- declaring -----------------------------------------------------------------

    def counter(self, name: str, documentation: str, labels: list[str]) -> Counts:
        counts = Counts(Counter(name, documentation, labels, registry=self.registry))
        self._folding.append(counts)
        return counts

    def histogram(
        self, name: str, documentation: str, labels: list[str], buckets: tuple[float, ...]
    ) -> Observations:
        metric = Histogram(name, documentation, labels, registry=self.registry, buckets=buckets)
        observations = Observations(metric, buckets)
        self._folding.append(observations)
        return observations

    def add_gauges(self, make: Callable[[], Iterable[Metric]]) -> None:
        """Publish gauge families made at scrape time."""
        self._gauges.append(_Gauges(make))

    def observe_plugins(
        self, counters: Callable[[], Mapping[str, int]], versions: Callable[[], Mapping[str, int]]
    ) -> PluginEvents:
        """Publish the plugins' counters and the shared settings versions in force."""
        events = PluginEvents(counters, self._plugin_events)
        self._before_scrape.append(events.sync)
        self.add_gauges(
            lambda: [
                gauge(
                    "affinity_settings_version",
                    "Version of each shared settings document in force",
                    (([name], version) for name, version in sorted(versions().items())),
                    labels=["name"],
                )
            ]
        )
        return events

    # -- counting ----------------------------------------------------------------------

    def settings_refused(self, name: str) -> None:
        self._settings_refused.inc(name)

    # -- reading ---------------------------------------------------------------------

    def fold(self) -> None:
        """Hand what this process counted since the last fold on to prometheus-client.

        Done before every read; with several workers each worker also folds on a
        timer, so that a scrape answered by another worker sees its counts.
        """
        try:
            for sync in self._before_scrape:
                sync()
        finally:  # a plugin's failing counters do not hold back the request counts
            for family in self._folding:
                family.fold()

    def counting(self) -> Collector:
        """The counters and histograms: this process's, or every worker's summed."""
        self.fold()
        if self.directory is None:
            return self.registry
        return MultiProcessCollector(None, str(self.directory))  # type: ignore[no-untyped-call]

    def collectors(self) -> list[Collector]:
        return [self.counting(), *self._gauges, self._build, *self._process]

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The text to answer a scrape with, and its content type."""
        return render(Union(self.collectors), accept)

    def totals(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """The samples of one counter (``name`` with ``_total``), by sorted label pairs."""
        found: dict[tuple[tuple[str, str], ...], float] = {}
        for family in self.counting().collect():
            for sample in family.samples:
                if sample.name == name:
                    key = tuple(sorted(sample.labels.items()))
                    found[key] = found.get(key, 0.0) + sample.value
        return found


class ReferralMetrics(Metrics):
    """The referral's metrics: assignments, re-referrals, health, registry, filters.

    ``servers`` gives the servers as ``GET /v1/servers`` describes them and
    ``registry`` the registry's name, index and staleness, both read at
    scrape time.
    """

    def __init__(
        self,
        servers: Callable[[], Iterable[Mapping[str, Any]]],
        registry: Callable[[], Mapping[str, Any]],
        directory: Path | None = None,
    ) -> None:
        super().__init__(directory)
        self._assignments = self.counter(
            "affinity_assignments",
            "Assign answers by service, server, policy and outcome (sticky, referred, no_server)",
            ["service", "server", "policy", "outcome"],
        )
        self._rereferrals = self.counter(
            "affinity_rereferrals",
            "Assign answers that did not keep the client on its server, by reason",
            ["service", "reason"],
        )
        self._assign_seconds = self.histogram(
            "affinity_assign_duration_seconds",
            "Time to decide an assignment and sign its token",
            ["service"],
            ASSIGN_BUCKETS,
        )
        # Client failure reports: each one only wakes a health check (a client can lie), so
        # this counter is how an operator sees that clients are failing over, and from where.
        self._avoided = self.counter(
            "affinity_avoid_reports",
            "Servers named in a client's avoid (the client failed on them)",
            ["service", "server"],
        )
        self._rejected = self.counter(
            "affinity_requests_rejected",
            "Requests refused by a request filter (firewall, rate limit) by status and error",
            ["status", "error"],
        )
        self._transitions = self.counter(
            "affinity_health_transitions",
            "Changes of a server's health as this referral sees it",
            ["service", "server", "from_health", "to_health"],
        )
        self._check_seconds = self.histogram(
            "affinity_health_check_duration_seconds",
            "Time a health check of a server took",
            ["service"],
            CHECK_BUCKETS,
        )
        self._watch_errors = self.counter(
            "affinity_registry_watch_errors",
            "Failed reads of the registry (the last view is kept, marked stale)",
            ["registry"],
        )
        self.add_gauges(lambda: server_gauges(servers()))
        self.add_gauges(lambda: registry_gauges(registry()))

    def referred(
        self,
        service: str,
        server: str,
        policy: str,
        outcome: str,
        reason: str | None,
        seconds: float,
    ) -> None:
        """One assign decision: ``outcome`` sticky, referred or no_server (``server`` empty).

        Once per assign answer, so the two counts are :meth:`Counts.count` written out.
        """
        assignments = self._assignments.pending
        key: Labels = (service, server, policy, outcome)
        assignments[key] = assignments.get(key, 0) + 1
        if reason is not None:
            rereferrals = self._rereferrals.pending
            key = (service, reason)
            rereferrals[key] = rereferrals.get(key, 0) + 1
        self._assign_seconds.observe(seconds, (service,))

    def avoided(self, service: str, server_id: str) -> None:
        self._avoided.inc(service, server_id)

    def rejected(self, status: int, error: str) -> None:
        self._rejected.count((status, error))

    def health_changed(self, service: str, server: str, before: str, after: str) -> None:
        self._transitions.inc(service, server, before, after)

    def checked(self, service: str, seconds: float) -> None:
        self._check_seconds.observe(seconds, (service,))

    def watch_failed(self, registry: str) -> None:
        self._watch_errors.inc(registry)


class ServerMetrics(Metrics):
    """An app server's metrics: requests by route and status, token rejections, load.

    ``load`` gives the figures of the health answer (active clients,
    in-flight requests, capacity, draining), read at scrape time.
    """

    def __init__(self, load: Callable[[], Mapping[str, float]]) -> None:
        super().__init__()
        self._requests = self.counter(
            "affinity_app_requests",
            "Requests answered by route template, method and status",
            ["route", "method", "status"],
        )
        self._seconds = self.histogram(
            "affinity_app_request_duration_seconds",
            "Time from the guard (filters, token) to the response, by route template and method",
            ["route", "method"],
            REQUEST_BUCKETS,
        )
        self._token_rejections = self.counter(
            "affinity_app_token_rejections",
            "Requests refused for their token by reason (required, invalid, expired, "
            "misdirected): the signal of clients bypassing the referral",
            ["reason"],
        )
        self.add_gauges(lambda: load_gauges(load()))

    def answered(self, route: str, method: str, status: int, seconds: float | None) -> None:
        """One answer; ``seconds`` None when the request started is not known."""
        method = method if method in METHODS else "OTHER"
        self._requests.count((route, method, status))
        if seconds is not None:
            self._seconds.observe(seconds, (route, method))

    def answering(self, route: str) -> Callable[[str, int, float], None]:
        """:meth:`answered` for one route, with the time known: what the guard calls per answer.

        The same counts, in one call and with no label tuple made: the route's
        counts and time cells are looked up once per method here
        (:meth:`Counts.slice`, :meth:`Observations.slice`). This runs for every
        request, and :meth:`answered`'s calls and label tuples were most of its
        cost. ``tests/test_metrics.py`` holds the two side by side.
        """
        bounds = self._seconds.bounds
        by_method = {
            method: (
                self._requests.slice((route, method)),
                self._seconds.slice((route, method)),
            )
            for method in (*METHODS, "OTHER")
        }
        other = by_method["OTHER"]

        def answered(method: str, status: int, seconds: float) -> None:
            counts, cell = by_method.get(method, other)
            counts[status] = counts.get(status, 0) + 1
            cell[bisect_left(bounds, seconds)] += 1  # as Observations.observe counts
            cell[-1] += seconds

        return answered

    def token_rejected(self, reason: str) -> None:
        self._token_rejections.inc(reason)
