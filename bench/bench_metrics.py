"""What the metrics cost the request path: µs per recorded event, one worker and several.

Run: ``python bench/bench_metrics.py [--number 200000]``. Prints µs per call
(best of five) of what the referral records per assign answer
(``ReferralMetrics.referred``: a counter, a re-referral counter, a histogram)
and what an app server records per answer (``ServerMetrics.answered``), next
to the plain dict increment the referral used before (the baseline, same run).
Updates are counted in plain values of the process and folded into
prometheus-client's before a scrape and, with several workers
(prometheus-client's multiprocess mode, measured in a child process, where a
fold writes memory-mapped files), once a second; the "fold every 1,000" rows
charge a fold of 1,000 answers (10,000 servers' worth of label sets) to those
answers, a fold far more often than the once a second of a loaded worker.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def measure(number: int) -> dict[str, float]:
    from affinity.web.exposition import multiprocess_dir
    from affinity.web.metrics import ReferralMetrics, ServerMetrics

    referral = ReferralMetrics(list, dict, multiprocess_dir())
    server = ServerMetrics(dict)
    counts: dict[tuple[str, ...], int] = {}

    def baseline() -> None:
        key = ("web", "s1", "round_robin", "referred")
        counts[key] = counts.get(key, 0) + 1

    servers = [f"s{n}" for n in range(10_000)]
    answers = 0

    def referred_and_folded() -> None:
        nonlocal answers
        answers += 1
        server = servers[answers % 10_000]
        referral.referred("web", server, "round_robin", "referred", "new_client", 0.0002)
        if answers % 1000 == 0:
            referral.fold()

    def answered_and_folded() -> None:
        nonlocal answers
        answers += 1
        server.answered("/items/<id>", "GET", 200, 0.001)
        if answers % 1000 == 0:
            server.fold()

    ops = {
        "dict increment (baseline)": baseline,
        "referral: one assign answer": lambda: referral.referred(
            "web", "s1", "round_robin", "referred", "new_client", 0.0002
        ),
        "referral, fold every 1,000": referred_and_folded,
        "app server: one answer": lambda: server.answered("/items/<id>", "GET", 200, 0.001),
        "app server, fold every 1,000": answered_and_folded,
    }
    return {
        name: min(timeit.repeat(op, number=number, repeat=5)) / number * 1e6
        for name, op in ops.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        for name, micros in measure(args.number).items():
            print(f"{name}\t{micros:.2f}")
        return
    print(f"{'':34} {'one worker':>12} {'several':>12}")
    single = measure(args.number)
    with tempfile.TemporaryDirectory() as directory:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--number", str(args.number)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    several = dict(line.split("\t") for line in out.splitlines())
    for name, micros in single.items():
        print(f"{name:34} {micros:>10.2f}µs {float(several[name]):>10.2f}µs")


if __name__ == "__main__":
    main()
