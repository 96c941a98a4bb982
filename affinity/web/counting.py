"""Counters and histograms counted in plain values of this process, folded into prometheus-client.

prometheus-client updates a value under a lock on every call and, with
several workers (multiprocess mode), writes it to a memory-mapped file; a
histogram also walks its buckets one by one. On the request path that was
the largest single part of an assign answer (bench/RESULTS.md). Here a
request adds to an entry of a dict (a count, or a bucket count and a sum),
and :meth:`Counts.fold` / :meth:`Observations.fold` add what was counted since
the last fold to the prometheus-client metric. The metrics fold before every
read (a scrape, :meth:`affinity.web.metrics.Metrics.totals`), so a scrape
shows every request this process served before it; with several workers
each worker also folds on a timer (:mod:`affinity.referral.metrics`).

Everything here runs on the event loop's thread, as the request path does.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Hashable
from typing import Any

from prometheus_client import Counter, Histogram

Labels = tuple[Hashable, ...]
"""Label values in the metric's order; prometheus-client turns each into a string."""


class _Children:
    """A metric's labelled children, each looked up once and kept."""

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._children: dict[Labels, Any] = {}

    def child(self, labels: Labels) -> Any:
        found = self._children.get(labels)
        if found is None:
            found = self._children[labels] = self._metric.labels(*labels)
        return found


class Counts(_Children):
    """A labelled counter: ``count(labels)`` adds one, :meth:`fold` hands the sums on."""

    def __init__(self, metric: Counter) -> None:
        super().__init__(metric)
        self.pending: dict[Labels, float] = {}
        self._slices: list[tuple[Labels, dict[Hashable, float]]] = []

    def count(self, labels: Labels, amount: float = 1) -> None:
        pending = self.pending
        pending[labels] = pending.get(labels, 0) + amount

    def inc(self, *labels: Hashable) -> None:
        self.count(labels)

    def slice(self, prefix: Labels) -> dict[Hashable, float]:
        """A dict to count in directly, by the last label's value, under the labels ``prefix``.

        For a caller that knows all labels but the last one in advance (the
        guard knows its route and the method): adding to an entry of this dict
        is a count, with no label tuple made. The dict is kept, emptied by :meth:`fold`.
        """
        counts: dict[Hashable, float] = {}
        self._slices.append((prefix, counts))
        return counts

    def fold(self) -> None:
        pending, self.pending = self.pending, {}
        for labels, amount in pending.items():
            self.child(labels).inc(amount)
        for prefix, counts in self._slices:
            if counts:
                for last, amount in counts.items():
                    self.child((*prefix, last)).inc(amount)
                counts.clear()


class Observations(_Children):
    """A labelled histogram: ``observe(value, labels)`` counts one value in its bucket.

    Per label set one list: a count per bucket (the last one ``+Inf``), then
    the sum. A value goes in the first bucket whose upper bound is at least
    the value, as prometheus-client's ``Histogram.observe`` puts it
    (``tests/test_metrics.py`` holds the two side by side). prometheus-client
    has no call to add many observations at once, so :meth:`fold` adds to the
    child's bucket and sum values (``_buckets``, ``_sum``) directly, which
    that test holds to the library's own path.
    """

    def __init__(self, metric: Histogram, buckets: tuple[float, ...]) -> None:
        super().__init__(metric)
        self.bounds = tuple(float(b) for b in buckets)
        """The buckets' upper bounds (``+Inf`` left out)."""
        self._empty = [0.0] * (len(self.bounds) + 2)
        self.pending: dict[Labels, list[float]] = {}
        self._slices: list[tuple[Labels, list[float]]] = []

    def observe(self, value: float, labels: Labels) -> None:
        cell = self.pending.get(labels)
        if cell is None:
            cell = self.pending[labels] = self._empty.copy()
        cell[bisect_left(self.bounds, value)] += 1
        cell[-1] += value

    def slice(self, labels: Labels) -> list[float]:
        """The list of ``labels`` to count in directly, as :meth:`observe` does: for a caller
        that knows the labels in advance. The list is kept, zeroed by :meth:`fold`."""
        cell = self._empty.copy()
        self._slices.append((labels, cell))
        return cell

    def fold(self) -> None:
        pending, self.pending = self.pending, {}
        for labels, cell in pending.items():
            self._add(labels, cell)
        for labels, cell in self._slices:
            if cell != self._empty:
                self._add(labels, cell)
                cell[:] = self._empty

    def _add(self, labels: Labels, cell: list[float]) -> None:
        child = self.child(labels)
        buckets = child._buckets
        for i, n in enumerate(cell[:-1]):
            if n:
                buckets[i].inc(n)
        child._sum.inc(cell[-1])
