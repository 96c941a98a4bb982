"""The referral on a real loopback socket with TLS: assign, sticky, avoid, errors, redirects."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from affinity.testing import Deployment, wait_until
from affinity.tokens.jws import TokenIssuer, TokenVerifier
from affinity.tokens.keyring import KeyRing
from tests.promtext import parse
from tests.record import loading

SERVICES = """
[services.web]
policy = "round_robin"
servers = [
  {id = "s1", url = "https://s1.affinity.test:8443"},
  {id = "s2", url = "https://s2.affinity.test:8443"},
  {id = "s3", url = "https://s3.affinity.test:8443"},
]
[services.empty]
policy = "random"
"""


@pytest.fixture(scope="module")
def referral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One referral with three static servers and no health checks (nothing listens there)."""
    directory: Path = tmp_path_factory.mktemp("referral")
    with Deployment(
        directory,
        services=SERVICES,
        health="sources = []",
        referral='cookie_domain = ".affinity.test"',
    ) as d:
        d.start_referral()
        yield d


@pytest.fixture
def client(referral: Deployment) -> Iterator[httpx.Client]:
    with referral.client(base_url=referral.referral_url) as c:
        yield c


def rereferrals(c: httpx.Client, service: str = "web") -> dict[str, float]:
    """The referral's count of re-referrals of ``service`` clients, by reason."""
    family = parse(c.get("/metrics").text)["affinity_rereferrals_total"]
    return {ls["reason"]: v for _, ls, v in family.samples if ls["service"] == service}


def counted_since(before: dict[str, float], c: httpx.Client) -> dict[str, float]:
    """The reasons counted since ``before`` was read, and how many times each."""
    after = rereferrals(c)
    return {r: n - before.get(r, 0.0) for r, n in after.items() if n != before.get(r, 0.0)}


def test_assign_answers_a_server_and_a_token(client: httpx.Client) -> None:
    r = client.get("/v1/assign")
    assert r.status_code == 200
    body = r.json()
    assert body["server"]["id"] in {"s1", "s2", "s3"}
    assert body["server"]["url"] == f"https://{body['server']['id']}.affinity.test:8443"
    assert body["sticky"] is False
    assert 3600 * 0.9 - 1 <= body["expires_in"] <= 3600 * 1.1 + 1
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-type"].startswith("application/json")


def test_a_valid_token_keeps_the_client_on_its_server(client: httpx.Client) -> None:
    before = rereferrals(client)
    first = client.get("/v1/assign").json()
    for _ in range(5):
        again = client.get("/v1/assign", headers={"Affinity-Token": first["token"]}).json()
        assert again["server"] == first["server"]
        assert again["sticky"] is True
    assert counted_since(before, client) == {"new_client": 1}, "a kept client is no re-referral"


def test_the_cookie_works_like_the_header(client: httpx.Client) -> None:
    first = client.get("/v1/assign").json()
    again = client.get("/v1/assign", headers={"Cookie": f"affinity={first['token']}"}).json()
    assert again["server"] == first["server"] and again["sticky"] is True


def test_avoid_moves_the_client_and_keeps_its_id(client: httpx.Client) -> None:
    first = client.get("/v1/assign").json()
    old = first["server"]["id"]
    before = rereferrals(client)
    moved = client.get(
        "/v1/assign", params={"avoid": old}, headers={"Affinity-Token": first["token"]}
    ).json()
    assert moved["server"]["id"] != old
    assert moved["sticky"] is False
    assert counted_since(before, client) == {"avoid": 1}


def test_avoiding_every_server_gives_503(client: httpx.Client) -> None:
    r = client.get("/v1/assign", params=[("avoid", "s1"), ("avoid", "s2"), ("avoid", "s3")])
    assert r.status_code == 503
    assert r.json()["error"] == "no_healthy_server"
    assert r.headers["retry-after"] == "2", "referral.retry_after: 2 s by default"


