"""Bearer secrets: an empty or short one stops the process at start; an empty one is never accepted.

An empty ``admin_token_file`` (or ``AFFINITY_ADMIN_TOKEN=' '``) used to read
as "", which a bare ``Authorization: Bearer`` then matched.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from affinity.config import MIN_SECRET_LENGTH
from affinity.testing import Deployment
from tests.security.conftest import read_until_closed, refused_to_start, tls_socket

SHORT = "x" * (MIN_SECRET_LENGTH - 1)


@pytest.mark.parametrize("content", ["", "\n", "   \n", SHORT])
def test_a_referral_with_an_empty_or_short_admin_token_file_does_not_start(
    tmp_path: Path, content: str
) -> None:
    with Deployment(tmp_path / "d", health="sources = []") as d:
        (d.dir / "admin-token").write_text(content)
        output = refused_to_start(d.start_referral(wait=False))
    assert "referral.admin_token_file" in output
    assert str(d.dir / "admin-token") in output
    assert f"at least {MIN_SECRET_LENGTH}" in output


@pytest.mark.parametrize("value", ["", " ", SHORT])
def test_a_referral_with_an_empty_or_short_admin_token_variable_does_not_start(
    tmp_path: Path, value: str
) -> None:
    with Deployment(tmp_path / "d", health="sources = []") as d:
        proc = d.start_referral(wait=False, env={"AFFINITY_ADMIN_TOKEN": value})
        output = refused_to_start(proc)
    assert "AFFINITY_ADMIN_TOKEN" in output
    assert SHORT not in output, "the secret itself is never shown"


def test_an_app_server_with_an_empty_admin_token_does_not_start(tmp_path: Path) -> None:
    with Deployment(tmp_path / "d", health="sources = []") as d:
        d.start_referral()
        (d.dir / "server-admin-token").write_text(" \n")
        output = refused_to_start(d.start_server("s1", wait=False))
    assert "server.admin_token_file" in output


def test_an_app_server_with_a_short_admin_token_variable_does_not_start(tmp_path: Path) -> None:
    with Deployment(tmp_path / "d", health="sources = []") as d:
        d.start_referral()
        output = refused_to_start(
            d.start_server("s1", wait=False, env={"AFFINITY_ADMIN_TOKEN": "short"})
        )
    assert "AFFINITY_ADMIN_TOKEN" in output


@pytest.mark.parametrize("section", ["referral", "server"])
def test_a_short_forwarded_secret_does_not_start(tmp_path: Path, section: str) -> None:
    lines = 'forwarded_secret_file = "forwarded-secret"'
    with Deployment(tmp_path / "d", health="sources = []", **{section: lines}) as d:
        (d.dir / "forwarded-secret").write_text("proxy\n")
        if section == "referral":
            proc = d.start_referral(wait=False)
        else:
            d.start_referral()
            proc = d.start_server("s1", wait=False)
        output = refused_to_start(proc)
    assert f"{section}.forwarded_secret_file" in output


def test_an_empty_presented_token_is_refused_by_both_roles(deployment: Deployment) -> None:
    deployment.start_referral()
    deployment.start_server("s1")
    drain = deployment.server_urls["s1"] + "/.well-known/affinity/drain"
    answers = []
    with deployment.client(base_url=deployment.referral_url) as c:
        for authorization in ("Bearer", "bearer"):
            headers = {"Authorization": authorization}
            answers.append(c.get("/v1/servers", headers=headers))
            answers.append(
                c.put("/v1/servers/evil", headers=headers, json={"url": "https://evil.example"})
            )
            answers.append(c.post(drain, headers=headers))
    for answer in answers:
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"] == "unauthorized"
    assert "evil" not in deployment.registered()


@pytest.mark.parametrize("role", ["referral", "server"])
def test_a_bearer_of_blanks_is_refused(deployment: Deployment, role: str) -> None:
    """Trailing blanks, which httpx will not send, over a raw TLS socket."""
    deployment.start_referral()
    deployment.start_server("s1")
    url = deployment.referral_url if role == "referral" else deployment.server_urls["s1"]
    path = "/v1/servers" if role == "referral" else "/.well-known/affinity/drain"
    method = "GET" if role == "referral" else "POST"
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer   \t \r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    with tls_socket(deployment, url) as sock:
        sock.sendall(request.encode())
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert b'"error":"unauthorized"' in answer
