"""CIDR parsing and matching: IPv4, IPv6, IPv4-mapped IPv6, and lookup cost."""

from __future__ import annotations

import ipaddress

import pytest
from affinity_ipfilter.networks import Address, NetworkSet, parse_address, parse_networks
from hypothesis import given, settings
from hypothesis import strategies as st

fast = settings(database=None, deadline=None, max_examples=200)


def _set(*cidrs: str) -> NetworkSet:
    return NetworkSet((net, f"r{i}") for i, c in enumerate(cidrs) for net in parse_networks(c))


def _ip(text: str) -> Address:
    addr = parse_address(text)
    assert addr is not None
    return addr


def test_parse_address_unwraps_ipv4_mapped() -> None:
    assert parse_address("::ffff:192.0.2.1") == ipaddress.IPv4Address("192.0.2.1")
    assert parse_address("2001:db8::1") == ipaddress.IPv6Address("2001:db8::1")
    assert parse_address("fe80::1%eth0") is not None
    assert parse_address("not an address") is None
    assert parse_address("") is None
    assert parse_address("1.2.3.4:80") is None


def test_ipv4_match() -> None:
    nets = _set("10.0.0.0/8", "192.168.1.0/24", "203.0.113.7")
    assert nets.match(_ip("10.255.0.1")) == "r0"
    assert nets.match(_ip("192.168.1.200")) == "r1"
    assert nets.match(_ip("192.168.2.1")) is None
    assert nets.match(_ip("203.0.113.7")) == "r2"
    assert nets.match(_ip("203.0.113.8")) is None


def test_ipv6_match() -> None:
    nets = _set("2001:db8::/32", "2001:db8:1::/48")
    assert nets.match(_ip("2001:db8:1::5")) == "r1"  # the most specific rule is named
    assert nets.match(_ip("2001:db8:2::5")) == "r0"
    assert nets.match(_ip("2001:db9::1")) is None
    assert nets.match(_ip("10.0.0.1")) is None


def test_mapped_client_matches_ipv4_rule_and_mapped_rule_matches_ipv4_client() -> None:
    assert _set("10.0.0.0/8").match(_ip("::ffff:10.1.2.3")) == "r0"
    nets = _set("::ffff:10.0.0.0/104")
    assert nets.match(_ip("10.1.2.3")) == "r0"
    assert nets.match(_ip("::ffff:10.1.2.3")) == "r0"
    assert nets.match(_ip("11.0.0.1")) is None


def test_the_whole_mapped_range_is_all_of_ipv4_and_nothing_else() -> None:
    """``::ffff:0:0/96`` is IPv4 written as IPv6: one IPv4 network, no IPv6 one to probe."""
    v4, v6 = ipaddress.IPv4Network, ipaddress.IPv6Network
    assert parse_networks("::ffff:0.0.0.0/96") == [v4("0.0.0.0/0")]
    assert parse_networks("::ffff:0:0/97") == [v4("0.0.0.0/1")]
    assert parse_networks("::ffff:10.0.0.0/104") == [v4("10.0.0.0/8")]
    assert parse_networks("::ffff:10.1.2.3") == [v4("10.1.2.3/32")]
    # A range one bit wider holds IPv6 addresses too: it stays, and covers all of IPv4.
    assert parse_networks("::fffe:0:0/95") == [v6("::fffe:0:0/95"), v4("0.0.0.0/0")]
    nets = _set("::ffff:0.0.0.0/96")
    assert (len(nets), nets.prefix_lengths) == (1, 1)
    assert nets.match(_ip("203.0.113.9")) == "r0"
    assert nets.match(_ip("::ffff:203.0.113.9")) == "r0"
    assert nets.match(_ip("2001:db8::1")) is None


def test_ipv6_everything_includes_mapped_ipv4() -> None:
    nets = _set("::/0")
    assert nets.match(_ip("1.2.3.4")) == "r0"
    assert nets.match(_ip("2001:db8::1")) == "r0"


@pytest.mark.parametrize(
    "bad",
    ["10.0.0.1/8", "10.0.0.0/33", "300.1.1.1", "2001:db8::/129", "banana", "", 17, None, ["x"]],
)
def test_bad_networks_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=r"CIDR"):
        parse_networks(bad)


def test_lookup_cost_depends_on_prefix_lengths_not_rule_count() -> None:
    cidrs = [f"10.{i // 256}.{i % 256}.0/24" for i in range(20_000)]
    cidrs += [f"172.16.{i // 256}.{i % 256}" for i in range(5_000)]
    nets = _set(*cidrs)
    assert len(nets) == 25_000
    assert nets.prefix_lengths == 2
    assert nets.match(_ip("10.3.7.9")) == f"r{3 * 256 + 7}"
    assert nets.match(_ip("172.16.1.1")) == f"r{20_000 + 257}"
    assert nets.match(_ip("172.16.100.1")) is None


_v4_net = st.builds(
    lambda addr, plen: ipaddress.IPv4Network((addr, plen), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
_v6_net = st.builds(
    lambda addr, plen: ipaddress.IPv6Network((addr, plen), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)


@fast
@given(
    st.lists(st.one_of(_v4_net, _v6_net), max_size=12),
    st.one_of(
        st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
        st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
    ),
)
def test_match_agrees_with_brute_force(
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    compiled = NetworkSet((n, str(n)) for n in nets)
    expected = any(addr.version == n.version and addr in n for n in nets)
    assert (compiled.match(addr) is not None) == expected
