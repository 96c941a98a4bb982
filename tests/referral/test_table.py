"""The server table: health observations, load feedback, slow start and the panic threshold.

A fake clock drives every time-dependent behaviour, so nothing here sleeps.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from affinity.builtin.policies import (
    ConsistentPolicy,
    LoadWeightedPolicy,
    RandomPolicy,
    RoundRobinPolicy,
)
from affinity.models import AssignRequest, HealthStatus, Load, Pool, Server
from affinity.plugin.registry import RegistryView
from affinity.referral.table import MIN_RAMP, ServerTable

P, C = HealthStatus.PASSING, HealthStatus.CRITICAL


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def server(sid: str, weight: int = 1, draining: bool = False) -> Server:
    return Server(
        id=sid, service="web", url=f"https://{sid}.example.test", weight=weight, draining=draining
    )


def view(*servers: Server, index: int = 1) -> RegistryView:
    return RegistryView(index=index, servers=servers)


def table(clock: Clock, **kwargs: float) -> ServerTable:
    return ServerTable(clock=clock, wall=clock, **kwargs)


def ramps(pool: Pool) -> dict[str, float]:
    return {sid: s.ramp for sid, s in pool.servers.items()}


# -- observations --------------------------------------------------------------------


def test_the_last_failure_outlives_later_good_checks() -> None:
    clock = Clock()
    t = table(clock)
    t.apply_view(view(server("s1")))
    t.set_health("s1", P, reason="ConnectError: refused", latency=0.002, failed=True)
    clock.now += 1
    t.set_health("s1", P, latency=0.004)
    shown = t.describe(t.get("s1"))  # type: ignore[arg-type]
    assert shown["health"] == "passing"
    assert shown["last_check"] == {"at": clock.now, "latency": 0.004, "reason": ""}
    assert shown["last_failure"] == {"at": clock.now - 1, "reason": "ConnectError: refused"}


def test_describe_shows_everything_an_operator_needs() -> None:
    clock = Clock()
    t = table(clock)
    t.apply_view(view(server("s1", weight=3)))
    load = Load(clients=3.9996, inflight=1, rps=2.5, capacity=4, extra={"queue": 2.0})
    t.set_health("s1", P, load=load, draining=True, reason="draining")
    t.note_assigned("s1")
    shown = t.describe(t.get("s1"))  # type: ignore[arg-type]
    assert shown["load"] == {
        "clients": 4.0,
        "active_clients": 4,
        "inflight": 1,
        "rps": 2.5,
        "bytes_per_s": 0.0,
        "capacity": 4,
        "capacity_inflight": 0,
        "capacity_bytes_per_s": 0.0,
        "queue": 2.0,
    }
    assert shown["draining"] is True and shown["at_capacity"] is True  # 3.9996 rounds to 4
    assert shown["assignable"] is False
    assert shown["weight"] == 3 and shown["effective_weight"] == 3
    assert shown["slow_start"] is False and shown["assignments"] == 1
    assert shown["last_failure"] == {"at": None, "reason": ""}


def test_unknown_servers_are_ignored() -> None:
    t = table(Clock())
    t.set_health("ghost", C, failed=True)
    assert t.get("ghost") is None


# -- load feedback -------------------------------------------------------------------------


def test_reported_load_reaches_the_pool_and_a_full_server_leaves_it() -> None:
    t = table(Clock())
    t.apply_view(view(server("s1"), server("s2")))
    t.set_health("s1", P, load=Load(clients=2, capacity=3))
    pool = t.pool("web")
    assert pool.servers["s1"].load.clients == 2
    assert [s.id for s in pool.assignable] == ["s1", "s2"]
    t.set_health("s1", P, load=Load(clients=3, capacity=3))
    assert [s.id for s in t.pool("web").assignable] == ["s2"], "full: rebuilt at once"


def test_load_only_changes_are_batched_by_load_refresh() -> None:
    clock = Clock()
    t = table(clock, load_refresh=0.5)
    t.apply_view(view(server("s1"), server("s2")))
    first = t.pool("web")
    t.set_health("s1", P, load=Load(clients=1, capacity=10))
    assert t.pool("web") is first
    clock.now += 0.5
    assert t.pool("web").servers["s1"].load.clients == 1


def test_load_weighted_prefers_the_server_reporting_less_load() -> None:
    t = table(Clock())
    t.apply_view(view(server("busy"), server("idle")))
    t.set_health("busy", P, load=Load(clients=80, capacity=100))
    t.set_health("idle", P, load=Load(clients=0, capacity=100))
    policy = LoadWeightedPolicy(rng=random.Random(1))
    picks = Counter(policy.choose(t.pool("web"), request(f"c{i}")).id for i in range(60))  # type: ignore[union-attr]
    # Two candidates per pick: idle wins unless both draws land on busy (8 redraws, 1 in 256).
    assert picks["idle"] >= 58, "80 clients' head start: the next 60 go to idle"


def test_consistent_moves_clients_off_a_server_over_its_load_bound() -> None:
    clock = Clock()
    t = table(clock)
    t.apply_view(view(server("s1"), server("s2"), server("s3")))
    policy = ConsistentPolicy()
    clients = [f"client-{i}" for i in range(300)]
    before = {c: policy.choose(t.pool("web"), request(c)).id for c in clients}  # type: ignore[union-attr]
    t.set_health("s1", P, load=Load(clients=90, capacity=100))
    t.set_health("s2", P, load=Load(clients=10, capacity=100))
    t.set_health("s3", P, load=Load(clients=10, capacity=100))
    clock.now += 0.5  # load-only changes reach the pool after load_refresh
    after = {c: policy.choose(t.pool("web"), request(c)).id for c in clients}  # type: ignore[union-attr]
    assert "s1" in before.values() and "s1" not in after.values()
    assert all(after[c] == before[c] for c in clients if before[c] != "s1"), "others stay put"


def request(client_id: str) -> AssignRequest:
    return AssignRequest(service="web", client_id=client_id)


# -- slow start ----------------------------------------------------------------------------


def test_servers_of_the_first_view_do_not_ramp() -> None:
    t = table(Clock(), slow_start=10.0)
    t.apply_view(view(server("s1"), server("s2")))
    assert ramps(t.pool("web")) == {"s1": 1.0, "s2": 1.0}


def test_a_new_server_ramps_linearly_and_its_pool_is_rebuilt_meanwhile() -> None:
    clock = Clock()
    t = table(clock, slow_start=10.0, load_refresh=0.5)
    t.apply_view(view(server("s1")))
    t.apply_view(view(server("s1"), server("s2", weight=4), index=2))
    assert ramps(t.pool("web"))["s2"] == MIN_RAMP
    seen = []
    for _ in range(5):
        clock.now += 2.5
        pool = t.pool("web")
        seen.append(pool.servers["s2"].effective_weight)
        shown = t.describe(t.get("s2"))  # type: ignore[arg-type]
        assert shown["effective_weight"] == pytest.approx(pool.servers["s2"].effective_weight)
    assert seen == pytest.approx([1.0, 2.0, 3.0, 4.0, 4.0])
    assert t.describe(t.get("s2"))["slow_start"] is False  # type: ignore[arg-type]
    built = t.pool("web")
    clock.now += 5
    assert t.pool("web") is built, "no more rebuilds once the ramp is over"


def test_a_long_ramp_rebuilds_its_pool_in_twenty_steps_not_every_load_refresh() -> None:
    clock = Clock()
    t = table(clock, slow_start=60.0, load_refresh=0.5)
    t.apply_view(view(server("s1")))
    t.apply_view(view(server("s1"), server("s2"), index=2))
    built = t.pool("web")
    clock.now += 2.9
    assert t.pool("web") is built
    clock.now += 0.1
    assert t.pool("web").servers["s2"].ramp == pytest.approx(0.05)


@pytest.mark.parametrize("how", ["recovered", "resumed"])
def test_a_recovered_or_resumed_server_ramps_again(how: str) -> None:
    clock = Clock()
    t = table(clock, slow_start=4.0)
    t.apply_view(view(server("s1"), server("s2")))
    if how == "recovered":
        t.set_health("s2", C)
        clock.now += 30
        t.set_health("s2", P)
    else:
        t.apply_view(view(server("s1"), server("s2", draining=True), index=2))
        clock.now += 30
        t.apply_view(view(server("s1"), server("s2"), index=3))
    clock.now += 1
    assert ramps(t.pool("web")) == {"s1": 1.0, "s2": pytest.approx(0.25)}


def test_without_slow_start_nothing_ramps() -> None:
    t = table(Clock())
    t.apply_view(view(server("s1")))
    t.apply_view(view(server("s1"), server("s2"), index=2))
    assert ramps(t.pool("web")) == {"s1": 1.0, "s2": 1.0}


@pytest.mark.parametrize("policy", [RandomPolicy, RoundRobinPolicy, LoadWeightedPolicy])
def test_policies_give_a_ramping_server_its_share(policy: type[RandomPolicy]) -> None:
    clock = Clock()
    t = table(clock, slow_start=10.0)
    t.apply_view(view(server("s1"), server("s2"), server("s3")))
    t.apply_view(view(server("s1"), server("s2"), server("s3"), server("new"), index=2))
    clock.now += 1.0  # ramp 0.1: a share of 0.1 / 3.1
    choose = policy(rng=random.Random(7)).choose
    pool = t.pool("web")
    picks = Counter(choose(pool, request(f"c{i}")).id for i in range(31_000))  # type: ignore[union-attr]
    assert 700 <= picks["new"] <= 1300, picks


# -- panic threshold ---------------------------------------------------------------------


def test_the_panic_threshold_is_logged_once_per_crossing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="affinity.referral")
    t = table(Clock(), panic_threshold=0.5)
    t.apply_view(view(*(server(f"s{i}") for i in range(4))))
    t.set_health("s0", C)
    t.set_health("s1", C)
    assert t.summary("web") == {"total": 4, "assignable": 2, "below_threshold": False}
    assert not caplog.records, "half of the pool is not below a 50 % threshold"
    for _ in range(3):
        t.set_health("s2", C)
        t.pool("web")
    assert t.summary("web") == {"total": 4, "assignable": 1, "below_threshold": True}
    assert len(caplog.records) == 1
    assert "only 1 of 4 servers" in caplog.records[0].getMessage()
    t.set_health("s3", C)
    assert len(caplog.records) == 1, "deeper below the threshold: no new warning"
    t.set_health("s0", P)
    t.set_health("s1", P)
    assert len(caplog.records) == 2 and "back above" in caplog.records[1].getMessage()


def test_a_full_pool_counts_as_below_the_threshold(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="affinity.referral")
    t = table(Clock(), panic_threshold=0.5)
    t.apply_view(view(server("s1"), server("s2")))
    t.set_health("s1", P, load=Load(clients=5, capacity=5))
    t.set_health("s2", P, load=Load(clients=5, capacity=5))
    assert t.summary("web")["below_threshold"] is True
    assert len(caplog.records) == 1


def test_an_empty_service_is_never_below_the_threshold() -> None:
    t = table(Clock(), panic_threshold=0.5)
    t.apply_view(view())
    assert t.summary("web") == {"total": 0, "assignable": 0, "below_threshold": False}
