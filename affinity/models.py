"""Value objects shared by the referral, the app servers, the client and plugins.

They are frozen, slotted, keyword-only dataclasses so that they can be shared
between tasks without copies and serialised by orjson as they are. Statuses use
Consul's words.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import warnings
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


LOAD_FORMAT = 2
"""The version of the load report an app server sends (``load_format`` in its health answer).

1 (no ``load_format``): ``active_clients``, distinct clients in a sliding
window, ``inflight`` and ``capacity``. 2: ``clients`` is a decayed count (a
float), and ``rps``, ``bytes_per_s``, ``capacity_inflight`` and
``capacity_bytes_per_s`` are added; ``active_clients`` is still sent, rounded,
for readers of format 1.
"""

LOAD_KEYS = frozenset(
    {
        "clients",
        "active_clients",
        "inflight",
        "rps",
        "bytes_per_s",
        "capacity",
        "capacity_inflight",
        "capacity_bytes_per_s",
    }
)
"""The figures of the load report that are affinity's; a plugin's figure of the same name is
dropped."""


@dataclass(frozen=True, slots=True, init=False)
class Load:
    """Load a server reports in its health answer (format :data:`LOAD_FORMAT`).

    ``clients`` is the decayed count of clients: each weighs 1 right after a
    request and half as much every ``server.load_half_life`` seconds after
    that; one that said bye weighs nothing. ``inflight`` counts the requests
    being served now, ``rps`` and ``bytes_per_s`` the recent requests and
    response bytes per second. The capacities say what the server takes, each
    in its unit (0: not stated): ``capacity`` in clients, ``capacity_inflight``
    in requests in flight, ``capacity_bytes_per_s`` in response bytes per
    second. ``extra`` holds figures contributed by plugins.

    ``active_clients`` (format 1) still reads and constructs, with a
    :class:`DeprecationWarning`: it is ``clients`` rounded.
    """

    clients: float
    inflight: int
    rps: float
    bytes_per_s: float
    capacity: int
    capacity_inflight: int
    capacity_bytes_per_s: float
    extra: Mapping[str, float]

    def __init__(
        self,
        *,
        clients: float = 0.0,
        inflight: int = 0,
        rps: float = 0.0,
        bytes_per_s: float = 0.0,
        capacity: int = 0,
        capacity_inflight: int = 0,
        capacity_bytes_per_s: float = 0.0,
        extra: Mapping[str, float] | None = None,
        active_clients: int | None = None,
    ) -> None:
        if active_clients is not None:
            _deprecated("Load(active_clients=...)", "Load(clients=...)")
            clients = float(active_clients)
        init = object.__setattr__
        init(self, "clients", clients)
        init(self, "inflight", inflight)
        init(self, "rps", rps)
        init(self, "bytes_per_s", bytes_per_s)
        init(self, "capacity", capacity)
        init(self, "capacity_inflight", capacity_inflight)
        init(self, "capacity_bytes_per_s", capacity_bytes_per_s)
        init(self, "extra", {} if extra is None else extra)

    @property
    def active_clients(self) -> int:
        """Deprecated: ``round(clients)``."""
        _deprecated("Load.active_clients", "Load.clients (a decayed count, a float)")
        return round(self.clients)

    @property
    def full(self) -> bool:
        """True when a figure has reached its stated capacity (the client count rounded: a
        client that paused for a while weighs a little less than 1)."""
        return (
            (0 < self.capacity <= self.clients + 0.5)
            or (0 < self.capacity_inflight <= self.inflight)
            or (0 < self.capacity_bytes_per_s <= self.bytes_per_s)
        )

    def usage(self, weight: float, default_capacity: float) -> tuple[float, float]:
        """How full the server is, and what one more client adds to that, for load policies.

        The utilisation is the largest figure / capacity over the units whose
        capacity is stated; with none stated, ``clients / default_capacity``.
        Each capacity counts ``weight`` times (a server of weight 2 takes twice
        as much; slow start lowers it). One more client adds ``1 / capacity`` in
        clients, or its share (figure / clients) of the binding unit; where
        that is not known yet (no client counted), ``1 / (capacity or
        default_capacity)``, so that assignments made before the next report
        still count (herd safety).
        """
        if weight <= 0:
            return math.inf, 0.0
        per_client = 1.0 / ((self.capacity or default_capacity) * weight)
        usage = self.clients * per_client
        step = per_client
        if not self.capacity and (self.capacity_inflight or self.capacity_bytes_per_s):
            usage = step = 0.0
        for figure, capacity in (
            (self.inflight, self.capacity_inflight),
            (self.bytes_per_s, self.capacity_bytes_per_s),
        ):
            if capacity > 0:
                used = figure / (capacity * weight)
                if used > usage:
                    usage = used
                    step = used / self.clients if self.clients >= 1.0 else 0.0
        return usage, step or per_client

    def figures(self) -> dict[str, float]:
        """The load as the health answer and the status API show it (plugins' figures first:
        affinity's own names win)."""
        return {
            **{k: v for k, v in self.extra.items() if k not in LOAD_KEYS},
            "clients": round(self.clients, 3),
            "active_clients": round(self.clients),
            "inflight": self.inflight,
            "rps": round(self.rps, 3),
            "bytes_per_s": round(self.bytes_per_s, 1),
            "capacity": self.capacity,
            "capacity_inflight": self.capacity_inflight,
            "capacity_bytes_per_s": self.capacity_bytes_per_s,
        }


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated since load format 2; use {new}", DeprecationWarning, stacklevel=3
    )


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
        """True when the server reports a figure at its stated capacity (clients, requests in
        flight or bytes/s)."""
        return self.load.full


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
    """``cls(**fields)`` for a frozen slotted dataclass, at about a fifth of the cost.

    A frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``, a call per field; where one is made for every
    request (a :class:`RequestInfo` per filtered request, an
    :class:`AssignRequest` per assignment) that was a measured share of the
    request (bench/RESULTS.md). The function made here fills an instance of
    a plain twin class with the same slots, where each field is one store of
    the interpreter, then makes it a ``cls`` (``__class__`` assignment, which
    Python allows between classes of the same slots): the object is the same
    (equal, hashable, still frozen). Every field must be given, by keyword;
    ``cls`` derives from ``object`` alone and has no ``__post_init__``.
    """
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__ that this would skip")
    if cls.__bases__ != (object,):
        raise TypeError(f"{cls.__name__} derives from another class than object")
    names = [f.name for f in dataclasses.fields(cls)]
    twin = type(f"_{cls.__name__}Fields", (), {"__slots__": cls.__dict__["__slots__"]})
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_twin": twin}
    lines = [f"def make(*, {', '.join(names)}):", "    self = _new(_twin)"]
    lines += [f"    self.{name} = {name}" for name in names]
    lines += ["    self.__class__ = _cls", "    return self"]
    exec("\n".join(lines), scope)  # as dataclasses itself writes __init__
    make: Callable[..., _V] = scope["make"]
    make.__doc__ = f"Make a {cls.__name__} (every field, by keyword)."
    return make
