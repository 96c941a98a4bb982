"""Client and AsyncClient against a mock referral and two mock app servers.

The network is ``httpx.MockTransport`` (the same handler serves both
clients), time is a fake clock that ``sleep`` advances, and DNS is a dict, so
every scenario is instant and deterministic. Scenarios are data: one table,
run once through the sync client and once through the async one, so the two
cannot drift apart.

The mock app servers count what they *received*: a request that failed with
a connect error never arrives, one that failed with a read error after
sending does, which is how "not sent twice" is checked.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import stat
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from affinity.cli import request as request_command
from affinity.cli.main import parser
from affinity.client import (
    AllAttemptsFailed,
    Assigned,
    AsyncClient,
    Client,
    ClientError,
    Event,
    FailedOver,
    GaveUp,
    NotRetried,
    ReferralFailed,
    ReferralRefused,
    Retried,
)
from affinity.client.rules import BYE_TIMEOUT
from affinity.errors import ConfigError
from affinity.protocol import BYE_PATH

REFERRALS = ("https://ref-a.test", "https://ref-b.test")
DEADLINE = 10.0


class FakeClock:
    """Monotonic time that moves only when slept on (or when the mock network says so)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


@dataclass
class Referral:
    host: str
    mode: str = "ok"  # ok | down | no_healthy | unknown_service
    retry_after: str = "2"
    attempts: int = 0
    seen: list[httpx.Request] = field(default_factory=list)


@dataclass
class App:
    id: str
    mode: str = "ok"  # ok | down | blackhole | reset | misdirect | drain | expired | busy
    seen: list[httpx.Request] = field(default_factory=list)
    byes: list[httpx.Request] = field(default_factory=list)
    """The byes sent here, delivered or not (apart from ``seen``: a client says one on close)."""

    @property
    def url(self) -> str:
        return f"https://{self.id}.test:8443"