def test_empty_service_gives_503(client: httpx.Client) -> None:
    r = client.get("/v1/assign", params={"service": "empty"})
    assert r.status_code == 503
    assert r.json() == {
        "error": "no_healthy_server",
        "detail": "no healthy server for service 'empty'",
    }


BAD_SERVICE = "service must be 1-64 letters, digits, '.', '_' or '-'"
BAD_AVOID = "avoid takes up to 16 server ids of letters, digits, '.', '_' or '-'"


@pytest.mark.parametrize(
    ("params", "status", "error", "detail"),
    [
        ({"service": "nope"}, 404, "unknown_service", "no service named 'nope'"),
        ({"service": "../etc"}, 400, "invalid_service", BAD_SERVICE),
        ({"service": "x" * 65}, 400, "invalid_service", BAD_SERVICE),
        ({"avoid": "s 1"}, 400, "invalid_avoid", BAD_AVOID),
        ({"avoid": ["s1", "s 1"]}, 400, "invalid_avoid", BAD_AVOID),
        ([("avoid", f"s{i}") for i in range(17)], 400, "invalid_avoid", BAD_AVOID),
    ],
)
def test_bad_queries_get_clear_errors(
    client: httpx.Client, params: object, status: int, error: str, detail: str
) -> None:
    r = client.get("/v1/assign", params=params)  # type: ignore[arg-type]
    assert r.status_code == status
    assert r.json() == {"error": error, "detail": detail}


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "", "e" * 5000, "eyJhbGciOiJub25lIn0.e30."])
def test_an_invalid_token_is_a_new_client_not_an_error(client: httpx.Client, token: str) -> None:
    before = rereferrals(client)
    r = client.get("/v1/assign", headers={"Affinity-Token": token})
    assert r.status_code == 200
    assert r.json()["sticky"] is False
    assert counted_since(before, client) == {"invalid" if token else "new_client": 1}


def test_an_expired_token_is_counted_as_expired(referral: Deployment) -> None:
    with referral.client(base_url=referral.referral_url) as c:
        before = rereferrals(c)
        r = c.get("/v1/assign", headers={"Affinity-Token": referral.token("s1", age=3600)})
        assert r.status_code == 200 and r.json()["sticky"] is False
        assert counted_since(before, c) == {"expired": 1}


def test_a_token_for_another_service_is_not_sticky(referral: Deployment) -> None:
    with referral.admin() as admin:
        admin.put("/v1/servers/o1", json={"service": "other", "url": "https://o1.affinity.test"})
        try:
            with referral.client(base_url=referral.referral_url) as c:
                other = c.get("/v1/assign", params={"service": "other"}).json()
                before = rereferrals(c)
                web = c.get("/v1/assign", headers={"Affinity-Token": other["token"]}).json()
                assert counted_since(before, c) == {"misdirected": 1}
            assert web["sticky"] is False and web["server"]["id"] != "o1"
        finally:
            admin.delete("/v1/servers/o1")


def test_a_server_moved_to_another_service_loses_the_clients_of_the_first(
    referral: Deployment,
) -> None:
    """A token for service web that names m1 keeps its client on m1 only while m1 serves web."""
    issuer = TokenIssuer(KeyRing.load(referral.dir / "keys.json"))
    token = issuer.issue("m1", issuer.new_client_id(), "web")[0]
    headers = {"Affinity-Token": token}
    with referral.admin() as admin, referral.client(base_url=referral.referral_url) as c:
        url = "https://m1.affinity.test:8443"
        assert admin.put("/v1/servers/m1", json={"service": "web", "url": url}).status_code == 200
        try:
            kept = c.get("/v1/assign", headers=headers).json()
            assert kept["server"]["id"] == "m1" and kept["sticky"] is True
            moved = admin.put("/v1/servers/m1", json={"service": "other", "url": url})
            assert moved.status_code == 200 and moved.json()["service"] == "other"
            before = rereferrals(c)
            for _ in range(4):
                web = c.get("/v1/assign", headers=headers).json()
                assert web["server"]["id"] in {"s1", "s2", "s3"}
                assert web["sticky"] is False
            assert counted_since(before, c) == {"gone": 4}, "m1 is gone from service web"
        finally:
            admin.delete("/v1/servers/m1")


