"""An app server's ``/.well-known/affinity/metrics``: requests by route template, token refusals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from affinity.testing import Deployment
from tests.promtext import Family, parse
from tests.server.apps import HOLDING

APP = HOLDING
METRICS = "/.well-known/affinity/metrics"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """s1 takes requests without a token; strict requires one."""
    with Deployment(tmp_path_factory.mktemp("server-metrics"), health="sources = []") as d:
        d.start_referral()
        d.start_server("s1", app=APP)
        d.start_server("strict", app=APP, env={"AFFINITY_SERVER_REQUIRE_TOKEN": "true"})
        yield d


def call(d: Deployment, sid: str, path: str, token: str | None = None, method: str = "GET") -> int:
    headers = {"Affinity-Token": token} if token else {}
    with d.client() as c:
        return c.request(method, d.server_urls[sid] + path, headers=headers).status_code


def scrape(d: Deployment, sid: str) -> dict[str, Family]:
    with d.client() as c:
        r = c.get(d.server_urls[sid] + METRICS)
    assert r.status_code == 200
    return parse(r.text)


def count(families: dict[str, Family], name: str, **labels: str) -> float:
    return families[name].value(**labels) or 0.0


def test_requests_are_counted_by_route_template_method_and_status(servers: Deployment) -> None:
    token = servers.token("s1")
    before = scrape(servers, "s1")
    assert call(servers, "s1", "/whoami", token) == 200
    assert call(servers, "s1", "/status/warning", token, "POST") == 200
    assert call(servers, "s1", "/status/passing", token, "POST") == 200
    assert call(servers, "s1", "/no/such/path", token) == 404
    after = scrape(servers, "s1")
    requests = "affinity_app_requests_total"
    for labels, added in [
        ({"route": "/whoami", "method": "GET", "status": "200"}, 1),
        ({"route": "/status/<status>", "method": "POST", "status": "200"}, 2),
        ({"route": "unmatched", "method": "GET", "status": "404"}, 1),
    ]:
        assert count(after, requests, **labels) - count(before, requests, **labels) == added
    seconds = "affinity_app_request_duration_seconds"
    labels = {"route": "/status/<status>", "method": "POST"}
    assert count(after, seconds, **labels) == 0  # only _bucket, _sum and _count samples
    assert after[seconds].value(f"{seconds}_count", **labels) == 2 + (
        before[seconds].value(f"{seconds}_count", **labels) or 0
    )


def test_an_unknown_method_does_not_make_a_label_of_its_own(servers: Deployment) -> None:
    with servers.client() as c:
        c.request("BREW", servers.server_urls["s1"] + "/whoami")
    families = scrape(servers, "s1")
    methods = {ls["method"] for _, ls, _v in families["affinity_app_requests_total"].samples}
    assert "BREW" not in methods and methods <= {"GET", "POST", "OTHER", "HEAD"}


def test_token_refusals_are_counted_by_reason(servers: Deployment) -> None:
    before = {sid: scrape(servers, sid) for sid in ("s1", "strict")}
    assert call(servers, "s1", "/whoami", "garbage") == 401
    assert call(servers, "s1", "/whoami", servers.token("s1", age=3600)) == 401
    assert call(servers, "s1", "/whoami", servers.token("s2")) == 421
    assert call(servers, "strict", "/whoami") == 401
    after = {sid: scrape(servers, sid) for sid in ("s1", "strict")}
    name = "affinity_app_token_rejections_total"

    def added(sid: str, reason: str) -> float:
        return count(after[sid], name, reason=reason) - count(before[sid], name, reason=reason)

    assert [added("s1", r) for r in ("invalid", "expired", "misdirected")] == [1, 1, 1]
    assert added("strict", "required") == 1
    assert (
        count(
            after["s1"], "affinity_app_requests_total", route="/whoami", method="GET", status="421"
        )
        >= 1
    )


def test_load_gauges_and_build_info(servers: Deployment) -> None:
    families = scrape(servers, "s1")
    for name in ("affinity_app_active_clients", "affinity_app_inflight_requests"):
        assert families[name].type == "gauge"
    assert count(families, "affinity_app_draining") == 0
    assert families["affinity_build_info"].samples
    assert count(families, "process_cpu_seconds_total") > 0


def test_health_and_metrics_answers_are_counted_too(servers: Deployment) -> None:
    with servers.client() as c:
        c.get(servers.server_urls["s1"] + "/.well-known/affinity/health")
    families = scrape(servers, "s1")
    labels = {"route": "/.well-known/affinity/health", "method": "GET"}
    assert count(families, "affinity_app_requests_total", **labels, status="200") >= 1


def durations(families: dict[str, Family], route: str, method: str = "GET") -> tuple[float, float]:
    """The count and the sum of the request durations of ``route``."""
    seconds = "affinity_app_request_duration_seconds"
    family = families[seconds]
    labels = {"route": route, "method": method}
    return (
        family.value(f"{seconds}_count", **labels) or 0.0,
        family.value(f"{seconds}_sum", **labels) or 0.0,
    )


def test_every_answer_is_timed_refused_failed_or_streamed_too(tmp_path: Path) -> None:
    """Each answer adds its duration to the histogram of its route: a refusal, a handler that
    fails, a streamed answer, like any other. The sum grows by durations, not clock readings.

    A server of its own: the guard's per-route set-up runs at its start, in this test."""
    with Deployment(tmp_path, health="sources = []") as servers:
        servers.start_referral()
        servers.start_server("s1", app=APP)
        before = scrape(servers, "s1")
        assert call(servers, "s1", "/whoami", "garbage") == 401
        assert call(servers, "s1", "/boom", servers.token("s1")) == 500
        assert call(servers, "s1", "/stream") == 202
        assert call(servers, "s1", "/whoami") == 200
        assert call(servers, "s1", "/no/such/path") == 404
        assert call(servers, "s1", "/Xtra/") == 200
        assert call(servers, "s1", "/silent") == 500
        after = scrape(servers, "s1")
    counted = (
        ("/whoami", 2),
        ("/boom", 1),
        ("/stream", 1),
        ("unmatched", 1),
        ("/Xtra/", 1),
        ("/silent", 1),  # once, as the 500 Sanic makes of it
    )
    for route, answers in counted:
        timed, total = durations(before, route)
        timed_after, total_after = durations(after, route)
        assert timed_after == timed + answers, route
        assert 0.0 <= total_after - total < 60.0, route
    requests = "affinity_app_requests_total"
    assert count(after, requests, route="/silent", method="GET", status="200") == 0
    for route, status in (
        ("/boom", "500"),
        ("/stream", "202"),
        ("/whoami", "401"),
        ("/silent", "500"),
    ):
        labels = {"route": route, "method": "GET", "status": status}
        assert count(after, requests, **labels) - count(before, requests, **labels) == 1


def test_the_bytes_sent_are_those_of_the_answers(tmp_path: Path) -> None:
    """The load's bytes per second follow the bodies sent: when every answer has the same
    body, it is that body's length times the requests per second (the same average)."""
    with Deployment(tmp_path, health="sources = []") as d:
        d.start_referral()
        d.start_server("s1", app=APP)
        with d.client() as c:
            lengths = {len(c.get(d.server_urls["s1"] + "/whoami").content) for _ in range(5)}
        (length,) = lengths
        gauges = scrape(d, "s1")
        rps = count(gauges, "affinity_app_requests_per_second")
        sent = count(gauges, "affinity_app_response_bytes_per_second")
        assert rps > 0
        assert sent == pytest.approx(length * rps, rel=1e-6)