class FakeNet:
    """A referral with two instances and the app servers s1 and s2, on a fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.referrals = {
            h: Referral(h) for h in (urllib.parse.urlsplit(u).hostname or "" for u in REFERRALS)
        }
        self.apps = {sid: App(sid) for sid in ("s1", "s2")}
        self.expires_in = 100
        self.issued = 0
        self.dns: dict[str, list[str]] = {}

    def resolve(self, host: str, port: int) -> list[str]:
        if host not in self.dns:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.dns[host]

    async def aresolve(self, host: str, port: int) -> list[str]:
        return self.resolve(host, port)

    def handle(self, request: httpx.Request) -> httpx.Response:
        host = request.headers["host"].split(":")[0]
        if host in self.referrals:
            return self._refer(self.referrals[host], request)
        return self._serve(self.apps[host.split(".")[0]], request)

    def assigns(self) -> list[httpx.Request]:
        """Every assign request any referral instance answered, in order."""
        seen = [r for ref in self.referrals.values() for r in ref.seen]
        return sorted(seen, key=lambda r: r.extensions["n"])

    def _bye(self, app: App, request: httpx.Request) -> httpx.Response:
        app.byes.append(request)
        if app.mode == "down":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if app.mode == "blackhole":
            self.clock.now += request.extensions["timeout"]["connect"]
            raise httpx.ConnectTimeout("timed out", request=request)
        if _sid(request.headers.get("affinity-token")) != app.id:
            return _error(421, "misdirected", "this token names another server")
        return httpx.Response(204)

    def _refer(self, ref: Referral, request: httpx.Request) -> httpx.Response:
        ref.attempts += 1
        if ref.mode == "down":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        request.extensions["n"] = self.issued = self.issued + 1
        ref.seen.append(request)
        if ref.mode == "no_healthy":
            ref.mode = "ok"  # one 503, then healthy again
            return _error(503, "no_healthy_server", "none", {"Retry-After": ref.retry_after})
        if ref.mode == "unknown_service":
            return _error(404, "unknown_service", "no service named 'x'")
        avoid = request.url.params.get_list("avoid")
        previous = _sid(request.headers.get("affinity-token"))
        if previous is not None and previous not in avoid:
            sid, sticky = previous, True
        else:
            sid, sticky = next((s for s in sorted(self.apps) if s not in avoid), "s1"), False
        body = {
            "server": {"id": sid, "url": self.apps[sid].url},
            "token": f"tok.{sid}.{self.issued}",
            "expires_in": self.expires_in,
            "sticky": sticky,
        }
        return httpx.Response(200, json=body, headers={"Cache-Control": "no-store"})

    def _serve(self, app: App, request: httpx.Request) -> httpx.Response:
        if request.url.path == BYE_PATH:
            return self._bye(app, request)
        if app.mode == "down":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if app.mode == "blackhole":  # a connect timeout costs the whole connect timeout
            self.clock.now += request.extensions["timeout"]["connect"]
            raise httpx.ConnectTimeout("timed out", request=request)
        app.seen.append(request)
        headers = {"Affinity-Server": app.id}
        if app.mode == "reset":
            raise httpx.ReadError("[Errno 104] Connection reset by peer", request=request)
        if app.mode == "drain":
            headers |= {"Affinity-Reassign": "1", "Retry-After": "7"}
            return _error(503, "draining", "ask the referral", headers)
        if app.mode == "busy":
            return _error(503, "overloaded", "try later", headers)
        if app.mode == "expired":
            return _error(401, "token_expired", "ask the referral again", headers)
        if app.mode == "misdirect" or _sid(request.headers.get("affinity-token")) != app.id:
            return _error(421, "misdirected", "this token names another server", headers)
        body = {"server": app.id, "method": request.method, "body": request.content.decode()}
        return httpx.Response(200, json=body, headers=headers)


def _sid(token: str | None) -> str | None:
    return token.split(".")[1] if token and token.startswith("tok.") else None


def _error(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(status, json={"error": error, "detail": detail}, headers=headers)


# -- scenario steps and runners ----------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    method: str = "GET"
    path: str = "/items"
    kwargs: dict[str, Any] = field(default_factory=dict)
    stream: bool = False


@dataclass(frozen=True)
class Assign:
    """``client.assign()``."""


@dataclass(frozen=True)
class Advance:
    seconds: float


@dataclass(frozen=True)
class Do:
    change: Callable[[FakeNet], None]


Step = Call | Assign | Advance | Do


@dataclass
class Run:
    net: FakeNet
    clock: FakeClock
    started: float
    outcomes: list[Any] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    server: str | None = None

    def ok(self, index: int = -1) -> httpx.Response:
        outcome = self.outcomes[index]
        assert isinstance(outcome, httpx.Response), outcome
        return outcome

    def failed(self, index: int = -1) -> ClientError:
        outcome = self.outcomes[index]
        assert isinstance(outcome, ClientError), outcome
        return outcome

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@dataclass(frozen=True)
class Scenario:
    name: str
    steps: tuple[Step, ...]
    check: Callable[[Run], None]
    setup: Callable[[FakeNet], None] = lambda net: None
    options: dict[str, Any] = field(default_factory=dict)
    referrals: tuple[str, ...] = REFERRALS


def _start(scenario: Scenario) -> tuple[Run, dict[str, Any]]:
    clock = FakeClock()
    net = FakeNet(clock)
    scenario.setup(net)
    run = Run(net=net, clock=clock, started=clock.now)
    options: dict[str, Any] = {
        "clock": clock,
        "rng": random.Random(7),
        "on_event": run.events.append,
        "deadline": DEADLINE,
        "transport": httpx.MockTransport(net.handle),
        **scenario.options,
    }
    return run, options


def run_sync(scenario: Scenario) -> Run:
    run, options = _start(scenario)
    net, clock = run.net, run.clock
    with Client(scenario.referrals, sleep=clock.sleep, resolver=net.resolve, **options) as client:
        for step in scenario.steps:
            if isinstance(step, Advance):
                clock.now += step.seconds
            elif isinstance(step, Do):
                step.change(net)
            else:
                try:
                    run.outcomes.append(_sync_step(client, step))
                except ClientError as exc:
                    run.outcomes.append(exc)
        run.server = client.server
    return run


def _sync_step(client: Client, step: Call | Assign) -> Any:
    if isinstance(step, Assign):
        return client.assign()
    if step.stream:
        with client.stream(step.method, step.path, **step.kwargs) as response:
            response.read()
            return response
    return client.request(step.method, step.path, **step.kwargs)


def run_async(scenario: Scenario) -> Run:
    run, options = _start(scenario)
    net, clock = run.net, run.clock

    async def main() -> None:
        async with AsyncClient(
            scenario.referrals, sleep=clock.asleep, resolver=net.aresolve, **options
        ) as client:
            for step in scenario.steps:
                if isinstance(step, Advance):
                    clock.now += step.seconds
                elif isinstance(step, Do):
                    step.change(net)
                else:
                    try:
                        run.outcomes.append(await _async_step(client, step))
                    except ClientError as exc:
                        run.outcomes.append(exc)
            run.server = client.server

    asyncio.run(main())
    return run


async def _async_step(client: AsyncClient, step: Call | Assign) -> Any:
    if isinstance(step, Assign):
        return await client.assign()
    if step.stream:
        async with client.stream(step.method, step.path, **step.kwargs) as response:
            await response.aread()
            return response
    return await client.request(step.method, step.path, **step.kwargs)


def mode(kind: str, name: str, value: str) -> Callable[[FakeNet], None]:
    def change(net: FakeNet) -> None:
        target: Any = net.apps[name] if kind == "app" else net.referrals[name]
        target.mode = value

    return change


def wait(retry_after: str) -> Callable[[FakeNet], None]:
    def change(net: FakeNet) -> None:
        for referral in net.referrals.values():
            referral.retry_after = retry_after

    return change


def modes(*changes: Callable[[FakeNet], None]) -> Callable[[FakeNet], None]:
    def change(net: FakeNet) -> None:
        for c in changes:
            c(net)

    return change


# -- the checks --------------------------------------------------------------------------------


def check_assigned_and_token_sent(run: Run) -> None:
    response = run.ok()
    assert response.status_code == 200
    assert response.headers["Affinity-Server"] == "s1"
    first = run.net.assigns()[0]
    assert "affinity-token" not in first.headers
    assert first.url.path == "/v1/assign" and first.url.params.get("service") == "api"
    token = run.net.apps["s1"].seen[0].headers["affinity-token"]
    assert token == "tok.s1.1"
    assert run.of(Assigned) == [Assigned(server_id="s1", sticky=False, reason="first")]
    assert len(run.net.assigns()) == 1  # the second call went straight to the server
    assert len(run.net.apps["s1"].seen) == 2


def check_sticky_renewal(run: Run) -> None:
    assigns = run.net.assigns()
    assert len(assigns) == 2, "renewed once, at 80 % of the token's life, not before"
    renewal = assigns[1]
    assert renewal.headers["affinity-token"] == "tok.s1.1"
    assert renewal.url.params.get_list("avoid") == []
    assert run.of(Assigned)[-1] == Assigned(server_id="s1", sticky=True, reason="renew")
    tokens = [r.headers["affinity-token"] for r in run.net.apps["s1"].seen]
    assert tokens == ["tok.s1.1", "tok.s1.1", "tok.s1.2"]
    assert run.clock.slept == []


def check_failover_to_s2(reason: str) -> Callable[[Run], None]:
    def check(run: Run) -> None:
        response = run.ok()
        assert response.status_code == 200
        assert response.headers["Affinity-Server"] == "s2"
        again = run.net.assigns()[1]
        assert again.url.params.get_list("avoid") == ["s1"]
        assert again.headers["affinity-token"] == "tok.s1.1", "the old token goes back"
        assert run.of(FailedOver)[0].from_server == "s1"
        assert reason in run.of(FailedOver)[0].reason
        assert run.of(Assigned)[-1] == Assigned(server_id="s2", sticky=False, reason="failover")
        assert [e.attempt for e in run.of(Retried)] == [2]
        assert run.server == "s2"

    return check


def check_post_not_resent(run: Run) -> None:
    error = run.failed()
    assert isinstance(error, NotRetried)
    assert isinstance(error.__cause__, httpx.ReadError)
    assert len(run.net.apps["s1"].seen) == 1, "received exactly once"
    assert run.net.apps["s2"].seen == []
    assert "POST is not idempotent" in str(error) and "ReadError" in str(error)
    assert "server s1" in str(error)
    assert run.of(GaveUp) and run.of(FailedOver)[0].from_server == "s1"


def check_post_retried_after_connect_error(run: Run) -> None:
    response = run.ok()
    assert response.json() == {"server": "s2", "method": "POST", "body": "order=1"}
    assert run.net.apps["s2"].seen[0].content == b"order=1"


def check_post_with_key(run: Run) -> None:
    assert run.ok().headers["Affinity-Server"] == "s2"
    received = [*run.net.apps["s1"].seen, *run.net.apps["s2"].seen]
    assert [r.headers["idempotency-key"] for r in received] == ["order-42", "order-42"]
    assert [r.content for r in received] == [b'{"n":1}', b'{"n":1}']


def check_one_referral_down(run: Run) -> None:
    assert all(o in ("s1", "s2") for o in run.outcomes)
    down = run.net.referrals["ref-a.test"]
    assert down.attempts == 1, "tried once, then skipped while cooling down"
    assert len(run.of(ReferralFailed)) == 1
    assert run.of(ReferralFailed)[0].referral == "https://ref-a.test"


def check_cooled_referral_returns(run: Run) -> None:
    assert all(isinstance(o, str) for o in run.outcomes)
    assert run.net.referrals["ref-a.test"].attempts >= 2, "tried again after the cool-down"


def check_all_referrals_down(run: Run) -> None:
    error = run.failed()
    assert isinstance(error, AllAttemptsFailed)
    assert isinstance(error.__cause__, httpx.ConnectError)
    text = str(error)
    assert "ref-a.test" in text and "ref-b.test" in text and "Connection refused" in text
    assert "gave up after 4 attempt(s)" in text
    assert len(error.attempts) == 8  # 4 rounds of both instances
    assert run.of(GaveUp)[0].attempts == 4
    assert run.clock.now - run.started <= DEADLINE


def check_black_holes_stop_at_deadline(run: Run) -> None:
    error = run.failed()
    assert isinstance(error, AllAttemptsFailed)
    assert "deadline of 10s" in str(error)
    assert "server s1" in str(error) and "server s2" in str(error)
    assert "ConnectTimeout" in str(error)
    assert run.clock.now - run.started <= DEADLINE + 1e-9


def check_no_healthy_waits(run: Run) -> None:
    assert run.ok().status_code == 200
    assert run.clock.slept and run.clock.slept[0] >= 2.0, "Retry-After honoured"


def check_no_healthy_beyond_deadline(run: Run) -> None:
    error = run.failed()
    assert "asked to wait 30s" in str(error)
    assert "no_healthy_server" in str(error)
    assert run.clock.slept == []


def check_budget_spent(run: Run) -> None:
    error = run.failed()
    assert "retry budget is spent" in str(error)
    assert run.of(GaveUp)[0].attempts == 1


def check_budget_charged(run: Run) -> None:
    """Two retries allowed, each one taken from the budget: the third failure is the last."""
    error = run.failed()
    assert isinstance(error, AllAttemptsFailed)
    assert "the retry budget is spent (2 retries for 1 requests in 10s)" in str(error)
    assert run.of(GaveUp)[0].attempts == 3
    assert [e.attempt for e in run.of(Retried)] == [2, 3]
    assert len(run.net.assigns()) == 3


def check_delivered(status: int) -> Callable[[Run], None]:
    def check(run: Run) -> None:
        assert run.ok().status_code == status
        assert run.of(FailedOver) == [] and run.of(Retried) == []
        assert len(run.net.assigns()) == 1

    return check


def check_refused(run: Run) -> None:
    error = run.failed()
    assert isinstance(error, ReferralRefused)
    assert "404 unknown_service" in str(error)
    assert run.net.referrals["ref-a.test"].attempts + run.net.referrals["ref-b.test"].attempts == 1


def check_dns_expansion(run: Run) -> None:
    assert run.ok().status_code == 200
    first = run.net.assigns()[0]
    assert first.url.host in ("192.0.2.10", "192.0.2.11")
    assert first.headers["host"] == "ref-a.test"
    assert first.extensions["sni_hostname"] == "ref-a.test"


def check_read_timeout_get_fails_over(run: Run) -> None:
    assert run.ok().headers["Affinity-Server"] == "s2"
    assert len(run.net.apps["s1"].seen) == 1 and len(run.net.apps["s2"].seen) == 1


def check_bye_on_close(run: Run) -> None:
    """Closing the client told its server, once, with the session's token."""
    (bye,) = run.net.apps["s1"].byes
    assert bye.method == "POST"
    assert bye.headers["affinity-token"] == run.net.apps["s1"].seen[-1].headers["affinity-token"]
    assert run.net.apps["s2"].byes == []


