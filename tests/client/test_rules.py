"""The failover rules without a network: scripted outcomes, a fake clock, and properties.

The rules are generators of actions, so a test can be the driver: it answers
each action from a script and records what the rules asked for. The property
tests throw arbitrary sequences of server failures at them and check the
promises that matter: a bounded number of attempts, the deadline, never
re-sending a request that may have reached a server unless that is safe, and
always asking the referral to avoid a server that failed before going on.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Callable
from typing import Any, cast

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affinity.client import rules
from affinity.client.referrers import (
    TLS_HINT,
    Failure,
    Fetch,
    Instance,
    Note,
    Referrers,
    Resolve,
    assign_fetch,
    normalise,
    parse_offer,
)
from affinity.client.rules import (
    Assigned,
    Close,
    Emit,
    Read,
    Sleep,
    Spec,
    assign_steps,
    judge,
    request_steps,
)
from affinity.client.store import Grant, Session
from affinity.client.sync import ClientOptions, make_session, make_spec
from affinity.errors import AllAttemptsFailed, ConfigError, NotRetried, ReferralRefused
from affinity.protocol import MAX_AVOID

REFERRAL = "https://referral.test"


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def offer(sid: str, expires_in: float = 100.0, sticky: bool = False) -> httpx.Response:
    body = {
        "server": {"id": sid, "url": f"https://{sid}.test"},
        "token": f"tok.{sid}",
        "expires_in": expires_in,
        "sticky": sticky,
    }
    return httpx.Response(200, json=body)


def answer(status: int, error: str = "", headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": error, "detail": "d"} if error else {}
    return httpx.Response(status, json=body, headers=headers)


Responder = Callable[[Fetch], httpx.Response | Failure]


class Driver:
    """Performs the rules' actions from scripts, advancing a fake clock on sleeps."""

    def __init__(self, clock: Clock, referral: Responder, server: Responder) -> None:
        self.clock = clock
        self.referral = referral
        self.server = server
        self.actions: list[Any] = []

    def run(self, steps: rules.Steps[Any]) -> Any:
        outcome: Any = None
        while True:
            try:
                action = steps.send(outcome)
            except StopIteration as stop:
                return stop.value
            self.actions.append(action)
            outcome = self.perform(action)

    def perform(self, action: Any) -> Any:
        if isinstance(action, Fetch):
            is_referral = action.url.endswith("/v1/assign")
            return (self.referral if is_referral else self.server)(action)
        if isinstance(action, Sleep):
            self.clock.now += action.seconds
        if isinstance(action, Resolve):
            return Failure(OSError("no DNS in this test"))
        return None

    def fetches(self, referral: bool) -> list[Fetch]:
        return [
            a
            for a in self.actions
            if isinstance(a, Fetch) and a.url.endswith("/v1/assign") == referral
        ]

    def events(self, kind: type[Any]) -> list[Any]:
        return [a.event for a in self.actions if isinstance(a, Emit) and isinstance(a.event, kind)]


def session(clock: Clock, **options: Any) -> Session:
    given = {"clock": clock, "rng": random.Random(3), **options}
    return make_session(REFERRAL, cast(ClientOptions, given))


def alternating() -> Responder:
    """A referral that offers the first server not avoided, of s1..s9."""

    def refer(fetch: Fetch) -> httpx.Response:
        avoid = {v for k, v in fetch.params if k == "avoid"}
        return offer(next(f"s{i}" for i in range(1, 10) if f"s{i}" not in avoid))

    return refer


# -- one answer at a time ----------------------------------------------------------------------

GET, POST = Spec(method="GET", path="/"), Spec(method="POST", path="/")
KEYED = Spec(method="POST", path="/", idempotency_key="k")
REQ = httpx.Request("GET", "https://s1.test/")


