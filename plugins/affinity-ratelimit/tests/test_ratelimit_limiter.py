"""The limiter as the core calls it: keys, limit choice, answers and headers, config errors."""

from __future__ import annotations

from typing import Any

import pytest
from affinity_ratelimit import RateLimiter
from affinity_ratelimit.headers import quota_window
from hypothesis import given, settings
from hypothesis import strategies as st

from affinity.errors import ConfigError
from affinity.models import Rejection, RequestInfo


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(clock: Clock | None = None, **options: Any) -> RateLimiter:
    limiter = RateLimiter(clock=clock or Clock())
    limiter.configure_table(options, source="/etc/affinity/affinity.toml")
    return limiter


def req(
    ip: str = "192.0.2.1", path: str = "/v1/assign", role: str = "server", **kw: Any
) -> RequestInfo:
    return RequestInfo(role=role, method="GET", path=path, client_ip=ip, **kw)


def admitted(limiter: RateLimiter, request: RequestInfo, n: int) -> int:
    return sum(limiter.reject(request) is None for _ in range(n))


def test_no_rate_means_no_limit() -> None:
    limiter = make()
    assert admitted(limiter, req(), 1000) == 1000
    assert limiter.table_size == 0


def test_burst_then_refused() -> None:
    limiter = make(rate=2, burst=5)
    assert admitted(limiter, req(), 10) == 5
    assert limiter.counters() == {"ratelimit.default": 5}


def test_default_burst_is_one_second_of_rate() -> None:
    assert admitted(make(rate=20), req(), 100) == 20
    assert admitted(make(rate=0.1), req(), 100) == 1


def test_rejection_shape_and_draft_08_headers() -> None:
    limiter = make(rate=1, burst=10)
    admitted(limiter, req(), 10)
    answer = limiter.reject(req())
    assert answer == Rejection(
        status=429,
        error="rate_limited",
        detail="too many requests under limit 'default'; retry in 1 s",
        retry_after=1,
        headers={"RateLimit-Policy": '"default";q=10;w=10', "RateLimit": '"default";r=0;t=10'},
        rule="ratelimit.default",
    )


def test_draft_07_headers() -> None:
    limiter = make(rate=50, burst=10, headers="draft-07")
    admitted(limiter, req(), 10)
    answer = limiter.reject(req())
    assert answer is not None
    assert dict(answer.headers) == {
        "RateLimit-Limit": "50",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "1",
    }
    limiter = make(rate=50, burst=10, headers="draft-06")
    admitted(limiter, req(), 10)
    answer = limiter.reject(req())
    assert answer is not None
    assert set(answer.headers) == {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}


def test_no_headers() -> None:
    limiter = make(rate=1, burst=1, headers="none")
    limiter.reject(req())
    answer = limiter.reject(req())
    assert answer is not None
    assert dict(answer.headers) == {}
    assert answer.retry_after == 1


@pytest.mark.parametrize(
    ("rate", "burst", "q", "w"),
    [
        (1, 10, 10, 10),
        (50, 10, 50, 1),
        (10, 10, 10, 1),
        (3, 10, 12, 4),
        (0.5, 3, 3, 6),
        (0.1, 1, 1, 10),
    ],
)
def test_quota_window(rate: float, burst: int, q: int, w: int) -> None:
    assert quota_window(rate, burst) == (q, w)


@settings(database=None, deadline=None, max_examples=80)
@given(
    st.floats(min_value=0.01, max_value=500, allow_nan=False),
    st.integers(1, 40),
    st.floats(min_value=0, max_value=1e5, allow_nan=False),
)
def test_waiting_retry_after_then_admits(rate: float, burst: int, start: float) -> None:
    clock = Clock(start)
    limiter = make(clock, rate=rate, burst=burst)
    while (answer := limiter.reject(req())) is None:
        pass
    assert answer.retry_after is not None
    assert answer.retry_after >= 1
    assert answer.retry_after == int(answer.retry_after)
    assert "RateLimit" in answer.headers
    clock.now += answer.retry_after
    assert limiter.reject(req()) is None


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    clock = Clock()
    limiter = make(clock, rate=0.4, burst=1)  # one request every 2.5 s
    limiter.reject(req())
    answer = limiter.reject(req())
    assert answer is not None
    assert answer.retry_after == 3
    clock.now += 2.4
    assert limiter.reject(req()) is not None
    clock.now += 0.1
    assert limiter.reject(req()) is None


