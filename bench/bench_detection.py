"""Failure detection: time from ``kill -9`` of an app server to its last assignment.

A referral and three app servers run as real processes on loopback with TLS,
with the default health settings (interval 1 s, timeout 0.5 s, fall 2,
rise 2, jitter 10 %). A client thread asks ``/v1/assign`` in a loop. Each run
kills one server with SIGKILL and measures, from the kill:

- **last assignment**: the last ``/v1/assign`` answer naming the dead server
  (what the issue asks for: after it, no client is sent there);
- **dropped**: when the admin API first shows the server unassignable.

Two modes alternate run by run: **checks only**, and **with an avoid**, where
a client that was talking to the dead server sees its connection refused and
asks the referral again with ``avoid=<server>`` at once, as the client
library does; the avoid wakes the server's checker early (an avoid never
ejects a server by itself). The killed server is then started again and the
next run waits until it is assignable.

Run: ``.venv/bin/python bench/bench_detection.py [--runs 20]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from affinity.config import HealthSettings
from affinity.testing import Deployment, wait_until
from affinity.tokens.jws import TokenIssuer
from affinity.tokens.keyring import KeyRing

SERVERS = ("s1", "s2", "s3")
MODES = ("checks only", "with an avoid")


class AssignLoop:
    """A client asking ``/v1/assign`` as fast as it can on its own thread."""

    def __init__(self, d: Deployment) -> None:
        self.d = d
        self.results: list[tuple[float, str | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self.d.client(base_url=self.d.referral_url) as c:
            while not self.stop.is_set():
                r = c.get("/v1/assign")
                sid = r.json()["server"]["id"] if r.status_code == 200 else None
                self.results.append((time.monotonic(), sid))

    def last(self, sid: str, since: float) -> float | None:
        """Time of the last answer naming ``sid`` at or after ``since``."""
        times = [at for at, got in list(self.results) if got == sid and at >= since]
        return max(times, default=None)

    def answered_after(self, t: float) -> bool:
        return bool(self.results) and self.results[-1][0] > t

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def health_text() -> str:
    """The documented defaults, written out so the deployment's test defaults do not apply."""
    s = HealthSettings()
    return (
        f"interval = {s.interval}\ntimeout = {s.timeout}\nfall = {s.fall}\nrise = {s.rise}\n"
        f"fast_interval = {s.fast_interval}\njitter = {s.jitter}\n"
    )


def avoid(d: Deployment, victim: str, token: str) -> None:
    """What a client of the victim does: its request fails, it asks again with avoid."""
    with d.client(timeout=2.0) as c:
        try:
            c.get(d.server_urls[victim] + "/", headers={"Affinity-Token": token})
        except httpx.TransportError:
            r = c.get(
                d.referral_url + "/v1/assign",
                params={"avoid": victim},
                headers={"Affinity-Token": token},
            )
            assert r.json()["server"]["id"] != victim
            return
    raise AssertionError(f"{victim} still answered after SIGKILL")


def one_run(d: Deployment, loop: AssignLoop, victim: str, mode: str) -> tuple[float, float]:
    """Kill ``victim``; seconds from the kill to its last assignment, and to its drop."""
    token = TokenIssuer(KeyRing.load(d.dir / "keys.json")).issue(victim, "bench", "web")[0]
    wait_until(lambda: loop.last(victim, time.monotonic() - 0.5) is not None, 10, what="assigned")
    killed = time.monotonic()
    d.servers[victim].kill()
    if mode == "with an avoid":
        avoid(d, victim, token)
    wait_until(lambda: victim not in d.assignable(), 20, 0.01, f"{victim} dropped")
    dropped = time.monotonic() - killed
    settled = time.monotonic()
    wait_until(lambda: loop.answered_after(settled + 0.2), 10, what="answers after the drop")
    last = loop.last(victim, killed)
    return (0.0 if last is None else last - killed), dropped


def restart(d: Deployment, victim: str) -> None:
    d.start_server(victim)
    wait_until(lambda: victim in d.assignable(), 20, what=f"{victim} back")


def bench(runs: int) -> dict[str, list[tuple[float, float]]]:
    figures: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp, Deployment(Path(tmp), health=health_text()) as d:
        d.start_referral()
        for sid in SERVERS:
            d.start_server(sid)
        wait_until(lambda: d.assignable() == set(SERVERS), 20, what="all assignable")
        loop = AssignLoop(d)
        try:
            for i in range(2 * runs):
                mode, victim = MODES[i % 2], SERVERS[i % len(SERVERS)]
                result = one_run(d, loop, victim, mode)
                figures[mode].append(result)
                print(f"run {i // 2 + 1:2d} {mode:13s} {victim}: last {result[0]:.3f}s", flush=True)
                restart(d, victim)
        finally:
            loop.close()
    return figures


def report(figures: dict[str, list[tuple[float, float]]]) -> None:
    print("\n| mode | runs | last assignment: median | max | dropped (admin API): median | max |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, results in figures.items():
        last = [r[0] for r in results]
        dropped = [r[1] for r in results]
        print(
            f"| {mode} | {len(results)} | {statistics.median(last):.2f} s | {max(last):.2f} s "
            f"| {statistics.median(dropped):.2f} s | {max(dropped):.2f} s |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per mode (default 20)")
    args = parser.parse_args()
    report(bench(args.runs))


if __name__ == "__main__":
    main()
