"""Load an app server reports: distinct clients in a sliding window, and requests in flight."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class ActiveClients:
    """Distinct client ids seen in the last ``window`` seconds, holding at most ``limit`` ids.

    Kept in last-seen order, so expiry and the size bound both drop from the
    front: O(1) amortised per request and bounded memory under a flood of ids.
    """

    def __init__(
        self,
        window: float = 300.0,
        limit: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.limit = limit
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def touch(self, client_id: str) -> None:
        """Note that a client was seen now."""
        seen = self._seen
        seen[client_id] = self._clock()
        seen.move_to_end(client_id)
        if len(seen) > self.limit:
            seen.popitem(last=False)

    def count(self) -> int:
        """How many distinct clients were seen within the window."""
        horizon = self._clock() - self.window
        seen = self._seen
        while seen:
            oldest = next(iter(seen.values()))
            if oldest >= horizon:
                break
            seen.popitem(last=False)
        return len(seen)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._seen
