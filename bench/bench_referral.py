"""Referral throughput and memory.

1. Requests per second of ``GET /v1/assign`` (10,000 registered servers,
   ``load_weighted``, a token signed per answer) against a minimal Sanic route,
   same run, as a ratio (target >= 0.6), by throughput and by CPU time per request;
   installed plugins are not loaded (bench_filter.py measures the filters).
2. Peak memory of a referral holding 100,000 registered servers (target < 200 MB).

Run: ``.venv/bin/python bench/bench_referral.py [--rounds 3] [--seconds 5]``
(needs ``wrk``). Plain HTTP on loopback for both sides, so TLS cost, which is
the same for both, does not dilute the difference.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from affinity.testing import free_port
from affinity.tokens.keyring import generate_keyfile
from bench.common import (
    alternate,
    compare_argument,
    measure,
    peak_rss_mb,
    report,
    spawn,
    stop,
    wait_http,
)

NO_PLUGINS = {"AFFINITY_DISABLE_PLUGIN_AUTOLOAD": "1"}
"""The assign path itself: installed plugins (filters) are measured by bench_filter.py."""


def write_config(directory: Path, port: int, servers: int) -> Path:
    generate_keyfile(directory / "keys.json", "HS256", False)
    rows = ",\n".join(
        f'  {{id = "s{i}", url = "https://s{i}.bench.test:8443"}}' for i in range(servers)
    )
    config = directory / "affinity.toml"
    config.write_text(f"""
[referral]
listen = "127.0.0.1:{port}"
insecure_http = true
[tokens]
keys_file = "keys.json"
[health]
sources = []
[services.web]
policy = "load_weighted"
servers = [
{rows}
]
""")
    return config


def throughput(rounds: int, seconds: int, compare: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port, base_port = free_port(), free_port()
        config = write_config(Path(tmp), port, 10_000)
        referral = ["-m", "affinity", "referral", "--config", str(config)]
        referrals = {"GET /v1/assign": (spawn(referral, NO_PLUGINS), port)}
        if compare:
            other = free_port()
            env = {**NO_PLUGINS, "AFFINITY_REFERRAL_LISTEN": f"127.0.0.1:{other}"}
            referrals[f"GET /v1/assign ({compare.name})"] = (
                spawn(referral, env, tree=compare),
                other,
            )
        minimal = spawn(["bench/minimal_app.py", str(base_port)])
        try:
            wait_http(f"http://127.0.0.1:{base_port}/", minimal)
            for proc, at in referrals.values():
                wait_http(f"http://127.0.0.1:{at}/healthz", proc)
                assert httpx.get(f"http://127.0.0.1:{at}/v1/assign").json()["token"]
            runs = {
                "minimal Sanic route": lambda: measure(
                    f"http://127.0.0.1:{base_port}/", minimal.pid, seconds=seconds
                )
            }
            for name, (proc, at) in referrals.items():
                runs[name] = functools.partial(
                    measure, f"http://127.0.0.1:{at}/v1/assign", proc.pid, seconds=seconds
                )
            results = alternate(runs, rounds)
        finally:
            stop(minimal, *(proc for proc, _ in referrals.values()))
    report(results, "minimal Sanic route", "endpoint")


def memory(servers: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = write_config(Path(tmp), port, servers)
        referral = spawn(["-m", "affinity", "referral", "--config", str(config)])
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", referral, timeout=300)
            for _ in range(20):
                httpx.get(f"http://127.0.0.1:{port}/v1/assign")
            print(f"peak RSS with {servers:,} servers: {peak_rss_mb(referral.pid):.0f} MiB")
        finally:
            stop(referral)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--servers", type=int, default=100_000)
    compare_argument(p)
    args = p.parse_args()
    throughput(args.rounds, args.seconds, args.compare)
    memory(args.servers)


if __name__ == "__main__":
    main()
