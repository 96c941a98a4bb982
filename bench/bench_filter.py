"""Cost of the firewall plugins per request: affinity-ipfilter and affinity-ratelimit enabled
against the same process with both blocked, same run, rounds alternating.

Two app servers (``GET /`` with a valid token) and two referrals (``GET /v1/assign``):
one of each loads both plugins, configured with rules that are evaluated on every
request but never refuse (a deny list of 200 networks, an allow list on a path prefix,
a per-client rate limit and a per-path one); the other runs with
``AFFINITY_DISABLE_PLUGINS=ipfilter,ratelimit``, so it has no filter at all. The cost is
``1 / filtered req/s - 1 / plain req/s`` per request, and its share of the plain
request's cost, ``plain req/s / filtered req/s - 1`` (target: under 10 %), each the
median over rounds that measure both processes back to back.

Run: ``.venv/bin/python bench/bench_filter.py [--rounds 5] [--seconds 4] [--tier both]``
(needs ``wrk``). Plain HTTP on loopback (``insecure_http = true``), so TLS, which
costs both the same, does not dilute the difference.
"""

from __future__ import annotations

import argparse
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
from bench.common import Run, measure, median, spawn, stop, wait_http

DENY = [f"198.{18 + i // 256}.{i % 256}.0/24" for i in range(200)]
RULES = f"""
[plugins.ipfilter]
deny = {DENY!r}

[[plugins.ipfilter.paths]]
prefix = "/admin"
allow = ["10.0.0.0/8"]

[plugins.ratelimit]
rate = 1000000.0
burst = 1000000

[[plugins.ratelimit.limits]]
name = "admin"
prefix = "/admin"
rate = 1.0
burst = 3
"""


def write_config(d: Path, referral_port: int) -> Path:
    """One config for all four processes; the plain ones never load the plugins reading it."""
    generate_keyfile(d / "keys.json", "HS256", False)
    (d / "admin-token").write_text(secrets.token_urlsafe(24))
    static = ",\n".join(
        f'  {{id = "w{i}", url = "https://w{i}.bench.test:8443"}}' for i in range(10)
    )
    config = d / "affinity.toml"
    config.write_text(f"""
[referral]
listen = "127.0.0.1:{referral_port}"
insecure_http = true
admin_token_file = "admin-token"
[registry]
allow_http = true
[tokens]
keys_file = "keys.json"
[health]
sources = []
[server]
service = "bench"
insecure_http = true
insecure_referral = true
referral_url = "http://127.0.0.1:{referral_port}"
admin_token_file = "admin-token"
heartbeat_interval = 3600
[services.web]
policy = "round_robin"
servers = [
{static}
]
{RULES}
""")
    return config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--tier", choices=["server", "referral", "both"], default="both")
    args = p.parse_args()
    plain_env = {"AFFINITY_DISABLE_PLUGINS": "ipfilter,ratelimit"}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ports = {name: free_port() for name in ("ref-f", "ref-p", "app-f", "app-p")}
        config = str(write_config(d, ports["ref-f"]))
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name, env in (("ref-f", {}), ("ref-p", plain_env)):
                listen = {"AFFINITY_REFERRAL_LISTEN": f"127.0.0.1:{ports[name]}"}
                procs[name] = spawn(
                    ["-m", "affinity", "referral", "--config", config],
                    {**env, **listen},
                    d / f"{name}.log",
                )
            for name, env in (("app-f", {}), ("app-p", plain_env)):
                url = f"http://127.0.0.1:{ports[name]}"
                server = {
                    "AFFINITY_SERVER_ID": name,
                    "AFFINITY_SERVER_LISTEN": f"127.0.0.1:{ports[name]}",
                    "AFFINITY_SERVER_URL": url,
                }
                procs[name] = spawn(
                    ["-m", "affinity", "serve", "bench/bench_app.py:Bench", "--config", config],
                    {**env, **server},
                    d / f"{name}.log",
                )
            for name in ("ref-f", "ref-p"):
                wait_http(f"http://127.0.0.1:{ports[name]}/healthz", procs[name])
            for name in ("app-f", "app-p"):
                wait_http(
                    f"http://127.0.0.1:{ports[name]}/.well-known/affinity/health", procs[name]
                )
            pids = {name: proc.pid for name, proc in procs.items()}
            runs = measurements(d, ports, pids, args)
            results = alternate_fairly(runs, args.rounds)
            check_filters_ran(ports)
        finally:
            stop(*procs.values())
    report(results, args)
    in_process()


