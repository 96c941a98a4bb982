"""The built-in assignment policies, offered through ``affinity_make_policy`` like any plugin's.

``round_robin``, ``random`` and ``load_weighted`` keep a per-pool structure
(a rotation, an alias table, flat load arrays) rebuilt in O(n) when the pool
object changes (the referral's table builds a new pool per change of its
view, load-only changes batched) and pick in O(1), so a pick costs about the
same at 100 servers as at 100,000 (``bench/bench_policies.py``).
``consistent`` scores every assignable server per pick (O(n)): that is what
makes its answer the same in every process. Every policy skips
``request.avoid`` and returns None when nothing is left. Weights are
``Server.effective_weight``: the configured weight, scaled down while a server
is in slow start. One policy object lives per service per worker process;
nothing here is shared between them.
"""

from __future__ import annotations

import math
import random
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from affinity.models import AssignRequest, Pool, Server
from affinity.plugin import hashing, hookimpl
from affinity.plugin.options import option
from affinity.plugin.policy import Policy

__all__ = [
    "POLICIES",
    "ConsistentOptions",
    "ConsistentPolicy",
    "LoadWeightedOptions",
    "LoadWeightedPolicy",
    "RandomPolicy",
    "RoundRobinPolicy",
    "affinity_make_policy",
]

_REDRAWS = 8
"""Draws that may land on an avoided server before a policy filters the pool (O(n))."""

