"""Prometheus metrics of a referral, one registry per app so tests can run several side by side."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from affinity.models import Server

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ServerCollector(Collector):
    """Reads the server table at scrape time, so the request path pays nothing for gauges."""

    def __init__(self, servers: Callable[[], Iterable[Server]]) -> None:
        self._servers = servers

    def collect(self) -> Iterator[GaugeMetricFamily]:
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


class ReferralMetrics:
    """Counters the referral updates on the request path, and the text exposition."""

    def __init__(self, servers: Callable[[], Iterable[Server]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._assignments = Counter(
            "affinity_assignments",
            "Assignments made by this referral process",
            ["service", "sticky"],
            registry=self.registry,
        )
        self._no_server = Counter(
            "affinity_no_healthy_server",
            "Assign requests answered 503 for want of a server",
            ["service"],
            registry=self.registry,
        )
        self._rejected = Counter(
            "affinity_requests_rejected",
            "Requests refused by a request filter",
            ["status", "error"],
            registry=self.registry,
        )
        self.registry.register(_ServerCollector(servers))

    def assigned(self, service: str, sticky: bool) -> None:
        self._assignments.labels(service, "true" if sticky else "false").inc()

    def no_server(self, service: str) -> None:
        self._no_server.labels(service).inc()

    def rejected(self, status: int, error: str) -> None:
        self._rejected.labels(str(status), error).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
