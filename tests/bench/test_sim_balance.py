"""The churn simulation's quick run: the decayed load signal against the old window count.

The figures are simulated (seeded, no clock, no sockets), so the comparisons
below are exact for one known outcome; their margins are wide enough to
survive a change of seed.
"""

from __future__ import annotations

import math

import pytest

from bench import sim_balance
from bench.sim_balance import DEFAULT, OLD, QUICK, Summary, Trace


@pytest.fixture(scope="module")
def runs() -> dict[str, tuple[Summary, Trace]]:
    """``load_weighted`` on the quick workload, by signal: ``old`` and ``new`` (the default)."""
    results = sim_balance.run(QUICK, ["load_weighted"], [OLD, DEFAULT])
    return {"old" if s.signal == OLD else "new": (s, t) for s, t in results}


@pytest.fixture(scope="module")
def load_weighted(runs: dict[str, tuple[Summary, Trace]]) -> dict[str, Summary]:
    return {name: summary for name, (summary, _) in runs.items()}


def test_new_signal_follows_a_burst_of_departures(load_weighted: dict[str, Summary]) -> None:
    old, new = load_weighted["old"], load_weighted["new"]
    # The server that lost its clients fills up again at least twice as fast...
    assert new.recovery <= old.recovery / 2, (new.recovery, old.recovery)
    # ...so that less capacity sits idle and the load is more even meanwhile.
    assert new.idle["burst"] <= old.idle["burst"] / 2, (new.idle, old.idle)
    assert new.max_mean["burst"] < old.max_mean["burst"] - 0.05, (new.max_mean, old.max_mean)


def test_new_signal_fills_an_added_server_without_overshoot(
    load_weighted: dict[str, Summary],
) -> None:
    old, new = load_weighted["old"], load_weighted["new"]
    assert new.max_mean["added"] < old.max_mean["added"] - 0.1, (new.max_mean, old.max_mean)


def test_only_the_dead_servers_clients_move(runs: dict[str, tuple[Summary, Trace]]) -> None:
    for summary, trace in runs.values():
        # the sessions s2 held the second before it died, less those that ended before
        # their next request: no client of another server is moved
        held = trace.work["s2"][trace.times.index(QUICK.die_at - 1)]
        assert 0 < summary.moved <= held
        assert summary.refused == 0


def test_the_run_is_deterministic(load_weighted: dict[str, Summary]) -> None:
    ((again, _trace),) = sim_balance.run(QUICK, ["load_weighted"], [DEFAULT])
    assert again == load_weighted["new"]
    assert not math.isinf(again.recovery)
