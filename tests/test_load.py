"""The load a server reports (format 2), what load policies make of it, and the old names."""

from __future__ import annotations

import dataclasses
import math

import orjson
import pytest

from affinity.models import LOAD_FORMAT, Load

DEFAULT = 100.0


def test_no_capacity_stated_is_the_client_count_over_the_default_capacity() -> None:
    usage, step = Load(clients=25.0, inflight=40, bytes_per_s=1e9).usage(2.0, DEFAULT)
    assert usage == pytest.approx(25.0 / 200.0) and step == pytest.approx(1 / 200.0)


def test_a_stated_client_capacity_replaces_the_default() -> None:
    usage, step = Load(clients=5.0, capacity=10).usage(1.0, DEFAULT)
    assert (usage, step) == (0.5, 0.1)


def test_the_fullest_stated_unit_binds() -> None:
    bandwidth_bound = Load(clients=10.0, bytes_per_s=8e6, capacity=100, capacity_bytes_per_s=1e7)
    usage, step = bandwidth_bound.usage(1.0, DEFAULT)
    assert usage == pytest.approx(0.8)  # not 10 / 100
    assert step == pytest.approx(0.08)  # one more client of the kind here: its share of 0.8
    session_bound = Load(clients=90.0, bytes_per_s=1e6, capacity=100, capacity_bytes_per_s=1e7)
    assert session_bound.usage(1.0, DEFAULT) == pytest.approx((0.9, 0.01))
    inflight_bound = Load(clients=4.0, inflight=6, capacity_inflight=8)
    assert inflight_bound.usage(2.0, DEFAULT) == pytest.approx((6 / 16, 6 / 64))


def test_a_unit_stated_alone_ignores_the_client_count() -> None:
    idle = Load(clients=30.0, bytes_per_s=0.0, capacity_bytes_per_s=1e7)
    usage, step = idle.usage(1.0, DEFAULT)
    assert usage == 0.0
    assert step == pytest.approx(1 / DEFAULT)  # assignments still count before the next report


def test_one_more_client_always_adds_something() -> None:
    for load in (
        Load(),
        Load(capacity_inflight=4),
        Load(capacity_bytes_per_s=1.0, bytes_per_s=0.5, clients=0.2),
    ):
        assert load.usage(1.0, DEFAULT)[1] > 0, load


def test_weight_zero_is_full() -> None:
    assert Load().usage(0.0, DEFAULT) == (math.inf, 0.0)


@pytest.mark.parametrize(
    ("load", "full"),
    [
        (Load(clients=9.49, capacity=10), False),
        (Load(clients=9.5, capacity=10), True),  # rounded, as active_clients was
        (Load(clients=10.0, capacity=10), True),
        (Load(inflight=8, capacity_inflight=8), True),
        (Load(bytes_per_s=1e7, capacity_bytes_per_s=1e7), True),
        (Load(clients=1e6, inflight=1000, bytes_per_s=1e12), False),  # nothing stated
    ],
)
def test_full_in_any_stated_unit(load: Load, full: bool) -> None:
    assert load.full is full


def test_the_reported_figures_keep_affinitys_names_over_a_plugins() -> None:
    load = Load(clients=2.4567, inflight=1, extra={"queue": 3.0, "inflight": 99.0})
    figures = load.figures()
    assert figures["clients"] == 2.457 and figures["active_clients"] == 2
    assert figures["inflight"] == 1 and figures["queue"] == 3.0
    assert orjson.loads(orjson.dumps(figures)) == figures
    assert LOAD_FORMAT == 2


def test_active_clients_reads_and_constructs_with_a_deprecation_warning() -> None:
    with pytest.warns(
        DeprecationWarning, match=r"Load\.active_clients is deprecated.*Load\.clients"
    ):
        assert Load(clients=2.6).active_clients == 3
    with pytest.warns(DeprecationWarning, match=r"Load\(active_clients=\.\.\.\)"):
        old = Load(active_clients=4, capacity=5)
    assert old == Load(clients=4.0, capacity=5)


def test_load_is_a_frozen_value() -> None:
    load = Load(clients=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        load.clients = 2.0  # type: ignore[misc]
    assert dataclasses.replace(load, inflight=3) == Load(clients=1.0, inflight=3)