def check_bye_to_the_new_server(run: Run) -> None:
    assert run.ok().headers["Affinity-Server"] == "s2"
    assert run.net.apps["s1"].byes == [] and len(run.net.apps["s2"].byes) == 1


def check_no_bye(run: Run) -> None:
    assert all(app.byes == [] for app in run.net.apps.values())


def check_failed_bye_is_quiet(run: Run) -> None:
    """The server went away after the call: the bye fails, briefly, and close() does not raise."""
    assert run.ok(0).status_code == 200
    assert len(run.net.apps["s1"].byes) == 1
    assert run.clock.now - run.started == BYE_TIMEOUT  # its connect timeout, not the client's


POST = Call("POST", "/orders", {"content": b"order=1"})
SCENARIOS = [
    Scenario(
        "assigned, token sent",
        (Call(), Call()),
        check_assigned_and_token_sent,
        options={"service": "api"},
    ),
    Scenario(
        "sticky renewal at 80%",
        (Call(), Advance(79), Call(), Advance(2), Call()),
        check_sticky_renewal,
    ),
    Scenario(
        "421 fails over",
        (Call(),),
        check_failover_to_s2("421 misdirected"),
        mode("app", "s1", "misdirect"),
    ),
    Scenario(
        "503 + Affinity-Reassign fails over",
        (Call(),),
        check_failover_to_s2("draining"),
        mode("app", "s1", "drain"),
    ),
    Scenario(
        "401 token_expired re-assigns",
        (Call(),),
        check_failover_to_s2("token_expired"),
        mode("app", "s1", "expired"),
    ),
    Scenario(
        "GET connect error retried",
        (Call(),),
        check_failover_to_s2("ConnectError"),
        mode("app", "s1", "down"),
    ),
    Scenario(
        "streamed GET fails over before the body",
        (Call(stream=True),),
        check_failover_to_s2("421"),
        mode("app", "s1", "misdirect"),
    ),
    Scenario(
        "GET read error retried elsewhere",
        (Call(),),
        check_read_timeout_get_fails_over,
        mode("app", "s1", "reset"),
    ),
    Scenario(
        "POST read error not re-sent", (POST,), check_post_not_resent, mode("app", "s1", "reset")
    ),
    Scenario(
        "POST connect error retried",
        (POST,),
        check_post_retried_after_connect_error,
        mode("app", "s1", "down"),
    ),
    Scenario(
        "POST with idempotency key retried",
        (Call("POST", "/orders", {"json": {"n": 1}, "idempotency_key": "order-42"}),),
        check_post_with_key,
        mode("app", "s1", "reset"),
    ),
    Scenario(
        "one referral down, cooled down",
        (Assign(),) * 20,
        check_one_referral_down,
        mode("ref", "ref-a.test", "down"),
    ),
    Scenario(
        "cooled referral tried again later",
        (*(Assign(),) * 5, Advance(11), *(Assign(),) * 20),
        check_cooled_referral_returns,
        mode("ref", "ref-a.test", "down"),
        options={"rng": random.Random(1)},
    ),
    Scenario(
        "all referrals down",
        (Call(),),
        check_all_referrals_down,
        modes(mode("ref", "ref-a.test", "down"), mode("ref", "ref-b.test", "down")),
    ),
    Scenario(
        "black-holed servers stop at the deadline",
        (Call(),),
        check_black_holes_stop_at_deadline,
        modes(mode("app", "s1", "blackhole"), mode("app", "s2", "blackhole")),
        options={"max_attempts": 50, "retry_budget_min": 50},
    ),
    Scenario(
        "no healthy server: Retry-After honoured",
        (Call(),),
        check_no_healthy_waits,
        modes(mode("ref", "ref-a.test", "no_healthy"), mode("ref", "ref-b.test", "no_healthy")),
    ),
    Scenario(
        "no healthy server: Retry-After past the deadline",
        (Call(),),
        check_no_healthy_beyond_deadline,
        modes(
            mode("ref", "ref-a.test", "no_healthy"),
            mode("ref", "ref-b.test", "no_healthy"),
            wait("30"),
        ),
    ),
    Scenario(
        "retry budget spent",
        (Call(),),
        check_budget_spent,
        mode("app", "s1", "down"),
        options={"retry_budget_min": 0, "retry_budget_ratio": 0.0},
    ),
    Scenario(
        "retry budget charged per retry",
        (Call(),),
        check_budget_charged,
        modes(mode("app", "s1", "down"), mode("app", "s2", "down")),
        options={"retry_budget_min": 2, "retry_budget_ratio": 0.0, "max_attempts": 10},
    ),
    Scenario(
        "503 without Reassign is the caller's",
        (Call(),),
        check_delivered(503),
        mode("app", "s1", "busy"),
    ),
    Scenario(
        "unknown service refused at once",
        (Call(),),
        check_refused,
        modes(
            mode("ref", "ref-a.test", "unknown_service"),
            mode("ref", "ref-b.test", "unknown_service"),
        ),
    ),
    Scenario(
        "DNS name with several addresses",
        (Call(),),
        check_dns_expansion,
        lambda net: net.dns.update({"ref-a.test": ["192.0.2.10", "192.0.2.11"]}),
        referrals=("https://ref-a.test",),
    ),
    Scenario("close says bye", (Call(), Call()), check_bye_on_close),
    Scenario(
        "bye to the server failed over to",
        (Call(),),
        check_bye_to_the_new_server,
        mode("app", "s1", "misdirect"),
    ),
    Scenario("no bye without an assignment", (), check_no_bye),
    Scenario("no bye with an expired token", (Call(), Advance(101)), check_no_bye),
    Scenario(
        "no bye to a server that just failed",
        (Call(), Do(mode("app", "s1", "blackhole")), Call()),
        check_no_bye,
        options={"max_attempts": 1},
    ),
    Scenario(
        "a bye that fails is not raised",
        (Call(), Do(mode("app", "s1", "blackhole"))),
        check_failed_bye_is_quiet,
    ),
]


