"""Mutation testing of the critical modules with mutmut 3; run through ``scripts/mutation``.

Each target is a module (or a plugin's decision code) and the tests that
exercise it. A target runs in its own copy of the tree, ``build/mutation/<target>``,
whose ``pyproject.toml`` gets a ``[tool.mutmut]`` table for that target only:
mutmut mutates the target's files, records which of the target's tests call
each function, and runs only those tests against each mutant. Results are
kept there, so a second run re-tests only the functions that changed.

Code that runs in the referral and app-server processes the tests start
(``processes=True``) is followed there too: ``mutation_hits/`` is put on
``PYTHONPATH`` so that those processes report the functions they run to the
test that started them (see ``mutation_hits/sitecustomize.py``).

Usage: scripts/mutation [--list] [--jobs N] [--mutant NAME] [--survivors] [TARGET...]
(no target: all)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "mutation"
HITS = Path(__file__).resolve().parent / "mutation_hits"
# A mutant's run is stopped (and counted as caught, "timeout") after
# (its tests' time in the first run + CONSTANT) * MULTIPLIER seconds. mutmut's
# defaults (1 s, x15) wait minutes for a mutant that hangs a test; the test times
# include the set-up (mutation_hits.py), so a smaller factor is enough. The constant
# covers a referral starting slowly on a busy machine: with 10 s, equivalent mutants
# of the redirect route "timed out" under a load of 18 on 2 cores.
TIMEOUT_MULTIPLIER = 4.0
TIMEOUT_CONSTANT = 30.0


@dataclass(frozen=True)
class Target:
    mutate: tuple[str, ...]
    """Files to mutate, relative to the copy (plugin packages are moved to its top)."""
    tests: tuple[str, ...]
    """The tests that exercise them."""
    plugin: str | None = None
    """``plugins/<plugin>``: its package is moved to the top of the copy, to be imported first."""
    processes: bool = False
    """The code runs in processes the tests start (a referral, an app server)."""


TARGETS: dict[str, Target] = {
    "jws": Target(("affinity/tokens/jws.py",), ("tests/test_tokens.py", "tests/test_jwks.py")),
    "keyring": Target(
        ("affinity/tokens/keyring.py",), ("tests/test_tokens.py", "tests/test_jwks.py")
    ),
    "guard": Target(
        ("affinity/server/guard.py", "affinity/server/tokens.py"),
        (
            "tests/server/test_app_server.py",
            "tests/server/test_jwks_live.py",
            "tests/server/test_bye.py",
            "tests/server/test_server_metrics.py",
            "tests/server/test_websocket.py",
        ),
        processes=True,
    ),
    "assign": Target(
        ("affinity/referral/assign.py",),
        (
            "tests/referral/test_assign.py",
            "tests/referral/test_redirect_safety.py",
            "tests/referral/test_malformed.py",
        ),
        processes=True,
    ),
    "policies": Target(("affinity/builtin/policies.py",), ("tests/builtin/test_policies.py",)),
    "health_active": Target(
        ("affinity/builtin/health_active.py",), ("tests/builtin/test_health_active.py",)
    ),
    "rules": Target(
        ("affinity/client/rules.py",),
        ("tests/client/test_rules.py", "tests/client/test_client_mock.py"),
    ),
    "backoff": Target(
        ("affinity/backoff.py", "affinity/client/backoff.py"),
        (
            "tests/test_backoff.py",
            "tests/client/test_backoff.py",
            "tests/client/test_rules.py",
            "tests/client/test_client_mock.py",
        ),
    ),
    "ipfilter": Target(
        (
            "affinity_ipfilter/rules.py",
            "affinity_ipfilter/networks.py",
            "affinity_ipfilter/filter.py",
        ),
        ("plugins/affinity-ipfilter/tests",),
        plugin="affinity-ipfilter",
    ),
    "ratelimit": Target(
        (
            "affinity_ratelimit/gcra.py",
            "affinity_ratelimit/options.py",
            "affinity_ratelimit/limiter.py",
        ),
        ("plugins/affinity-ratelimit/tests",),
        plugin="affinity-ratelimit",
    ),
}


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(name: str, target: Target) -> Path:
    """The target's copy of the tree (files git tracks or would track), with its mutmut table."""
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    files = [f.decode() for f in listed if f and (ROOT / f.decode()).is_file()]
    archive = work / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        for f in files:
            tar.add(ROOT / f, arcname=f)
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")  # modification times kept: mutmut compares them
    archive.unlink()
    if target.plugin is not None:
        package = target.mutate[0].split("/")[0]
        top = work / package
        if top.exists():
            shutil.rmtree(top)
        shutil.copytree(work / "plugins" / target.plugin / package, top, copy_function=shutil.copy2)
        source = [package]
        also_copy = [f"plugins/{target.plugin}/tests", f"plugins/{target.plugin}/README.md"]
    else:
        source, also_copy = ["affinity"], []
    table = f"""
[tool.mutmut]
source_paths = {_toml_list(source)}
only_mutate = {_toml_list(list(target.mutate))}
also_copy = {_toml_list(also_copy)}
pytest_add_cli_args_test_selection = {_toml_list(list(target.tests))}
pytest_add_cli_args = ["-p", "mutation_hits"]
timeout_multiplier = {TIMEOUT_MULTIPLIER}
timeout_constant = {TIMEOUT_CONSTANT}
"""
    pyproject = work / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + table)
    return work


