"""The admin API: bearer auth in constant time, register, deregister, drain, resume, settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from affinity.testing import Deployment

SERVICES = (
    '[services.web]\npolicy = "round_robin"\n'
    'servers = [{id = "s1", url = "https://s1.affinity.test:8443"}]\n'
)


@pytest.fixture(scope="module")
def referral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    directory: Path = tmp_path_factory.mktemp("admin")
    with Deployment(directory, services=SERVICES, health="sources = []") as d:
        d.start_referral()
        yield d


@pytest.fixture
def admin(referral: Deployment) -> Iterator[httpx.Client]:
    with referral.admin() as c:
        yield c


@pytest.fixture
def anonymous(referral: Deployment) -> Iterator[httpx.Client]:
    with referral.client(base_url=referral.referral_url) as c:
        yield c


ROUTES = [
    ("GET", "/v1/servers"),
    ("GET", "/v1/servers/s1"),
    ("PUT", "/v1/servers/x"),
    ("DELETE", "/v1/servers/s1"),
    ("POST", "/v1/servers/s1/drain"),
    ("POST", "/v1/servers/s1/resume"),
    ("PUT", "/v1/settings/ipfilter"),
    ("GET", "/v1/settings/ipfilter"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic abc", "Bearer", "bearer x"])
def test_admin_needs_the_token(
    anonymous: httpx.Client, method: str, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    r = anonymous.request(method, path, headers=headers, json={"url": "https://x.affinity.test"})
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_without_an_admin_token_the_api_is_closed(tmp_path: Path) -> None:
    """No admin token configured closes the API: 403 admin_closed, whatever is sent."""
    with Deployment(tmp_path / "closed", services=SERVICES, health="sources = []") as d:
        d.start_referral(env={"AFFINITY_REFERRAL_ADMIN_TOKEN_FILE": ""})
        with d.client(base_url=d.referral_url) as c:
            for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer x"}):
                r = c.get("/v1/servers", headers=headers)
                assert r.status_code == 403, r.text
                assert r.json()["error"] == "admin_closed"
                assert "no admin token is configured" in r.json()["detail"]
            assert c.get("/v1/assign").status_code == 200, "only the admin API is closed"


def test_register_list_drain_resume_deregister(
    admin: httpx.Client, anonymous: httpx.Client
) -> None:
    r = admin.put(
        "/v1/servers/r1",
        json={"url": "https://r1.affinity.test:8443", "weight": 2, "meta": {"zone": "eu"}},
    )
    assert r.status_code == 200
    assert r.json()["id"] == "r1" and r.json()["weight"] == 2
    listed = {s["id"]: s for s in admin.get("/v1/servers").json()["servers"]}
    assert listed["r1"]["meta"] == {"zone": "eu"}
    assert listed["r1"]["health"] == "passing" and listed["r1"]["assignable"] is True
    for key in ("load", "last_check", "assignments", "draining", "weight"):
        assert key in listed["r1"]

    assert admin.post("/v1/servers/r1/drain").json() == {"id": "r1", "draining": True}
    seen = {anonymous.get("/v1/assign").json()["server"]["id"] for _ in range(10)}
    assert seen == {"s1"}
    assert admin.get("/v1/servers/r1").json()["draining"] is True
    assert admin.post("/v1/servers/r1/resume").json()["draining"] is False
    seen = {anonymous.get("/v1/assign").json()["server"]["id"] for _ in range(10)}
    assert seen == {"s1", "r1"}

    assert admin.delete("/v1/servers/r1").status_code == 200
    assert admin.get("/v1/servers/r1").status_code == 404
    assert admin.delete("/v1/servers/r1").json()["error"] == "unknown_server"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"url": 3}',
        b'{"url": "ftp://x"}',
        b'{"url": "https://evil.example/path"}',
        b'{"url": "https://u@x.example"}',
        b'{"url": "https://x.example", "weight": -1}',
        b'{"url": "https://x.example", "weight": true}',
        b'{"url": "https://x.example", "meta": {"a": 1}}',
        b'{"url": "https://x.example", "bogus": 1}',
        b'{"url": "https://x.example", "service": "a b"}',
        b"\xff\xfe",
    ],
)
def test_bad_registrations_are_400_and_change_nothing(admin: httpx.Client, body: bytes) -> None:
    before = admin.get("/v1/servers").json()["servers"]
    r = admin.put("/v1/servers/bad1", content=body)
    assert r.status_code == 400
    assert r.json()["error"] in {"invalid_server", "invalid_json"}
    assert admin.get("/v1/servers").json()["servers"] == before


def test_bad_server_id_is_400(admin: httpx.Client) -> None:
    r = admin.put("/v1/servers/-bad", json={"url": "https://x.affinity.test"})
    assert r.status_code == 400


def test_unknown_servers_are_404(admin: httpx.Client) -> None:
    for method, path in [
        ("POST", "/v1/servers/zz/drain"),
        ("POST", "/v1/servers/zz/resume"),
        ("GET", "/v1/servers/zz"),
        ("DELETE", "/v1/servers/zz"),
    ]:
        r = admin.request(method, path)
        assert r.status_code == 404 and r.json()["error"] == "unknown_server"


def test_shared_settings_are_versioned(admin: httpx.Client) -> None:
    assert admin.get("/v1/settings/demo").status_code == 404
    first = admin.put("/v1/settings/demo", json={"a": 1}).json()
    second = admin.put("/v1/settings/demo", json={"a": 2}).json()
    assert second["version"] == first["version"] + 1
    assert admin.get("/v1/settings/demo").json()["value"] == {"a": 2}
    assert admin.put("/v1/settings/demo", content=b"[1]").status_code == 400


def test_registrations_survive_a_referral_restart(
    referral: Deployment, admin: httpx.Client
) -> None:
    admin.put("/v1/servers/keep1", json={"url": "https://keep1.affinity.test"})
    referral.referrals[-1].kill()
    referral.start_referral()
    with referral.admin() as fresh:
        assert fresh.get("/v1/servers/keep1").status_code == 200
        fresh.delete("/v1/servers/keep1")


def test_settings_long_poll_wakes_on_a_change(referral: Deployment, admin: httpx.Client) -> None:
    first = admin.get("/v1/settings", params={"index": 0}).json()
    idle = admin.get("/v1/settings", params={"index": first["index"], "wait": 0.2}).json()
    assert idle["index"] == first["index"]
    results: dict[str, object] = {}

    def poll() -> None:
        with referral.admin() as c:
            query = {"index": first["index"], "wait": 20}
            results["r"] = c.get("/v1/settings", params=query).json()

    import threading

    waiter = threading.Thread(target=poll)
    waiter.start()
    admin.put("/v1/settings/poll", json={"x": 1})
    waiter.join(15)
    answer = results["r"]
    assert isinstance(answer, dict)
    assert answer["index"] > first["index"]
    assert answer["settings"]["poll"]["value"] == {"x": 1}
    assert admin.get("/v1/settings", params={"index": "x"}).status_code == 400
