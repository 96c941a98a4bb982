"""The test bed's pure pieces: the skip check, targets, the table, the RESULTS.md splice and
how a wave's clients are split over processes. The bed itself needs root and is not run here."""

from __future__ import annotations

import pytest

from bench.testbed.bed import shares
from bench.testbed.load import Download, Wave
from bench.testbed.report import (
    PERCENT,
    TIMES,
    Row,
    Target,
    combine,
    markdown,
    missing,
    ratio,
    splice,
    spread,
    unmet,
)


def test_nothing_missing_means_it_runs() -> None:
    assert missing(True, lambda tool: f"/usr/sbin/{tool}") is None


def test_each_missing_piece_is_named_with_how_to_get_it() -> None:
    reason = missing(False, lambda tool: None if tool == "haproxy" else "/usr/sbin/" + tool)
    assert reason is not None
    assert "root" in reason
    assert "'haproxy' is not installed (apt-get install haproxy)" in reason
    assert "'tc'" not in reason


def test_targets_hold_their_bound_inclusive() -> None:
    at_least = Target(3.8, at_least=True, unit=TIMES)
    assert at_least.met(3.8) and not at_least.met(3.79)
    at_most = Target(0, at_least=False)
    assert at_most.met(0) and not at_most.met(1)
    assert str(at_least) == f"≥ 3.8{TIMES}" and str(Target(0.1, False, PERCENT)) == "≤ 0.1 %"


def test_ratio_to_nothing_is_no_figure() -> None:
    assert ratio(6.0, 2.0) == 3.0
    assert ratio(6.0, 0.0) is None


def test_the_table_says_which_targets_are_not_met_and_escapes_pipes() -> None:
    rows = [
        Row("1 server", "5.9 MB/s", 1.0, TIMES),
        Row("fresh", "23 MB/s", 3.97, TIMES, Target(3.8, True, TIMES)),
        Row("after departures", "17 MB/s", 2.97, TIMES, Target(3.6, True, TIMES), "a | b"),
        Row("referral", "1 kB", None, PERCENT, Target(0.1, False, PERCENT)),
    ]
    table = markdown(rows).splitlines()
    assert table[2] == f"| 1 server | 5.9 MB/s | 1.00{TIMES} |  |  |  |"
    assert f"| 3.97{TIMES} | ≥ 3.8{TIMES} | met |" in table[3]
    assert f"| 2.97{TIMES} | ≥ 3.6{TIMES} | **not met** | a \\| b |" in table[4]
    assert "| n/a | ≤ 0.1 % | **not measured** |" in table[5]
    assert unmet(rows) == ["after departures", "referral"]


def test_spread_lists_servers_in_numeric_order() -> None:
    assert spread({"s10": 1, "s2": 5, "s1": 0}) == "s1 0 · s2 5 · s10 1"


def test_splice_appends_then_replaces_between_its_own_markers() -> None:
    first = splice("# Results\n", "old-signal", "table one")
    assert (
        first
        == "# Results\n\n<!-- testbed:old-signal -->\ntable one\n<!-- /testbed:old-signal -->\n"
    )
    both = splice(first, "new-signal", "table two")
    again = splice(both, "old-signal", "table three\n")
    assert "table one" not in again
    assert again.index("table three") < again.index("table two")
    assert again.count("<!-- testbed:old-signal -->") == 1


@pytest.mark.parametrize("key", ["Old", "a b", "", "x-->"])
def test_splice_refuses_a_key_that_is_not_a_plain_name(key: str) -> None:
    with pytest.raises(ValueError, match="marker key"):
        splice("", key, "x")


def test_splice_refuses_an_unclosed_marker() -> None:
    with pytest.raises(ValueError, match="no <!-- /testbed:run -->"):
        splice("<!-- testbed:run -->\nhalf", "run", "x")


@pytest.mark.parametrize(
    ("clients", "procs", "expected"),
    [
        (16, 2, [(0, 8), (8, 8)]),
        (5, 2, [(0, 3), (3, 2)]),
        (2, 4, [(0, 1), (1, 1)]),
        (3, 0, [(0, 3)]),
    ],
)
def test_clients_split_evenly_over_processes(
    clients: int, procs: int, expected: list[tuple[int, int]]
) -> None:
    assert shares(clients, procs) == expected


def test_a_wave_counts_bytes_in_its_window_and_survives_a_round_trip() -> None:
    wave = Wave(started=0.0, ended=10.0, cpu=1.5)
    wave.downloads += [
        Download(1.0, 0, "s1", 10),
        Download(2.0, 1, "s2", 20),
        Download(5.0, 0, "s2", 40),
    ]
    wave.failures.append((3.0, 1, "ConnectError: refused"))
    assert wave.bytes_between(1.0, 5.0) == 30
    assert wave.bytes_between(0.0, 10.0, {"s2"}) == 60
    assert wave.first_servers() == {"s1": 1, "s2": 1}
    back = Wave.from_json(wave.to_json())
    assert back == wave
    other = Wave(started=-1.0, ended=4.0, cpu=0.5, downloads=[Download(3.0, 2, "s3", 5)])
    back.merge(other)
    assert (back.started, back.ended, back.cpu, len(back.downloads)) == (-1.0, 10.0, 2.0, 4)


def test_rounds_combine_to_the_median_ratio_and_the_worst_count() -> None:
    fresh = Target(3.8, True, TIMES)
    failed = Target(0, False)
    rounds = [
        [
            Row("fresh", f"{mb} MB/s", ratio, TIMES, fresh, "even"),
            Row("failed", f"{n}", n, "", failed),
        ]
        for mb, ratio, n in [(20, 3.5, 0), (23, 3.9, 2), (22, 3.8, 0)]
    ]
    fresh_row, failed_row = combine(rounds)
    assert (fresh_row.measured, fresh_row.value) == ("22 MB/s", 3.8)
    assert fresh_row.note == f"even; rounds: 3.50{TIMES}, 3.90{TIMES}, 3.80{TIMES}"
    assert (failed_row.value, failed_row.verdict) == (2, "**not met**")
    assert combine(rounds[:1]) == rounds[0]
