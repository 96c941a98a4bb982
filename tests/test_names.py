from __future__ import annotations

import pytest

from affinity.web.names import check_id, check_origin, is_valid_id


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
