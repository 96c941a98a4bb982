"""End to end on Consul: two referral processes and three app servers behave as one deployment.

Why: the Consul backend exists so that referrals on several hosts agree without
talking to each other. These tests run real processes (``affinity referral``,
``affinity serve``) on loopback with TLS, registered through the stand-in agent
(whose HTTP checks verify the deployment's CA), and check what an operator
relies on: every referral sees the same servers; a token is honoured by any
referral; a drain asked of one referral stops assignments on all; a server
stopped with SIGTERM deregisters and one killed leaves the assignable set
within its check's interval + timeout; a Consul outage leaves every referral
assigning from its last view (marked stale) and they resume when it answers;
an agent restarted without its state gets every server back.

With ``AFFINITY_TEST_CONSUL`` the same run uses a real agent: its HTTP checks
cannot trust the test CA, so they skip TLS verification there, and the tests
that stop or restart the agent skip.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from affinity.testing import Deployment, free_port, wait_until
from tests.consul.conftest import FAST_CONFIG, real_agent_url, skip_if_real_agent
from tests.consul_agent import AgentStandIn

pytestmark = pytest.mark.consul

# The issue asks for a 30 s Consul outage; AFFINITY_TEST_CONSUL_OUTAGE shortens it locally.
OUTAGE = float(os.environ.get("AFFINITY_TEST_CONSUL_OUTAGE", "30"))
CHECK_INTERVAL = 1.0 if real_agent_url() else 0.2
CHECK_TIMEOUT = 1.0 if real_agent_url() else 0.5
BACKOFF_CAP = 1.0


@dataclass
class ConsulDeployment:
    """A deployment whose registry is a Consul agent (the stand-in unless a real one is set)."""

    d: Deployment
    agent_url: str
    prefix: str

    def ids(self, *names: str) -> list[str]:
        return [f"{self.prefix}{name}" for name in names]

    def assign(self, referral_url: str, token: str | None = None) -> dict[str, object]:
        headers = {"Affinity-Token": token} if token else {}
        with self.d.client() as c:
            r = c.get(f"{referral_url}/v1/assign", headers=headers)
            assert r.status_code == 200, r.text
            body: dict[str, object] = r.json()
            return body

    def status(self, referral_url: str) -> dict[str, object]:
        with self.d.admin(referral_url) as c:
            body: dict[str, object] = c.get("/v1/servers").json()
            return body


def registry_lines(address: str, run: str) -> str:
    return f"""backend = "consul"
