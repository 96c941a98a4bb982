"""A strict reader of the Prometheus text format (version 0.0.4), for tests.

Stricter than Prometheus itself, on purpose: every family has exactly one
``# HELP`` and one ``# TYPE``, both before its samples; a family's samples are
contiguous; no series appears twice; names and labels are valid; counters end
in ``_total``; histograms have cumulative buckets ending in ``+Inf`` equal to
``_count``. A problem raises :class:`ExpositionError` naming the line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^\n]*\})? (\S+)( -?\d+)?")
_PAIR = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"\s*(,|$)')


class ExpositionError(ValueError):
    """The text breaks the format; the message names the line."""


@dataclass
class Family:
    name: str
    help: str | None = None
    type: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def value(self, sample: str | None = None, **labels: str) -> float | None:
        """The value of the one sample named ``sample`` (default: the family) with ``labels``."""
        found = [v for n, ls, v in self.samples if n == (sample or self.name) and ls == labels]
        return found[0] if found else None


def parse(text: str) -> dict[str, Family]:
    """The families of ``text`` by name, or :class:`ExpositionError`."""
    if text and not text.endswith("\n"):
        raise ExpositionError("the text does not end with a newline")
    families: dict[str, Family] = {}
    current: Family | None = None
    closed: set[str] = set()
    series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for number, line in enumerate(text.splitlines(), 1):
        where = f"line {number}: {line!r}"
        if not line.strip():
            raise ExpositionError(f"{where}: empty line")
        if line.startswith("#"):
            current = _comment(line, where, families, current, closed)
            continue
        name, labels, value = _sample(line, where)
        if current is None or _family_of(name, current) is None:
            raise ExpositionError(f"{where}: sample outside its family's HELP/TYPE block")
        key = (name, tuple(sorted(labels.items())))
        if key in series:
            raise ExpositionError(f"{where}: series given twice")
        series.add(key)
        current.samples.append((name, labels, value))
    for family in families.values():
        _check_family(family)
    return families


def _comment(
    line: str, where: str, families: dict[str, Family], current: Family | None, closed: set[str]
) -> Family:
    parts = line.split(" ", 3)
    if len(parts) < 3 or parts[0] != "#" or parts[1] not in ("HELP", "TYPE"):
        raise ExpositionError(f"{where}: only '# HELP' and '# TYPE' comments are expected")
    kind, name = parts[1], parts[2]
    if not NAME.fullmatch(name):
        raise ExpositionError(f"{where}: {name!r} is not a metric name")
    if current is not None and current.name != name:
        closed.add(current.name)
    if name in closed:
        raise ExpositionError(f"{where}: family {name!r} was already closed")
    family = families.setdefault(name, Family(name))
    if family.samples:
        raise ExpositionError(f"{where}: {kind} after the family's samples")
    rest = parts[3] if len(parts) > 3 else ""
    if kind == "HELP":
        if family.help is not None:
            raise ExpositionError(f"{where}: a second HELP for {name!r}")
        family.help = rest
    else:
        if family.type is not None:
            raise ExpositionError(f"{where}: a second TYPE for {name!r}")
        if rest not in TYPES:
            raise ExpositionError(f"{where}: unknown type {rest!r}")
        family.type = rest
    return family


def _sample(line: str, where: str) -> tuple[str, dict[str, str], float]:
    match = _SAMPLE.fullmatch(line)
    if match is None:
        raise ExpositionError(f"{where}: not a sample line")
    name, label_text, value_text = match.group(1), match.group(2), match.group(3)
    labels: dict[str, str] = {}
    if label_text:
        inner = label_text[1:-1]
        position = 0
        while position < len(inner):
            pair = _PAIR.match(inner, position)
            if pair is None:
                raise ExpositionError(f"{where}: malformed labels")
            label, value = pair.group(1), pair.group(2)
            if label.startswith("__") or label in labels:
                raise ExpositionError(f"{where}: label {label!r} reserved or repeated")
            labels[label] = value
            position = pair.end()
    try:
        value = float(value_text)
    except ValueError:
        raise ExpositionError(f"{where}: {value_text!r} is not a number") from None
    return name, labels, value


def _family_of(sample: str, family: Family) -> str | None:
    if family.type == "histogram":
        suffixes = ("_bucket", "_sum", "_count")
        return next((s for s in suffixes if sample == family.name + s), None)
    if family.type == "summary":
        return next((s for s in ("", "_sum", "_count") if sample == family.name + s), None)
    return "" if sample == family.name else None


def _check_family(family: Family) -> None:
    name = family.name
    if family.help is None or family.type is None:
        raise ExpositionError(f"family {name!r} lacks HELP or TYPE")
    if family.type == "counter" and not name.endswith("_total"):
        raise ExpositionError(f"counter {name!r} does not end in _total")
    if family.type != "counter" and name.endswith("_total"):
        raise ExpositionError(f"{family.type} {name!r} ends in _total")
    if family.type == "histogram":
        _check_histogram(family)


def _check_histogram(family: Family) -> None:
    groups: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    counts: dict[tuple[tuple[str, str], ...], float] = {}
    for sample, labels, value in family.samples:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        if sample.endswith("_bucket"):
            groups.setdefault(rest, []).append((float(labels["le"]), value))
        elif sample.endswith("_count"):
            counts[rest] = value
    for key, buckets in groups.items():
        bounds = [b for b, _ in buckets]
        values = [v for _, v in buckets]
        if bounds != sorted(bounds) or not math.isinf(bounds[-1]):
            raise ExpositionError(f"{family.name}{dict(key)}: buckets unsorted or no +Inf")
        if values != sorted(values):
            raise ExpositionError(f"{family.name}{dict(key)}: buckets not cumulative")
        if counts.get(key) != values[-1]:
            raise ExpositionError(f"{family.name}{dict(key)}: +Inf bucket differs from _count")
