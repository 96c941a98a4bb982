"""A shared settings document that makes a plugin fail is refused like a bad one.

``{"roles": [["referral"]]}`` raised TypeError in both first-party plugins:
the admin API answered 500, and written through the registry (state file or
Consul KV) it ended the referral's watch task, so registrations made later
never appeared.
"""

from __future__ import annotations

import re

import orjson
import pytest

from affinity.files import write_private
from affinity.testing import Deployment, wait_until
from tests.record import loading

CRASHING = loading("tests.security.crashing_plugin")
BAD = {"roles": [["referral"]]}


def _refused(metrics: str, name: str) -> float:
    found = re.search(rf'^affinity_settings_refused_total{{name="{name}"}} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def _version(metrics: str, name: str) -> float:
    found = re.search(rf'^affinity_settings_version{{name="{name}"}} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("name", ["ipfilter", "ratelimit"])
def test_the_admin_api_refuses_a_document_a_plugin_fails_on(
    deployment: Deployment, name: str
) -> None:
    deployment.start_referral()
    with deployment.admin() as admin:
        r = admin.put(f"/v1/settings/{name}", json=BAD)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "invalid_settings"
        assert "previous kept" in r.json()["detail"]
        assert admin.get(f"/v1/settings/{name}").status_code == 404


def _edit_state(d: Deployment, change: dict[str, object]) -> None:
    """Write the state file as another process would: straight, not through the admin API."""
    path = d.dir / "state.json"
    state = orjson.loads(path.read_bytes())
    for key, value in change.items():
        state[key].update(value)
    state["index"] += 1
    write_private(path, orjson.dumps(state))


def test_a_bad_document_in_the_registry_leaves_the_watch_running(deployment: Deployment) -> None:
    d = deployment
    proc = d.start_referral()
    with d.admin() as admin:
        assert admin.put("/v1/settings/ipfilter", json={"deny": ["198.51.100.0/24"]}).is_success
    _edit_state(
        d,
        {
            "settings": {
                "ipfilter": {"version": 2, "value": BAD},
                "ratelimit": {"version": 1, "value": BAD},
            }
        },
    )
    with d.client() as c:
        wait_until(
            lambda: _refused(c.get(d.referral_url + "/metrics").text, "ratelimit") == 1,
            10,
            what="the bad documents refused",
        )
    # Another process registers a server later: the watch must still see it.
    entry = {"service": "web", "url": "https://late.affinity.test:8443", "weight": 1, "meta": {}}
    _edit_state(d, {"servers": {"late": entry}})
    wait_until(lambda: "late" in d.registered(), 10, what="the later registration seen")
    with d.admin() as admin:
        assert admin.get("/v1/settings/ipfilter").json()["version"] == 1, "the previous stays"
        assert admin.get("/v1/settings/ratelimit").status_code == 404
        servers = admin.get("/v1/servers").json()
        assert servers["stale"] is False
    with d.client() as c:
        metrics = c.get(d.referral_url + "/metrics").text
    assert _refused(metrics, "ipfilter") == 1 and _refused(metrics, "ratelimit") == 1
    log = proc.output()
    assert log.count("refused shared settings 'ipfilter' version 2") == 1, log


def test_an_app_server_refuses_a_document_its_plugin_fails_on(deployment: Deployment) -> None:
    d = deployment
    d.start_referral()
    server = d.start_server("s1", env=CRASHING)
    metrics_url = d.server_urls["s1"] + "/.well-known/affinity/metrics"
    with d.admin() as admin, d.client() as c:
        assert admin.put("/v1/settings/crashy", json={"boom": 1}).is_success
        wait_until(
            lambda: _refused(c.get(metrics_url).text, "crashy") == 1,
            10,
            what="the app server refusing crashy version 1",
        )
        assert _version(c.get(metrics_url).text, "crashy") == 0
        # Its settings watch goes on: the next good version is put in force.
        assert admin.put("/v1/settings/crashy", json={"fine": 1}).is_success
        wait_until(
            lambda: _version(c.get(metrics_url).text, "crashy") == 2,
            10,
            what="the app server applying crashy version 2",
        )
        assert _refused(c.get(metrics_url).text, "crashy") == 1, "counted once"
        assert c.get(d.server_urls["s1"] + "/").status_code == 200
    assert server.output().count("refused shared settings 'crashy' version 1") == 1
