"""Gauge families made at scrape time from what a process keeps anyway (docs/metrics.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily, Metric


def gauge(
    name: str,
    documentation: str,
    rows: Iterable[tuple[Iterable[str], float]] = (),
    *,
    labels: Iterable[str] = (),
) -> GaugeMetricFamily:
    """A gauge family with its rows (label values, value)."""
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    for values, value in rows:
        family.add_metric(list(values), value)
    return family


_HEALTH = ("passing", "warning", "critical", "maintenance")


def server_gauges(servers: Iterable[Mapping[str, Any]]) -> Iterator[Metric]:
    """The servers as this process sees them: counts by state, then one row per server."""
    rows = sorted(servers, key=lambda s: (s["service"], s["id"]))
    counts: dict[tuple[str, str, str], int] = {}
    for s in rows:
        key = (s["service"], s["health"], "true" if s["draining"] else "false")
        counts[key] = counts.get(key, 0) + 1
    yield gauge(
        "affinity_servers",
        "Servers known to this referral by service, health and draining",
        sorted(counts.items()),
        labels=["service", "health", "draining"],
    )
    assignable: dict[str, int] = {}
    for s in rows:
        assignable[s["service"]] = assignable.get(s["service"], 0) + bool(s["assignable"])
    yield gauge(
        "affinity_service_assignable_servers",
        "Servers of a service that can take new clients now",
        (([service], n) for service, n in sorted(assignable.items())),
        labels=["service"],
    )
    yield gauge(
        "affinity_server_health",
        "1 for a server's current health, 0 for the others (a state set)",
        (([s["service"], s["id"], h], float(s["health"] == h)) for s in rows for h in _HEALTH),
        labels=["service", "server", "health"],
    )
    for name, documentation, value in _PER_SERVER:
        yield gauge(
            name,
            documentation,
            (([s["service"], s["id"]], value(s)) for s in rows),
            labels=["service", "server"],
        )


_PER_SERVER: tuple[tuple[str, str, Callable[[Mapping[str, Any]], float]], ...] = (
    ("affinity_server_draining", "1 while a server is draining", lambda s: float(s["draining"])),
    (
        "affinity_server_assignable",
        "1 when a server can take new clients (passing, not draining, not full)",
        lambda s: float(s["assignable"]),
    ),
    (
        "affinity_server_effective_weight",
        "A server's weight as policies use it (lower during slow start)",
        lambda s: float(s["effective_weight"]),
    ),
    (
        "affinity_server_active_clients",
        "Clients a server last reported (a decayed count)",
        lambda s: float(s["load"]["clients"]),
    ),
    (
        "affinity_server_inflight_requests",
        "Requests in flight a server last reported",
        lambda s: float(s["load"]["inflight"]),
    ),
    (
        "affinity_server_capacity",
        "Capacity a server last reported (0: not set)",
        lambda s: float(s["load"]["capacity"]),
    ),
    (
        "affinity_server_check_latency_seconds",
        "How long the last health check of a server took (0 before the first)",
        lambda s: float(s["last_check"]["latency"] or 0.0),
    ),
)


def registry_gauges(state: Mapping[str, Any]) -> Iterator[Metric]:
    labels = [state["name"]]
    yield gauge(
        "affinity_registry_stale",
        "1 while the registry cannot be read and the last view is in use",
        [(labels, float(state["stale"]))],
        labels=["registry"],
    )
    yield gauge(
        "affinity_registry_index",
        "Index of the registry view in use (moves with every change)",
        [(labels, float(state["index"]))],
        labels=["registry"],
    )


APP_GAUGES = {
    "active_clients": (
        "affinity_app_active_clients",
        "Clients with a valid token, each weighing less with the time since its last request",
    ),
    "client_ids": (
        "affinity_app_client_ids",
        "Client ids remembered for the load count (at most server.active_max)",
    ),
    "inflight": ("affinity_app_inflight_requests", "Requests being served now"),
    "rps": ("affinity_app_requests_per_second", "Requests served per second, a 10 s average"),
    "bytes_per_s": (
        "affinity_app_response_bytes_per_second",
        "Response body bytes per second (lengths known), a 10 s average",
    ),
    "capacity": ("affinity_app_capacity", "Configured capacity in active clients (0: not set)"),
    "capacity_inflight": (
        "affinity_app_capacity_inflight",
        "Configured capacity in requests in flight (0: not set)",
    ),
    "capacity_bytes_per_s": (
        "affinity_app_capacity_bytes_per_second",
        "Configured capacity in response bytes per second (0: not set)",
    ),
    "draining": ("affinity_app_draining", "1 while the server is draining"),
}


def load_gauges(figures: Mapping[str, float]) -> Iterator[Metric]:
    for key, (name, documentation) in APP_GAUGES.items():
        yield GaugeMetricFamily(name, documentation, value=figures.get(key, 0.0))
