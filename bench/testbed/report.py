"""What the test bed prints and writes: the skip check, targets, the results table, and
its place in bench/RESULTS.md. Pure functions, so they are tested without root."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

TOOLS: Mapping[str, str] = {
    "ip": "apt-get install iproute2",
    "tc": "apt-get install iproute2",
    "haproxy": "apt-get install haproxy",
}
"""What the bed runs besides Python, and how a Debian machine gets it."""
TIMES = "\N{MULTIPLICATION SIGN}"
"""The unit of a ratio to one server."""
PERCENT = " %"


def missing(is_root: bool, which: Callable[[str], str | None]) -> str | None:
    """Why the bed cannot run here (one sentence per missing piece), or None when it can."""
    reasons = [] if is_root else ["it needs root (network namespaces, veth pairs, tc)"]
    reasons += [
        f"'{tool}' is not installed ({how})" for tool, how in TOOLS.items() if not which(tool)
    ]
    return "; ".join(reasons) or None


@dataclass(frozen=True, slots=True)
class Target:
    """A bound a figure must meet: ``at_least`` (≥) or not (≤)."""

    bound: float
    at_least: bool
    unit: str = ""

    def met(self, value: float) -> bool:
        return value >= self.bound if self.at_least else value <= self.bound

    def __str__(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {self.bound:g}{self.unit}"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: the case, what was measured, the compared figure and its bound."""

    case: str
    measured: str
    value: float | None = None
    unit: str = ""
    target: Target | None = None
    note: str = ""

    @property
    def shown(self) -> str:
        if self.value is None:
            return "n/a"
        if self.unit == TIMES:
            return f"{self.value:.2f}{TIMES}"
        if self.unit == PERCENT:
            return f"{self.value:.3f} %"
        return f"{self.value:g}{self.unit}"

    @property
    def verdict(self) -> str:
        """Met or not, for the figure as shown (a ratio to two decimals)."""
        if self.target is None:
            return ""
        if self.value is None:
            return "**not measured**"
        shown = round(self.value, 2) if self.unit == TIMES else self.value
        return "met" if self.target.met(shown) else "**not met**"


def ratio(value: float, baseline: float) -> float | None:
    """``value / baseline``; None when the baseline is nothing (no figure to compare with)."""
    return value / baseline if baseline > 0 else None


def mb_per_s(nbytes: float, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:.2f} MB/s" if seconds > 0 else "n/a"


def spread(counts: Mapping[str, int]) -> str:
    """How many of a wave's clients each server got, in server order: ``s1 0 · s2 6 · ...``."""
    return " · ".join(f"{sid} {counts[sid]}" for sid in sorted(counts, key=server_order))


def server_order(sid: str) -> tuple[str, int]:
    """Sorts ``s2`` before ``s10``."""
    head, digits = re.match(r"(.*?)(\d*)\Z", sid).groups()  # type: ignore[union-attr]
    return head, int(digits or 0)


def markdown(rows: Sequence[Row]) -> str:
    """The table, in Markdown."""
    lines = [
        "| case | measured | vs one server | target | verdict | how it ran |",
        "|---|---:|---:|---|---|---|",
    ]
    for row in rows:
        target = str(row.target) if row.target else ""
        cells = (row.case, row.measured, row.shown, target, row.verdict, row.note)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def combine(rounds: Sequence[Sequence[Row]]) -> list[Row]:
    """One table from the same table measured in several rounds: per line, the round with the
    median figure (a count, such as failed requests, takes the worst round instead), its
    note followed by every round's figure."""
    if len(rounds) == 1:
        return list(rounds[0])
    out = []
    for lines in zip(*rounds, strict=True):
        measured = [row for row in lines if row.value is not None]
        if not measured:
            out.append(lines[0])
            continue
        ordered = sorted(measured, key=lambda row: row.value or 0.0)
        pick = ordered[-1] if lines[0].unit == "" else ordered[(len(ordered) - 1) // 2]
        each = ", ".join(row.shown for row in lines)
        note = f"{pick.note}; rounds: {each}" if pick.note else f"rounds: {each}"
        out.append(Row(pick.case, pick.measured, pick.value, pick.unit, pick.target, note))
    return out


def unmet(rows: Iterable[Row]) -> list[str]:
    """The cases whose target is not met (or could not be measured)."""
    return [row.case for row in rows if row.verdict.startswith("**")]


def splice(document: str, key: str, block: str) -> str:
    """``document`` with ``block`` between the markers of ``key``: in place of what they held
    when they are there, else appended at the end."""
    if not re.fullmatch(r"[a-z0-9-]+", key):
        raise ValueError(f"{key!r}: a marker key is lower-case letters, digits and '-'")
    start, end = f"<!-- testbed:{key} -->", f"<!-- /testbed:{key} -->"
    framed = f"{start}\n{block.strip()}\n{end}"
    before, found, rest = document.partition(start)
    if found:
        _, closed, after = rest.partition(end)
        if not closed:
            raise ValueError(f"{start} has no {end} after it")
        return before + framed + after
    return document.rstrip("\n") + "\n\n" + framed + "\n"
