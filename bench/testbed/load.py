"""A wave of clients, each downloading the 1 MiB route again and again until a time, then
closing; every finished download and every failure is recorded with its time."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from affinity.protocol import SERVER_HEADER

from .app import BLOB_SIZE

PATH = "/blob"
PAUSE_AFTER_FAILURE = 0.2
"""A failed client waits this long before its next try, so a broken bed cannot spin."""
OVERRUN = 30.0
"""How long past its end a wave may run to let its last downloads finish."""


class HttpClient(Protocol):
    """What a wave needs of a client; ``affinity.AsyncClient`` and ``httpx.AsyncClient`` fit."""

    async def get(self, path: str, /) -> httpx.Response: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Download:
    at: float
    """``time.monotonic()`` when its last byte arrived."""
    client: int
    server: str
    nbytes: int


@dataclass(slots=True)
class Wave:
    started: float
    ended: float = 0.0
    downloads: list[Download] = field(default_factory=list)
    failures: list[tuple[float, int, str]] = field(default_factory=list)
    cpu: float = 0.0
    """CPU seconds the clients' processes spent."""

    def bytes_between(self, t0: float, t1: float, servers: Collection[str] | None = None) -> int:
        """Bytes of the downloads that finished in ``[t0, t1)`` (from ``servers`` only)."""
        return sum(
            d.nbytes
            for d in self.downloads
            if t0 <= d.at < t1 and (servers is None or d.server in servers)
        )

    def first_servers(self) -> Counter[str]:
        """How many of the wave's clients each server took first."""
        first: dict[int, str] = {}
        for d in self.downloads:
            first.setdefault(d.client, d.server)
        return Counter(first.values())

    def merge(self, other: Wave) -> None:
        """Take in another process's share of the same wave."""
        self.started = min(self.started, other.started)
        self.ended = max(self.ended, other.ended)
        self.downloads.extend(other.downloads)
        self.failures.extend(other.failures)
        self.cpu += other.cpu

    def to_json(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "ended": self.ended,
            "downloads": [[d.at, d.client, d.server, d.nbytes] for d in self.downloads],
            "failures": [list(f) for f in self.failures],
            "cpu": self.cpu,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Wave:
        return cls(
            started=float(data["started"]),
            ended=float(data["ended"]),
            downloads=[
                Download(float(a), int(c), str(s), int(n)) for a, c, s, n in data["downloads"]
            ],
            failures=[(float(a), int(c), str(p)) for a, c, p in data["failures"]],
            cpu=float(data["cpu"]),
        )

    def per_server(self, t0: float, t1: float) -> Counter[str]:
        """Bytes each server delivered in ``[t0, t1)``."""
        out: Counter[str] = Counter()
        for d in self.downloads:
            if t0 <= d.at < t1:
                out[d.server] += d.nbytes
        return out


async def run(clients: Sequence[Callable[[], HttpClient]], until: float, *, first: int = 0) -> Wave:
    """One client from each factory, all at once, downloading until ``until`` (monotonic, the
    same clock in every process); the clients are numbered from ``first``."""
    wave = Wave(started=time.monotonic())

    async def one(index: int, make: Callable[[], HttpClient]) -> None:
        client = make()
        try:
            while time.monotonic() < until:
                try:
                    response = await client.get(PATH)
                except Exception as exc:  # every failure is counted, none ends the run
                    wave.failures.append((time.monotonic(), index, f"{type(exc).__name__}: {exc}"))
                    await asyncio.sleep(PAUSE_AFTER_FAILURE)
                    continue
                size = len(response.content)
                if response.status_code != 200 or size != BLOB_SIZE:
                    problem = f"status {response.status_code}, {size} bytes"
                    wave.failures.append((time.monotonic(), index, problem))
                    await asyncio.sleep(PAUSE_AFTER_FAILURE)
                    continue
                server = response.headers.get(SERVER_HEADER, "?")
                wave.downloads.append(Download(time.monotonic(), index, server, size))
        finally:
            await client.aclose()

    tasks = [one(i, make) for i, make in enumerate(clients, start=first)]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=until - time.monotonic() + OVERRUN)
    wave.ended = time.monotonic()
    wave.cpu = time.process_time()
    return wave
