"""The filter as the core calls it: precedence, roles, path rules, answers, config errors."""

from __future__ import annotations

from typing import Any

import pytest
from affinity_ipfilter import IPFilter

from affinity.errors import ConfigError
from affinity.models import Rejection, RequestInfo


def make(**options: Any) -> IPFilter:
    f = IPFilter()
    f.configure_table(options, source="/etc/affinity/affinity.toml")
    return f


def req(ip: str, path: str = "/", role: str = "server", **kw: Any) -> RequestInfo:
    return RequestInfo(role=role, method="GET", path=path, client_ip=ip, **kw)


def rule(f: IPFilter, ip: str, path: str = "/", role: str = "server") -> str | None:
    answer = f.reject(req(ip, path, role))
    return None if answer is None else answer.rule


def test_no_options_admits_everything() -> None:
    f = make()
    assert f.reject(req("203.0.113.9")) is None
    assert f.reject(req("garbage")) is None


def test_deny_list() -> None:
    f = make(deny=["198.51.100.0/24", "2001:db8:bad::/48"])
    assert rule(f, "198.51.100.7") == "ipfilter.deny[0]"
    assert rule(f, "::ffff:198.51.100.7") == "ipfilter.deny[0]"
    assert rule(f, "2001:db8:bad::1") == "ipfilter.deny[1]"
    assert rule(f, "198.51.101.7") is None
    assert rule(f, "2001:db8:900d::1") is None


def test_allow_list_admits_only_its_networks() -> None:
    f = make(allow=["10.0.0.0/8", "fd00::/8"])
    assert rule(f, "10.1.1.1") is None
    assert rule(f, "fd12::1") is None
    assert rule(f, "::ffff:10.1.1.1") is None
    assert rule(f, "11.1.1.1") == "ipfilter.allow"
    assert rule(f, "2001:db8::1") == "ipfilter.allow"


def test_deny_wins_over_allow() -> None:
    f = make(allow=["10.0.0.0/8"], deny=["10.66.0.0/16"])
    assert rule(f, "10.1.2.3") is None
    assert rule(f, "10.66.2.3") == "ipfilter.deny[0]"


def test_deny_wins_even_when_the_allow_is_more_specific() -> None:
    f = make(allow=["10.66.6.6"], deny=["10.0.0.0/8"])
    assert rule(f, "10.66.6.6") == "ipfilter.deny[0]"


def test_path_rules_narrow_and_apply_under_their_prefix_only() -> None:
    f = make(
        allow=["10.0.0.0/8", "192.0.2.0/24"],
        paths=[
            {"prefix": "/admin", "allow": ["10.9.0.0/16"]},
            {"prefix": "/public", "deny": ["192.0.2.66"]},
        ],
    )
    assert rule(f, "10.9.1.1", "/admin/users") is None
    assert rule(f, "10.1.1.1", "/admin/users") == "ipfilter.paths[0].allow"
    assert rule(f, "10.1.1.1", "/administrator") is None
    assert rule(f, "192.0.2.66", "/public/x") == "ipfilter.paths[1].deny[0]"
    assert rule(f, "192.0.2.66", "/other") is None
    # A path rule never widens the top-level allow list.
    assert rule(f, "172.16.0.1", "/public/x") == "ipfilter.allow"


def test_every_path_rule_over_a_path_applies_and_the_first_listed_names_the_refusal() -> None:
    f = make(
        paths=[
            {"prefix": "/api/admin", "allow": ["10.1.0.0/16"]},
            {"prefix": "/api", "allow": ["10.0.0.0/8"], "deny": ["10.1.6.0/24"]},
            {"prefix": "/api", "deny": ["10.1.7.0/24"]},
            {"prefix": "/api/admin/keys", "allow": ["10.1.2.0/24"]},
        ]
    )
    under_all = "/api/admin/keys/1"
    assert rule(f, "10.1.2.3", under_all) is None
    # Every deny list is read before any allow list; each names itself.
    assert rule(f, "10.1.6.1", under_all) == "ipfilter.paths[1].deny[0]"
    assert rule(f, "10.1.7.1", under_all) == "ipfilter.paths[2].deny[0]"
    # Refused by three allow lists: the first in the document is named, not the longest prefix.
    assert rule(f, "192.0.2.1", under_all) == "ipfilter.paths[0].allow"
    assert rule(f, "10.2.0.1", under_all) == "ipfilter.paths[0].allow"
    assert rule(f, "10.1.3.1", under_all) == "ipfilter.paths[3].allow"
    assert rule(f, "10.2.0.1", "/api/admin") == "ipfilter.paths[0].allow"
    assert rule(f, "10.2.0.1", "/api/other") is None
    assert rule(f, "192.0.2.1", "/api/other") == "ipfilter.paths[1].allow"
    assert rule(f, "10.1.7.1", "/api") == "ipfilter.paths[2].deny[0]"
    assert rule(f, "192.0.2.1", "/other") is None
    assert dict(f.counters()) == {
        "ipfilter.paths[0].allow": 3,
        "ipfilter.paths[1].allow": 1,
        "ipfilter.paths[1].deny[0]": 1,
        "ipfilter.paths[2].deny[0]": 2,
        "ipfilter.paths[3].allow": 1,
    }