@pytest.mark.parametrize("runner", [run_sync, run_async], ids=["sync", "async"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(scenario: Scenario, runner: Callable[[Scenario], Run]) -> None:
    scenario.check(runner(scenario))


# -- persistence, TLS, events, CLI -------------------------------------------------------------


@pytest.mark.parametrize("runner", [run_sync, run_async], ids=["sync", "async"])
def test_state_file_round_trip(tmp_path: Path, runner: Callable[[Scenario], Run]) -> None:
    state = tmp_path / "state" / "affinity.json"
    options = {"state_file": state, "service": "api"}
    first = runner(Scenario("first run", (Call(),), lambda run: None, options=options))
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    saved = json.loads(state.read_text())
    assert saved["server_id"] == "s1" and saved["token"] == "tok.s1.1"
    assert saved["referrals"] == list(REFERRALS) and saved["service"] == "api"
    assert len(first.net.assigns()) == 1

    second = runner(Scenario("second run", (Call(),), lambda run: None, options=options))
    assert second.net.assigns() == [], "the saved server is used without asking"
    assert second.net.apps["s1"].seen[0].headers["affinity-token"] == "tok.s1.1"
    assert [p.name for p in state.parent.iterdir()] == ["affinity.json"], "no temporary left"


def test_state_file_for_other_referrals_or_corrupt_is_ignored(tmp_path: Path) -> None:
    state = tmp_path / "affinity.json"
    run_sync(Scenario("save", (Call(),), lambda run: None, options={"state_file": state}))
    other = run_sync(
        Scenario(
            "other service",
            (Call(),),
            lambda run: None,
            options={"state_file": state, "service": "other"},
        )
    )
    assert len(other.net.assigns()) == 1
    state.write_text("{not json")
    corrupt = run_sync(
        Scenario("corrupt", (Call(),), lambda run: None, options={"state_file": state})
    )
    assert len(corrupt.net.assigns()) == 1
    assert json.loads(state.read_text())["server_id"] == "s1", "rewritten after the referral"


def test_expired_saved_assignment_is_not_used(tmp_path: Path) -> None:
    state = tmp_path / "affinity.json"
    run_sync(Scenario("save", (Call(),), lambda run: None, options={"state_file": state}))
    doc = json.loads(state.read_text())
    doc["expires_at"] = doc["renew_at"] = 1.0
    state.write_text(json.dumps(doc))
    again = run_sync(Scenario("again", (Call(),), lambda run: None, options={"state_file": state}))
    assert len(again.net.assigns()) == 1


def test_failing_on_event_callback_does_not_fail_requests() -> None:
    def boom(event: Event) -> None:
        raise RuntimeError("observer bug")

    run = run_sync(Scenario("boom", (Call(),), lambda run: None, options={"on_event": boom}))
    assert run.ok().status_code == 200


def test_verify_false_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with Client(REFERRALS[0], verify=False):
        pass
    assert any("verification is OFF" in r.getMessage() for r in caplog.records)
    assert all(r.name == "affinity.client" for r in caplog.records)


def test_missing_ca_file_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="verify"):
        Client(REFERRALS[0], verify=str(tmp_path / "missing.pem"))


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"deadline": 0}, "deadline"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"backoff_base": -1.0}, "backoff_base"),
        ({"backoff_base": 1.0, "backoff_cap": 0.5}, "backoff_cap"),
        ({"service": "no spaces"}, "service"),
        ({"retry_budget_min": -1}, "retry_budget_min"),
    ],
)
def test_bad_options_name_the_option(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        Client(REFERRALS[0], **options)


def test_bad_referral_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="referral URL 'ftp://x' is not valid"):
        Client("ftp://x")


