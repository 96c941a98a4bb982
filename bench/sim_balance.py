"""Churn simulation: how evenly the policies spread work when clients come and go.

Run: ``python bench/sim_balance.py`` (``--quick`` for a shorter, smaller run;
``--plots`` also writes the PNGs of bench/RESULTS.md to bench/img/, which needs
the ``bench`` dependency group: ``pip install --group bench``).

A discrete-event simulation in simulated seconds: no sockets, no sleeping, the
same figures on every run of one seed. What it runs is the project's own code:
the built-in policy classes pick the servers (one policy object per referral
worker, as in production), fed ``Pool``/``Server``/``Load`` objects built from
what each simulated app server's client counter of ``affinity.server.activity``
reports. Only the clients, the clock and the health checks are simulated.

Workload (``Workload``, all seeded):

* sessions arrive as a Poisson process; their lengths are Pareto-distributed
  (shape 1.5: a finite mean, an infinite variance, many short sessions and a
  few very long ones);
* within a session, requests are a Poisson process too, at a rate of the
  session's own (the mean gap between requests is lognormal across sessions:
  most clients ask every few seconds, a few only every minute or so);
* a share of the sessions ends silently (a browser that goes away); the others
  say bye;
* a burst of departures: most sessions on one server end at once, and a wave
  of as many new clients arrives over the next half minute (the test bed's
  "after a wave of departures" phase: one class leaves, the next comes in);
* a server dies (its clients come back to the referral at their next request,
  avoiding it; the referral's health checks drop it a little later), and
  later a new server is added.

The work of a server is the number of live sessions it holds; each server can
do ``capacity`` units of it, sized so that the pool runs at ``utilisation`` of
its capacity on average. Measured per policy, old signal against new:

* max/mean: the most loaded server's work over the mean of the live servers;
* idle: capacity left idle while work waits elsewhere, as a share of all
  capacity: ``(min(total work, total capacity) - sum(min(work, capacity))) /
  total capacity``, the part of the pool's throughput lost to imbalance alone;
* recovery: seconds from the burst until the server that lost its clients is
  back to 90 % of the mean;
* moved: clients that had to change server (those of the dead server).

The old signal is the distinct client ids seen in a 300 s window, with no
bye (``DecayingClients`` with an infinite half-life counts exactly that); the
new one the decayed count with bye, at the configured default half-life
(``server.load_half_life``). A second table runs ``load_weighted`` with a
range of half-lives on three workloads (busy: about 26 sessions per server;
sparse: about 3; slow: clients asking every half minute or so), averaged over
several seeds: the figures the default half-life was chosen by.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from affinity.builtin.policies import (
    ConsistentPolicy,
    LoadWeightedPolicy,
    RandomPolicy,
    RoundRobinPolicy,
)
from affinity.config import ServerSettings
from affinity.models import AssignRequest, Load, Pool, Server
from affinity.server.activity import DecayingClients

SERVICE = "web"
READS_LOAD = ("load_weighted", "consistent")
"""The policies that read the load signal; the others pick alike with either signal."""
PolicyClass = type[LoadWeightedPolicy | ConsistentPolicy | RandomPolicy | RoundRobinPolicy]
POLICIES: dict[str, PolicyClass] = {
    cls.name: cls for cls in (LoadWeightedPolicy, ConsistentPolicy, RandomPolicy, RoundRobinPolicy)
}
HALF_LIVES: Sequence[float] = (5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0)
"""Half-lives (seconds) the sweep tries for the new signal."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """The simulated clients and events; times in simulated seconds."""

    seed: int = 11
    servers: int = 4
    arrival_rate: float = 2.0
    """New sessions per second (Poisson)."""
    session_mean: float = 60.0
    session_shape: float = 1.5
    """Pareto shape of session lengths (the scale follows from the mean)."""
    gap_median: float = 5.0
    gap_sigma: float = 1.0
    """Per session, the mean gap between requests is lognormal(median, sigma)."""
    silent_share: float = 0.5
    """Sessions that end without a bye."""
    warmup: float = 600.0
    """Figures are taken from here on: twice the old signal's window, so it is full."""
    burst_at: float = 900.0
    burst_share: float = 0.8
    """Share of the sessions of ``s1`` that end at ``burst_at``."""
    burst_span: float = 120.0
    """The burst's figures are taken over this many seconds after it."""
    wave_spread: float = 30.0
    """A wave of as many new sessions as ``s1`` held x ``burst_share`` (on average) arrives
    over this many seconds after the burst, on top of the Poisson arrivals."""
    die_at: float = 1500.0
    add_at: float = 2100.0
    end: float = 2700.0
    report_interval: float = 1.0
    """Load reports reach the referral this often (the active health check's interval)."""
    detect_delay: float = 2.0
    """A dead server leaves the referral's pool this long after it dies (fall 2 x 1 s)."""
    rise_delay: float = 2.0
    """An added server enters the pool this long after it starts (rise 2 x 1 s)."""
    workers: int = 4
    """Policy objects (referral workers x replicas); each assignment goes to one at random."""
    utilisation: float = 0.9
    window: float = 300.0
    """The old signal's window (``server.active_window``)."""

    @property
    def phases(self) -> dict[str, tuple[float, float]]:
        """The spans figures are summed over, by name."""
        return {
            "steady": (self.warmup, self.burst_at),
            "burst": (self.burst_at, min(self.burst_at + self.burst_span, self.die_at)),
            "death": (self.die_at, self.add_at),
            "added": (self.add_at, self.end),
            "all": (self.warmup, self.end),
        }