def test_keyed_by_client_id_when_present() -> None:
    limiter = make(rate=1, burst=2)
    assert admitted(limiter, req("192.0.2.1", client_id="alice"), 5) == 2
    # Same address, another client: its own allowance.
    assert admitted(limiter, req("192.0.2.1", client_id="bob"), 5) == 2
    # Alice from another address: still Alice.
    assert admitted(limiter, req("198.51.100.9", client_id="alice"), 5) == 0
    # No token: keyed by address, apart from every client id.
    assert admitted(limiter, req("192.0.2.1"), 5) == 2


def test_key_ip_ignores_client_ids() -> None:
    limiter = make(rate=1, burst=2, key="ip")
    assert admitted(limiter, req("192.0.2.1", client_id="alice"), 5) == 2
    assert admitted(limiter, req("192.0.2.1", client_id="bob"), 5) == 0


def test_per_limit_key_overrides() -> None:
    limiter = make(
        rate=100,
        limits=[{"name": "assign", "prefix": "/v1/assign", "rate": 1, "burst": 1, "key": "ip"}],
    )
    assert admitted(limiter, req(client_id="a"), 3) == 1
    assert admitted(limiter, req(client_id="b"), 3) == 0


def test_ipv6_keyed_by_slash_64() -> None:
    limiter = make(rate=1, burst=2)
    assert admitted(limiter, req("2001:db8:1:2::1"), 1) == 1
    assert admitted(limiter, req("2001:db8:1:2:ffff:ffff:ffff:ffff"), 5) == 1
    assert admitted(limiter, req("2001:db8:1:3::1"), 5) == 2  # next /64: its own allowance


def test_ipv6_prefix_is_configurable() -> None:
    limiter = make(rate=1, burst=1, ipv6_prefix=128)
    assert admitted(limiter, req("2001:db8::1"), 3) == 1
    assert admitted(limiter, req("2001:db8::2"), 3) == 1
    limiter = make(rate=1, burst=1, ipv6_prefix=48)
    assert admitted(limiter, req("2001:db8:0:1::1"), 3) == 1
    assert admitted(limiter, req("2001:db8:0:2::1"), 3) == 0


def test_ipv4_by_address_and_mapped_is_the_same_client() -> None:
    limiter = make(rate=1, burst=2)
    assert admitted(limiter, req("192.0.2.1"), 1) == 1
    assert admitted(limiter, req("::ffff:192.0.2.1"), 5) == 1
    assert admitted(limiter, req("192.0.2.2"), 5) == 2
    limiter = make(rate=1, burst=1, ipv4_prefix=24)
    assert admitted(limiter, req("192.0.2.1"), 1) == 1
    assert admitted(limiter, req("192.0.2.200"), 1) == 0


def test_forwarding_headers_never_change_the_key() -> None:
    limiter = make(rate=1, burst=3)
    spoofs = [{"X-Forwarded-For": f"10.0.0.{i}", "Forwarded": f"for=10.0.0.{i}"} for i in range(20)]
    assert sum(limiter.reject(req(headers=h)) is None for h in spoofs) == 3


def test_unparseable_address_is_still_limited() -> None:
    limiter = make(rate=1, burst=1)
    assert admitted(limiter, req("unix:/run/affinity.sock"), 3) == 1


