from __future__ import annotations

from pathlib import Path

import pytest

from affinity.config import load
from affinity.errors import ConfigError
from affinity.web.names import (
    OriginRules,
    check_id,
    check_origin,
    check_server,
    check_server_origin,
    is_valid_id,
)


@pytest.mark.parametrize("value", ["s1", "web-1", "a.b_c", "A" * 64])
def test_valid_ids(value: str) -> None:
    assert is_valid_id(value)
    assert check_id(value) == value


@pytest.mark.parametrize("value", ["", "-s", "s 1", "s/1", "A" * 65, "é", None, 3, "s\n"])
def test_invalid_ids(value: object) -> None:
    assert not is_valid_id(value)
    with pytest.raises(ValueError, match="not valid"):
        check_id(value)


@pytest.mark.parametrize(
    ("value", "origin"),
    [
        ("https://s1.example.test:8443", "https://s1.example.test:8443"),
        ("https://s1.example.test/", "https://s1.example.test"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://[::1]:8443", "https://[::1]:8443"),
    ],
)
def test_origins(value: str, origin: str) -> None:
    assert check_origin(value) == origin


@pytest.mark.parametrize(
    "value",
    [
        "ftp://s1",
        "https://user@s1",
        "https://s1/path",
        "https://s1?q",
        "https://s1#f",
        "//s1",
        "s1:80",
        "https://s1:99999",
        "https://s1\r\nX: y",
        "https://s 1",
        "https://evil.example\\@s1",
        "https://",
        "javascript:alert(1)",
        42,
    ],
)
def test_bad_origins(value: object) -> None:
    with pytest.raises(ValueError, match="not valid"):
        check_origin(value)


def test_http_can_be_refused() -> None:
    with pytest.raises(ValueError, match="not valid"):
        check_origin("http://s1", allow_http=False)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("http://s1.example.test", "plain http"),
        ("https://2130706433", "numeric host"),
        ("https://0x7f000001", "numeric host"),
        ("https://127.1", "numeric host"),
        ("https://010.0.0.1", "numeric host"),
        ("https://169.254.169.254", "metadata"),
        ("https://100.100.100.200", "metadata"),
        ("https://[fd00:ec2::254]", "metadata"),
        ("https://[::ffff:169.254.169.254]", "metadata"),
        ("https://metadata.google.internal", "metadata"),
        ("https://169.254.1.1", "link-local"),
        ("https://[fe80::1]", "link-local"),
        ("https://0.0.0.0", "unspecified"),
        ("https://[::]", "unspecified"),
        ("https://224.0.0.1", "multicast"),
        ("https://240.0.0.1", "reserved"),
        ("https://255.255.255.255", "reserved"),
        ("https://0.1.2.3", "not an address"),
        ("https://s1.example.test:0", "port 0"),
    ],
)
def test_server_origins_that_point_elsewhere_are_refused(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_server_origin(value)


@pytest.mark.parametrize(
    "value",
    ["https://s1.example.test", "https://127.0.0.1:8443", "https://[::1]:8443", "https://10.1.2.3"],
)
def test_ordinary_server_origins_pass(value: str) -> None:
    assert check_server_origin(value) == value


def test_the_allow_list_names_hosts_and_networks(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        '[registry]\nallow_http = true\nallow_hosts = ["169.254.0.0/16", "127.1", "fe80::/10"]\n'
    )
    rules = OriginRules.from_config(load(tmp_path / "a.toml", env={}))
    for value in ("http://s1", "https://169.254.169.254", "https://127.1", "https://[fe80::2]"):
        assert check_server_origin(value, rules)
    with pytest.raises(ValueError, match="numeric"):
        check_server_origin("https://0x7f000001", rules)


def test_a_bad_allow_list_entry_names_its_key(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[registry]\nallow_hosts = ["ok.test", "not a host"]\n')
    with pytest.raises(ConfigError, match=r"registry\.allow_hosts\[1\]"):
        OriginRules.from_config(load(tmp_path / "a.toml", env={}))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"server_id": "bad id"}, "server id"),
        ({"service": ""}, "service"),
        ({"weight": 10_001}, "weight"),
        ({"weight": True}, "weight"),
        ({"meta": {"k": 1}}, "meta"),
        ({"url": "https://s1/x"}, "server url"),
    ],
)
def test_a_server_entry_is_checked_whole(fields: dict[str, object], match: str) -> None:
    entry: dict[str, object] = {"server_id": "s1", "service": "web", "url": "https://s1.test"}
    assert check_server(**entry).url == "https://s1.test"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        check_server(**{**entry, **fields})  # type: ignore[arg-type]
