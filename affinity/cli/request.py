"""``affinity request``: one request through the client library, for people and scripts.

It prints the status line, the server that answered (its ``Affinity-Server``
header) and the body, and exits 0 for a 1xx-3xx answer, 1 for a 4xx-5xx
answer and 2 when no answer could be had (the error says what was tried).
With ``--state-file`` the assignment survives between runs, so successive
commands keep talking to the same server, like a long-lived client would.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import httpx

from affinity.client.sync import Client
from affinity.errors import AffinityError
from affinity.protocol import SERVER_HEADER

REFERRAL_ENV = "AFFINITY_REFERRAL"
PROG = "affinity request"


def configure(p: argparse.ArgumentParser) -> None:
    """Add the options of ``affinity request`` to its sub-parser."""
    p.add_argument(
        "--referral",
        action="append",
        metavar="URL",
        help=f"a referral URL; repeat for several (default: ${REFERRAL_ENV}, comma-separated)",
    )
    p.add_argument("--service", help="the service to ask for (default: the referral's)")
    p.add_argument("--cacert", metavar="FILE", help="trust this CA file instead of the system's")
    p.add_argument("--state-file", metavar="FILE", help="keep the assignment here between runs")
    p.add_argument("--deadline", type=float, default=10.0, help="seconds for the whole call")
    p.add_argument("-d", "--data", help="request body; @FILE reads a file, @- standard input")
    p.add_argument(
        "-H", "--header", action="append", default=[], metavar="'K: V'", help="a request header"
    )
    p.add_argument("method", help="GET, POST, ...")
    p.add_argument("path", help="the path on the server, such as /items?limit=5")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, *, transport: httpx.BaseTransport | None = None) -> int:
    """Run ``affinity request``; ``transport`` replaces the network in tests."""
    try:
        referrals = args.referral or _from_env()
        headers = dict(_header(h) for h in args.header)
        content = _data(args.data)
        with Client(
            referrals,
            service=args.service,
            verify=args.cacert or True,
            state_file=args.state_file,
            deadline=args.deadline,
            transport=transport,
        ) as client:
            response = client.request(args.method, args.path, headers=headers, content=content)
    except (AffinityError, ValueError, TypeError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    _show(response)
    return 0 if response.status_code < 400 else 1


def _from_env() -> list[str]:
    found = [u.strip() for u in os.environ.get(REFERRAL_ENV, "").split(",") if u.strip()]
    if not found:
        raise ValueError(f"no referral: pass --referral URL or set {REFERRAL_ENV}")
    return found


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"header {text!r} is not valid; expected 'Name: value'")
    return name.strip(), value.strip()


def _data(data: str | None) -> bytes | None:
    if data is None:
        return None
    if data == "@-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        return Path(data[1:]).read_bytes()
    return data.encode()


def _show(response: httpx.Response) -> None:
    out = sys.stdout
    out.write(f"{response.status_code} {response.reason_phrase}\n")
    out.write(f"{SERVER_HEADER}: {response.headers.get(SERVER_HEADER, '-')}\n\n")
    out.flush()
    out.buffer.write(response.content)
    if response.content and not response.content.endswith(b"\n"):
        out.buffer.write(b"\n")
    out.buffer.flush()
