"""The assignment-policy base class: what a policy plugin returns from ``affinity_make_policy``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from affinity.models import AssignRequest, Pool, Server
from affinity.plugin.options import NoOptions, Origin, read_options

ORIGIN = Origin("policy_options", None)
"""Where policy options come from, as errors name them before the manager adds the service."""


class Policy(ABC):
    """Chooses a server for a new (or returning, non-sticky) client.

    ``choose`` is on the request path: synchronous, no I/O, and it must not scan
    the whole pool when the pool is large unless the policy says so.
    ``pool.assignable`` holds the passing, non-draining, under-capacity servers;
    the policy must skip ``request.avoid``. One policy object lives per service
    per worker process; ``guarantee`` says in one sentence what the policy
    promises across workers and referral replicas.

    A policy with options declares them once, as a dataclass in
    :attr:`options_class` (see :mod:`affinity.plugin.options`); the service's
    ``policy_options`` table is converted to it, checked, and kept in
    :attr:`options`. An unknown or bad option raises ConfigError naming
    ``policy_options.<key>``; the plugin manager adds the service and the file.
    """

    name: ClassVar[str]
    guarantee: ClassVar[str] = ""
    options_class: ClassVar[type[Any]] = NoOptions
    """The dataclass of the policy's options; by default it takes none."""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options: Any = read_options(self.options_class, options or {}, ORIGIN)

    @abstractmethod
    def choose(self, pool: Pool, request: AssignRequest) -> Server | None:
        """Return the server for this request, or None when none can be assigned."""
