"""Imported at start-up by every Python process of a mutation run (``PYTHONPATH``).

While mutmut records which tests call which functions (``MUTANT_UNDER_TEST=stats``),
a process started by a test (a referral, an app server) appends the name of
each mutated function it runs to the file ``MUTATION_HITS``; the pytest plugin
in ``mutation_hits.py`` hands them to mutmut at the end of the test. Outside
that phase this does nothing.
"""

from __future__ import annotations

import os


def _follow() -> None:
    path = os.environ.get("MUTATION_HITS")
    if not path or os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return
    try:
        from mutmut.mutation import trampoline
    except ImportError:
        return

    def record(name: str, caller: str | None = None) -> None:
        # Every call, not the first only: a process that outlives a test (a module-scoped
        # fixture) must report again what it runs during the next test.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, name.encode() + b"\n")
        finally:
            os.close(fd)

    setattr(trampoline, "record_trampoline_hit", record)  # noqa: B010 (not exported)


_follow()
