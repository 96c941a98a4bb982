"""The hosts, the processes and the phases of the scale-out test bed.

Hosts (one network namespace each, on 198.18.0.0/24): a client host with no
cap, a referral host, a proxy host for HAProxy and five app-server hosts, each
of the last seven capped (``tc tbf``) at the same rate. A real ``affinity
referral`` and real ``affinity serve`` processes, started through
:mod:`affinity.process` from inside their host's namespace, with TLS from the
project's own development CA. The driver itself stays on the client host.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from affinity.process import ChildProcess, stop, wait_answering
from affinity.protocol import HEALTH_PATH
from affinity.tokens.keyring import generate_admin_token, generate_keyfile
from affinity.web.auth import registration_token
from affinity.web.certs import ensure_dev_certs
from affinity.web.tls import client_context

from . import load, net

APP = Path(__file__).with_name("app.py")
ROOT = APP.parent.parent.parent
REFERRAL_PORT = 8400
SERVER_PORT = 8443
SERVICE = "web"
READY_TIMEOUT = 60.0
IDLE = 5.0
"""Seconds the referral's traffic is counted with no client, once a round."""
CLIENT = net.Host("client", 10)
CONFIG = """\
[referral]
listen = "{referral}:{referral_port}"
tls_cert = "certs/cert.pem"
tls_key = "certs/key.pem"
state_file = "state.json"
admin_token_file = "admin-token"
registration_secret_file = "registration-secret"
default_service = "{service}"

[tokens]
keys_file = "keys.json"
ttl = 600

[health]
interval = 1.0
timeout = 0.5
ca_file = "certs/ca.pem"

[services.{service}]
policy = "load_weighted"

[server]
service = "{service}"
tls_cert = "certs/cert.pem"
tls_key = "certs/key.pem"
referral_url = "https://{referral}:{referral_port}"
referral_ca = "certs/ca.pem"
admin_token_file = "server-admin-token"
heartbeat_interval = 2.0
drain_grace = 0.5
drain_timeout = 2.0
"""
HAPROXY = """\
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 2s
    timeout client 60s
    timeout server 60s
frontend tls_in
    bind {address}:{port}
    default_backend servers
backend servers
    balance roundrobin
{servers}
"""


def hosts(rate_mbit: float) -> tuple[net.Host, ...]:
    """Every host of the bed; all but the client send at most ``rate_mbit``."""
    capped = [net.Host("referral", 2, rate_mbit), net.Host("proxy", 3, rate_mbit)]
    servers = [net.Host(f"s{i}", 10 + i, rate_mbit) for i in range(1, 6)]
    return (CLIENT, *capped, *servers)