_RR_UNITS = 100
"""Round-robin slots per unit of effective weight, so slow-start ramps keep 1 % steps."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _CapacityOptions:
    default_capacity: int = option(
        100, low=1, high=2**31, help="Capacity assumed for a server whose health reports none."
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadWeightedOptions(_CapacityOptions):
    """``policy_options`` of ``load_weighted``."""

    choices: int = option(
        2, low=2, high=3, help="Random candidates compared per pick (power of d choices)."
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistentOptions(_CapacityOptions):
    """``policy_options`` of ``consistent``."""

    load_factor: float = option(
        1.25,
        low=1.0,
        high=1e6,
        help="A server loaded above this times the pool's mean (plus a few clients) is "
        "passed over for the next in score order.",
    )


def _fallback(servers: tuple[Server, ...], avoid: frozenset[str], rng: random.Random) -> int | None:
    """Weighted pick of an index among the non-avoided servers, by scanning: after redraws."""
    left = [i for i, s in enumerate(servers) if s.id not in avoid]
    weights = [servers[i].effective_weight for i in left]
    return rng.choices(left, weights=weights)[0] if left else None


class _BuiltinPolicy(Policy):
    """Owns the random generator; ``_setup`` runs once the options are read."""

    def __init__(
        self, options: Mapping[str, Any] | None = None, *, rng: random.Random | None = None
    ) -> None:
        super().__init__(options)
        self._rng = rng if rng is not None else random.Random()
        self._setup()

    def _setup(self) -> None:
        """Initialise per-policy state once the options are read (``self.options``)."""


# -- round robin --------------------------------------------------------------


class _Rotation:
    """Interleaved weighted round robin (as in LVS) over one pool's assignable servers.

    Servers are ordered by slots (effective weight in hundredths, at least
    one, so a server in slow start gets its share), most first; round ``r``
    visits the prefix of servers with at least ``r`` slots, so over a cycle each
    server is visited once per slot. ``levels`` groups consecutive rounds that
    visit the same prefix: ``(rounds, count)`` pairs, one per distinct slot count.
    Slots are divided by their greatest common divisor, so plain integer
    weights keep a cycle of ``sum(weights)`` picks (and when no server is
    ramping, the weights themselves serve as slots: the same rotation).
    """

    __slots__ = ("levels", "order", "source")

    def __init__(self, servers: tuple[Server, ...]) -> None:
        self.source = servers
        if all(s.ramp == 1.0 for s in servers):
            slots = [s.weight for s in servers]  # the same rotation as x100, at a third the cost
        else:
            slots = [max(1, round(s.weight * s.ramp * _RR_UNITS)) for s in servers]
        # A reverse sort keeps equal keys in their order: ids ascending within a slot count.
        ranked = sorted(range(len(servers)), key=slots.__getitem__, reverse=True)
        self.order = [servers[i] for i in ranked]
        ordered = [slots[i] for i in ranked]
        weights = sorted(set(slots))
        unit = math.gcd(*weights) if weights else 1
        count, previous = len(self.order), 0
        self.levels: list[tuple[int, int]] = []
        for weight in weights:
            while count and ordered[count - 1] < weight:
                count -= 1
            self.levels.append(((weight - previous) // unit, count))
            previous = weight


class RoundRobinPolicy(_BuiltinPolicy):
    """Weighted rotation over the assignable servers: weight 3 gets three picks per cycle."""

    name = "round_robin"
    guarantee = (
        "Rotation is per worker process, starting at a random place: N workers and R "
        "replicas run N x R interleaved rotations, even overall but with no order across them."
    )

    def _setup(self) -> None:
        self._rotation: _Rotation | None = None
        self._level = self._round = self._index = 0

    def choose(self, pool: Pool, request: AssignRequest) -> Server | None:
        rotation = self._rotation_for(pool)
        if not rotation.order:
            return None
        avoid = request.avoid
        if not avoid:
            return self._advance(rotation)
        for _ in range(2 * len(avoid) + 1):
            server = self._advance(rotation)
            if server.id not in avoid:
                return server
        i = _fallback(pool.assignable, avoid, self._rng)
        return None if i is None else pool.assignable[i]

    def _rotation_for(self, pool: Pool) -> _Rotation:
        rotation = self._rotation
        if rotation is not None and rotation.source is pool.assignable:
            return rotation
        fresh = _Rotation(pool.assignable)
        if fresh.levels and (rotation is None or not rotation.order or not self._fits(fresh)):
            # First use, or a new shape: start at a random place so workers do not move in step.
            self._level, self._round = 0, 0
            self._index = self._rng.randrange(fresh.levels[0][1])
        self._rotation = fresh
        return fresh

    def _fits(self, rotation: _Rotation) -> bool:
        """True when the position carries over to a rebuilt rotation (same shape, usually)."""
        if self._level >= len(rotation.levels):
            return False
        rounds, count = rotation.levels[self._level]
        return self._round < rounds and self._index < count

    def _advance(self, rotation: _Rotation) -> Server:
        server = rotation.order[self._index]
        rounds, count = rotation.levels[self._level]
        self._index += 1
        if self._index == count:
            self._index = 0
            self._round += 1
            if self._round == rounds:
                self._round = 0
                self._level = (self._level + 1) % len(rotation.levels)
        return server


# -- weighted random ------------------------------------------------------------


class _Sampler:
    """O(1) weighted draws of an index into one pool's assignable servers.

    Equal weights draw a uniform index; unequal weights use Walker's alias
    method (Vose's O(n) construction): one uniform number picks a slot and its
    fractional part decides between the slot and its alias. Slot ``i`` is the
    pair ``table[2i]`` (chance of keeping ``i``) and ``table[2i + 1]`` (the
    alias, exact as a double), side by side in one flat array so that a draw
    touches one cache line whatever the pool size.
    """

    __slots__ = ("servers", "size", "source", "table")

    def __init__(self, servers: tuple[Server, ...]) -> None:
        self.source = self.servers = servers
        self.size = n = len(servers)
        self.table: array[float] | None = None
        weights = [s.effective_weight for s in servers]
        if n == 0 or min(weights) == max(weights):
            return
        total = sum(weights)
        scaled = [w * n / total for w in weights]
        table = array("d", [1.0, 0.0]) * n
        small = [i for i, p in enumerate(scaled) if p < 1.0]
        large = [i for i, p in enumerate(scaled) if p >= 1.0]
        while small and large:
            lo, hi = small.pop(), large[-1]
            table[2 * lo], table[2 * lo + 1] = scaled[lo], hi
            scaled[hi] += scaled[lo] - 1.0
            if scaled[hi] < 1.0:
                small.append(large.pop())
        self.table = table

    def draw(self, uniform: Callable[[], float]) -> int:
        u = uniform() * self.size
        i = int(u)
        table = self.table
        if table is None or u - i < table[2 * i]:
            return i
        return int(table[2 * i + 1])


class _SamplingPolicy(_BuiltinPolicy):
    def _setup(self) -> None:
        super()._setup()
        self._sampler = _Sampler(())

    def _sampler_for(self, pool: Pool) -> _Sampler:
        if self._sampler.source is not pool.assignable:
            previous, self._sampler = self._sampler, _Sampler(pool.assignable)
            self._pool_changed(previous)
        return self._sampler

    def _pool_changed(self, previous: _Sampler) -> None:
        """Hook for subclasses: the pool object changed (called in O(n) rebuild time)."""

    def _draw(self, sampler: _Sampler, avoid: frozenset[str]) -> int | None:
        """A weighted draw that is not in ``avoid``: redraw a few times, then filter."""
        for _ in range(_REDRAWS if avoid else 1):
            i = sampler.draw(self._rng.random)
            if not avoid or sampler.servers[i].id not in avoid:
                return i
        return _fallback(sampler.servers, avoid, self._rng)


class RandomPolicy(_SamplingPolicy):
    """Weighted random: each pick draws a server with probability proportional to its weight."""

    name = "random"
    guarantee = (
        "Stateless draws: every worker and replica draws independently with the same "
        "weights, so shares converge to the weights whatever the number of processes."
    )

    def choose(self, pool: Pool, request: AssignRequest) -> Server | None:
        sampler = self._sampler_for(pool)
        i = self._draw(sampler, request.avoid) if sampler.size else None
        return None if i is None else sampler.servers[i]


# -- load weighted (power of d choices) -----------------------------------------


class LoadWeightedPolicy(_SamplingPolicy):
    """Power of two (or three) choices on weight-normalised load, counting its own assignments.

    The load of a candidate is its utilisation as :meth:`Load.usage
    <affinity.models.Load.usage>` reckons it (the decayed client count over
    ``capacity or default_capacity`` x weight, or the fullest unit whose
    capacity the server states: clients, requests in flight, bytes/s), plus
    what the assignments this object made since the server's last load report
    add to it. Comparing random candidates instead of taking the arg-min keeps a
    burst of re-referrals (a server died, its clients all come back before the
    next report) spread over the survivors instead of piled on one. Per pool,
    server ``i`` has three cells side by side in one flat array: its reported
    utilisation (:meth:`~affinity.models.Load.usage`), what one assignment adds to that, and the
    assignments counted since its report, which carry over to the next pool
    while its ``load_version`` stays the same.
    """

    name = "load_weighted"
    guarantee = (
        "Each worker and replica counts only its own assignments since the last load "
        "report, so between reports they do not see each other's, but random candidates "
        "keep their bursts spread instead of all landing on the least-loaded server."
    )
    options_class = LoadWeightedOptions
    options: LoadWeightedOptions

    def _setup(self) -> None:
        super()._setup()
        self._choices = self.options.choices
        self._default_capacity = self.options.default_capacity
        self._loads: array[float] = array("d")  # reported, per assignment, count; per server

    def choose(self, pool: Pool, request: AssignRequest) -> Server | None:
        sampler = self._sampler_for(pool)
        avoid = request.avoid
        best = self._draw(sampler, avoid) if sampler.size else None
        if best is None:
            return None
        loads, uniform = self._loads, self._rng.random
        j = 3 * best
        best_load, ties, drawn = loads[j] + loads[j + 1] * loads[j + 2], 1, [best]
        for _ in range(self._choices - 1):
            for _ in range(_REDRAWS):  # a distinct, non-avoided candidate, if one comes up
                i = sampler.draw(uniform)
                if i not in drawn and not (avoid and sampler.servers[i].id in avoid):
                    break
            else:
                continue
            drawn.append(i)
            j = 3 * i
            load = loads[j] + loads[j + 1] * loads[j + 2]
            if load < best_load:
                best, best_load, ties = i, load, 1
            elif load == best_load:
                ties += 1
                if uniform() * ties < 1.0:  # uniform among the tied
                    best = i
        loads[3 * best + 2] += 1.0
        return sampler.servers[best]

    def _pool_changed(self, previous: _Sampler) -> None:
        old = self._loads
        carried = {
            s.id: (s.load_version, old[3 * i + 2])
            for i, s in enumerate(previous.servers)
            if old[3 * i + 2]
        }
        loads = array("d")
        for server in self._sampler.servers:
            usage, per_client = server.load.usage(server.effective_weight, self._default_capacity)
            version, count = carried.get(server.id, (server.load_version, 0.0))
            count = count if version == server.load_version else 0.0
            loads.extend((usage, per_client, count))
        self._loads = loads


# -- consistent (rendezvous hashing with bounded load) ----------------------------


@dataclass(frozen=True, slots=True)
class _Table:
    """Per pool: each assignable server with its encoded id, weight and overload flag."""

    source: tuple[Server, ...]
    entries: tuple[tuple[Server, bytes, float, bool], ...]


class ConsistentPolicy(_BuiltinPolicy):
    """Weighted rendezvous hashing of the client id, with bounded load.

    The server with the highest score ``-weight / ln(u)`` (``u`` = BLAKE2b of the
    client id and server id, in (0, 1)) wins, unless its reported utilisation
    (:meth:`~affinity.models.Load.usage`) exceeds ``load_factor`` x the pool's
    mean plus what ``slack_clients`` clients add; then
    the next in score order that does not. Only reported load is used, never
    counts local to this process, so every process answers alike. Scans the
    pool: O(n) per pick.
    """

    name = "consistent"
    guarantee = (
        "Deterministic: every worker and replica with the same view of the pool "
        "(servers, weights, health, reported load) gives the same server for a client id."
    )
    options_class = ConsistentOptions
    options: ConsistentOptions
    slack_clients: ClassVar[int] = 4
    """Clients allowed above the bound, so tiny loads (1 vs 0) do not count as overload."""

    def _setup(self) -> None:
        self._load_factor = self.options.load_factor
        self._default_capacity = self.options.default_capacity
        self._table = _Table((), ())

    def choose(self, pool: Pool, request: AssignRequest) -> Server | None:
        table = self._table_for(pool)
        prefix = hashing.key_prefix(request.client_id)
        avoid = request.avoid
        best_any = best_ok = None
        score_any = score_ok = 0.0  # scores are > 0
        for server, member, weight, overloaded in table.entries:
            if avoid and server.id in avoid:
                continue
            score = hashing.score_prefixed(prefix, member, weight)
            if score > score_any:
                best_any, score_any = server, score
            if score > score_ok and not overloaded:
                best_ok, score_ok = server, score
        return best_ok if best_ok is not None else best_any

    def _table_for(self, pool: Pool) -> _Table:
        if self._table.source is pool.assignable:
            return self._table
        servers = pool.assignable
        usages = [s.load.usage(s.effective_weight, self._default_capacity) for s in servers]
        mean = sum(u for u, _ in usages) / len(usages) if usages else 0.0
        slack = self.slack_clients
        bound = self._load_factor * mean
        entries = tuple(
            (s, s.id.encode("utf-8", "surrogatepass"), s.effective_weight, u > bound + slack * p)
            for s, (u, p) in zip(servers, usages, strict=True)
        )
        self._table = _Table(servers, entries)
        return self._table


# -- the hook -------------------------------------------------------------------

POLICIES: Mapping[str, type[Policy]] = MappingProxyType(
    {
        cls.name: cls
        for cls in (RoundRobinPolicy, RandomPolicy, LoadWeightedPolicy, ConsistentPolicy)
    }
)
"""The built-in policies by configuration name."""


@hookimpl(trylast=True)
def affinity_make_policy(name: str, options: Mapping[str, Any]) -> Policy | None:
    """A new built-in policy for ``name`` with validated ``options``; None for other names.

    :raises ConfigError: naming the option (``key``) when an option is unknown or wrong.
    """
    cls = POLICIES.get(name)
    return None if cls is None else cls(options)
