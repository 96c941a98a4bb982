"""``POST /.well-known/affinity/bye``: a client ends its session, checked by its token."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from affinity.client import AsyncClient, Client
from affinity.protocol import BYE_PATH, HEALTH_PATH, METRICS_PATH
from affinity.testing import Deployment
from affinity.tokens.jws import TokenIssuer
from affinity.tokens.keyring import KeyRing
from tests.promtext import parse
from tests.server.apps import HOLDING

APP = HOLDING


@pytest.fixture
def servers(deployment: Deployment) -> Iterator[Deployment]:
    deployment.start_referral()
    for sid in ("s1", "s2"):
        deployment.start_server(sid, app=APP)
    yield deployment


def issuer(d: Deployment) -> TokenIssuer:
    return TokenIssuer(KeyRing.load(d.dir / "keys.json"))


def send(
    d: Deployment, sid: str, path: str, token: str | None = None, method: str = "GET"
) -> httpx.Response:
    headers = {"Affinity-Token": token} if token else {}
    with d.client() as c:
        return c.request(method, d.server_urls[sid] + path, headers=headers)


def clients(d: Deployment, sid: str) -> float:
    return float(send(d, sid, HEALTH_PATH).json()["load"]["active_clients"])


def held_ids(d: Deployment, sid: str) -> float:
    with d.client() as c:
        text = c.get(d.server_urls[sid] + METRICS_PATH).text
    value = parse(text)["affinity_app_client_ids"].value()
    assert value is not None
    return value


def bye(d: Deployment, sid: str, token: str | None) -> httpx.Response:
    return send(d, sid, BYE_PATH, token, method="POST")


def test_a_client_that_says_bye_stops_counting_at_once(servers: Deployment) -> None:
    iss = issuer(servers)
    tokens = [iss.issue("s1", f"c{i}", "web")[0] for i in range(3)]
    for token in tokens:
        assert send(servers, "s1", "/whoami", token).status_code == 200
    assert clients(servers, "s1") == 3
    r = bye(servers, "s1", tokens[0])
    assert r.status_code == 204 and r.content == b""
    assert r.headers["affinity-server"] == "s1"
    assert clients(servers, "s1") == 2 and held_ids(servers, "s1") == 2
    assert bye(servers, "s1", tokens[0]).status_code == 204  # idempotent
    assert clients(servers, "s1") == 2
    assert send(servers, "s1", "/whoami", tokens[0]).status_code == 200  # back again: counts
    assert clients(servers, "s1") == 3


def test_a_bye_with_a_forged_or_foreign_token_is_refused_and_changes_nothing(
    servers: Deployment,
) -> None:
    iss = issuer(servers)
    token = iss.issue("s1", "victim", "web")[0]
    send(servers, "s1", "/whoami", token)
    forged = TokenIssuer(KeyRing.generate("HS256")).issue("s1", "victim", "web")[0]
    other_server = iss.issue("s2", "victim", "web")[0]
    other_service = iss.issue("s1", "victim", "api")[0]
    past = TokenIssuer(KeyRing.load(servers.dir / "keys.json"), ttl=60.0, clock=lambda: 1e9)
    expired = past.issue("s1", "victim", "web")[0]
    invalid = "the affinity token is not valid"
    elsewhere = "this token names another server; say bye to that one"
    cases = [
        (forged, 401, "invalid_token", "the token's key is not known here"),
        (expired, 401, "token_expired", "the affinity token has expired; ask the referral again"),
        (token[:-4] + "AAAA", 401, "invalid_token", invalid),
        (other_server, 421, "misdirected", elsewhere),
        (other_service, 421, "misdirected", elsewhere),
        (None, 401, "token_required", "a bye needs the affinity token of the session it ends"),
    ]
    name = "affinity_app_token_rejections_total"
    with servers.client() as c:
        before = parse(c.get(servers.server_urls["s1"] + METRICS_PATH).text)[name]
    for bad, status, error, detail in cases:
        r = bye(servers, "s1", bad)
        assert (r.status_code, r.json()) == (status, {"error": error, "detail": detail}), bad
        assert r.headers["affinity-server"] == "s1"
    assert clients(servers, "s1") == 1 and held_ids(servers, "s1") == 1
    with servers.client() as c:
        after = parse(c.get(servers.server_urls["s1"] + METRICS_PATH).text)[name]
    added = {
        reason: (after.value(reason=reason) or 0.0) - (before.value(reason=reason) or 0.0)
        for reason in ("invalid", "expired", "misdirected", "required")
    }
    assert added == {"invalid": 2, "expired": 1, "misdirected": 2, "required": 1}


def test_a_bye_flood_leaves_no_state_behind(servers: Deployment) -> None:
    iss = issuer(servers)
    kept = iss.issue("s1", "kept", "web")[0]
    send(servers, "s1", "/whoami", kept)
    with servers.client() as c:
        url = servers.server_urls["s1"] + BYE_PATH
        for i in range(300):
            token = iss.issue("s1", f"stranger-{i}", "web")[0] if i % 2 else f"junk-{i}"
            r = c.post(url, headers={"Affinity-Token": token})
            assert r.status_code in (204, 401)
    assert clients(servers, "s1") == 1 and held_ids(servers, "s1") == 1
    with servers.client() as c:
        inflight = c.get(servers.server_urls["s1"] + HEALTH_PATH).json()["load"]["inflight"]
    assert inflight == 0


def test_closing_a_client_says_bye_to_its_server(servers: Deployment) -> None:
    with Client(servers.referral_url, verify=str(servers.ca)) as client:
        assert client.get("/whoami").status_code == 200
        sid = client.server
        assert sid is not None
        assert clients(servers, sid) == 1
    assert clients(servers, sid) == 0 and held_ids(servers, sid) == 0


def test_closing_an_async_client_says_bye_to_its_server(servers: Deployment) -> None:
    async def session() -> str:
        async with AsyncClient(servers.referral_url, verify=str(servers.ca)) as client:
            assert (await client.get("/whoami")).status_code == 200
            assert client.server is not None
            assert clients(servers, client.server) == 1
            return client.server

    sid = asyncio.run(session())
    assert clients(servers, sid) == 0 and held_ids(servers, sid) == 0
