"""Prometheus metrics of a referral, one registry per app so tests can run several side by side."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from affinity.models import Server

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ServerCollector(Collector):
    """Reads the server table at scrape time, so the request path pays nothing for gauges."""

    def __init__(self, servers: Callable[[], Iterable[Server]]) -> None:
        self._servers = servers

    def collect(self) -> Iterator[Metric]:
        health = GaugeMetricFamily(
            "affinity_servers",
            "Servers known to this referral by service and health",
            labels=["service", "health", "draining"],
        )
        counts: dict[tuple[str, str, str], int] = {}
        load = GaugeMetricFamily(
            "affinity_server_active_clients",
            "Active clients a server last reported",
            labels=["service", "server"],
        )
        for server in self._servers():
            key = (server.service, server.health.value, str(server.draining).lower())
            counts[key] = counts.get(key, 0) + 1
            load.add_metric([server.service, server.id], server.load.active_clients)
        for key, count in sorted(counts.items()):
            health.add_metric(list(key), count)
        yield health
        yield load


class CountCollector(Collector):
    """Counters kept as plain dict entries, turned into a metric family only when scraped.

    A labelled ``prometheus_client.Counter`` costs a lock and a label lookup
    per increment, a measurable share of the assign path. A Sanic worker
    serves on one thread, so plain increments are safe.
    """

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.counts: dict[tuple[str, ...], int] = {}

    def inc(self, key: tuple[str, ...]) -> None:
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in sorted(self.counts.items()):
            family.add_metric(list(key), value)
        yield family


class PluginCollector(Collector):
    """Plugins' counters and the shared settings in force, read at scrape time.

    The plugins count in plain dicts of their own (``affinity_report_counters``)
    and the versions are what the process keeps anyway, so observing the
    firewall costs the request path nothing.
    """

    def __init__(
        self,
        counters: Callable[[], Mapping[str, int]],
        versions: Callable[[], Mapping[str, int]],
    ) -> None:
        self._counters = counters
        self._versions = versions

    def collect(self) -> Iterator[Metric]:
        events = CounterMetricFamily(
            "affinity_plugin_events",
            "Events counted by plugins in this process by rule id (a refusal counts "
            "against the rule that refused)",
            labels=["rule"],
        )
        for rule, value in sorted(self._counters().items()):
            events.add_metric([rule], value)
        yield events
        versions = GaugeMetricFamily(
            "affinity_settings_version",
            "Version of each shared settings document in force in this process",
            labels=["name"],
        )
        for name, version in sorted(self._versions().items()):
            versions.add_metric([name], version)
        yield versions


def settings_refused_counter() -> CountCollector:
    """Shared settings documents refused whole: the previous version stayed in force."""
    return CountCollector(
        "affinity_settings_refused",
        "Shared settings documents refused whole (the previous version stays in force)",
        ["name"],
    )


class ReferralMetrics:
    """Counters the referral updates on the request path, and the text exposition."""

    def __init__(self, servers: Callable[[], Iterable[Server]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._assignments = CountCollector(
            "affinity_assignments",
            "Assignments made by this referral process",
            ["service", "sticky"],
        )
        self._no_server = CountCollector(
            "affinity_no_healthy_server",
            "Assign requests answered 503 for want of a server",
            ["service"],
        )
        self._rejected = CountCollector(
            "affinity_requests_rejected",
            "Requests refused by a request filter",
            ["status", "error"],
        )
        # Client failure reports: each one only wakes a health check (a client can lie), so
        # this counter is how an operator sees that clients are failing over, and from where.
        self._avoided = CountCollector(
            "affinity_avoid_reports",
            "Servers named in a client's avoid (the client failed on them)",
            ["service", "server"],
        )
        collectors: tuple[Collector, ...] = (
            self._assignments,
            self._no_server,
            self._rejected,
            self._avoided,
            _ServerCollector(servers),
        )
        for collector in collectors:
            self.registry.register(collector)
        self._refused = settings_refused_counter()
        self.registry.register(self._refused)

    def assigned(self, service: str, sticky: bool) -> None:
        self._assignments.inc((service, "true" if sticky else "false"))

    def no_server(self, service: str) -> None:
        self._no_server.inc((service,))

    def rejected(self, status: int, error: str) -> None:
        self._rejected.inc((str(status), error))

    def settings_refused(self, name: str) -> None:
        self._refused.inc((name,))

    def observe_plugins(
        self, counters: Callable[[], Mapping[str, int]], versions: Callable[[], Mapping[str, int]]
    ) -> None:
        """Publish the plugins' counters and the settings versions, both read at scrape time."""
        self.registry.register(PluginCollector(counters, versions))

    def avoided(self, service: str, server_id: str) -> None:
        self._avoided.inc((service, server_id))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ServerMetrics:
    """An app server's ``/.well-known/affinity/metrics``: plugin counters, settings, load.

    Everything is read at scrape time from what the server keeps anyway, so
    the request path updates no metric.
    """

    def __init__(
        self,
        *,
        counters: Callable[[], Mapping[str, int]],
        versions: Callable[[], Mapping[str, int]],
        load: Callable[[], Mapping[str, float]],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._refused = settings_refused_counter()
        self.registry.register(self._refused)
        self.registry.register(PluginCollector(counters, versions))
        self.registry.register(_LoadCollector(load))

    def settings_refused(self, name: str) -> None:
        self._refused.inc((name,))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


SERVER_GAUGES = {
    "active_clients": "Clients seen with a valid token within the activity window",
    "inflight": "Requests being served now",
    "capacity": "Configured capacity (0: not set)",
    "draining": "1 while the server is draining",
}


class _LoadCollector(Collector):
    """The figures of the server's health answer (:data:`SERVER_GAUGES`), as gauges."""

    def __init__(self, load: Callable[[], Mapping[str, float]]) -> None:
        self._load = load

    def collect(self) -> Iterator[Metric]:
        figures = self._load()
        for name, documentation in SERVER_GAUGES.items():
            if name in figures:
                yield GaugeMetricFamily(
                    f"affinity_server_{name}", documentation, value=figures[name]
                )
