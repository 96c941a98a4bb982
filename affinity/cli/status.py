"""``affinity status``: the fleet a referral sees, as a table (``--watch`` refreshes it) or JSON.

It reads ``GET /v1/status`` with the admin token, which comes from
``--admin-token-file`` or ``AFFINITY_ADMIN_TOKEN``, never from an option value
(a command line is visible to every user of the machine). Assignments per
second are the difference of two readings ``--interval`` seconds apart, over
all workers of the referral. Exit status: 0, or 2 when the referral could not
be read (the message says why).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from affinity.cli.request import REFERRAL_ENV

TOKEN_ENV = "AFFINITY_ADMIN_TOKEN"
PROG = "affinity status"
PIPE_WIDTH = 200
HEALTH_STYLE = {
    "passing": "green",
    "warning": "yellow",
    "critical": "red",
    "maintenance": "magenta",
}


class StatusError(Exception):
    """The status could not be read; the message says what to do."""


def configure(p: argparse.ArgumentParser) -> None:
    """Add the options of ``affinity status`` to its sub-parser."""
    p.add_argument(
        "--referral",
        metavar="URL",
        help=f"the referral to ask (default: the first of ${REFERRAL_ENV})",
    )
    p.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help=f"a file holding the admin token (default: ${TOKEN_ENV})",
    )
    p.add_argument("--cacert", metavar="FILE", help="trust this CA file instead of the system's")
    p.add_argument(
        "--interval",
        type=_seconds,
        default=1.0,
        help="seconds between two readings, for the rates and --watch (0: one reading, no rates)",
    )
    p.add_argument("--watch", action="store_true", help="refresh every --interval until Ctrl-C")
    p.add_argument("--count", type=_count, help="with --watch: stop after this many refreshes")
    p.add_argument("--json", action="store_true", help="print JSON (one document per refresh)")
    p.set_defaults(func=run)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0 to 3600")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def run(args: argparse.Namespace, *, transport: httpx.BaseTransport | None = None) -> int:
    """Run ``affinity status``; ``transport`` replaces the network in tests."""
    # Into a pipe or a file a table is not wrapped at 80 columns (COLUMNS still decides).
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    console = Console(highlight=False, width=PIPE_WIDTH if wide else None)
    try:
        url = _referral(args.referral)
        headers = {"Authorization": f"Bearer {_token(args.admin_token_file)}"}
        verify: Any = args.cacert or True
        with httpx.Client(
            base_url=url, headers=headers, verify=verify, timeout=5.0, transport=transport
        ) as client:
            readings = _readings(client, args.interval, args.count if args.watch else 1)
            if args.watch and not args.json and console.is_terminal:
                _live(console, url, readings)
            else:
                for status in readings:
                    _print(console, url, status, as_json=args.json)
    except StatusError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


def _referral(given: str | None) -> str:
    if given:
        return given.rstrip("/")
    found = [u.strip() for u in os.environ.get(REFERRAL_ENV, "").split(",") if u.strip()]
    if not found:
        raise StatusError(f"no referral: pass --referral URL or set {REFERRAL_ENV}")
    return found[0].rstrip("/")


def _token(path: str | None) -> str:
    if path is not None:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise StatusError(f"cannot read --admin-token-file {path!r}: {exc.strerror}") from exc
        if not token:
            raise StatusError(f"--admin-token-file {path!r} is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise StatusError(f"no admin token: pass --admin-token-file FILE or set {TOKEN_ENV}")
    return token


def _read(client: httpx.Client) -> dict[str, Any]:
    try:
        response = client.get("/v1/status")
    except httpx.HTTPError as exc:
        raise StatusError(f"cannot reach {client.base_url}: {exc}") from exc
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        detail = body.get("detail") if isinstance(body, dict) else response.reason_phrase
        raise StatusError(f"{client.base_url}/v1/status answered {response.status_code}: {detail}")
    return body


def _readings(client: httpx.Client, interval: float, count: int | None) -> Iterator[dict[str, Any]]:
    """Status documents with ``rate`` per server, one per ``interval``, ``count`` of them."""
    previous = _read(client)
    made = 0
    while count is None or made < count:
        if interval == 0:
            yield _with_rates(previous, None)
            return
        time.sleep(interval)
        current = _read(client)
        yield _with_rates(current, previous)
        previous = current
        made += 1


def _with_rates(status: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any]:
    """Add ``assignments_per_second`` to every server (None without an earlier reading)."""
    span = status["time"] - before["time"] if before else 0.0
    earlier = {s["id"]: s["assignments"] for s in before["servers"]} if before else {}
    for server in status["servers"]:
        rate = None
        if span > 0 and server["id"] in earlier:
            rate = round((server["assignments"] - earlier[server["id"]]) / span, 2)
        server["assignments_per_second"] = rate
    return status


def _print(console: Console, url: str, status: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(status).decode() + "\n")
        sys.stdout.flush()
    else:
        console.print(render(url, status))


def _live(console: Console, url: str, readings: Iterator[dict[str, Any]]) -> None:
    with Live(console=console, auto_refresh=False) as live:
        for status in readings:
            live.update(render(url, status), refresh=True)


def render(url: str, status: dict[str, Any]) -> Group:
    """The table of servers under a line about the referral and its services."""
    registry = status["registry"]
    state = "stale: " + registry["stale_reason"] if registry["stale"] else "fresh"
    head = Text(
        f"{url} · affinity {status['version']} · registry {registry['name']} ({state}) "
        f"· index {registry['index']}"
    )
    services = Text(
        "  ".join(
            f"{name}: {s['assignable']}/{s['total']} assignable ({s.get('policy', '?')})"
            for name, s in status["services"].items()
        )
    )
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("SERVICE", "SERVER", "HEALTH", "LOAD", "WEIGHT", "DRAINING"):
        table.add_column(column)
    table.add_column("ASSIGN/S", justify="right")
    table.add_column("LAST FAILURE")
    for s in status["servers"]:
        table.add_row(*_row(s, status["time"]))
    return Group(head, services, table)


def _clients(load: dict[str, Any]) -> str:
    """The decayed client count, one decimal (a referral before load format 2 has whole ones)."""
    clients = load.get("clients")
    return f"{clients:.1f}" if isinstance(clients, int | float) else str(load["active_clients"])


def _row(s: dict[str, Any], now: float) -> list[str | Text]:
    load = s["load"]
    capacity = f"/{load['capacity']}" if load["capacity"] else ""
    weight = str(s["weight"])
    if s["effective_weight"] != s["weight"]:
        weight = f"{s['effective_weight']} of {s['weight']}"
    failure = s["last_failure"]
    last = f"{failure['reason']} ({_ago(now - failure['at'])})" if failure["at"] else "-"
    rate = s.get("assignments_per_second")
    return [
        s["service"],
        s["id"],
        Text(s["health"], style=HEALTH_STYLE.get(s["health"], "")),
        f"{_clients(load)}{capacity} clients, {load['inflight']} in flight",
        weight,
        "yes" if s["draining"] else "no",
        "-" if rate is None else f"{rate:.1f}",
        last,
    ]


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"