[registry.options]
address = "{address}"
service_prefix = "t{run}-"
kv_prefix = "affinity-test/{run}/"
wait = 5.0
timeout = 2.0
backoff_cap = {BACKOFF_CAP}
check_interval = {CHECK_INTERVAL}
check_timeout = {CHECK_TIMEOUT}
tls_skip_verify = {"true" if real_agent_url() else "false"}
"""


def make(tmp_path: Path, address: str) -> ConsulDeployment:
    run = uuid.uuid4().hex[:8]
    d = Deployment(tmp_path / "deployment", registry=registry_lines(address, run))
    return ConsulDeployment(d=d, agent_url=address, prefix=f"t{run}-")


@pytest.fixture
def on_standin(tmp_path: Path) -> Iterator[tuple[ConsulDeployment, AgentStandIn | None]]:
    """A deployment on the in-process stand-in (its checks trust the deployment's CA)."""
    real = real_agent_url()
    port = free_port()
    deployment = make(tmp_path, real or f"http://127.0.0.1:{port}")
    agent = None
    if not real:
        agent = AgentStandIn(replace(FAST_CONFIG, check_ca_file=str(deployment.d.ca)))
        agent.start(port=port)
    try:
        yield deployment, agent
    finally:
        deployment.d.stop()
        if agent is not None:
            agent.stop()


def start(cd: ConsulDeployment, referrals: int, *servers: str) -> list[str]:
    """Start referrals (first on the deployment's port) and servers, all at once."""
    d = cd.d
    procs = [d.start_referral(wait=False)]
    procs += [d.start_referral(wait=False, port=free_port()) for _ in range(referrals - 1)]
    for url, proc in zip(d.referral_urls, procs, strict=True):
        d.wait_http(f"{url}/healthz", proc)
    for sid in servers:
        d.start_server(sid, wait=False)
    for sid in servers:
        d.wait_http(f"{d.server_urls[sid]}/.well-known/affinity/health", d.servers[sid])
    return d.referral_urls


def test_two_referrals_and_three_servers_act_as_one(
    on_standin: tuple[ConsulDeployment, AgentStandIn | None],
) -> None:
    cd, _ = on_standin
    d = cd.d
    ids = cd.ids("s1", "s2", "s3")
    a, b = start(cd, 2, *ids)

    def everywhere(expected: set[str]) -> bool:
        return all(d.assignable(url) == expected for url in (a, b))

    wait_until(lambda: everywhere(set(ids)), 15.0, 0.05, "all servers assignable on both")
    assert not cd.status(a)["stale"] and not cd.status(b)["stale"]

    # A token from one referral is honoured by the other: same server, sticky.
    first = cd.assign(a)
    again = cd.assign(b, token=str(first["token"]))
    assert again["server"] == first["server"] and again["sticky"] is True

    # A drain asked of referral A (a KV flag) stops new assignments on both.
    drained = ids[0]
    with d.admin(a) as admin:
        assert admin.post(f"/v1/servers/{drained}/drain").status_code == 200
    asked = time.monotonic()
    wait_until(lambda: everywhere(set(ids[1:])), 1.0, 0.02, "drain seen by both referrals")
    drain_seen = time.monotonic() - asked
    picks = {cd.assign(url)["server"]["id"] for url in (a, b) for _ in range(6)}  # type: ignore[index]
    assert drained not in picks
    with d.admin(b) as admin:
        assert admin.post(f"/v1/servers/{drained}/resume").status_code == 200
    wait_until(lambda: everywhere(set(ids)), 1.0, 0.02, "resume seen by both referrals")

    # SIGTERM: the server drains (maintenance), deregisters, exits 0; both referrals drop it.
    stopped = ids[1]
    d.servers[stopped].signal(signal.SIGTERM)
    assert d.servers[stopped].wait(15) == 0
    wait_until(
        lambda: all(stopped not in d.registered(url) for url in (a, b)), 5.0, 0.05, "deregistered"
    )

    # kill -9: gone from the assignable set within the check's interval + timeout.
    killed = ids[2]
    holder = cd.assign(a)
    while holder["server"]["id"] != killed:  # type: ignore[index]
        holder = cd.assign(a)
    died = time.monotonic()
    d.servers[killed].kill()
    wait_until(lambda: everywhere({ids[0]}), 5.0, 0.02, "killed server ejected")
    ejected = time.monotonic() - died
    assert ejected <= CHECK_INTERVAL + CHECK_TIMEOUT + 0.5, f"{ejected:.2f}s"
    moved = cd.assign(b, token=str(holder["token"]))
    assert moved["server"]["id"] == ids[0] and moved["sticky"] is False  # type: ignore[index]
    print(f"drain seen by both referrals in {drain_seen:.3f}s; kill -9 ejected in {ejected:.3f}s")


@pytest.mark.slow
def test_a_consul_outage_leaves_referrals_assigning_and_they_resume(
    on_standin: tuple[ConsulDeployment, AgentStandIn | None],
) -> None:
    cd, agent = on_standin
    skip_if_real_agent("takes the agent down")
    assert agent is not None
    d = cd.d
    ids = cd.ids("s1", "s2", "s3")
    a, b = start(cd, 2, *ids[:2])
    wait_until(
        lambda: all(d.assignable(url) == set(ids[:2]) for url in (a, b)), 15.0, 0.05, "ready"
    )
    agent.down()
    went_down = time.monotonic()
    wait_until(lambda: all(cd.status(url)["stale"] for url in (a, b)), 3.0, 0.05, "stale")
    assert "unreachable" in str(cd.status(a)["stale_reason"])
    served = asked = 0
    killed = False
    while time.monotonic() - went_down < OUTAGE:
        for url in (a, b):
            asked += 1
            served += cd.assign(url)["server"]["id"] in ids[:2]  # type: ignore[index]
        if not killed and time.monotonic() - went_down > OUTAGE / 2:
            # Active health checks run on top of the Consul view: a death is still noticed.
            d.servers[ids[1]].kill()
            killed = True
            wait_until(
                lambda: all(d.assignable(url) == {ids[0]} for url in (a, b)), 5.0, 0.05, "eject"
            )
        time.sleep(0.5)  # pacing the clients' requests through the outage, not a wait
    agent.up()
    came_back = time.monotonic()
    wait_until(lambda: not any(cd.status(url)["stale"] for url in (a, b)), 5.0, 0.02, "fresh")
    resumed = time.monotonic() - came_back
    assert resumed <= BACKOFF_CAP + 1.0, f"{resumed:.2f}s to notice the agent again"
    d.start_server(ids[2])
    wait_until(lambda: all(ids[2] in d.assignable(url) for url in (a, b)), 10.0, 0.05, "new server")
    # Every request of the outage was assigned a live server; however slowly a busy
    # machine paced them, there were rounds before and after the kill.
    assert served == asked, (served, asked)
    assert asked >= 2 * 4, asked
    print(f"{OUTAGE:.0f}s outage: {served} assignments served; fresh again in {resumed:.3f}s")


def test_an_agent_restarted_without_state_gets_every_server_back(tmp_path: Path) -> None:
    skip_if_real_agent("restarts the agent")
    port = free_port()
    cd = make(tmp_path, f"http://127.0.0.1:{port}")
    agent = AgentStandIn(replace(FAST_CONFIG, check_ca_file=str(cd.d.ca)))
    agent.start(port=port)
    try:
        ids = cd.ids("s1", "s2")
        (a,) = start(cd, 1, *ids)
        wait_until(lambda: cd.d.assignable(a) == set(ids), 15.0, 0.05, "ready")
        agent.restart()  # connections dropped, then a fresh agent on the same port: nothing there
        restarted = time.monotonic()

        def registered_again() -> bool:
            return all("registering again" in cd.d.servers[sid].output() for sid in ids)

        wait_until(registered_again, 5.0, 0.05, "heartbeats registering again")
        with httpx.Client(base_url=agent.url) as http:
            assert all(http.get(f"/v1/agent/service/{sid}").status_code == 200 for sid in ids)
        wait_until(
            lambda: cd.d.assignable(a) == set(ids) and not cd.status(a)["stale"],
            5.0,
            0.05,
            "assignable again",
        )
        print(f"servers back {time.monotonic() - restarted:.3f}s after the agent restart")
    finally:
        cd.d.stop()
        agent.stop()