@pytest.mark.parametrize(
    "path",
    [
        "/admin",
        "/x/../admin",
        "/%61dmin",
        "//admin",
        "/ADMIN/",
        "/admin;x=1",
        "/x/..;/admin",
        "/admin/%2e%2e/public",
        "/admin\\panel",
    ],
)
def test_path_rules_see_through_spellings(path: str) -> None:
    f = make(paths=[{"prefix": "/admin", "allow": ["127.0.0.1"]}])
    assert rule(f, "203.0.113.1", path) == "ipfilter.paths[0].allow"
    assert rule(f, "127.0.0.1", path) is None


def test_roles() -> None:
    f = make(deny=["0.0.0.0/0"], roles=["referral"])
    assert rule(f, "1.2.3.4", role="referral") == "ipfilter.deny[0]"
    assert rule(f, "1.2.3.4", role="server") is None


def test_unparseable_address_fails_closed_only_under_an_allow_list() -> None:
    assert make(deny=["0.0.0.0/0", "::/0"]).reject(req("unix:/run/x.sock")) is None
    answer = make(allow=["10.0.0.0/8"]).reject(req("<script>"))
    assert answer is not None
    assert "<script>" not in answer.detail
    assert answer.detail == "the client address is not allowed"


@pytest.mark.parametrize("ip", ["unix:/run/x.sock", "<script>", ""])
def test_unparseable_address_fails_closed_under_a_path_allow_list(ip: str) -> None:
    f = make(
        paths=[{"prefix": "/admin", "allow": ["127.0.0.1"]}, {"prefix": "/x", "deny": ["::1"]}]
    )
    assert rule(f, ip, "/admin/users") == "ipfilter.paths[0].allow"
    assert rule(f, ip, "/x/y") is None, "a deny list alone does not refuse it"
    assert rule(f, ip, "/other") is None, "no allow list applies there"


def test_rejection_shape() -> None:
    f = make(deny=["2001:db8::/32"])
    answer = f.reject(req("2001:0db8:0000::0001", "/secret/%3Cscript%3E"))
    assert answer == Rejection(
        status=403,
        error="forbidden",
        detail="address 2001:db8::1 is not allowed",
        rule="ipfilter.deny[0]",
    )


def test_forwarding_headers_are_never_read() -> None:
    f = make(allow=["10.0.0.0/8"])
    spoofed = req(
        "203.0.113.5",
        headers={
            "X-Forwarded-For": "10.0.0.1",
            "Forwarded": "for=10.0.0.1",
            "X-Real-IP": "10.0.0.1",
        },
    )
    answer = f.reject(spoofed)
    assert answer is not None
    assert answer.detail == "address 203.0.113.5 is not allowed"


def test_counters_by_rule() -> None:
    f = make(allow=["10.0.0.0/8"], deny=["10.6.0.0/16"])
    for ip in ["10.6.0.1", "10.6.0.2", "11.0.0.1", "10.1.1.1"]:
        f.reject(req(ip))
    assert dict(f.counters()) == {"ipfilter.deny[0]": 2, "ipfilter.allow": 1}
    assert f.version == 0


