"""The blocking-query loop every Consul watch runs, with the rules Consul asks clients to follow.

* The index is an integer (python-consul2 hands back the header string, and
  ``'10' < '9'``); a returned 0 counts as 1, so the loop never degrades into
  non-blocking reads.
* When the index goes backwards (snapshot restore, an agent restarted without
  its data), the lower index becomes the new baseline: the data that came with
  it is current, and waiting on the old, larger index would hang for a whole
  ``wait``.
* After an error the next read is a plain one (index 0): the agent that comes
  back may be a fresh one whose indexes restarted at 1.
* An index that goes backwards would otherwise show only when the pending
  blocking read ends, a whole ``wait`` later (the agent holds it until its new
  index passes the old one). So every ``reset_probe`` seconds, while a blocking
  read is pending, the loop makes one non-blocking read of the same thing; an
  index lower than the one it waits on is a reset, and its answer is used at
  once. Indexes are compared per watch only: Consul's differ between endpoints.
* A reset (an answer whose index is below the last one answered, also across
  failed reads: an agent restarted without its data) is reported to the owner
  (``reset``) before the answer is applied, so it can hold on to what the
  agent forgot (see the registry). An agent that was only unreachable keeps
  its indexes, and its answers are followed at once.
* Each wait is jittered down by up to 10 % so referrals started together do
  not all come back to the agent in the same instant.
* A token bucket bounds reads per second, so a value that churns degrades to
  polling instead of a busy loop; errors back off exponentially with full
  jitter up to a cap, which is also the longest a recovered agent waits to be
  noticed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from affinity.backoff import Backoff
from affinity.errors import RegistryError
from affinity.logs import Repeated

log = logging.getLogger("affinity.plugin.registry")

T = TypeVar("T")
Fetch = Callable[[int, float], Awaitable[tuple[int, T]]]


class TokenBucket:
    """At most ``burst`` reads at once, refilled at ``rate`` per second."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self) -> None:
        """Wait until a token is available, then use it."""
        self._refill()
        while self._tokens < 1.0:
            await self._sleep((1.0 - self._tokens) / self.rate)
            self._refill()
        self._tokens -= 1.0


def next_index(sent: int, returned: int) -> int:
    """The index for the next blocking read after ``returned`` answered ``sent``."""
    returned = max(returned, 1)
    if returned < sent:
        log.info("Consul index went backwards (%d < %d); starting over from it", returned, sent)
    return returned


def jittered(wait: float, jitter: float = 0.1) -> float:
    """A blocking wait a little shorter than ``wait``, never longer."""
    return wait * random.uniform(1.0 - jitter, 1.0)


async def probed_read(
    fetch: Fetch[T], index: int, wait: float, probe: float, what: str
) -> tuple[int, T]:
    """One blocking read, cut short by a non-blocking one (every ``probe`` seconds; 0: none)
    that finds the index went back: that answer is current, the blocking one would come
    only after ``wait``."""
    if index <= 0 or probe <= 0:
        return await fetch(index, wait)
    blocking = asyncio.ensure_future(fetch(index, wait))
    try:
        while True:
            done, _ = await asyncio.wait({blocking}, timeout=probe)
            if done:
                return blocking.result()
            try:
                returned, data = await fetch(0, 0.0)
            except RegistryError:
                continue  # the blocking read will tell
            if max(returned, 1) < index:
                log.info("Consul index of %s went back (%d < %d)", what, returned, index)
                return returned, data
    finally:
        if not blocking.done():
            blocking.cancel()
        await asyncio.gather(blocking, return_exceptions=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Pacing:
    """How one loop paces its reads: wait, rate limit and error back-off."""

    wait: float
    rate: float
    burst: int
    backoff_cap: float
    reset_probe: float = 0.0
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    @property
    def backoff(self) -> Backoff:
        """The error back-off: full jitter under ``min(backoff_cap, 0.1 * 2**failures)``."""
        return Backoff(base=min(0.1, self.backoff_cap), cap=self.backoff_cap)


@dataclass(slots=True)
class _Status:
    failures: int = 0
    reads: int = 0
    first_done: asyncio.Event = field(default_factory=asyncio.Event)


class BlockingLoop(Generic[T]):
    """One watched Consul read: fetch with index and wait, hand results on, survive errors.

    ``apply`` gets every successful result (a wake-up is not a promise of
    change; the receiver compares). ``failed`` gets the reason while reads
    fail and ``None`` once one succeeds again, so the owner can mark its view
    stale and fresh.
    """

    def __init__(
        self,
        what: str,
        fetch: Fetch[T],
        apply: Callable[[T], None],
        failed: Callable[[str, str | None], None],
        pacing: Pacing,
        reset: Callable[[str], None] | None = None,
    ) -> None:
        self.what = what
        self._fetch = fetch
        self._apply = apply
        self._failed = failed
        self._reset = reset
        self._pacing = pacing
        self._bucket = TokenBucket(pacing.rate, pacing.burst, sleep=pacing.sleep)
        self._backoff = pacing.backoff
        self._last = 0
        self.status = _Status()
        self._log = Repeated(log, f"Consul read of {what} failed; keeping the last view")

    @property
    def first_done(self) -> asyncio.Event:
        """Set once the first read has succeeded or failed."""
        return self.status.first_done

    async def run(self) -> None:
        """Read until cancelled."""
        index = 0
        while True:
            await self._bucket.take()
            try:
                returned, data = await self._read(index)
            except RegistryError as exc:
                index = 0
                await self._fail(exc)
                continue
            index = next_index(index, returned)
            self._succeed(returned, data)

    async def _read(self, index: int) -> tuple[int, T]:
        wait = jittered(self._pacing.wait)
        return await probed_read(self._fetch, index, wait, self._pacing.reset_probe, self.what)

    def _succeed(self, returned: int, data: T) -> None:
        status = self.status
        status.reads += 1
        self._log.recovered(f"Consul answers {self.what} again")
        status.failures = 0
        went_back = max(returned, 1) < self._last
        self._last = max(returned, 1)
        if went_back and self._reset is not None:
            self._reset(self.what)
        self._failed(self.what, None)
        self._apply(data)
        status.first_done.set()

    async def _fail(self, exc: RegistryError) -> None:
        status = self.status
        status.failures += 1
        delay = self._backoff.delay(status.failures)
        self._log.failed(exc, retry_in=delay)
        self._failed(self.what, str(exc))
        status.first_done.set()
        await self._pacing.sleep(delay)
