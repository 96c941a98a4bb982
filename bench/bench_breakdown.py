"""Where a request's time goes, measured inside the serving process under load.

Starts a referral (10,000 servers, ``load_weighted``) and an app server (a
token and the no-op filter, as in bench_server.py) with timers wrapped around
the parts of the request path, drives each with wrk, and prints the mean time
of each part per call. Each timer adds about 0.2 µs to what it measures; the
figures are for finding the large parts, the ratios in bench_referral.py and
bench_server.py are the ones to compare between versions.

Run: ``.venv/bin/python bench/bench_breakdown.py [--seconds 5] [--compare DIR]``
(needs ``wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPORT_EVERY = 20_000


def _timers(parts: dict[str, tuple[Any, str]], total: str) -> None:
    """Wrap each ``owner.attribute`` in a timer; print the means every REPORT_EVERY ``total``s."""
    spent: dict[str, list[int]] = {name: [0, 0] for name in parts}

    def report() -> None:
        means = {name: round(ns / max(n, 1) / 1000, 2) for name, (ns, n) in spent.items()}
        print("MEANS", means, flush=True)

    for name, (owner, attribute) in parts.items():
        function = getattr(owner, attribute, None)
        if function is None:  # another version, without this part
            del spent[name]
            continue
        cell = spent[name]

        def timed(
            *args: Any, _f: Callable[..., Any] = function, _c: list[int] = cell, **kwargs: Any
        ) -> Any:
            started = time.perf_counter_ns()
            try:
                return _f(*args, **kwargs)
            finally:
                _c[0] += time.perf_counter_ns() - started
                _c[1] += 1

        async def timed_async(
            *args: Any,
            _f: Callable[..., Any] = function,
            _c: list[int] = cell,
            _n: str = name,
            **kwargs: Any,
        ) -> Any:
            started = time.perf_counter_ns()
            try:
                return await _f(*args, **kwargs)
            finally:
                _c[0] += time.perf_counter_ns() - started
                _c[1] += 1
                if _n == total and _c[1] % REPORT_EVERY == 0:
                    report()

        wrapper = timed_async if asyncio.iscoroutinefunction(function) else timed
        setattr(owner, attribute, functools.wraps(function)(wrapper))


def child(role: str, argv: list[str]) -> int:
    """The serving process, with its timers (run as ``bench_breakdown.py --child ROLE ...``).

    It runs in the tree being measured: that tree's code comes first on ``sys.path``.
    """
    sys.path.insert(0, os.getcwd())
    from affinity.cli.main import main
    from affinity.tokens import jws
    from affinity.web import metrics

    if role == "referral":
        from affinity.referral import assign

        _timers(
            {
                "assign handler": (assign, "assign"),
                "refer": (assign, "refer"),
                "policy pick": (assign, "_pick"),
                "token issue": (jws.TokenIssuer, "issue"),
                "client id": (jws.ClientIds, "__call__"),
                "metrics": (metrics.ReferralMetrics, "referred"),
                "JSON answer": (assign, "json_response"),
            },
            total="assign handler",
        )
    else:
        from affinity.server import guard
        from bench import bench_app

        _timers(
            {
                "app handler": (bench_app.Bench, "index"),
                "guard: admit": (guard, "admit"),
                "guard: request middleware": (guard, "on_request"),
                "guard: response middleware": (guard, "on_response"),
                "guard: metrics": (metrics.ServerMetrics, "answered"),
            },
            total="app handler",
        )
    return main(argv)


def measure_tree(tree: Path, seconds: int) -> dict[str, str]:
    from affinity.testing import free_port
    from affinity.tokens.jws import TokenIssuer
    from affinity.tokens.keyring import KeyRing
    from bench.bench_referral import NO_PLUGINS, write_config
    from bench.common import measure, spawn, stop, wait_http

    found: dict[str, str] = {}
    script = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        port = free_port()
        config = write_config(d, port, 10_000)
        log = d / "referral.log"
        proc = spawn(
            [script, "--child", "referral", "referral", "--config", str(config)],
            NO_PLUGINS,
            log,
            tree=tree,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", proc, timeout=300)
            measure(f"http://127.0.0.1:{port}/v1/assign", proc.pid, seconds=1)
            run = measure(f"http://127.0.0.1:{port}/v1/assign", proc.pid, seconds=seconds)
        finally:
            stop(proc)
        found["referral"] = f"{run.cpu_us:.1f} µs CPU/request; " + _last_means(log)

        app_port = free_port()
        (d / "server.toml").write_text(f"""
[registry]
allow_http = true
[tokens]
keys_file = "keys.json"
[server]
id = "s1"
listen = "127.0.0.1:{app_port}"
insecure_http = true
insecure_referral = true
referral_url = "http://127.0.0.1:1"
heartbeat_interval = 3600
""")
        env = {
            "AFFINITY_DISABLE_PLUGIN_AUTOLOAD": "1",
            "AFFINITY_PLUGINS": "bench.noop_filter",
            "AFFINITY_ADMIN_TOKEN": secrets.token_urlsafe(24),
        }
        log = d / "server.log"
        serve = ["serve", "bench.bench_app:Bench", "--config", str(d / "server.toml")]
        proc = spawn([script, "--child", "server", *serve], env, log, tree=tree)
        try:
            wait_http(f"http://127.0.0.1:{app_port}/.well-known/affinity/health", proc)
            issuer = TokenIssuer(KeyRing.load(d / "keys.json"))
            header = f"Affinity-Token: {issuer.issue('s1', issuer.new_client_id(), 'web')[0]}"
            url = f"http://127.0.0.1:{app_port}/"
            measure(url, proc.pid, seconds=1, headers=[header])
            run = measure(url, proc.pid, seconds=seconds, headers=[header])
        finally:
            stop(proc)
        found["app server"] = f"{run.cpu_us:.1f} µs CPU/request; " + _last_means(log)
    return found


def _last_means(log: Path) -> str:
    lines = [line for line in log.read_text().splitlines() if line.startswith("MEANS")]
    return lines[-1].removeprefix("MEANS ") if lines else "(no report: too few requests)"


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2], sys.argv[3:]))
    from bench.common import ROOT, compare_argument

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=5)
    compare_argument(p)
    args = p.parse_args()
    trees = {"this tree": ROOT} | ({args.compare.name: args.compare} if args.compare else {})
    for name, tree in trees.items():
        for role, figures in measure_tree(tree, args.seconds).items():
            print(f"{name}, {role}: {figures}")


if __name__ == "__main__":
    main()
