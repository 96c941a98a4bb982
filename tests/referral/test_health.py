"""Health checking, load feedback, draining and slow start, with real processes on loopback TLS.

Every bound is measured from the event that starts it (the kill, the avoid)
with ``time.monotonic()`` in this process, and every wait is bounded polling
(``wait_until``), never a fixed sleep.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest

from affinity.testing import Deployment, free_port, wait_until
from affinity.tokens.jws import TokenIssuer
from affinity.tokens.keyring import KeyRing

SCRIPTED = str(Path(__file__).with_name("health_apps.py")) + ":Scripted"
INTERVAL, FAST, TIMEOUT, FALL, RISE = 0.2, 0.1, 0.3, 2, 2
LOAD_REFRESH = 0.5
"""How long the referral batches load-only changes before rebuilding a pool (``ServerTable``)."""
QUICK = f"""
interval = {INTERVAL}
fast_interval = {FAST}
timeout = {TIMEOUT}
fall = {FALL}
rise = {RISE}
"""
SLACK = 1.0
"""Seconds allowed on top of a computed bound: two busy cores run the referral, servers and test."""


# -- helpers ----------------------------------------------------------------------------


def start(d: Deployment, *ids: str, app: str | None = None, **env: dict[str, str]) -> None:
    """Start servers side by side, then wait until the referral can assign each of them."""
    for sid in ids:
        kwargs: dict[str, Any] = {"wait": False, "env": env.get(sid)}
        if app is not None:
            kwargs["app"] = app
        d.start_server(sid, **kwargs)
    for sid in ids:
        d.wait_http(d.server_urls[sid] + "/.well-known/affinity/health", d.servers[sid])
    wait_until(lambda: set(ids) <= d.assignable(), 10, what=f"{ids} assignable")


def described(d: Deployment) -> dict[str, dict[str, Any]]:
    with d.admin() as c:
        return {s["id"]: s for s in c.get("/v1/servers").json()["servers"]}


def summary(d: Deployment, service: str = "web") -> dict[str, Any]:
    with d.admin() as c:
        answer: dict[str, Any] = c.get("/v1/servers").json()["services"][service]
        return answer


def assign(c: httpx.Client, token: str | None = None, avoid: str | None = None) -> dict[str, Any]:
    headers = {"Affinity-Token": token} if token else {}
    params = {"avoid": avoid} if avoid else {}
    r = c.get("/v1/assign", headers=headers, params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def token_for(d: Deployment, sid: str, client_id: str) -> str:
    return TokenIssuer(KeyRing.load(d.dir / "keys.json")).issue(sid, client_id, "web")[0]


class AssignLoop:
    """A client asking ``/v1/assign`` in a loop on its own thread, noting when and whom."""

    def __init__(self, d: Deployment) -> None:
        self.d = d
        # (time.monotonic(), server id) of each answer, and the same on the wall clock.
        self.results: list[tuple[float, str | None]] = []
        self.walls: list[tuple[float, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.d.client(base_url=self.d.referral_url) as c:
            while not self._stop.is_set():
                r = c.get("/v1/assign")
                sid = r.json()["server"]["id"] if r.status_code == 200 else None
                self.results.append((time.monotonic(), sid))
                self.walls.append((time.time(), sid))

    def since(self, t: float) -> list[str | None]:
        return [sid for at, sid in list(self.results) if at >= t]

    def __enter__(self) -> AssignLoop:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)


class Silent:
    """A TCP listener that accepts connections and never answers (not even the TLS handshake).

    It counts connections accepted in all and open at once: the health checker
    must never have more than one open to it.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.accepted = self.open = self.peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = [threading.Thread(target=self._accept)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with self._lock:
                self.accepted += 1
                self.open += 1
                self.peak = max(self.peak, self.open)
            reader = threading.Thread(target=self._hold, args=(conn,))
            self._threads.append(reader)
            reader.start()

    def _hold(self, conn: socket.socket) -> None:
        """Read and drop whatever comes until the peer closes; never write a byte."""
        conn.settimeout(0.1)
        with conn:
            while not self._stop.is_set():
                try:
                    if not conn.recv(4096):
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
        with self._lock:
            self.open -= 1

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    listener = Silent()
    yield listener
    listener.close()


def quick(tmp_path: Path, health: str = QUICK, **kwargs: Any) -> Deployment:
    return Deployment(tmp_path / "deployment", health=health, **kwargs)


# -- failure detection --------------------------------------------------------------------


def test_a_killed_server_gets_no_assignment_after_fall_times_interval(tmp_path: Path) -> None:
    with quick(tmp_path) as d:
        d.start_referral()
        start(d, "s1", "s2", "s3")
        with AssignLoop(d) as loop:
            wait_until(lambda: "s2" in loop.since(0), 5, what="s2 assigned")
            killed = time.monotonic()
            d.servers["s2"].kill()
            bound = FALL * INTERVAL + SLACK
            wait_until(lambda: "s2" not in d.assignable(), bound, what="s2 dropped")
            # Keep the client going well past the bound: no late assignment may show up.
            wait_until(lambda: len(loop.since(killed + bound)) >= 50, 10, what="more assignments")
        late = [at - killed for at, sid in loop.results if sid == "s2" and at >= killed]
        assert max(late, default=0.0) <= bound, f"s2 assigned {max(late):.2f}s after the kill"
        after = loop.since(killed + bound)
        assert "s2" not in after and set(after) == {"s1", "s3"}, "no failures, survivors share"
        assert None not in loop.since(0), "the referral never ran out of servers"
        shown = described(d)["s2"]
        assert shown["health"] == "critical" and shown["last_failure"]["reason"]
        # Two of three left is not below the 50 % panic threshold; one of three is.
        assert summary(d) == {"total": 3, "assignable": 2, "below_threshold": False}
        d.servers["s3"].kill()
        wait_until(lambda: summary(d)["below_threshold"], 5, what="below the threshold")
        with d.client(base_url=d.referral_url) as c:
            assert {assign(c)["server"]["id"] for _ in range(5)} == {"s1"}, "no panic routing"
        warnings = d.referrals[0].output().count("below the panic threshold")
        assert warnings == 1, "one warning per crossing, not one per request"


def test_an_avoid_rechecks_and_drops_a_dead_server_within_a_second(tmp_path: Path) -> None:
    # A 5 s interval: only the re-check an avoid triggers can explain a drop within a second.
    with quick(tmp_path, health="interval = 5.0\nfast_interval = 0.1\ntimeout = 0.3\n") as d:
        d.start_referral()
        start(d, "s1", "s2")
        wait_until(lambda: described(d)["s1"]["last_check"]["at"] is not None, 5, what="check")
        first_check = described(d)["s1"]["last_check"]["at"]
        d.servers["s1"].kill()
        assert time.time() - first_check < 3.0, "the next regular check is 4.5 s or more away"
        with d.client(base_url=d.referral_url) as c:
            avoided = time.monotonic()
            moved = assign(c, token_for(d, "s1", "client-1"), avoid="s1")
        assert moved["server"]["id"] == "s2" and moved["sticky"] is False
        wait_until(lambda: "s1" not in d.assignable(), 1.0, what="s1 dropped after the avoid")
        assert time.monotonic() - avoided <= 1.0
        shown = described(d)["s1"]
        assert shown["health"] == "critical"
        assert shown["last_check"]["at"] < first_check + 4.5


def test_avoids_of_a_healthy_server_never_eject_it(tmp_path: Path) -> None:
    health = "interval = 5.0\nfast_interval = 0.1\nrecheck_interval = 0.5\n"
    with quick(tmp_path, health=health) as d:
        d.start_referral()
        start(d, "s1", app=SCRIPTED)
        start(d, "s2")
        with d.client() as c:
            c.post(d.server_urls["s1"] + "/script/p")
        began = time.monotonic()
        with d.client(base_url=d.referral_url) as c:
            for i in range(100):  # a lying client, or a hundred of them
                assert (
                    assign(c, token_for(d, "s1", f"liar-{i}"), avoid="s1")["server"]["id"] == "s2"
                )
            with d.client() as app:

                def checks() -> int:
                    return int(app.get(d.server_urls["s1"] + "/checks").json()["checks"])

                wait_until(lambda: checks() >= 1, 2, what="a re-check")
                elapsed, seen = time.monotonic() - began, checks()
            shown = described(d)["s1"]
            assert shown["health"] == "passing" and shown["assignable"] is True
            assert shown["last_failure"]["at"] is None
            assert {assign(c)["server"]["id"] for _ in range(6)} == {"s1", "s2"}
        # Each avoid may wake a check, at most one per recheck_interval: no check storm.
        assert seen <= elapsed / 0.5 + 2, (seen, elapsed)


def test_a_flapping_server_follows_rise_and_fall(tmp_path: Path) -> None:
    with quick(tmp_path) as d:
        d.start_referral()
        start(d, "s1", app=SCRIPTED)
        start(d, "s2")
        with d.client() as c:

            def run(script: str, checks: int) -> set[str]:
                """Play a script for ``checks`` health answers; the healths the referral showed."""
                c.post(d.server_urls["s1"] + f"/script/{script}")
                seen: set[str] = set()

                def played() -> bool:
                    seen.add(described(d)["s1"]["health"])
                    return int(c.get(d.server_urls["s1"] + "/checks").json()["checks"]) >= checks

                wait_until(played, 10, what=f"{checks} checks of {script!r}")
                return seen

            # One failure at a time never reaches fall = 2: the server stays in.
            assert run("cp", 8) == {"passing"}
            # Two failures in a row take it out; one good answer at a time never reaches rise = 2.
            assert "critical" in run("ccp", 4)
            assert run("ccp", 8) == {"critical"}
            # Two good answers in a row bring it back.
            wait_until(lambda: "passing" in run("p", 2), 5, what="s1 back")
            assert described(d)["s1"]["last_failure"]["reason"] == "health answered HTTP 503"


def test_a_server_that_never_answers_is_timed_out_without_piling_up_checks(
    tmp_path: Path, silent: Silent
) -> None:
    with quick(tmp_path) as d:
        d.start_referral()
        start(d, "s1")
        with d.admin() as c:
            added = time.monotonic()
            r = c.put("/v1/servers/hang", json={"url": f"https://127.0.0.1:{silent.port}"})
            assert r.status_code == 200
        bound = FALL * (TIMEOUT + INTERVAL) + SLACK
        # Critical from the start (not checked yet); then critical for its failed checks.
        wait_until(
            lambda: "no answer within 0.3s" in described(d)["hang"]["last_failure"]["reason"],
            bound,
            what="a timed-out check",
        )
        assert time.monotonic() - added <= bound
        shown = described(d)["hang"]
        assert shown["health"] == "critical" and shown["awaiting_check"] is False
        assert shown["last_check"]["latency"] >= TIMEOUT * 0.9
        wait_until(lambda: silent.accepted >= 5, 10, what="five checks")
        assert silent.peak == 1, f"{silent.peak} checks were in flight at once"
        with d.client(base_url=d.referral_url) as ref:
            assert {assign(ref)["server"]["id"] for _ in range(5)} == {"s1"}


# -- load feedback ---------------------------------------------------------------------------


def test_a_full_server_gets_no_new_clients_and_keeps_its_own(tmp_path: Path) -> None:
    services = '[services.web]\npolicy = "load_weighted"\n'
    with quick(tmp_path, services=services) as d:
        d.start_referral()
        start(d, "s1", "s2", s1={"AFFINITY_SERVER_CAPACITY": "2"})
        tokens = [token_for(d, "s1", f"client-{i}") for i in range(2)]
        with d.client() as c, d.client(base_url=d.referral_url) as ref:
            c.get(d.server_urls["s1"] + "/", headers={"Affinity-Token": tokens[0]})
            wait_until(lambda: described(d)["s1"]["load"]["clients"] > 0.9, 5, what="load 1/2")
            # No event tells when the pool is rebuilt: load-only changes wait out load_refresh.
            seen = time.monotonic()
            wait_until(lambda: time.monotonic() >= seen + LOAD_REFRESH, 1, what="load_refresh")
            # Half full against empty: load_weighted sends new clients to s2.
            picks = [assign(ref)["server"]["id"] for _ in range(10)]
            assert picks.count("s2") >= 9, picks
            c.get(d.server_urls["s1"] + "/", headers={"Affinity-Token": tokens[1]})
            wait_until(lambda: described(d)["s1"]["at_capacity"], 5, what="s1 full")
            shown = described(d)["s1"]
            assert shown["assignable"] is False and shown["health"] == "passing"
            assert {assign(ref)["server"]["id"] for _ in range(20)} == {"s2"}
            kept = assign(ref, tokens[0])
            assert kept["server"]["id"] == "s1" and kept["sticky"] is True


# -- draining -----------------------------------------------------------------------------------


def test_admin_drain_keeps_sticky_clients_and_sends_new_ones_elsewhere(tmp_path: Path) -> None:
    with quick(tmp_path) as d:
        d.start_referral()
        start(d, "s1", "s2")
        token = token_for(d, "s1", "loyal")
        with d.admin() as admin, d.client(base_url=d.referral_url) as ref:
            assert admin.post("/v1/servers/s1/drain").status_code == 200
            shown = described(d)["s1"]
            assert shown["draining"] is True and shown["health"] == "passing"
            assert shown["assignable"] is False
            assert {assign(ref)["server"]["id"] for _ in range(10)} == {"s2"}
            kept = assign(ref, token)
            assert kept["server"]["id"] == "s1" and kept["sticky"] is True
            moved = assign(ref, token, avoid="s1")
            assert moved["server"]["id"] == "s2" and moved["sticky"] is False
            assert admin.post("/v1/servers/s1/resume").status_code == 200
            assert {assign(ref)["server"]["id"] for _ in range(4)} == {"s1", "s2"}


def test_a_server_draining_itself_keeps_its_clients_until_it_reassigns_them(
    tmp_path: Path,
) -> None:
    with quick(tmp_path) as d:
        d.start_referral()
        start(d, "s1", "s2")
        token = token_for(d, "s1", "loyal")
        auth = {"Authorization": f"Bearer {d.server_admin_token}"}
        with d.client() as c, d.client(base_url=d.referral_url) as ref:
            r = c.post(d.server_urls["s1"] + "/.well-known/affinity/drain", headers=auth)
            assert r.status_code == 200
            wait_until(lambda: described(d)["s1"]["draining"], 2, what="draining seen")
            assert {assign(ref)["server"]["id"] for _ in range(10)} == {"s2"}
            kept = assign(ref, token)
            assert kept["server"]["id"] == "s1" and kept["sticky"] is True

            # After the drain grace the server sends its clients back to the referral.
            def reassigning() -> bool:
                answer = c.get(d.server_urls["s1"] + "/", headers={"Affinity-Token": token})
                return answer.status_code == 503 and answer.headers["affinity-reassign"] == "1"

            wait_until(reassigning, 5, what="503 + Affinity-Reassign")
            moved = assign(ref, token, avoid="s1")
            assert moved["server"]["id"] == "s2" and moved["sticky"] is False
            assert described(d)["s1"]["health"] == "passing", "an avoid never ejects"


# -- slow start -------------------------------------------------------------------------------


def test_a_new_server_ramps_up_over_slow_start(tmp_path: Path) -> None:
    slow_start = 2.0
    port = free_port()
    services = (
        '[services.web]\npolicy = "round_robin"\n'
        f'servers = [{{id = "s1", url = "https://127.0.0.1:{port}"}}]\n'
    )
    health = QUICK + f"slow_start = {slow_start}\n"
    with quick(tmp_path, health=health, services=services) as d:
        # s1 answers before the referral starts: it is in the first view and does not ramp.
        d.start_server("s1", port=port)
        d.start_referral()
        wait_until(lambda: d.assignable() == {"s1"}, 10, what="s1 assignable")
        assert described(d)["s1"]["slow_start"] is False
        with AssignLoop(d) as loop:
            d.start_server("s2")
            # Registered, s2 waits for its first check; the ramp starts when it passes.
            wait_until(lambda: "s2" in d.assignable(), 10, what="s2 assignable")
            shown = described(d)["s2"]
            added = shown["since"]  # when s2 first passed, on the wall clock
            assert shown["slow_start"] is True and shown["effective_weight"] < 1
            wait_until(lambda: not described(d)["s2"]["slow_start"], slow_start + SLACK)
            full = time.monotonic()
            wait_until(lambda: len(loop.since(full + 0.5)) >= 100, 10, what="more assignments")
        early = [sid for at, sid in loop.walls if added <= at < added + 0.5]
        late = loop.since(full + 0.5)
        early_share = early.count("s2") / len(early)
        late_share = late.count("s2") / len(late)
        assert early_share < 0.25, f"s2 had {early_share:.0%} of the first 0.5 s, not 50 %"
        assert 0.4 <= late_share <= 0.6, f"s2 had {late_share:.0%} after the ramp"
        assert described(d)["s2"]["effective_weight"] == 1
