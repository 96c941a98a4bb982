"""The load an app server reports: clients, counted with a decay, and request and byte rates.

A client weighs 1 right after a request and ``2 ** (-age / half_life)`` after
that, so clients that leave without a word stop counting within a few
half-lives; a client that says bye stops counting at once.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from math import exp2

FORGET_BELOW = 2.0**-10
"""An id whose weight fell below this (ten half-lives without a request) is forgotten."""
REBASE_AFTER = 64.0
"""Half-lives after which the stored masses are brought back near 1 (they grow as 2^t)."""
NO_DECAY = 1e-12
"""The half-lives per second of ``half_life=math.inf``: each client weighs 1 within the window
(to better than 1e-9 over a year), and the masses still say when each id was seen."""


class DecayingClients:
    """The decayed count of distinct client ids, holding at most ``limit`` ids.

    ``weight()`` is the sum over the ids held of ``2 ** (-(now - last_seen) / half_life)``.
    Each id is stored with its *mass* ``2 ** ((last_seen - anchor) / half_life)``,
    which does not change while the client is silent, and the masses are summed
    as they change; the count now is that sum times ``2 ** (-(now - anchor) /
    half_life)``. So a request costs one power and a few dict and float
    operations, and no rescaling. Every :data:`REBASE_AFTER` half-lives the
    masses are divided back near 1 (O(n), rarely) and the sum recomputed, so
    neither overflows nor drifts by rounding.

    Ids are kept in last-seen order, so the ids to forget (older than
    ``window`` seconds, or decayed below :data:`FORGET_BELOW`) and the ids over
    the size bound all leave from the front: bounded memory under a flood of
    ids. The mass of an id also says when it was last seen, so no time is
    stored. ``half_life=math.inf`` counts every id seen within ``window`` as 1:
    the sliding-window count of before, for comparisons.
    """

    __slots__ = (
        "_anchor",
        "_clock",
        "_horizon",
        "_inverse",
        "_seen",
        "_sum",
        "half_life",
        "limit",
        "window",
    )

    def __init__(
        self,
        half_life: float = 20.0,
        window: float = 300.0,
        limit: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not half_life > 0:
            raise ValueError(f"half_life must be more than 0 seconds, got {half_life!r}")
        if not window > 0:
            raise ValueError(f"window must be more than 0 seconds, got {window!r}")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit!r}")
        self.half_life = half_life
        self.window = window
        self.limit = limit
        self._clock = clock
        self._inverse = 1.0 / half_life if half_life < math.inf else NO_DECAY
        """Half-lives per second."""
        self._horizon = min(window * self._inverse, -math.log2(FORGET_BELOW))
        """Ids last seen more half-lives ago than this are forgotten."""
        self._anchor = clock()
        self._seen: OrderedDict[str, float] = OrderedDict()
        """client id -> its mass, oldest first."""
        self._sum = 0.0
        """The sum of the masses."""

    def touch(self, client_id: str, now: float | None = None) -> None:
        """Note that a client was seen now: its weight becomes 1.

        ``now`` is this object's clock read already (the guard's, which reads
        the same clock once per request); None reads it.
        """
        age = ((self._clock() if now is None else now) - self._anchor) * self._inverse
        if age > REBASE_AFTER:
            age = self._rebase(age)
        mass = exp2(age)
        seen = self._seen
        old = seen.pop(client_id, None)  # popped and put back: it moves to the end
        seen[client_id] = mass
        if old is None:
            self._sum += mass
            if len(seen) > self.limit:
                self._sum -= seen.popitem(last=False)[1]
        else:
            self._sum += mass - old

    def bye(self, client_id: str) -> bool:
        """The client ended its session: drop it at once. True if it was counted."""
        mass = self._seen.pop(client_id, None)
        if mass is None:
            return False
        self._sum = self._sum - mass if self._seen else 0.0
        return True

    def weight(self) -> float:
        """The decayed count now; forgets the ids past the horizon on the way."""
        age = (self._clock() - self._anchor) * self._inverse
        if age > REBASE_AFTER:
            age = self._rebase(age)
        seen = self._seen
        floor = exp2(age - self._horizon)
        total = self._sum
        while seen:
            oldest = next(iter(seen.values()))
            if oldest >= floor:
                break
            seen.popitem(last=False)
            total -= oldest
        total = max(total, 0.0) if seen else 0.0  # rounding only; exact again once empty
        self._sum = total
        return total * exp2(-age)

    def _rebase(self, age: float) -> float:
        """Move the anchor to now: every mass divided by ``2 ** age``, the forgotten ids dropped,
        the sum recomputed. The new age (0)."""
        scale = exp2(-age)
        floor = exp2(-self._horizon)
        kept = OrderedDict[str, float]()
        for client_id, mass in self._seen.items():
            mass *= scale
            if mass >= floor:
                kept[client_id] = mass
        self._seen = kept
        self._sum = math.fsum(kept.values())
        self._anchor += age / self._inverse
        return 0.0

    def __len__(self) -> int:
        """How many ids are held (forgotten ones leave when :meth:`weight` is read)."""
        return len(self._seen)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._seen


RATE_TIME_CONSTANT = 10.0
"""Seconds over which the request and byte rates are averaged (an exponential average)."""


class Rates:
    """Requests and response bytes per second, averaged over about ``time_constant`` seconds.

    The request path only adds to two plain counters (on the
    :class:`~affinity.server.state.ServerState`); the averages are brought up
    to date when read (each health or metrics request), with the weight
    ``1 - e^(-dt / time_constant)`` that suits reads at uneven intervals.
    """

    __slots__ = ("_at", "_bytes", "_clock", "_requests", "bytes_per_s", "rps", "time_constant")

    def __init__(
        self,
        time_constant: float = RATE_TIME_CONSTANT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not time_constant > 0:
            raise ValueError(f"time_constant must be more than 0 seconds, got {time_constant!r}")
        self.time_constant = time_constant
        self._clock = clock
        self._at = clock()
        self._requests = 0
        self._bytes = 0
        self.rps = 0.0
        self.bytes_per_s = 0.0

    def read(self, requests: int, sent_bytes: int) -> tuple[float, float]:
        """The averages (requests/s, bytes/s), given the counters' totals now."""
        now = self._clock()
        elapsed = now - self._at
        if elapsed > 0:
            share = -math.expm1(-elapsed / self.time_constant)
            self.rps += share * ((requests - self._requests) / elapsed - self.rps)
            self.bytes_per_s += share * ((sent_bytes - self._bytes) / elapsed - self.bytes_per_s)
            self._at, self._requests, self._bytes = now, requests, sent_bytes
        return self.rps, self.bytes_per_s
