"""The retry budget, property-tested on a fake clock, and ``Retry-After``."""

from __future__ import annotations

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


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"ratio": -0.1}, "retry_budget_ratio"), ({"minimum": -1}, "retry_budget_min")],
)
def test_budget_refuses_bad_settings(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        RetryBudget(**kwargs)  # type: ignore[arg-type]


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


@given(st.text(max_size=40))
def test_parse_retry_after_never_raises(value: str) -> None:
    assert 0.0 <= parse_retry_after(value, now=NOW) <= MAX_RETRY_AFTER
