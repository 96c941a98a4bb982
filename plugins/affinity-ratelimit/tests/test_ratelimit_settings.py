"""Shared settings: checked whole, laid over the file's options, applied atomically by version."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from affinity_ratelimit import RateLimiter

from affinity.errors import ConfigError
from affinity.models import RequestInfo, SharedSettings


class Clock:
    now = 50.0

    def __call__(self) -> float:
        return self.now


def make(**options: Any) -> RateLimiter:
    """A limiter whose file allows loosening: these tests are about how a document is laid over
    the file. Whether it may loosen the file's limits is tested at the end."""
    options.setdefault("allow_loosening", True)
    limiter = RateLimiter(clock=Clock())
    limiter.configure_table(options, source="affinity.toml")
    return limiter


def doc(version: int, **value: Any) -> SharedSettings:
    return SharedSettings(name="ratelimit", version=version, value=value)


def admitted(limiter: RateLimiter, n: int, path: str = "/", client_id: str | None = None) -> int:
    request = RequestInfo(
        role="server", method="GET", path=path, client_ip="192.0.2.1", client_id=client_id
    )
    return sum(limiter.reject(request) is None for _ in range(n))


def test_check_rejects_a_bad_document_whole_naming_the_key() -> None:
    limiter = make(rate=1, burst=1)
    with pytest.raises(ConfigError) as info:
        limiter.compile_settings(doc(4, rate=5, limits=[{"rate": 1}, {"rate": "lots"}]))
    assert info.value.key == "ratelimit.limits[1].rate"
    assert info.value.source == "shared settings 'ratelimit' version 4"


def test_check_refuses_max_keys_in_a_document() -> None:
    with pytest.raises(ConfigError, match="per process") as info:
        make().compile_settings(doc(1, max_keys=10))
    assert info.value.key == "ratelimit.max_keys"


def test_check_refuses_a_value_that_is_not_a_table() -> None:
    bad = SharedSettings(name="ratelimit", version=1, value=["rate", 5])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="expected a table"):
        make().compile_settings(bad)


def test_a_refused_document_leaves_the_previous_policy_in_force(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = make(rate=1, burst=2)
    assert limiter.apply_settings(doc(1, burst=3))
    with caplog.at_level(logging.WARNING, logger="affinity_ratelimit"):
        assert not limiter.apply_settings(doc(2, burst=0))
    assert limiter.version == 1
    assert admitted(limiter, 10) == 3
    assert "version 2" in caplog.text


def test_a_document_overrides_the_files_keys_and_keeps_the_others() -> None:
    limiter = make(rate=1, burst=2, headers="draft-07", max_keys=50)
    assert limiter.apply_settings(doc(3, burst=5))
    assert limiter.version == 3
    assert limiter.policy.headers == "draft-07"  # kept from the file
    assert limiter.policy.max_keys == 50
    assert admitted(limiter, 10) == 5


def test_null_removes_a_files_key() -> None:
    limiter = make(rate=1, burst=1)
    assert limiter.apply_settings(
        SharedSettings(name="ratelimit", version=1, value={"rate": None, "burst": None})
    )
    assert admitted(limiter, 10) == 10


def test_limits_are_replaced_as_a_whole_list() -> None:
    limiter = make(limits=[{"name": "a", "prefix": "/a", "rate": 1, "burst": 1}])
    limiter.apply_settings(doc(1, limits=[{"name": "b", "prefix": "/b", "rate": 1, "burst": 1}]))
    assert admitted(limiter, 5, "/a") == 5
    assert admitted(limiter, 5, "/b") == 1


def test_older_and_equal_versions_are_ignored() -> None:
    limiter = make(rate=1, burst=1)
    assert limiter.apply_settings(doc(10, burst=4))
    assert not limiter.apply_settings(doc(9, burst=8))
    assert not limiter.apply_settings(doc(10, burst=8))
    assert limiter.version == 10
    assert limiter.policy.limits["/"][0].burst == 4


def test_buckets_survive_a_new_version() -> None:
    limiter = make(rate=1, burst=2)
    assert admitted(limiter, 2) == 2
    limiter.apply_settings(doc(1, burst=3))
    assert admitted(limiter, 5) == 1  # two already spent against the new burst of three


def test_reconfigure_starts_over() -> None:
    limiter = make(rate=1, burst=1)
    limiter.apply_settings(doc(2, burst=2))
    admitted(limiter, 5)
    limiter.configure_table({"rate": 1, "burst": 1}, source="affinity.toml")
    assert limiter.version == 0
    assert limiter.counters() == {}
    assert limiter.table_size == 0
    assert admitted(limiter, 5) == 1


def test_remembered_limit_choices_do_not_outlive_their_policy() -> None:
    """Limit choices and address keys are cached with the policy; a new version starts afresh."""
    limiter = make(limits=[{"name": "a", "prefix": "/a", "rate": 1.0, "burst": 1}])
    request = RequestInfo(role="server", method="GET", path="/a/x", client_ip="192.0.2.1")
    assert limiter.reject(request) is None
    assert limiter.reject(request).rule == "ratelimit.a"  # type: ignore[union-attr]
    moved = [{"name": "b", "prefix": "/b", "rate": 1.0, "burst": 1}]
    assert limiter.apply_settings(doc(1, limits=moved))
    assert limiter.reject(request) is None  # /a has no limit any more
    assert limiter.reject(request) is None
    other = RequestInfo(role="server", method="GET", path="/b", client_ip="192.0.2.1")
    assert limiter.reject(other) is None
    assert limiter.reject(other).rule == "ratelimit.b"  # type: ignore[union-attr]


# -- only tighter than the file ---------------------------------------------------------------

FILE = {
    "rate": 10.0,
    "burst": 10,
    "limits": [{"name": "assign", "prefix": "/v1/assign", "rate": 2.0, "burst": 5, "key": "ip"}],
}
ASSIGN = {"name": "assign", "prefix": "/v1/assign", "rate": 2.0, "burst": 5, "key": "ip"}


def strict() -> RateLimiter:
    limiter = RateLimiter(clock=Clock())
    limiter.configure_table(FILE, source="affinity.toml")
    return limiter


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ({"limits": None}, "removes the file's limit 'assign'"),
        ({"rate": None, "burst": None}, "removes the file's limit 'default'"),
        ({"rate": 100.0}, "over the file's"),
        ({"burst": 11}, "over the file's"),
        ({"limits": [{**ASSIGN, "rate": 3.0}]}, "limit 'assign'"),
        ({"limits": [{**ASSIGN, "key": "client_or_ip"}]}, "keyed by client"),
        ({"limits": [{**ASSIGN, "prefix": "/v1"}]}, "moves"),
        ({"limits": [{**ASSIGN, "roles": ["server"]}]}, "roles"),
        ({"limits": [ASSIGN, {"name": "x", "prefix": "/v1", "rate": 50.0}]}, "takes over"),
        ({"roles": ["server"]}, "limits only the roles"),
        ({"exempt_paths": ["/v1"]}, "exempts"),
        ({"ipv4_prefix": 32, "ipv6_prefix": 128}, "smaller buckets"),
    ],
)
def test_a_document_may_not_loosen_the_files_limits(value: dict[str, Any], why: str) -> None:
    limiter = strict()
    with pytest.raises(ConfigError, match="would loosen the config file's limits") as info:
        limiter.compile_settings(SharedSettings(name="ratelimit", version=1, value=value))
    assert why in str(info.value)
    assert not limiter.apply_settings(SharedSettings(name="ratelimit", version=1, value=value))


