"""Full-jitter back-off (affinity.backoff), property-tested."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from affinity.backoff import Backoff

bases = st.floats(0.001, 1.0)
caps = st.floats(0.001, 60.0)


@given(base=bases, extra=caps, retry=st.integers(-5, 100_000), seed=st.integers(0, 2**32))
def test_delay_is_within_full_jitter_bounds(
    base: float, extra: float, retry: int, seed: int
) -> None:
    backoff = Backoff(base=base, cap=base + extra)
    delay = backoff.delay(retry, random.Random(seed))
    # 2**64 times the smallest base is far above the largest cap (and 2.0**1024 overflows).
    ceiling = backoff.cap if retry > 64 else min(backoff.cap, base * 2.0 ** max(retry, 0))
    assert 0.0 <= delay <= ceiling


@given(base=bases, extra=caps, retry=st.integers(0, 200))
def test_ceiling_doubles_until_the_cap(base: float, extra: float, retry: int) -> None:
    backoff = Backoff(base=base, cap=base + extra)
    assert backoff.ceiling(retry) <= backoff.ceiling(retry + 1) <= backoff.cap
    if backoff.ceiling(retry + 1) < backoff.cap:
        assert backoff.ceiling(retry + 1) == pytest.approx(2 * backoff.ceiling(retry))


def test_delays_spread_over_the_whole_range() -> None:
    """Full jitter, not "exponential plus a little": the mean is about half the ceiling."""
    backoff, rng = Backoff(base=0.05, cap=2.0), random.Random(1)
    delays = [backoff.delay(10, rng) for _ in range(2000)]
    assert min(delays) < 0.1 and max(delays) > 1.9
    assert statistics.mean(delays) == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize(
    ("base", "cap", "key"),
    [(0, 1, "base"), (math.inf, math.inf, "base"), (1, 0.5, "cap"), (1, math.nan, "cap")],
)
def test_backoff_refuses_bad_arguments(base: float, cap: float, key: str) -> None:
    with pytest.raises(ValueError, match=f"^{key}: "):
        Backoff(base=base, cap=cap)


def test_a_cap_equal_to_the_base_is_allowed() -> None:
    assert Backoff(base=0.5, cap=0.5).ceiling(10) == 0.5


def test_delay_without_a_random_source_uses_the_module_one() -> None:
    backoff = Backoff(base=0.1, cap=0.4)
    delays = {backoff.delay(5) for _ in range(50)}
    assert all(0.0 <= d <= 0.4 for d in delays) and len(delays) > 1


def test_delay_draws_from_the_random_source_given() -> None:
    """An injected generator makes the waits reproducible (the client's tests rely on it)."""
    backoff = Backoff(base=0.1, cap=0.4)
    assert backoff.delay(5, random.Random(3)) == random.Random(3).uniform(0.0, 0.4)
