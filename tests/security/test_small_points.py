"""Smaller points a review found: metrics text, the 307's headers, token lifetime and duplicate
members, TLS suites, referral URLs in clear."""

from __future__ import annotations

import base64
import collections
import socket
import ssl
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from affinity.testing import Deployment, wait_until
from affinity.tokens.keyring import KeyRing
from affinity.web.tls import client_context
from tests.security.conftest import tls_socket

IPFILTER = '[plugins.ipfilter]\ndeny = ["203.0.113.0/24"]\n'


@pytest.fixture
def running(deployment: Deployment) -> Iterator[Deployment]:
    deployment.start_referral()
    deployment.start_server("s1")
    wait_until(lambda: deployment.assignable() == {"s1"}, 10, what="s1 assignable")
    yield deployment


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(d: Deployment, payload: bytes) -> str:
    """A token over a raw payload, signed with the deployment's active key."""
    key = KeyRing.load(d.dir / "keys.json").active
    assert key is not None
    signing_input = key.header + _b64(payload).encode()
    return (signing_input + b"." + _b64(key.sign(signing_input)).encode()).decode()


def claims(**changes: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "iss": "affinity",
        "sid": "s1",
        "cid": "c1",
        "svc": "web",
        "iat": now,
        "exp": now + 600,
    }
    return {**base, **changes}


# -- metrics: one HELP and one TYPE per family -------------------------------------------------


def _check_exposition(text: str) -> None:
    comments = [line for line in text.splitlines() if line.startswith("# ")]
    twice = [line for line, n in collections.Counter(comments).items() if n > 1]
    assert twice == [], twice
    names = [line.split()[2] for line in comments if line.startswith("# TYPE ")]
    assert len(names) == len(set(names)), names
    assert list(text_string_to_metric_families(text))


def test_metrics_name_each_family_once_in_both_roles(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    with Deployment(tmp_path / "d", extra_config=IPFILTER) as d:
        d.start_referral()
        d.start_server("s1")
        with d.admin() as admin:
            # A refused document and a document in force, so every settings family has samples.
            assert admin.put("/v1/settings/ipfilter", json={"deny": ["bad"]}).status_code == 400
            assert admin.put("/v1/settings/ipfilter", json={"deny": ["198.51.100.0/24"]}).is_success
        with d.client() as c:
            assert c.get(d.server_urls["s1"] + "/", headers={"X-Forwarded-For": "x"}).status_code
            for url in (
                d.referral_url + "/metrics",
                d.server_urls["s1"] + "/.well-known/affinity/metrics",
            ):
                _check_exposition(c.get(url).text)


# -- the redirect's headers ---------------------------------------------------------------------


def test_a_redirect_has_no_content_type_of_none(running: Deployment) -> None:
    with running.client() as c:
        r = c.get(running.referral_url + "/go/x")
    assert r.status_code == 307
    assert r.headers.get("content-type", "") != "None"
    assert r.headers["content-type"].startswith("text/plain")


# -- token lifetime and duplicate members ---------------------------------------------------------


def _whoami(d: Deployment, token: str) -> httpx.Response:
    with d.client() as c:
        return c.get(d.server_urls["s1"] + "/", headers={"Affinity-Token": token})


def test_a_token_living_past_ttl_and_jitter_is_refused(running: Deployment) -> None:
    good = forge(running, orjson.dumps(claims()))
    assert _whoami(running, good).status_code == 200
    now = int(time.time())
    forever = forge(running, orjson.dumps(claims(iat=now, exp=now + 10 * 365 * 86400)))
    r = _whoami(running, forever)
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    # The referral does not keep a client on a server for such a token either.
    with running.client() as c:
        a = c.get(running.referral_url + "/v1/assign", headers={"Affinity-Token": forever})
    assert a.status_code == 200 and a.json()["sticky"] is False


def test_a_token_naming_a_claim_twice_is_refused(running: Deployment) -> None:
    body = orjson.dumps(claims())
    # "sid" twice: orjson keeps the last, other JWT libraries the first.
    twice = body.replace(b'"sid":"s1"', b'"sid":"s2","sid":"s1"')
    assert twice != body
    r = _whoami(running, forge(running, twice))
    assert r.status_code == 401 and r.json()["error"] == "invalid_token"
    spaced = forge(running, b" " + body)  # not our compact form, but no member twice
    assert _whoami(running, spaced).status_code == 200


# -- TLS suites -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["referral", "server"])
def test_cbc_suites_are_not_offered(running: Deployment, role: str) -> None:
    url = running.referral_url if role == "referral" else running.server_urls["s1"]
    host, port = url.removeprefix("https://").rsplit(":", 1)
    cbc = client_context(running.ca)
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers(
        "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES128-SHA256:ECDHE-RSA-AES256-SHA384"
    )
    raw = socket.create_connection((host, int(port)), timeout=5)
    with pytest.raises((ssl.SSLError, ConnectionError)), cbc.wrap_socket(raw, server_hostname=host):
        pass
    raw.close()
    with tls_socket(running, url) as sock:  # the intermediate suites still work
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        assert "CBC" not in str(sock.cipher()) and "-SHA:" not in str(sock.cipher())


# -- found by the schemathesis run --------------------------------------------------------------


def test_a_login_form_of_many_fields_is_a_400_not_a_500(running: Deployment) -> None:
    form = "&".join(f"f{i}=x" for i in range(20))
    with running.client() as c:
        r = c.post(
            running.referral_url + "/dashboard/login",
            content=form,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_request"
