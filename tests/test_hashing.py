"""Rendezvous hashing: stable values, uniformity, weighted shares, minimal disruption."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affinity.plugin import hashing

MEMBERS = [(f"s{i}", 1 + i % 3) for i in range(8)]


def test_values_are_pinned() -> None:
    # Changing any of these reshuffles every deployed client: never do it by accident.
    assert hashing.hash64(b"") == 0xE4A6A0577479B2B4
    assert hashing.hash64(b"affinity") == 2980137375927735039
    assert hashing.key_prefix("client-1") == b"\x00\x00\x00\x08client-1"
    assert hashing.unit("client-1", "s1") == 0.6697809351665035
    assert hashing.score("client-1", "s1", 3) == pytest.approx(7.484944361900096, rel=1e-15)
    assert hashing.rank("client-1", MEMBERS) == ["s0", "s2", "s1", "s7", "s3", "s6", "s4", "s5"]


def test_same_answers_in_processes_with_other_hash_seeds() -> None:
    script = (
        "from affinity.plugin import hashing\n"
        "members = [(f's{i}', 1 + i % 3) for i in range(8)]\n"
        "print([hashing.rank(f'client-{i}', members) for i in range(100)])\n"
    )
    here = str([hashing.rank(f"client-{i}", MEMBERS) for i in range(100)])
    for seed in ("0", "1", "31337"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == here


def test_key_prefix_makes_pairs_unambiguous() -> None:
    assert hashing.unit("a\0", "b") != hashing.unit("a", "\0b")
    assert hashing.unit("ab", "c") != hashing.unit("a", "bc")
    assert hashing.key_prefix("é") == b"\x00\x00\x00\x02\xc3\xa9"


def test_unit_is_in_the_open_interval_and_uniform() -> None:
    values = [hashing.unit(f"key-{i}", "member") for i in range(20_000)]
    assert all(0.0 < v < 1.0 for v in values)
    deciles = Counter(int(v * 10) for v in values)
    chi = sum((deciles[d] - 2000) ** 2 / 2000 for d in range(10))
    assert chi < 27.9  # 9 degrees of freedom, 0.1 % critical value


def test_score_is_the_weighted_formula() -> None:
    u = hashing.unit("k", "m")
    assert hashing.score("k", "m") == pytest.approx(-1 / math.log(u))
    assert hashing.score("k", "m", 2.5) == pytest.approx(-2.5 / math.log(u))
    prefix = hashing.key_prefix("k")
    assert hashing.score_prefixed(prefix, b"m", 2.5) == hashing.score("k", "m", 2.5)


def test_choose_is_the_first_of_rank() -> None:
    for i in range(200):
        key = f"client-{i}"
        ranked = hashing.rank(key, MEMBERS)
        assert sorted(ranked) == sorted(m for m, _ in MEMBERS)
        assert hashing.choose(key, MEMBERS) == ranked[0]
    assert hashing.choose("k", []) is None
    assert hashing.rank("k", []) == []


@pytest.mark.parametrize("weight", [0, -1, math.nan, math.inf])
def test_bad_weights_are_refused(weight: float) -> None:
    with pytest.raises(ValueError, match="s1"):
        hashing.choose("k", [("s0", 1), ("s1", weight)])
    with pytest.raises(ValueError, match="positive finite"):
        hashing.score("k", "s1", weight)


def test_shares_follow_weights() -> None:
    members = [(f"w{w}", w) for w in (1, 2, 3, 4)]
    counts = Counter(hashing.choose(f"key-{i}", members) for i in range(100_000))
    for name, w in members:
        assert abs(counts[name] / 100_000 - w / 10) < 0.01


def test_removing_a_member_moves_only_its_keys() -> None:
    members = [(f"s{i:02d}", 1) for i in range(50)]
    keys = [f"key-{i}" for i in range(10_000)]
    before = {k: hashing.choose(k, members) for k in keys}
    after = {k: hashing.choose(k, [m for m in members if m[0] != "s07"]) for k in keys}
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == "s07"}
    assert 0.5 / 50 <= len(moved) / len(keys) <= 1.5 / 50


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    key=st.text(max_size=40),
    members=st.dictionaries(names, st.integers(1, 10), min_size=2, max_size=12),
    data=st.data(),
)
def test_removing_a_loser_never_changes_the_winner(
    key: str, members: dict[str, int], data: st.DataObject
) -> None:
    pairs = list(members.items())
    winner = hashing.choose(key, pairs)
    loser = data.draw(st.sampled_from([m for m in members if m != winner]))
    assert hashing.choose(key, [p for p in pairs if p[0] != loser]) == winner
    assert hashing.rank(key, pairs)[0] == winner