def test_a_draining_server_keeps_its_clients_and_an_avoid_moves_them_as_drain(
    referral: Deployment,
) -> None:
    issuer = TokenIssuer(KeyRing.load(referral.dir / "keys.json"))
    headers = {"Affinity-Token": issuer.issue("d1", issuer.new_client_id(), "web")[0]}
    with referral.admin() as admin, referral.client(base_url=referral.referral_url) as c:
        url = "https://d1.affinity.test:8443"
        assert admin.put("/v1/servers/d1", json={"service": "web", "url": url}).status_code == 200
        try:
            assert admin.post("/v1/servers/d1/drain").status_code == 200
            before = rereferrals(c)
            kept = c.get("/v1/assign", headers=headers).json()
            assert kept["server"]["id"] == "d1" and kept["sticky"] is True
            moved = c.get("/v1/assign", params={"avoid": "d1"}, headers=headers).json()
            assert moved["server"]["id"] in {"s1", "s2", "s3"} and moved["sticky"] is False
            assert counted_since(before, c) == {"drain": 1}
        finally:
            admin.delete("/v1/servers/d1")


def test_a_client_of_a_failing_server_is_moved_as_unhealthy(tmp_path: Path) -> None:
    """Nothing listens at dead's address: once its check fails, its clients are not kept."""
    services = '[services.web]\nservers = [{id = "dead", url = "https://127.0.0.1:9"}]\n'
    with Deployment(tmp_path, services=services, health="interval = 0.25") as d:
        d.start_referral()

        def health() -> str:
            with d.admin() as admin:
                return str(admin.get("/v1/servers").json()["servers"][0]["health"])

        wait_until(lambda: health() == "critical", 10, 0.05, "dead's check failing")
        with d.client(base_url=d.referral_url) as c:
            before = rereferrals(c)
            r = c.get("/v1/assign", headers={"Affinity-Token": d.token("dead")})
            assert r.status_code == 503 and r.json()["error"] == "no_healthy_server"
            assert counted_since(before, c) == {"unhealthy": 1}


def test_redirect_preserves_path_and_query_and_sets_the_cookie(client: httpx.Client) -> None:
    r = client.get("/go/some/page", params={"q": "1", "x": "a b"})
    assert r.status_code == 307
    location = urllib.parse.urlsplit(r.headers["location"])
    assert location.netloc in {
        "s1.affinity.test:8443",
        "s2.affinity.test:8443",
        "s3.affinity.test:8443",
    }
    assert location.path == "/some/page"
    assert urllib.parse.parse_qs(location.query) == {"q": ["1"], "x": ["a b"]}
    cookie = r.headers["set-cookie"]
    for part in (
        "affinity=",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Domain=.affinity.test",
        "Path=/",
    ):
        assert part.lower() in cookie.lower()
    max_age = int(cookie.lower().split("max-age=")[1].split(";")[0])
    assert 3600 * 0.9 - 1 <= max_age <= 3600 * 1.1 + 1, "the cookie lives as long as the token"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/go/X-files/Xy", "/X-files/Xy"),
        ("/go/a;b=c,d@e:f!g$h&i'j(k)l*m+n~o", "/a;b=c,d@e:f!g$h&i'j(k)l*m+n~o"),
        ("/go/a%20b%2Fc", "/a%20b%2Fc"),
    ],
)
def test_redirect_copies_the_path_as_sent(client: httpx.Client, path: str, expected: str) -> None:
    """Characters that are safe in a path stay as they are; escapes stay escaped."""
    r = client.get(path)
    assert r.status_code == 307
    assert urllib.parse.urlsplit(r.headers["location"]).path == expected


def test_redirect_is_sticky_through_the_cookie(client: httpx.Client) -> None:
    first = client.get("/go/")
    token = (
        first.cookies.get("affinity") or first.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    )
    again = client.get("/go/", headers={"Cookie": f"affinity={token}"})
    assert (
        urllib.parse.urlsplit(again.headers["location"]).netloc
        == urllib.parse.urlsplit(first.headers["location"]).netloc
    )