def left_alive(work: Path) -> list[str]:
    """The mutants the last run of this target left alive (survived, no tests, suspicious)."""
    listed = work / "survivors.txt"
    if not listed.exists():
        return []
    found = []
    for line in listed.read_text().splitlines():
        mutant, _, status = line.strip().rpartition(": ")
        if mutant and status in ("survived", "no tests", "suspicious"):
            found.append(mutant)
    return found


def run(name: str, target: Target, jobs: int, mutants: list[str], again: bool) -> dict[str, int]:
    work = prepare(name, target)
    if again:
        mutants = [*mutants, *left_alive(work)]
        if not mutants:
            print(f"{name}: no survivors to test again")
    kills = work / "mutation-kills.txt"  # the test that caught each mutant, this run
    kills.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HITS), os.environ.get("PYTHONPATH")])),
        "MUTATION_HITS": str(work / "mutation-hits.txt"),
        **({"MUTATION_ORDER": "1"} if target.processes else {}),
        "MUTATION_KILLS": str(kills),
        # The property tests run 1000 examples each by default: most of a run's time for
        # a mutant they do not catch. 100 still find what a mutant breaks.
        "AFFINITY_HYPOTHESIS_EXAMPLES": os.environ.get("AFFINITY_HYPOTHESIS_EXAMPLES", "100"),
    }
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    started = time.monotonic()
    if mutants or not again:
        command = [mutmut, "run", "--max-children", str(jobs), *mutants]
        done = subprocess.run(command, cwd=work, env=env)
        if done.returncode != 0:
            raise SystemExit(f"{name}: mutmut run exited with {done.returncode}")
    subprocess.run([mutmut, "export-cicd-stats"], cwd=work, env=env, check=True)
    stats: dict[str, int] = json.loads((work / "mutants" / "mutmut-cicd-stats.json").read_text())
    survivors = subprocess.run(
        [mutmut, "results"], cwd=work, env=env, capture_output=True, text=True, check=True
    ).stdout
    (work / "survivors.txt").write_text(survivors)
    stats["seconds"] = round(time.monotonic() - started)
    return stats


def score(stats: dict[str, int]) -> float:
    """Killed (or timed out) over every mutant that was run or should have been."""
    caught = stats["killed"] + stats["timeout"]
    counted = caught + stats["survived"] + stats["no_tests"] + stats["suspicious"]
    return caught / counted if counted else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/mutation", description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="*", metavar="TARGET", help="default: all")
    parser.add_argument("--list", action="store_true", help="list the targets and their tests")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument(
        "--mutant",
        action="append",
        default=[],
        metavar="NAME",
        help="test only this mutant again (a name from survivors.txt, '*' allowed); repeatable",
    )
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="test again only the mutants the last run left alive (after adding tests)",
    )
    args = parser.parse_args()
    if args.list:
        for name, target in TARGETS.items():
            print(f"{name:14} {' '.join(target.mutate)}\n{'':14} tests: {' '.join(target.tests)}")
        return 0
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; see --list")
    results = {}
    for name in args.targets or list(TARGETS):
        results[name] = run(name, TARGETS[name], args.jobs, args.mutant, args.survivors)
    print()
    print(
        f"{'target':14} {'score':>6} {'killed':>7} {'survived':>9} {'no tests':>9} {'timeout':>8}"
    )
    for name, stats in results.items():
        print(
            f"{name:14} {score(stats):9.1%} {stats['killed']:9} {stats['survived']:9} "
            f"{stats['no_tests']:9} {stats['timeout']:9}   ({stats['seconds']} s)"
        )
    print("\nsurvivors: build/mutation/<target>/survivors.txt; a diff: cd there, mutmut show NAME")
    return 0


if __name__ == "__main__":
    sys.exit(main())
