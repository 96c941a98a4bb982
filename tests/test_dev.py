"""``affinity dev``: starts, serves an assignment and a request, stops with no process left."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from affinity.testing import free_port
from affinity.web.tls import client_context

ROOT = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def dev_ports() -> int:
    """A referral port whose server ports (port + 41 ... + 43) are free too."""
    for _ in range(50):
        port = free_port()
        if port + 43 > 65535:
            continue
        try:
            for offset in (41, 42, 43):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + offset))
        except OSError:
            continue
        return port
    raise RuntimeError("no free block of ports")


def default_sigint() -> None:
    """Run in the child before exec: SIGINT back to its default action.

    A shell without job control starts background jobs with SIGINT ignored, and
    Python turns SIGINT into KeyboardInterrupt only when it did not inherit it
    ignored. Without this, the Ctrl-C below would do nothing whenever the suite
    itself runs as such a job.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kill_children(banner: str) -> None:
    """Kill the processes ``affinity dev`` listed (``pid N``) that are still running.

    They run in sessions of their own, so killing ``affinity dev`` when a test
    fails leaves them up.
    """
    for pid in (int(p) for p in re.findall(r"pid (\d+)", banner)):
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def start_dev(
    command: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """``command`` (an ``affinity dev``) started on free ports and past its banner: the
    process and what it printed."""
    proc = subprocess.Popen(
        [*command, "--port", str(dev_ports())],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=default_sigint,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            break
    return proc, "".join(lines)


@contextlib.contextmanager
def running_dev(
    tmp_path: Path,
    command: list[str] | None = None,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[subprocess.Popen[str], str, list[int]]]:
    """``affinity dev`` (this checkout's, unless ``command`` says another) with its four
    children; whatever happens, nothing is left running."""
    if command is None:
        command = [sys.executable, "-m", "affinity", "dev", "--dir", str(tmp_path / "dev")]
    proc, out = start_dev(command, cwd, env)
    try:
        assert proc.poll() is None, out
        pids = [int(p) for p in re.findall(r"pid (\d+)", out)]
        assert len(pids) == 4, out
        yield proc, out, pids
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        kill_children(out)


def assign_and_call(out: str, cwd: Path) -> tuple[str, Path, httpx.Response]:
    """Follow the banner's ``curl .../v1/assign`` line, then call the assigned server
    directly with the token: the referral's URL, the CA file and the server's answer."""
    curl = re.search(r"curl --cacert (\S+) (https://\S+)/v1/assign", out)
    assert curl is not None, out
    ca = cwd / curl.group(1)
    with httpx.Client(verify=client_context(ca), timeout=5) as client:
        assigned = client.get(curl.group(2) + "/v1/assign").json()
        answer = client.get(
            assigned["server"]["url"] + "/", headers={"Affinity-Token": assigned["token"]}
        )
    assert answer.status_code == 200
    assert answer.json()["server"] == assigned["server"]["id"]
    assert answer.headers["affinity-server"] == assigned["server"]["id"]
    return curl.group(2), ca, answer


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs, up to ``timeout`` seconds; those still running.

    They are not our children, so each is watched through a pidfd, which becomes
    readable when the process exits: the wait ends on the event, not on a poll.
    """
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            watch = select.poll()
            watch.register(fd, select.POLLIN)
            watch.poll(max(0.0, deadline - time.monotonic()) * 1000)
        finally:
            os.close(fd)
    return [pid for pid in pids if alive(pid)]


def test_dev_runs_the_whole_thing_and_cleans_up(tmp_path: Path) -> None:
    with running_dev(tmp_path) as (proc, out, pids):
        assign_and_call(out, ROOT)
        # The printed client command works as printed, in a shell whose PATH lacks the venv.
        request = re.search(r"^  (.* request --referral .*)$", out, re.MULTILINE)
        assert request is not None, out
        printed = subprocess.run(
            request.group(1),
            shell=True,
            cwd=ROOT,
            env={**os.environ, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout.startswith("200 OK"), printed.stdout
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        assert "no process left" in rest
        assert not [pid for pid in pids if alive(pid)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_dev_like_ctrl_c(tmp_path: Path, sig: signal.Signals) -> None:
    with running_dev(tmp_path) as (proc, _, pids):
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        assert "stopping: draining the servers" in rest and "no process left" in rest
        assert not [pid for pid in pids if alive(pid)]


def test_the_children_die_with_dev_even_on_sigkill(tmp_path: Path) -> None:
    with running_dev(tmp_path) as (proc, _, pids):
        proc.kill()
        proc.wait()
        # The kernel sends each child SIGTERM as its parent dies; they drain and exit.
        assert wait_gone(pids, timeout=60) == []