@pytest.mark.parametrize(
    ("outcome", "spec", "expected"),
    [
        (answer(200), POST, None),
        (answer(503, "overloaded"), GET, None),
        (answer(401, "token_required"), GET, None),
        (answer(429, "rate_limited"), GET, None),
        (answer(421, "misdirected"), POST, (True, True)),
        (answer(503, "draining", {"Affinity-Reassign": "1"}), POST, (True, True)),
        (answer(401, "token_expired"), POST, (True, True)),
        (answer(401, "invalid_token"), POST, (True, True)),
        (Failure(httpx.ConnectError("refused", request=REQ)), POST, (True, True)),
        (Failure(httpx.ConnectTimeout("slow", request=REQ)), POST, (True, True)),
        (Failure(httpx.PoolTimeout("busy", request=REQ)), POST, (False, True)),
        (Failure(httpx.ReadTimeout("slow", request=REQ)), POST, (True, False)),
        (Failure(httpx.ReadError("reset", request=REQ)), POST, (True, False)),
        (Failure(httpx.WriteError("broken", request=REQ)), POST, (True, False)),
        (Failure(httpx.RemoteProtocolError("eof", request=REQ)), POST, (True, False)),
        (Failure(httpx.ReadTimeout("slow", request=REQ)), GET, (True, True)),
        (Failure(httpx.ReadError("reset", request=REQ)), KEYED, (True, True)),
    ],
)
def test_judge(
    outcome: httpx.Response | Failure, spec: Spec, expected: tuple[bool, bool] | None
) -> None:
    steps = judge(outcome, spec)
    try:
        action = next(steps)
        assert isinstance(action, Read)
        steps.send(None)
    except StopIteration as stop:
        verdict = stop.value
    assert (None if verdict is None else (verdict.failover, verdict.safe)) == expected


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
def test_idempotent_methods_are_resendable(method: str) -> None:
    assert Spec(method=method, path="/").resendable
    assert not Spec(method="PATCH", path="/").resendable


def test_idempotency_key_given_as_header_counts() -> None:
    spec = make_spec("post", "/o", {"headers": {"idempotency-key": "abc"}})
    assert spec.method == "POST" and spec.idempotency_key == "abc" and spec.resendable


def test_content_must_be_resendable() -> None:
    with pytest.raises(TypeError, match="bytes or str"):
        make_spec("POST", "/o", {"content": iter([b"x"])})  # type: ignore[typeddict-item]


def test_first_action_is_the_referral_then_the_server_with_the_token() -> None:
    clock = Clock()
    driver = Driver(clock, alternating(), lambda f: answer(200))
    response = driver.run(request_steps(session(clock, service="api"), GET))
    assert response.status_code == 200
    kinds = [type(a).__name__ for a in driver.actions]
    assert kinds == ["Resolve", "Fetch", "Emit", "Fetch"]
    referral, server = driver.fetches(True)[0], driver.fetches(False)[0]
    assert referral.params == [("service", "api")]
    assert "Affinity-Token" not in referral.headers
    assert server.url == "https://s1.test/" and server.headers["Affinity-Token"] == "tok.s1"


def test_timeouts_are_cut_to_the_time_left() -> None:
    clock = Clock()

    def slow_referral(fetch: Fetch) -> httpx.Response:
        clock.now += 9.0
        return offer("s1")

    driver = Driver(clock, slow_referral, lambda f: answer(200))
    driver.run(request_steps(session(clock, deadline=10.0), GET))
    server = driver.fetches(False)[0]
    assert server.connect == pytest.approx(1.0) and server.read == pytest.approx(1.0)


def test_a_failed_renewal_keeps_the_old_token() -> None:
    clock = Clock()
    s = session(clock)
    replies = iter([offer("s1", expires_in=100.0), answer(502)])
    driver = Driver(clock, lambda f: next(replies), lambda f: answer(200))
    driver.run(request_steps(s, GET))
    clock.now += 85.0
    response = driver.run(request_steps(s, GET))
    assert response.status_code == 200
    assert s.grant is not None and s.grant.token == "tok.s1"
    assert len(driver.fetches(True)) == 2
    clock.now += 1.0
    driver.run(request_steps(s, GET))  # within the cool-down: no new renewal attempt
    assert len(driver.fetches(True)) == 2


def test_failure_on_a_replaced_grant_does_not_mark_the_new_one() -> None:
    clock = Clock()
    s = session(clock)
    driver = Driver(clock, alternating(), lambda f: answer(200))
    driver.run(request_steps(s, GET))
    old = s.grant
    driver.run(assign_steps(s))
    assert old is not None and s.grant is not old
    s.fail(old)
    assert s.suspect is None


def test_gives_up_with_every_attempt_listed() -> None:
    clock = Clock()
    refused = Failure(httpx.ConnectError("refused", request=REQ))
    driver = Driver(clock, alternating(), lambda f: refused)
    with pytest.raises(AllAttemptsFailed) as caught:
        driver.run(request_steps(session(clock, max_attempts=3), GET))
    assert caught.value.attempts == (
        "server s1 (https://s1.test): ConnectError: refused",
        "server s2 (https://s2.test): ConnectError: refused",
        "server s3 (https://s3.test): ConnectError: refused",
    )
    assert "GET /: gave up after 3 attempt(s)" in str(caught.value)
    assert "all 3 attempts made" in str(caught.value)


