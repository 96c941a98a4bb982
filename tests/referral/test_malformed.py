"""Malformed input never gives a 5xx and always gets the JSON error shape."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from affinity.testing import Deployment

SERVICES = '[services.web]\nservers = [{id = "s1", url = "https://s1.affinity.test:8443"}]\n'
PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
ANY_TEXT = st.text(max_size=60)
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def referral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    directory: Path = tmp_path_factory.mktemp("malformed")
    with Deployment(directory, services=SERVICES, health="sources = []") as d:
        d.start_referral()
        yield d


@pytest.fixture(scope="module")
def client(referral: Deployment) -> Iterator[httpx.Client]:
    with referral.client(base_url=referral.referral_url) as c:
        yield c


def check(response: httpx.Response) -> None:
    assert response.status_code < 500 or response.status_code == 503, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "detail"}
        assert "Traceback" not in response.text


@FUZZ
@given(
    params=st.lists(
        st.tuples(st.sampled_from(["service", "avoid", "x", ""]), ANY_TEXT), max_size=20
    )
)
def test_assign_queries(client: httpx.Client, params: list[tuple[str, str]]) -> None:
    check(client.get("/v1/assign", params=params))


@FUZZ
@given(token=PRINTABLE, cookie=PRINTABLE)
def test_assign_tokens_and_cookies(client: httpx.Client, token: str, cookie: str) -> None:
    headers = {"Affinity-Token": token.strip(), "Cookie": cookie.strip()}
    check(client.get("/v1/assign", headers=headers))


@FUZZ
@given(path=PRINTABLE)
def test_any_path(client: httpx.Client, path: str) -> None:
    check(client.get("/" + path.lstrip("/").replace("#", "%23").replace("?", "%3F")))


@FUZZ
@given(body=st.binary(max_size=300), sid=st.sampled_from(["a", "s1", "x-y", "z" * 64]))
def test_admin_bodies(referral: Deployment, body: bytes, sid: str) -> None:
    with referral.admin() as admin:
        r = admin.put(f"/v1/servers/fz{sid}", content=body)
        check(r)
        check(admin.put("/v1/settings/fuzz", content=body))
        if r.status_code == 200:
            admin.delete(f"/v1/servers/fz{sid}")


@pytest.mark.parametrize(
    "body", [b"{" * 10000, b'{"url": "' + b"a" * 100000 + b'"}', b"\x00" * 64, b'"str"']
)
def test_oversized_and_odd_bodies(referral: Deployment, body: bytes) -> None:
    with referral.admin() as admin:
        check(admin.put("/v1/servers/odd", content=body))
