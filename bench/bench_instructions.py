"""Instructions per request under callgrind: a figure a busy machine does not move.

wrk's throughput on a shared 2-core machine moves by tens of percent between
rounds; the number of instructions a process executes per request does not.
This serves the same routes as bench_server.py and bench_referral.py (a plain
Sanic route, the ``AppServer`` route with a token and the no-op filter, and
``GET /v1/assign``, over 1,000 servers here) each under ``valgrind
--tool=callgrind``, warms each up, zeroes the counters, sends ``--requests``
requests on one keep-alive connection, and prints instructions per request
and their ratio to the plain route (plain / measured, so that higher is
better, as in the throughput tables). It counts instructions, not time:
cache misses and the kernel's share are not in it, so it is for comparing
versions and finding what a change saves, next to the wrk ratios, not
instead of them.

Run: ``.venv/bin/python bench/bench_instructions.py [--requests 2000] [--compare DIR]``
(needs ``valgrind``; about 30 s on an idle machine: each process starts with
instrumentation off, which is turned on after the warm-up).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from affinity.testing import free_port
from affinity.tokens.jws import TokenIssuer
from affinity.tokens.keyring import KeyRing, generate_keyfile
from bench.bench_referral import NO_PLUGINS, write_config
from bench.common import ROOT, compare_argument, plain_http_config, spawn, stop, wait_http

WARM_UP = 300
ASSIGN_SERVERS = 1_000
"""Servers behind ``GET /v1/assign``: fewer than bench_referral.py's 100,000, whose
configuration takes long to read under valgrind; the pick hardly depends on it."""


def instructions(
    args: list[str], env: dict[str, str], url: str, headers: dict[str, str], n: int, tree: Path
) -> float:
    """Instructions per request of ``python args...`` (in ``tree``) answering ``url``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        # Instrumentation starts off and is turned on after the warm-up: start-up then runs
        # about ten times faster, and what is counted is the same.
        valgrind = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
        ]
        proc = subprocess.Popen(
            [*valgrind, sys.executable, *args],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tree,
        )
        try:
            wait_http(url, proc, timeout=900)
            with httpx.Client(headers=headers, timeout=60) as client:
                for _ in range(WARM_UP):
                    client.get(url).raise_for_status()
                _control("-i", proc, "on")
                _control("-z", proc)
                for _ in range(n):
                    client.get(url).raise_for_status()
                _control("-d", proc)
        finally:
            stop(proc)
        return max(_total(dump) for dump in Path(tmp).glob("callgrind.out*")) / n


def _control(option: str, proc: subprocess.Popen[bytes], *values: str) -> None:
    subprocess.run(
        ["callgrind_control", option, *values, str(proc.pid)], check=True, capture_output=True
    )


def _total(dump: Path) -> int:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    return 0


def measure_tree(
    tree: Path, n: int, d: Path, token: str, report: Callable[[str, float], None]
) -> None:
    ref_port, app_port, assign_port = free_port(), free_port(), free_port()
    # A referral for the app server to register with (not measured): with none, the
    # server's retries to reach one would be counted with the requests.
    (d / "server.toml").write_text(plain_http_config(ref_port, app_port))
    config = str(d / "server.toml")
    referral = spawn(["-m", "affinity", "referral", "--config", config], NO_PLUGINS, tree=tree)
    try:
        wait_http(f"http://127.0.0.1:{ref_port}/healthz", referral)
        app = instructions(
            ["-m", "affinity", "serve", "bench/bench_app.py:Bench", "--config", config],
            {**NO_PLUGINS, "AFFINITY_PLUGINS": "bench.noop_filter"},
            f"http://127.0.0.1:{app_port}/",
            {"Affinity-Token": token},
            n,
            tree,
        )
    finally:
        stop(referral)
    report("AppServer route", app)
    # A directory of its own per tree: write_config makes a key file and keeps an old one.
    assign_config = write_config(Path(tempfile.mkdtemp(dir=d)), assign_port, ASSIGN_SERVERS)
    assign = instructions(
        ["-m", "affinity", "referral", "--config", str(assign_config)],
        NO_PLUGINS,
        f"http://127.0.0.1:{assign_port}/v1/assign",
        {},
        n,
        tree,
    )
    report("GET /v1/assign", assign)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    compare_argument(p)
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed for this benchmark: apt-get install valgrind")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        generate_keyfile(d / "keys.json", "HS256", False)
        (d / "admin-token").write_text(secrets.token_urlsafe(24))
        issuer = TokenIssuer(KeyRing.load(d / "keys.json"))
        token = issuer.issue("s1", issuer.new_client_id(), "web")[0]
        plain_port = free_port()
        plain = instructions(
            ["bench/minimal_app.py", str(plain_port)],
            {},
            f"http://127.0.0.1:{plain_port}/",
            {},
            args.requests,
            ROOT,
        )
        print(f"{'plain Sanic route':40} {plain:>12,.0f} instructions/request", flush=True)
        trees = {"": ROOT} | ({f" ({args.compare.name})": args.compare} if args.compare else {})
        for suffix, tree in trees.items():

            def report(name: str, figure: float, suffix: str = suffix) -> None:
                label = name + suffix
                print(
                    f"{label:40} {figure:>12,.0f} instructions/request  ratio {plain / figure:.3f}",
                    flush=True,
                )

            measure_tree(tree, args.requests, d, token, report)


if __name__ == "__main__":
    main()
