"""An app server's token settings held against tokens made to test each of them, in both
modes of verifying (the key file, the referral's JWKS)."""

from __future__ import annotations

import time

from affinity.testing import Deployment
from affinity.tokens.jws import TokenIssuer
from affinity.tokens.keyring import KeyRing

SETTINGS = {"AFFINITY_TOKENS_ISSUER": "elsewhere", "AFFINITY_TOKENS_LEEWAY": "600"}
"""``tokens.issuer`` and ``tokens.leeway`` of the server under test. The longest lifetime they
allow is the referral's (``ttl * (1 + jitter)`` rounded up) plus the leeway: 4560 s."""


def assert_the_token_settings_apply(d: Deployment, url: str, server_id: str = "s1") -> None:
    """A GET of ``url`` (on the server ``server_id``, started with :data:`SETTINGS`) is served or
    refused ``401`` as the settings say, with tokens signed by the deployment's keys."""
    ring = KeyRing.load(d.dir / "keys.json")

    def status(issuer: str = "elsewhere", ttl: float = 60.0, age: float = 0.0) -> int:
        clock = lambda: time.time() - age  # noqa: E731
        iss = TokenIssuer(ring, issuer=issuer, ttl=ttl, jitter=0.0, clock=clock)
        token = iss.issue(server_id, iss.new_client_id(), "web")[0]
        with d.client() as c:
            return c.get(url, headers={"Affinity-Token": token}).status_code

    assert status() == 200
    assert status(issuer="affinity") == 401, "issued by another issuer"
    assert status(age=300) == 200, "expired within the leeway"
    assert status(age=900) == 401, "expired past the leeway"
    assert status(ttl=4500.0) == 200
    assert status(ttl=4600.0) == 401, "lives too long"
