"""docs/metrics.md lists exactly the metric families each role exposes, with types and labels."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from affinity.models import Load
from affinity.web.metrics import Metrics, ReferralMetrics, ServerMetrics
from tests.promtext import Family, parse

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
_ROW = re.compile(r"^\| `([a-z_]+)` \| (counter|gauge|histogram) \|\s*([a-z_, ]*?)\s*\|", re.M)
SERVER = {
    "id": "s1",
    "service": "web",
    "health": "passing",
    "draining": False,
    "assignable": True,
    "effective_weight": 1.0,
    "load": Load(clients=2.0, inflight=1, capacity=10).figures(),
    "last_check": {"latency": 0.01},
}


def documented(section: str) -> dict[str, tuple[str, frozenset[str]]]:
    """The rows of one section's table: name -> (type, labels)."""
    text = DOC.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {
        name: (kind, frozenset(filter(None, (s.strip() for s in labels.split(",")))))
        for name, kind, labels in _ROW.findall(body)
    }


def feed_both(metrics: Metrics) -> None:
    metrics.observe_plugins(lambda: {"ipfilter.deny[0]": 3}, lambda: {"firewall": 2})
    metrics.settings_refused("firewall")


def referral_exposition() -> dict[str, Family]:
    metrics = ReferralMetrics(
        lambda: [SERVER], lambda: {"name": "embedded", "stale": False, "index": 4}
    )
    feed_both(metrics)
    metrics.referred("web", "s1", "round_robin", "referred", "new_client", 0.0001)
    metrics.avoided("web", "s1")
    metrics.rejected(429, "rate_limited")
    metrics.health_changed("web", "s1", "passing", "critical")
    metrics.checked("web", 0.002)
    metrics.watch_failed("embedded")
    return parse(metrics.exposition()[0].decode())


def server_exposition() -> dict[str, Family]:
    metrics = ServerMetrics(
        lambda: {"active_clients": 1, "inflight": 0, "capacity": 0, "draining": 0}
    )
    feed_both(metrics)
    metrics.answered("/items/<item_id>", "GET", 200, 0.001)
    metrics.token_rejected("expired")
    return parse(metrics.exposition()[0].decode())


def exposed(families: dict[str, Family]) -> dict[str, tuple[str, frozenset[str]]]:
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for name, family in families.items():
        labels = {label for _, ls, _v in family.samples for label in ls} - {"le"}
        found[name] = (family.type or "", frozenset(labels))
    return found


@pytest.mark.parametrize(
    ("section", "make"),
    [("Referral", referral_exposition), ("App server", server_exposition)],
)
def test_docs_match_the_exposition(section: str, make: Any) -> None:
    doc = {**documented(section), **documented("Both")}
    families = make()
    for name, family in families.items():
        assert family.samples, f"{name} has no sample: the test feeds every metric once"
    assert exposed(families) == doc


def test_every_documented_name_follows_the_conventions() -> None:
    for section in ("Referral", "App server", "Both"):
        for name, (kind, _) in documented(section).items():
            assert name.endswith("_total") == (kind == "counter"), name
            if kind == "histogram":
                assert name.endswith("_seconds"), name
