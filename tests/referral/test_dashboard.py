"""The dashboard over HTTP: login without a token in any URL, session cookie, CSRF, CSP, assets."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from importlib import resources

import httpx
import pytest

from affinity.referral.dashboard import ASSETS, CSP
from affinity.testing import Deployment
from tests.fleets import static_referral


@pytest.fixture(scope="module")
def referral(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with static_referral(tmp_path_factory.mktemp("dashboard")) as d:
        yield d


@pytest.fixture
def browser(referral: Deployment) -> Iterator[httpx.Client]:
    with referral.client(base_url=referral.referral_url, follow_redirects=False) as c:
        yield c


def log_in(referral: Deployment, client: httpx.Client) -> str:
    r = client.post("/dashboard/login", data={"token": referral.admin_token})
    assert r.status_code == 303
    page = client.get("/dashboard").text
    found = re.search(r'name="affinity-csrf" content="([0-9a-f]{64})"', page)
    assert found is not None
    return found.group(1)


def test_without_a_session_the_page_is_the_login_form(browser: httpx.Client) -> None:
    r = browser.get("/dashboard")
    assert r.status_code == 200 and "Admin token" in r.text
    assert '<form method="post" action="/dashboard/login"' in r.text
    assert r.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["cache-control"] == "no-store"


def test_the_token_cannot_be_sent_in_a_url(referral: Deployment, browser: httpx.Client) -> None:
    r = browser.get("/dashboard/login", params={"token": referral.admin_token})
    assert r.status_code == 405 and "set-cookie" not in r.headers
    r = browser.get("/dashboard/api/status", params={"token": referral.admin_token})
    assert r.status_code == 401


def test_a_wrong_token_gets_the_form_again_and_no_cookie(browser: httpx.Client) -> None:
    r = browser.post("/dashboard/login", data={"token": "wrong"})
    assert r.status_code == 401 and "set-cookie" not in r.headers
    assert "That is not the admin token." in r.text
    assert r.headers["content-security-policy"] == CSP


def test_login_sets_a_strict_cookie_that_is_not_the_token(
    referral: Deployment, browser: httpx.Client
) -> None:
    r = browser.post("/dashboard/login", data={"token": referral.admin_token})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"
    cookie = r.headers["set-cookie"]
    for attribute in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/dashboard"):
        assert attribute.lower() in cookie.lower(), cookie
    assert referral.admin_token not in cookie
    page = browser.get("/dashboard")
    assert page.status_code == 200 and 'id="servers"' in page.text
    assert referral.admin_token not in page.text


def test_the_status_api_needs_the_session(referral: Deployment, browser: httpx.Client) -> None:
    assert browser.get("/dashboard/api/status").status_code == 401
    bearer = {"Authorization": f"Bearer {referral.admin_token}"}
    assert browser.get("/dashboard/api/status", headers=bearer).status_code == 401
    log_in(referral, browser)
    r = browser.get("/dashboard/api/status")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert [s["id"] for s in r.json()["servers"]] == ["s1", "s2"]


def test_actions_need_the_csrf_header(referral: Deployment, browser: httpx.Client) -> None:
    csrf = log_in(referral, browser)
    assert browser.post("/dashboard/api/servers/s2/drain").status_code == 403
    wrong = {"X-Affinity-CSRF": "0" * 64}
    assert browser.post("/dashboard/api/servers/s2/drain", headers=wrong).status_code == 403
    assert "s2" in referral.assignable()
    ok = {"X-Affinity-CSRF": csrf}
    r = browser.post("/dashboard/api/servers/s2/drain", headers=ok)
    assert r.status_code == 200 and r.json() == {"id": "s2", "draining": True}
    assert referral.assignable() == {"s1"}
    assert browser.post("/dashboard/api/servers/s2/resume", headers=ok).status_code == 200
    assert referral.assignable() == {"s1", "s2"}
    assert browser.post("/dashboard/api/servers/nope/drain", headers=ok).status_code == 404
    with referral.client(base_url=referral.referral_url) as other:  # another browser
        assert other.post("/dashboard/api/servers/s2/drain", headers=ok).status_code == 401


def test_logout_ends_the_session_in_this_browser(
    referral: Deployment, browser: httpx.Client
) -> None:
    csrf = log_in(referral, browser)
    assert browser.post("/dashboard/logout", data={"csrf": "x"}).status_code == 403
    r = browser.post("/dashboard/logout", data={"csrf": csrf})
    assert r.status_code == 303 and "max-age=0" in r.headers["set-cookie"].lower()
    browser.cookies.clear()  # what the browser does with Max-Age=0
    assert "Admin token" in browser.get("/dashboard").text


def test_assets_are_served_from_the_package_and_nothing_else(browser: httpx.Client) -> None:
    for name, content_type in ASSETS.items():
        r = browser.get(f"/dashboard/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"] == content_type
        assert r.content == (resources.files("affinity.referral") / "static" / name).read_bytes()
        assert r.headers["x-content-type-options"] == "nosniff"
    for name in ("login.html", "..%2Fapp.py", "dashboard.js.map", "%2e%2e%2fsession.py"):
        assert browser.get(f"/dashboard/static/{name}").status_code == 404, name


def test_a_large_login_form_is_refused(browser: httpx.Client) -> None:
    r = browser.post("/dashboard/login", data={"token": "x" * 10_000})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"


class _Audit(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would block, and every URL."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        self.problems += [f"{tag} {n}" for n in names if n.startswith("on") or n == "style"]
        if tag == "style":
            self.problems.append("a <style> element")
        if tag == "script" and "src" not in names:
            self.problems.append("a script without src")
        self._in_script = tag == "script"
        self.urls += [v or "" for n, v in attrs if n in ("src", "href", "action")]

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline script text")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


@pytest.mark.parametrize("page", ["login.html", "dashboard.html"])
def test_pages_have_no_inline_script_style_or_foreign_url(page: str) -> None:
    audit = _Audit()
    audit.feed((resources.files("affinity.referral") / "static" / page).read_text())
    assert audit.problems == []
    assert audit.urls and all(url.startswith("/dashboard") for url in audit.urls), audit.urls


def test_the_script_loads_nothing_from_elsewhere() -> None:
    script = (resources.files("affinity.referral") / "static" / "dashboard.js").read_text()
    assert "http://" not in script and "https://" not in script
    assert "eval(" not in script and "innerHTML" not in script


def test_the_status_document_for_the_command_line(referral: Deployment) -> None:
    with referral.client(base_url=referral.referral_url) as c:
        assert c.get("/v1/status").status_code == 401
        assigned = c.get("/v1/assign").json()["server"]["id"]
    with referral.admin() as admin:
        body = admin.get("/v1/status").json()
    assert body["registry"]["name"] == "embedded" and body["services"]["web"]["total"] == 2
    assert set(body["totals"]["assignments"]) == {"sticky", "referred", "no_server"}
    assert body["totals"]["rereferrals"]["new_client"] >= 1
    by_id = {s["id"]: s for s in body["servers"]}
    assert by_id[assigned]["assignments"] >= 1