def test_closes_responses_it_does_not_return() -> None:
    clock = Clock()
    replies = iter([answer(421, "misdirected"), answer(200)])
    driver = Driver(clock, alternating(), lambda f: next(replies))
    driver.run(request_steps(session(clock), GET))
    closed = [a for a in driver.actions if isinstance(a, Close)]
    assert len(closed) == 1 and closed[0].response.status_code == 421


# -- properties --------------------------------------------------------------------------------

KINDS = [
    "ok",
    "busy",
    "421",
    "reassign",
    "expired",
    "refused",
    "connect_timeout",
    "read_timeout",
    "reset",
]
SENT = {"ok", "busy", "read_timeout", "reset"}
"""Outcomes after which the server has (or may have) the request."""


def scripted_server(clock: Clock, kinds: list[str]) -> Responder:
    script = iter(kinds)

    def serve(fetch: Fetch) -> httpx.Response | Failure:
        kind = next(script, "ok")
        request = httpx.Request(fetch.method, fetch.url)
        match kind:
            case "ok":
                return answer(200)
            case "busy":
                return answer(503, "overloaded")
            case "421":
                return answer(421, "misdirected")
            case "reassign":
                return answer(503, "draining", {"Affinity-Reassign": "1"})
            case "expired":
                return answer(401, "token_expired")
            case "refused":
                return Failure(httpx.ConnectError("refused", request=request))
            case "connect_timeout":
                clock.now += fetch.connect
                return Failure(httpx.ConnectTimeout("timed out", request=request))
            case "read_timeout":
                clock.now += fetch.read
                return Failure(httpx.ReadTimeout("timed out", request=request))
            case _:
                return Failure(httpx.ReadError("reset", request=request))

    return serve


@settings(max_examples=300, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(KINDS), max_size=12),
    method=st.sampled_from(["GET", "POST", "PUT"]),
    keyed=st.booleans(),
    max_attempts=st.integers(1, 8),
    deadline=st.floats(0.5, 30.0),
)
def test_rules_keep_their_promises(
    kinds: list[str], method: str, keyed: bool, max_attempts: int, deadline: float
) -> None:
    clock = Clock()
    spec = Spec(method=method, path="/", idempotency_key="k" if keyed else None)
    s = session(clock, max_attempts=max_attempts, deadline=deadline, retry_budget_min=100)
    driver = Driver(clock, alternating(), scripted_server(clock, kinds))
    start = clock.now
    try:
        response = driver.run(request_steps(s, spec))
    except AllAttemptsFailed:
        response = None
    sent = driver.fetches(False)
    assert len(sent) <= max_attempts
    assert clock.now - start <= deadline + 1e-9
    assert all(a.seconds <= 2.0 for a in driver.actions if isinstance(a, Sleep))
    outcomes = kinds[: len(sent)] + ["ok"] * (len(sent) - len(kinds))
    if response is not None:
        assert outcomes[-1] in ("ok", "busy")
    if not spec.resendable:
        reached = [i for i, kind in enumerate(outcomes) if kind in SENT]
        assert not reached or reached[0] == len(sent) - 1, (
            "never sent again once it may have arrived"
        )
    _assert_failed_servers_avoided(driver)


def _assert_failed_servers_avoided(driver: Driver) -> None:
    """After a server failed, the next referral request avoids it (with its old token)."""
    failed = [e.from_server for e in driver.events(rules.FailedOver)]
    asks = driver.fetches(True)[1:]
    for server, ask in zip(failed, asks, strict=False):
        assert ("avoid", server) in ask.params
        assert ask.headers["Affinity-Token"] == f"tok.{server}"


# -- referrers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://r.test/", "https://r.test"),
        ("http://r.test:8080/lb/", "http://r.test:8080/lb"),
        ("https://[2001:db8::1]:8443", "https://[2001:db8::1]:8443"),
    ],
)
def test_normalise(url: str, expected: str) -> None:
    assert normalise(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "ftp://r.test",
        "https://",
        "https://u:p@r.test",
        "https://r.test/?q=1",
        "https://r.test:99999",
    ],
)
def test_normalise_refuses(url: str) -> None:
    with pytest.raises(ConfigError, match="referrals"):
        normalise(url)


