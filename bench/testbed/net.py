"""The test bed's network: one namespace per host on 198.18.0.0/24, joined by a bridge.

Every name made here starts with :data:`PREFIX` (namespaces, the bridge and the
host side of each veth), so :func:`remove_leftovers` finds what an interrupted
run left behind by that prefix alone. A host's uplink (its ``eth0``, seen from
inside its namespace) may carry a ``tc tbf`` cap, which shapes what the host
sends: the bytes an app server serves.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

PREFIX = "afftb"
"""Every namespace and interface of the bed starts with ``afftb-``."""
BRIDGE = f"{PREFIX}-br"
NETWORK = "198.18.0"
"""198.18.0.0/15 is set aside for benchmarks (RFC 2544): it never means a real host."""
UPLINK = "eth0"
COMMAND_TIMEOUT = 10.0
BURST = "256kb"

_CLONE_NEWNET = 0x40000000


@dataclass(frozen=True, slots=True)
class Host:
    """One machine of the bed: a namespace with one uplink to the bridge."""

    name: str
    octet: int
    rate_mbit: float = 0.0
    """The cap on what it sends; 0 = none."""

    @property
    def netns(self) -> str:
        return f"{PREFIX}-{self.name}"

    @property
    def address(self) -> str:
        return f"{NETWORK}.{self.octet}"

    @property
    def outside(self) -> str:
        """The host side of its veth, on the bridge (at most 15 characters)."""
        return f"{PREFIX}-{self.name}"


def ip(*args: str) -> str:
    """Run ``ip args...``; its output, or a RuntimeError quoting what it said."""
    return _run(["ip", *args])


def _run(args: Sequence[str]) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def make_bridge() -> None:
    ip("link", "add", BRIDGE, "type", "bridge")
    ip("link", "set", BRIDGE, "up")


def add_host(host: Host) -> None:
    """The namespace, its veth (``eth0`` inside, on the bridge outside), address and cap."""
    inner = f"{host.outside}p"  # renamed to eth0 once inside
    ip("netns", "add", host.netns)
    ip("link", "add", host.outside, "type", "veth", "peer", "name", inner)
    ip("link", "set", inner, "netns", host.netns)
    ip("link", "set", host.outside, "master", BRIDGE, "up")
    ns = ("-n", host.netns)
    ip(*ns, "link", "set", inner, "name", UPLINK)
    ip(*ns, "addr", "add", f"{host.address}/24", "dev", UPLINK)
    ip(*ns, "link", "set", UPLINK, "up")
    ip(*ns, "link", "set", "lo", "up")
    if host.rate_mbit:
        # The burst (40 ms at 50 Mbit/s) passes TSO segments whole and keeps the rate when the
        # qdisc's timer runs late on a busy machine; 50 ms of queue, then drops.
        rate = f"{host.rate_mbit:g}mbit"
        tbf = ["tbf", "rate", rate, "burst", BURST, "latency", "50ms"]
        _run(["tc", "-n", host.netns, "qdisc", "add", "dev", UPLINK, "root", *tbf])


def counters(host: Host) -> tuple[int, int]:
    """Bytes received and sent so far by the host's uplink, read inside its namespace."""
    shown = json.loads(ip("-n", host.netns, "-s", "-j", "link", "show", "dev", UPLINK))
    stats = shown[0]["stats64"]
    return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])


@contextlib.contextmanager
def inside(host: Host) -> Iterator[None]:
    """The calling thread in ``host``'s network namespace for the block, then back.

    What this thread starts in the block (a child process, a socket) lives in
    that namespace. Only the main thread may move: a child's death signal
    (``PR_SET_PDEATHSIG``, see :mod:`affinity.process`) follows the thread
    that started it, so children must come from the thread that lives longest.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("only the main thread changes namespace")
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{host.netns}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def leftovers() -> tuple[list[str], list[str]]:
    """The namespaces and root-namespace links whose names start with the prefix."""
    spaces = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    links = [
        line.split(":")[1].strip().split("@")[0]
        for line in ip("-o", "link", "show").splitlines()
        if ":" in line
    ]
    mine = f"{PREFIX}-"
    return [s for s in spaces if s.startswith(mine)], [n for n in links if n.startswith(mine)]


def remove_leftovers() -> list[str]:
    """Kill what runs in the bed's namespaces, delete them and the bridge; what was removed."""
    spaces, _ = leftovers()
    removed: list[str] = []
    for ns in spaces:
        for pid in ip("netns", "pids", ns).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        ip("netns", "del", ns)
        removed.append(f"namespace {ns}")
    _, links = leftovers()  # a namespace takes its veth pair with it
    for link in links:
        with contextlib.suppress(RuntimeError):
            ip("link", "del", link)
            removed.append(f"link {link}")
    return removed
