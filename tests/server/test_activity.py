"""The decaying client count an app server reports as its load."""

from __future__ import annotations

import math
import sys

import pytest

from affinity.server.activity import FORGET_BELOW, DecayingClients, Rates


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def clients(
    half_life: float = 30.0, window: float = 300.0, limit: int = 100
) -> tuple[DecayingClients, Clock]:
    clock = Clock()
    return DecayingClients(half_life, window, limit, clock=clock), clock


def test_a_client_weighs_one_right_after_a_request() -> None:
    active, _ = clients()
    active.touch("a")
    assert active.weight() == 1.0
    active.touch("a")
    assert active.weight() == 1.0  # the same client twice is still one
    assert len(active) == 1 and "a" in active and "b" not in active


def test_a_silent_client_falls_below_half_within_two_half_lives() -> None:
    active, clock = clients(half_life=30.0)
    active.touch("a")
    clock.now += 30.0
    assert active.weight() == pytest.approx(0.5)
    clock.now += 0.001
    assert active.weight() < 0.5
    clock.now += 30.0
    assert active.weight() == pytest.approx(0.25, rel=1e-3)


def test_the_count_is_the_sum_of_each_clients_decayed_weight() -> None:
    active, clock = clients(half_life=10.0)
    last: dict[str, float] = {}
    for step, client in enumerate(["a", "b", "c", "a", "d", "b"]):
        clock.now += step * 1.7
        active.touch(client)
        last[client] = clock.now
    clock.now += 4.0
    assert active.weight() == pytest.approx(
        sum(2.0 ** (-(clock.now - t) / 10.0) for t in last.values())
    )


def test_a_touch_makes_a_decayed_client_weigh_one_again() -> None:
    active, clock = clients(half_life=30.0)
    active.touch("a")
    active.touch("b")
    clock.now += 60.0
    active.touch("a")
    assert active.weight() == pytest.approx(1.25)


def test_bye_drops_a_client_at_once() -> None:
    active, clock = clients()
    active.touch("a")
    active.touch("b")
    clock.now += 5.0
    assert active.bye("a") is True
    assert "a" not in active and len(active) == 1
    assert active.weight() == pytest.approx(2.0 ** (-5.0 / 30.0))
    assert active.bye("a") is False  # idempotent: nothing left to drop
    assert active.bye("never-seen") is False
    assert len(active) == 1
    assert active.bye("b") is True
    assert active.weight() == 0.0 and len(active) == 0


def test_a_client_that_returns_after_bye_counts_again() -> None:
    active, _ = clients()
    active.touch("a")
    active.bye("a")
    active.touch("a")
    assert active.weight() == 1.0


def test_ids_past_the_window_or_decayed_to_nothing_are_forgotten() -> None:
    active, clock = clients(half_life=30.0, window=120.0)
    active.touch("old")
    clock.now += 100.0
    active.touch("new")
    clock.now += 20.001  # "old" is past the window
    weight = active.weight()
    assert "old" not in active and "new" in active
    assert weight == pytest.approx(2.0 ** (-20.001 / 30.0))
    # a window longer than the decay: forgotten once below FORGET_BELOW
    active, clock = clients(half_life=1.0, window=300.0)
    active.touch("a")
    clock.now += -math.log2(FORGET_BELOW) + 0.01
    assert active.weight() == 0.0 and len(active) == 0


def test_an_infinite_half_life_is_the_sliding_window_count() -> None:
    active, clock = clients(half_life=math.inf, window=300.0)
    active.touch("a")
    clock.now += 200.0
    active.touch("b")
    assert active.weight() == pytest.approx(2.0, abs=1e-9)
    clock.now += 100.5
    assert active.weight() == pytest.approx(1.0, abs=1e-9) and "a" not in active


