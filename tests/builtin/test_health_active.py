"""The active checker's rise/fall state machine and scheduling, with a fake sink and fake checks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

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
from affinity.models import HealthStatus, Load, Server

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