@pytest.mark.parametrize(
    "value",
    [
        {"rate": 5.0},
        {"burst": 1, "key": "ip"},
        {"limits": [{**ASSIGN, "rate": 1.0, "burst": 2, "roles": ["referral", "server"]}]},
        {"limits": [ASSIGN, {"name": "tight", "prefix": "/v1/assign/x", "rate": 1.0, "key": "ip"}]},
        {"exempt_paths": []},
        {"ipv4_prefix": 24},
    ],
)
def test_a_document_may_tighten_them(value: dict[str, Any]) -> None:
    assert strict().apply_settings(SharedSettings(name="ratelimit", version=1, value=value))


def test_the_file_may_allow_loosening_and_the_document_may_not_say_so() -> None:
    limiter = make(**FILE)
    assert limiter.apply_settings(doc(1, limits=None, rate=None, burst=None))
    assert admitted(limiter, 50) == 50
    with pytest.raises(ConfigError, match="allow_loosening"):
        limiter.compile_settings(doc(2, allow_loosening=True))


@pytest.mark.parametrize(
    ("value", "key", "message"),
    [
        (
            {"max_keys": 10},
            "ratelimit.max_keys",
            "is per process; set it in the config file's [plugins.ratelimit] table",
        ),
        (
            {"allow_loosening": True},
            "ratelimit.allow_loosening",
            "is the operator's; only the config file's [plugins.ratelimit] table sets it",
        ),
    ],
)
def test_keys_a_document_may_not_set_are_named_with_the_reason(
    value: dict[str, Any], key: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make().compile_settings(SharedSettings(name="ratelimit", version=2, value=value))
    assert (info.value.message, info.value.key, info.value.source) == (
        message,
        key,
        "shared settings 'ratelimit' version 2",
    )


def test_a_loosening_document_is_named_by_its_version() -> None:
    with pytest.raises(ConfigError) as info:
        strict().compile_settings(doc(3, rate=100.0))
    assert (info.value.key, info.value.source) == (
        "ratelimit",
        "shared settings 'ratelimit' version 3",
    )
