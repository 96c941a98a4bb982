"""One process of a wave's clients: ``python -m bench.testbed.worker`` reads what to run as
JSON on stdin, says ``ready``, reads when to stop, and writes the wave it ran as JSON.

A wave is spread over several such processes so that the client host's
Python, which decrypts every byte served, is not what limits the goodput.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

import affinity
from affinity.web.tls import client_context

from . import load


def clients(spec: dict[str, Any]) -> list[Callable[[], load.HttpClient]]:
    """The client factories ``spec`` asks for: through the referral, or straight to a URL."""
    verify = client_context(Path(spec["ca"]))
    url, service = str(spec["url"]), str(spec["service"])

    def referred() -> load.HttpClient:
        return affinity.AsyncClient(url, verify=verify, service=service)

    def direct() -> load.HttpClient:
        return httpx.AsyncClient(base_url=url, verify=verify, timeout=10.0)

    make = referred if spec["mode"] == "affinity" else direct
    return [make] * int(spec["clients"])


def main() -> int:
    """A line of JSON in, ``ready`` out; the wave's end (``time.monotonic()``) in, the wave out."""
    spec = json.loads(sys.stdin.readline())
    made = clients(spec)
    print("ready", flush=True)
    until = float(sys.stdin.readline())
    wave = asyncio.run(load.run(made, until, first=int(spec["first"])))
    json.dump(wave.to_json(), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
