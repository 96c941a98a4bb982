"""GCRA (generic cell rate algorithm, ITU-T I.371) over a bounded LRU table of keys.

Each key holds one number, its *theoretical arrival time* (TAT): the time at
which the key's allowance would be full again. A request at ``now`` is
admitted when ``max(TAT, now) + interval - now <= burst * interval``, and then
moves the TAT forward by one ``interval`` (``1 / rate``). From a full
allowance that admits ``burst`` requests at once and one more every interval:
``burst + rate * t`` requests over ``t`` seconds, as integers, no drift.

All arithmetic is in integer nanoseconds, so the counts are exact for the
interval as rounded to a nanosecond. A TAT in the past means "allowance full",
exactly what a missing key means, so evicting such an entry loses nothing;
the table keeps the most recently used ``max_keys`` keys and counts evictions
of entries that still mattered (TAT in the future) so that an undersized
table shows up in metrics.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Cell:
    """One limit in GCRA terms: the emission interval and the burst, in nanoseconds and requests."""

    interval_ns: int
    burst: int

    @classmethod
    def of(cls, rate: float, burst: int) -> Cell:
        """The cell for ``rate`` requests per second with ``burst`` at once (burst >= 1)."""
        return cls(max(1, round(NS / rate)), burst)

    @property
    def tolerance_ns(self) -> int:
        """How far ahead of now a TAT may run: the time the whole burst takes to refill."""
        return self.interval_ns * self.burst


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one request.

    ``remaining`` is how many more requests would be admitted right now;
    ``wait_ns`` how long until the next one would be (0 when admitted);
    ``reset_ns`` how long until the whole burst is available again.
    """

    allowed: bool
    remaining: int
    wait_ns: int
    reset_ns: int


class GcraTable:
    """Per-key GCRA state, at most ``max_keys`` keys, least recently used evicted first."""

    __slots__ = ("_tats", "evicted_active", "max_keys")

    def __init__(self, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys!r}")
        self.max_keys = max_keys
        self.evicted_active = 0
        """Evicted entries whose TAT was still ahead: each gave a client a fresh allowance."""
        self._tats: OrderedDict[Hashable, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tats)

    def admit(self, key: Hashable, cell: Cell, now_ns: int) -> Decision:
        """Decide one request for ``key`` at time ``now_ns``; admitted requests move the TAT."""
        refused = self.take(key, cell, now_ns)
        if refused is not None:
            return refused
        ahead = self._tats[key] - now_ns
        return Decision(True, (cell.tolerance_ns - ahead) // cell.interval_ns, 0, ahead)

    def take(self, key: Hashable, cell: Cell, now_ns: int) -> Decision | None:
        """Like :meth:`admit`, but None when admitted: the request path's call.

        Admitted is the common answer, and building a Decision for it would be
        a third of the cost of the whole decision.
        """
        tats = self._tats
        tat = tats.get(key)
        new_tat = (now_ns if tat is None or tat < now_ns else tat) + cell.interval_ns
        ahead = new_tat - now_ns
        tolerance = cell.tolerance_ns
        if ahead > tolerance:
            tats.move_to_end(key)  # tat is not None here: a fresh key is always admitted
            return Decision(False, 0, ahead - tolerance, new_tat - cell.interval_ns - now_ns)
        if tat is None:
            self._make_room(now_ns)
        else:
            tats.move_to_end(key)
        tats[key] = new_tat
        return None

    def _make_room(self, now_ns: int) -> None:
        while len(self._tats) >= self.max_keys:
            _, tat = self._tats.popitem(last=False)
            if tat > now_ns:
                self.evicted_active += 1

    def clear(self) -> None:
        """Forget every key."""
        self._tats.clear()
