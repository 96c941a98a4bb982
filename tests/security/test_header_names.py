"""A header name with a blank (``Transfer-Encoding : chunked``) is refused, the connection closed.

Sanic kept such a name with its blank, so it did not count as
``Transfer-Encoding``: the body was then read as a second request, which a
proxy in front that reads the header the other way never saw (request
smuggling).
"""

from __future__ import annotations

import random
import re

import pytest

from affinity.testing import Deployment
from affinity.web.connection import bad_header_name
from tests.security.conftest import read_until_closed, tls_socket

SMUGGLED = "GET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _urls(d: Deployment) -> dict[str, str]:
    return {"referral": d.referral_url, "server": d.server_urls["s1"]}


@pytest.mark.parametrize("role", ["referral", "server"])
@pytest.mark.parametrize(
    "header",
    [
        "Transfer-Encoding : chunked",
        "Transfer-Encoding\t: chunked",
        " Transfer-Encoding: chunked",
        "Content-Length : 0",
        "Transfer-Encoding\x0b: chunked",
        "X-Fine\x01: 1",
    ],
)
def test_a_header_name_with_a_blank_is_refused_and_closed(
    deployment: Deployment, role: str, header: str
) -> None:
    deployment.start_referral()
    deployment.start_server("s1")
    chunked = f"{len(SMUGGLED):x}\r\n{SMUGGLED}\r\n0\r\n\r\n"
    request = f"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n{header}\r\n\r\n{chunked}"
    with tls_socket(deployment, _urls(deployment)[role]) as sock:
        sock.sendall(request.encode())
        answer = read_until_closed(sock)  # a socket timeout here: the server kept it open
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1, "one answer, and nothing read as a second request"
    assert b'"error":"bad_request"' in answer


@pytest.mark.parametrize("role", ["referral", "server"])
def test_well_formed_pipelined_requests_still_work(deployment: Deployment, role: str) -> None:
    deployment.start_referral()
    deployment.start_server("s1")
    path = "/healthz" if role == "referral" else "/.well-known/affinity/health"
    one = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Custom-Name_1: a b\r\n\r\n"
    last = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    with tls_socket(deployment, _urls(deployment)[role]) as sock:
        sock.sendall((one + last).encode())
        answer = read_until_closed(sock)
    assert answer.count(b"HTTP/1.1 200 ") == 2, answer[:500]


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _first_bad_name_read_one_by_one(head: bytes) -> str | None:
    """What a check of each name Sanic reads finds: lines cut at CRLF, a name at its first colon.

    A line without a colon is refused by Sanic before any name is checked: it counts as bad.
    """
    for line in head.decode(errors="surrogateescape").split("\r\n")[1:]:
        name = line.split(":", 1)[0].lower()
        if ":" not in line or _TOKEN.fullmatch(name) is None:
            return name
    return None


@pytest.mark.parametrize(
    "lines",
    [
        ["Host: a", "Accept: */*", "X-Token: a.b-c_d~e"],
        ["Host: a", "Transfer-Encoding : chunked"],
        ["Host: a", ": no name"],
        ["Host: a", " Folded: x"],
        ["Host: a", "X-Value: a : b\tc", "X-Lone: a\rb\nc: d"],
        ["Host: a", "X-\u00e9: 1"],
        ["Host: a", "Na(me): 1"],
        ["Host: a", "no colon"],
        [],
    ],
)
def test_the_head_check_finds_what_a_name_by_name_check_finds(lines: list[str]) -> None:
    head = "\r\n".join(["GET / HTTP/1.1", *lines]).encode(errors="surrogateescape")
    assert bad_header_name(head) == _first_bad_name_read_one_by_one(head)


def test_the_head_check_agrees_on_random_heads() -> None:
    """Seeded: names mostly of token characters, now and then a blank, a control, a parenthesis,
    a non-ASCII letter or a lone CR or LF; values of anything; now and then no colon."""
    tokens = ["a", "Z", "-", "_", "~", "9", "!", "|"]
    others = [" ", "\t", "\r", "\n", "\x01", "\x7f", "(", "\xe9", ":"]
    rng = random.Random(9110)
    verdicts = {True: 0, False: 0}
    for _ in range(3000):
        lines = []
        for _ in range(rng.randint(1, 4)):
            name = rng.choices(tokens * 12 + others, k=rng.randint(0, 6))
            value = rng.choices(tokens + others, k=rng.randint(0, 6))
            colon = ":" if rng.random() < 0.95 else ""
            lines.append("".join(name) + colon + "".join(value))
        head = "\r\n".join(["GET / HTTP/1.1", *lines]).encode(errors="surrogateescape")
        found = bad_header_name(head)
        assert found == _first_bad_name_read_one_by_one(head), head
        verdicts[found is None] += 1
    assert min(verdicts.values()) > 500, verdicts