@dataclass
class Bed:
    """The namespaces, the files and every process of one run; :meth:`close` removes them all."""

    directory: Path
    rate_mbit: float
    clients: int
    procs: int
    children: dict[str, ChildProcess] = field(default_factory=dict)
    haproxy: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.hosts = {h.name: h for h in hosts(self.rate_mbit)}
        self.referral_url = f"https://{self.hosts['referral'].address}:{REFERRAL_PORT}"
        self.proxy_url = f"https://{self.hosts['proxy'].address}:{SERVER_PORT}"
        self.logs = self.directory / "logs"

    # -- building and tearing down ------------------------------------------------

    def build(self) -> None:
        """The network, then certificates, keys, tokens and the config file."""
        net.make_bridge()
        for host in self.hosts.values():
            net.add_host(host)
        self.logs.mkdir(parents=True, exist_ok=True)
        addresses = [h.address for h in self.hosts.values()]
        ensure_dev_certs(self.directory / "certs", extra_names=addresses)
        generate_keyfile(self.directory / "keys.json", "HS256", False)
        for name in ("admin-token", "registration-secret", "server-admin-token"):
            generate_admin_token(self.directory / name, what=name.replace("-", " "))
        self.config = self.directory / "affinity.toml"
        self.config.write_text(
            CONFIG.format(
                referral=self.hosts["referral"].address,
                referral_port=REFERRAL_PORT,
                service=SERVICE,
            ),
            encoding="utf-8",
        )
        self.ca = self.directory / "certs" / "ca.pem"
        self.verify = client_context(self.ca)
        self.admin = (self.directory / "admin-token").read_text(encoding="utf-8").strip()
        self.secret = (self.directory / "registration-secret").read_text(encoding="utf-8").strip()
        self.env = {**os.environ, "AFFINITY_DISABLE_PLUGIN_AUTOLOAD": "1"}

    def close(self) -> None:
        """Stop every process and remove every namespace; safe to call more than once."""
        try:
            self.stop_processes()
        finally:
            net.remove_leftovers()

    def stop_processes(self) -> None:
        if self.haproxy is not None:
            _end(self.haproxy)
            self.haproxy = None
        stop(self.children.values(), 2.0)
        self.children.clear()

    # -- processes ----------------------------------------------------------------

    def start_referral(self) -> None:
        """A referral that knows no server yet: its state file from before is removed."""
        (self.directory / "state.json").unlink(missing_ok=True)
        with net.inside(self.hosts["referral"]):
            child = ChildProcess(
                "the referral",
                ["referral", "--config", str(self.config)],
                env=self.env,
                log=self.logs / "referral.log",
            )
        self.children["referral"] = child
        wait_answering(
            f"{self.referral_url}/healthz", child, verify=self.verify, timeout=READY_TIMEOUT
        )

    def spawn_server(self, sid: str) -> ChildProcess:
        """Start app server ``sid`` on its host; it registers itself with the referral."""
        host = self.hosts[sid]
        url = f"https://{host.address}:{SERVER_PORT}"
        env = {
            **self.env,
            "AFFINITY_SERVER_ID": sid,
            "AFFINITY_SERVER_LISTEN": f"{host.address}:{SERVER_PORT}",
            "AFFINITY_SERVER_URL": url,
            "AFFINITY_REGISTRATION_TOKEN": registration_token(self.secret, sid),
        }
        with net.inside(host):
            child = ChildProcess(
                f"server {sid}",
                ["serve", f"{APP}:Blob", "--config", str(self.config)],
                env=env,
                log=self.logs / f"{sid}.log",
            )
        self.children[sid] = child
        return child

    def start_servers(self, sids: Sequence[str]) -> None:
        """Start ``sids`` and wait until the referral assigns to each of them."""
        started = [self.spawn_server(sid) for sid in sids]
        for sid, child in zip(sids, started, strict=True):
            url = f"https://{self.hosts[sid].address}:{SERVER_PORT}{HEALTH_PATH}"
            wait_answering(url, child, verify=self.verify, timeout=READY_TIMEOUT)
        self.wait_assignable(set(sids))

    def kill(self, sid: str) -> None:
        """``kill -9`` app server ``sid`` (and its process group)."""
        self.children.pop(sid).kill()

    def servers(self) -> list[dict[str, Any]]:
        """The referral's view of the servers (``GET /v1/servers``)."""
        with httpx.Client(verify=self.verify, timeout=2.0) as http:
            answer = http.get(
                f"{self.referral_url}/v1/servers",
                headers={"Authorization": f"Bearer {self.admin}"},
            )
            answer.raise_for_status()
            servers: list[dict[str, Any]] = answer.json()["servers"]
            return servers

    def wait_assignable(self, sids: set[str]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            ready = {s["id"] for s in self.servers() if s["assignable"]}
            if sids <= ready:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the referral did not take {sorted(sids - ready)} in time")
            time.sleep(0.2)

    def reported_clients(self) -> dict[str, object]:
        """What each server last reported as its client count, as the referral sees it."""
        return {
            s["id"]: s["load"].get("clients", s["load"]["active_clients"]) for s in self.servers()
        }

    def start_haproxy(self, sids: Sequence[str]) -> None:
        proxy = self.hosts["proxy"]
        lines = [f"    server {s} {self.hosts[s].address}:{SERVER_PORT}" for s in sids]
        config = self.directory / "haproxy.cfg"
        config.write_text(
            HAPROXY.format(address=proxy.address, port=SERVER_PORT, servers="\n".join(lines)),
            encoding="utf-8",
        )
        with net.inside(proxy), (self.logs / "haproxy.log").open("ab") as out:
            self.haproxy = subprocess.Popen(
                ["haproxy", "-db", "-f", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        with httpx.Client(verify=self.verify, timeout=1.0) as http:
            while True:
                if self.haproxy.poll() is not None:
                    raise RuntimeError(f"haproxy exited; see {self.logs / 'haproxy.log'}")
                try:
                    if http.get(self.proxy_url + HEALTH_PATH).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("haproxy did not answer in time")
                time.sleep(0.1)

    def stop_haproxy(self) -> None:
        if self.haproxy is not None:
            _end(self.haproxy)
            self.haproxy = None

    # -- clients and counters -----------------------------------------------------

    async def wave(
        self, mode: str, duration: float, go: Callable[[float], None] | None = None
    ) -> load.Wave:
        """The bed's clients, through the referral (``affinity``) or HAProxy (``proxy``),
        spread over ``self.procs`` processes on the client host, for ``duration`` seconds.

        The clock starts once every process has started and says it is ready (a
        busy machine takes seconds to start Python); ``go`` is told when.
        """
        url = self.referral_url if mode == "affinity" else self.proxy_url
        workers = []
        try:
            with (self.logs / "clients.log").open("ab") as log:
                for first, count in shares(self.clients, self.procs):
                    spec = {"mode": mode, "url": url, "service": SERVICE, "clients": count}
                    spec |= {"ca": str(self.ca), "first": first}
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "bench.testbed.worker",
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=log,
                        cwd=ROOT,
                    )
                    workers.append(proc)
                    assert proc.stdin is not None and proc.stdout is not None
                    proc.stdin.write(json.dumps(spec).encode() + b"\n")
            for proc in workers:
                assert proc.stdout is not None
                line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
                if line != b"ready\n":
                    raise RuntimeError(f"a client process failed; see {self.logs / 'clients.log'}")
            started = time.monotonic()
            for proc in workers:
                assert proc.stdin is not None
                proc.stdin.write(f"{started + duration!r}\n".encode())
                proc.stdin.close()
            if go is not None:
                go(started)
            outputs = await asyncio.wait_for(
                asyncio.gather(*(_output(p) for p in workers)), timeout=duration + 2 * load.OVERRUN
            )
        finally:
            for proc in workers:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        wave = load.Wave(started=started)
        for proc, out in zip(workers, outputs, strict=True):
            if proc.returncode != 0:
                raise RuntimeError(f"a client process failed; see {self.logs / 'clients.log'}")
            wave.merge(load.Wave.from_json(json.loads(out)))
        wave.started = started
        return wave

    def cpu(self) -> dict[str, float]:
        """CPU seconds each app server has spent so far (user + system)."""
        out = {}
        for name, child in self.children.items():
            if name != "referral" and child.alive():
                out[name] = cpu_seconds(child.pid)
        return out

    def idle_referral(self, seconds: float) -> float:
        """Bytes per second through the referral host over ``seconds`` without a client:
        its health checks, the servers' heartbeats and registrations."""
        before = self.snapshot().referral
        time.sleep(seconds)
        return (self.snapshot().referral - before) / seconds

    def snapshot(self) -> Counters:
        """The referral host's bytes (both ways) and the bytes the server hosts sent."""
        rx, tx = net.counters(self.hosts["referral"])
        served = sum(net.counters(h)[1] for h in self.hosts.values() if h.name.startswith("s"))
        return Counters(referral=rx + tx, served=served)


async def _output(proc: asyncio.subprocess.Process) -> bytes:
    assert proc.stdout is not None
    out = await proc.stdout.read()
    await proc.wait()
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/<pid>/stat``); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def shares(clients: int, procs: int) -> list[tuple[int, int]]:
    """``clients`` split as evenly as can be over at most ``procs`` processes: (first, count)."""
    procs = max(1, min(procs, clients))
    base, extra = divmod(clients, procs)
    out, first = [], 0
    for i in range(procs):
        count = base + (i < extra)
        out.append((first, count))
        first += count
    return out


@dataclass(frozen=True, slots=True)
class Counters:
    referral: int
    served: int

    def __sub__(self, other: Counters) -> Counters:
        return Counters(self.referral - other.referral, self.served - other.served)

    def __add__(self, other: Counters) -> Counters:
        return Counters(self.referral + other.referral, self.served + other.served)


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True, slots=True)
class Measured:
    """A wave and the window its goodput is taken over."""

    wave: load.Wave
    start: float
    end: float
    counters: Counters | None = None
    before: dict[str, object] = field(default_factory=dict)
    """What the servers reported just before the wave, where it matters."""
    events: tuple[str, ...] = ()
    idle: float = 0.0
    """Bytes per second through the referral host with the servers up and no client."""
    server_cpu: dict[str, float] = field(default_factory=dict)
    """The share of a CPU each app server kept busy during the wave."""
    loadavg: float = field(default_factory=lambda: os.getloadavg()[0])
    """The machine's one-minute load average when the wave ended."""

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def goodput(self, servers: set[str] | None = None) -> float:
        """Bytes per second delivered in the window (by ``servers`` only)."""
        return self.wave.bytes_between(self.start, self.end, servers) / self.seconds

    def client_cpu(self) -> float:
        """The CPUs the client processes kept busy, on average over the wave."""
        return self.wave.cpu / max(1e-9, self.wave.ended - self.wave.started)

    def spread(self) -> Counter[str]:
        return self.wave.first_servers()


