"""``--plot FILE.png``: goodput over time in every phase, stacked by app server.

Needs matplotlib (``.venv/bin/pip install matplotlib``); without it the bed
says so and writes no plot.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .bed import Measured
from .report import server_order

TITLES = {
    "one": "1 server",
    "departures": "4, after departures",
    "fresh": "4, fresh",
    "haproxy": "HAProxy, mode tcp",
    "kill": "4, s4 killed, s5 added",
}
BUCKET = 2.0
"""Seconds per point: a 1 MiB download counts when it ends, so one second is spiky."""


def available() -> bool:
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def timeline(results: Mapping[str, Measured], path: Path, title: str) -> None:
    """One panel per phase: MB/s each server delivered, from the wave's start; the dotted
    line is where the measured window starts."""
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.2), sharey=True)
    for ax, (key, m) in zip(axes, results.items(), strict=True):
        t0 = m.wave.started
        servers = sorted({d.server for d in m.wave.downloads}, key=server_order)
        steps = [i * BUCKET for i in range(int((m.end - t0) / BUCKET))]
        stacks = [
            [m.wave.bytes_between(t0 + t, t0 + t + BUCKET, {sid}) / 1e6 / BUCKET for t in steps]
            for sid in servers
        ]
        colours = [f"C{server_order(sid)[1] % 10}" for sid in servers]  # one colour a server
        ax.stackplot(steps, stacks, labels=servers, colors=colours, step="post")
        ax.axvline(m.start - t0, linestyle=":", color="grey")
        ax.set_title(TITLES.get(key, key), fontsize=10)
        ax.set_xlabel("seconds")
        ax.legend(loc="lower right", fontsize=7)
    axes[0].set_ylabel("MB/s")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
