"""Pick cost of the built-in policies at 100, 1,000, 10,000 and 100,000 servers.

Run: ``python bench/bench_policies.py`` (``--quick`` for a short, rougher run).

All sizes are measured in the same run, interleaved round by round, and the
best round is kept, so the ratios compare like with like on one machine even
when other work shares it. The pools have mixed weights (1-4) and random
reported load, so the weighted code paths are the ones timed; a second table
times equal weights. The target is a 100k/100 ratio of at most 1.5 for
``round_robin``, ``random`` and ``load_weighted``; ``consistent`` scans the
pool (O(n)) by design.

Two reference rows show the floor no policy can go under: returning the next
server of the pool, and returning a server at a random index. The second grows
with the pool too, because 100,000 ``Server`` objects do not fit in the CPU
caches: touching a random one costs a memory (and TLB) miss that 100 servers
never pay. The last table is the one-off cost of the first pick after the pool
object changes (the per-pool rebuild, O(n)).
"""

from __future__ import annotations

import argparse
import random
import time

from affinity.builtin.policies import (
    ConsistentPolicy,
    LoadWeightedPolicy,
    RandomPolicy,
    RoundRobinPolicy,
)
from affinity.models import AssignRequest, Load, Pool, Server
from affinity.plugin.policy import Policy

PolicyClass = type[RoundRobinPolicy | RandomPolicy | LoadWeightedPolicy | ConsistentPolicy]
POLICIES: dict[str, PolicyClass] = {
    cls.name: cls for cls in (RoundRobinPolicy, RandomPolicy, LoadWeightedPolicy, ConsistentPolicy)
}
SIZES = (100, 1_000, 10_000, 100_000)
TARGET = {"round_robin": 1.5, "random": 1.5, "load_weighted": 1.5}


class NextServer(Policy):
    """Reference: the next server of the pool, no weights, no avoid."""

    name = "floor: next server"

    def __init__(self) -> None:
        super().__init__()
        self._i = 0

    def choose(self, pool: Pool, request: AssignRequest) -> Server | None:
        self._i = (self._i + 1) % len(pool.assignable)
        return pool.assignable[self._i]


class RandomIndex(Policy):
    """Reference: the server at a uniformly random index, no weights, no avoid."""

    name = "floor: random index"

    def __init__(self) -> None:
        super().__init__()
        self._random = random.Random(7).random

    def choose(self, pool: Pool, request: AssignRequest) -> Server | None:
        return pool.assignable[int(self._random() * len(pool.assignable))]


def make_pool(size: int, mixed: bool, rng: random.Random) -> Pool:
    servers = {}
    for i in range(size):
        sid = f"s{i:06d}"
        servers[sid] = Server(
            id=sid,
            service="web",
            url=f"https://{sid}.example.com",
            weight=1 + i % 4 if mixed else 1,
            load=Load(clients=rng.randint(0, 80), capacity=100),
            load_version=1,
        )
    return Pool.build("web", servers, version=1)


def make_policies() -> dict[str, Policy]:
    made: dict[str, Policy] = {
        name: cls({}, rng=random.Random(7)) for name, cls in POLICIES.items()
    }
    made[NextServer.name] = NextServer()
    made[RandomIndex.name] = RandomIndex()
    return made


def per_pick(policy: Policy, pool: Pool, requests: list[AssignRequest], budget: float) -> float:
    """CPU seconds per pick: doubling batches of picks until ``budget`` CPU seconds have passed.

    CPU time of this process, not wall time, so that other processes on the
    machine do not count (they still pollute the caches: keep the best round).
    """
    choose, picked, batch = policy.choose, 0, 1
    start = time.process_time()
    while True:
        chunk = requests[:batch]
        for req in chunk:
            choose(pool, req)
        picked += len(chunk)
        elapsed = time.process_time() - start
        if elapsed >= budget:
            return elapsed / picked
        batch *= 2


def pick_costs(mixed: bool, rounds: int, budget: float) -> dict[str, list[float]]:
    """Best seconds per pick, by policy name, one value per size in ``SIZES``."""
    rng = random.Random(2024)
    pools = [make_pool(size, mixed, rng) for size in SIZES]
    requests = [AssignRequest(service="web", client_id=f"client-{i}") for i in range(4096)]
    policies = [make_policies() for _ in SIZES]
    best: dict[str, list[float]] = {name: [float("inf")] * len(SIZES) for name in policies[0]}
    for _ in range(rounds):
        for k, pool in enumerate(pools):
            for name, policy in policies[k].items():
                policy.choose(pool, requests[0])  # the per-pool structure is built
                cost = per_pick(policy, pool, requests, budget)
                best[name][k] = min(best[name][k], cost)
    return best


def rebuild_costs(rounds: int) -> dict[str, list[float]]:
    """Best seconds for the first pick of a new policy object on a pool, by name and size."""
    rng = random.Random(2024)
    pools = [make_pool(size, True, rng) for size in SIZES]
    req = AssignRequest(service="web", client_id="client")
    best = {name: [float("inf")] * len(SIZES) for name in POLICIES}
    for _ in range(max(1, rounds // 3)):
        for k, pool in enumerate(pools):
            for name, cls in POLICIES.items():
                policy = cls({})
                start = time.process_time()
                policy.choose(pool, req)
                best[name][k] = min(best[name][k], time.process_time() - start)
    return best


def table(title: str, rows: dict[str, list[float]], unit: str, scale: float, ratio: bool) -> str:
    head = "| policy | " + " | ".join(f"{s:,}" for s in SIZES) + " |"
    sep = "|---|" + "---:|" * len(SIZES)
    if ratio:
        head += " 100k/100 | target |"
        sep += "---:|---|"
    lines = [f"{title} ({unit})", "", head, sep]
    for name, values in rows.items():
        line = f"| {name} | " + " | ".join(f"{v * scale:,.2f}" for v in values) + " |"
        if ratio:
            r, target = values[-1] / values[0], TARGET.get(name)
            if name.startswith("floor"):
                verdict = "reference"
            elif target is None:
                verdict = "O(n) by design"
            else:
                verdict = f"<= {target}: " + ("ok" if r <= target else "MISSED")
            line += f" {r:.2f} | {verdict} |"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter batches")
    args = parser.parse_args()
    rounds, budget = (2, 0.05) if args.quick else (15, 0.08)
    mixed = pick_costs(mixed=True, rounds=rounds, budget=budget)
    print(table("Pick cost, weights 1-4", mixed, "µs per pick", 1e6, ratio=True), end="\n\n")
    equal = pick_costs(mixed=False, rounds=rounds, budget=budget)
    print(table("Pick cost, equal weights", equal, "µs per pick", 1e6, ratio=True), end="\n\n")
    rebuilds = rebuild_costs(rounds)
    print(table("First pick on a new pool, weights 1-4", rebuilds, "ms", 1e3, ratio=False))


if __name__ == "__main__":
    main()
