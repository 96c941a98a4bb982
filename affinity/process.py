"""Child ``affinity`` processes: started with their output in a log file, waited on until they
answer, stopped with a grace period. ``affinity dev`` and :mod:`affinity.testing` both use it.

Every child leads a process group of its own, so that stopping it also stops
what it started (the worker processes of a multi-worker Sanic), and on Linux it
is told by the kernel to stop (SIGTERM, ``PR_SET_PDEATHSIG``) when its parent
dies, even by SIGKILL: no child outlives the process that started it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import httpx

from affinity.errors import ChildFailed

TAIL_LINES = 20
"""How many of its last log lines a :class:`ChildFailed` quotes."""

_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """Run in the child before exec: SIGTERM when ``parent`` dies (Linux; a no-op elsewhere).

    If the parent died between the fork and this call, the signal would never
    come, so the child checks and stops itself.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


class ChildProcess:
    """One ``python -m affinity <args>`` process, its output (stdout and stderr) in ``log``.

    ``own_session`` starts it in a session of its own, so a Ctrl-C in the
    terminal reaches only the parent, which then stops its children in order;
    otherwise it still leads a process group of its own.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        log: Path,
        own_session: bool = False,
    ) -> None:
        self.name = name
        self.log = log
        parent = os.getpid()
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "affinity", *args],
                env=dict(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=own_session,
                process_group=None if own_session else 0,
                preexec_fn=lambda: _die_with(parent),  # no threads run in the parents we have
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once it has exited (and been reaped), else None."""
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` unless the process has exited."""
        if self.alive():
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL it and every process left in its group (its workers), and reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def wait(self, timeout: float) -> int:
        """Its exit code; ``subprocess.TimeoutExpired`` if it runs past ``timeout`` seconds."""
        return self.popen.wait(timeout=timeout)

    def output(self) -> str:
        """Everything it has written so far."""
        return self.log.read_text(errors="replace")

    def failed(self, what: str) -> ChildFailed:
        """An error saying ``what`` happened to it, with the end of its log."""
        tail = "".join(self.output().splitlines(keepends=True)[-TAIL_LINES:])
        return ChildFailed(f"{self.name} {what}; the end of {self.log}:\n{tail}")


def stop(children: Iterable[ChildProcess], grace: float) -> None:
    """SIGTERM each (a drain), wait up to ``grace`` seconds in all, then SIGKILL the rest.

    ``grace <= 0`` kills at once. A Ctrl-C while waiting cuts the grace short.
    Every child is reaped before this returns: none is left behind.
    """
    children = list(children)
    if grace > 0:
        for child in children:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        try:
            for child in children:
                child.wait(max(0.1, deadline - time.monotonic()))
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            pass
    for child in children:
        child.signal(signal.SIGKILL)
    for child in children:
        child.kill()


def wait_answering(
    url: str,
    child: ChildProcess,
    *,
    verify: ssl.SSLContext | bool,
    timeout: float,
    also: Iterable[ChildProcess] = (),
    interval: float = 0.05,
) -> None:
    """Until ``url``, served by ``child``, answers with a status below 500.

    Raises :class:`ChildFailed` as soon as ``child`` or one of ``also`` exits, as soon
    as ``url`` answers 500 (an error in the server, which waiting does not mend; a 503
    is a server not ready yet), or when ``timeout`` seconds pass.
    """
    watched = [child, *also]
    deadline = time.monotonic() + timeout
    with httpx.Client(verify=verify, timeout=1.0) as client:
        while True:
            for one in watched:
                if not one.alive():
                    raise one.failed(f"exited with code {one.returncode} before {url} answered")
            try:
                status = client.get(url).status_code
            except httpx.HTTPError:
                status = None
            if status == 500:
                raise child.failed(f"is running, but {url} answered 500")
            if status is not None and status < 500:
                return
            if time.monotonic() > deadline:
                raise child.failed(f"is running, but {url} did not answer within {timeout:g}s")
            time.sleep(interval)
