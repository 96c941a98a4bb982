"""The memo of normalised paths request_info reads: exact, and bounded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from affinity.web.http import PathMemo, normalise_path


@dataclass
class Target:
    """What PathMemo reads of a request: the target as it arrived, and Sanic's decoded path."""

    raw_url: bytes
    path: str


def target(raw: str) -> Any:
    return Target(raw.encode(), raw.split("?", 1)[0])


TARGETS = ["/", "/a/../admin", "/%61dmin", "//admin", "/x/./y/", "/items?q=1", "/items?q=2"]


def test_a_remembered_path_is_what_normalise_path_says() -> None:
    memo = PathMemo()
    for _ in range(2):  # a miss, then a hit
        for raw in TARGETS:
            request = target(raw)
            expected = normalise_path(request.path)
            assert memo.path(request) == expected
            assert memo.get(request.raw_url) == expected


def test_a_flood_of_distinct_targets_holds_at_most_size() -> None:
    memo = PathMemo(size=8)
    for n in range(1000):
        request = target(f"/flood/{n}")
        assert memo.path(request) == f"/flood/{n}"
        assert 1 <= len(memo) <= 8
    assert memo.path(target("/a/../b")) == "/b"  # still exact once full


def test_a_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="size must be at least 1"):
        PathMemo(size=0)
