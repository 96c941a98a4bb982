"""The retry budget, property-tested on a fake clock, and ``Retry-After``."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affinity.client.backoff import MAX_RETRY_AFTER, RetryBudget, parse_retry_after
from affinity.errors import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# -- the retry budget --------------------------------------------------------------------------

ops = st.lists(st.tuples(st.sampled_from(["request", "retry"]), st.floats(0.0, 4.0)), max_size=200)


@settings(max_examples=300)
@given(ops=ops, ratio=st.floats(0.0, 1.0), minimum=st.integers(0, 5), window=st.floats(0.5, 20.0))
def test_budget_matches_the_sliding_window_model(
    ops: list[tuple[str, float]], ratio: float, minimum: int, window: float
) -> None:
    """Each retry is granted exactly when retries in the last window stay within the allowance."""
    clock = Clock()
    budget = RetryBudget(ratio=ratio, minimum=minimum, window=window, clock=clock)
    requests: list[float] = []
    granted: list[float] = []
    for op, step in ops:
        clock.now += step
        if op == "request":
            budget.record_request()
            requests.append(clock.now)
            continue
        recent_requests = sum(1 for t in requests if t > clock.now - window)
        recent_retries = sum(1 for t in granted if t > clock.now - window)
        expected = recent_retries + 1 <= max(minimum, ratio * recent_requests)
        assert budget.try_spend() is expected
        if expected:
            granted.append(clock.now)


@given(requests=st.integers(0, 500), ratio=st.floats(0.0, 1.0), minimum=st.integers(0, 10))
def test_budget_bounds_retries_in_a_burst(requests: int, ratio: float, minimum: int) -> None:
    """A fleet-wide outage: every request fails at once; retries stay within the budget."""
    clock = Clock()
    budget = RetryBudget(ratio=ratio, minimum=minimum, clock=clock)
    for _ in range(requests):
        budget.record_request()
    granted = sum(budget.try_spend() for _ in range(requests * 3 + 10))
    assert granted == int(max(minimum, ratio * requests))


def test_budget_refills_as_the_window_slides() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.0, minimum=3, window=10.0, clock=clock)
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]
    clock.now = 9.9
    assert not budget.try_spend()
    clock.now = 10.0
    assert budget.try_spend() and budget.retries == 1


def test_budget_defaults_are_twenty_percent_and_at_least_three() -> None:
    clock = Clock()
    budget = RetryBudget(clock=clock)
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]
    for _ in range(20):
        budget.record_request()
    assert budget.allowance() == pytest.approx(4.0)
    assert budget.try_spend() and not budget.try_spend()


@pytest.mark.parametrize(
    ("kwargs", "key", "message"),
    [
        ({"ratio": -0.1}, "retry_budget_ratio", "expected a ratio >= 0, got -0.1"),
        ({"ratio": math.nan}, "retry_budget_ratio", "expected a ratio >= 0, got nan"),
        ({"minimum": -1}, "retry_budget_min", "expected a count >= 0, got -1"),
        ({"window": 0.0}, "retry_budget_window", "expected a positive number of seconds, got 0.0"),
        ({"window": -1.0}, "retry_budget_window", "expected a positive number of seconds"),
        ({"window": math.inf}, "retry_budget_window", "expected a positive number of seconds"),
    ],
)
def test_budget_refuses_bad_settings(kwargs: dict[str, float], key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        RetryBudget(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key  # exactly: match= would also find it inside a longer key
    assert message in str(info.value)


# -- Retry-After -------------------------------------------------------------------------------

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, 1.0),
        ("3", 3.0),
        (" 2.5 ", 2.5),
        ("-4", 0.0),
        ("99999", MAX_RETRY_AFTER),
        ("nan", 1.0),
        ("soon", 1.0),
        ("Tue, 14 Nov 2023 22:13:50 GMT", 30.0),
        ("Tue, 14 Nov 2023 22:13:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float) -> None:
    assert parse_retry_after(value, now=NOW) == pytest.approx(expected)


def test_an_http_date_is_read_against_the_wall_clock_by_default() -> None:
    assert parse_retry_after("Sat, 01 Jan 2000 00:00:00 GMT") == 0.0
    assert parse_retry_after("Fri, 01 Jan 2999 00:00:00 GMT") == MAX_RETRY_AFTER


def test_a_date_with_no_zone_is_gmt_whatever_the_local_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``-0000`` (RFC 5322: no zone information) is read as GMT, not as the local time."""
    monkeypatch.setenv("TZ", "JST-9")  # a POSIX zone string: no zone database needed
    time.tzset()
    try:
        assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 -0000", now=NOW) == 30.0
    finally:
        monkeypatch.undo()
        time.tzset()


@given(st.text(max_size=40))
def test_parse_retry_after_never_raises(value: str) -> None:
    assert 0.0 <= parse_retry_after(value, now=NOW) <= MAX_RETRY_AFTER