FULL = Workload()
SPARSE = replace(FULL, arrival_rate=0.25, gap_median=15.0)
"""Few clients per server (about three), each asking seldom: the decayed count is noisiest."""
QUICK = replace(FULL, warmup=300.0, burst_at=400.0, die_at=700.0, add_at=900.0, end=1100.0)
SLOW = replace(FULL, gap_median=30.0)
"""Clients that ask seldom (every half minute or so): a short half-life under-counts them."""
SCENARIOS = {"busy": (FULL, 3), "sparse": (SPARSE, 12), "slow": (SLOW, 3)}
"""The half-life sweep's workloads, each with the seeds it is run with (sparse runs are cheap
and noisy: more of them)."""


@dataclass(frozen=True, slots=True)
class Signal:
    """A load signal: the old window count (``half_life`` inf, no bye) or the decayed count."""

    half_life: float
    bye: bool

    @property
    def label(self) -> str:
        return "old" if math.isinf(self.half_life) else f"new h={self.half_life:g}s"


OLD = Signal(math.inf, bye=False)


def new_signal(half_life: float) -> Signal:
    return Signal(half_life, bye=True)


@dataclass(slots=True)
class Session:
    """One client's session: when it starts and ends, and when it sends requests."""

    id: str
    start: float
    end: float
    requests: tuple[float, ...]
    silent: bool
    leaves_in_burst: bool
    server: str = ""
    ended: bool = False


def make_sessions(w: Workload) -> list[Session]:
    """The workload's sessions, in arrival order, the same for every policy and signal."""
    rng = random.Random(w.seed)
    starts, t = [], rng.expovariate(w.arrival_rate)
    while t < w.end:
        starts.append(t)
        t += rng.expovariate(w.arrival_rate)
    wave = round(w.burst_share * w.arrival_rate * w.session_mean / w.servers)
    starts += [w.burst_at + w.wave_spread * rng.random() for _ in range(wave)]
    starts.sort()
    scale = w.session_mean * (w.session_shape - 1) / w.session_shape
    sessions = []
    for n, start in enumerate(starts):
        end = start + scale * rng.paretovariate(w.session_shape)
        gap = w.gap_median * math.exp(rng.gauss(0.0, w.gap_sigma))
        requests, r = [], start
        while r < min(end, w.end):
            requests.append(r)
            r += rng.expovariate(1.0 / gap)
        silent = rng.random() < w.silent_share
        burst = rng.random() < w.burst_share
        sessions.append(Session(f"c{n}", start, end, tuple(requests), silent, burst))
    return sessions