def measure(
    bed: Bed,
    mode: str,
    warmup: float,
    seconds: float,
    *,
    count: bool = True,
) -> Measured:
    """A wave over ``warmup + seconds``; goodput over the last ``seconds``."""
    before = bed.snapshot() if count else None
    cpu = bed.cpu()
    wave = asyncio.run(bed.wave(mode, warmup + seconds))
    used = bed.snapshot() - before if before is not None else None
    busy = _busy(cpu, bed.cpu(), time.monotonic() - wave.started)
    start = wave.started + warmup
    return Measured(wave, start, start + seconds, used, server_cpu=busy)


def _busy(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    return {k: (after[k] - before[k]) / seconds for k in before.keys() & after.keys()}


def measure_with_kill(bed: Bed, victim: str, added: str, warmup: float, seconds: float) -> Measured:
    """A wave in which ``victim`` is killed after ``warmup`` and ``added`` is started; goodput
    over the ``seconds`` after the kill."""
    events: list[str] = []

    async def run() -> load.Wave:
        go: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        wave_task = asyncio.create_task(bed.wave("affinity", warmup + seconds, go.set_result))
        either: list[asyncio.Future[Any]] = [go, wave_task]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not go.done():
            return await wave_task  # it failed before it started: its error
        started = go.result()
        await asyncio.sleep(warmup)
        bed.kill(victim)
        killed = time.monotonic()
        events.append(f"{victim} killed at {killed - started:.1f}s")
        bed.spawn_server(added)
        for _ in range(int(READY_TIMEOUT * 5)):
            ready = await asyncio.to_thread(_assignable, bed, added)
            if ready:
                events.append(f"{added} assignable {time.monotonic() - killed:.1f}s later")
                break
            await asyncio.sleep(0.2)
        return await wave_task

    before = bed.snapshot()
    cpu = bed.cpu()
    wave = asyncio.run(run())
    used = bed.snapshot() - before
    busy = _busy(cpu, bed.cpu(), time.monotonic() - wave.started)
    start = wave.started + warmup
    return Measured(wave, start, start + seconds, used, events=tuple(events), server_cpu=busy)


def _assignable(bed: Bed, sid: str) -> bool:
    try:
        return any(s["id"] == sid and s["assignable"] for s in bed.servers())
    except httpx.HTTPError:
        return False


def phases(
    bed: Bed, warmup: float, seconds: float, say: Callable[[str], None]
) -> Iterator[tuple[str, Measured]]:
    """Every phase, in order, each yielded as it ends."""
    say("referral and s1")
    bed.start_referral()
    bed.start_servers(["s1"])
    say(f"1 server: {bed.clients} clients for {warmup:g}+{seconds:g}s")
    yield "one", measure(bed, "affinity", warmup, seconds)
    say("adding s2, s3, s4 after the clients of s1 ended")
    bed.start_servers(["s2", "s3", "s4"])
    before = bed.reported_clients()
    say(f"4 servers after departures (reported clients: {before})")
    after = measure(bed, "affinity", warmup, seconds)
    yield "departures", dataclasses.replace(after, before=before)
    bed.stop_processes()

    say("a fresh referral and s1-s4")
    bed.start_referral()
    bed.start_servers(["s1", "s2", "s3", "s4"])
    idle = bed.idle_referral(IDLE)
    say("4 servers, fresh")
    yield "fresh", dataclasses.replace(measure(bed, "affinity", warmup, seconds), idle=idle)
    say("HAProxy (mode tcp) in front of s1-s4")
    bed.start_haproxy(["s1", "s2", "s3", "s4"])
    yield "haproxy", measure(bed, "proxy", warmup, seconds, count=False)
    bed.stop_haproxy()
    say("4 servers, s4 killed (kill -9) mid-run, s5 added")
    yield "kill", measure_with_kill(bed, "s4", "s5", warmup, seconds)
    bed.stop_processes()
