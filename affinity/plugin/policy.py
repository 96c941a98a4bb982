"""The assignment-policy base class: what a policy plugin returns from ``affinity_make_policy``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from affinity.models import AssignRequest, Pool, Server


class Policy(ABC):
    """Chooses a server for a new (or returning, non-sticky) client.

    ``choose`` is on the request path: synchronous, no I/O, and it must not scan
    the whole pool when the pool is large unless the policy says so.
    ``pool.assignable`` holds the passing, non-draining, under-capacity servers;
    the policy must skip ``request.avoid``. One policy object lives per service
    per worker process; ``guarantee`` says in one sentence what the policy
    promises across workers and referral replicas.
    """

    name: ClassVar[str]
    guarantee: ClassVar[str] = ""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options: Mapping[str, Any] = dict(options or {})

    @abstractmethod
    def choose(self, pool: Pool, request: AssignRequest) -> Server | None:
        """Return the server for this request, or None when none can be assigned."""