class Clock:
    """The simulated time, as the counters read it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_load(figure: float) -> Load:
    """The ``Load`` the referral reads from a server with this decayed client count: the
    health answer carries it to three decimals (``Load.figures``); no capacity is stated."""
    return Load(clients=round(figure, 3))


@dataclass(slots=True)
class Trace:
    """What one run measured, sampled once a simulated second."""

    times: list[float] = field(default_factory=list)
    work: dict[str, list[float]] = field(default_factory=dict)
    """Live sessions per server (nan while a server is not up)."""
    reported: dict[str, list[float]] = field(default_factory=dict)
    moved: int = 0
    refused: int = 0


# Event kinds, in the order they run when they fall on the same time.
_DIE, _DROP, _ADD, _JOIN, _BURST, _END, _REQUEST, _REPORT, _SAMPLE = range(9)


class Simulation:
    """One run: a workload, a policy, a signal."""

    def __init__(
        self, w: Workload, policy: str, signal: Signal, sessions: Sequence[Session]
    ) -> None:
        self.w, self.signal = w, signal
        self.clock = Clock()
        cls = POLICIES[policy]
        self.policies = [cls({}, rng=random.Random(w.seed * 1000 + k)) for k in range(w.workers)]
        self.pick = random.Random(w.seed + 1)
        self.sessions = [replace(s) for s in sessions]
        self.up: dict[str, DecayingClients] = {}
        """Servers that run, with their counters."""
        self.listed: dict[str, int] = {}
        """Servers in the referral's view, with their load versions."""
        self.live: dict[str, set[str]] = {}
        self.by_id = {s.id: s for s in self.sessions}
        self.pool = Pool.build(SERVICE, {})
        self.trace = Trace()
        self._events: list[tuple[float, int, int, str]] = []
        self._seq = 0

    def _at(self, t: float, kind: int, ref: str = "") -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, kind, self._seq, ref))

    def _start_server(self, sid: str) -> None:
        self.up[sid] = DecayingClients(self.signal.half_life, self.w.window, clock=self.clock)
        self.live[sid] = set()
        self.trace.work[sid] = [math.nan] * len(self.trace.times)
        self.trace.reported[sid] = [math.nan] * len(self.trace.times)

    def run(self) -> Trace:
        w = self.w
        names = [f"s{i + 1}" for i in range(w.servers)]
        for sid in names:
            self._start_server(sid)
            self.listed[sid] = 0
        self._report()
        for s in self.sessions:
            self._at(s.start, _REQUEST, s.id)
            self._at(s.end, _END, s.id)
        self._at(w.burst_at, _BURST, "s1")
        self._at(w.die_at, _DIE, "s2")
        self._at(w.die_at + w.detect_delay, _DROP, "s2")
        added = f"s{w.servers + 1}"
        self._at(w.add_at, _ADD, added)
        self._at(w.add_at + w.rise_delay, _JOIN, added)
        self._at(w.report_interval, _REPORT)
        self._at(0.0, _SAMPLE)
        later = {s.id: iter(s.requests[1:]) for s in self.sessions}  # the first is at the start
        while self._events:
            t, kind, _, ref = heapq.heappop(self._events)
            if t >= w.end:
                break
            self.clock.now = t
            if kind == _REQUEST:
                session = self.by_id[ref]
                if not session.ended:
                    self._request(session)
                    nxt = next(later[ref], None)
                    if nxt is not None:
                        self._at(nxt, _REQUEST, ref)
            elif kind == _END:
                self._end(self.by_id[ref])
            elif kind == _REPORT:
                self._report()
                self._at(t + w.report_interval, _REPORT)
            elif kind == _SAMPLE:
                self._sample(t)
                self._at(t + 1.0, _SAMPLE)
            elif kind == _BURST:
                for cid in list(self.live[ref]):
                    if self.by_id[cid].leaves_in_burst:
                        self._end(self.by_id[cid])
            elif kind == _DIE:
                del self.up[ref]
            elif kind == _DROP:
                del self.listed[ref]
                self._report()
            elif kind == _ADD:
                self._start_server(ref)
            elif kind == _JOIN:
                self.listed[ref] = 0
                self._report()
        return self.trace

    def _request(self, session: Session) -> None:
        sid = session.server
        if sid not in self.up:  # a new session, or its server died: ask the referral
            avoid = set()
            if sid:
                self.live[sid].discard(session.id)
                avoid.add(sid)
            while True:
                req = AssignRequest(
                    service=SERVICE,
                    client_id=session.id,
                    avoid=frozenset(avoid),
                    previous=sid or None,
                )
                server = self.pick.choice(self.policies).choose(self.pool, req)
                if server is None:
                    self.trace.refused += 1
                    session.ended = True
                    return
                if server.id in self.up:
                    break
                avoid.add(server.id)  # dead but still listed: it fails, the client asks again
            self.trace.moved += bool(sid)
            sid = session.server = server.id
            self.live[sid].add(session.id)
        self.up[sid].touch(session.id)

    def _end(self, session: Session) -> None:
        if session.ended:
            return
        session.ended = True
        sid = session.server
        if sid:
            self.live[sid].discard(session.id)
            if not session.silent and self.signal.bye and sid in self.up:
                self.up[sid].bye(session.id)

    def _report(self) -> None:
        """Every listed server that is up reports its load; a dead one keeps its last report."""
        servers = {}
        for sid in self.listed:
            if sid in self.up:
                self.listed[sid] += 1
                load = make_load(self.up[sid].weight())
            else:
                load = self.pool.servers[sid].load
            servers[sid] = Server(
                id=sid,
                service=SERVICE,
                url=f"https://{sid}.example.com",
                load=load,
                load_version=self.listed[sid],
            )
        self.pool = Pool.build(SERVICE, servers, version=self.pool.version + 1)

    def _sample(self, t: float) -> None:
        trace = self.trace
        trace.times.append(t)
        for sid, column in trace.work.items():
            up = sid in self.up
            column.append(float(len(self.live[sid])) if up else math.nan)
            trace.reported[sid].append(self.up[sid].weight() if up else math.nan)


