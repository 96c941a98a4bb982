"""Client and AsyncClient against real referral and app servers on loopback, with TLS.

The mock tests (``test_client_mock.py``) prove the rules against a scripted
network; these prove that the rules meet the real servers: a ``kill -9`` is a
refused connection, a server that dies after reading a POST is a dropped
connection, a misdirected token is the app server's own ``421``, a drain is
its own ``503`` + ``Affinity-Reassign``, and the referral hears about every
failure through ``avoid`` (its ``affinity_avoid_reports`` counter).

One module deployment (a referral, three ``Journal`` servers) serves the
tests that leave it as they found it; a test that kills a server gets it
restarted on the same port afterwards by the ``fleet`` fixture. The all-down
tests and the headline (kill and restart every server under a running
script) have deployments of their own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, MutableSequence, Sequence
from pathlib import Path
from typing import Any, Unpack

import pytest
from prometheus_client.parser import text_string_to_metric_families

from affinity import AsyncClient, Client
from affinity.client import (
    AllAttemptsFailed,
    Assigned,
    Event,
    FailedOver,
    NotRetried,
    ReferralFailed,
    ReferralRefused,
    store,
)
from affinity.client.referrers import normalise
from affinity.client.sync import ClientOptions
from affinity.testing import Deployment, free_port, wait_until
from affinity.tokens.jws import TokenIssuer
from affinity.tokens.keyring import KeyRing
from affinity.web.tls import client_context

APP = str(Path(__file__).with_name("journal_app.py")) + ":Journal"
SERVERS = ("s1", "s2", "s3")
HEALTH = "/.well-known/affinity/health"
DEADLINE = 3.0
SLACK = 1.0
"""Time past the deadline allowed for the last connection to be refused and the error built."""


# -- deployments ---------------------------------------------------------------------------------


def deploy(d: Deployment, servers: Sequence[str] = SERVERS) -> Deployment:
    """A referral and ``servers`` (started side by side), all of them assignable."""
    d.start_referral()
    for sid in servers:
        d.start_server(sid, app=APP, wait=False)
    for sid in servers:
        d.wait_http(d.server_urls[sid] + HEALTH, d.servers[sid])
    wait_until(lambda: d.assignable() == set(servers), 10, what="every server assignable")
    return d


def new_deployment(directory: Path) -> Deployment:
    return Deployment(directory, env={"JOURNAL": str(directory / "journal.txt")})


def port_of(d: Deployment, sid: str) -> int:
    return int(d.server_urls[sid].rsplit(":", 1)[1])


def restart(d: Deployment, sids: Sequence[str]) -> None:
    """Start dead servers again on their own ports (their URLs do not change) and wait for them."""
    for sid in sids:
        d.start_server(sid, app=APP, port=port_of(d, sid), wait=False)
    for sid in sids:
        d.wait_http(d.server_urls[sid] + HEALTH, d.servers[sid])
    wait_until(lambda: set(sids) <= d.assignable(), 10, what=f"{list(sids)} assignable again")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with new_deployment(tmp_path_factory.mktemp("client-live")) as d:
        yield deploy(d)


@pytest.fixture
def fleet(shared: Deployment) -> Iterator[Deployment]:
    """The module deployment; servers a test killed are restarted after it."""
    yield shared
    dead = [sid for sid in SERVERS if not shared.servers[sid].alive()]
    if dead:
        restart(shared, dead)
    wait_until(lambda: shared.assignable() == set(SERVERS), 10, what="the fleet healed")


# -- helpers -------------------------------------------------------------------------------------


def client(d: Deployment, **options: Unpack[ClientOptions]) -> Client:
    options.setdefault("verify", str(d.ca))
    return Client(d.referral_url, **options)


def aclient(d: Deployment, **options: Unpack[ClientOptions]) -> AsyncClient:
    options.setdefault("verify", client_context(d.ca))  # the other way to give the CA
    return AsyncClient(d.referral_url, **options)


def journal(d: Deployment, marker: str) -> list[str]:
    """The journal lines (``<server> <body>``) of the POSTs whose body was ``marker``."""
    path = d.dir / "journal.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line for line in lines if line.endswith(" " + marker)]


def avoid_reports(d: Deployment, sid: str, referral_url: str | None = None) -> float:
    """How many times clients told the referral they failed on ``sid`` (its metrics)."""
    with d.client() as c:
        text = c.get((referral_url or d.referral_url) + "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "affinity_avoid_reports_total" and sample.labels == {
                "service": "web",
                "server": sid,
            }:
                return sample.value
    return 0.0


def failovers(events: Sequence[Event]) -> list[FailedOver]:
    return [e for e in events if isinstance(e, FailedOver)]


def kill(d: Deployment, sid: str) -> None:
    """``kill -9`` and reap: the port refuses connections from now on."""
    d.servers[sid].kill()


# -- failing over --------------------------------------------------------------------------------


def test_kill_9_between_requests_moves_the_next_get_and_tells_the_referral(
    fleet: Deployment,
) -> None:
    events: list[Event] = []
    with client(fleet, on_event=events.append) as c:
        first = c.get("/whoami")
        victim = first.json()["server"]
        assert first.status_code == 200 and c.server == victim
        reports = avoid_reports(fleet, victim)
        kill(fleet, victim)
        second = c.get("/whoami")
    assert second.status_code == 200
    assert second.json()["server"] == c.server != victim
    assert second.json()["client"] == first.json()["client"], "the client id survives failover"
    assert [e.from_server for e in failovers(events)] == [victim]
    assert "ConnectError" in failovers(events)[0].reason
    assert avoid_reports(fleet, victim) == reports + 1


async def test_async_kill_9_between_requests_moves_the_next_get(fleet: Deployment) -> None:
    events: list[Event] = []
    async with aclient(fleet, on_event=events.append) as c:
        first = await c.get("/whoami")
        victim = first.json()["server"]
        reports = avoid_reports(fleet, victim)
        kill(fleet, victim)
        second = await c.get("/whoami")
        # Concurrent calls on the same client after the failover all stay on the new server.
        more = await asyncio.gather(*(c.get("/whoami") for _ in range(5)))
    assert second.status_code == 200 and second.json()["server"] != victim
    assert {r.json()["server"] for r in more} == {second.json()["server"]}
    assert [e.from_server for e in failovers(events)] == [victim]
    assert avoid_reports(fleet, victim) == reports + 1


def test_a_token_for_another_server_gets_421_and_the_client_moves(
    fleet: Deployment, tmp_path: Path
) -> None:
    """A saved assignment whose token names s2 but whose URL is s1 (a host name reused)."""
    issuer = TokenIssuer(KeyRing.load(fleet.dir / "keys.json"))
    token, ttl = issuer.issue("s2", issuer.new_client_id(), "web")
    state = tmp_path / "state.json"
    now = time.time()
    stale = store.Saved(
        referrals=(normalise(fleet.referral_url),),
        service=None,
        server_id="s1",
        server_url=fleet.server_urls["s1"],
        token=token,
        expires_at=now + ttl,
        renew_at=now + ttl / 2,
    )
    store.save(state, stale)
    events: list[Event] = []
    with client(fleet, state_file=state, on_event=events.append) as c:
        assert c.server == "s1", "the saved assignment is used as it is"
        r = c.get("/whoami")
    assert r.status_code == 200
    # The referral kept the token's own server (sticky) and avoided the one that said 421.
    assert r.json()["server"] == "s2"
    assert [(e.from_server, e.reason.split(":")[0]) for e in failovers(events)] == [
        ("s1", "421 misdirected")
    ]
    assert Assigned(server_id="s2", sticky=True, reason="failover") in events
    saved = json.loads(state.read_text())
    assert (saved["server_id"], saved["server_url"]) == ("s2", fleet.server_urls["s2"])


def lifetime(token: str) -> int:
    """``exp - iat`` of a token, read without verifying (the test's own token)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return int(claims["exp"]) - int(claims["iat"])


def test_the_token_is_renewed_at_80_percent_and_the_client_stays_put(
    fleet: Deployment, tmp_path: Path
) -> None:
    """The client's clock jumps past 80 % of the token's life; wall time (the servers') does not."""
    now = [1000.0]
    events: list[Event] = []
    state = tmp_path / "state.json"
    with client(fleet, clock=lambda: now[0], state_file=state, on_event=events.append) as c:
        first = c.get("/whoami")
        written = state.stat().st_ino
        now[0] += 0.9 * lifetime(c.token or "")
        second = c.get("/whoami")
        token = c.token
    assert first.json() == second.json(), "same server, same client id"
    assert [(e.reason, e.server_id, e.sticky) for e in events if isinstance(e, Assigned)] == [
        ("first", first.json()["server"], False),
        ("renew", first.json()["server"], True),
    ]
    # Saved again (replaced atomically: a new file), with the renewed token.
    assert state.stat().st_ino != written
    assert json.loads(state.read_text())["token"] == token


def test_a_drained_server_sends_its_clients_elsewhere_with_503_reassign(fleet: Deployment) -> None:
    events: list[Event] = []
    with client(fleet, on_event=events.append) as c, fleet.client() as http:
        victim = c.get("/whoami").json()["server"]
        url = fleet.server_urls[victim]
        admin = {"Authorization": f"Bearer {fleet.server_admin_token}"}
        assert http.post(url + "/.well-known/affinity/drain", headers=admin).status_code == 200
        try:
            # Past the drain grace, the server sends its clients back to the referral.
            mine = {"Affinity-Token": c.token or ""}
            wait_until(
                lambda: http.get(url + "/whoami", headers=mine).status_code == 503,
                5,
                what="503 after the drain grace",
            )
            r = c.get("/whoami")
            assert r.status_code == 200 and r.json()["server"] != victim
            assert [e.from_server for e in failovers(events)] == [victim]
            assert "draining" in failovers(events)[0].reason
            assert "Affinity-Reassign" in failovers(events)[0].reason
        finally:
            http.post(url + "/.well-known/affinity/resume", headers=admin)


# -- what is sent again, and what is not ----------------------------------------------------------


def test_a_post_that_reached_a_server_which_died_is_not_sent_again(fleet: Deployment) -> None:
    marker = uuid.uuid4().hex
    with client(fleet) as c:
        victim = c.get("/whoami").json()["server"]
        started = time.monotonic()
        with pytest.raises(NotRetried, match="not sent again") as info:
            c.post("/crash", content=marker)
        assert time.monotonic() - started < 5
        # The client is still usable: the next call goes elsewhere.
        after = c.get("/whoami")
    wait_until(lambda: not fleet.servers[victim].alive(), 5, what=f"{victim} dead")
    assert journal(fleet, marker) == [f"{victim} {marker}"], "executed once, never re-sent"
    assert victim in str(info.value)
    assert after.status_code == 200 and after.json()["server"] != victim


@pytest.mark.parametrize("how", ["die", "stall"])
def test_a_get_that_failed_in_flight_is_sent_again_to_another_server(
    fleet: Deployment, how: str
) -> None:
    """The server dies after reading it, or never answers (read timeout): GET is idempotent."""
    marker = uuid.uuid4().hex
    events: list[Event] = []
    with client(fleet, timeout=1.0, on_event=events.append) as c:
        victim = c.get("/whoami").json()["server"]
        r = c.get(f"/once/{how}/{marker}")
    assert r.status_code == 200
    moved_to = r.json()["server"]
    assert moved_to != victim
    assert journal(fleet, marker) == [f"{victim} {marker}", f"{moved_to} {marker}"]
    expected = "RemoteProtocolError" if how == "die" else "ReadTimeout"
    assert [(e.from_server, e.reason.split(":")[0]) for e in failovers(events)] == [
        (victim, expected)
    ]


def test_a_post_whose_connection_failed_is_sent_to_another_server(fleet: Deployment) -> None:
    marker = uuid.uuid4().hex
    events: list[Event] = []
    with client(fleet, on_event=events.append) as c:
        victim = c.get("/whoami").json()["server"]
        kill(fleet, victim)
        r = c.post("/record", content=marker)
    assert r.status_code == 200
    moved_to = r.json()["server"]
    assert moved_to != victim
    assert journal(fleet, marker) == [f"{moved_to} {marker}"]
    assert [e.from_server for e in failovers(events)] == [victim]


# -- the referral tier ---------------------------------------------------------------------------


class InOrder(random.Random):
    """Tries referral instances in the order given, so the dead one is surely tried first."""

    def shuffle(self, x: MutableSequence[Any]) -> None:
        return None


def test_one_of_two_referrals_down_costs_one_failed_connection(fleet: Deployment) -> None:
    port = free_port()
    second = f"https://127.0.0.1:{port}"
    proc = fleet.start_referral(wait=False, env={"AFFINITY_REFERRAL_LISTEN": f"127.0.0.1:{port}"})
    fleet.wait_http(second + "/healthz", proc)
    # It shares the state file, so it knows the servers the first one registered.
    with Client(second, verify=str(fleet.ca)) as c:
        assert c.get("/whoami").status_code == 200
    proc.kill()
    events: list[Event] = []
    with Client(
        [second, fleet.referral_url], verify=str(fleet.ca), rng=InOrder(), on_event=events.append
    ) as c:
        assert c.get("/whoami").status_code == 200
        c.assign()  # the dead instance cools down: this round does not wait on it again
        assert c.get("/whoami").status_code == 200
    failed = [e for e in events if isinstance(e, ReferralFailed)]
    assert [e.referral for e in failed] == [second]
    assert "ConnectError" in failed[0].reason
    assert [e.reason for e in events if isinstance(e, Assigned)] == ["first", "forced"]


def test_tls_is_checked_a_client_that_does_not_trust_the_ca_gets_nothing(
    fleet: Deployment,
) -> None:
    events: list[object] = []
    with (
        Client(fleet.referral_url, deadline=DEADLINE, on_event=events.append) as c,  # system CAs
        pytest.raises(ReferralRefused, match="CERTIFICATE_VERIFY_FAILED") as info,
    ):
        c.get("/whoami")
    assert c.server is None, "nothing was learnt from an unverified referral"
    assert "server " not in str(info.value), "no app server was contacted"
    # Said once, with the way out, and not retried: another attempt cannot help.
    assert "--cacert FILE" in str(info.value) and "verify=" in str(info.value)
    assert not [e for e in events if type(e).__name__ == "Retried"], events


# -- the CLI ---------------------------------------------------------------------------------------


def affinity_request(
    d: Deployment, *args: str, deadline: float = 10.0
) -> subprocess.CompletedProcess[str]:
    """``affinity request`` through the main command, as a user would run it."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "affinity",
            "request",
            "--referral",
            d.referral_url,
            "--cacert",
            str(d.ca),
            "--deadline",
            str(deadline),
            *args,
        ],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_prints_status_server_and_body_and_keeps_its_server(
    fleet: Deployment, tmp_path: Path
) -> None:
    state = str(tmp_path / "state.json")
    marker = uuid.uuid4().hex
    first = affinity_request(fleet, "--state-file", state, "-d", marker, "POST", "/record")
    assert first.returncode == 0, first.stderr
    status, server, blank, body = first.stdout.splitlines()
    assert status == "200 OK" and blank == ""
    sid = server.removeprefix("Affinity-Server: ")
    assert json.loads(body) == {"server": sid, "recorded": True}
    assert journal(fleet, marker) == [f"{sid} {marker}"]
    again = affinity_request(fleet, "--state-file", state, "GET", "/whoami")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[1] == f"Affinity-Server: {sid}", "the state file kept it"


# -- everything down -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def doomed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Two servers that each test kills (if they still live) after its client is assigned."""
    with new_deployment(tmp_path_factory.mktemp("client-doomed")) as d:
        yield deploy(d, ("s1", "s2"))


def kill_all(d: Deployment) -> None:
    for sid in d.servers:
        kill(d, sid)


def test_all_servers_down_is_a_clear_error_within_the_deadline(doomed: Deployment) -> None:
    with client(doomed, deadline=DEADLINE) as c:
        victim = c.get("/whoami").json()["server"]
        kill_all(doomed)
        started = time.monotonic()
        with pytest.raises(AllAttemptsFailed) as info:
            c.get("/whoami")
        elapsed = time.monotonic() - started
    assert elapsed < DEADLINE + SLACK
    message = str(info.value)
    assert message.startswith("GET /whoami: gave up after")
    assert f"server {victim} ({doomed.server_urls[victim]}): ConnectError" in message
    assert info.value.attempts, "every attempt is listed"


async def test_async_all_servers_down_is_a_clear_error_within_the_deadline(
    doomed: Deployment,
) -> None:
    kill_all(doomed)
    async with aclient(doomed, deadline=DEADLINE) as c:
        started = time.monotonic()
        with pytest.raises(AllAttemptsFailed, match="gave up after"):
            await c.get("/whoami")
        assert time.monotonic() - started < DEADLINE + SLACK


def test_cli_exits_non_zero_when_everything_is_down(doomed: Deployment) -> None:
    kill_all(doomed)
    started = time.monotonic()
    result = affinity_request(doomed, "GET", "/whoami", deadline=DEADLINE)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "affinity request: error: GET /whoami: gave up after" in result.stderr
    assert time.monotonic() - started < DEADLINE + SLACK + 5  # interpreter start included


# -- the headline -------------------------------------------------------------------------------

SCRIPT = """
import sys, time
from pathlib import Path
from affinity import Client

referral, ca, stop, log = sys.argv[1:5]
ends = time.monotonic() + 60
with Client(referral, verify=ca) as client, open(log, "a", buffering=1) as out:
    for _ in range(20000):
        if Path(stop).exists() or time.monotonic() > ends:
            break
        try:
            r = client.get("/whoami")
            out.write(f"{r.status_code} {r.json()['server']}\\n" if r.status_code == 200
                      else f"FAIL {r.status_code} {r.text[:200]!r}\\n")
        except Exception as exc:
            out.write(f"FAIL {type(exc).__name__}: {str(exc)[:2000]!r}\\n")
        time.sleep(0.01)  # pacing the script's requests, not waiting for an event
"""


def test_a_script_keeps_working_while_every_server_is_killed_and_restarted(
    tmp_path: Path,
) -> None:
    with new_deployment(tmp_path / "headline") as d:
        run_the_headline(deploy(d))


def run_the_headline(d: Deployment) -> None:
    script, stop, log = d.dir / "script.py", d.dir / "stop", d.dir / "script.log"
    script.write_text(SCRIPT)
    runner = subprocess.Popen(
        [sys.executable, str(script), d.referral_url, str(d.ca), str(stop), str(log)], env=d.env
    )

    def lines() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    def twenty_more(what: str) -> None:
        seen = len(lines())
        wait_until(lambda: len(lines()) >= seen + 20, 10, what=what)

    try:
        for sid in SERVERS:
            twenty_more(f"requests before {sid} is killed")
            kill(d, sid)
            restart(d, [sid])
        twenty_more("requests after the last restart")
    finally:
        stop.touch()
        try:
            runner.wait(20)
        finally:
            runner.kill()  # a no-op once it has exited; never left running
            runner.wait()
    results = lines()
    failures = [line for line in results if line.startswith("FAIL")]
    assert failures == []
    served = Counter(line.split()[1] for line in results)
    assert len(served) >= 2, served
    assert sum(served.values()) >= 80
