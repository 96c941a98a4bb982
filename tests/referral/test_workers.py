"""Several referral worker processes share registrations through the state file."""

from __future__ import annotations

from pathlib import Path

from affinity.testing import Deployment, wait_until


def test_two_workers_see_the_same_registrations(tmp_path: Path) -> None:
    # No health checks: w1 is a registration only, nothing listens there.
    with Deployment(tmp_path / "d", health="sources = []") as deployment:
        deployment.start_referral(env={"AFFINITY_REFERRAL_WORKERS": "2"})
        with deployment.admin() as admin:
            admin.put("/v1/servers/w1", json={"url": "https://w1.affinity.test:8443"})
        pids: set[int] = set()

        def both_workers_answered() -> bool:
            # A fresh connection each time: the kernel spreads them over the workers.
            # A worker that has not yet read the state file (it polls) answers 503;
            # only assignments of w1 count, and from two different workers.
            with deployment.client(base_url=deployment.referral_url) as c:
                assigned = c.get("/v1/assign")
                worker = c.get("/healthz").json()["worker"]
                if assigned.status_code == 200:
                    assert assigned.json()["server"]["id"] == "w1"
                    pids.add(worker)
            return len(pids) >= 2

        wait_until(both_workers_answered, 30, 0.0, "both workers answering")