def test_path_must_be_absolute() -> None:
    with Client(REFERRALS[0]) as client, pytest.raises(ValueError, match="absolute path"):
        client.get("https://evil.test/")


def _cli(
    argv: list[str], setup: Callable[[FakeNet], None] = lambda net: None
) -> tuple[int, FakeNet]:
    net = FakeNet(FakeClock())
    setup(net)
    try:
        args = parser().parse_args(["request", *argv])
    except SystemExit as exc:  # a usage error, already printed
        return int(exc.code or 0), net
    return request_command.run(args, transport=httpx.MockTransport(net.handle)), net


def test_cli_prints_status_server_and_body(capsys: pytest.CaptureFixture[str]) -> None:
    code, net = _cli(["--referral", REFERRALS[0], "-H", "X-Trace: 1", "-d", "hi", "POST", "/x"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[:2] == ["200 OK", "Affinity-Server: s1"]
    assert json.loads(out.splitlines()[3]) == {"server": "s1", "method": "POST", "body": "hi"}
    assert net.apps["s1"].seen[0].headers["x-trace"] == "1"
    assert len(net.apps["s1"].byes) == 1, "the command's session ends with a bye"


def test_cli_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["--referral", REFERRALS[0], "GET", "/"], mode("app", "s1", "busy"))[0] == 1
    refused = mode("ref", "ref-a.test", "unknown_service")
    code, _ = _cli(["--referral", REFERRALS[0], "--service", "x", "GET", "/"], refused)
    assert code == 2
    assert "ref-a.test" in capsys.readouterr().err
    assert _cli(["--referral", REFERRALS[0], "-H", "bad", "GET", "/"])[0] == 2
    assert _cli(["GET"])[0] == 2


def test_concurrent_async_calls_all_fail_over() -> None:
    """Ten calls in flight on a server that starts draining: every one ends on the other."""
    clock = FakeClock()
    net = FakeNet(clock)
    net.apps["s1"].mode = "drain"

    async def handle(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0)  # let the other calls run: they are all in flight at once
        return net.handle(request)

    async def main() -> list[httpx.Response]:
        async with AsyncClient(
            REFERRALS,
            transport=httpx.MockTransport(handle),
            sleep=clock.asleep,
            resolver=net.aresolve,
            clock=clock,
            rng=random.Random(2),
            retry_budget_min=10,
        ) as client:
            await client.assign()
            return await asyncio.gather(*(client.get(f"/{i}") for i in range(10)))

    responses = asyncio.run(main())
    assert {r.headers["Affinity-Server"] for r in responses} == {"s2"}
    assert all(r.status_code == 200 for r in responses)
    assert len(net.apps["s1"].seen) == 10, "all ten were in flight on s1"
    assert all("s1" in r.url.params.get_list("avoid") for r in net.assigns()[1:])


def test_threads_share_a_sync_client() -> None:
    clock = FakeClock()
    net = FakeNet(clock)
    net.apps["s1"].mode = "misdirect"
    with (
        Client(
            REFERRALS,
            transport=httpx.MockTransport(net.handle),
            sleep=lambda seconds: None,
            resolver=net.resolve,
            clock=clock,
            retry_budget_min=20,
        ) as client,
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        responses = list(pool.map(lambda i: client.get(f"/{i}"), range(16)))
    assert {r.headers["Affinity-Server"] for r in responses} == {"s2"}
