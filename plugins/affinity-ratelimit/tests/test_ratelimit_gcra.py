"""GCRA arithmetic and the bounded table, on a fake clock (integer nanoseconds, no sleeps)."""

from __future__ import annotations

import math

import pytest
from affinity_ratelimit.gcra import NS, Cell, Decision, GcraTable
from hypothesis import given, settings
from hypothesis import strategies as st

examples = settings(database=None, deadline=None, max_examples=60)

_rates = st.floats(min_value=0.2, max_value=200.0, allow_nan=False, allow_infinity=False)
_bursts = st.integers(min_value=1, max_value=50)
_spans = st.floats(min_value=0.0, max_value=30.0, allow_nan=False, allow_infinity=False)


def greedy_count(rate: float, burst: int, span: float) -> int:
    """Admissions over [0, span] for a client that asks again the instant it may."""
    table, cell = GcraTable(10), Cell.of(rate, burst)
    end, now, admitted = round(span * NS), 0, 0
    while now <= end:
        decision = table.admit("k", cell, now)
        if decision.allowed:
            admitted += 1
        else:
            assert decision.wait_ns > 0
            now += decision.wait_ns
    return admitted


@examples
@given(_rates, _bursts, _spans)
def test_greedy_client_gets_burst_plus_rate_times_t(rate: float, burst: int, span: float) -> None:
    assert abs(greedy_count(rate, burst, span) - (burst + rate * span)) <= 1


@pytest.mark.parametrize("span", [0.5, 1.0, 2.5, 10.0])
def test_flood_every_millisecond_rate_50_burst_10(span: float) -> None:
    # Test plan L1: rate 50/s, burst 10, a flood of 1000/s (20x the limit).
    table, cell = GcraTable(10), Cell.of(50, 10)
    arrivals = range(0, round(span * NS) + 1, 1_000_000)
    admitted = sum(table.admit("ip", cell, now).allowed for now in arrivals)
    assert abs(admitted - (10 + 50 * span)) <= 1


@examples
@given(_rates, _bursts, st.lists(st.integers(0, 20 * NS), min_size=1, max_size=150))
def test_no_window_ever_admits_more_than_burst_plus_rate_times_its_length(
    rate: float, burst: int, arrivals: list[int]
) -> None:
    table, cell = GcraTable(10), Cell.of(rate, burst)
    admitted = [t for t in sorted(arrivals) if table.admit("k", cell, t).allowed]
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            length = (admitted[j] - start) / NS
            assert j - i + 1 <= burst + rate * length + 1


@examples
@given(_rates, _bursts, st.integers(0, 10 * NS))
def test_wait_is_exact(rate: float, burst: int, start: int) -> None:
    table, cell = GcraTable(10), Cell.of(rate, burst)
    now = start
    while (decision := table.admit("k", cell, now)).allowed:
        pass
    assert decision.remaining == 0
    assert decision.reset_ns >= decision.wait_ns
    assert not table.admit("k", cell, now + decision.wait_ns - 1).allowed
    assert table.admit("k", cell, now + decision.wait_ns).allowed


def test_remaining_and_reset_count_down() -> None:
    table, cell = GcraTable(10), Cell.of(1, 3)
    answers = [table.admit("k", cell, 0) for _ in range(4)]
    assert [a.allowed for a in answers] == [True, True, True, False]
    assert [a.remaining for a in answers] == [2, 1, 0, 0]
    assert [a.reset_ns for a in answers[:3]] == [NS, 2 * NS, 3 * NS]
    assert answers[3].wait_ns == NS
    assert answers[3].reset_ns == 3 * NS


def test_keys_are_independent() -> None:
    table, cell = GcraTable(10), Cell.of(1, 1)
    assert table.admit("a", cell, 0).allowed
    assert not table.admit("a", cell, 0).allowed
    assert table.admit("b", cell, 0).allowed


def test_a_million_distinct_keys_keep_the_table_at_max_keys() -> None:
    table, cell = GcraTable(max_keys=100_000), Cell.of(1, 1)
    for i in range(1_000_000):
        assert table.admit(i, cell, 0).allowed  # every key is new, so every key is admitted
    assert len(table) == 100_000
    # The survivors are the most recent keys: the oldest were evicted first.
    assert not table.admit(999_999, cell, 0).allowed
    assert table.admit(0, cell, 0).allowed


def test_evicting_expired_entries_loses_nothing() -> None:
    table, cell = GcraTable(max_keys=2), Cell.of(1, 1)
    table.admit("a", cell, 0)
    table.admit("b", cell, 0)
    table.admit("c", cell, 5 * NS)  # evicts "a", whose TAT (1 s) has passed
    assert table.evicted_active == 0
    table.admit("d", cell, 5 * NS)  # evicts "b": also stale
    table.admit("e", cell, 5 * NS)  # evicts "c", which is still limited
    assert table.evicted_active == 1
    assert len(table) == 2


def test_recently_used_keys_survive_eviction() -> None:
    table, cell = GcraTable(max_keys=2), Cell.of(1, 1)
    table.admit("a", cell, 0)
    table.admit("b", cell, 0)
    table.admit("a", cell, 0)  # refused, but touched: "b" is now the oldest
    table.admit("c", cell, 0)
    assert not table.admit("a", cell, 0).allowed  # "a" kept its state


def test_cell_rounds_the_interval_to_a_nanosecond() -> None:
    assert Cell.of(50, 10) == Cell(interval_ns=20_000_000, burst=10)
    assert Cell.of(3, 1).interval_ns == 333_333_333
    assert Cell.of(1e9, 1).interval_ns == 1
    assert Cell.of(0.5, 2).tolerance_ns == 4 * NS


def test_table_needs_room_for_one_key() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        GcraTable(0)


def test_greedy_count_matches_the_closed_form_for_whole_seconds() -> None:
    assert greedy_count(50, 10, 10) == 510
    assert greedy_count(1, 1, 0) == 1
    assert greedy_count(0.5, 3, 9.99) == 3 + math.floor(0.5 * 9.99)


def test_an_admitted_decision_counts_what_is_left() -> None:
    """Rate 1/s, burst 3: each admission uses one request of the burst and adds 1 s to wait out."""
    table, cell, now = GcraTable(10), Cell.of(1.0, 3), 5 * NS
    assert table.admit("k", cell, now) == Decision(True, 2, 0, NS)
    assert table.admit("k", cell, now) == Decision(True, 1, 0, 2 * NS)
    assert table.admit("k", cell, now + NS // 2) == Decision(True, 0, 0, 5 * NS // 2)


def test_a_table_of_one_key_evicts_without_counting_a_full_allowance() -> None:
    """A TAT at ``now`` is an allowance already full again: evicting it loses nothing."""
    table, cell = GcraTable(1), Cell.of(1.0, 1)
    assert table.take("a", cell, 0) is None  # a's TAT: 1 s
    assert table.take("b", cell, NS) is None  # at 1 s: a is evicted, its allowance full
    assert len(table) == 1 and table.evicted_active == 0
    assert table.take("a", cell, NS) is None  # b's TAT (2 s) is still ahead
    assert table.evicted_active == 1
