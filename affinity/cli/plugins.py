"""``affinity plugins``: each loaded plugin with its distribution, version and hooks."""

from __future__ import annotations

import argparse
import dataclasses
import json

from affinity.plugin.manager import PluginInfo, PluginManager


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON array, for scripts")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    manager = PluginManager()
    found = manager.describe()
    if args.json:
        print(json.dumps([dataclasses.asdict(info) for info in found], indent=2))
    else:
        print(render(found, sorted(manager.blocked)))
    return 0


def render(found: list[PluginInfo], blocked: list[str]) -> str:
    """A table: name, distribution, version, and the hooks without their ``affinity_`` prefix."""
    rows = [("name", "distribution", "version", "hooks")]
    for info in found:
        hooks = ", ".join(h.removeprefix("affinity_") for h in info.hooks)
        options = f" [{info.options}]" if info.options else ""
        rows.append((info.name, info.distribution or "-", info.version or "-", hooks + options))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[3]
        for row in rows
    ]
    if blocked:
        lines.append(f"blocked (AFFINITY_DISABLE_PLUGINS): {', '.join(blocked)}")
    return "\n".join(line.rstrip() for line in lines)