@pytest.mark.parametrize(
    ("options", "key", "words"),
    [
        (
            {"deny": ["10.0.0.0/8", "1.2.3.4", "10.0.0.1/8"]},
            "plugins.ipfilter.deny[2]",
            "10.0.0.1/8",
        ),
        ({"allow": ["300.0.0.0/8"]}, "plugins.ipfilter.allow[0]", "300.0.0.0/8"),
        ({"allow": ["2001:db8::/200"]}, "plugins.ipfilter.allow[0]", "2001:db8::/200"),
        ({"allow": "10.0.0.0/8"}, "plugins.ipfilter.allow", "expected a list"),
        ({"deny": [42]}, "plugins.ipfilter.deny[0]", "42"),
        ({"roles": ["referral", "proxy"]}, "plugins.ipfilter.roles[1]", "'proxy'"),
        ({"alow": ["10.0.0.0/8"]}, "plugins.ipfilter.alow", "unknown key"),
        ({"paths": [{"allow": ["10.0.0.0/8"]}]}, "plugins.ipfilter.paths[0].prefix", "'/'"),
        (
            {"paths": [{"prefix": "admin", "allow": ["1.1.1.1"]}]},
            "plugins.ipfilter.paths[0].prefix",
            "'admin'",
        ),
        ({"paths": [{"prefix": "/a"}]}, "plugins.ipfilter.paths[0]", "non-empty"),
        (
            {"paths": [{"prefix": "/a", "deny": ["1.1.1.1"]}, {"prefix": "/b", "deny": ["x"]}]},
            "plugins.ipfilter.paths[1].deny[0]",
            "'x'",
        ),
        (
            {"paths": [{"prefix": "/a", "allow": ["1.1.1.1"], "roles": []}]},
            "plugins.ipfilter.paths[0].roles",
            "unknown",
        ),
        ({"paths": ["/admin"]}, "plugins.ipfilter.paths[0]", "expected a table"),
    ],
)
def test_bad_options_raise_config_error_naming_the_key(
    options: dict[str, Any], key: str, words: str
) -> None:
    f = IPFilter()
    with pytest.raises(ConfigError) as info:
        f.configure_table(options, source="/etc/affinity/affinity.toml")
    assert info.value.key == key
    assert info.value.source == "/etc/affinity/affinity.toml"
    assert words in str(info.value)
    assert str(info.value).startswith(f"/etc/affinity/affinity.toml: {key}: ")


def test_failed_reconfigure_keeps_the_previous_rules() -> None:
    f = make(deny=["10.0.0.0/8"])
    with pytest.raises(ConfigError):
        f.configure_table({"deny": ["bogus"]}, source="/etc/affinity/affinity.toml")
    assert rule(f, "10.0.0.1") == "ipfilter.deny[0]"


def test_decisions_hold_while_remembered_addresses_and_paths_come_and_go() -> None:
    """Parsed addresses and path readings are remembered in bounded caches; answers never change."""
    from affinity.plugin.shared_settings import CACHE_KEY_LENGTH, CACHE_SIZE

    f = make(deny=["10.0.0.0/16"], paths=[{"prefix": "/admin", "allow": ["10.1.0.0/16"]}])
    for round_ in range(2):  # the second round answers from the caches
        for i in range(CACHE_SIZE + 500):  # more than fit: the caches are dropped and refilled
            ip = f"10.{i % 3}.{i // 250 % 250}.{i % 250}"
            path = "/admin/x" if i % 2 else f"/p{i}"
            expected = {0: "ipfilter.deny[0]", 1: None, 2: None}[i % 3]
            if expected is None and path == "/admin/x" and i % 3 == 2:
                expected = "ipfilter.paths[0].allow"
            assert rule(f, ip, path) == expected, (round_, ip, path)
    assert len(f._addresses) <= CACHE_SIZE and len(f._forms) <= CACHE_SIZE
    assert len(f._in_force.decisions) <= CACHE_SIZE
    long_path = "/admin/" + "a" * CACHE_KEY_LENGTH
    assert rule(f, "10.2.0.1", long_path) == "ipfilter.paths[0].allow"
    assert long_path not in f._forms  # long paths are worked out each time, not kept


def test_a_refused_client_stays_refused_on_every_request() -> None:
    """Decisions are remembered per (role, address, path): the memo must keep the refusal."""
    f = make(deny=["198.51.100.0/24"])
    assert [rule(f, "198.51.100.7", "/x") for _ in range(3)] == ["ipfilter.deny[0]"] * 3
    assert f.counters() == {"ipfilter.deny[0]": 3}


def test_an_unconfigured_filter_admits_everything() -> None:
    assert IPFilter().reject(req("198.51.100.7")) is None


def test_a_path_rule_without_networks_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        make(paths=[{"prefix": "/admin", "allow": []}])
    assert info.value.message == "a path rule needs a non-empty 'allow' or 'deny'"
    assert info.value.key == "plugins.ipfilter.paths[0]"