def test_most_specific_limit_wins() -> None:
    limiter = make(
        rate=100,
        burst=100,
        limits=[
            {"name": "admin", "prefix": "/admin", "rate": 1, "burst": 1},
            {"name": "admin-users", "prefix": "/admin/users", "rate": 1, "burst": 2},
            {
                "name": "referral-assign",
                "prefix": "/v1/assign",
                "roles": ["referral"],
                "rate": 1,
                "burst": 3,
            },
        ],
    )
    assert admitted(limiter, req(path="/admin/x"), 5) == 1
    assert admitted(limiter, req(path="/admin/users/7"), 5) == 2
    assert admitted(limiter, req(path="/v1/assign", role="referral"), 5) == 3
    assert admitted(limiter, req(path="/v1/assign", role="server"), 5) == 5  # default on servers
    assert limiter.counters() == {
        "ratelimit.admin": 4,
        "ratelimit.admin-users": 3,
        "ratelimit.referral-assign": 2,
    }


def test_limit_choice_sees_through_spellings() -> None:
    limiter = make(limits=[{"name": "admin", "prefix": "/admin", "rate": 1, "burst": 1}])
    paths = ["/admin", "/x/../admin", "/%61dmin", "//admin/", "/ADMIN"]
    assert sum(limiter.reject(req(path=p)) is None for p in paths) == 1
    assert admitted(limiter, req(path="/administrator"), 3) == 3  # no limit applies there


def test_roles_option() -> None:
    limiter = make(rate=1, burst=1, roles=["referral"])
    assert admitted(limiter, req(role="server"), 3) == 3
    assert admitted(limiter, req(role="referral"), 3) == 1


def test_health_paths_are_exempt_by_default_but_not_their_odd_spellings() -> None:
    limiter = make(rate=1, burst=1)
    assert admitted(limiter, req(path="/.well-known/affinity/health"), 5) == 5
    assert admitted(limiter, req(path="/healthz", role="referral"), 5) == 5
    sneaky = req(path="/.well-known/affinity/health/%2e%2e/%2e%2e/%2e%2e/v1/assign")
    assert admitted(limiter, sneaky, 3) == 1
    limiter = make(rate=1, burst=1, exempt_paths=[])
    assert admitted(limiter, req(path="/healthz"), 3) == 1


def test_limiting_one_client_leaves_another_alone() -> None:
    # Test plan L3, on a fake clock: one address floods at 5x, another stays under its limit.
    clock = Clock()
    limiter = make(clock, rate=50, burst=10)
    flood, calm = req("192.0.2.1"), req("192.0.2.2")
    flood_ok = calm_refused = 0
    for ms in range(10_000):
        clock.now = 1000 + ms / 1000
        if ms % 4 == 0:
            flood_ok += limiter.reject(flood) is None
        if ms % 100 == 0:
            calm_refused += limiter.reject(calm) is not None
    assert abs(flood_ok - (10 + 50 * 10)) <= 1
    assert calm_refused == 0


def test_bounded_memory_through_the_public_api() -> None:
    limiter = make(rate=1, burst=1, max_keys=1000)
    for i in range(20_000):
        assert limiter.reject(req(client_id=f"client-{i}")) is None
    assert limiter.table_size == 1000
    assert limiter.evicted_active == 19_000  # all were fresh: max_keys is too small here


