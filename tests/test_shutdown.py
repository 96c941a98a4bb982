"""A stop signal at any moment of a start-up: the real command exits 0 and leaves nothing running.

A referral with two workers gets SIGTERM (or SIGINT) right after its start-up
line (before its workers start), once one worker has said it is ready, once
both have, and once it has answered a request; an app server right after its
start-up line and once it has answered. Each moment is awaited in the
process's log or by a request; then the process must exit with code 0 within
a generous bound, and nothing may be left in its process group (workers,
Sanic's state manager, multiprocessing's resource tracker).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from affinity.process import ChildProcess
from affinity.protocol import HEALTH_PATH
from affinity.testing import Deployment, wait_until

EXIT_WITHIN = 60.0
"""Seconds a stop may take: far above the few it needs on a loaded machine."""
START_WITHIN = 60.0


def group(pgid: int) -> list[str]:
    """The processes in process group ``pgid``, each as ``pid command``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # it has just exited
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # state, ppid, pgrp
            found.append(f"{entry.name} {command}")
    return found


def assert_stops_cleanly(proc: ChildProcess, sig: signal.Signals) -> None:
    """Send ``sig``; the process exits 0, and then its process group empties."""
    assert proc.alive(), proc.output()
    proc.signal(sig)
    try:
        code = proc.wait(EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {EXIT_WITHIN:g}s after {sig.name}:\n{proc.output()}")
    assert code == 0, proc.output()
    # What it started exits with it: Sanic's state manager and multiprocessing's
    # resource tracker see their pipe close, a moment after.
    left: list[str] = []

    def empty() -> bool:
        left[:] = group(proc.pid)
        return not left

    try:
        wait_until(empty, 10, 0.05, what="an empty process group")
    except TimeoutError:
        pytest.fail(f"left running after exit: {left}\n{proc.output()}")


def referral_up_to(d: Deployment, moment: str) -> ChildProcess:
    """A two-worker referral, once ``moment`` has happened."""
    referral = d.start_referral(wait=False)
    out = referral.output
    if moment == "start-up line":
        # Logged once the main process has bound, before it starts the workers (mostly
        # still starting when the signal comes; not asserted, a loaded machine may differ).
        wait_until(lambda: "referral serving" in out(), START_WITHIN, what="the start-up line")
    elif moment == "first worker ready":
        wait_until(lambda: "Worker ready" in out(), START_WITHIN, what="a worker ready")
    elif moment == "every worker ready":
        wait_until(lambda: out().count("Worker ready") == 2, START_WITHIN, what="both workers")
    else:
        d.wait_http(f"{d.referral_url}/healthz", referral, timeout=START_WITHIN)
    return referral


MOMENTS = ["start-up line", "first worker ready", "every worker ready", "first answer"]


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_two_worker_referral_stops_on_sigterm(tmp_path: Path, moment: str) -> None:
    with Deployment(tmp_path, referral="workers = 2") as d:
        referral = referral_up_to(d, moment)
        assert_stops_cleanly(referral, signal.SIGTERM)
        out = referral.output()
        assert "Traceback" not in out, out
        assert out.count("Worker complete") == out.count("Starting worker"), out


@pytest.mark.parametrize("moment", ["start-up line", "first answer"])
def test_a_two_worker_referral_stops_on_sigint(tmp_path: Path, moment: str) -> None:
    with Deployment(tmp_path, referral="workers = 2") as d:
        referral = referral_up_to(d, moment)
        assert_stops_cleanly(referral, signal.SIGINT)
        assert "Traceback" not in referral.output(), referral.output()


@pytest.mark.parametrize("moment", ["start-up line", "first answer"])
def test_an_app_server_stops_on_sigterm(tmp_path: Path, moment: str) -> None:
    with Deployment(tmp_path) as d:
        d.start_referral()
        server = d.start_server("s1", wait=False)
        if moment == "start-up line":
            wait_until(
                lambda: "app server s1 serving" in server.output(),
                START_WITHIN,
                what="the start-up line",
            )
        else:
            d.wait_http(d.server_urls["s1"] + HEALTH_PATH, server, timeout=START_WITHIN)
        assert_stops_cleanly(server, signal.SIGTERM)
        out = server.output()
        assert "Traceback" not in out, out
        assert "drained s1; stopping" in out, out  # the drain ran: the signal was not lost


def test_the_process_group_check_sees_a_process_left_behind(tmp_path: Path) -> None:
    """The control: a process left in the group is seen, so an empty group means something."""
    with Deployment(tmp_path) as d:
        referral = d.start_referral()
        assert [line.split()[0] for line in group(referral.pid)] == [str(referral.pid)]
        assert str(os.getpid()) not in " ".join(group(referral.pid))
