"""The options of ``[plugins.ipfilter]`` (and of the shared settings document ``"ipfilter"``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from affinity.plugin.options import option
from affinity_ipfilter.networks import parse_networks

NAME = "ipfilter"
"""The plugin's name: its entry point, its config table and its shared settings document."""

Role = Literal["referral", "server"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PathRuleOptions:
    """Extra lists for requests under a path prefix."""

    prefix: str = option(
        help="Path prefix, matched by whole segments.",
        pattern="/.*",
        expected="a path starting with '/'",
    )
    allow: tuple[str, ...] = option(
        (), help="CIDRs admitted under the prefix; others are refused.", check=parse_networks
    )
    deny: tuple[str, ...] = option((), help="CIDRs refused under the prefix.", check=parse_networks)


@dataclass(frozen=True, slots=True, kw_only=True)
class IPFilterOptions:
    """The rule document: top-level lists, roles and path rules."""

    allow: tuple[str, ...] = option(
        (),
        help="CIDRs (or bare addresses). Empty: no allow list. Non-empty: an address "
        "outside every entry is refused.",
        check=parse_networks,
    )
    deny: tuple[str, ...] = option(
        (), help="CIDRs (or bare addresses) that are always refused.", check=parse_networks
    )
    roles: tuple[Role, ...] = option(
        ("referral", "server"), help="Which tiers the rules apply to. `[]` turns the filter off."
    )
    paths: tuple[PathRuleOptions, ...] = option(
        (),
        help="Extra rules for requests under a path prefix; each needs a non-empty "
        "`allow` or `deny`.",
    )
