"""The strict exposition reader the metrics tests rely on refuses what it must."""

from __future__ import annotations

import re

import pytest

from tests.promtext import ExpositionError, parse

GOOD = """\
# HELP a_total A counter
# TYPE a_total counter
a_total{x="1"} 2.0
a_total{x="2"} 3.0
# HELP h_seconds A histogram
# TYPE h_seconds histogram
h_seconds_bucket{le="0.1"} 1.0
h_seconds_bucket{le="+Inf"} 2.0
h_seconds_count 2.0
h_seconds_sum 0.3
# HELP g A gauge
# TYPE g gauge
g{path="a \\"quoted\\" \\\\ value"} 1.0
"""


def test_accepts_a_well_formed_exposition() -> None:
    families = parse(GOOD)
    assert families["a_total"].value(x="2") == 3.0
    assert families["h_seconds"].value("h_seconds_count") == 2.0
    assert families["g"].value(path='a \\"quoted\\" \\\\ value') == 1.0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("# HELP a_total x\n# HELP a_total x\n# TYPE a_total counter\n", "second HELP"),
        ("# HELP a_total x\n# TYPE a_total counter\n# TYPE a_total counter\n", "second TYPE"),
        (
            "# HELP a_total x\n# TYPE a_total counter\na_total 1\n"
            "# HELP g x\n# TYPE g gauge\ng 1\n# HELP a_total x\n",
            "already closed",
        ),
        ("# HELP a_total x\n# TYPE a_total counter\na_total 1\na_total 2\n", "twice"),
        ("# HELP a x\n# TYPE a counter\na 1\n", "does not end in _total"),
        ("# HELP g_total x\n# TYPE g_total gauge\ng_total 1\n", "ends in _total"),
        ("g 1\n", "outside"),
        ('# HELP g x\n# TYPE g gauge\ng{0x="1"} 1\n', "malformed labels"),
        ('# HELP g x\n# TYPE g gauge\ng{a="1",a="2"} 1\n', "repeated"),
        ("# HELP g x\n# TYPE g gauge\ng one\n", "not a number"),
        ("# HELP g x\n# TYPE g gauge\ng 1", "newline"),
        ("# HELP g x\n# TYPE g gauge\n\ng 1\n", "empty line"),
        ("# HELP g x\n# TYPE g stuff\n", "unknown type"),
        ("# HELP g x\n", "lacks HELP or TYPE"),
        ("# a comment\n", "only"),
        (
            '# HELP h x\n# TYPE h histogram\nh_bucket{le="1"} 3\nh_bucket{le="+Inf"} 2\n'
            "h_count 2\nh_sum 1\n",
            "cumulative",
        ),
        ('# HELP h x\n# TYPE h histogram\nh_bucket{le="1"} 1\nh_count 1\nh_sum 1\n', "+Inf"),
        (
            '# HELP h x\n# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_count 3\nh_sum 1\n',
            "differs",
        ),
    ],
)
def test_refuses(text: str, problem: str) -> None:
    with pytest.raises(ExpositionError, match=re.escape(problem)):
        parse(text)