def test_the_count_holds_over_many_half_lives_of_traffic() -> None:
    """The stored masses are rebased as time goes on: no overflow, no drift."""
    active, clock = clients(half_life=1.0, window=300.0, limit=1000)
    for step in range(5000):  # 5000 half-lives, far past 2 ** 1024
        clock.now += 1.0
        active.touch(f"c{step % 7}")
        if step % 500 == 499:
            assert active.weight() == pytest.approx(sum(2.0**-k for k in range(7)), rel=1e-9)
    clock.now += 0.5
    assert active.weight() == pytest.approx(2.0**-0.5 * sum(2.0**-k for k in range(7)), rel=1e-9)
    assert len(active) == 7
    clock.now += 2000.0  # silent for 2000 half-lives, then one more client
    active.touch("late")
    assert active.weight() == pytest.approx(1.0) and len(active) == 1


def test_a_flood_of_ids_holds_at_most_limit() -> None:
    active, clock = clients(limit=50)
    for i in range(10_000):
        clock.now += 0.001
        active.touch(f"flood-{i}")
    assert len(active) == 50
    assert "flood-0" not in active and "flood-9999" in active
    assert active.weight() == pytest.approx(50.0, rel=1e-3)


def test_a_bye_flood_leaves_no_state() -> None:
    active, _ = clients(limit=50)
    active.touch("a")
    size = sys.getsizeof(active._seen)
    for i in range(10_000):
        assert active.bye(f"unknown-{i}") is False
    assert len(active) == 1 and sys.getsizeof(active._seen) == size
    assert active.weight() == 1.0


def test_the_running_sum_stays_exact_under_churn() -> None:
    active, clock = clients(half_life=5.0, window=300.0, limit=1000)
    last: dict[str, float] = {}
    for i in range(20_000):
        clock.now += 0.01
        client = f"c{(i * 7919) % 997}"
        if i % 5 == 0:
            active.bye(client)
            last.pop(client, None)
        else:
            active.touch(client)
            last[client] = clock.now
    expected = sum(2.0 ** (-(clock.now - t) / 5.0) for t in last.values())
    assert active.weight() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("args", "word"),
    [((0.0, 300.0, 10), "half_life"), ((30.0, 0.0, 10), "window"), ((30.0, 300.0, 0), "limit")],
)
def test_bad_arguments_are_refused(args: tuple[float, float, int], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        DecayingClients(*args)


def test_rates_follow_the_counters_with_an_exponential_average() -> None:
    clock = Clock()
    rates = Rates(time_constant=10.0, clock=clock)
    assert rates.read(0, 0) == (0.0, 0.0)
    clock.now += 10.0
    requests, sent = 100, 50_000  # 10/s and 5000 B/s over the last 10 s
    rps, bps = rates.read(requests, sent)
    share = 1 - math.exp(-1.0)
    assert rps == pytest.approx(10.0 * share) and bps == pytest.approx(5000.0 * share)
    for _ in range(50):  # the same pace, read every second: the averages reach it
        clock.now += 1.0
        requests, sent = requests + 10, sent + 5000
        rps, bps = rates.read(requests, sent)
    assert rps == pytest.approx(10.0, rel=0.01) and bps == pytest.approx(5000.0, rel=0.01)
    assert rates.read(requests, sent) == (rps, bps)  # no time passed: unchanged
    clock.now += 60.0  # silence: the averages fall toward 0
    rps, bps = rates.read(requests, sent)
    assert rps < 0.05 and bps < 25.0


def test_rates_refuse_a_time_constant_of_zero() -> None:
    with pytest.raises(ValueError, match="time_constant"):
        Rates(0.0)


def test_a_touch_given_the_time_counts_as_one_that_reads_the_clock() -> None:
    read, read_clock = clients()
    given, given_clock = clients()
    for step, client in enumerate(["a", "b", "a", "c", "b"] * 20):
        read_clock.now = given_clock.now = 1000.0 + 7.5 * step
        read.touch(client)
        given_clock.now += 1e6  # a clock read now would be far off: the time given is used
        given.touch(client, read_clock.now)
        given_clock.now -= 1e6
        assert given.weight() == read.weight()
        assert list(given._seen) == list(read._seen)
