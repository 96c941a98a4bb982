"""Shared settings: checked whole, applied atomically by version, layered over the file's rules."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from affinity_ipfilter import IPFilter
from affinity_ipfilter.networks import parse_address
from affinity_ipfilter.rules import RuleSet

from affinity.errors import ConfigError
from affinity.models import Rejection, RequestInfo, SharedSettings
from affinity.web.paths import path_variants


def make(**options: Any) -> IPFilter:
    f = IPFilter()
    f.configure_table(options, source="affinity.toml")
    return f


def doc(version: int, **value: Any) -> SharedSettings:
    return SharedSettings(name="ipfilter", version=version, value=value)


def rule(f: IPFilter, ip: str, path: str = "/") -> str | None:
    answer = f.reject(RequestInfo(role="server", method="GET", path=path, client_ip=ip))
    return None if answer is None else answer.rule


def decide(rules: RuleSet, ip: str, path: str = "/") -> str | None:
    """What a compiled rule set says of one request to an app server."""
    return rules.check("server", parse_address(ip), lambda: path_variants(path))


def test_check_accepts_a_good_document_and_compiles_every_rule() -> None:
    rules = IPFilter().compile_settings(
        doc(1, deny=["10.0.0.0/8"], paths=[{"prefix": "/a", "allow": ["::1"]}])
    )
    assert rules.active
    assert decide(rules, "10.1.2.3") == "ipfilter.settings.deny[0]"
    assert decide(rules, "192.0.2.1") is None
    assert decide(rules, "192.0.2.1", "/a/b") == "ipfilter.settings.paths[0].allow"
    assert decide(rules, "::1", "/a/b") is None


def test_check_rejects_a_bad_document_whole_naming_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        IPFilter().compile_settings(doc(3, deny=["10.0.0.0/8", "10.0.0.300"]))
    assert info.value.key == "ipfilter.deny[1]"
    assert info.value.source == "shared settings 'ipfilter' version 3"


def test_changed_applies_a_newer_version_layered_over_the_file() -> None:
    f = make(deny=["10.0.0.0/8"])
    assert f.apply_settings(doc(5, deny=["192.0.2.0/24"]))
    assert f.version == 5
    assert rule(f, "10.0.0.1") == "ipfilter.deny[0]"  # the file's rule still holds
    assert rule(f, "192.0.2.1") == "ipfilter.settings.deny[0]"
    assert rule(f, "198.51.100.1") is None


def test_an_allow_list_refusal_names_the_file_or_the_document_that_refused() -> None:
    f = make(allow=["10.0.0.0/8"])
    assert f.apply_settings(doc(1, allow=["10.1.0.0/16"]))
    assert rule(f, "10.1.0.1") is None
    assert rule(f, "192.0.2.1") == "ipfilter.allow"  # the file's rules are read first
    answer = f.reject(RequestInfo(role="server", method="GET", path="/", client_ip="10.2.0.1"))
    assert answer == Rejection(
        status=403,
        error="forbidden",
        detail="address 10.2.0.1 is not allowed",
        rule="ipfilter.settings.allow",
    )
    assert dict(f.counters()) == {"ipfilter.allow": 1, "ipfilter.settings.allow": 1}


def test_a_document_cannot_open_what_the_file_closes() -> None:
    f = make(paths=[{"prefix": "/admin", "allow": ["127.0.0.1"]}])
    f.apply_settings(doc(1, allow=["0.0.0.0/0", "::/0"]))
    assert rule(f, "203.0.113.1", "/admin") == "ipfilter.paths[0].allow"


def test_a_newer_document_replaces_the_previous_one_whole() -> None:
    f = make()
    f.apply_settings(doc(1, deny=["192.0.2.0/24"]))
    f.apply_settings(doc(2, deny=["198.51.100.0/24"]))
    assert rule(f, "192.0.2.1") is None
    assert rule(f, "198.51.100.1") == "ipfilter.settings.deny[0]"
    f.apply_settings(doc(3))
    assert rule(f, "198.51.100.1") is None
    assert f.version == 3


def test_older_and_equal_versions_are_ignored() -> None:
    f = make()
    assert f.apply_settings(doc(7, deny=["192.0.2.0/24"]))
    assert not f.apply_settings(doc(6, deny=["198.51.100.0/24"]))
    assert not f.apply_settings(doc(7, deny=[]))
    assert f.version == 7
    assert rule(f, "192.0.2.1") == "ipfilter.settings.deny[0]"
    assert rule(f, "198.51.100.1") is None


def test_a_bad_document_that_slips_through_keeps_the_previous_rules(
    caplog: pytest.LogCaptureFixture,
) -> None:
    f = make()
    f.apply_settings(doc(1, deny=["192.0.2.0/24"]))
    with caplog.at_level(logging.WARNING, logger="affinity_ipfilter"):
        assert not f.apply_settings(doc(2, deny=["192.0.2.0/33"]))
    assert f.version == 1
    assert rule(f, "192.0.2.1") == "ipfilter.settings.deny[0]"
    assert "version 2" in caplog.text


def test_reconfigure_drops_the_shared_document() -> None:
    f = make()
    f.apply_settings(doc(4, deny=["192.0.2.0/24"]))
    f.configure_table({})
    assert f.version == 0
    assert rule(f, "192.0.2.1") is None


def test_counters_survive_a_version_change() -> None:
    f = make(deny=["10.0.0.0/8"])
    rule(f, "10.0.0.1")
    f.apply_settings(doc(1, deny=["192.0.2.0/24"]))
    rule(f, "10.0.0.1")
    rule(f, "192.0.2.1")
    assert dict(f.counters()) == {"ipfilter.deny[0]": 2, "ipfilter.settings.deny[0]": 1}
