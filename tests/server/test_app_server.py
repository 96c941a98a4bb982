"""App servers as real processes with TLS: token check, health, registration and drain."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from affinity.testing import Deployment, wait_until
from affinity.tokens.jws import TokenIssuer
from affinity.tokens.keyring import KeyRing, rotate_keyfile
from tests.record import loading
from tests.server import token_settings
from tests.server.apps import HOLDING

APP = HOLDING


def start(d: Deployment) -> Deployment:
    d.start_referral()
    for sid in ("s1", "s2"):
        d.start_server(sid, app=APP, wait=False)
    for sid in ("s1", "s2"):
        d.wait_http(d.server_urls[sid] + "/.well-known/affinity/health", d.servers[sid])
    wait_until(lambda: d.assignable() == {"s1", "s2"}, 10, what="both checked and assignable")
    return d


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Referral and two servers for the tests that leave them as they found them."""
    with Deployment(tmp_path_factory.mktemp("servers")) as d:
        yield start(d)


@pytest.fixture
def running(deployment: Deployment) -> Deployment:
    """A deployment of its own, for tests that change or stop servers."""
    return start(deployment)


def issuer(d: Deployment, **kwargs: object) -> TokenIssuer:
    return TokenIssuer(KeyRing.load(d.dir / "keys.json"), **kwargs)  # type: ignore[arg-type]


def token_for(d: Deployment, sid: str, service: str = "web", **kwargs: object) -> str:
    iss = issuer(d, **kwargs)
    return iss.issue(sid, iss.new_client_id(), service)[0]


def get(d: Deployment, sid: str, path: str, token: str | None = None) -> httpx.Response:
    headers = {"Affinity-Token": token} if token else {}
    with d.client() as c:
        return c.get(d.server_urls[sid] + path, headers=headers)


def test_valid_token_is_served_and_the_client_id_is_known(shared: Deployment) -> None:
    iss = issuer(shared)
    token = iss.issue("s1", "client-42", "web")[0]
    r = get(shared, "s1", "/whoami", token)
    assert r.status_code == 200
    assert r.json() == {"server": "s1", "client": "client-42"}
    assert r.headers["affinity-server"] == "s1"


def test_token_for_another_server_is_misdirected(shared: Deployment) -> None:
    r = get(shared, "s1", "/whoami", token_for(shared, "s2"))
    assert r.status_code == 421
    assert r.json() == {
        "error": "misdirected",
        "detail": "this token names another server; ask the referral again",
    }
    assert r.headers["affinity-server"] == "s1"


def test_token_for_another_service_is_misdirected(shared: Deployment) -> None:
    assert get(shared, "s1", "/whoami", token_for(shared, "s1", "api")).status_code == 421


def test_expired_token_is_401(shared: Deployment) -> None:
    old = token_for(shared, "s1", ttl=60.0, clock=lambda: time.time() - 3600)
    r = get(shared, "s1", "/whoami", old)
    assert r.status_code == 401 and r.json()["error"] == "token_expired"


@pytest.mark.parametrize("token", ["junk", "a.b.c", "eyJhbGciOiJub25lIn0.e30."])
def test_invalid_token_is_401(shared: Deployment, token: str) -> None:
    r = get(shared, "s1", "/whoami", token)
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    assert r.headers["affinity-server"] == "s1"


def test_forged_token_is_401(shared: Deployment) -> None:
    forged = TokenIssuer(KeyRing.generate("HS256")).issue("s1", "c", "web")[0]
    assert get(shared, "s1", "/whoami", forged).status_code == 401


def test_the_app_sees_the_claims_of_a_valid_token_only(shared: Deployment) -> None:
    token = issuer(shared).issue("s1", "client-5", "web")[0]
    mine = get(shared, "s1", "/claims", token)
    assert mine.json() == {"claims": {"sid": "s1", "cid": "client-5", "svc": "web"}}
    assert get(shared, "s1", "/claims").json() == {"claims": None}


def test_no_token_is_allowed_by_default(shared: Deployment) -> None:
    r = get(shared, "s1", "/whoami")
    assert r.status_code == 200 and r.json()["client"] is None


def test_token_required_mode(deployment: Deployment) -> None:
    deployment.start_referral()
    deployment.start_server("s1", app=APP, env={"AFFINITY_SERVER_REQUIRE_TOKEN": "true"})
    r = get(deployment, "s1", "/whoami")
    assert r.status_code == 401
    assert r.json() == {
        "error": "token_required",
        "detail": "this server needs an affinity token from the referral",
    }
    assert get(deployment, "s1", "/whoami", token_for(deployment, "s1")).status_code == 200
    # Health stays reachable for the referral's checks.
    assert get(deployment, "s1", "/.well-known/affinity/health").status_code == 200


