"""A pytest plugin for mutation runs: functions run by child processes count for the test.

mutmut runs a mutant against the tests that called the mutated function, as it
saw in the pytest process. The referral and app servers the tests start are
other processes: ``sitecustomize.py`` makes them write what they ran to
``MUTATION_HITS``, and this moves it into mutmut's record before mutmut files
the test's calls (``tryfirst``). A process that keeps running across tests
(a module-scoped fixture) counts for the test during which it ran the function.

mutmut hands pytest a mutant's tests in no particular order (a set), and pytest runs
them in the order given. Where the tests start processes (``MUTATION_ORDER`` is set),
that order costs: a module's tests interleaved with another's start its module-scoped
servers again at each switch, and a mutant the first cheap test would catch waits for
the slow ones. There the tests are put in units, those of a module that share a
module-scoped fixture together and every other test alone. pytest stops at the first
failure, so the unit most likely to catch a mutant soon runs first: the one with the
lowest cost (the times of the first run) per mutant it has caught so far in this run
(``MUTATION_KILLS`` lists the test that caught each), and within it the test likewise.
Where the tests start nothing, mutmut's order is kept: it was the quicker of the two
there.

mutmut times each test by its call alone, and bounds the time of a mutant's run by
those times. Here setting up is most of it (a referral and app servers start), so
the set-up and tear-down times are added to the test's: otherwise a slow start on a
loaded machine is taken for a mutant that hangs, and counted as caught.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    path = os.environ.get("MUTATION_HITS")
    if not path or os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return
    hits = Path(path)
    try:
        names = hits.read_text().split()
    except FileNotFoundError:
        return
    hits.write_text("")
    from mutmut.state import state

    state()._stats.update(set(names))


@pytest.hookimpl(trylast=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    if call.when == "call" or os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return
    from mutmut.state import state

    durations = state().duration_by_test
    durations[item.nodeid] = durations.get(item.nodeid, 0.0) + call.duration


def _unit(item: pytest.Item) -> str:
    """The tests of a module that share a module-scoped fixture are one unit; others, alone."""
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else ()
    if any(d and d[-1].scope == "module" for d in defs):
        return item.location[0]
    return item.nodeid


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get("MUTATION_KILLS")
    if path and report.failed and "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", ""):
        with open(path, "a") as kills:  # one short line: appends of two children do not mix
            kills.write(report.nodeid + "\n")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not os.environ.get("MUTATION_ORDER"):
        return
    from mutmut.state import state

    took = state().duration_by_test
    kills: dict[str, int] = {}
    try:
        for nodeid in Path(os.environ.get("MUTATION_KILLS", "")).read_text().split():
            kills[nodeid] = kills.get(nodeid, 0) + 1
    except OSError:
        pass
    units = {item.nodeid: _unit(item) for item in items}
    cost: dict[str, float] = {}
    caught: dict[str, int] = {}
    for item in items:
        unit = units[item.nodeid]
        cost[unit] = cost.get(unit, 0.0) + took.get(item.nodeid, 0.0)
        caught[unit] = caught.get(unit, 0) + kills.get(item.nodeid, 0)

    def order(item: pytest.Item) -> tuple[float, str, float]:
        unit = units[item.nodeid]
        mine = took.get(item.nodeid, 0.0) / (1 + kills.get(item.nodeid, 0))
        return cost[unit] / (1 + caught[unit]), unit, mine

    items.sort(key=order)
