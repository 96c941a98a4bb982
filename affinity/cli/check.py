"""``affinity check``: the start-up checks of each role without starting it, every error listed.

Like ``nginx -t`` or ``haproxy -c``: exit 0 when the roles would start, 2
with one line per error otherwise (warnings too, on stderr). ``--print``
writes the effective configuration as JSON, after environment overrides,
with every secret masked.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from affinity.cli.preflight import ROLES, configured_roles, is_secret_name, preflight
from affinity.config import SECTIONS, TABLE_ENV_PREFIXES, Config, Listen
from affinity.errors import AffinityError
from affinity.plugin.manager import PluginManager

MASK = "********"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--role",
        choices=(*ROLES, "all"),
        help="the role to check (default: those the file sets up: [referral] or [services.*] "
        "for the referral, [server] for an app server)",
    )
    parser.add_argument(
        "--print",
        action="store_true",
        dest="print_config",
        help="print the effective configuration as JSON (environment applied, secrets masked)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="count warnings (private files open to group or others) as errors",
    )


def run(config: Config, args: argparse.Namespace) -> int:
    """Check ``config`` for the chosen roles; print the result; 0 when it would start."""
    roles = ROLES if args.role == "all" else (args.role,) if args.role else configured_roles(config)
    manager = _manager()
    found = preflight(config, roles, manager)
    if args.print_config:
        print(json.dumps(effective(config, manager), indent=2))
    for error in found.errors:
        for line in str(error).splitlines():
            print(f"affinity check: error: {line}", file=sys.stderr)
    for warning in found.warnings:
        print(f"affinity check: warning: {warning}", file=sys.stderr)
    for note in found.notes:
        print(f"affinity check: note: {note}", file=sys.stderr)
    failed = len(found.errors) + (len(found.warnings) if args.strict else 0)
    what = ", ".join(roles)
    if failed:
        counted = _count(len(found.errors), "error") + (
            f", {_count(len(found.warnings), 'warning')}" if found.warnings else ""
        )
        print(f"{config.source}: failed ({what}): {counted}", file=sys.stderr)
        return 2
    tables = ", ".join(f"[plugins.{name}]" for name in sorted(_declared(manager)))
    services = _count(len(config.services), "service")
    out = sys.stderr if args.print_config else sys.stdout
    print(f"{config.source}: ok ({what}; {services}; options of {tables or 'no plugin'})", file=out)
    return 0


def _manager() -> PluginManager | None:
    """The plugins, or None when they fail to load (the preflight then reports why)."""
    try:
        return PluginManager()
    except AffinityError:  # reported by the preflight, which loads them again
        return None


def _declared(manager: PluginManager | None) -> dict[str, type[Any]]:
    return manager.declared_options() if manager is not None else {}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def effective(config: Config, manager: PluginManager | None) -> dict[str, Any]:
    """The configuration a process would run with, as JSON values, secrets masked.

    Core sections and services after their ``AFFINITY_*`` overrides; each plugin
    table converted by the plugin's declared options when it loads (else as
    written); registry options with their ``AFFINITY_REGISTRY_OPTIONS_*``
    overrides; and every ``AFFINITY_*`` variable that is set, its value masked
    when its name says it holds a secret.
    """
    doc: dict[str, Any] = {"source": config.source}
    for name in SECTIONS:
        doc[name] = _plain(getattr(config, name))
    doc["registry"]["options"] = _masked(_registry_options(config))
    doc["services"] = {name: _plain(s) for name, s in config.services.items()}
    declared = _declared(manager)
    plugins: dict[str, Any] = {}
    for name, table in config.plugins.items():
        if name in declared:
            try:
                table = _plain(config.plugin_options(name, declared[name]))
            except AffinityError:  # the check reports it; show the table as written
                table = _plain(table)
        plugins[name] = _masked(table)
    doc["plugins"] = plugins
    doc["environment"] = {
        name: MASK if is_secret_name(name) else value
        for name, value in sorted(os.environ.items())
        if name.startswith("AFFINITY_") or name == "CONSUL_HTTP_TOKEN"
    }
    doc["from_environment"] = sorted(config.from_env)
    return doc


def _registry_options(config: Config) -> dict[str, Any]:
    options = dict(config.registry.options)
    prefix = TABLE_ENV_PREFIXES[1]
    for name, value in config.env.items():
        if name.startswith(prefix):
            options[name.removeprefix(prefix).lower()] = value
    return options


def _masked(table: Any) -> Any:
    """``table`` with the value of every key that names a secret replaced by :data:`MASK`."""
    if isinstance(table, Mapping):
        return {
            k: MASK if is_secret_name(str(k)) and v not in (None, "") else _masked(v)
            for k, v in table.items()
        }
    if isinstance(table, list):
        return [_masked(v) for v in table]
    return table


def _plain(value: Any) -> Any:
    """A JSON value for a setting: dataclasses as objects (fields hidden from ``repr``, the
    resolved secrets, masked), paths and addresses as text, tuples as lists."""
    if isinstance(value, Listen | Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _hidden(getattr(value, f.name))
            if not f.repr
            else _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _hidden(value: Any) -> Any:
    return None if value in (None, "") else MASK
