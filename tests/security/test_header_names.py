"""A header name with a blank (``Transfer-Encoding : chunked``) is refused, the connection closed.

Sanic kept such a name with its blank, so it did not count as
``Transfer-Encoding``: the body was then read as a second request, which a
proxy in front that reads the header the other way never saw (request
smuggling).
"""

from __future__ import annotations

import pytest

from affinity.testing import Deployment
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
