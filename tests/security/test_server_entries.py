"""Every server entry, from every source, passes one set of checks before it gets a client.

Today's review registered ``http://``, numeric and hex hosts, link-local and
metadata addresses and port 0 through the admin API; a state-file entry with
a ``javascript:`` URL was handed out by ``/v1/assign`` and put in a 307
``Location``; an entry without ``service`` stopped the referral at start;
and a new registration got clients before its first health check.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from affinity.files import write_private
from affinity.testing import Deployment, free_port, wait_until
from tests.security.conftest import refused_to_start

REFUSED = [
    "http://s9.affinity.test:8443",
    "https://2130706433",
    "https://0x7f000001",
    "https://127.1",
    "https://169.254.169.254",
    "https://[fe80::1]:8443",
    "https://[::ffff:169.254.169.254]",
    "https://metadata.google.internal",
    "https://s9.affinity.test:0",
    "javascript://evil.example/%0aalert(1)//?",
]
NO_HEALTH = "sources = []"


@pytest.fixture
def referral(deployment: Deployment) -> Deployment:
    deployment.start_referral()
    return deployment


@pytest.mark.parametrize("url", REFUSED)
def test_the_admin_api_refuses_server_origins_that_point_elsewhere(
    referral: Deployment, url: str
) -> None:
    with referral.admin() as admin:
        r = admin.put("/v1/servers/s9", json={"url": url})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_server"
    assert "s9" not in referral.registered()


def test_opting_in_allows_http_and_named_hosts(tmp_path: Path) -> None:
    registry = 'allow_http = true\nallow_hosts = ["169.254.0.0/16", "127.1"]'
    with Deployment(tmp_path / "d", health=NO_HEALTH, registry=registry) as d:
        d.start_referral()
        with d.admin() as admin:
            for sid, url in [
                ("plain", "http://s9.affinity.test:8080"),
                ("linklocal", "https://169.254.10.1:8443"),
                ("short", "https://127.1:8443"),
            ]:
                assert admin.put(f"/v1/servers/{sid}", json={"url": url}).status_code == 200
            # Named hosts only: the others stay refused.
            for url in ("https://0x7f000001", "https://[fe80::1]", "https://s9.affinity.test:0"):
                assert admin.put("/v1/servers/no", json={"url": url}).status_code == 400


def _state(d: Deployment, servers: dict[str, dict[str, object]]) -> None:
    state = {
        "format": 1,
        "index": 7,
        "servers": servers,
        "removed": [],
        "draining": [],
        "settings": {},
    }
    write_private(d.dir / "state.json", orjson.dumps(state))


def test_a_state_file_entry_is_checked_like_a_registration(tmp_path: Path) -> None:
    with Deployment(tmp_path / "d", health=NO_HEALTH) as d:
        good = {"service": "web", "url": "https://s1.affinity.test:8443"}
        evil = {"service": "web", "url": "javascript://evil.example/%0aalert(1)//?"}
        _state(d, {"s1": good, "evil": evil, "bad id": good})
        proc = d.start_referral()
        assert d.registered() == {"s1"}
        with d.client() as c:
            for _ in range(10):
                r = c.get(d.referral_url + "/go/x")
                assert r.headers["location"].startswith("https://s1.affinity.test:8443/")
                assert c.get(d.referral_url + "/v1/assign").json()["server"]["id"] == "s1"
    log = proc.output()
    assert "refused server entry 'evil'" in log and "refused server entry 'bad id'" in log


def test_a_state_file_entry_of_the_wrong_shape_moves_the_file_aside(tmp_path: Path) -> None:
    with Deployment(tmp_path / "d", health=NO_HEALTH) as d:
        _state(d, {"s1": {"url": "https://s1.affinity.test:8443"}})  # no service
        proc = d.start_referral()
        assert d.registered() == set()
        aside = list(d.dir.glob("state.json.corrupt-*"))
        assert len(aside) == 1 and b"s1" in aside[0].read_bytes()
        with d.admin() as admin:
            put = admin.put("/v1/servers/s2", json={"url": "https://s2.affinity.test:8443"})
            assert put.status_code == 200
    assert re.search(r"state file .* is corrupt .*server 's1'", proc.output())


def test_a_config_file_server_is_checked_at_start(tmp_path: Path) -> None:
    services = (
        '[services.web]\npolicy = "round_robin"\n'
        'servers = [{id = "s1", url = "https://s1.affinity.test"}, '
        '{id = "s2", url = "https://169.254.169.254"}]\n'
    )
    with Deployment(tmp_path / "d", health=NO_HEALTH, services=services) as d:
        output = refused_to_start(d.start_referral(wait=False))
    assert "services.web.servers[1]" in output and "metadata" in output


def test_an_app_server_checks_its_own_url_at_start(deployment: Deployment) -> None:
    deployment.start_referral()
    proc = deployment.start_server(
        "s1", wait=False, env={"AFFINITY_SERVER_URL": "https://0x7f000001:8443"}
    )
    assert "server.url" in refused_to_start(proc)


# -- no client before the first passing check ------------------------------------------------


def test_a_new_registration_gets_no_client_before_its_first_passing_check(
    deployment: Deployment,
) -> None:
    d = deployment
    d.start_referral()
    d.start_server("s1")
    wait_until(lambda: d.assignable() == {"s1"}, 10, what="s1 checked")
    ghost = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    with d.admin() as admin, d.client() as c:
        assert admin.put("/v1/servers/ghost", json={"url": ghost}).status_code == 200
        picks = {c.get(d.referral_url + "/v1/assign").json()["server"]["id"] for _ in range(20)}
        assert picks == {"s1"}
        shown = admin.get("/v1/servers/ghost").json()
        assert shown["assignable"] is False and shown["health"] == "critical"
        wait_until(
            lambda: admin.get("/v1/servers/ghost").json()["awaiting_check"] is False,
            10,
            what="ghost's first (failed) check",
        )
        assert admin.get("/v1/servers/ghost").json()["assignable"] is False
    # A real server comes in once checked.
    d.start_server("s2")
    wait_until(lambda: d.assignable() == {"s1", "s2"}, 10, what="s2 checked and assignable")


def test_without_a_health_source_a_registration_is_trusted(tmp_path: Path) -> None:
    with Deployment(tmp_path / "d", health=NO_HEALTH) as d:
        d.start_referral()
        with d.admin() as admin:
            url = "https://s9.affinity.test:8443"
            assert admin.put("/v1/servers/s9", json={"url": url}).status_code == 200
        assert d.assignable() == {"s9"}


# -- referral URLs in clear --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('referral_url = "http://127.0.0.1:1"', "server.referral_url"),
        ('referral_url = "https://127.0.0.1:1, http://127.0.0.1:2"', "server.referral_url"),
    ],
)
def test_a_referral_url_in_clear_is_refused(tmp_path: Path, line: str, key: str) -> None:
    with Deployment(tmp_path / "d", health=NO_HEALTH) as d:
        d.config.write_text(re.sub(r"(?m)^referral_url = .*$", line, d.config.read_text()))
        output = refused_to_start(d.start_server("s1", wait=False))
        assert key in output
        allowed = {"AFFINITY_SERVER_INSECURE_REFERRAL": "true"}
        proc = d.start_server("s2", wait=False, env=allowed)
        d.wait_http(d.server_urls["s2"] + "/.well-known/affinity/health", proc)


def test_a_jwks_url_in_clear_is_refused(tmp_path: Path) -> None:
    with Deployment(tmp_path / "d", health=NO_HEALTH) as d:
        proc = d.start_server(
            "s1", wait=False, env={"AFFINITY_TOKENS_JWKS_URL": "http://127.0.0.1:1/jwks.json"}
        )
        assert "tokens.jwks_url" in refused_to_start(proc)
