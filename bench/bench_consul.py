"""How load figures should reach the referral with Consul: active health polls or KV per server.

Run: ``python bench/bench_consul.py`` (``--quick`` for a shorter, rougher run).

Two ways for a referral to learn each server's load (active clients, in-flight):

* **active polls** (what affinity does): the referral's ``active`` health source
  GETs ``/.well-known/affinity/health`` of every server every ``interval`` and
  reads the load from the answer. Consul only carries membership and health.
* **KV per server** (rejected): every server writes its load to
  ``affinity/load/<id>`` whenever it changes, and every referral keeps a
  blocking query on the prefix.

Measured here, on loopback against the Consul stand-in: the time from a load
change to the referral knowing it, for both; and for KV the writes Consul must
take (each one a Raft log entry replicated to a quorum and fsynced on a real
cluster, which the stand-in does not model), the reads each referral makes and
the bytes it downloads, with the watch rate-limited as affinity's watches are
and without a limit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from affinity.builtin.consul.blocking import BlockingLoop, Pacing  # noqa: E402
from affinity.builtin.consul.client import ConsulClient  # noqa: E402
from affinity.builtin.consul.options import ConsulOptions  # noqa: E402
from affinity.builtin.health_active import ActiveHealthChecker  # noqa: E402
from affinity.config import HealthSettings  # noqa: E402
from affinity.models import Server  # noqa: E402
from tests.consul_agent import AgentStandIn, StandInConfig  # noqa: E402


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return (
        f"n={len(values)} mean={statistics.mean(values) * 1000:.0f} ms "
        f"p50={statistics.median(values) * 1000:.0f} ms p95={p95 * 1000:.0f} ms "
        f"max={max(values) * 1000:.0f} ms"
    )


# -- active polls -----------------------------------------------------------------------


class Sink:
    """The referral's table, reduced to what the checker reports."""

    def __init__(self, servers: list[Server]) -> None:
        self._servers = servers
        self.seen: dict[str, int] = {}
        self.changed = asyncio.Event()

    def servers(self) -> Iterable[Server]:
        return self._servers

    def set_health(self, server_id: str, status: Any, **kwargs: Any) -> None:
        load = kwargs.get("load")
        if load is not None and self.seen.get(server_id) != load.clients:
            self.seen[server_id] = load.clients
            self.changed.set()


async def active_polls(trials: int, interval: float) -> list[float]:
    """Time from a server's load changing to the active checker reporting it."""
    load = {"active_clients": 0}

    async def health(request: web.Request) -> web.Response:
        body = {"status": "passing", "draining": False, "load": {**load, "capacity": 100}}
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/.well-known/affinity/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sink = Sink([Server(id="s1", service="web", url=f"http://127.0.0.1:{port}")])
    checker = ActiveHealthChecker(HealthSettings(interval=interval, timeout=0.5))
    task = asyncio.create_task(checker.run(sink))
    lags = []
    try:
        for trial in range(1, trials + 1):
            await asyncio.sleep(random.uniform(0, interval))
            load["active_clients"] = trial
            changed = time.monotonic()
            while sink.seen.get("s1") != trial:
                sink.changed.clear()
                await asyncio.wait_for(sink.changed.wait(), interval * 3)
            lags.append(time.monotonic() - changed)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await checker.aclose()
        await runner.cleanup()
    return lags


# -- KV per server --------------------------------------------------------------------------


class KvWatcher:
    """One referral's blocking watch on the load prefix: what it reads, and when it learns."""

    def __init__(self, client: ConsulClient, prefix: str, written: dict[str, tuple[int, float]]):
        self.client = client
        self.prefix = prefix
        self.written = written
        self.known: dict[str, int] = {}
        self.lags: list[float] = []
        self.reads = 0
        self.bytes = 0

    async def fetch(self, index: int, wait: float) -> tuple[int, list[Any]]:
        returned, entries = await self.client.kv_list(self.prefix, index, wait)
        self.reads += 1
        self.bytes += len(json.dumps([_wire(e) for e in entries]))
        return returned, entries

    def apply(self, entries: list[Any]) -> None:
        now = time.monotonic()
        for entry in entries:
            key, value = entry["Key"], int(entry["Value"])
            if self.known.get(key, -1) < value:
                self.known[key] = value
                seq, at = self.written.get(key, (-1, now))
                if seq == value:
                    self.lags.append(now - at)


def _wire(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as Consul sends it (base64 value), to count the bytes a referral downloads."""
    value = entry.get("Value")
    encoded = base64.b64encode(value).decode() if isinstance(value, bytes) else value
    return {**entry, "Value": encoded}


async def kv_per_server(
    url: str, servers: int, rate: float, seconds: float, referrals: int, limit: bool
) -> tuple[KvWatcher, int]:
    options = ConsulOptions(host="127.0.0.1", port=int(url.rsplit(":", 1)[1]), wait=30.0)
    prefix = f"bench/{random.getrandbits(32):08x}/load/"
    writer = ConsulClient(options)
    written: dict[str, tuple[int, float]] = {}
    watchers = [KvWatcher(ConsulClient(options), prefix, written) for _ in range(referrals)]
    pacing = Pacing(
        wait=30.0,
        rate=options.watch_rate if limit else 1e9,
        burst=options.watch_burst if limit else 1_000_000,
        backoff_cap=1.0,
    )
    loops = [
        asyncio.create_task(BlockingLoop("bench", w.fetch, w.apply, lambda *_: None, pacing).run())
        for w in watchers
    ]
    writes = 0

    async def server(n: int) -> None:
        nonlocal writes
        key, seq = f"{prefix}s{n}", 0
        while True:
            await asyncio.sleep(random.expovariate(rate))
            seq += 1
            written[key] = (seq, time.monotonic())
            await writer.kv_put(key, str(seq).encode())
            writes += 1

    writers = [asyncio.create_task(server(n)) for n in range(servers)]
    await asyncio.sleep(seconds)
    for task in (*writers, *loops):
        task.cancel()
    await asyncio.gather(*writers, *loops, return_exceptions=True)
    for client in (writer, *(w.client for w in watchers)):
        await client.aclose()
    return watchers[0], writes


async def main(quick: bool) -> None:
    trials = 10 if quick else 30
    seconds = 5.0 if quick else 15.0
    print(f"active polls, interval 1.0 s: {summary(await active_polls(trials, 1.0))}")
    print(f"active polls, interval 0.25 s: {summary(await active_polls(trials, 0.25))}")
    agent = AgentStandIn(StandInConfig())
    agent.start()
    try:
        for servers, rate in ((50, 1.0), (200, 1.0)):
            for limit in (True, False):
                watcher, writes = await kv_per_server(agent.url, servers, rate, seconds, 2, limit)
                label = "rate-limited watch" if limit else "unlimited watch"
                print(
                    f"KV per server, {servers} servers x {rate:g} change/s, {label}: "
                    f"{writes / seconds:.0f} writes/s to Consul; per referral "
                    f"{watcher.reads / seconds:.1f} reads/s, "
                    f"{watcher.bytes / seconds / 1024:.0f} KiB/s; {summary(watcher.lags)}"
                )
    finally:
        agent.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    asyncio.run(main(parser.parse_args().quick))
