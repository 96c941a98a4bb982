"""Shared pieces of the HTTP benchmarks: child processes on loopback and wrk runs.

Every figure is a ratio against a baseline measured in the same run, rounds
alternating between the two so that a noisy machine hurts both alike.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
R = TypeVar("R")


def spawn(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    *,
    tree: Path = ROOT,
) -> subprocess.Popen[bytes]:
    """``python args...`` in ``tree``: ``-m affinity`` there runs that tree's code (the
    working directory comes first on ``sys.path``), so another checkout can be measured."""
    out = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, **(env or {})},
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=tree,
    )


def compare_argument(parser: argparse.ArgumentParser) -> None:
    """``--compare DIR``: also measure the affinity of another source tree, interleaved."""
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="DIR",
        help="a source tree of another version (e.g. 'git worktree add DIR main'), measured "
        "in the same rounds as this one",
    )


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@dataclass(frozen=True)
class Run:
    """One wrk run against one process: its throughput and the CPU it spent per request."""

    rps: float
    cpu_us: float


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    url: str,
    pid: int,
    *,
    seconds: int = 5,
    connections: int = 32,
    headers: Sequence[str] = (),
) -> Run:
    """wrk against ``url`` (one thread, so the server gets the other core) while the
    serving process's CPU time is read before and after.

    CPU time per request hardly moves when other work shares the machine, unlike
    throughput, so it is the figure that survives a busy host.
    """
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for this benchmark: apt-get install wrk")
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for header in headers:
        args += ["-H", header]
    before = cpu_seconds(pid)
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    spent = cpu_seconds(pid) - before
    requests = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if requests is None or rps is None:
        raise RuntimeError(out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error answers\n{out}")
    return Run(float(rps.group(1)), spent / int(requests.group(1)) * 1e6)


def report(results: Mapping[str, Sequence[Run]], baseline: str, label: str) -> None:
    """Median throughput and CPU per request of each measurement, each as a ratio to
    ``baseline`` (throughput over the baseline's; the baseline's CPU over its CPU)."""
    base_rps = median([r.rps for r in results[baseline]])
    base_cpu = median([r.cpu_us for r in results[baseline]])
    rounds = len(results[baseline])
    width = max(len(label), *map(len, results))
    print(
        f"{label:<{width}} {'req/s (median of ' + str(rounds) + ')':>24} {'ratio':>7} "
        f"{'CPU us/req':>11} {'CPU ratio':>10}"
    )
    for name, runs in results.items():
        rps = median([r.rps for r in runs])
        cpu = median([r.cpu_us for r in runs])
        ratios = f"{rps / base_rps:>7.2f} {cpu:>11.1f} {base_cpu / cpu:>10.2f}"
        print(f"{name:<{width}} {rps:>24.0f} {ratios}")
    for name, runs in results.items():
        if name != baseline:
            per_round = ", ".join(
                f"{r.rps / b.rps:.2f}" for r, b in zip(runs, results[baseline], strict=True)
            )
            print(f"  {name}: throughput ratio per round {per_round}")


def alternate(runs: Mapping[str, Callable[[], R]], rounds: int) -> dict[str, list[R]]:
    """Run each measurement ``rounds`` times, interleaved, after one unrecorded run of each
    (warm caches, pools and the interpreter's specialised code)."""
    for run in runs.values():
        run()
    results: dict[str, list[R]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            results[name].append(run())
    return results


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def plain_http_config(ref_port: int, app_port: int) -> str:
    """A referral and an app server ``s1`` over plain HTTP on loopback, for benchmarks:
    keys in ``keys.json``, the admin token in ``admin-token``, no health checks and
    no heartbeat to count with the requests."""
    return f"""
[referral]
listen = "127.0.0.1:{ref_port}"
insecure_http = true
admin_token_file = "admin-token"
[registry]
allow_http = true
[tokens]
keys_file = "keys.json"
[health]
sources = []
[server]
id = "s1"
service = "web"
listen = "127.0.0.1:{app_port}"
insecure_http = true
insecure_referral = true
referral_url = "http://127.0.0.1:{ref_port}"
admin_token_file = "admin-token"
heartbeat_interval = 3600
"""
