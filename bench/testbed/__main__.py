"""The scale-out test bed: ``sudo .venv/bin/python -m bench.testbed`` from the repository root.

Builds the hosts (network namespaces joined by a bridge, each app server's
uplink capped with ``tc tbf``), runs a real referral and real app servers with
TLS, and measures the goodput of clients going through ``affinity.AsyncClient``
in each phase, as a ratio to one server in the same run, with HAProxy
(``mode tcp``) in front of the same servers as the proxy anchor. Prints the
table; ``--write bench/RESULTS.md`` also puts it there. Where root, ``ip``,
``tc`` or ``haproxy`` is missing it says so and exits 0 ("skipped"). Every
namespace and process is removed on any exit; ``--cleanup`` removes what a
killed run left behind.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import bed, net, plot, report
from .report import PERCENT, TIMES, Row, Target

ROOT = Path(__file__).resolve().parent.parent.parent
TARGETS = {
    "fresh": Target(3.8, at_least=True, unit=TIMES),
    "departures": Target(3.6, at_least=True, unit=TIMES),
    "failed": Target(0, at_least=False),
    "survivors": Target(2.7, at_least=True, unit=TIMES),
    "haproxy": Target(1.05, at_least=False, unit=TIMES),
    "referral": Target(0.1, at_least=False, unit=PERCENT),
}


class OutOfTime(Exception):
    """The run's time budget (``--budget``) is spent."""


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    reason = report.missing(os.geteuid() == 0, shutil.which)
    if reason:
        print(f"bench.testbed: skipped: {reason}", flush=True)
        return 0
    if args.cleanup:
        removed = net.remove_leftovers()
        print("\n".join(removed) if removed else f"nothing named {net.PREFIX}-* was left")
        return 0
    if args.priority:
        os.nice(-args.priority)  # inherited by every process of the bed
    _raise_on(signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)
    signal.alarm(int(args.budget or 600 * args.rounds))
    directory = Path(tempfile.mkdtemp(prefix=f"{net.PREFIX}-"))
    left = net.remove_leftovers()
    if left:
        print(f"removed what an earlier run left: {', '.join(left)}", flush=True)
    testbed = bed.Bed(directory, args.rate, args.clients, args.procs)
    rounds: list[dict[str, bed.Measured]] = []
    ok = False
    try:
        testbed.build()
        with net.inside(bed.CLIENT):
            for n in range(1, args.rounds + 1):
                say = _teller(f"round {n}/{args.rounds}: " if args.rounds > 1 else "")
                rounds.append(dict(bed.phases(testbed, args.warmup, args.seconds, say)))
        ok = True
    except (KeyboardInterrupt, OutOfTime) as exc:
        print(f"bench.testbed: stopped ({type(exc).__name__}); cleaning up", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        testbed.close()
        if ok and not args.keep:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            print(f"files and logs of this run: {directory}", file=sys.stderr)
    for n, results in enumerate(rounds, start=1):
        print(f"round {n}:")
        details(results)
    rows = report.combine([table(results, args.clients) for results in rounds])
    text = block(rows, rounds, args)
    if args.plot:
        picture = Path(args.plot)
        if plot.available():
            title = f"{args.title or 'test bed'}: goodput by server (last round)"
            plot.timeline(rounds[-1], picture, title)
            where = Path(args.write).parent if args.write else Path.cwd()
            link = os.path.relpath(picture.resolve(), where.resolve())
            text += f"\n\n![goodput by server over time, every phase]({link})"
        else:
            print("no plot: matplotlib is not installed (.venv/bin/pip install matplotlib)")
    print(text)
    if args.write:
        path = Path(args.write)
        path.write_text(report.splice(path.read_text(encoding="utf-8"), args.key, text))
        print(f"written to {path} (between the markers of {args.key!r})")
    return 0


def table(results: dict[str, bed.Measured], clients: int) -> list[Row]:
    one = results["one"].goodput()

    def row(key: str, case: str, servers: set[str] | None = None, note: str = "") -> Row:
        m = results[key]
        value = m.goodput(servers)
        shown = report.ratio(value, one)
        return Row(case, report.mb_per_s(value, 1.0), shown, TIMES, TARGETS.get(key), note)

    dep, kill = results["departures"], results["kill"]
    before = ", ".join(f"{k} {_num(v)}" for k, v in sorted(dep.before.items()))
    failed = len(kill.wave.failures)
    counted = [m.counters for m in results.values() if m.counters is not None]
    used = sum(counted[1:], counted[0])
    share = 100 * used.referral / used.served if used.served else None
    survivors = {"s1", "s2", "s3"}
    after_kill = kill.wave.per_server(kill.start, kill.end)
    return [
        row("one", "1 server", note=f"{clients} clients on s1"),
        row("fresh", "N=4, fresh referral and servers", note=_spread(results["fresh"])),
        row(
            "departures",
            f"N=4, right after {clients} earlier clients of s1 ended",
            note=f"{_spread(dep)}; reported clients before: {before}",
        ),
        Row(
            "the same, against N=4 fresh in the same round",
            "",
            report.ratio(dep.goodput(), results["fresh"].goodput()),
            TIMES,
            note="1.00: the clients that left cost nothing; 0.75: one server of four idle",
        ),
        Row(
            "one server killed mid-run: failed idempotent requests",
            f"{failed} of {len(kill.wave.downloads) + failed}",
            failed,
            "",
            TARGETS["failed"],
            "; ".join(kill.events),
        ),
        Row(
            "one server killed mid-run: survivors' goodput",
            report.mb_per_s(kill.goodput(survivors), 1.0),
            report.ratio(kill.goodput(survivors), one),
            TIMES,
            TARGETS["survivors"],
            "after the kill, s1-s3; by server: "
            + report.spread({k: round(v / 1e6) for k, v in after_kill.items()})
            + " MB",
        ),
        row(
            "haproxy",
            "HAProxy `mode tcp` in front of s1-s4",
            note=f"{_spread(results['haproxy'])}; every byte crosses the proxy host's uplink",
        ),
        Row(
            "bytes through the referral, of bytes served",
            f"{used.referral / 1e3:.0f} kB of {used.served / 1e6:.0f} MB",
            share,
            PERCENT,
            TARGETS["referral"],
            "referral host's interface (both ways) against the server hosts' (sent), "
            "over the phases that use the referral; with no client at all it moves "
            f"{results['fresh'].idle / 1e3:.1f} kB/s (health checks, heartbeats of 4 servers)",
        ),
    ]


def _spread(m: bed.Measured) -> str:
    return "clients first served by " + report.spread(m.spread())


def _num(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def details(results: dict[str, bed.Measured]) -> None:
    for key, m in results.items():
        per = report.spread(
            {k: round(v / 1e6) for k, v in m.wave.per_server(m.start, m.end).items()}
        )
        print(
            f"{key}: {m.goodput() / 1e6:.2f} MB/s over {m.seconds:g}s; MB by server: {per}; "
            f"CPU busy: clients {m.client_cpu():.2f}, servers "
            f"{', '.join(f'{k} {v:.2f}' for k, v in sorted(m.server_cpu.items()))}; "
            f"load average {m.loadavg:.1f}"
        )
        steps = [
            m.wave.bytes_between(t, t + 1.0) / 1e6
            for t in (m.wave.started + i for i in range(int(m.end - m.wave.started)))
        ]
        print("  MB per second from the start: " + " ".join(f"{x:.0f}" for x in steps))
        for at, client, problem in m.wave.failures[:10]:
            print(f"  failure at {at - m.wave.started:.1f}s, client {client}: {problem}")


def block(rows: list[Row], rounds: list[dict[str, bed.Measured]], args: argparse.Namespace) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    title = args.title or "test bed run"
    missed = report.unmet(rows)
    lines = [
        f"#### {title}: {now}, commit {commit or 'unknown'}",
        "",
        f"{args.rounds} round(s) of every phase; {args.clients} clients over {args.procs} "
        f"processes; uplinks capped at {args.rate:g} Mbit/s; goodput over "
        f"{args.seconds:g} s after {args.warmup:g} s of warm-up per phase"
        + (f", the bed at nice -{args.priority}." if args.priority else "."),
        "The machine's load average (1 min) at the end of each phase: "
        + "; ".join(
            ", ".join(f"{k} {m.loadavg:.1f}" for k, m in results.items()) for results in rounds
        )
        + ".",
        "",
        report.markdown(rows),
        "",
        "Targets not met: " + ", ".join(missed) + "." if missed else "Every target is met.",
    ]
    return "\n".join(lines)


def _teller(prefix: str) -> Callable[[str], None]:
    def say(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {prefix}{text}", flush=True)

    return say


def _out_of_time(signum: int, frame: object) -> None:
    raise OutOfTime if signum == signal.SIGALRM else KeyboardInterrupt


def _raise_on(*signals: signal.Signals) -> None:
    for sig in signals:
        signal.signal(sig, _out_of_time)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.testbed", description=__doc__)
    p.add_argument("--clients", type=int, default=16, help="concurrent clients per wave")
    p.add_argument("--procs", type=int, default=4, help="processes the clients are spread over")
    p.add_argument("--rate", type=float, default=50.0, help="uplink cap of each host, Mbit/s")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before a phase's window")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of a phase's window")
    p.add_argument(
        "--priority",
        type=int,
        default=0,
        help="run the bed this much less nice than other work (a shared machine)",
    )
    p.add_argument("--rounds", type=int, default=1, help="repeat every phase; medians shown")
    p.add_argument(
        "--budget", type=float, default=0.0, help="the run stops after this (default 600 s a round)"
    )
    p.add_argument("--write", metavar="FILE", help="put the table in FILE (bench/RESULTS.md)")
    p.add_argument("--key", default="run", help="the markers the table goes between in FILE")
    p.add_argument("--title", default="", help="the heading of the table in FILE")
    p.add_argument("--plot", metavar="PNG", help="draw goodput over time, by server")
    p.add_argument("--keep", action="store_true", help="keep the run's files and logs")
    p.add_argument("--cleanup", action="store_true", help=f"remove {net.PREFIX}-* leftovers")
    return p


if __name__ == "__main__":
    sys.exit(main())
