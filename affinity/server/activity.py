"""The clients an app server reports as its load: a count that decays after each one's last request.

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
