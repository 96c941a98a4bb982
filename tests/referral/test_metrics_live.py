"""The referral's ``/metrics`` on a live deployment: what each answer counts, strictly formatted.

Counters are read as differences between two scrapes, so the tests do not
depend on each other's traffic.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from affinity.testing import Deployment, wait_until
from affinity.version import __version__
from tests.promtext import Family, parse

SERVICES = """
[services.web]
policy = "round_robin"
[services.empty]
policy = "random"
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with Deployment(
        tmp_path_factory.mktemp("metrics"), services=SERVICES, health="interval = 0.25"
    ) as d:
        d.start_referral()
        for server_id in ("s1", "s2", "s3"):
            d.start_server(server_id)
        wait_until(lambda: d.assignable() == {"s1", "s2", "s3"}, 20, 0.05, "three servers")
        yield d


def scrape(d: Deployment) -> dict[str, Family]:
    with d.client() as c:
        r = c.get(d.referral_url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def value(families: dict[str, Family], name: str, **labels: str) -> float:
    family = families.get(name)
    found = family.value(**labels) if family is not None else None
    return found or 0.0


def assign(d: Deployment, token: str | None = None, **params: str) -> httpx.Response:
    headers = {"Affinity-Token": token} if token else {}
    with d.client(base_url=d.referral_url) as c:
        return c.get("/v1/assign", params=params, headers=headers)


def reasons(before: dict[str, Family], after: dict[str, Family], service: str) -> dict[str, int]:
    found = {}
    for _, labels, _v in after["affinity_rereferrals_total"].samples:
        if labels["service"] == service:
            reason = labels["reason"]
            delta = value(after, "affinity_rereferrals_total", **labels) - value(
                before, "affinity_rereferrals_total", **labels
            )
            if delta:
                found[reason] = int(delta)
    return found


def test_each_kind_of_referral_is_counted_once_by_reason(fleet: Deployment) -> None:
    before = scrape(fleet)
    first = assign(fleet).json()
    assert assign(fleet, first["token"]).json()["sticky"] is True
    assert assign(fleet, "not-a-token").status_code == 200
    assert assign(fleet, fleet.token("s1", age=3600)).json()["sticky"] is False
    assert assign(fleet, fleet.token("s1", service="other")).json()["sticky"] is False
    assert assign(fleet, fleet.token("ghost")).json()["sticky"] is False
    assert assign(fleet, fleet.token("s1"), avoid="s1").json()["server"]["id"] != "s1"
    after = scrape(fleet)
    assert reasons(before, after, "web") == {
        "new_client": 1,
        "invalid": 1,
        "expired": 1,
        "misdirected": 1,
        "gone": 1,
        "avoid": 1,
    }
    sticky = dict(service="web", server=first["server"]["id"], policy="round_robin")
    assert (
        value(after, "affinity_assignments_total", **sticky, outcome="sticky")
        - value(before, "affinity_assignments_total", **sticky, outcome="sticky")
        == 1
    )
    referred = sum(
        v for _, ls, v in after["affinity_assignments_total"].samples if ls["outcome"] == "referred"
    ) - sum(
        v
        for _, ls, v in before["affinity_assignments_total"].samples
        if ls["outcome"] == "referred"
    )
    assert referred == 6  # every answer that was not sticky has exactly one reason
    seconds = "affinity_assign_duration_seconds"
    assert (
        after[seconds].value(f"{seconds}_count", service="web")
        == (before[seconds].value(f"{seconds}_count", service="web") or 0) + 7
    )
    assert value(after, "affinity_avoid_reports_total", service="web", server="s1") >= 1


def test_a_service_without_servers_counts_no_server(fleet: Deployment) -> None:
    before = scrape(fleet)
    assert assign(fleet, service="empty").status_code == 503
    after = scrape(fleet)
    labels = dict(service="empty", server="", policy="random", outcome="no_server")
    assert value(after, "affinity_assignments_total", **labels) == (
        value(before, "affinity_assignments_total", **labels) + 1
    )
    assert reasons(before, after, "empty") == {"new_client": 1}


def test_gauges_describe_the_fleet(fleet: Deployment) -> None:
    families = scrape(fleet)
    assert value(families, "affinity_build_info", version=__version__) == 1
    assert (
        value(families, "affinity_servers", service="web", health="passing", draining="false") == 3
    )
    assert (
        value(families, "affinity_server_health", service="web", server="s2", health="passing") == 1
    )
    assert (
        value(families, "affinity_server_health", service="web", server="s2", health="critical")
        == 0
    )
    assert value(families, "affinity_server_assignable", service="web", server="s2") == 1
    assert value(families, "affinity_service_assignable_servers", service="web") == 3
    assert value(families, "affinity_registry_stale", registry="embedded") == 0
    assert value(families, "affinity_registry_index", registry="embedded") >= 1
    checks = families["affinity_health_check_duration_seconds"]
    assert (checks.value("affinity_health_check_duration_seconds_count", service="web") or 0) > 0
    assert value(families, "affinity_server_check_latency_seconds", service="web", server="s1") > 0
    assert value(families, "process_resident_memory_bytes") > 0
    assert "python_info" in families and "python_gc_collections_total" in families


def test_openmetrics_is_offered_and_strictly_valid(fleet: Deployment) -> None:
    assign(fleet)
    with fleet.client() as c:
        r = c.get(
            fleet.referral_url + "/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"},
        )
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")
    names = {family.name for family in text_string_to_metric_families(r.text)}
    assert {"affinity_assignments", "affinity_build_info", "affinity_servers"} <= names


