"""The active checker's rise/fall state machine and scheduling, with a fake sink and fake checks."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from affinity.builtin import health_active
from affinity.builtin.health_active import (
    ActiveHealthChecker,
    CheckResult,
    Hysteresis,
    _State,
    affinity_make_health_source,
    parse_answer,
    status_of,
)
from affinity.config import Config, HealthSettings
from affinity.errors import ConfigError
from affinity.models import HealthStatus, Load, Server
from affinity.testing import Deployment

OK = CheckResult(ok=True, status=HealthStatus.PASSING)
FAIL = CheckResult(ok=False, reason="ConnectError: refused")


def server(sid: str = "s1", url: str = "https://s1.example.test") -> Server:
    return Server(id=sid, service="web", url=url)


@dataclass
class FakeSink:
    """Records every observation, as the referral's table would receive it."""

    listed: list[Server] = field(default_factory=lambda: [server()])
    calls: list[tuple[str, HealthStatus, dict[str, Any]]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def servers(self) -> Iterable[Server]:
        return list(self.listed)

    def set_health(self, server_id: str, status: HealthStatus, **kwargs: Any) -> None:
        self.calls.append((server_id, status, kwargs))
        self.changed.set()

    def statuses(self) -> list[HealthStatus]:
        return [status for _, status, _ in self.calls]

    async def wait_calls(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.calls) < count:
                self.changed.clear()
                await self.changed.wait()


class ScriptedChecker(ActiveHealthChecker):
    """Answers checks from a script; optionally holds each check until released."""

    def __init__(self, settings: HealthSettings, script: Iterable[CheckResult] = ()) -> None:
        super().__init__(settings)
        self.script: Iterator[CheckResult] = iter(script)
        self.gate: asyncio.Event | None = None
        self.inflight = self.peak = self.started = 0
        self.began = asyncio.Event()

    async def check(self, server: Server) -> CheckResult:
        self.inflight += 1
        self.started += 1
        self.peak = max(self.peak, self.inflight)
        self.began.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
            return next(self.script, OK)
        finally:
            self.inflight -= 1


def settings(**kwargs: Any) -> HealthSettings:
    values: dict[str, Any] = {"interval": 10.0, "fast_interval": 10.0, "jitter": 0.0}
    return HealthSettings(**{**values, **kwargs})


def record(checker: ActiveHealthChecker, results: Iterable[CheckResult]) -> FakeSink:
    """Feed results straight into the state machine, as the checking task would."""
    sink = FakeSink()
    state = _State(
        server=server(), counter=Hysteresis(checker.settings.rise, checker.settings.fall)
    )
    for result in results:
        checker._record(state, result, sink)
    return sink


# -- the state machine ------------------------------------------------------------


def test_fall_two_needs_two_failures_in_a_row() -> None:
    counter = Hysteresis(rise=2, fall=2)
    assert counter.feed(False) is False and counter.up and counter.changing
    assert counter.feed(True) is False and counter.up and not counter.changing
    assert counter.feed(False) is False and counter.up
    assert counter.feed(False) is True and not counter.up and not counter.changing


def test_rise_two_needs_two_good_checks_in_a_row() -> None:
    counter = Hysteresis(rise=2, fall=1, up=False)
    assert counter.feed(True) is False and not counter.up and counter.changing
    assert counter.feed(False) is False and not counter.up
    assert counter.feed(True) is False and not counter.up
    assert counter.feed(True) is True and counter.up


def test_alternating_results_never_flip_the_state() -> None:
    counter = Hysteresis(rise=2, fall=2)
    assert not any(counter.feed(i % 2 == 0) for i in range(100))
    assert counter.up


@pytest.mark.parametrize(("rise", "fall"), [(1, 1), (2, 3), (3, 2), (5, 5)])
def test_thresholds_are_exact(rise: int, fall: int) -> None:
    counter = Hysteresis(rise=rise, fall=fall)
    flips = [counter.feed(False) for _ in range(fall)]
    assert flips == [False] * (fall - 1) + [True]
    flips = [counter.feed(True) for _ in range(rise)]
    assert flips == [False] * (rise - 1) + [True]


def test_reported_statuses_follow_rise_and_fall() -> None:
    checker = ActiveHealthChecker(settings(rise=2, fall=2))
    sink = record(checker, [OK, FAIL, OK, FAIL, FAIL, OK, FAIL, OK, OK, OK])
    P, C = HealthStatus.PASSING, HealthStatus.CRITICAL
    assert sink.statuses() == [P, P, P, P, C, C, C, C, P, P]


def test_failures_are_marked_and_keep_their_reason() -> None:
    checker = ActiveHealthChecker(settings())
    sink = record(checker, [FAIL, OK])
    (_, _, failed), (_, _, good) = sink.calls
    assert failed["failed"] is True and failed["reason"] == "ConnectError: refused"
    assert failed["draining"] is None, "a failed check says nothing about draining"
    assert good["failed"] is False


def test_draining_and_warning_apply_at_once() -> None:
    checker = ActiveHealthChecker(settings(rise=2, fall=2))
    draining = CheckResult(ok=True, status=HealthStatus.PASSING, draining=True)
    warning = CheckResult(ok=True, status=HealthStatus.WARNING)
    sink = record(checker, [draining, warning])
    assert sink.calls[0][1] is HealthStatus.PASSING and sink.calls[0][2]["draining"] is True
    assert sink.calls[1][1] is HealthStatus.WARNING


def test_status_of_a_server_that_is_down_is_critical_whatever_it_says() -> None:
    assert status_of(False, OK) is HealthStatus.CRITICAL
    assert status_of(True, FAIL) is HealthStatus.PASSING
    assert status_of(True, CheckResult(ok=True, status=HealthStatus.WARNING)) is (
        HealthStatus.WARNING
    )


# -- answers ------------------------------------------------------------------------


def test_parse_answer_maps_consul_codes() -> None:
    body = (
        b'{"status": "passing", "draining": false, "load": {"active_clients": 3, "inflight": 1,'
        b' "capacity": 10, "queue": 2.5, "bad": "x", "flag": true}}'
    )
    result = parse_answer(200, body)
    assert result.ok and result.status is HealthStatus.PASSING and not result.draining
    assert result.load == Load(clients=3, inflight=1, capacity=10, extra={"queue": 2.5})
    drain = parse_answer(429, b'{"status": "passing", "draining": true}')
    assert drain.ok and drain.draining and drain.status is HealthStatus.PASSING
    warn = parse_answer(429, b'{"status": "warning"}')
    assert warn.ok and warn.status is HealthStatus.WARNING and not warn.draining
    for code, body in [(503, b"{}"), (500, b"oops"), (404, b"")]:
        bad = parse_answer(code, body)
        assert not bad.ok and f"HTTP {code}" in bad.reason


@pytest.mark.parametrize(
    "body", [b"", b"[]", b"not json", b'{"load": [1]}', b'{"load": {"x": null}}']
)
def test_odd_bodies_do_not_break_the_checker(body: bytes) -> None:
    result = parse_answer(200, body)
    assert result.ok and result.status is HealthStatus.PASSING


def test_parse_answer_reads_load_format_2() -> None:
    body = orjson.dumps(
        {
            "status": "passing",
            "load_format": 2,
            "load": {
                "clients": 2.75,
                "active_clients": 3,
                "inflight": 4,
                "rps": 12.5,
                "bytes_per_s": 1e6,
                "capacity": 10,
                "capacity_inflight": 8,
                "capacity_bytes_per_s": 5e6,
                "queue": 1.0,
            },
        }
    )
    assert parse_answer(200, body).load == Load(
        clients=2.75,
        inflight=4,
        rps=12.5,
        bytes_per_s=1e6,
        capacity=10,
        capacity_inflight=8,
        capacity_bytes_per_s=5e6,
        extra={"queue": 1.0},
    )


def test_a_format_1_answer_reads_active_clients_as_clients() -> None:
    """A server not yet upgraded: its whole-client count, and no other format 2 figure."""
    body = b'{"load": {"active_clients": 7, "clients": 99.0, "rps": 3.0, "inflight": 1}}'
    load = parse_answer(200, body).load
    assert load is not None and load.clients == 7.0 and load.inflight == 1


def test_negative_or_odd_load_figures_count_as_zero() -> None:
    body = b'{"load": {"active_clients": -4, "inflight": 1.5, "capacity": true}}'
    assert parse_answer(200, body).load == Load()
    odd = orjson.dumps(
        {"load_format": 2, "load": {"clients": -1.0, "rps": "x", "bytes_per_s": False}}
    )
    assert parse_answer(200, odd).load == Load()


async def test_a_timeout_is_a_failed_check_with_its_latency() -> None:
    def hang(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(hang))
    checker = ActiveHealthChecker(settings(timeout=0.5), client=client)
    try:
        result = await checker.check(server())
    finally:
        await checker.aclose()
    assert not result.ok and "no answer within 0.5s" in result.reason
    assert result.latency is not None and result.latency >= 0


async def test_a_check_reads_the_health_endpoint() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        body = orjson.dumps({"status": "passing", "load": {"active_clients": 2}})
        return httpx.Response(200, stream=httpx.ByteStream(body))

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    checker = ActiveHealthChecker(settings(), client=client)
    try:
        result = await checker.check(server())
    finally:
        await checker.aclose()
    assert seen == ["https://s1.example.test/.well-known/affinity/health"]
    assert result.ok and result.load is not None and result.load.clients == 2


# -- scheduling -------------------------------------------------------------------------


def test_checks_come_faster_while_the_state_is_changing() -> None:
    checker = ActiveHealthChecker(settings(interval=1.0, fast_interval=0.25, jitter=0.1))
    state = _State(server=server(), counter=Hysteresis(2, 2))
    steady = [checker._delay(state) for _ in range(200)]
    assert min(steady) >= 0.9 and max(steady) <= 1.1
    state.counter.feed(False)
    changing = [checker._delay(state) for _ in range(200)]
    assert min(changing) >= 0.225 and max(changing) <= 0.275
    slow_fast = ActiveHealthChecker(settings(interval=0.2, fast_interval=0.25))
    assert slow_fast._delay(state) == pytest.approx(0.2), "fast is never slower than interval"


async def test_at_most_one_check_in_flight_and_an_avoid_during_a_check_is_kept() -> None:
    checker = ScriptedChecker(settings(recheck_interval=0.0))
    checker.gate = asyncio.Event()
    sink = FakeSink()
    runner = asyncio.create_task(checker.run(sink))
    try:
        await asyncio.wait_for(checker.began.wait(), 5)
        for _ in range(50):  # a burst of avoids while the first check hangs
            checker.recheck("s1")
            await asyncio.sleep(0)
        assert checker.inflight == 1 and checker.started == 1
        checker.gate.set()
        # The interval is 10 s: only the avoid received during the check explains a second one.
        await sink.wait_calls(2)
        assert checker.peak == 1
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await checker.aclose()


async def test_rechecks_are_rate_limited_per_server() -> None:
    checker = ScriptedChecker(settings(recheck_interval=30.0))
    sink = FakeSink(listed=[server("s1"), server("s2", "https://s2.example.test")])
    runner = asyncio.create_task(checker.run(sink))
    try:
        await sink.wait_calls(2)  # the first check of each server
        states = checker._states
        checker.recheck("s1")
        assert states["s1"].wake.is_set()
        await sink.wait_calls(3)
        assert not states["s1"].wake.is_set()
        checker.recheck("s1")
        assert not states["s1"].wake.is_set(), "a second avoid within recheck_interval is ignored"
        checker.recheck("s2")
        assert states["s2"].wake.is_set(), "the limit is per server"
        checker.recheck("unknown")  # never an error
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await checker.aclose()


async def test_fall_by_the_scheduler_uses_the_fast_interval() -> None:
    checker = ScriptedChecker(
        settings(interval=0.01, fast_interval=0.01, rise=2, fall=3), [OK, FAIL, FAIL, FAIL]
    )
    sink = FakeSink()
    runner = asyncio.create_task(checker.run(sink))
    try:
        await sink.wait_calls(1, timeout=2.0)  # up; its next check is already scheduled
        checker.settings = settings(interval=10.0, fast_interval=0.01, rise=2, fall=3)
        # The first failure would wait 10 s without the fast interval.
        await sink.wait_calls(4, timeout=2.0)
        assert sink.statuses() == [
            HealthStatus.PASSING,
            HealthStatus.PASSING,
            HealthStatus.PASSING,
            HealthStatus.CRITICAL,
        ]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await checker.aclose()


async def test_the_first_check_decides_alone() -> None:
    """A server nobody has checked is not assumed up: one failed first check is critical."""
    for first, expected in ((FAIL, HealthStatus.CRITICAL), (OK, HealthStatus.PASSING)):
        checker = ScriptedChecker(settings(interval=10.0, rise=2, fall=2), [first])
        sink = FakeSink()
        runner = asyncio.create_task(checker.run(sink))
        try:
            await sink.wait_calls(1, timeout=2.0)
            assert sink.statuses() == [expected]
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await checker.aclose()


async def test_a_removed_server_stops_after_its_check_without_reporting() -> None:
    checker = ScriptedChecker(settings())
    checker.gate = asyncio.Event()
    sink = FakeSink()
    runner = asyncio.create_task(checker.run(sink))
    try:
        await asyncio.wait_for(checker.began.wait(), 5)
        task = checker._states["s1"].task
        assert task is not None
        sink.listed = []
        checker._sync(sink)  # what the run loop does every SYNC_INTERVAL
        assert "s1" not in checker._states
        assert not task.done(), "the check in flight is not cancelled mid-request"
        checker.gate.set()
        await asyncio.wait_for(task, 5)
        assert not task.cancelled() and sink.calls == []
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await checker.aclose()


async def test_the_hook_provides_the_active_checker_only() -> None:
    config = Config()
    source = affinity_make_health_source(name="active", config=config)
    assert isinstance(source, ActiveHealthChecker)
    await source.aclose()
    assert affinity_make_health_source(name="consul", config=config) is None


# -- exact outcomes -----------------------------------------------------------------------


def test_the_first_result_flips_an_unknown_state_only_when_it_disagrees() -> None:
    assert Hysteresis(rise=2, fall=2, up=True, known=False).feed(True) is False
    fresh = Hysteresis(rise=2, fall=2, up=True, known=False)
    assert fresh.feed(False) is True and not fresh.up and fresh.known


@pytest.mark.parametrize(
    ("code", "body", "expected"),
    [
        (200, b'{"status": "warning"}', CheckResult(ok=True, status=HealthStatus.PASSING)),
        (
            200,
            b'{"draining": true, "load": {"inflight": 2}}',
            CheckResult(
                ok=True,
                status=HealthStatus.PASSING,
                draining=True,
                load=Load(inflight=2),
                reason="draining",
            ),
        ),
        (
            429,
            b'{"draining": true}',
            CheckResult(ok=True, status=HealthStatus.PASSING, draining=True, reason="draining"),
        ),
        (
            429,
            b'{"draining": true, "status": "warning"}',
            CheckResult(ok=True, status=HealthStatus.WARNING, draining=True, reason="draining"),
        ),
        (
            429,
            b'{"draining": true, "status": "sideways"}',
            CheckResult(ok=True, status=HealthStatus.PASSING, draining=True, reason="draining"),
        ),
        (
            429,
            b'{"status": "warning", "load": {"capacity": 4}}',
            CheckResult(
                ok=True,
                status=HealthStatus.WARNING,
                load=Load(capacity=4),
                reason="server reports warning",
            ),
        ),
        (503, b'{"draining": true}', CheckResult(ok=False, reason="health answered HTTP 503")),
        (
            429,
            b'{"draining": "yes"}',
            CheckResult(ok=True, status=HealthStatus.WARNING, reason="server reports warning"),
        ),
    ],
)
def test_each_answer_maps_to_one_exact_result(
    code: int, body: bytes, expected: CheckResult
) -> None:
    assert parse_answer(code, body) == expected


def test_load_figures_left_out_count_as_zero() -> None:
    assert parse_answer(200, b'{"load": {"active_clients": 3}}').load == Load(clients=3)
    answer = b'{"load_format": 2, "load": {"clients": 2.5}}'
    assert parse_answer(200, answer).load == Load(clients=2.5)


def test_fractions_below_one_are_kept() -> None:
    """A decayed client count or a rate below one is a figure, not noise."""
    answer = b'{"load_format": 2, "load": {"clients": 0.5, "rps": 0.25, "bytes_per_s": 0.75}}'
    assert parse_answer(200, answer).load == Load(clients=0.5, rps=0.25, bytes_per_s=0.75)


class Clock:
    """A monotonic clock the test moves by hand (the module's ``time``)."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


class Dripping(httpx.AsyncByteStream):
    """A body in chunks; the clock moves to the given time before each chunk."""

    def __init__(self, chunks: list[tuple[float, bytes]], clock: Clock) -> None:
        self.chunks, self.clock, self.read = chunks, clock, 0

    async def __aiter__(self) -> Any:
        for at, chunk in self.chunks:
            self.clock.now = at
            self.read += 1
            yield chunk


async def check_answer(
    response: httpx.Response, monkeypatch: pytest.MonkeyPatch, clock: Clock | None = None
) -> CheckResult:
    """One check of s1 whose health endpoint gives ``response``."""
    if clock is not None:
        monkeypatch.setattr(health_active, "time", clock)
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: response))
    checker = ActiveHealthChecker(settings(timeout=0.5), client=client)
    try:
        return await checker.check(server())
    finally:
        await checker.aclose()


TOO_LARGE = CheckResult(ok=False, reason="health answer larger than 64 KiB")


async def test_a_declared_oversized_answer_is_refused_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    body = Dripping([(100.0, b"{}")], clock)
    headers = {"content-length": str(health_active.MAX_BODY + 1)}
    result = await check_answer(
        httpx.Response(200, headers=headers, stream=body), monkeypatch, clock
    )
    assert result == CheckResult(ok=False, reason=TOO_LARGE.reason, latency=0.0)
    assert body.read == 0


async def test_an_answer_growing_past_the_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    half = b" " * (health_active.MAX_BODY // 2)
    clock = Clock()
    body = Dripping([(100.0, half), (100.0, half), (100.0, b" ")], clock)
    result = await check_answer(httpx.Response(200, stream=body), monkeypatch, clock)
    assert result == CheckResult(ok=False, reason=TOO_LARGE.reason, latency=0.0)


async def test_an_answer_of_exactly_the_cap_is_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    document = b'{"load": {"inflight": 7}}'
    padded = document + b" " * (health_active.MAX_BODY - len(document))
    clock = Clock()
    chunks = [(100.0, padded[:1000]), (100.1, padded[1000:])]
    headers = {"content-length": str(len(padded))}
    response = httpx.Response(200, headers=headers, stream=Dripping(chunks, clock))
    result = await check_answer(response, monkeypatch, clock)
    assert result.ok and result.load == Load(inflight=7), "both chunks were kept"
    assert result.latency == pytest.approx(0.1)


async def test_an_answer_still_dripping_after_twice_the_timeout_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """timeout = 0.5 s: the body may take until 1 s after the check began, no longer."""
    clock = Clock()
    in_time = Dripping([(100.4, b"{"), (101.0, b"}")], clock)  # at the deadline: in time
    assert (await check_answer(httpx.Response(200, stream=in_time), monkeypatch, clock)).ok
    clock = Clock()
    late = Dripping([(100.5, b"{"), (101.25, b" "), (101.5, b"}")], clock)
    result = await check_answer(httpx.Response(200, stream=late), monkeypatch, clock)
    assert result == CheckResult(
        ok=False, reason="health answer still arriving after the check's time", latency=1.25
    )
    assert late.read == 2, "reading stops at the chunk past the deadline"


async def test_a_timeout_and_a_refusal_say_which_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(exc: type[httpx.TransportError], message: str) -> Any:
        def handler(request: httpx.Request) -> httpx.Response:
            raise exc(message, request=request)

        return handler

    for handler, reason in [
        (fail(httpx.ReadTimeout, "slow"), "ReadTimeout: no answer within 0.5s"),
        (fail(httpx.ConnectError, "refused"), "ConnectError: refused"),
        (fail(httpx.ConnectError, "x" * 300), "ConnectError: " + "x" * 186),
    ]:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        checker = ActiveHealthChecker(settings(timeout=0.5), client=client)
        try:
            result = await checker.check(server())
        finally:
            await checker.aclose()
        assert (result.ok, result.reason) == (False, reason)
        assert len(result.reason) <= 200


async def test_a_check_asks_for_the_answer_uncompressed() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, stream=httpx.ByteStream(b"{}"))

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    checker = ActiveHealthChecker(settings(), client=client)
    try:
        assert (await checker.check(server())).ok
    finally:
        await checker.aclose()
    assert [(r.method, r.headers["accept-encoding"]) for r in seen] == [("GET", "identity")]


def test_the_checker_client_times_out_after_the_setting() -> None:
    checker = ActiveHealthChecker(settings(timeout=0.75))
    assert checker._client.timeout == httpx.Timeout(0.75)


def test_the_checker_client_keeps_a_connection_per_server_and_caps_none() -> None:
    """Every server of a large fleet is checked at once, and keeps its connection between checks.

    httpx's defaults (100 connections, 20 kept) would queue the checks of a fleet
    of 150 behind each other and open most connections again every round.
    """
    checker = ActiveHealthChecker(settings())
    pool = checker._client._transport._pool  # type: ignore[attr-defined]
    assert (pool._max_connections, pool._max_keepalive_connections) == (sys.maxsize, 1000)


@pytest.mark.parametrize("source", [None, "affinity.toml"])
def test_a_ca_file_that_cannot_be_loaded_names_the_setting_and_its_file(
    tmp_path: Path, source: str | None
) -> None:
    missing = tmp_path / "missing-ca.pem"
    with pytest.raises(ConfigError) as raised:
        if source is None:
            ActiveHealthChecker(settings(ca_file=missing))
        else:
            ActiveHealthChecker(settings(ca_file=missing), source=source)
    assert (raised.value.key, raised.value.source) == ("health.ca_file", source)
    reason = "No such file or directory"
    assert raised.value.message == f"cannot load CA file {str(missing)!r}: {reason}"


def test_a_flip_is_logged_with_the_server_and_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    checker = ActiveHealthChecker(settings(rise=1, fall=1))
    with caplog.at_level("WARNING", logger="affinity.plugin.health"):
        record(checker, [FAIL, OK, OK])
    assert [r.getMessage() for r in caplog.records] == [
        "server s1 is down: ConnectError: refused",
        "server s1 is up: answering",
    ]


def test_the_sink_gets_the_load_and_latency_of_each_check() -> None:
    checker = ActiveHealthChecker(settings())
    measured = CheckResult(ok=True, status=HealthStatus.PASSING, load=Load(inflight=3))
    measured.latency = 0.125
    sink = record(checker, [measured])
    assert sink.calls == [
        (
            "s1",
            HealthStatus.PASSING,
            {
                "load": Load(inflight=3),
                "draining": False,
                "reason": "",
                "latency": 0.125,
                "failed": False,
            },
        )
    ]


def test_a_recheck_exactly_recheck_interval_later_wakes_the_checker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(health_active, "time", clock)
    checker = ActiveHealthChecker(settings(recheck_interval=30.0))
    state = _State(server=server(), counter=Hysteresis(2, 2))
    checker._states["s1"] = state
    checker.recheck("s1")
    assert state.wake.is_set()
    state.wake.clear()
    clock.now = 129.9
    checker.recheck("s1")
    assert not state.wake.is_set()
    clock.now = 130.0
    checker.recheck("s1")
    assert state.wake.is_set()


def test_delays_spread_on_both_sides_of_the_interval() -> None:
    checker = ActiveHealthChecker(settings(interval=1.0, jitter=0.1))
    state = _State(server=server(), counter=Hysteresis(2, 2))
    delays = [checker._delay(state) for _ in range(200)]
    assert min(delays) < 1.0 < max(delays)


async def test_the_first_checks_start_within_interval_times_jitter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    drawn: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return 0.0

    monkeypatch.setattr("affinity.builtin.health_active.random.uniform", uniform)
    checker = ScriptedChecker(settings(interval=10.0, jitter=0.2))
    sink = FakeSink()
    runner = asyncio.create_task(checker.run(sink))
    try:
        await sink.wait_calls(1)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await checker.aclose()
    assert drawn[0] == (0.0, 2.0)


async def test_the_checking_tasks_run_real_checks_and_end_with_the_checker() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(b'{"load": {"inflight": 1}}'))

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    checker = ActiveHealthChecker(settings(), client=client)
    sink = FakeSink()
    runner = asyncio.create_task(checker.run(sink))
    try:
        await sink.wait_calls(1)
        task = checker._states["s1"].task
        assert task is not None and task.get_name() == "affinity.check.s1"
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await checker.aclose()
    assert sink.calls[0][1] is HealthStatus.PASSING
    assert sink.calls[0][2]["load"] == Load(inflight=1)
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled(), "stopping the checker cancels its checking tasks"


async def test_a_server_whose_url_changes_gets_a_new_checker() -> None:
    checker = ScriptedChecker(settings())
    checker.gate = asyncio.Event()
    sink = FakeSink()
    try:
        checker._sync(sink)
        first = checker._states["s1"]
        checker._sync(sink)
        assert checker._states["s1"] is first, "an unchanged server keeps its checker"
        sink.listed = [server(url="https://s1-new.example.test")]
        checker._sync(sink)
        assert first.stopped and checker._states["s1"] is not first
        assert checker._states["s1"].server.url == "https://s1-new.example.test"
    finally:
        for state in checker._states.values():
            if state.task is not None:
                state.task.cancel()
        first.task and first.task.cancel()
        await checker.aclose()


async def test_rise_by_the_scheduler_needs_rise_good_checks() -> None:
    checker = ScriptedChecker(settings(interval=0.01, fast_interval=0.01, rise=2), [FAIL, OK, OK])
    sink = FakeSink()
    runner = asyncio.create_task(checker.run(sink))
    try:
        await sink.wait_calls(3, timeout=2.0)
        C, P = HealthStatus.CRITICAL, HealthStatus.PASSING
        assert sink.statuses()[:3] == [C, C, P]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await checker.aclose()


def test_a_check_over_real_tls_trusts_the_configured_ca_only(tmp_path: Path) -> None:
    """The checker verifies app servers against ``ca_file``, not the system's CAs."""
    with Deployment(tmp_path, health="sources = []") as d:
        d.start_server("s1")
        target = Server(id="s1", service="web", url=d.server_urls["s1"])

        async def check(health: HealthSettings) -> CheckResult:
            checker = ActiveHealthChecker(health)
            try:
                return await checker.check(target)
            finally:
                await checker.aclose()

        trusted = asyncio.run(check(settings(ca_file=d.ca)))
        assert trusted.ok and trusted.status is HealthStatus.PASSING, trusted.reason
        untrusted = asyncio.run(check(settings()))
        assert not untrusted.ok and "ConnectError" in untrusted.reason
