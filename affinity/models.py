"""Value objects shared by the referral, the app servers, the client and plugins.

They are frozen, slotted, keyword-only dataclasses so that they can be shared
between tasks without copies and serialised by orjson as they are. Statuses use
Consul's words.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

_V = TypeVar("_V")


class HealthStatus(enum.StrEnum):
    """A server's health, in Consul's words, from best to worst."""

    PASSING = "passing"
    WARNING = "warning"
    CRITICAL = "critical"
    MAINTENANCE = "maintenance"

    @property
    def rank(self) -> int:
        """Order used when several sources report: the worst wins."""
        return _RANK[self]


_RANK = {
    HealthStatus.PASSING: 0,
    HealthStatus.WARNING: 1,
    HealthStatus.CRITICAL: 2,
    HealthStatus.MAINTENANCE: 3,
}


def worst(*statuses: HealthStatus) -> HealthStatus:
    """The worst of several statuses (maintenance > critical > warning > passing)."""
    return max(statuses, key=_RANK.__getitem__, default=HealthStatus.PASSING)


@dataclass(frozen=True, slots=True, kw_only=True)
class Load:
    """Load a server reports in its health answer.

    ``active_clients`` counts distinct client ids seen in a sliding window;
    ``inflight`` the requests being served now; ``capacity`` the number of
    active clients the server is configured to take (0: unknown, no limit).
    ``extra`` holds figures contributed by plugins.
    """

    active_clients: int = 0
    inflight: int = 0
    capacity: int = 0
    extra: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Server:
    """One app server of a service, as the referral sees it.

    ``since`` is the time (``time.time()``) of the last health change;
    ``load_version`` increases with every load report so a policy can tell a
    fresh report from the one it already counted. ``ramp`` is the share of
    ``weight`` in effect: below 1.0 while the server is in slow start (newly
    added, recovered or resumed), so that it is not handed a flood of clients
    while its caches are cold. Policies weigh servers by ``effective_weight``.
    """

    id: str
    service: str
    url: str
    weight: int = 1
    meta: Mapping[str, str] = field(default_factory=dict)
    health: HealthStatus = HealthStatus.PASSING
    load: Load = field(default_factory=Load)
    draining: bool = False
    since: float = 0.0
    load_version: int = 0
    ramp: float = 1.0

    @property
    def effective_weight(self) -> float:
        """The weight policies use: ``weight`` scaled down during slow start."""
        return self.weight * self.ramp

    @property
    def assignable(self) -> bool:
        """True when new clients may be sent here."""
        return self.health is HealthStatus.PASSING and not self.draining and self.weight > 0

    @property
    def keeps_clients(self) -> bool:
        """True when the clients already here may stay (sticky), even if no new ones may come.

        Draining, weight 0 and a full server stop new clients only: the server
        is healthy and sends its clients away itself (``503`` with
        ``Affinity-Reassign``) when it wants them gone.
        """
        return self.health is HealthStatus.PASSING

    @property
    def at_capacity(self) -> bool:
        """True when the server reports as many active clients as it can take."""
        cap = self.load.capacity
        return cap > 0 and self.load.active_clients >= cap


@dataclass(frozen=True, slots=True, kw_only=True)
class Pool:
    """The servers of one service, and the subset that may take new clients.

    Built once per change of the view, so the request path never scans the
    whole pool: ``assignable`` is precomputed.
    """

    service: str
    servers: Mapping[str, Server]
    assignable: tuple[Server, ...]
    version: int = 0

    @classmethod
    def build(cls, service: str, servers: Mapping[str, Server], version: int = 0) -> Pool:
        """Make a pool, computing the assignable subset in a stable order."""
        ordered = sorted(servers.values(), key=lambda s: s.id)
        assignable = tuple(s for s in ordered if s.assignable and not s.at_capacity)
        return cls(
            service=service,
            servers=MappingProxyType(dict(servers)),
            assignable=assignable,
            version=version,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Claims:
    """The verified claims of an affinity token."""

    sid: str
    cid: str
    svc: str
    iat: int
    exp: int
    iss: str
    kid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AssignRequest:
    """What a policy sees of one ``/v1/assign`` call (no Sanic objects, no I/O).

    ``client_id`` is the id from a valid token or a freshly drawn one;
    ``previous`` is the server id of a valid token, if any.
    """

    service: str
    client_id: str
    avoid: frozenset[str] = frozenset()
    previous: str | None = None
    client_ip: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """A referral that was just made: the server, the token, and whether it was sticky."""

    request: AssignRequest
    server: Server
    token: str
    expires_in: int
    sticky: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestInfo:
    """What a request filter sees of an incoming HTTP request.

    ``role`` is ``"referral"`` or ``"server"``. ``path`` is normalised the way
    the router sees it (percent-decoded, dot segments and repeated slashes
    removed). ``client_ip`` is the socket peer unless a trusted proxy is
    configured. ``client_id`` is the ``cid`` of a valid token, if any.
    """

    role: str
    method: str
    path: str
    client_ip: str
    client_id: str | None = None
    server_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """A filter's refusal: the HTTP status (403 or 429), an error code and a sentence."""

    status: int
    error: str
    detail: str
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    rule: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedSettings:
    """A versioned document of settings shared through the registry (for example firewall rules).

    Documents of one name are ordered by :attr:`identity`, ``(epoch, version)``: a
    registry that can lose its store (Consul's KV) starts a new, larger epoch each
    time it creates the document, so a version counted again from 1 still supersedes
    what every process holds. Registries that cannot lose it leave the epoch at 0.
    """

    name: str
    version: int
    value: Mapping[str, Any]
    epoch: int = 0

    @property
    def identity(self) -> tuple[int, int]:
        """``(epoch, version)``: the larger supersedes the smaller."""
        return (self.epoch, self.version)


def fast_constructor(cls: type[_V]) -> Callable[..., _V]:
    """``cls(**fields)`` for a frozen slotted dataclass, at about a third of the cost.

    A frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, a call per field; where one is made for every
    request (a :class:`RequestInfo` per filtered request, an
    :class:`AssignRequest` per assignment) that was a measured share of the
    request (bench/RESULTS.md). The function made here sets the slots
    directly, so the object is the same (equal, hashable, still frozen).
    Every field must be given, by keyword; ``cls`` has no ``__post_init__``.
    """
    if not dataclasses.is_dataclass(cls) or not hasattr(cls, "__slots__"):
        raise TypeError(f"{cls.__name__} is not a slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__ that this would skip")
    names = [f.name for f in dataclasses.fields(cls)]
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    scope.update({f"_set_{name}": getattr(cls, name).__set__ for name in names})
    lines = [f"def make(*, {', '.join(names)}):", "    self = _new(_cls)"]
    lines += [f"    _set_{name}(self, {name})" for name in names]
    lines.append("    return self")
    exec("\n".join(lines), scope)  # as dataclasses itself writes __init__
    make: Callable[..., _V] = scope["make"]
    make.__doc__ = f"Make a {cls.__name__} (every field, by keyword)."
    return make
