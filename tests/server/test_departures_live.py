"""A wave of clients leaves one server, some saying bye and some silent; the next wave spreads.

Real processes on loopback TLS: a referral (``load_weighted``) and three app
servers with a short ``server.load_half_life``. Every wait polls a real
endpoint with a bound computed from the settings; nothing sleeps for luck.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

from affinity.client import AsyncClient
from affinity.protocol import BYE_PATH, HEALTH_PATH
from affinity.testing import Deployment, wait_until
from affinity.tokens.jws import TokenIssuer
from affinity.tokens.keyring import KeyRing

HALF_LIFE = 2.0
INTERVAL = 0.2
LOAD_REFRESH = 0.5
"""How long the referral batches load-only changes before rebuilding a pool."""
SLACK = 3.0
"""Seconds on top of a computed bound: two busy cores run the referral, three servers and this."""
WAVE = 30
SERVERS = ("s1", "s2", "s3")
HEALTH = f"interval = {INTERVAL}\nfast_interval = 0.1\ntimeout = 0.5\nrise = 2\nfall = 2\n"


def described(d: Deployment) -> dict[str, dict[str, Any]]:
    with d.admin() as c:
        return {s["id"]: s for s in c.get("/v1/servers").json()["servers"]}


def reported(d: Deployment, sid: str) -> float:
    """The clients the server itself reports now."""
    with d.client() as c:
        return float(c.get(d.server_urls[sid] + HEALTH_PATH).json()["load"]["clients"])


def first_wave(d: Deployment) -> list[str]:
    """WAVE clients, all on s1 (tokens for s1, as its referral gave them); their tokens."""
    iss = TokenIssuer(KeyRing.load(d.dir / "keys.json"))
    tokens = [iss.issue("s1", f"wave1-{i}", "web")[0] for i in range(WAVE)]
    with d.client() as c:
        for token in tokens:
            r = c.get(d.server_urls["s1"] + "/", headers={"Affinity-Token": token})
            assert r.status_code == 200, r.text
    return tokens


async def second_wave(d: Deployment, count: int) -> list[str]:
    """``count`` new clients at once through the client library; the server each was given."""
    clients = [AsyncClient(d.referral_url, verify=str(d.ca)) for _ in range(count)]
    try:
        answers = await asyncio.gather(*(client.get("/") for client in clients))
        assert all(a.status_code == 200 for a in answers)
        return [str(a.headers["affinity-server"]) for a in answers]
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))


def test_after_a_wave_of_departures_new_clients_spread_evenly(tmp_path: Path) -> None:
    d = Deployment(
        tmp_path,
        services='[services.web]\npolicy = "load_weighted"\n',
        health=HEALTH,
        server=f"load_half_life = {HALF_LIFE}\n",
    )
    with d:
        d.start_referral()
        for sid in SERVERS:
            d.start_server(sid, wait=False)
        for sid in SERVERS:
            d.wait_http(d.server_urls[sid] + HEALTH_PATH, d.servers[sid])
        wait_until(lambda: d.assignable() == set(SERVERS), 10, what="three servers assignable")

        tokens = first_wave(d)
        assert reported(d, "s1") > WAVE / 2, "the first wave is counted on s1"
        wait_until(
            lambda: described(d)["s1"]["load"]["clients"] > 1, 5, what="the referral sees it"
        )

        # The wave ends: half say bye (and stop counting at once), half go silent.
        said_bye, silent = tokens[: WAVE // 2], tokens[WAVE // 2 :]
        ended = time.monotonic()
        with d.client() as c:
            for token in said_bye:
                r = c.post(d.server_urls["s1"] + BYE_PATH, headers={"Affinity-Token": token})
                assert r.status_code == 204
        assert reported(d, "s1") <= len(silent), "the byes left the count at once"

        # The silent half fades: below half a client within log2(2 x silent) half-lives.
        bound = HALF_LIFE * math.log2(2 * len(silent)) + INTERVAL + SLACK
        wait_until(
            lambda: described(d)["s1"]["load"]["clients"] < 0.5,
            bound,
            what="the silent clients fade from the referral's view",
        )
        assert time.monotonic() - ended <= bound
        seen = time.monotonic()  # the pool is rebuilt with the new figures within LOAD_REFRESH
        wait_until(lambda: time.monotonic() >= seen + LOAD_REFRESH, 1, what="load_refresh")

        placed = Counter(asyncio.run(second_wave(d, 2 * WAVE)))
        mean = 2 * WAVE / len(SERVERS)
        assert set(placed) == set(SERVERS), placed
        assert max(placed.values()) / mean <= 1.2, placed
