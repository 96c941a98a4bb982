"""The options of ``[plugins.ratelimit]`` (and of the shared settings document ``"ratelimit"``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from affinity.plugin.options import option
from affinity_ratelimit.headers import HeaderMode

NAME = "ratelimit"
"""The plugin's name: its entry point, its config table and its shared settings document."""

MAX_RATE = 1e9  # one request per nanosecond: the clock's resolution
DEFAULT_MAX_KEYS = 100_000
DEFAULT_EXEMPT = ("/.well-known/affinity/health", "/healthz")

Role = Literal["referral", "server"]
KeyMode = Literal["client_or_ip", "ip"]


def check_rate(rate: float) -> None:
    """Refuse a rate outside (0, 1e9] requests per second."""
    if not (math.isfinite(rate) and 0 < rate <= MAX_RATE):
        raise ValueError(f"expected a rate in (0, 1e9] per second, got {rate!r}")


_RATE = "requests per second, in (0, 1e9]"


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitOptions:
    """One extra limit: where it applies and how fast."""

    rate: float = option(help="Requests per second, in (0, 1e9].", check=check_rate, expected=_RATE)
    burst: int | None = option(
        None, low=1, high=10**9, help="Requests at once; unset: `rate` rounded up, at least 1."
    )
    name: str | None = option(
        None,
        pattern=r"[A-Za-z0-9_.-]{1,64}",
        expected="a name of letters, digits, '_', '.', '-' (not 'default')",
        help="Shows in headers and counters; unset: `limit-<i>`.",
    )
    prefix: str = option(
        "/",
        pattern="/.*",
        expected="a path starting with '/'",
        help="Path prefix it applies under (whole segments; the longest wins).",
    )
    roles: tuple[Role, ...] = option(("referral", "server"), help="Tiers it applies on.")
    key: KeyMode | None = option(
        None, help="Who a request counts against; unset: the top-level `key`."
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitOptions:
    """The default limit, the extra ones, and how clients are told apart."""

    rate: float | None = option(
        None,
        check=check_rate,
        help="Requests per second of the default limit (named `default`, prefix `/`), "
        "in (0, 1e9]. Unset: no default limit.",
    )
    burst: int | None = option(
        None,
        low=1,
        high=10**9,
        help="Requests admitted at once from a full allowance; needs `rate`. "
        "Unset: `rate` rounded up, at least 1.",
    )
    key: KeyMode = option(
        "client_or_ip",
        help="Who a request counts against: `client_or_ip` is the `client_id` of a valid "
        "affinity token when present, else the address; `ip` is always the address.",
    )
    ipv4_prefix: int = option(
        32, low=1, high=32, help="IPv4 addresses are grouped by this prefix (`24`: one per /24)."
    )
    ipv6_prefix: int = option(
        64,
        low=1,
        high=128,
        help="IPv6 addresses are grouped by this prefix (a host usually owns a whole /64).",
    )
    roles: tuple[Role, ...] = option(
        ("referral", "server"), help="Tiers the plugin acts on at all."
    )
    exempt_paths: tuple[str, ...] = option(
        DEFAULT_EXEMPT,
        pattern="/.*",
        expected="a path starting with '/'",
        help="Prefixes never limited, so health checks never read a 429; `[]` limits them too.",
    )
    max_keys: int = option(
        DEFAULT_MAX_KEYS,
        low=1,
        high=10**9,
        help="Most keys held per process. File only (not in a shared document).",
    )
    allow_loosening: bool = option(
        False,
        help="File only: let the shared document remove or loosen the file's limits "
        "(otherwise it may only tighten them).",
    )
    headers: HeaderMode = option("draft-08", help="Which `RateLimit` fields a 429 carries.")
    limits: tuple[LimitOptions, ...] = option((), help="Extra limits.")