def test_openapi_healthz_metrics_jwks(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert "/v1/assign" in spec["paths"] and spec["openapi"].startswith("3.")
    assert client.get("/healthz").json()["status"] == "ok"
    client.get("/v1/assign")
    metrics = client.get("/metrics").text
    assert "affinity_assignments_total" in metrics
    assert 'affinity_servers{draining="false",health="passing",service="web"} 3.0' in metrics
    # HS256 keys are secret: the JWK set is empty.
    assert client.get("/.well-known/jwks.json").json() == {"keys": []}


def test_unknown_routes_and_methods_are_json_errors(client: httpx.Client) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = client.post("/v1/assign")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


def test_the_default_service_exists_without_a_services_table(tmp_path: Path) -> None:
    """No ``[services.*]`` at all: the default service has the default policy and no server
    yet, so a client gets a 503 it can retry, not a 500."""
    with Deployment(tmp_path, services="", health="sources = []") as d:
        d.start_referral()
        with d.client(base_url=d.referral_url) as client:
            r = client.get("/v1/assign")
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "no_healthy_server"
            assert client.get("/v1/assign", params={"service": "nope"}).status_code == 404


OBSERVER = loading("tests.referral.observer_plugin")


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A referral that loads ``observer_plugin``: its hooks and health source record what
    the referral tells them, read back (and cleared) at ``GET /test/observed``."""
    directory: Path = tmp_path_factory.mktemp("observed")
    with Deployment(
        directory, services=SERVICES, health='sources = ["recording"]', env=OBSERVER
    ) as d:
        d.start_referral()
        wait_until(lambda: d.assignable() == {"s1", "s2", "s3"}, 10, what="passing")
        yield d


def taken(c: httpx.Client) -> list[dict[str, object]]:
    """What the observer plugin recorded since it was last asked."""
    seen: list[dict[str, object]] = c.get("/test/observed").json()
    return seen


def client_id(d: Deployment, token: str) -> str:
    return TokenVerifier(KeyRing.load(d.dir / "keys.json")).verify(token).cid


def test_plugins_see_each_assignment_as_answered(observed: Deployment) -> None:
    with observed.client(base_url=observed.referral_url) as c:
        taken(c)
        first = c.get("/v1/assign").json()
        cid = client_id(observed, first["token"])
        sid = first["server"]["id"]
        assert taken(c) == [
            {
                "event": "assigned",
                "service": "web",
                "client_id": cid,
                "avoid": [],
                "previous": None,
                "client_ip": "127.0.0.1",
                "server": sid,
                "token": first["token"],
                "expires_in": first["expires_in"],
                "sticky": False,
            }
        ]
        again = c.get("/v1/assign", headers={"Affinity-Token": first["token"]}).json()
        assert again["sticky"] is True and again["server"]["id"] == sid
        assert client_id(observed, again["token"]) == cid, "a kept client keeps its id"
        assert taken(c) == [
            {
                "event": "assigned",
                "service": "web",
                "client_id": cid,
                "avoid": [],
                "previous": sid,
                "client_ip": "127.0.0.1",
                "server": sid,
                "token": again["token"],
                "expires_in": again["expires_in"],
                "sticky": True,
            }
        ]
        other = c.get("/v1/assign").json()
        assert client_id(observed, other["token"]) != cid, "a new client gets a new id"
        assert c.get("/v1/assign", params={"service": "empty"}).status_code == 503
        events = taken(c)
        assert [e["event"] for e in events] == ["assigned"], "no server, nothing assigned"


def test_an_avoid_of_a_known_server_is_reported_once_and_an_unknown_id_is_ignored(
    observed: Deployment,
) -> None:
    with observed.client(base_url=observed.referral_url) as c:
        first = c.get("/v1/assign").json()
        sid = first["server"]["id"]
        before = parse(c.get("/metrics").text)["affinity_avoid_reports_total"]
        taken(c)
        moved = c.get(
            "/v1/assign",
            params=[("avoid", sid), ("avoid", "nosuch")],
            headers={"Affinity-Token": first["token"]},
        ).json()
        assert moved["server"]["id"] != sid and moved["sticky"] is False
        events = taken(c)
        assert events[:2] == [
            {"event": "recheck", "server": sid},
            {"event": "avoided", "service": "web", "server": sid, "ip": "127.0.0.1"},
        ]
        assert events[2]["event"] == "assigned" and len(events) == 3
        assert events[2]["avoid"] == sorted([sid, "nosuch"])
        assert events[2]["previous"] == sid and events[2]["sticky"] is False
        after = parse(c.get("/metrics").text)["affinity_avoid_reports_total"]
        old = before.value(service="web", server=sid) or 0.0
        assert after.value(service="web", server=sid) == old + 1
        assert after.value(service="web", server="nosuch") is None


def test_up_to_sixteen_avoids_are_taken(client: httpx.Client) -> None:
    """The limit is 16: 16 ids are a valid request (17 are refused, above)."""
    r = client.get("/v1/assign", params={"avoid": [f"x{i}" for i in range(16)]})
    assert r.status_code == 200, r.text
    assert r.json()["server"]["id"] in {"s1", "s2", "s3"}


def assignments(c: httpx.Client) -> dict[tuple[str, str, str, str], float]:
    """``affinity_assignments_total`` by (service, server, policy, outcome)."""
    family = parse(c.get("/metrics").text)["affinity_assignments_total"]
    return {
        (ls["service"], ls["server"], ls["policy"], ls["outcome"]): v for _, ls, v in family.samples
    }


def assigned_to(referral: Deployment) -> dict[str, int]:
    """The ``assignments`` count of each server, as ``GET /v1/servers`` shows it."""
    with referral.admin() as admin:
        servers = admin.get("/v1/servers").json()["servers"]
    return {s["id"]: s["assignments"] for s in servers}


def test_each_decision_is_counted_by_server_policy_and_outcome(
    referral: Deployment, client: httpx.Client
) -> None:
    before, counts = assignments(client), assigned_to(referral)
    first = client.get("/v1/assign").json()
    sid = first["server"]["id"]
    client.get("/v1/assign", headers={"Affinity-Token": first["token"]})
    assert client.get("/v1/assign", params={"service": "empty"}).status_code == 503
    after = assignments(client)
    changed = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    assert changed == {
        ("web", sid, "round_robin", "referred"): 1.0,
        ("web", sid, "round_robin", "sticky"): 1.0,
        ("empty", "", "random", "no_server"): 1.0,
    }
    now = assigned_to(referral)
    assert now[sid] == counts.get(sid, 0) + 2, "sticky or not, each token issued counts"
    assert {k: v for k, v in now.items() if k != sid} == {
        k: v for k, v in counts.items() if k != sid
    }


def test_the_decision_time_is_a_duration(client: httpx.Client) -> None:
    """The histogram gets the seconds a decision took, not a clock reading: a referral and a
    503 for a service with no server alike."""
    family = "affinity_assign_duration_seconds"

    def observed(service: str) -> tuple[float, float]:
        f = parse(client.get("/metrics").text)[family]
        count = f.value(family + "_count", service=service) or 0.0
        return count, f.value(family + "_sum", service=service) or 0.0

    for service, status in (("web", 200), ("empty", 503)):
        count, total = observed(service)
        for _ in range(3):
            assert client.get("/v1/assign", params={"service": service}).status_code == status
        count_after, total_after = observed(service)
        assert count_after == count + 3, service
        assert 0.0 <= total_after - total < 60.0, service


def test_new_clients_are_placed_by_the_services_own_policy(client: httpx.Client) -> None:
    """Service web has the round robin (not the default policy): new clients go round the
    three servers in turn."""
    placed = [client.get("/v1/assign").json()["server"]["id"] for _ in range(12)]
    assert len(set(placed[:3])) == 3, placed
    assert all(placed[i] == placed[i + 3] for i in range(9)), placed