def test_drain_unhealthy_and_health_transitions(fleet: Deployment) -> None:
    """Last in the module: it drains s2 and kills s3."""
    with fleet.admin() as admin:
        assert admin.post("/v1/servers/s2/drain").status_code == 200
    before = scrape(fleet)
    assert assign(fleet, fleet.token("s2"), avoid="s2").json()["server"]["id"] != "s2"
    fleet.servers["s3"].signal(signal.SIGKILL)
    wait_until(lambda: "s3" not in fleet.assignable(), 10, 0.05, "s3 seen down")
    assert assign(fleet, fleet.token("s3")).json()["server"]["id"] == "s1"
    after = scrape(fleet)
    assert reasons(before, after, "web") == {"drain": 1, "unhealthy": 1}
    transition = dict(service="web", server="s3", from_health="passing", to_health="critical")
    assert value(after, "affinity_health_transitions_total", **transition) == 1
    assert value(after, "affinity_server_draining", service="web", server="s2") == 1
    assert (
        value(after, "affinity_server_health", service="web", server="s3", health="critical") == 1
    )


def test_several_workers_are_summed(tmp_path: Path) -> None:
    with Deployment(tmp_path, health="sources = []") as d:
        d.start_referral(env={"AFFINITY_REFERRAL_WORKERS": "2"})
        with d.admin() as admin:
            admin.put("/v1/servers/w1", json={"url": "https://w1.affinity.test:8443"})
        workers: set[int] = set()
        made = 0

        def both_workers_assigned() -> bool:
            nonlocal made
            # One connection per round: it stays with one worker, which answers both calls.
            with d.client(base_url=d.referral_url) as c:
                if c.get("/v1/assign").status_code == 200:
                    made += 1
                    workers.add(c.get("/healthz").json()["worker"])
            return len(workers) >= 2

        wait_until(both_workers_assigned, 30, 0.0, "assignments from both workers")

        def assigned(families: dict[str, Family]) -> float:
            return value(
                families,
                "affinity_assignments_total",
                service="web",
                server="w1",
                policy="round_robin",
                outcome="referred",
            )

        # Each worker folds its counts into the shared ones within a second of counting.
        wait_until(lambda: assigned(scrape(d)) == made, 10, 0.05, f"{made} assignments summed")
        for _ in range(4):  # fresh connections: whichever worker answers counts all
            families = scrape(d)
            assert assigned(families) == made
        pids = {ls["pid"] for _, ls, _v in families["process_resident_memory_bytes"].samples}
        assert pids == {str(pid) for pid in workers}
