"""The PNGs of the churn simulation (``python bench/sim_balance.py --plots``), into bench/img/.

Needs matplotlib, the ``bench`` dependency group (``pip install --group bench``);
nothing else in the project does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench.sim_balance import (
    OLD,
    Summary,
    SweepRow,
    Trace,
    Workload,
    capacity,
    max_over_mean,
)

IMG = Path(__file__).parent / "img"
SHOWN = ("load_weighted", "consistent")
"""The policies that read the load signal (the others give the same picture with either)."""


def _shown(w: Workload, trace: Trace, values: Sequence[float]) -> tuple[list[float], list[float]]:
    """The samples from a minute before the measured span on (the warm-up is left out)."""
    start = w.warmup - 60
    kept = [(t, v) for t, v in zip(trace.times, values, strict=True) if t >= start]
    return [t for t, _ in kept], [v for _, v in kept]


def _smooth(values: Sequence[float], width: int) -> list[float]:
    """A trailing moving average over ``width`` samples, skipping the gaps (nan)."""
    out = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - width + 1) : i + 1] if not math.isnan(v)]
        out.append(sum(window) / len(window) if window else math.nan)
    return out


def _events(ax: Axes, w: Workload) -> None:
    for t, label in ((w.burst_at, "burst"), (w.die_at, "s2 dies"), (w.add_at, "s5 added")):
        ax.axvline(t, color="0.5", linestyle=":", linewidth=1)
        ax.text(t + 5, 0.02, label, transform=ax.get_xaxis_transform(), fontsize=8)


def work(w: Workload, results: Sequence[tuple[Summary, Trace]], path: Path) -> None:
    """Live sessions per server over time: a row per policy, old signal left, new right."""
    runs = {(s.policy, s.signal == OLD): (s, t) for s, t in results if s.policy in SHOWN}
    fig, axes = plt.subplots(
        len(SHOWN), 2, figsize=(11, 3.2 * len(SHOWN)), sharex=True, sharey=True, squeeze=False
    )
    for row, policy in enumerate(SHOWN):
        for col, old in enumerate((True, False)):
            summary, trace = runs[(policy, old)]
            ax = axes[row][col]
            for sid, column in trace.work.items():
                ax.plot(*_shown(w, trace, _smooth(column, 5)), linewidth=0.9, label=sid)
            ax.axhline(capacity(w, trace), color="k", linestyle="--", linewidth=0.8)
            _events(ax, w)
            ax.set_xlim(w.warmup - 60, w.end)
            ax.set_title(f"{policy}, {summary.signal.label} signal", fontsize=10)
            if col == 0:
                ax.set_ylabel("live sessions")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("simulated seconds (dashed: capacity of one server)")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def spread(w: Workload, results: Sequence[tuple[Summary, Trace]], path: Path) -> None:
    """Max/mean work per server over time, old signal against new, a panel per policy."""
    fig, axes = plt.subplots(1, len(SHOWN), figsize=(11, 3.4), sharey=True, squeeze=False)
    for ax, policy in zip(axes[0], SHOWN, strict=True):
        for summary, trace in results:
            if summary.policy == policy:
                style = "-" if summary.signal != OLD else "--"
                label = f"{summary.signal.label} signal"
                xs, ys = _shown(w, trace, _smooth(max_over_mean(trace), 15))
                ax.plot(xs, ys, style, label=label)
        _events(ax, w)
        ax.set_xlim(w.warmup - 60, w.end)
        ax.set_title(policy, fontsize=10)
        ax.set_xlabel("simulated seconds")
    axes[0][0].set_ylabel("max/mean live sessions (15 s mean)")
    axes[0][0].legend(loc="upper left", fontsize=8)
    low, high = axes[0][0].get_ylim()
    axes[0][0].set_ylim(low, high + 0.25 * (high - low))  # room for the legend
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def half_life(rows: Sequence[SweepRow], chosen: float, path: Path) -> None:
    """The sweep: idle capacity and max/mean against the half-life, the old signal dashed,
    the half-life of the first table (the default) dotted."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), squeeze=False)
    scenarios = sorted({r.scenario for r in rows})
    figures = (("idle", "capacity left idle, %", 100.0), ("max_mean", "max/mean overall", 1.0))
    for ax, (attr, title, scale) in zip(axes[0], figures, strict=True):
        for n, scenario in enumerate(scenarios):
            mine = [r for r in rows if r.scenario == scenario]
            new = [r for r in mine if r.signal != OLD]
            colour = f"C{n}"
            xs = [r.signal.half_life for r in new]
            ys = [getattr(r, attr) * scale for r in new]
            ax.plot(xs, ys, "o-", color=colour, label=f"{scenario}, new signal")
            for r in mine:
                if r.signal == OLD:
                    old = getattr(r, attr) * scale
                    ax.axhline(old, color=colour, linestyle="--", label=f"{scenario}, old signal")
        ax.axvline(chosen, color="0.5", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel("half-life, seconds")
        ax.set_title(title, fontsize=10)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(
    w: Workload,
    results: Sequence[tuple[Summary, Trace]],
    rows: Sequence[SweepRow],
    chosen: float,
) -> None:
    """Write the three PNGs bench/RESULTS.md shows."""
    matplotlib.use("Agg")  # files only, no display
    IMG.mkdir(exist_ok=True)
    work(w, results, IMG / "sim_balance_work.png")
    spread(w, results, IMG / "sim_balance_max_mean.png")
    half_life(rows, chosen, IMG / "sim_balance_half_life.png")
    print("\nPlots written to bench/img/sim_balance_{work,max_mean,half_life}.png")
