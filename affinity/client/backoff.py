"""The client's retry budget, and ``Retry-After``.

Retries wait a full-jitter back-off (:class:`affinity.backoff.Backoff`), but
jitter alone does not bound the *amount* of retrying, so a fleet-wide outage
would still multiply the load by the number of attempts; the retry budget
(Envoy: 20 %, at least 3) caps retries to a fraction of the requests seen in a
sliding window.

The clock is injected so tests are instant and deterministic.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import time
from collections import deque
from collections.abc import Callable

from affinity.errors import ConfigError

Clock = Callable[[], float]

MAX_RETRY_AFTER = 300.0
"""A ``Retry-After`` above this is clamped: a client waits within its deadline anyway."""


class RetryBudget:
    """Allows a retry while retries stay within ``max(minimum, ratio * requests)`` in a window.

    Requests are first attempts (one per call); retries are everything after
    them. Both are counted in a sliding ``window`` of seconds, exactly (a
    deque of timestamps), so the bound holds at every instant and can be
    property-tested against a model.
    """

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        minimum: int = 3,
        window: float = 10.0,
        clock: Clock = time.monotonic,
    ) -> None:
        if not (math.isfinite(ratio) and ratio >= 0):
            raise ConfigError(f"expected a ratio >= 0, got {ratio!r}", key="retry_budget_ratio")
        if minimum < 0:
            raise ConfigError(f"expected a count >= 0, got {minimum!r}", key="retry_budget_min")
        if not (math.isfinite(window) and window > 0):
            raise ConfigError(
                f"expected a positive number of seconds, got {window!r}", key="retry_budget_window"
            )
        self.ratio = ratio
        self.minimum = minimum
        self.window = window
        self._clock = clock
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def record_request(self) -> None:
        """Count a first attempt, which earns ``ratio`` of a retry."""
        now = self._clock()
        self._prune(now)
        self._requests.append(now)

    def try_spend(self) -> bool:
        """Take one retry from the budget; False (and nothing taken) when it is spent."""
        now = self._clock()
        self._prune(now)
        if len(self._retries) + 1 > self.allowance():
            return False
        self._retries.append(now)
        return True

    def allowance(self) -> float:
        """How many retries the window allows now."""
        return max(float(self.minimum), self.ratio * len(self._requests))

    @property
    def requests(self) -> int:
        """First attempts in the window (as of the last update)."""
        return len(self._requests)

    @property
    def retries(self) -> int:
        """Retries taken in the window (as of the last update)."""
        return len(self._retries)

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        for stamps in (self._requests, self._retries):
            while stamps and stamps[0] <= horizon:
                stamps.popleft()


def parse_retry_after(
    value: str | None, *, now: float | None = None, default: float = 1.0
) -> float:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date).

    Missing or malformed values give ``default``; the result is clamped to
    ``[0, MAX_RETRY_AFTER]`` so a hostile or broken server cannot park a client.
    ``now`` is the wall-clock time used for HTTP-dates (``time.time()`` if None).
    """
    if value is None:
        return default
    text = value.strip()
    try:
        seconds: float | None = float(text)
    except ValueError:
        seconds = _seconds_until(text, time.time() if now is None else now)
    if seconds is None or not math.isfinite(seconds):
        return default
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _seconds_until(http_date: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": a date with no zone information; HTTP-dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp() - now