def test_drain_and_resume_need_the_admin_token_read_at_start(running: Deployment) -> None:
    base = running.server_urls["s1"] + "/.well-known/affinity"
    with running.client() as c:
        refused = c.post(base + "/drain", headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert refused.headers["affinity-server"] == "s1"
        assert c.get(base + "/health").json()["draining"] is False
        # The file changes; the server keeps the token it read when it started.
        (running.dir / "server-admin-token").write_text("rotated-without-a-restart")
        ok = {"Authorization": f"Bearer {running.server_admin_token}"}
        assert c.post(base + "/drain", headers=ok).json() == {"id": "s1", "draining": True}
        assert c.get(base + "/health").status_code == 429
        rotated = {"Authorization": "Bearer rotated-without-a-restart"}
        assert c.post(base + "/resume", headers=rotated).status_code == 401
        assert c.post(base + "/resume", headers=ok).json() == {"id": "s1", "draining": False}
        assert c.get(base + "/health").status_code == 200


def test_every_route_is_guarded_whoever_added_it_from_the_start(deployment: Deployment) -> None:
    """A server of its own: the routes are put behind the guard as it starts, in this test."""
    deployment.start_referral()
    deployment.start_server("s1", app=APP)
    # A blueprint route added in setup(), with a plain function as handler.
    r = get(deployment, "s1", "/bp/whoami", token_for(deployment, "s2"))
    assert r.status_code == 421 and r.headers["affinity-server"] == "s1"
    r = get(deployment, "s1", "/bp/whoami", issuer(deployment).issue("s1", "client-7", "web")[0])
    assert r.json() == {"server": "s1", "client": "client-7"}
    assert r.headers["affinity-server"] == "s1"
    r = get(deployment, "s1", "/bp/echo/hello", token_for(deployment, "s1"))
    assert r.json() == {"server": "s1", "word": "hello"}
    r = get(deployment, "s1", "/bp/deferred", issuer(deployment).issue("s1", "client-6", "web")[0])
    assert r.json() == {"server": "s1", "client": "client-6"}
    # A route that takes its body as a stream still does behind the guard.
    with deployment.client() as c:
        r = c.post(deployment.server_urls["s1"] + "/upload", content=b"x" * 100_000)
    assert r.json() == {"received": 100_000} and r.headers["affinity-server"] == "s1"


def test_a_request_no_route_takes_is_guarded_too(shared: Deployment) -> None:
    r = get(shared, "s1", "/no/such/path", "junk")
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    assert r.headers["affinity-server"] == "s1"
    r = get(shared, "s1", "/no/such/path", token_for(shared, "s1"))
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert r.headers["affinity-server"] == "s1"
    with shared.client() as c:
        r = c.delete(shared.server_urls["s1"] + "/whoami", headers={"Affinity-Token": "junk"})
    assert r.status_code == 401 and r.headers["affinity-server"] == "s1"
    # The 404 let in was counted in flight, then out again.
    assert get(shared, "s1", "/.well-known/affinity/health").json()["load"]["inflight"] == 0


def test_a_failing_handler_answers_500_and_leaves_nothing_in_flight(shared: Deployment) -> None:
    r = get(shared, "s1", "/boom", token_for(shared, "s1"))
    assert r.status_code == 500 and r.json()["error"] == "internal_error"
    assert "the app failed" not in r.text
    assert r.headers["affinity-server"] == "s1"
    assert get(shared, "s1", "/.well-known/affinity/health").json()["load"]["inflight"] == 0


def test_health_reports_status_and_load(running: Deployment) -> None:
    iss = issuer(running)
    for cid in ("a", "b", "a"):
        get(running, "s1", "/whoami", iss.issue("s1", cid, "web")[0])
    r = get(running, "s1", "/.well-known/affinity/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "passing" and body["draining"] is False
    assert body["load"]["active_clients"] == 2
    assert body["load"]["queue_depth"] == 7.0
    assert body["load"]["inflight"] == 0
    assert r.headers["affinity-server"] == "s1"


@pytest.mark.parametrize(
    ("status", "code"), [("warning", 429), ("critical", 503), ("passing", 200)]
)
def test_the_app_sets_its_own_health(shared: Deployment, status: str, code: int) -> None:
    with shared.client() as c:
        c.post(shared.server_urls["s1"] + f"/status/{status}")
        try:
            r = get(shared, "s1", "/.well-known/affinity/health")
            assert r.status_code == code and r.json()["status"] == status
        finally:
            c.post(shared.server_urls["s1"] + "/status/passing")


def test_a_critical_server_stops_being_assigned(running: Deployment) -> None:
    with running.client() as c:
        c.post(running.server_urls["s1"] + "/status/critical")
    wait_until(lambda: running.assignable() == {"s2"}, 10, what="s1 unassignable")
    with running.client(base_url=running.referral_url) as c:
        assert {c.get("/v1/assign").json()["server"]["id"] for _ in range(10)} == {"s2"}


def test_each_request_in_flight_counts(deployment: Deployment) -> None:
    deployment.start_referral()
    deployment.start_server("s1", app=APP)
    held: list[httpx.Response] = []

    def hold() -> None:
        with deployment.client(timeout=30.0) as c:
            held.append(c.get(deployment.server_urls["s1"] + "/hold"))

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for holder in holders:
        holder.start()

    def inflight() -> int:
        load = get(deployment, "s1", "/.well-known/affinity/health").json()["load"]
        return int(load["inflight"])

    wait_until(lambda: inflight() == 2, 10, what="two requests in flight")
    deployment.servers["s1"].signal(signal.SIGUSR1)
    for holder in holders:
        holder.join(10)
    assert [r.json() for r in held] == [{"server": "s1", "held": True}] * 2
    assert inflight() == 0


def test_sigterm_drains_then_deregisters_and_exits_0(running: Deployment) -> None:
    s1 = running.servers["s1"]
    held: dict[str, httpx.Response] = {}

    def hold() -> None:
        held["r"] = get(running, "s1", "/hold", token_for(running, "s1"))

    holder = threading.Thread(target=hold)
    holder.start()
    with running.client() as c:
        health = running.server_urls["s1"] + "/.well-known/affinity/health"
        wait_until(lambda: c.get(health).json()["load"]["inflight"] == 1, 5, what="in flight")
        s1.signal(signal.SIGTERM)
        # No new clients at once: the server tells the referral it is draining.
        wait_until(lambda: "s1" not in running.assignable(), 2, what="s1 no longer assignable")
        assert c.get(health).status_code == 429 and c.get(health).json()["draining"] is True
        with running.client(base_url=running.referral_url) as ref:
            assert {ref.get("/v1/assign").json()["server"]["id"] for _ in range(10)} == {"s2"}
        # After the grace: its clients are sent back to the referral, spread in time.
        token = token_for(running, "s1")

        def reassigned() -> bool:
            return get(running, "s1", "/whoami", token).status_code == 503

        wait_until(reassigned, 5, what="503 after the grace")
        r = get(running, "s1", "/whoami", token)
        assert r.headers["affinity-reassign"] == "1"
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"] == "draining"
        # The request in flight finishes.
        s1.signal(signal.SIGUSR1)
    holder.join(10)
    assert held["r"].status_code == 200 and held["r"].json()["held"] is True
    assert s1.wait(15) == 0
    wait_until(lambda: running.registered() == {"s2"}, 5, what="deregistration")


def test_the_last_request_out_ends_the_drain_and_not_before(deployment: Deployment) -> None:
    """SIGTERM with two requests in flight: the server waits for both (``drain_timeout`` is an
    hour here), the first out does not end the wait, the last one out ends it at once."""
    deployment.start_referral()
    env = {"AFFINITY_SERVER_DRAIN_GRACE": "0", "AFFINITY_SERVER_DRAIN_TIMEOUT": "3600"}
    s1 = deployment.start_server("s1", app=APP, env=env)
    wait_until(lambda: deployment.assignable() == {"s1"}, 10, what="s1 assignable")
    held: dict[str, httpx.Response] = {}

    def hold(path: str) -> None:
        with deployment.client(timeout=60.0) as c:
            held[path] = c.get(deployment.server_urls["s1"] + path)

    holders = {path: threading.Thread(target=hold, args=(path,)) for path in ("/hold", "/hold-too")}
    for holder in holders.values():
        holder.start()
    health = "/.well-known/affinity/health"
    wait_until(
        lambda: get(deployment, "s1", health).json()["load"]["inflight"] == 2, 10, what="in flight"
    )
    s1.signal(signal.SIGTERM)
    wait_until(lambda: "s1" not in deployment.assignable(), 10, what="s1 draining")
    assert get(deployment, "s1", "/whoami").status_code == 503
    s1.signal(signal.SIGUSR1)
    holders["/hold"].join(30)
    assert held["/hold"].json() == {"server": "s1", "held": True}
    assert get(deployment, "s1", health).json()["load"]["inflight"] == 1, "still waiting"
    s1.signal(signal.SIGUSR2)
    holders["/hold-too"].join(30)
    assert held["/hold-too"].json() == {"server": "s1", "held": True}
    assert s1.wait(30) == 0, "stopped when the last request was answered"
    assert "still in flight" not in s1.output()
    wait_until(lambda: deployment.registered() == set(), 5, what="deregistration")


def test_a_draining_server_serves_its_clients_until_the_grace_has_passed(
    deployment: Deployment,
) -> None:
    """Within ``drain_grace`` a valid token is served; only after it comes 503 + Reassign,
    with a ``Retry-After`` drawn between 1 s and the grace (at least 1 s).

    No clock in the test: s1's grace is an hour, so every request falls within it;
    s2's is zero, so every request falls after it. s3's is 3 s: its clients are told to
    come back after 2 or 3 s (the ceiling of a draw between 1 and 3), and not all alike.
    """
    deployment.start_referral()
    for sid, grace in (("s1", "3600"), ("s2", "0"), ("s3", "3")):
        env = {"AFFINITY_SERVER_DRAIN_GRACE": grace}
        deployment.start_server(sid, app=APP, env=env, wait=False)
    for sid in ("s1", "s2", "s3"):
        health = deployment.server_urls[sid] + "/.well-known/affinity/health"
        deployment.wait_http(health, deployment.servers[sid])
    auth = {"Authorization": f"Bearer {deployment.server_admin_token}"}
    with deployment.client() as c:
        for sid in ("s1", "s2", "s3"):
            url = deployment.server_urls[sid]
            drained = c.post(url + "/.well-known/affinity/drain", headers=auth)
            assert drained.status_code == 200 and drained.json()["draining"] is True
            assert c.get(url + "/.well-known/affinity/health").json()["draining"] is True
    within = get(deployment, "s1", "/whoami", token_for(deployment, "s1"))
    assert within.status_code == 200 and within.json()["server"] == "s1"
    assert "affinity-reassign" not in within.headers
    after = get(deployment, "s2", "/whoami", token_for(deployment, "s2"))
    assert after.status_code == 503
    assert after.json() == {
        "error": "draining",
        "detail": "this server is draining; ask the referral for another",
    }
    assert after.headers["affinity-reassign"] == "1"
    assert after.headers["retry-after"] == "1", "a grace under 1 s: 1 s"
    assert after.headers["affinity-server"] == "s2"
    token = token_for(deployment, "s3")
    wait_until(
        lambda: get(deployment, "s3", "/whoami", token).status_code == 503, 15, what="s3 grace"
    )
    waits = [get(deployment, "s3", "/whoami", token).headers["retry-after"] for _ in range(30)]
    assert set(waits) == {"2", "3"}, waits


def test_a_server_registers_again_after_the_referral_forgets_it(deployment: Deployment) -> None:
    deployment.config.write_text(
        deployment.config.read_text().replace('state_file = "state.json"', "")
    )
    deployment.start_referral()
    deployment.start_server("s1", app=APP)
    wait_until(lambda: deployment.registered() == {"s1"}, 10, what="registration")
    deployment.referrals[-1].kill()
    deployment.start_referral()
    wait_until(lambda: deployment.registered() == {"s1"}, 10, what="re-registration")


FILTER = loading("tests.server.filter_plugin")
REFUSE = {"X-Test-Refuse": "1"}


@pytest.fixture(scope="module")
def filtered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A referral and app server s1 with ``filter_plugin``, a request filter that records
    what it is shown and refuses requests with ``X-Test-Refuse``."""
    with Deployment(tmp_path_factory.mktemp("filtered")) as d:
        d.start_referral()
        d.start_server("s1", app=APP, env=FILTER)
        yield d


def shown(d: Deployment) -> list[dict[str, object]]:
    """What the filter was shown since it was last asked."""
    with d.client() as c:
        seen: list[dict[str, object]] = c.get(d.server_urls["s1"] + "/test/filtered").json()
    return seen


def call(
    d: Deployment, path: str, token: str | None = None, *, refuse: bool = False
) -> httpx.Response:
    headers = {"X-Test-Note": "1", **({"Affinity-Token": token} if token else {})}
    with d.client() as c:
        return c.get(d.server_urls["s1"] + path, headers={**headers, **(REFUSE if refuse else {})})


def test_the_filter_sees_the_client_id_of_a_valid_token_and_the_server(
    filtered: Deployment,
) -> None:
    shown(filtered)
    mine = issuer(filtered).issue("s1", "client-9", "web")[0]
    assert call(filtered, "/whoami", mine).json()["client"] == "client-9"
    assert call(filtered, "/whoami", "junk").status_code == 401
    assert call(filtered, "/whoami").status_code == 200
    seen = {"role": "server", "method": "GET", "path": "/whoami", "server_id": "s1"}
    assert shown(filtered) == [
        {**seen, "client_id": "client-9"},
        {**seen, "client_id": None},
        {**seen, "client_id": None},
    ]


def test_a_refusal_of_the_filter_comes_before_the_tokens_verdict(filtered: Deployment) -> None:
    """A filter refuses before the token is judged: no 401 or 421 for a refused request,
    and nothing of the app runs."""
    for token in (None, "junk", token_for(filtered, "s2"), token_for(filtered, "s1")):
        r = call(filtered, "/whoami", token, refuse=True)
        assert r.status_code == 403, (token, r.text)
        assert r.json() == {"error": "refused_by_test", "detail": "the test filter says no"}
        assert r.headers["affinity-server"] == "s1"


def test_affinitys_own_endpoints_and_unknown_paths_pass_the_filter_too(
    filtered: Deployment,
) -> None:
    shown(filtered)
    health = "/.well-known/affinity/health"
    token = issuer(filtered).issue("s1", "client-3", "web")[0]
    assert call(filtered, health, token).status_code == 200
    refused = call(filtered, health, token, refuse=True)
    assert refused.status_code == 403 and refused.headers["affinity-server"] == "s1"
    refused = call(filtered, "/no/such/path", token, refuse=True)
    assert refused.status_code == 403 and refused.json()["error"] == "refused_by_test"
    assert refused.headers["affinity-server"] == "s1"
    assert call(filtered, "/.well-known/affinity/nope", token).status_code == 404
    assert call(filtered, "/boom", token).status_code == 500
    seen = {"role": "server", "method": "GET", "server_id": "s1"}
    assert shown(filtered) == [
        {**seen, "path": health, "client_id": None},
        {**seen, "path": health, "client_id": None},
        {**seen, "path": "/no/such/path", "client_id": "client-3"},
        {**seen, "path": "/.well-known/affinity/nope", "client_id": None},
        {**seen, "path": "/boom", "client_id": "client-3"},
    ], "each request is shown to the filter once, a failing one too"
    assert call(filtered, health).json()["load"]["inflight"] == 0


def test_a_filter_that_fails_is_a_500_not_a_traceback(filtered: Deployment) -> None:
    """The client gets a bare 500; the server's log gets the failure with its traceback."""
    failure = "RuntimeError: the test filter failed"
    logged = filtered.servers["s1"].output().count(failure)
    with filtered.client() as c:
        for path in ("/whoami", "/.well-known/affinity/health", "/no/such/path"):
            r = c.get(filtered.server_urls["s1"] + path, headers={"X-Test-Fail": "1"})
            assert (r.status_code, r.headers.get("content-type")) == (500, "application/json"), (
                path,
                r.text,
            )
            assert r.json()["error"] == "internal_error", path
            assert "the test filter failed" not in r.text
            assert r.headers["affinity-server"] == "s1"
            logged += 1
            assert filtered.servers["s1"].output().count(failure) == logged, path
    assert call(filtered, "/.well-known/affinity/health").json()["load"]["inflight"] == 0


def test_sighup_makes_an_app_server_verify_with_the_key_file_as_it_now_is(
    deployment: Deployment,
) -> None:
    deployment.start_referral()
    proc = deployment.start_server("s1", app=APP)
    assert get(deployment, "s1", "/whoami", deployment.token("s1")).status_code == 200
    rotate_keyfile(deployment.dir / "keys.json", None, retire_after=None)
    newly_signed = deployment.token("s1")  # with the key the rotation added
    assert get(deployment, "s1", "/whoami", newly_signed).status_code == 401
    proc.signal(signal.SIGHUP)
    wait_until(
        lambda: get(deployment, "s1", "/whoami", newly_signed).status_code == 200,
        20,
        what="the new key accepted after SIGHUP",
    )


def test_the_server_verifies_with_the_token_settings_of_its_config(
    deployment: Deployment,
) -> None:
    """``tokens.issuer`` and ``tokens.leeway`` apply, and so does the longest lifetime they
    allow (``ttl * (1 + jitter)`` rounded up, plus the leeway: 4560 s here)."""
    deployment.start_referral()
    deployment.start_server("s1", app=APP, env=token_settings.SETTINGS)
    token_settings.assert_the_token_settings_apply(
        deployment, deployment.server_urls["s1"] + "/whoami"
    )
