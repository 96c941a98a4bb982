"""App-server overhead: a route behind affinity (token check + an enabled no-op filter)
against the same route on a plain Sanic app, same run, as a ratio (target >= 0.85),
by throughput and by the server's CPU time per request.

Run: ``.venv/bin/python bench/bench_server.py [--rounds 3] [--seconds 5]`` (needs ``wrk``).
Plain HTTP on loopback for both, so TLS, which costs both the same, does not dilute it.
"""

from __future__ import annotations

import argparse
import functools
import secrets
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from affinity.testing import free_port
from affinity.tokens.jws import TokenIssuer
from affinity.tokens.keyring import KeyRing, generate_keyfile
from bench.common import (
    alternate,
    compare_argument,
    measure,
    plain_http_config,
    report,
    spawn,
    stop,
    wait_http,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    compare_argument(p)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        generate_keyfile(d / "keys.json", "HS256", False)
        (d / "admin-token").write_text(secrets.token_urlsafe(24))
        ref_port, app_port, base_port = free_port(), free_port(), free_port()
        (d / "affinity.toml").write_text(plain_http_config(ref_port, app_port))
        env = {"AFFINITY_DISABLE_PLUGIN_AUTOLOAD": "1", "AFFINITY_PLUGINS": "bench.noop_filter"}
        config = str(d / "affinity.toml")
        serve = ["-m", "affinity", "serve", "bench/bench_app.py:Bench", "--config", config]
        referral = spawn(["-m", "affinity", "referral", "--config", config], env)
        apps = {"AppServer route": (spawn(serve, env), app_port)}
        if args.compare:
            other_port = free_port()
            other_env = {**env, "AFFINITY_SERVER_LISTEN": f"127.0.0.1:{other_port}"}
            apps[f"AppServer route ({args.compare.name})"] = (
                spawn(serve, other_env, tree=args.compare),
                other_port,
            )
        minimal = spawn(["bench/minimal_app.py", str(base_port)])
        try:
            wait_http(f"http://127.0.0.1:{ref_port}/healthz", referral)
            wait_http(f"http://127.0.0.1:{base_port}/", minimal)
            for proc, port in apps.values():
                wait_http(f"http://127.0.0.1:{port}/.well-known/affinity/health", proc)
            issuer = TokenIssuer(KeyRing.load(d / "keys.json"))
            token = issuer.issue("s1", issuer.new_client_id(), "web")[0]
            runs = {
                "plain Sanic route": lambda: measure(
                    f"http://127.0.0.1:{base_port}/", minimal.pid, seconds=args.seconds
                )
            }
            for name, (proc, port) in apps.items():
                runs[name] = functools.partial(
                    measure,
                    f"http://127.0.0.1:{port}/",
                    proc.pid,
                    seconds=args.seconds,
                    headers=[f"Affinity-Token: {token}"],
                )
            results = alternate(runs, args.rounds)
        finally:
            stop(referral, minimal, *(proc for proc, _ in apps.values()))
    report(results, "plain Sanic route", "route")


if __name__ == "__main__":
    main()