def test_a_name_with_several_addresses_is_several_instances() -> None:
    refs = Referrers(["https://r.test:8443/lb", "https://192.0.2.9"])
    assert refs.to_resolve(0.0) == [("r.test", 8443)]
    refs.resolved("r.test", 8443, ["192.0.2.1", "2001:db8::1", "192.0.2.1"], now=0.0)
    assert refs.to_resolve(10.0) == []
    assert refs.to_resolve(31.0) == [("r.test", 8443)]
    v4, v6, literal = refs.instances()
    assert v4.url("/v1/assign") == "https://192.0.2.1:8443/lb/v1/assign"
    assert v6.url("/x") == "https://[2001:db8::1]:8443/lb/x"
    assert v4.headers() == {"Host": "r.test:8443"}
    assert v4.extensions() == {"sni_hostname": "r.test"}
    assert literal == Instance("https://192.0.2.9") and literal.headers() == {}
    assert str(v4) == "https://r.test:8443/lb (192.0.2.1)"


def test_one_address_connects_by_name() -> None:
    refs = Referrers(["https://r.test"])
    refs.resolved("r.test", 443, ["192.0.2.1"], now=0.0)
    assert refs.instances() == [Instance("https://r.test")]


def test_cooling_instances_go_last_soonest_first() -> None:
    refs = Referrers(["https://a.test", "https://b.test", "https://c.test"], cooldown=10.0)
    a, b, c = refs.instances()
    refs.failed(b, now=0.0)
    refs.failed(a, now=1.0)
    for seed in range(10):
        assert refs.order(5.0, random.Random(seed)) == [c, b, a]
    assert set(refs.order(10.5, random.Random(0))) == {a, b, c}
    assert refs.order(10.5, random.Random(0))[-1] == a
    refs.succeeded(a)
    assert refs.cooling(5.0) == [b]


def test_order_is_random_among_available() -> None:
    refs = Referrers([f"https://r{i}.test" for i in range(4)])
    firsts = {refs.order(0.0, random.Random(seed))[0] for seed in range(40)}
    assert len(firsts) == 4


def test_assign_fetch_sends_token_and_the_last_avoided() -> None:
    avoid = [f"s{i}" for i in range(20)]
    fetch = assign_fetch(
        Instance("https://r.test"), service="api", token="t", avoid=avoid, connect=1, read=2
    )
    assert fetch.params[0] == ("service", "api")
    assert [v for k, v in fetch.params if k == "avoid"] == avoid[-MAX_AVOID:]
    assert fetch.headers["Affinity-Token"] == "t"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"nope", "not JSON"),
        (b"[]", "no 'server'"),
        (b'{"server": {"id": "bad id", "url": "https://s"}, "token": "t", "expires_in": 1}', "id"),
        (b'{"server": {"id": "s1", "url": "https://s/x"}, "token": "t", "expires_in": 1}', "url"),
        (b'{"server": {"id": "s1", "url": "https://s"}, "token": "", "expires_in": 1}', "token"),
        (b'{"server": {"id": "s1", "url": "https://s"}, "token": "t", "expires_in": 0}', "expires"),
        (
            b'{"server": {"id": "s1", "url": "https://s"}, "token": "t", "expires_in": true}',
            "expires",
        ),
    ],
)
def test_parse_offer_refuses(body: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_offer(body)


def test_referral_refusal_stops_at_once() -> None:
    clock = Clock()
    driver = Driver(clock, lambda f: answer(400, "invalid_avoid"), lambda f: answer(200))
    with pytest.raises(ReferralRefused, match="400 invalid_avoid"):
        driver.run(request_steps(session(clock), GET))
    assert len(driver.fetches(True)) == 1 and driver.fetches(False) == []


def test_not_retried_names_the_way_out() -> None:
    clock = Clock()
    reset = Failure(httpx.ReadError("reset", request=REQ))
    driver = Driver(clock, alternating(), lambda f: reset)
    with pytest.raises(NotRetried, match="no idempotency key") as caught:
        driver.run(request_steps(session(clock), POST))
    assert caught.value.attempts == ("server s1 (https://s1.test): ReadError: reset",)
    assert driver.events(Assigned)[0].server_id == "s1"


def test_note_text() -> None:
    assert str(Note("referral", "https://r", "503 no_healthy_server")) == (
        "referral https://r: 503 no_healthy_server"
    )


def _unverified() -> Failure:
    """A connect failure as httpx raises it when the server's certificate does not verify."""
    cause = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] unable to get issuer")
    try:
        raise httpx.ConnectError("certificate verify failed") from cause
    except httpx.ConnectError as error:
        return Failure(error)


