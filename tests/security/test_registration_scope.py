"""App servers hold a registration token of their own, not the admin token.

Every app server used to hold the full admin token: any of them could
re-register other servers, move them between services, and switch the
referral's rate limit off with ``PUT /v1/settings/ratelimit {"limits": null}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from affinity.testing import Deployment, wait_until
from affinity.web.auth import registration_token

RATELIMIT = """
[plugins.ratelimit]
rate = 50.0
burst = 50
[[plugins.ratelimit.limits]]
name = "assign"
prefix = "/v1/assign"
roles = ["referral"]
rate = 20.0
burst = 20
key = "ip"
"""


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Deployment]:
    with Deployment(tmp_path / "d", extra_config=RATELIMIT) as d:
        d.start_referral()
        d.start_server("s1")
        d.start_server("s2")
        wait_until(lambda: d.assignable() == {"s1", "s2"}, 10, what="s1 and s2 registered")
        yield d


def _as(d: Deployment, token: str) -> httpx.Client:
    return d.client(base_url=d.referral_url, headers={"Authorization": f"Bearer {token}"})


def test_a_server_changes_only_itself(fleet: Deployment) -> None:
    s1 = fleet.registration_token("s1")
    with _as(fleet, s1) as c:
        own = c.get("/v1/servers/s1")
        assert own.status_code == 200 and own.json()["id"] == "s1"
        url = fleet.server_urls["s1"]
        assert c.put("/v1/servers/s1", json={"url": url, "weight": 2}).status_code == 200
        assert c.post("/v1/servers/s1/drain").status_code == 200
        assert c.post("/v1/servers/s1/resume").status_code == 200
        assert c.get("/v1/settings").status_code == 200, "servers read the shared settings"
        others = [
            c.get("/v1/servers/s2"),
            c.put("/v1/servers/s2", json={"url": "https://evil.affinity.test", "service": "x"}),
            c.delete("/v1/servers/s2"),
            c.post("/v1/servers/s2/drain"),
            c.put("/v1/servers/s3", json={"url": "https://s3.affinity.test"}),
        ]
        for r in others:
            assert r.status_code == 403, r.text
            assert r.json()["error"] == "forbidden"
        operators = [
            c.get("/v1/servers"),
            c.put("/v1/settings/ratelimit", json={"limits": None}),
            c.get("/v1/settings/ratelimit"),
        ]
        for r in operators:
            assert r.status_code == 401, r.text
    listed = {s["id"]: s for s in _list(fleet)}
    assert set(listed) == {"s1", "s2"}
    assert listed["s2"]["url"] == fleet.server_urls["s2"] and listed["s2"]["service"] == "web"
    assert not listed["s2"]["draining"]


def _list(d: Deployment) -> list[dict[str, object]]:
    with d.admin() as admin:
        servers: list[dict[str, object]] = admin.get("/v1/servers").json()["servers"]
        return servers


@pytest.mark.parametrize(
    "token",
    [
        "s1.AAAA",
        "s1",
        "s1.",
        ".",
        registration_token("another-secret-of-at-least-32-chars!", "s1"),
    ],
)
def test_a_forged_registration_token_opens_nothing(fleet: Deployment, token: str) -> None:
    with _as(fleet, token) as c:
        r = c.put("/v1/servers/s1", json={"url": "https://evil.affinity.test"})
        assert r.status_code == 401, r.text
        assert c.get("/v1/settings").status_code == 401


def test_a_shared_document_may_not_loosen_the_files_rate_limits(fleet: Deployment) -> None:
    with fleet.admin() as admin:
        for value in ({"limits": None}, {"rate": None, "burst": None}, {"rate": 1000.0}):
            r = admin.put("/v1/settings/ratelimit", json=value)
            assert r.status_code == 400, r.text
            assert "would loosen the config file's limits" in r.json()["detail"]
        tighter = admin.put("/v1/settings/ratelimit", json={"rate": 10.0})
        assert tighter.status_code == 200, tighter.text


def test_the_file_may_allow_loosening(tmp_path: Path) -> None:
    extra = RATELIMIT.replace("burst = 50\n", "burst = 50\nallow_loosening = true\n", 1)
    with Deployment(tmp_path / "d", extra_config=extra, health="sources = []") as d:
        d.start_referral()
        with d.admin() as admin:
            assert admin.put("/v1/settings/ratelimit", json={"limits": None}).status_code == 200
