"""Address parsing and a CIDR set that answers in O(distinct prefix lengths).

A :class:`NetworkSet` keeps, for each prefix length in use, a dict from the
network's masked address (an int) to the id of the rule that listed it. A
lookup masks the client address once per prefix length and probes the dict,
so a deny list of 50,000 /32s and /24s costs two probes, not 50,000
comparisons. IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``) are IPv4 here,
both in rules and in client addresses, so one rule covers both spellings.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from types import MappingProxyType

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_ALL_V4 = ipaddress.IPv4Network("0.0.0.0/0")


def parse_address(text: str) -> Address | None:
    """The client address, IPv4-mapped IPv6 unwrapped to IPv4; None when it is not an address."""
    try:  # the common case, a dotted quad, four times faster than ipaddress's own parser
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):  # inet_pton is as strict: no leading zeros, exactly 4 parts
        pass
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def parse_networks(value: object) -> list[Network]:
    """The networks one rule entry means; raises ValueError with the reason.

    An entry is a CIDR (``10.0.0.0/8``, ``2001:db8::/32``) or a bare address
    (a /32 or /128). Host bits must be zero (``10.0.0.1/8`` is refused: it is
    usually a typo for a /32 or a wrong mask). A mapped range
    (``::ffff:10.0.0.0/104``) becomes the IPv4 range it maps; an IPv6 range
    that contains all mapped addresses (``::/0``) also covers all of IPv4.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected a CIDR string like '10.0.0.0/8', got {value!r}")
    try:
        net = ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid CIDR: {exc}") from None
    if isinstance(net, ipaddress.IPv6Network):
        mapped = net.network_address.ipv4_mapped
        if mapped is not None and net.prefixlen >= 96:
            return [ipaddress.IPv4Network((mapped, net.prefixlen - 96))]
        if _MAPPED.subnet_of(net):
            return [net, _ALL_V4]
    return [net]


_Table = tuple[tuple[int, Mapping[int, str]], ...]


class NetworkSet:
    """An immutable set of networks, each tagged with the id of the rule that listed it."""

    __slots__ = ("_size", "_v4", "_v6")

    def __init__(self, entries: Iterable[tuple[Network, str]] = ()) -> None:
        by_len: dict[tuple[int, int], dict[int, str]] = {}
        size = 0
        for net, rule_id in entries:
            bits = net.max_prefixlen
            masked = int(net.network_address) >> (bits - net.prefixlen)
            table = by_len.setdefault((net.version, net.prefixlen), {})
            table.setdefault(masked, rule_id)  # the first rule that lists a network owns it
            size += 1
        self._size = size
        self._v4 = self._table(by_len, 4, 32)
        self._v6 = self._table(by_len, 6, 128)

    @staticmethod
    def _table(by_len: dict[tuple[int, int], dict[int, str]], version: int, bits: int) -> _Table:
        # Longest prefix first, so a match names the most specific rule.
        lengths = sorted((plen for v, plen in by_len if v == version), reverse=True)
        return tuple((bits - plen, MappingProxyType(by_len[version, plen])) for plen in lengths)

    def __bool__(self) -> bool:
        return self._size > 0

    def __len__(self) -> int:
        return self._size

    @property
    def prefix_lengths(self) -> int:
        """How many dict probes a lookup costs at most."""
        return len(self._v4) + len(self._v6)

    def match(self, addr: Address) -> str | None:
        """The id of the most specific rule whose network holds ``addr``, or None."""
        table = self._v4 if addr.version == 4 else self._v6
        value = int(addr)
        for shift, nets in table:
            rule_id = nets.get(value >> shift)
            if rule_id is not None:
                return rule_id
        return None