def test_a_server_certificate_that_does_not_verify_ends_the_call_with_the_hint() -> None:
    spec = make_spec("GET", "/", {})
    verdict = rules.judge_failure(_unverified(), spec)
    assert verdict.final and not verdict.failover
    assert "--cacert FILE" in verdict.reason and "verify=" in verdict.reason


def test_a_plain_connect_failure_still_fails_over() -> None:
    spec = make_spec("GET", "/", {})
    verdict = rules.judge_failure(Failure(httpx.ConnectError("refused")), spec)
    assert verdict.failover and not verdict.final


def test_giving_up_is_not_logged_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    """The raised error says it; a library must not print it to stderr a second time."""
    caplog.set_level(logging.DEBUG, logger="affinity.client")
    rules.log_event(rules.GaveUp(attempts=3, reason="all 3 attempts made"))
    rules.log_event(rules.FailedOver(from_server="s1", reason="421"))
    rules.log_event(rules.ReferralFailed(referral="https://r", reason="503"))
    assert caplog.records and all(r.levelno < logging.WARNING for r in caplog.records)


def test_assign_gives_up_naming_itself_and_retries_with_the_last_failure() -> None:
    clock = Clock()
    driver = Driver(clock, lambda f: answer(503, "no_healthy_server"), lambda f: answer(200))
    with pytest.raises(AllAttemptsFailed) as caught:
        driver.run(assign_steps(session(clock, max_attempts=2)))
    assert str(caught.value).startswith("assign: gave up after 2 attempt(s)")
    (retried,) = driver.events(rules.Retried)
    assert retried.reason == caught.value.attempts[0]


def test_each_event_has_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    events: list[rules.Event] = [
        Assigned(server_id="s1", sticky=True, reason="renewed"),
        rules.FailedOver(from_server="s1", reason="503"),
        rules.Retried(attempt=2, delay=0.25, reason="refused"),
        rules.GaveUp(attempts=3, reason="budget spent"),
        rules.ReferralFailed(referral="https://r1.test", reason="timeout"),
    ]
    with caplog.at_level(logging.DEBUG, logger="affinity.client"):
        for event in events:
            rules.log_event(event)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "assigned server s1 (sticky=True, renewed)"),
        ("INFO", "failing over from server s1: 503"),
        ("INFO", "attempt 2 in 0.250s: refused"),
        ("DEBUG", "gave up after 3 attempt(s): budget spent"),
        ("INFO", "referral https://r1.test: timeout"),
    ]


def test_failure_verdicts_are_exact() -> None:
    spec = make_spec("GET", "/", {})
    assert rules.judge_failure(_unverified(), spec) == rules.Verdict(
        f"ConnectError: certificate verify failed; {TLS_HINT}",
        failover=False,
        safe=True,
        final=True,
    )
    busy = Failure(httpx.PoolTimeout("busy", request=REQ))
    assert rules.judge_failure(busy, POST) == rules.Verdict(
        "PoolTimeout: busy", failover=False, safe=True
    )


def test_the_fetch_carries_the_callers_request_with_our_token_only() -> None:
    grant = Grant(
        server_id="s1",
        server_url="https://s1.test/",
        token="tok",
        expires_at=100.0,
        renew_at=50.0,
        sticky=False,
    )
    spec = Spec(
        method="POST",
        path="/orders",
        params={"q": "1"},
        headers=(("affinity-token", "forged"), ("IDEMPOTENCY-KEY", "other"), ("X-Trace", "7")),
        idempotency_key="k1",
    )
    fetch = spec.fetch(grant, connect=1.0, read=2.0, stream=True)
    assert (fetch.method, fetch.url, fetch.params, fetch.stream) == (
        "POST",
        "https://s1.test/orders",
        {"q": "1"},
        True,
    )
    assert fetch.headers == {"X-Trace": "7", "Affinity-Token": "tok", "Idempotency-Key": "k1"}


def test_a_retry_after_applies_to_the_next_wait_only() -> None:
    """The backoff here is at most 0.05 s; only the first 503's Retry-After asks for 1 s."""
    clock = Clock()
    replies = iter([answer(503, "no_healthy_server", {"Retry-After": "1"})])

    def referral(fetch: Fetch) -> httpx.Response:
        return next(replies, answer(500, "internal"))

    driver = Driver(clock, referral, lambda f: answer(200))
    with pytest.raises(AllAttemptsFailed):
        driver.run(assign_steps(session(clock, max_attempts=3, backoff_cap=0.05)))
    delays = [e.delay for e in driver.events(rules.Retried)]
    assert delays[0] == 1.0 and delays[1] <= 0.05


