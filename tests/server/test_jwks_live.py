"""App servers that hold only the referral's public keys (EdDSA, JWKS)."""

from __future__ import annotations

import signal

from affinity.testing import Deployment, wait_until
from affinity.tokens.jws import TokenIssuer
from affinity.tokens.keyring import KeyRing, generate_keyfile, rotate_keyfile
from tests.server import token_settings


def test_server_verifies_with_the_referrals_jwks(deployment: Deployment) -> None:
    generate_keyfile(deployment.dir / "keys.json", "EdDSA", True)
    deployment.start_referral()
    jwks = f"{deployment.referral_url}/.well-known/jwks.json"
    deployment.start_server(
        "s1", env={"AFFINITY_TOKENS_KEYS_FILE": "", "AFFINITY_TOKENS_JWKS_URL": jwks}
    )
    wait_until(lambda: deployment.assignable() == {"s1"}, 10, what="s1 assignable")
    with deployment.client() as c:
        published = c.get(jwks).json()["keys"]
        assert [k["kty"] for k in published] == ["OKP"]
        assert all("d" not in k for k in published)  # public halves only
        assigned = c.get(deployment.referral_url + "/v1/assign").json()
        url = deployment.server_urls["s1"]
        ok = c.get(url + "/", headers={"Affinity-Token": assigned["token"]})
        assert ok.status_code == 200 and ok.json()["server"] == "s1"
        stranger = TokenIssuer(KeyRing.generate("EdDSA")).issue("s1", "c", "web")[0]
        refused = c.get(url + "/", headers={"Affinity-Token": stranger})
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_token"


def test_sighup_makes_an_app_server_fetch_the_referrals_keys_at_once(
    deployment: Deployment,
) -> None:
    """A token signed with a key the server has not seen makes it fetch the JWKS at most once
    every 30 s; SIGHUP fetches at once."""
    generate_keyfile(deployment.dir / "keys.json", "EdDSA", True)
    referral = deployment.start_referral()
    jwks = f"{deployment.referral_url}/.well-known/jwks.json"
    server = deployment.start_server(
        "s1", env={"AFFINITY_TOKENS_KEYS_FILE": "", "AFFINITY_TOKENS_JWKS_URL": jwks}
    )
    url = deployment.server_urls["s1"]
    with deployment.client() as c:
        assert c.get(url + "/", headers={"Affinity-Token": deployment.token("s1")}).is_success
        rotate_keyfile(deployment.dir / "keys.json", None, retire_after=None)
        referral.signal(signal.SIGHUP)
        wait_until(lambda: len(c.get(jwks).json()["keys"]) == 2, 20, what="the referral's reload")
        newly_signed = {"Affinity-Token": deployment.token("s1")}
        assert c.get(url + "/", headers=newly_signed).status_code == 401, "fetched too recently"
        server.signal(signal.SIGHUP)
        wait_until(
            lambda: c.get(url + "/", headers=newly_signed).status_code == 200,
            20,
            what="the new key fetched after SIGHUP",
        )


def test_with_jwks_the_server_verifies_with_the_token_settings_of_its_config(
    deployment: Deployment,
) -> None:
    """In JWKS mode too, ``tokens.issuer``, ``tokens.leeway`` and the longest lifetime they
    allow (4560 s here) apply."""
    generate_keyfile(deployment.dir / "keys.json", "EdDSA", True)
    deployment.start_referral()
    jwks = f"{deployment.referral_url}/.well-known/jwks.json"
    keys = {"AFFINITY_TOKENS_KEYS_FILE": "", "AFFINITY_TOKENS_JWKS_URL": jwks}
    deployment.start_server("s1", env={**keys, **token_settings.SETTINGS})
    token_settings.assert_the_token_settings_apply(deployment, deployment.server_urls["s1"] + "/")
