"""The referral's health checker reads at most 64 KiB of an answer.

It used to read the whole body before looking at its first 64 KiB: a server
answering 300 MB took the referral to about 1 GB and stayed passing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from affinity.testing import Deployment, wait_until

APPS = str(Path(__file__).with_name("apps.py"))


def _server(d: Deployment, server_id: str) -> dict[str, Any]:
    with d.admin() as admin:
        answer: dict[str, Any] = admin.get(f"/v1/servers/{server_id}").json()
        return answer


@pytest.mark.parametrize("app", ["EndlessHealth", "HugeHealth"])
def test_an_oversized_health_answer_is_a_failed_check(deployment: Deployment, app: str) -> None:
    d = deployment
    d.start_referral()
    d.start_server("s1", app=f"{APPS}:{app}", wait=False)
    d.start_server("s2")

    def failed_on_the_cap() -> bool:
        s1 = _server(d, "s1")
        reason = s1.get("last_failure", {}).get("reason", "")
        return s1.get("health") == "critical" and "64 KiB" in reason

    wait_until(failed_on_the_cap, 15, what="s1 critical after checks failed on the cap")
    wait_until(lambda: "s2" in d.assignable(), 10, what="s2 assignable")
    assert _server(d, "s1")["assignable"] is False
    with d.client() as c:
        for _ in range(5):
            assert c.get(d.referral_url + "/v1/assign").json()["server"]["id"] == "s2"
