"""WebSocket routes on an app server: served over TLS, behind the guard, counted once."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from affinity.config import load
from affinity.testing import Deployment, client_context
from affinity.tokens.jws import TokenVerifier
from affinity.tokens.keyring import load_keyring
from tests.promtext import parse
from tests.security.conftest import read_until_closed, tls_socket
from tests.server.apps import CHATTY

APP = CHATTY
METRICS = "/.well-known/affinity/metrics"


def requests_counted(d: Deployment, status: str) -> float:
    with d.client() as c:
        families = parse(c.get(d.server_urls["s1"] + METRICS).text)
    labels = {"route": "/echo", "method": "GET", "status": status}
    return families["affinity_app_requests_total"].value(**labels) or 0.0


async def chat(d: Deployment, token: str | None) -> list[str]:
    url = d.server_urls["s1"].replace("https://", "wss://") + "/echo"
    headers = {} if token is None else {"Affinity-Token": token}
    async with websockets.connect(
        url, ssl=client_context(d.ca), additional_headers=headers, open_timeout=10
    ) as ws:
        answers = []
        for word in ("one", "two"):
            await ws.send(word)
            answers.append(str(await asyncio.wait_for(ws.recv(), 10)))
        return answers


def test_a_websocket_route_is_served_behind_the_guard_and_counted_once(tmp_path: Path) -> None:
    with Deployment(tmp_path, health="sources = []") as d:
        d.start_referral()
        d.start_server("s1", app=APP)
        token = d.token("s1")
        client_id = TokenVerifier(load_keyring(load(str(d.config)))).verify(token).cid
        assert asyncio.run(chat(d, token)) == [f"{client_id}: one", f"{client_id}: two"]
        with pytest.raises(InvalidStatus) as refused:
            asyncio.run(
                chat(d, d.token("s2"))
            )  # another server's token: refused before the upgrade
        assert refused.value.response.status_code == 421
        assert requests_counted(d, "101") == 1
        assert requests_counted(d, "421") == 1
        assert requests_counted(d, "200") == 0


def test_an_app_with_a_websocket_route_is_bounded_like_any_other(tmp_path: Path) -> None:
    """Sanic serves such an app with its WebSocket protocol: affinity's bounds stay on it."""
    with Deployment(tmp_path, health="sources = []") as d:
        d.start_referral()
        d.start_server("s1", app=APP)
        request = "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade : websocket\r\n\r\n"
        with tls_socket(d, d.server_urls["s1"]) as sock:
            sock.sendall(request.encode())
            answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert b'"error":"bad_request"' in answer


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ("Upgrade: websocket\r\nConnection: Upgrade\r\n", 400),  # no key, no version
        ("", 426),  # a plain GET of a WebSocket route
        (
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: !!\r\n"
            "Sec-WebSocket-Version: 13\r\n",
            400,
        ),
    ],
)
def test_a_malformed_upgrade_is_a_clear_error(tmp_path: Path, headers: str, status: int) -> None:
    with Deployment(tmp_path, health="sources = []") as d:
        d.start_referral()
        d.start_server("s1", app=APP)
        request = (
            f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nAffinity-Token: {d.token('s1')}\r\n"
            f"{headers}Connection: close\r\n\r\n"
        )
        with tls_socket(d, d.server_urls["s1"]) as sock:
            sock.sendall(request.encode())
            answer = read_until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
    assert b"affinity-server: s1" in head.lower()
    assert json.loads(body)["error"] == "bad_request"
