"""Behind a trusted proxy, policies and the avoid hook see the client's address, not the proxy's.

A real referral process loads ``address_plugin`` (``AFFINITY_PLUGINS``), whose
policy and ``affinity_server_avoided`` hook record the address they are given.
Loopback has a whole /8, so a socket bound to 127.0.0.2 is another peer.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from affinity.testing import Deployment, free_port
from affinity.web.tls import client_context
from tests.record import loading

SERVICES = """
[services.web]
policy = "recording"
servers = [
  {id = "s1", url = "https://s1.affinity.test:8443"},
  {id = "s2", url = "https://s2.affinity.test:8443"},
]
"""
PLUGIN = loading("tests.referral.address_plugin")


def seen_after(c: httpx.Client, base: str, xff: str, avoid: str | None = None) -> list[list[str]]:
    """Assign once with ``X-Forwarded-For: xff``; what the policy and the hook were given."""
    params = {"avoid": avoid} if avoid else {}
    r = c.get(base + "/v1/assign", params=params, headers={"X-Forwarded-For": xff})
    assert r.status_code == 200, r.text
    seen: list[list[str]] = c.get(base + "/test/seen").json()
    return seen


def test_policies_and_the_avoid_hook_see_the_address_the_trusted_proxy_names(
    tmp_path: Path,
) -> None:
    with Deployment(
        tmp_path / "proxied",
        services=SERVICES,
        health="sources = []",
        referral="proxies_count = 1\n",
        env=PLUGIN,
    ) as d:
        d.start_referral()
        base = d.referral_url
        with d.client() as c:
            assert seen_after(c, base, "198.51.100.1") == [["policy", "198.51.100.1"]]
            assert seen_after(c, base, "198.51.100.2") == [["policy", "198.51.100.2"]]
            # The entry the proxy appended counts; what the client put before it does not.
            assert seen_after(c, base, "203.0.113.9, 198.51.100.3") == [["policy", "198.51.100.3"]]
            assert seen_after(c, base, "198.51.100.4", avoid="s1") == [
                ["avoided", "198.51.100.4"],
                ["policy", "198.51.100.4"],
            ]

        # The same request to a referral that trusts no proxy: the header is ignored.
        port = free_port()
        untrusted = f"https://127.0.0.1:{port}"
        d.start_referral(port=port, env={"AFFINITY_REFERRAL_PROXIES_COUNT": "0"})
        transport = httpx.HTTPTransport(verify=client_context(d.ca), local_address="127.0.0.2")
        with httpx.Client(transport=transport, timeout=5.0) as c:
            assert seen_after(c, untrusted, "198.51.100.1", avoid="s1") == [
                ["avoided", "127.0.0.2"],
                ["policy", "127.0.0.2"],
            ]