# -- figures ------------------------------------------------------------------------------


def _up_values(trace: Trace, i: int) -> list[float]:
    return [col[i] for col in trace.work.values() if not math.isnan(col[i])]


def max_over_mean(trace: Trace) -> list[float]:
    """Per sample, the most loaded live server's work over the mean."""
    out = []
    for i in range(len(trace.times)):
        values = _up_values(trace, i)
        mean = statistics.fmean(values) if values else 0.0
        out.append(max(values) / mean if mean > 0 else 1.0)
    return out


def idle_share(trace: Trace, capacity: float) -> list[float]:
    """Per sample, the share of the capacity of the live servers left idle by imbalance."""
    out = []
    for i in range(len(trace.times)):
        values = _up_values(trace, i)
        total = capacity * len(values)
        served = sum(min(v, capacity) for v in values)
        out.append((min(sum(values), total) - served) / total if total else 0.0)
    return out


def recovery(trace: Trace, w: Workload, server: str = "s1", share: float = 0.9) -> float:
    """Seconds from the burst until ``server`` holds ``share`` of the mean work again."""
    work = trace.work[server]
    for i, t in enumerate(trace.times):
        if t >= w.burst_at and i < len(work):
            values = _up_values(trace, i)
            if work[i] >= share * statistics.fmean(values):
                return t - w.burst_at
    return math.inf


