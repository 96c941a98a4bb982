"""The built-in assignment policies: balance, weights, avoid, failover bursts, options.

Every random generator is seeded and every client id is fixed, so the
statistical bounds below are checked against one known outcome each; the
bounds are still loose enough (several standard deviations) to survive a
change of seed.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import random
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import pluggy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from affinity import hookimpl
from affinity.builtin import policies
from affinity.builtin.policies import (
    POLICIES,
    ConsistentPolicy,
    LoadWeightedPolicy,
    RandomPolicy,
    RoundRobinPolicy,
    affinity_make_policy,
)
from affinity.errors import ConfigError
from affinity.models import AssignRequest, HealthStatus, Load, Pool, Server
from affinity.plugin import hashing
from affinity.plugin import spec as hookspecs
from affinity.plugin.policy import Policy

CLASSES: dict[
    str, type[RoundRobinPolicy | RandomPolicy | LoadWeightedPolicy | ConsistentPolicy]
] = {
    "round_robin": RoundRobinPolicy,
    "random": RandomPolicy,
    "load_weighted": LoadWeightedPolicy,
    "consistent": ConsistentPolicy,
}
NAMES = sorted(CLASSES)


def server(
    sid: str,
    *,
    weight: int = 1,
    active: int = 0,
    capacity: int = 0,
    health: HealthStatus = HealthStatus.PASSING,
    draining: bool = False,
    load_version: int = 0,
) -> Server:
    return Server(
        id=sid,
        service="web",
        url=f"https://{sid}.example.com",
        weight=weight,
        load=Load(clients=active, capacity=capacity),
        health=health,
        draining=draining,
        load_version=load_version,
    )


def pool(servers: Iterable[Server], version: int = 0) -> Pool:
    return Pool.build("web", {s.id: s for s in servers}, version=version)


def request(client_id: str, avoid: Iterable[str] = ()) -> AssignRequest:
    return AssignRequest(service="web", client_id=client_id, avoid=frozenset(avoid))


def make(name: str, seed: int = 1, **options: Any) -> Policy:
    return CLASSES[name](options, rng=random.Random(seed))


def picks(policy: Policy, p: Pool, n: int, avoid: Iterable[str] = ()) -> Counter[str]:
    avoid = frozenset(avoid)
    counts: Counter[str] = Counter()
    for i in range(n):
        chosen = policy.choose(p, request(f"client-{i}", avoid))
        assert chosen is not None
        counts[chosen.id] += 1
    return counts


def chi_square(counts: Mapping[str, int], expected: Mapping[str, float]) -> float:
    return sum((counts.get(k, 0) - e) ** 2 / e for k, e in expected.items())


def even_pool(n: int) -> Pool:
    return pool(server(f"s{i:02d}") for i in range(n))


def ids(policy: Policy, p: Pool, n: int, avoid: Iterable[str] = ()) -> list[str]:
    """The ids of ``n`` picks in order."""
    chosen = [policy.choose(p, request("c", avoid)) for _ in range(n)]
    return [s.id for s in chosen if s is not None]


def pick_until(policy: Policy, p: Pool, sid: str) -> None:
    """Pick until ``sid`` comes up (within one cycle of the pool)."""
    for _ in range(10_000):
        if ids(policy, p, 1) == [sid]:
            return
    raise AssertionError(f"{sid} never came up")


# -- the registry and the hook -------------------------------------------------


def test_policies_are_named_and_state_their_guarantee() -> None:
    assert set(POLICIES) == set(NAMES)
    for name, cls in POLICIES.items():
        assert cls.name == name
        assert cls.guarantee.endswith(".") and len(cls.guarantee) > 40


@pytest.mark.parametrize("name", NAMES)
def test_make_policy_returns_a_new_instance(name: str) -> None:
    first = affinity_make_policy(name=name, options={})
    second = affinity_make_policy(name=name, options={})
    assert isinstance(first, CLASSES[name])
    assert first is not second


def test_make_policy_returns_none_for_other_names() -> None:
    assert affinity_make_policy(name="least_conn", options={}) is None
    assert affinity_make_policy(name="", options={"choices": "junk"}) is None


@pytest.mark.parametrize(
    ("name", "options", "key"),
    [
        ("round_robin", {"choices": 2}, "choices"),
        ("random", {"seed": 1}, "seed"),
        ("load_weighted", {"choices": "2"}, "choices"),
        ("load_weighted", {"choices": True}, "choices"),
        ("load_weighted", {"choices": 2.0}, "choices"),
        ("load_weighted", {"choices": 4}, "choices"),
        ("load_weighted", {"choices": 1}, "choices"),
        ("load_weighted", {"default_capacity": 0}, "default_capacity"),
        ("load_weighted", {"load_factor": 1.5}, "load_factor"),
        ("consistent", {"load_factor": "1.5"}, "load_factor"),
        ("consistent", {"load_factor": 0.5}, "load_factor"),
        ("consistent", {"load_factor": float("nan")}, "load_factor"),
        ("consistent", {"load_factor": float("inf")}, "load_factor"),
        ("consistent", {"default_capacity": 12.5}, "default_capacity"),
    ],
)
def test_bad_options_raise_config_error_naming_the_key(
    name: str, options: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        affinity_make_policy(name=name, options=options)
    assert info.value.key == f"policy_options.{key}"
    assert isinstance(info.value, ValueError)


def test_options_that_are_not_a_table_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        affinity_make_policy(name="random", options=["choices"])  # type: ignore[arg-type]
    assert info.value.key == "policy_options"


def test_good_options_are_accepted() -> None:
    assert isinstance(
        affinity_make_policy(name="load_weighted", options={"choices": 3, "default_capacity": 50}),
        LoadWeightedPolicy,
    )
    policy = affinity_make_policy(name="consistent", options={"load_factor": 2})
    assert isinstance(policy, ConsistentPolicy)


def test_builtins_answer_last_through_pluggy() -> None:
    class Mine(Policy):
        name = "random"

        def choose(self, pool: Pool, request: AssignRequest) -> Server | None:
            return None

    class Override:
        @hookimpl
        def affinity_make_policy(self, name: str, options: Mapping[str, Any]) -> Policy | None:
            return Mine(options) if name == "random" else None

    pm = pluggy.PluginManager("affinity")
    pm.add_hookspecs(hookspecs)
    pm.register(policies)
    assert isinstance(pm.hook.affinity_make_policy(name="random", options={}), RandomPolicy)
    pm.register(Override())
    assert isinstance(pm.hook.affinity_make_policy(name="random", options={}), Mine)
    made = pm.hook.affinity_make_policy(name="consistent", options={})
    assert isinstance(made, ConsistentPolicy)
    assert pm.hook.affinity_make_policy(name="nope", options={}) is None


# -- what every policy must do ---------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_only_assignable_servers_are_chosen(name: str) -> None:
    p = pool(
        [
            *(server(f"ok{i}") for i in range(4)),
            server("warn", health=HealthStatus.WARNING),
            server("crit", health=HealthStatus.CRITICAL),
            server("maint", health=HealthStatus.MAINTENANCE),
            server("drain", draining=True),
            server("zero", weight=0),
            server("full", active=10, capacity=10),
        ]
    )
    assert set(picks(make(name), p, 2000)) == {"ok0", "ok1", "ok2", "ok3"}


@pytest.mark.parametrize("name", NAMES)
def test_avoided_servers_are_never_chosen(name: str) -> None:
    avoid = {f"s{i:02d}" for i in range(5)}
    counts = picks(make(name), even_pool(10), 2000, avoid)
    assert set(counts) == {f"s{i:02d}" for i in range(5, 10)}


@pytest.mark.parametrize("name", NAMES)
def test_avoiding_a_heavy_server_falls_back_to_the_rest(name: str) -> None:
    p = pool([server("heavy", weight=1000), server("light1"), server("light2")])
    counts = picks(make(name), p, 500, avoid={"heavy"})
    assert set(counts) == {"light1", "light2"}


@pytest.mark.parametrize("name", NAMES)
def test_nothing_left_gives_none(name: str) -> None:
    policy = make(name)
    assert policy.choose(pool([]), request("c")) is None
    sick = pool([server("a", health=HealthStatus.CRITICAL), server("b", draining=True)])
    assert policy.choose(sick, request("c")) is None
    two = even_pool(2)
    assert policy.choose(two, request("c", avoid={"s00", "s01"})) is None
    assert policy.choose(two, request("c", avoid={"gone"})) is not None


@pytest.mark.parametrize("name", NAMES)
def test_a_pool_that_empties_gives_none_then_answers_again(name: str) -> None:
    policy = make(name)
    assert policy.choose(even_pool(3), request("c")) is not None
    assert policy.choose(pool([server("a", health=HealthStatus.CRITICAL)]), request("c")) is None
    assert set(picks(policy, even_pool(2), 20)) == {"s00", "s01"}


@pytest.mark.parametrize("name", NAMES)
def test_a_policy_made_by_the_hook_has_its_own_generator(name: str) -> None:
    policy = affinity_make_policy(name=name, options={})
    assert policy is not None
    assert set(picks(policy, even_pool(3), 300)) == {"s00", "s01", "s02"}


@pytest.mark.parametrize(
    ("name", "structure"),
    [
        ("round_robin", "_Rotation"),
        ("random", "_Sampler"),
        ("load_weighted", "_Sampler"),
        ("consistent", "_Table"),
    ],
)
def test_the_per_pool_structure_is_built_once_per_pool(
    name: str, structure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Picks cost O(1) (``consistent``: one scan) because the structure is kept for its pool."""
    built: list[object] = []
    original = getattr(policies, structure)

    def counting(*args: Any) -> Any:
        built.append(args)
        return original(*args)

    monkeypatch.setattr(policies, structure, counting)
    policy = make(name)
    built.clear()  # an empty one made before any pool
    picks(policy, even_pool(5), 100)
    assert len(built) == 1
    picks(policy, even_pool(5), 10)  # another pool object: built once more
    assert len(built) == 2