def test_the_final_error_lists_what_was_tried_and_how_long_it_took() -> None:
    clock = Clock()

    def refused(fetch: Fetch) -> Failure:
        clock.now += 0.5
        return Failure(httpx.ConnectError("refused", request=REQ))

    driver = Driver(clock, alternating(), refused)
    with pytest.raises(AllAttemptsFailed) as caught:
        driver.run(request_steps(session(clock, max_attempts=2, backoff_cap=0.05), GET))
    text = str(caught.value)
    assert text.startswith(f"GET /: gave up after 2 attempt(s) in {clock.now - 50.0:.2f}s: ")
    assert text.endswith(
        "tried:\n  server s1 (https://s1.test): ConnectError: refused"
        "\n  server s2 (https://s2.test): ConnectError: refused"
    )


def test_a_certificate_failure_gives_up_at_once_saying_why() -> None:
    clock = Clock()
    driver = Driver(clock, alternating(), lambda f: _unverified())
    with pytest.raises(AllAttemptsFailed) as caught:
        driver.run(request_steps(session(clock), GET))
    reason = f"ConnectError: certificate verify failed; {TLS_HINT}"
    line = f"server s1 (https://s1.test): {reason}"
    assert caught.value.attempts == (line,)
    assert str(caught.value) == (
        f"GET /: gave up after 1 attempt(s) in 0.00s: {reason}; tried:\n  {line}"
    )
    assert driver.events(rules.GaveUp) == [rules.GaveUp(attempts=1, reason=reason)]


def test_a_request_that_may_have_arrived_is_not_sent_again() -> None:
    clock = Clock()
    reset = Failure(httpx.ReadError("reset", request=REQ))
    driver = Driver(clock, alternating(), lambda f: reset)
    with pytest.raises(NotRetried) as caught:
        driver.run(request_steps(session(clock), POST))
    reason = (
        "POST is not idempotent and has no idempotency key, and the request "
        "may have reached server s1; not sent again"
    )
    assert driver.events(rules.GaveUp) == [rules.GaveUp(attempts=1, reason=reason)]
    assert caught.value.attempts == ("server s1 (https://s1.test): ReadError: reset",)
    assert str(caught.value).startswith(f"POST /: gave up after 1 attempt(s) in 0.00s: {reason}")


def test_a_401_whose_body_cannot_be_read_fails_over() -> None:
    steps = judge(answer(401, "token_expired"), POST)
    assert isinstance(next(steps), Read)
    with pytest.raises(StopIteration) as stop:
        steps.send(Failure(httpx.ReadError("reset", request=REQ)))
    assert stop.value.value == rules.Verdict(
        "401, then ReadError: reset", failover=True, safe=False
    )


def test_requests_are_not_streamed_unless_asked() -> None:
    for stream in (False, True):
        clock = Clock()
        driver = Driver(clock, alternating(), lambda f: answer(200))
        steps = request_steps(session(clock), GET, stream=True) if stream else None
        driver.run(steps or request_steps(session(clock), GET))
        assert [f.stream for f in driver.fetches(referral=False)] == [stream]


def test_retries_and_giving_up_are_told_with_their_delay_and_reason() -> None:
    clock = Clock()
    refused = Failure(httpx.ConnectError("refused", request=REQ))
    driver = Driver(clock, alternating(), lambda f: refused)
    with pytest.raises(AllAttemptsFailed):
        driver.run(request_steps(session(clock, max_attempts=2), GET))
    sleeps = [a.seconds for a in driver.actions if isinstance(a, Sleep)]
    assert driver.events(rules.Retried) == [
        rules.Retried(attempt=2, delay=sleeps[0], reason="ConnectError: refused")
    ]
    assert driver.events(rules.GaveUp) == [rules.GaveUp(attempts=2, reason="all 2 attempts made")]


def test_each_assignment_says_why_the_referral_was_asked() -> None:
    clock = Clock()
    driver = Driver(clock, lambda f: offer("s1", expires_in=10.0), lambda f: answer(200))
    s = session(clock)
    driver.run(assign_steps(s))
    clock.now += 11.0  # past the token's life
    driver.run(request_steps(s, GET))
    assert [e.reason for e in driver.events(Assigned)] == ["forced", "expired"]