def span_mean(trace: Trace, values: Sequence[float], span: tuple[float, float]) -> float:
    picked = [v for t, v in zip(trace.times, values, strict=True) if span[0] <= t < span[1]]
    return statistics.fmean(picked) if picked else math.nan


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures of one run."""

    policy: str
    signal: Signal
    max_mean: dict[str, float]
    idle: dict[str, float]
    recovery: float
    moved: int
    refused: int


def capacity(w: Workload, trace: Trace) -> float:
    """Work one server can do: the mean work per server before the burst, at ``utilisation``.

    Measured rather than computed from the workload's means: heavy-tailed session
    lengths make the live count of a finite run lower than ``rate x mean length``.
    """
    steady = w.phases["steady"]
    times = enumerate(trace.times)
    totals = [sum(_up_values(trace, i)) for i, t in times if steady[0] <= t < steady[1]]
    return statistics.fmean(totals) / w.servers / w.utilisation


def summarise(w: Workload, policy: str, signal: Signal, trace: Trace) -> Summary:
    spread, idle = max_over_mean(trace), idle_share(trace, capacity(w, trace))
    return Summary(
        policy=policy,
        signal=signal,
        max_mean={name: span_mean(trace, spread, span) for name, span in w.phases.items()},
        idle={name: span_mean(trace, idle, span) for name, span in w.phases.items()},
        recovery=recovery(trace, w),
        moved=trace.moved,
        refused=trace.refused,
    )


def simulate(w: Workload, policy: str, signal: Signal, sessions: Sequence[Session]) -> Trace:
    return Simulation(w, policy, signal, sessions).run()


def run(
    w: Workload, policies: Iterable[str], signals: Iterable[Signal]
) -> list[tuple[Summary, Trace]]:
    sessions = make_sessions(w)
    out = []
    for policy in policies:
        for signal in signals:
            trace = simulate(w, policy, signal, sessions)
            out.append((summarise(w, policy, signal, trace), trace))
    return out


def table(summaries: Iterable[Summary]) -> str:
    head = (
        "| policy | signal | max/mean steady | max/mean after burst | idle after burst "
        "| recovery | max/mean after death | max/mean after add | idle overall | moved |"
    )
    lines = [head, "|---|---|" + "---:|" * 8]
    for s in summaries:
        lines.append(
            f"| {s.policy} | {s.signal.label if s.policy in READS_LOAD else 'not read'} "
            f"| {s.max_mean['steady']:.2f} "
            f"| {s.max_mean['burst']:.2f} | {100 * s.idle['burst']:.1f} % | {_secs(s.recovery)} "
            f"| {s.max_mean['death']:.2f} | {s.max_mean['added']:.2f} "
            f"| {100 * s.idle['all']:.1f} % | {s.moved} |"
        )
    return "\n".join(lines)


def _secs(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.0f} s"


@dataclass(frozen=True, slots=True)
class SweepRow:
    """One signal on one scenario, averaged over seeds."""

    scenario: str
    signal: Signal
    max_mean: float
    idle: float
    burst_max_mean: float
    recovery: float
    added_max_mean: float


def sweep(
    scenarios: dict[str, tuple[Workload, int]], signals: Sequence[Signal], policy: str
) -> list[SweepRow]:
    """Each signal on each scenario, run with as many seeds as the scenario says: the means."""
    rows = []
    for name, (base, seeds) in scenarios.items():
        runs: dict[Signal, list[Summary]] = {signal: [] for signal in signals}
        for k in range(seeds):
            w = replace(base, seed=base.seed + k)
            for summary, _ in run(w, [policy], signals):
                runs[summary.signal].append(summary)
        for signal, summaries in runs.items():
            rows.append(
                SweepRow(
                    scenario=name,
                    signal=signal,
                    max_mean=statistics.fmean(s.max_mean["all"] for s in summaries),
                    idle=statistics.fmean(s.idle["all"] for s in summaries),
                    burst_max_mean=statistics.fmean(s.max_mean["burst"] for s in summaries),
                    recovery=statistics.fmean(s.recovery for s in summaries),
                    added_max_mean=statistics.fmean(s.max_mean["added"] for s in summaries),
                )
            )
    return rows


def sweep_table(rows: Iterable[SweepRow]) -> str:
    lines = [
        "| scenario | signal | max/mean overall | idle overall | max/mean after burst "
        "| recovery | max/mean after add |",
        "|---|---|" + "---:|" * 5,
    ]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.signal.label} | {r.max_mean:.3f} | {100 * r.idle:.2f} % "
            f"| {r.burst_max_mean:.3f} | {_secs(r.recovery)} | {r.added_max_mean:.3f} |"
        )
    return "\n".join(lines)


DEFAULT = new_signal(ServerSettings().load_half_life)
"""The new signal with the configured default half-life (``server.load_half_life``)."""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a shorter run, a smaller sweep")
    parser.add_argument("--plots", action="store_true", help="write the PNGs to bench/img/")
    parser.add_argument("--seed", type=int, default=FULL.seed)
    parser.add_argument(
        "--half-life",
        type=float,
        default=DEFAULT.half_life,
        help="the new signal's half-life in the first table (default: server.load_half_life's)",
    )
    args = parser.parse_args(argv)
    if not args.half_life > 0:
        parser.error(f"--half-life must be more than 0 seconds, got {args.half_life!r}")
    w = replace(QUICK if args.quick else FULL, seed=args.seed)
    new = new_signal(args.half_life)
    print(f"Policies, old signal against new (half-life {new.half_life:g} s)\n")
    results = run(w, READS_LOAD, [OLD, new])
    results += run(w, [p for p in POLICIES if p not in READS_LOAD], [OLD])
    print(table(s for s, _ in results), end="\n\n")
    if args.quick:
        half_lives: Sequence[float] = (5.0, 30.0, 120.0)
        scenarios = {
            name: (replace(QUICK, arrival_rate=sc.arrival_rate, gap_median=sc.gap_median), 1)
            for name, (sc, _) in SCENARIOS.items()
        }
    else:
        half_lives, scenarios = HALF_LIVES, SCENARIOS
    seeds = ", ".join(f"{name} {n}" for name, (_, n) in scenarios.items())
    print(f"load_weighted by half-life, means over seeds from {args.seed} ({seeds})\n")
    signals = [OLD, *(new_signal(h) for h in half_lives)]
    scenarios = {name: (replace(sc, seed=args.seed), n) for name, (sc, n) in scenarios.items()}
    rows = sweep(scenarios, signals, "load_weighted")
    print(sweep_table(rows))
    if args.plots:
        from bench import sim_plots

        sim_plots.write(w, results, rows, new.half_life)


if __name__ == "__main__":
    # Run as bench.sim_balance, the module bench/sim_plots.py imports, not as a copy of it.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench import sim_balance

    sim_balance.main()
