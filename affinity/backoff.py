"""Full-jitter exponential back-off, for every loop that retries: client, watches, heartbeats.

Plain exponential back-off makes peers that failed together retry together;
*full jitter* (``uniform(0, min(cap, base * 2**n))``, AWS "Exponential Backoff
and Jitter", also Envoy's default) spreads them out and gives the lowest total
work. The random source can be injected so tests are deterministic.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Retry ``n`` (from 0) waits ``uniform(0, min(cap, base * 2**n))``."""

    base: float = 0.05
    cap: float = 2.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base) and self.base > 0):
            raise ValueError(f"base: expected a positive number of seconds, got {self.base!r}")
        if not (math.isfinite(self.cap) and self.cap >= self.base):
            raise ValueError(f"cap: expected seconds >= base, got {self.cap!r}")

    def ceiling(self, retry: int) -> float:
        """``min(cap, base * 2**retry)``; the exponent is bounded so huge counts cannot overflow."""
        return min(self.cap, self.base * 2.0 ** min(max(retry, 0), 64))

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """A wait drawn uniformly from ``[0, ceiling(retry)]`` (from ``rng``, else ``random``)."""
        ceiling = self.ceiling(retry)
        draw = rng.uniform if rng is not None else random.uniform
        return min(draw(0.0, ceiling), ceiling)