def test_after_a_call_failed_on_a_server_the_next_referral_avoids_it() -> None:
    clock = Clock()
    reset = Failure(httpx.ReadError("reset", request=REQ))
    replies = iter([reset])
    driver = Driver(clock, alternating(), lambda f: next(replies, answer(200)))
    s = session(clock)
    with pytest.raises(NotRetried):
        driver.run(request_steps(s, POST))
    driver.run(request_steps(s, GET))
    second = driver.fetches(referral=True)[-1]
    assert ("avoid", "s1") in list(second.params)


# -- boundaries of the deadline, the renewal and the back-off ---------------------------------


class Drawn(random.Random):
    """A generator whose ``random()`` is always ``value``: the back-off draws a fixed share."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_a_deadline_spent_asking_the_referral_gives_up_with_nothing_tried() -> None:
    """The referral answers as the deadline falls: 0 s left is no time to send the request."""
    clock = Clock()

    def slow_referral(fetch: Fetch) -> httpx.Response:
        clock.now += 10.0
        return offer("s1")

    driver = Driver(clock, slow_referral, lambda f: answer(200))
    with pytest.raises(AllAttemptsFailed) as caught:
        driver.run(request_steps(session(clock, deadline=10.0), GET))
    assert str(caught.value) == (
        "GET /: gave up after 1 attempt(s) in 10.00s: the deadline of 10s would pass; "
        "tried:\n  nothing could be tried"
    )
    assert driver.fetches(False) == []


def test_a_retry_after_that_reaches_the_deadline_exactly_ends_the_call() -> None:
    clock = Clock()

    def busy(fetch: Fetch) -> httpx.Response:
        clock.now += 5.0  # 5 s of the 10 left
        return answer(503, "no_healthy_server", {"Retry-After": "5"})

    driver = Driver(clock, busy, lambda f: answer(200))
    with pytest.raises(AllAttemptsFailed) as caught:
        driver.run(request_steps(session(clock, deadline=10.0), GET))
    assert "the referral asked to wait 5s, past the deadline of 10s" in str(caught.value)


def test_a_back_off_that_reaches_the_deadline_exactly_ends_the_call() -> None:
    """The wait drawn is the whole ceiling, 2 s, and 2 s are left."""
    clock = Clock()

    def refused(fetch: Fetch) -> Failure:
        clock.now += 8.0
        return Failure(httpx.ConnectError("refused", request=REQ))

    s = session(clock, deadline=10.0, backoff_base=2.0, backoff_cap=2.0, rng=Drawn(1.0))
    driver = Driver(clock, alternating(), refused)
    with pytest.raises(AllAttemptsFailed) as caught:
        driver.run(request_steps(s, GET))
    assert "gave up after 1 attempt(s) in 8.00s: the deadline of 10s would pass" in str(
        caught.value
    )
    assert driver.events(rules.Retried) == []


def test_a_wait_of_nothing_sleeps_not() -> None:
    clock = Clock()
    refused = Failure(httpx.ConnectError("refused", request=REQ))
    driver = Driver(clock, alternating(), lambda f: refused)
    with pytest.raises(AllAttemptsFailed):
        driver.run(request_steps(session(clock, max_attempts=2, rng=Drawn(0.0)), GET))
    assert [e.delay for e in driver.events(rules.Retried)] == [0.0]
    assert [a for a in driver.actions if isinstance(a, Sleep)] == []


def test_the_back_off_doubles_its_ceiling_per_retry_and_draws_from_the_session() -> None:
    clock = Clock()
    refused = Failure(httpx.ConnectError("refused", request=REQ))
    driver = Driver(clock, alternating(), lambda f: refused)
    options = {"max_attempts": 4, "backoff_base": 1.0, "backoff_cap": 100.0, "deadline": 1000.0}
    with pytest.raises(AllAttemptsFailed):
        driver.run(request_steps(session(clock, rng=Drawn(0.75), **options), GET))
    assert [a.seconds for a in driver.actions if isinstance(a, Sleep)] == [0.75, 1.5, 3.0]


def test_a_referral_failure_is_told_and_is_the_reason_of_the_retry() -> None:
    clock = Clock()
    replies = iter([answer(500, "internal")])
    driver = Driver(clock, lambda f: next(replies, offer("s1")), lambda f: answer(200))
    driver.run(request_steps(session(clock), GET))
    assert driver.events(rules.ReferralFailed) == [
        rules.ReferralFailed(referral=REFERRAL, reason="500 internal: d")
    ]
    [retried] = driver.events(rules.Retried)
    assert retried.reason == f"referral {REFERRAL}: 500 internal: d"


def test_a_refusal_is_told_as_giving_up() -> None:
    clock = Clock()
    driver = Driver(clock, lambda f: answer(400, "invalid_avoid"), lambda f: answer(200))
    with pytest.raises(ReferralRefused) as caught:
        driver.run(request_steps(session(clock), GET))
    reason = f"referral {REFERRAL}: 400 invalid_avoid: d"
    assert str(caught.value) == f"GET /: {reason}"
    assert driver.events(rules.GaveUp) == [rules.GaveUp(attempts=1, reason=reason)]


def test_a_referral_may_take_the_whole_deadline_and_a_renewal_half_of_it() -> None:
    """A renewal is soft: the old token still works, so it leaves half the time to the request."""
    clock = Clock()
    s = session(clock, deadline=10.0, connect_timeout=8.0, timeout=8.0)
    driver = Driver(clock, lambda f: offer("s1", expires_in=100.0), lambda f: answer(200))
    driver.run(request_steps(s, GET))
    assert s.grant is not None
    clock.now = s.grant.renew_at  # due this very moment
    driver.run(request_steps(s, GET))
    first, renewal = driver.fetches(True)
    assert (first.connect, first.read) == (8.0, 8.0)
    assert (renewal.connect, renewal.read) == (5.0, 5.0)
    assert [e.reason for e in driver.events(Assigned)] == ["first", "renew"]


def test_a_failed_renewal_is_tried_again_once_the_cooldown_has_passed() -> None:
    clock = Clock()
    s = session(clock)
    replies = iter([offer("s1", expires_in=100.0), answer(502)])
    driver = Driver(clock, lambda f: next(replies, offer("s1")), lambda f: answer(200))
    driver.run(request_steps(s, GET))
    clock.now += 85.0
    driver.run(request_steps(s, GET))  # the renewal fails: not again for 10 s
    clock.now = s.renew_not_before
    driver.run(request_steps(s, GET))
    assert len(driver.fetches(True)) == 3


def test_a_token_is_expired_at_its_expiry() -> None:
    clock = Clock()
    s = session(clock)
    driver = Driver(clock, alternating(), lambda f: answer(200))
    driver.run(request_steps(s, GET))
    assert s.grant is not None
    clock.now = s.grant.expires_at
    assert rules.bye_fetch(s) is None  # nothing to say with an expired token
    driver.run(request_steps(s, GET))
    assert [e.reason for e in driver.events(Assigned)] == ["first", "expired"]


def test_the_bye_is_a_short_post_with_the_token() -> None:
    clock = Clock()
    s = session(clock)
    Driver(clock, alternating(), lambda f: answer(200)).run(request_steps(s, GET))
    assert s.grant is not None
    clock.now = s.grant.expires_at - 0.001
    assert rules.bye_fetch(s) == Fetch(
        method="POST",
        url="https://s1.test/.well-known/affinity/bye",
        headers={"Affinity-Token": "tok.s1"},
        connect=rules.BYE_TIMEOUT,
        read=rules.BYE_TIMEOUT,
    )


def test_a_renewal_avoids_nothing() -> None:
    """The call left s1 (421) and s2 had no free connection; the renewal of s2 that follows
    asks to keep s2, avoiding nothing."""
    clock = Clock()
    s = session(clock)
    replies = iter([offer("s1"), offer("s2", expires_in=1.0)])
    driver = Driver(clock, lambda f: next(replies, offer("s2")), lambda f: answer(200))
    driver.run(request_steps(s, GET))

    def server(fetch: Fetch) -> httpx.Response | Failure:
        if fetch.url.startswith("https://s1."):
            return answer(421, "misdirected")
        if len(driver.fetches(False)) == 3:  # s2, the first time: no connection, 0.9 s later
            clock.now += 0.9
            return Failure(httpx.PoolTimeout("busy", request=REQ))
        return answer(200)

    driver.server = server
    assert driver.run(request_steps(s, GET)).status_code == 200
    renewal = driver.fetches(True)[-1]
    assert [e.reason for e in driver.events(Assigned)] == ["first", "failover", "renew"]
    assert [v for k, v in renewal.params if k == "avoid"] == []