@pytest.mark.parametrize(
    ("options", "key", "words"),
    [
        ({"rate": 0}, "plugins.ratelimit.rate", "got 0"),
        ({"rate": -1.5}, "plugins.ratelimit.rate", "-1.5"),
        ({"rate": float("inf")}, "plugins.ratelimit.rate", "inf"),
        ({"rate": "fast"}, "plugins.ratelimit.rate", "'fast'"),
        ({"rate": True}, "plugins.ratelimit.rate", "True"),
        ({"rate": 1, "burst": 0}, "plugins.ratelimit.burst", "got 0"),
        ({"rate": 1, "burst": 2.5}, "plugins.ratelimit.burst", "2.5"),
        ({"burst": 5}, "plugins.ratelimit.burst", "'rate'"),
        ({"key": "cookie"}, "plugins.ratelimit.key", "'cookie'"),
        ({"headers": "draft-99"}, "plugins.ratelimit.headers", "'draft-99'"),
        ({"ipv6_prefix": 0}, "plugins.ratelimit.ipv6_prefix", "from 1 to 128"),
        ({"ipv4_prefix": 33}, "plugins.ratelimit.ipv4_prefix", "from 1 to 32"),
        ({"max_keys": 0}, "plugins.ratelimit.max_keys", "got 0"),
        ({"roles": ["edge"]}, "plugins.ratelimit.roles[0]", "'edge'"),
        ({"exempt_paths": ["healthz"]}, "plugins.ratelimit.exempt_paths[0]", "'healthz'"),
        ({"rates": 5}, "plugins.ratelimit.rates", "unknown key"),
        ({"limits": [{"prefix": "/a"}]}, "plugins.ratelimit.limits[0].rate", "missing"),
        ({"limits": [{"rate": 1, "name": 'x"; y'}]}, "plugins.ratelimit.limits[0].name", "letters"),
        (
            {"limits": [{"rate": 1, "name": "default"}]},
            "plugins.ratelimit.limits[0].name",
            "'default'",
        ),
        (
            {"limits": [{"rate": 1, "name": "a"}, {"rate": 2, "name": "a"}]},
            "plugins.ratelimit.limits[1].name",
            "duplicate",
        ),
        ({"limits": [{"rate": 1, "prefix": "x"}]}, "plugins.ratelimit.limits[0].prefix", "'x'"),
        ({"limits": [{"rate": 1, "roles": "server"}]}, "plugins.ratelimit.limits[0].roles", "list"),
        ({"limits": [{"rate": 1, "burst": -1}]}, "plugins.ratelimit.limits[0].burst", "-1"),
        ({"limits": [{"rate": 1, "per": "ip"}]}, "plugins.ratelimit.limits[0].per", "unknown"),
        ({"limits": {"rate": 1}}, "plugins.ratelimit.limits", "expected a list"),
    ],
)
def test_bad_options_raise_config_error_naming_the_key(
    options: dict[str, Any], key: str, words: str
) -> None:
    limiter = RateLimiter()
    with pytest.raises(ConfigError) as info:
        limiter.configure_table(options, source="/etc/affinity/affinity.toml")
    assert info.value.key == key
    assert info.value.source == "/etc/affinity/affinity.toml"
    assert words in str(info.value)


def test_many_addresses_and_paths_keep_the_caches_bounded_and_answers_right() -> None:
    from affinity.plugin.shared_settings import CACHE_SIZE

    limiter = make(rate=0.001, burst=1, limits=[{"name": "x", "prefix": "/x", "rate": 1000.0}])
    for i in range(CACHE_SIZE + 500):
        ip = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        assert limiter.reject(req(ip, path=f"/p{i}")) is None  # a fresh allowance each
        assert limiter.reject(req(ip, path=f"/p{i}")).rule == "ratelimit.default"  # type: ignore[union-attr]
    in_force = limiter._in_force
    assert len(in_force.limits) <= CACHE_SIZE and len(in_force.addresses) <= CACHE_SIZE


def test_an_unconfigured_limiter_admits_everything() -> None:
    assert admitted(RateLimiter(), req(), 10) == 10


def test_without_a_clock_the_limiter_uses_the_monotonic_one() -> None:
    limiter = RateLimiter()
    limiter.configure_table({"rate": 0.001, "burst": 1}, source="affinity.toml")
    assert admitted(limiter, req(), 3) == 1, "one request per 1000 s"


def test_the_highest_rate_is_allowed() -> None:
    assert admitted(make(rate=1e9, burst=1), req(), 3) >= 1
