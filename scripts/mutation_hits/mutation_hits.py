"""A pytest plugin for mutation runs: functions run by child processes count for the test.

mutmut runs a mutant against the tests that called the mutated function, as it
saw in the pytest process. The referral and app servers the tests start are
other processes: ``sitecustomize.py`` makes them write what they ran to
``MUTATION_HITS``, and this moves it into mutmut's record before mutmut files
the test's calls (``tryfirst``). A process that keeps running across tests
(a module-scoped fixture) counts for the test during which it ran the function.

mutmut hands pytest a mutant's tests in no particular order (a set), and pytest runs
them in the order given: a module's tests interleaved with another's start its
module-scoped servers again at each switch. They are put back together, module by
module, the quickest module and within it the quickest test first (by the times of the
first run): a mutant is mostly caught by a quick test, and pytest stops at the first
failure.

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


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    from mutmut.state import state

    took = state().duration_by_test
    cost: dict[str, float] = {}
    for item in items:
        cost[item.location[0]] = cost.get(item.location[0], 0.0) + took.get(item.nodeid, 0.0)
    items.sort(
        key=lambda item: (cost[item.location[0]], item.location[0], took.get(item.nodeid, 0.0))
    )
