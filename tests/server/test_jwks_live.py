"""App servers that hold only the referral's public keys (EdDSA, JWKS)."""

from __future__ import annotations

import signal

import httpx

from affinity.config import load
from affinity.process import ChildProcess
from affinity.server.tokens import TokenCheck
from affinity.testing import Deployment, wait_until
from affinity.tokens.jws import TokenIssuer
from affinity.tokens.keyring import KeyRing, generate_keyfile, rotate_keyfile
from tests.server import token_settings


def jwks_referral(deployment: Deployment) -> tuple[ChildProcess, str]:
    """A referral that signs with EdDSA, and the URL of its JWKS."""
    generate_keyfile(deployment.dir / "keys.json", "EdDSA", True)
    referral = deployment.start_referral()
    return referral, f"{deployment.referral_url}/.well-known/jwks.json"


def fetching(jwks: str, min_refresh_interval: str | None = None) -> dict[str, str]:
    """The environment of an app server that holds no key and fetches those of ``jwks``."""
    env = {"AFFINITY_TOKENS_KEYS_FILE": "", "AFFINITY_TOKENS_JWKS_URL": jwks}
    if min_refresh_interval is not None:
        env["AFFINITY_TOKENS_JWKS_MIN_REFRESH_INTERVAL"] = min_refresh_interval
    return env


def rotate(deployment: Deployment, referral: ChildProcess, client: httpx.Client, jwks: str) -> None:
    """A new active key at the referral, once its JWKS publishes both."""
    rotate_keyfile(deployment.dir / "keys.json", None, retire_after=None)
    referral.signal(signal.SIGHUP)
    wait_until(lambda: len(client.get(jwks).json()["keys"]) == 2, 20, what="the referral's reload")


def test_server_verifies_with_the_referrals_jwks(deployment: Deployment) -> None:
    _, jwks = jwks_referral(deployment)
    deployment.start_server("s1", env=fetching(jwks))
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
    referral, jwks = jwks_referral(deployment)
    server = deployment.start_server("s1", env=fetching(jwks))
    url = deployment.server_urls["s1"]
    with deployment.client() as c:
        assert c.get(url + "/", headers={"Affinity-Token": deployment.token("s1")}).is_success
        rotate(deployment, referral, c, jwks)
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
    _, jwks = jwks_referral(deployment)
    deployment.start_server("s1", env={**fetching(jwks), **token_settings.SETTINGS})
    token_settings.assert_the_token_settings_apply(deployment, deployment.server_urls["s1"] + "/")


def test_the_jwks_pacing_is_the_configs() -> None:
    env = {
        "AFFINITY_TOKENS_JWKS_URL": "https://referral.example.test/.well-known/jwks.json",
        "AFFINITY_TOKENS_JWKS_MIN_REFRESH_INTERVAL": "2",
        "AFFINITY_TOKENS_JWKS_REFRESH_INTERVAL": "45",
    }
    check = TokenCheck(load(None, env=env))
    assert check.jwks is not None and check.jwks.source.pacing == (2.0, 45.0)
    default = TokenCheck(
        load(None, env={"AFFINITY_TOKENS_JWKS_URL": env["AFFINITY_TOKENS_JWKS_URL"]})
    )
    assert default.jwks is not None and default.jwks.source.pacing == (30.0, 300.0)


def test_a_token_of_a_new_key_makes_the_server_fetch_the_keys_once_the_interval_is_over(
    deployment: Deployment,
) -> None:
    """A token naming a key the server does not know makes it fetch the referral's JWKS, at
    most once every ``tokens.jwks_min_refresh_interval`` (2 s here; the fetch at start counts):
    on a route (s1) and on a path no route takes (s2) alike. The next poll of the JWKS is
    300 s away, so only the token can have made the fetch that lets it in."""
    referral, jwks = jwks_referral(deployment)
    env = fetching(jwks, min_refresh_interval="2")
    for sid in ("s1", "s2"):
        deployment.start_server(sid, env=env, wait=False)
    for sid in ("s1", "s2"):
        health = deployment.server_urls[sid] + "/.well-known/affinity/health"
        deployment.wait_http(health, deployment.servers[sid])
    with deployment.client() as c:
        s1, s2 = deployment.server_urls["s1"], deployment.server_urls["s2"]
        known = {"Affinity-Token": deployment.token("s2")}
        r = c.get(s2 + "/no/such/path", headers=known)
        assert (r.status_code, r.json()["error"]) == (404, "not_found")
        rotate(deployment, referral, c, jwks)
        on_route = {"Affinity-Token": deployment.token("s1")}
        unmatched = {"Affinity-Token": deployment.token("s2")}
        wait_until(
            lambda: c.get(s1 + "/", headers=on_route).status_code == 200,
            15,
            interval=0.5,
            what="s1 fetching the new key for a request to a route",
        )
        wait_until(
            lambda: c.get(s2 + "/no/such/path", headers=unmatched).status_code == 404,
            15,
            interval=0.5,
            what="s2 fetching the new key for a request no route takes",
        )
        r = c.get(s2 + "/no/such/path", headers=unmatched)
        assert r.json()["error"] == "not_found" and r.headers["affinity-server"] == "s2"


def test_affinitys_own_endpoints_never_fetch_the_keys(deployment: Deployment) -> None:
    """affinity's own endpoints take no token, so a token of a key the server does not know
    makes it fetch nothing there: not on a route of its own (health), not on a path of its own
    that no route takes. Each fetch writes a log line; a request to the app's route, asked
    after them each time, shows when the pacing (1 s) lets a fetch through."""
    referral, jwks = jwks_referral(deployment)
    env = fetching(jwks, min_refresh_interval="1")
    server = deployment.start_server("s1", env=env)
    url = deployment.server_urls["s1"]

    def fetches() -> int:
        return server.output().count("INFO affinity.tokens.jwks: token keys from ")

    with deployment.client() as c:
        rotate(deployment, referral, c, jwks)
        new_key = {"Affinity-Token": deployment.token("s1")}
        assert fetches() == 1, "the fetch at start"
        own = ("/.well-known/affinity/health", "/.well-known/affinity/no-such-endpoint")

        def a_route_fetched_the_new_key() -> bool:
            for path in own:
                status = c.get(url + path, headers=new_key).status_code
                assert (path, fetches()) == (path, 1), f"{path} ({status}) fetched the keys"
            return c.get(url + "/", headers=new_key).status_code == 200

        wait_until(a_route_fetched_the_new_key, 15, interval=0.2, what="s1 fetching the new key")
        assert fetches() == 2


def test_a_referral_ca_that_cannot_be_loaded_stops_the_server_naming_it(
    deployment: Deployment,
) -> None:
    """With a registry of its own (Consul here, not the referral), the referral's CA still
    serves the JWKS fetches: a file that cannot be loaded stops the server at start, and the
    error names the variable and the key."""
    deployment.start_referral()
    missing = deployment.dir / "no-such-ca.pem"
    env = {
        "AFFINITY_TOKENS_KEYS_FILE": "",
        "AFFINITY_TOKENS_JWKS_URL": f"{deployment.referral_url}/.well-known/jwks.json",
        "AFFINITY_SERVER_REFERRAL_CA": str(missing),
        "AFFINITY_REGISTRY_BACKEND": "consul",
    }
    server = deployment.start_server("s1", env=env, wait=False)
    assert server.wait(30) == 2
    assert server.output().splitlines()[-1] == (
        "affinity serve: error: environment variable AFFINITY_SERVER_REFERRAL_CA: "
        f"server.referral_ca: cannot load CA file '{missing}': No such file or directory"
    )
