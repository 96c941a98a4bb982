"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from affinity.testing import Deployment


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A directory with certs, keys, an admin token and a config; every process killed after."""
    with Deployment(tmp_path / "deployment") as d:
        yield d
