"""A pytest plugin for mutation runs: functions run by child processes count for the test.

mutmut runs a mutant against the tests that called the mutated function, as it
saw in the pytest process. The referral and app servers the tests start are
other processes: ``sitecustomize.py`` makes them write what they ran to
``MUTATION_HITS``, and this moves it into mutmut's record before mutmut files
the test's calls (``tryfirst``). A process that keeps running across tests
(a module-scoped fixture) counts for the test during which it ran the function.
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
