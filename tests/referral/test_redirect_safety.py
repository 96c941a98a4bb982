"""Open-redirect attempts never give a Location outside the registered servers."""

from __future__ import annotations

import socket
import ssl
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from affinity.testing import Deployment
from affinity.web.tls import client_context

ALLOWED = {"s1.affinity.test:8443"}
ATTACKS = [
    "//evil.example",
    "//evil.example/",
    "/\\evil.example",
    "/%2F%2Fevil.example",
    "/%2f%2fevil.example",
    "/%5C%5Cevil.example",
    "/%09/evil.example",
    "/%0d%0a/evil.example",
    "/%0aLocation:%20https://evil.example",
    "/https://evil.example",
    "/http:evil.example",
    "/@evil.example",
    "/..//evil.example",
    "/.%2e/%2e%2e//evil.example",
    "/%E2%80%AE/evil.example",
    "/xn--evl-bpa.example",
    "?next=https://evil.example",
    "?url=//evil.example",
]


@pytest.fixture(scope="module")
def referral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    directory: Path = tmp_path_factory.mktemp("redirect")
    services = '[services.web]\nservers = [{id = "s1", url = "https://s1.affinity.test:8443"}]\n'
    with Deployment(directory, services=services, health="sources = []") as d:
        d.start_referral()
        yield d


def raw_get(d: Deployment, target: str, extra_headers: str = "") -> tuple[int, dict[str, str]]:
    """Send a request line exactly as given (no client-side normalisation)."""
    context = client_context(d.ca)
    with (
        socket.create_connection(("127.0.0.1", d.referral_port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra_headers}"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status_line, *lines = head.split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers


def assert_safe(status: int, headers: dict[str, str]) -> None:
    assert status < 500
    if "location" in headers:
        location = headers["location"]
        parts = urllib.parse.urlsplit(location)
        assert parts.scheme == "https"
        assert parts.netloc in ALLOWED, location
        assert "evil.example" not in parts.netloc
        assert "\r" not in location and "\n" not in location and "\\" not in location


@pytest.mark.parametrize("attack", ATTACKS)
def test_paths_cannot_change_the_redirect_host(referral: Deployment, attack: str) -> None:
    status, headers = raw_get(referral, "/go" + attack)
    assert_safe(status, headers)


@pytest.mark.parametrize(
    "header",
    [
        "Host: evil.example",
        "X-Forwarded-Host: evil.example",
        "Forwarded: host=evil.example",
        "X-Forwarded-Proto: http",
        "Referer: https://evil.example/",
    ],
)
def test_headers_cannot_change_the_redirect_host(referral: Deployment, header: str) -> None:
    status, headers = raw_get(referral, "/go/page", header + "\r\n")
    assert status == 307
    assert_safe(status, headers)


def test_absolute_form_request_target(referral: Deployment) -> None:
    status, headers = raw_get(referral, "https://evil.example/go/x")
    assert_safe(status, headers)


def test_tls_is_real(referral: Deployment) -> None:
    plain = ssl.create_default_context()
    with (
        socket.create_connection(("127.0.0.1", referral.referral_port), timeout=5) as sock,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        plain.wrap_socket(sock, server_hostname="127.0.0.1")