def measurements(
    d: Path, ports: dict[str, int], pids: dict[str, int], args: argparse.Namespace
) -> dict[str, dict[str, Callable[[], Run]]]:
    """Per tier, the filtered and the plain measurement (any non-2xx answer fails the run)."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed for this benchmark: apt-get install wrk")
    issuer = TokenIssuer(KeyRing.load(d / "keys.json"))

    def app(name: str) -> Callable[[], Run]:
        token = issuer.issue(name, issuer.new_client_id(), "bench")[0]
        url = f"http://127.0.0.1:{ports[name]}/"
        header = f"Affinity-Token: {token}"
        return lambda: measure(url, pids[name], seconds=args.seconds, headers=[header])

    def referral(name: str) -> Callable[[], Run]:
        url = f"http://127.0.0.1:{ports[name]}/v1/assign"
        return lambda: measure(url, pids[name], seconds=args.seconds)

    tiers: dict[str, dict[str, Callable[[], Run]]] = {}
    if args.tier in ("server", "both"):
        tiers["app server GET /"] = {"filtered": app("app-f"), "plain": app("app-p")}
    if args.tier in ("referral", "both"):
        tiers["referral GET /v1/assign"] = {
            "filtered": referral("ref-f"),
            "plain": referral("ref-p"),
        }
    for tier in tiers.values():  # one unmeasured run of each first: warm caches and pools
        for run in tier.values():
            run()
    return tiers


def alternate_fairly(
    tiers: dict[str, dict[str, Callable[[], Run]]], rounds: int
) -> dict[str, dict[str, list[Run]]]:
    """Each round measures both kinds, the order flipping every round so drift hurts both."""
    results: dict[str, dict[str, list[Run]]] = {t: {"filtered": [], "plain": []} for t in tiers}
    for i in range(rounds):
        for tier, runs in tiers.items():
            order = ("filtered", "plain") if i % 2 == 0 else ("plain", "filtered")
            for kind in order:
                results[tier][kind].append(runs[kind]())
    return results


def check_filters_ran(ports: dict[str, int]) -> None:
    """Prove the filtered processes filter: a path rule refuses loopback on ``/admin``."""
    for name in ("app-f", "ref-f"):
        r = httpx.get(f"http://127.0.0.1:{ports[name]}/admin")
        assert r.status_code == 403, (name, r.status_code, r.text)
    for name in ("app-p", "ref-p"):
        assert httpx.get(f"http://127.0.0.1:{ports[name]}/admin").status_code == 404


def report(results: dict[str, dict[str, list[Run]]], args: argparse.Namespace) -> None:
    """Per tier: the filter's cost per request, by CPU time and by throughput.

    Each round measures both processes back to back, so its ratio compares like with
    like even when the machine's load moves between rounds; the figures quoted are
    medians over rounds of those paired differences.
    """
    print(f"{args.rounds} rounds x {args.seconds} s, wrk -t1 -c32, medians of paired rounds")
    print(
        "| endpoint | plain CPU µs/req | filtered CPU µs/req | filter CPU µs/req | CPU share "
        "| plain req/s | filtered req/s | throughput cost |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for tier, kinds in results.items():
        pairs = list(zip(kinds["plain"], kinds["filtered"], strict=True))
        cpu_plain = median([p.cpu_us for p, _ in pairs])
        cpu_filtered = median([f.cpu_us for _, f in pairs])
        cpu_cost = median([f.cpu_us - p.cpu_us for p, f in pairs])
        cpu_share = median([f.cpu_us / p.cpu_us - 1 for p, f in pairs])
        rps_share = median([p.rps / f.rps - 1 for p, f in pairs])
        print(
            f"| {tier} | {cpu_plain:.1f} | {cpu_filtered:.1f} | {cpu_cost:.1f} | {cpu_share:.1%} "
            f"| {median([p.rps for p, _ in pairs]):,.0f} "
            f"| {median([f.rps for _, f in pairs]):,.0f} "
            f"| {rps_share:.1%} |"
        )
        print(
            "  CPU share per round: "
            + ", ".join(f"{f.cpu_us / p.cpu_us - 1:+.1%}" for p, f in pairs)
        )
        print(
            "  throughput cost per round: "
            + ", ".join(f"{p.rps / f.rps - 1:+.1%}" for p, f in pairs)
        )


def in_process(rounds: int = 5, n: int = 20_000) -> None:
    """Both plugins' decision per request in this process, as the core calls them.

    The wrk runs come from one address, so the plugins' caches of addresses and
    decisions always hit there; this also times a new address on every request
    (a referral mostly sees each client once), best of ``rounds``.
    """
    import time

    from affinity.config import load
    from affinity.models import RequestInfo
    from affinity.plugin.manager import PluginManager

    manager = PluginManager(env={})
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.toml"
        rules.write_text(RULES)
        manager.configure(load(rules, env={}))

    def per_request(requests: list[RequestInfo]) -> float:
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            for request in requests:
                manager.reject_request(request)
            best = min(best, (time.perf_counter() - start) / len(requests) * 1e6)
        return best

    def request(ip: str) -> RequestInfo:
        return RequestInfo(role="server", method="GET", path="/", client_ip=ip, client_id=None)

    same = [request("127.0.0.1")] * n
    fresh = [request(f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}") for i in range(n)]
    print(
        f"in process, both plugins, µs per request: one address {per_request(same):.2f}, ", end=""
    )
    print(f"a new address each request {per_request(fresh):.2f}")


if __name__ == "__main__":
    main()