@pytest.mark.parametrize("name", ["round_robin", "random", "load_weighted"])
def test_avoiding_one_of_many_servers_does_not_scan_the_pool(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redraws (or the next places of the rotation) find another server: no O(n) fallback."""
    scans: list[object] = []
    original = policies._fallback

    def counting(*args: Any) -> int | None:
        scans.append(args)
        return original(*args)

    monkeypatch.setattr(policies, "_fallback", counting)
    counts = picks(make(name), even_pool(50), 1000, avoid={"s00"})
    assert "s00" not in counts
    assert scans == []


@pytest.mark.parametrize("name", ["round_robin", "random"])
def test_the_fallback_after_avoided_draws_keeps_the_weights(name: str) -> None:
    """An avoided heavy server sends nearly every pick to the fallback: it draws by weight too."""
    p = pool([server("heavy", weight=1000), server("light"), server("mid", weight=3)])
    counts = picks(make(name), p, 4000, avoid={"heavy"})
    assert 2.7 < counts["mid"] / counts["light"] < 3.3, counts


@pytest.mark.parametrize("name", NAMES)
def test_distribution_is_even(name: str) -> None:
    counts = picks(make(name), even_pool(20), 20_000)
    expected = {f"s{i:02d}": 1000.0 for i in range(20)}
    # 19 degrees of freedom: 43.8 is the 0.1 % critical value.
    assert chi_square(counts, expected) < 43.8
    assert max(counts.values()) / 1000 < 1.1


def test_deterministic_policies_are_exactly_even() -> None:
    counts = picks(make("round_robin"), even_pool(20), 20_000)
    assert set(counts.values()) == {1000}
    counts = picks(make("load_weighted"), even_pool(20), 20_000)
    assert max(counts.values()) / 1000 <= 1.01  # counted assignments keep it tight


@pytest.mark.parametrize("name", NAMES)
def test_weight_three_gets_three_times_the_picks(name: str) -> None:
    counts = picks(make(name), pool([server("big", weight=3), server("small")]), 40_000)
    assert 2.85 < counts["big"] / counts["small"] < 3.15


@pytest.mark.parametrize("name", NAMES)
def test_shares_follow_weights_within_one_point(name: str) -> None:
    p = pool(server(f"w{w}", weight=w) for w in (1, 2, 3, 4))
    counts = picks(make(name), p, 100_000)
    for w in (1, 2, 3, 4):
        assert abs(counts[f"w{w}"] / 100_000 - w / 10) < 0.01


# -- round_robin ---------------------------------------------------------------


def test_round_robin_visits_every_server_once_per_cycle() -> None:
    policy, p = make("round_robin"), even_pool(7)
    for _ in range(5):
        cycle = [policy.choose(p, request("c")) for _ in range(7)]
        assert len({s.id for s in cycle if s is not None}) == 7


def test_round_robin_keeps_its_place_when_the_pool_is_rebuilt() -> None:
    policy = make("round_robin")
    counts: Counter[str] = Counter()
    for version in range(4000):  # a new pool object (a load report) before every pick
        p = pool([server("big", weight=3, load_version=version), server("small")], version)
        chosen = policy.choose(p, request("c"))
        assert chosen is not None
        counts[chosen.id] += 1
    assert counts == {"big": 3000, "small": 1000}


def test_round_robin_gives_a_server_in_slow_start_its_ramped_share() -> None:
    """Weight 2 at a quarter of its ramp is half a slot to the other's two: 1 pick in 5."""
    ramping = dataclasses.replace(server("new", weight=2), ramp=0.25)
    p = pool([server("old", weight=2), ramping])
    assert picks(make("round_robin"), p, 500) == {"old": 400, "new": 100}


def test_round_robin_gives_a_barely_started_server_at_least_one_slot() -> None:
    ramping = dataclasses.replace(server("new"), ramp=0.001)
    p = pool([server("old"), ramping])
    assert picks(make("round_robin"), p, 1010) == {"old": 1000, "new": 10}


def test_round_robin_follows_membership_changes() -> None:
    policy = make("round_robin")
    assert set(picks(policy, even_pool(3), 30)) == {"s00", "s01", "s02"}
    assert set(picks(policy, even_pool(5), 50)) == {f"s{i:02d}" for i in range(5)}
    assert set(picks(policy, even_pool(2), 20)) == {"s00", "s01"}


def test_round_robin_workers_start_at_different_places() -> None:
    p = even_pool(100)
    firsts = [make("round_robin", seed=seed).choose(p, request("c")) for seed in range(20)]
    assert len({s.id for s in firsts if s is not None}) > 10


def test_round_robin_interleaves_rounds_as_the_rotation_says() -> None:
    """Weights 6:4:2 (3:2:1 once divided by their gcd): round 1 visits all three servers,
    round 2 the two heaviest, round 3 the heaviest alone, then the cycle starts again."""
    p = pool([server("a", weight=6), server("b", weight=4), server("c", weight=2)])
    seq = ids(make("round_robin"), p, 40)
    start = seq.index("c")  # the workers start somewhere in round 1
    assert seq[start : start + 30] == ["c", "a", "b", "a", "a", "b"] * 5


def test_round_robin_weighs_servers_that_all_ramp_by_their_ramp() -> None:
    p = pool(
        [
            dataclasses.replace(server("a"), ramp=0.5),
            dataclasses.replace(server("b"), ramp=0.25),
        ]
    )
    assert picks(make("round_robin"), p, 300) == {"a": 200, "b": 100}


def test_round_robin_walks_at_most_2k_plus_1_places_past_k_avoided_then_draws() -> None:
    """The rotation is a b c a a a a; after c comes a run of five places of a's.

    A pick that avoids a walks three of them (2 x 1 + 1) and then draws among
    the rest; the rotation stays where the walk stopped, so two a's are left.
    """
    policy = make("round_robin")
    p = pool([server("a", weight=5), server("b"), server("c")])
    pick_until(policy, p, "c")
    assert ids(policy, p, 1, avoid={"a"}) in (["b"], ["c"])
    assert ids(policy, p, 3) == ["a", "a", "b"]


def test_round_robin_skips_an_avoided_server_in_its_order() -> None:
    policy = make("round_robin")
    seq = ids(policy, even_pool(3), 100, avoid={"s00"})
    assert Counter(seq) == {"s01": 50, "s02": 50}
    assert all(x != y for x, y in itertools.pairwise(seq))


@pytest.mark.parametrize("stop", ["s00", "s01", "s02", "s03", "s04"])
def test_round_robin_starts_over_when_the_pool_shrinks_under_its_place(stop: str) -> None:
    policy = make("round_robin")
    pick_until(policy, even_pool(5), stop)
    assert picks(policy, even_pool(2), 20) == {"s00": 10, "s01": 10}


def test_round_robin_starts_over_when_the_weights_change_under_its_place() -> None:
    """Weights 3 and 1 rotate big small big big: after small, the place is in big's extra rounds."""
    policy = make("round_robin")
    uneven = pool([server("big", weight=3), server("small")])
    pick_until(policy, uneven, "small")
    # One level left, and the place was in the second: start again.
    assert picks(policy, pool([server("big"), server("small")]), 20) == {"big": 10, "small": 10}

    policy = make("round_robin")
    pick_until(policy, uneven, "small")
    assert ids(policy, uneven, 1) == ["big"]  # the second of big's extra rounds comes next
    # Weight 2 has one extra round, and the place is past it: start again.
    fewer = pool([server("big", weight=2), server("small")])
    assert picks(policy, fewer, 30) == {"big": 20, "small": 10}


# -- random --------------------------------------------------------------------


def test_random_is_reproducible_with_a_seed() -> None:
    p = pool(server(f"s{i}", weight=1 + i % 3) for i in range(30))
    a, b = make("random", seed=5), make("random", seed=5)
    first = [a.choose(p, request("c")) for _ in range(200)]
    assert first == [b.choose(p, request("c")) for _ in range(200)]
    assert len({s.id for s in first if s is not None}) > 20


# -- load_weighted ---------------------------------------------------------------


def test_load_weighted_fills_the_less_loaded_server() -> None:
    p = pool([server("a", active=10, capacity=100), server("b", active=50, capacity=100)])
    counts = picks(make("load_weighted"), p, 100)
    # Reported plus counted load evens out: 10 + 70 == 50 + 30.
    assert abs(counts["a"] - 70) <= 2


def test_load_weighted_normalises_by_capacity_and_weight() -> None:
    p = pool(
        [
            server("big", capacity=200),
            server("heavy", capacity=100, weight=2),
            server("small", capacity=100),
        ]
    )
    counts = picks(make("load_weighted"), p, 5000)
    assert abs(counts["big"] - 2000) < 50
    assert abs(counts["heavy"] - 2000) < 50
    assert abs(counts["small"] - 1000) < 50


def loaded(sid: str, **load: Any) -> Server:
    return Server(id=sid, service="web", url=f"https://{sid}.example.com", load=Load(**load))


def test_load_weighted_balances_a_bandwidth_bound_and_a_session_bound_server() -> None:
    """Each server states the capacity that binds it; each is compared by how full it is."""
    p = pool(
        [
            # 20 clients downloading at 8 MB/s of 10: 80 % full, 4 % more per client
            loaded("pipe", clients=20.0, bytes_per_s=8e6, capacity_bytes_per_s=1e7),
            # 40 sessions of 100: 40 % full, 1 % more per client
            loaded("desk", clients=40.0, bytes_per_s=1e5, capacity=100),
        ]
    )
    counts = picks(make("load_weighted"), p, 60)
    # 0.40 + 0.01 x 60 = 1.00 would equal pipe's 0.80 + 0.04 x 5; evening out leaves pipe ~5
    assert counts["desk"] >= 52 and counts["pipe"] >= 1, counts


def test_load_weighted_counts_a_server_full_in_flight_as_full() -> None:
    p = pool(
        [
            loaded("busy", clients=5.0, inflight=30, capacity_inflight=32),
            loaded("calm", clients=5.0, inflight=2, capacity_inflight=32),
        ]
    )
    counts = picks(make("load_weighted"), p, 40)
    assert counts["calm"] >= 35, counts


def test_load_weighted_sees_a_server_whose_clients_left_as_empty() -> None:
    """The decayed count of a server whose wave of clients ended is small: it takes its share."""
    p = pool([loaded("left", clients=0.3), loaded("kept", clients=30.0)])
    counts = picks(make("load_weighted"), p, 60)
    assert abs(counts["left"] - 45) <= 2, counts  # 0.3 + 45 ~ 30 + 15


def test_consistent_skips_a_server_full_in_its_own_unit() -> None:
    ids = [f"s{i}" for i in range(10)]
    top = hashing.rank("alice", [(sid, 1) for sid in ids])[0]
    p = pool(
        loaded(sid, clients=10.0, bytes_per_s=9e6 if sid == top else 2e6, capacity_bytes_per_s=1e7)
        for sid in ids
    )
    chosen = make("consistent").choose(p, request("alice"))
    assert chosen is not None and chosen.id != top


def test_load_weighted_forgets_its_counts_on_a_new_report() -> None:
    policy = make("load_weighted")
    assert picks(policy, pool([server("a"), server("b")]), 50) == {"a": 25, "b": 25}
    # A rebuilt pool with the same reports keeps the counts: still even.
    assert picks(policy, pool([server("a"), server("b")], version=1), 10) == {"a": 5, "b": 5}
    # a reports (its clients left: 0 active); b has not reported since: a catches up.
    fresh = pool([server("a", load_version=1), server("b")], version=2)
    assert picks(policy, fresh, 30) == {"a": 30}
    assert picks(policy, fresh, 20) == {"a": 10, "b": 10}


@pytest.mark.parametrize("choices", [2, 3])
def test_load_weighted_failover_burst_stays_spread(choices: int) -> None:
    rng = random.Random(7)
    reported = {f"s{i}": 1000 + rng.randint(-30, 30) for i in range(10)}
    dead = "s3"
    survivors = [sid for sid in reported if sid != dead]
    # The view every worker holds: the survivors' reports from before the failure.
    stale = pool(
        [server(sid, active=reported[sid], capacity=2000, load_version=1) for sid in survivors]
        + [server(dead, health=HealthStatus.CRITICAL)]
    )
    orphans = [request(f"orphan-{i}", avoid={dead}) for i in range(reported[dead])]

    def ratio(added: Counter[str]) -> float:
        final = [reported[sid] + added[sid] for sid in survivors]
        return max(final) / (sum(final) / len(final))

    policy = make("load_weighted", seed=11, choices=choices)
    p2c: Counter[str] = Counter()
    for req in orphans:
        chosen = policy.choose(stale, req)
        assert chosen is not None and chosen.id != dead
        p2c[chosen.id] += 1
    assert ratio(p2c) <= 1.06

    # Four workers, each with its own counts and a quarter of the burst.
    workers = [make("load_weighted", seed=s, choices=choices) for s in range(4)]
    spread: Counter[str] = Counter()
    for i, req in enumerate(orphans):
        chosen = workers[i % 4].choose(stale, req)
        assert chosen is not None
        spread[chosen.id] += 1
    assert ratio(spread) <= 1.06

    # The arg-min of the same stale view sends every orphan to one survivor.
    naive: Counter[str] = Counter()
    for _req in orphans:
        least = min(stale.assignable, key=lambda s: s.load.clients)
        naive[least.id] += 1
    assert len(naive) == 1
    assert ratio(naive) > 1.6


def test_load_weighted_keeps_counts_across_pools_of_other_membership() -> None:
    policy = make("load_weighted")
    assert picks(policy, pool([server("a"), server("b")]), 50) == {"a": 25, "b": 25}
    assert picks(policy, pool([server("b")]), 10) == {"b": 10}  # a is away: b at 35
    # a is back with a new report of 0 clients; b has not reported, so its 35 still count.
    back = pool([server("a", load_version=1), server("b")])
    assert picks(policy, back, 35) == {"a": 35}


class Scripted(random.Random):
    """A generator whose ``random()`` gives the numbers listed, in order, and fails past them."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def scripted(*values: float, choices: int = 2) -> tuple[LoadWeightedPolicy, Scripted]:
    rng = Scripted(*values)
    return LoadWeightedPolicy({"choices": choices}, rng=rng), rng


@pytest.mark.parametrize(("u", "kept"), [(0.0, "b"), (0.49, "b"), (0.5, "a"), (0.99, "a")])
def test_load_weighted_breaks_a_tie_of_two_evenly(u: float, kept: str) -> None:
    """Two draws, 0.1 then 0.6, give a then b, equally loaded: b wins when the next draw < 1/2."""
    policy, rng = scripted(0.1, 0.6, u)
    chosen = policy.choose(pool([server("a"), server("b")]), request("c"))
    assert chosen is not None and chosen.id == kept
    assert rng.values == []  # two candidates, one tie-break: nothing more drawn


@pytest.mark.parametrize(("u", "kept"), [(0.32, "c"), (0.34, "a")])
def test_load_weighted_breaks_a_tie_of_three_evenly(u: float, kept: str) -> None:
    """The k-th tied candidate replaces the kept one when the draw after it is below 1/k.

    a (0.1), b (0.5), all empty: b is the second of a tie, and 0.6 is not below
    1/2, so a is kept; c (0.9) is the third, and replaces a when ``u`` < 1/3.
    """
    policy, rng = scripted(0.1, 0.5, 0.6, 0.9, u, choices=3)
    chosen = policy.choose(pool([server("a"), server("b"), server("c")]), request("x"))
    assert chosen is not None and chosen.id == kept
    assert rng.values == []


@pytest.mark.parametrize(("u", "kept"), [(0.4, "c"), (0.6, "b")])
def test_load_weighted_counts_ties_from_the_last_better_candidate(u: float, kept: str) -> None:
    """a (half full) is beaten by b (empty), which ties with c: one tie of two, not three."""
    p = pool([server("a", active=50, capacity=100), server("b"), server("c")])
    policy, rng = scripted(0.1, 0.5, 0.9, u, choices=3)
    chosen = policy.choose(p, request("x"))
    assert chosen is not None and chosen.id == kept
    assert rng.values == []


def test_load_weighted_compares_distinct_candidates() -> None:
    """Three choices: a, b, then b again, which is drawn anew: c, the least loaded, wins."""
    p = pool(
        [
            server("a", active=50, capacity=100),
            server("b", active=20, capacity=100),
            server("c", capacity=100),
        ]
    )
    policy, rng = scripted(0.1, 0.5, 0.5, 0.9, choices=3)
    chosen = policy.choose(p, request("x"))
    assert chosen is not None and chosen.id == "c"
    assert rng.values == []


def test_load_weighted_tries_for_each_remaining_candidate() -> None:
    """Eight redraws of a give no second candidate; the third is still drawn: b, less loaded."""
    p = pool([server("a", active=50, capacity=100), server("b", capacity=100)])
    policy, rng = scripted(0.1, *[0.2] * 8, 0.7, choices=3)
    chosen = policy.choose(p, request("x"))
    assert chosen is not None and chosen.id == "b"
    assert rng.values == []


def test_load_weighted_compares_candidates_when_the_request_avoids_another_server() -> None:
    p = pool([server("a", active=50, capacity=100), server("b", capacity=100)])
    policy, rng = scripted(0.1, 0.6)
    chosen = policy.choose(p, request("x", avoid={"gone"}))
    assert chosen is not None and chosen.id == "b"
    assert rng.values == []


def test_load_weighted_counts_nothing_yet_for_a_server_new_to_it() -> None:
    policy = make("load_weighted")
    assert picks(policy, pool([server("a")]), 5) == {"a": 5}  # a at 5 / 100
    # b joins: 1 / 10 per client, so one assignment counted would put it past a.
    assert picks(policy, pool([server("a"), server("b", capacity=10)]), 1) == {"b": 1}


# -- consistent -------------------------------------------------------------------


def assignments(policy: Policy, p: Pool, clients: Iterable[str]) -> dict[str, str]:
    result = {}
    for cid in clients:
        chosen = policy.choose(p, request(cid))
        assert chosen is not None
        result[cid] = chosen.id
    return result


def test_consistent_same_client_same_server_in_independent_instances() -> None:
    clients = [f"client-{i}" for i in range(2000)]
    servers = [server(f"s{i}", weight=1 + i % 3) for i in range(25)]
    first = assignments(make("consistent", seed=1), pool(servers), clients)
    second = assignments(make("consistent", seed=2), pool(list(reversed(servers))), clients)
    assert first == second
    members = [(s.id, s.weight) for s in servers]
    assert all(first[c] == hashing.choose(c, members) for c in clients[:200])


def test_consistent_same_answer_in_another_process() -> None:
    script = textwrap.dedent(
        """
        from affinity.builtin.policies import ConsistentPolicy
        from affinity.models import AssignRequest, Pool, Server
        servers = {f"s{i}": Server(id=f"s{i}", service="web", url="https://x", weight=1 + i % 4)
                   for i in range(20)}
        p = Pool.build("web", servers)
        policy = ConsistentPolicy()
        print(",".join(policy.choose(p, AssignRequest(service="web", client_id=f"c{i}")).id
                       for i in range(300)))
        """
    )
    outputs = set()
    for seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(done.stdout.strip())
    p = pool(server(f"s{i}", weight=1 + i % 4) for i in range(20))
    here = assignments(make("consistent"), p, [f"c{i}" for i in range(300)])
    assert outputs == {",".join(here.values())}


def test_consistent_removing_one_of_fifty_moves_only_its_clients() -> None:
    clients = [f"client-{i}" for i in range(10_000)]
    servers = [server(f"s{i:02d}") for i in range(50)]
    before = assignments(make("consistent"), pool(servers), clients)
    gone = "s17"
    after = assignments(make("consistent"), pool(s for s in servers if s.id != gone), clients)
    moved = [c for c in clients if before[c] != after[c]]
    assert all(before[c] == gone for c in moved)
    assert len(moved) == sum(1 for c in clients if before[c] == gone)
    assert 0.5 / 50 * 10_000 <= len(moved) <= 1.5 / 50 * 10_000


def test_consistent_adding_a_server_moves_clients_only_to_it() -> None:
    clients = [f"client-{i}" for i in range(5000)]
    servers = [server(f"s{i:02d}") for i in range(20)]
    before = assignments(make("consistent"), pool(servers), clients)
    after = assignments(make("consistent"), pool([*servers, server("new")]), clients)
    moved = [c for c in clients if before[c] != after[c]]
    assert moved and all(after[c] == "new" for c in moved)


def test_consistent_avoid_takes_the_next_in_score_order() -> None:
    servers = [server(f"s{i}") for i in range(10)]
    ranked = hashing.rank("alice", [(s.id, 1) for s in servers])
    policy = make("consistent")
    chosen = policy.choose(pool(servers), request("alice", avoid=ranked[:2]))
    assert chosen is not None and chosen.id == ranked[2]


def test_consistent_bounded_load_skips_an_overloaded_server() -> None:
    ids = [f"s{i}" for i in range(10)]
    top, second = hashing.rank("alice", [(sid, 1) for sid in ids])[:2]

    def view(top_load: int) -> Pool:
        return pool(server(sid, active=top_load if sid == top else 50, capacity=100) for sid in ids)

    # Mean 0.51; bound 1.25 x 0.51 + 4 / 100 = 0.6775: 60 clients is within it.
    chosen = make("consistent").choose(view(60), request("alice"))
    assert chosen is not None and chosen.id == top
    # Mean 0.54; bound 0.715: 90 is over it, so every instance moves alice to the second.
    for seed in (1, 2):
        chosen = make("consistent", seed=seed).choose(view(90), request("alice"))
        assert chosen is not None and chosen.id == second
    # A looser factor keeps alice where she was.
    chosen = make("consistent", load_factor=2.0).choose(view(90), request("alice"))
    assert chosen is not None and chosen.id == top


@pytest.mark.parametrize(("top_load", "stays"), [(1, True), (4, True), (5, False)])
def test_consistent_bound_has_a_slack_of_four_clients(top_load: int, stays: bool) -> None:
    """In an idle pool, a few clients on the top-ranked server are not an overload.

    Ten servers of capacity 100, all idle but the top one: the mean is
    ``top_load / 1000`` and the bound ``1.25 x mean + 4 / 100``. One or four
    clients are within it (0.04 <= 0.045), five are over it (0.05 > 0.04625).
    """
    ids = [f"s{i}" for i in range(10)]
    top, second = hashing.rank("alice", [(sid, 1) for sid in ids])[:2]
    p = pool(server(sid, active=top_load if sid == top else 0, capacity=100) for sid in ids)
    chosen = make("consistent").choose(p, request("alice"))
    assert chosen is not None and chosen.id == (top if stays else second)


def test_consistent_bounded_load_spreads_a_hot_server() -> None:
    ids = [f"s{i:02d}" for i in range(20)]
    p = pool(server(sid, active=95 if sid == "s05" else 20, capacity=100) for sid in ids)
    counts = picks(make("consistent"), p, 4000)
    assert "s05" not in counts
    assert len(counts) == 19


def test_consistent_with_every_server_loaded_still_answers() -> None:
    p = pool(server(f"s{i}", active=90, capacity=100) for i in range(5))
    assert len(picks(make("consistent"), p, 500)) == 5


def test_consistent_answers_with_an_overloaded_server_when_nothing_else_is_left() -> None:
    p = pool(
        [server("hot", active=95, capacity=100)]
        + [server(f"s{i}", active=20, capacity=100) for i in range(4)]
    )
    avoid = {f"s{i}" for i in range(4)}
    chosen = make("consistent").choose(p, request("alice", avoid=avoid))
    assert chosen is not None and chosen.id == "hot"


@pytest.mark.parametrize(("top_load", "stays"), [(8, True), (9, False)])
def test_consistent_a_server_exactly_at_the_bound_is_not_over_it(
    top_load: int, stays: bool
) -> None:
    """Two servers of capacity 64 (exact in binary), load factor 1: with 8 clients on the top
    one, its 8/64 equals the bound 1 x 4/64 (the mean) + 4/64 (the slack)."""
    top, second = hashing.rank("alice", [("a", 1), ("b", 1)])
    p = pool(server(sid, active=top_load if sid == top else 0, capacity=64) for sid in "ab")
    chosen = make("consistent", load_factor=1.0).choose(p, request("alice"))
    assert chosen is not None and chosen.id == (top if stays else second)


# -- the per-pool structures, exactly ---------------------------------------------

weight_lists = st.lists(st.integers(1, 12), min_size=1, max_size=30)


@settings(derandomize=True, max_examples=150, deadline=None)
@given(weights=weight_lists, seed=st.integers(0, 2**32))
def test_round_robin_cycle_gives_each_server_its_weight(weights: list[int], seed: int) -> None:
    p = pool(server(f"s{i:02d}", weight=w) for i, w in enumerate(weights))
    unit = math.gcd(*weights)
    cycle = sum(weights) // unit
    policy = make("round_robin", seed=seed)
    picks(policy, p, seed % cycle)  # start anywhere in the cycle
    counts = picks(policy, p, cycle)
    assert counts == {f"s{i:02d}": w // unit for i, w in enumerate(weights)}


@settings(derandomize=True, max_examples=150, deadline=None)
@given(weights=weight_lists)
def test_alias_table_gives_each_server_its_share(weights: list[int]) -> None:
    servers = tuple(server(f"s{i:02d}", weight=w) for i, w in enumerate(weights))
    sampler = policies._Sampler(servers)
    n, total = len(weights), sum(weights)
    if sampler.table is None:
        assert len(set(weights)) == 1
        return
    share = [0.0] * n
    for i in range(n):
        keep, alias = sampler.table[2 * i], int(sampler.table[2 * i + 1])
        share[i] += keep / n
        share[alias] += (1.0 - keep) / n
    for i, w in enumerate(weights):
        assert share[i] == pytest.approx(w / total, abs=1e-12)
