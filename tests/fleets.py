"""Small fleets that several test modules start the same way."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from affinity.testing import Deployment

TWO_STATIC_SERVERS = """
[services.web]
policy = "round_robin"
servers = [
  {id = "s1", url = "https://s1.affinity.test:8443"},
  {id = "s2", url = "https://s2.affinity.test:8443"},
]
"""
"""Two servers known from the config only; nothing listens there."""


@contextmanager
def static_referral(directory: Path) -> Iterator[Deployment]:
    """A running referral with :data:`TWO_STATIC_SERVERS` and no health checks."""
    with Deployment(directory, services=TWO_STATIC_SERVERS, health="sources = []") as d:
        d.start_referral()
        yield d
