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

FORGET_BELOW = 2.0**-10
"""An id whose weight fell below this (ten half-lives without a request) is forgotten."""


class DecayingClients:
    """The decayed count of distinct client ids, holding at most ``limit`` ids.

    ``weight()`` is the sum over the ids held of ``2 ** (-(now - last_seen) / half_life)``.
    The sum is kept as it stood at the last change and rescaled when read or
    changed (the decay of a sum is the sum of the decays), so a request costs
    O(1): one dict update and two powers. Ids are kept in last-seen order, so
    the ids to forget (older than ``window`` seconds, or decayed below
    :data:`FORGET_BELOW`) and the ids over the size bound all leave from the
    front: bounded memory under a flood of ids. ``half_life=math.inf`` counts
    every id seen within ``window`` as 1, the sliding-window count of before.
    """

    __slots__ = (
        "_at",
        "_clock",
        "_horizon",
        "_rate",
        "_seen",
        "_sum",
        "half_life",
        "limit",
        "window",
    )

    def __init__(
        self,
        half_life: float = 30.0,
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
        self._rate = -1.0 / half_life
        """The exponent of 2 per second of age."""
        self._horizon = min(window, half_life * -math.log2(FORGET_BELOW))
        """Ids last seen longer ago than this are forgotten."""
        self._seen: OrderedDict[str, float] = OrderedDict()
        """client id -> when it was last seen, oldest first."""
        self._sum = 0.0
        """The decayed count as it stood at ``_at``."""
        self._at = clock()

    def touch(self, client_id: str) -> None:
        """Note that a client was seen now: its weight becomes 1."""
        now = self._clock()
        seen = self._seen
        last = seen.get(client_id)
        # the sum rescaled to now, less this client's old weight, plus its new weight 1
        total = self._sum * 2.0 ** ((now - self._at) * self._rate) + 1.0
        if last is None:
            seen[client_id] = now
            if len(seen) > self.limit:
                _, oldest = seen.popitem(last=False)
                total -= 2.0 ** ((now - oldest) * self._rate)
        else:
            total -= 2.0 ** ((now - last) * self._rate)
            seen[client_id] = now
            seen.move_to_end(client_id)
        self._sum = total
        self._at = now

    def bye(self, client_id: str) -> bool:
        """The client ended its session: drop it at once. True if it was counted."""
        last = self._seen.pop(client_id, None)
        if last is None:
            return False
        now = self._clock()
        rate = self._rate
        total = self._sum * 2.0 ** ((now - self._at) * rate) - 2.0 ** ((now - last) * rate)
        self._sum = total if self._seen else 0.0
        self._at = now
        return True

    def weight(self) -> float:
        """The decayed count now; forgets the ids past the horizon on the way."""
        now = self._clock()
        rate = self._rate
        total = self._sum * 2.0 ** ((now - self._at) * rate)
        seen = self._seen
        horizon = now - self._horizon
        while seen:
            oldest = next(iter(seen.values()))
            if oldest >= horizon:
                break
            seen.popitem(last=False)
            total -= 2.0 ** ((now - oldest) * rate)
        # the running sum drifts by rounding only; it is exact again once empty
        total = max(total, 0.0) if seen else 0.0
        self._sum = total
        self._at = now
        return total

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
