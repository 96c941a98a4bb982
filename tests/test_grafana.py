"""examples/grafana: the dashboard's every query names metrics affinity exposes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_metrics_docs import referral_exposition, server_exposition

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "grafana"
# PromQL words that are not metric names: aggregations, keywords, functions taking "(".
KEYWORDS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "topk",
        "bottomk",
        "stddev",
        "quantile",
    ]
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function
        if match.group(0) not in KEYWORDS:
            names.add(match.group(0))
    return names


def queries(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield node["expr"]
        for value in node.values():
            yield from queries(value)
    elif isinstance(node, list):
        for value in node:
            yield from queries(value)


def exposed() -> set[str]:
    samples = set()
    for families in (referral_exposition(), server_exposition()):
        for family in families.values():
            samples |= {name for name, _, _v in family.samples}
    return samples


def test_the_name_reader_finds_metrics_and_only_metrics() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(x_seconds_bucket{a="b c"}[5m])))'
        " / on(instance) group_left(version) y_info == 1"
    )
    assert metric_names(expr) == {"x_seconds_bucket", "y_info"}


def test_every_query_names_an_exposed_metric() -> None:
    dashboard = json.loads((EXAMPLE / "dashboard.json").read_text())
    found = list(queries(dashboard))
    assert len(found) >= 20
    known = exposed()
    for expr in found:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= known, f"{expr!r} names {sorted(names - known)}, which nothing exposes"


@pytest.mark.parametrize("typo", ["affinity_assignment_total", "affinity_app_requests"])
def test_a_misspelt_metric_would_be_caught(typo: str) -> None:
    assert not metric_names(f"sum(rate({typo}[5m]))") <= exposed()


def test_panels_use_the_dashboards_data_source_and_do_not_overlap() -> None:
    dashboard = json.loads((EXAMPLE / "dashboard.json").read_text())
    assert dashboard["templating"]["list"][0]["name"] == "datasource"
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        mine = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not mine & cells, panel["title"]
        cells |= mine
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_scrape_config_names_both_endpoints() -> None:
    text = (EXAMPLE / "prometheus.yml").read_text()
    assert "metrics_path: /metrics" in text
    assert "metrics_path: /.well-known/affinity/metrics" in text
